//! The live activity page on the HTTP port (issue 12, point 5): `/live` (one HTML page, its
//! script and style, embedded in the binary) and its data routes `/live/events` (Server-Sent
//! Events over a watch), `/live/stats` and `/live/calls`.
//!
//! It owns no state and no watching of its own: the data routes authenticate the bearer token
//! as gRPC does and call the same `Api` handlers (`watch_events`, `event_stats`, `list_calls`),
//! so filters, tenant scoping, read consistency and the watch bounds (`--watchers-max`,
//! `--watch-lag-max`, leader contact) are the gRPC ones. It must not grow a second
//! implementation of any of them.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{Stream, StreamExt};
use proto::v1;
use tonic::{Code, Status};

use crate::api::Api;
use crate::auth::Access;
use crate::watch::RESUME_FROM_HEADER;

const PAGE_HTML: &str = include_str!("live/index.html");
const PAGE_JS: &str = include_str!("live/app.js");
const PAGE_CSS: &str = include_str!("live/app.css");

/// Live calls listed per state (`ACTIVE`, `HANDED_OFF`) by `/live/calls`.
pub const LIVE_CALLS_PER_STATE_MAX: u32 = 200;
/// Longest query string the data routes parse.
const QUERY_BYTES_MAX: usize = 4096;
/// An SSE comment this often when nothing else is sent (the watch's progress messages already
/// come every `progress_ms`; this covers proxies that wait longer for the first byte).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The `/live` routes, to be merged into the HTTP port's router.
pub fn router(api: Api) -> axum::Router {
    axum::Router::new()
        .route("/live", get(page))
        .route("/live/app.js", get(script))
        .route("/live/app.css", get(style))
        .route("/live/events", get(events).options(preflight))
        .route("/live/stats", get(stats).options(preflight))
        .route("/live/calls", get(calls).options(preflight))
        .with_state(api)
}

async fn page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        PAGE_HTML,
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        PAGE_JS,
    )
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        PAGE_CSS,
    )
}

/// CORS: the page of one node follows the others (`#nodes=`). Tokens travel in a header, never
/// in cookies, so any origin may ask; what it gets is what its token allows.
fn cors(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(RESUME_FROM_HEADER),
    );
    response
}

async fn preflight() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, last-event-id"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    cors(response)
}

/// A refusal as HTTP: the gRPC code decides the status (the one mapping of errors stays
/// `From<ApiError> for Status`), the body says why in JSON.
fn refusal(status: &Status) -> Response {
    let code = match status.code() {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = serde_json::json!({
        "code": format!("{:?}", status.code()),
        "message": status.message(),
    });
    cors(
        (
            code,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response(),
    )
}

fn json<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => cors(([(header::CONTENT_TYPE, "application/json")], body).into_response()),
        Err(e) => refusal(&Status::internal(format!("failed to encode json: {e}"))),
    }
}

/// The query string's pairs, percent-decoded (`+` is a space).
fn query_pairs(uri: &Uri) -> Result<Vec<(String, String)>, Status> {
    let query = uri.query().unwrap_or_default();
    if query.len() > QUERY_BYTES_MAX {
        return Err(Status::invalid_argument(format!(
            "query string longer than {QUERY_BYTES_MAX} bytes"
        )));
    }
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(key)?, percent_decode(value)?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Result<String, Status> {
    let malformed = || Status::invalid_argument(format!("malformed query component {text:?}"));
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = text.get(i + 1..i + 3).ok_or_else(malformed)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| malformed())?);
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| malformed())
}

fn parse_u64(key: &str, value: &str) -> Result<u64, Status> {
    value
        .parse()
        .map_err(|_| Status::invalid_argument(format!("{key}={value:?} is not a number")))
}

/// `debug`, `info`, `warning`, `error`, `critical` (or empty: every severity).
fn parse_severity(value: &str) -> Result<i32, Status> {
    if value.is_empty() {
        return Ok(v1::Severity::Unspecified.into());
    }
    v1::Severity::from_str_name(&format!("SEVERITY_{}", value.to_ascii_uppercase()))
        .map(Into::into)
        .ok_or_else(|| {
            Status::invalid_argument(format!("min_severity={value:?} is not a severity"))
        })
}

/// `/live/events?tenant=&from=&min_severity=&project=&task=&agent_type=&type=&call=&progress_ms=`
/// and the `Last-Event-ID` header (a position: the stream resumes after it).
fn watch_request(headers: &HeaderMap, uri: &Uri) -> Result<v1::WatchEventsRequest, Status> {
    let mut req = v1::WatchEventsRequest {
        progress_interval_ms: 1000,
        ..Default::default()
    };
    for (key, value) in query_pairs(uri)? {
        match key.as_str() {
            "tenant" => req.tenant_id = value,
            "from" if !value.is_empty() => req.from_position = Some(parse_u64(&key, &value)?),
            "min_severity" => req.min_severity = parse_severity(&value)?,
            "project" => req.project_id = value,
            "task" => req.task_id = value,
            "agent_type" => req.agent_type = value,
            "type" if !value.is_empty() => req.event_type_prefixes.push(value),
            "call" => req.call_id = value,
            "progress_ms" => {
                req.progress_interval_ms = u32::try_from(parse_u64(&key, &value)?)
                    .map_err(|_| Status::invalid_argument("progress_ms is too large"))?;
            }
            _ => {}
        }
    }
    if let Some(last) = headers.get("last-event-id") {
        let last = last
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .ok_or_else(|| Status::invalid_argument("Last-Event-ID is not a position"))?;
        req.from_position = Some(last.saturating_add(1));
    }
    Ok(req)
}

fn authorize(
    api: &Api,
    headers: &HeaderMap,
    rpc: &'static str,
) -> Result<crate::auth::Caller, Status> {
    // The gRPC metadata of a request is its HTTP headers: the same check, the same token rules.
    let metadata = tonic::metadata::MetadataMap::from_headers(headers.clone());
    api.authorize(&metadata, rpc, Access::Read)
        .map_err(Status::from)
}

/// One SSE event per log event (`id:` its position), `event: progress` when nothing matched for
/// a progress interval, and `event: end` with the position to resume from when the watch ends.
fn sse_events(
    watch: crate::watch::WatchStream,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    // Where the watch starts, so that a consumer cut off before its first event or progress
    // resumes there rather than at a later "now".
    let opened = SseEvent::default()
        .event("open")
        .data(serde_json::json!({ "resumeFrom": watch.resume_from() }).to_string());
    futures::stream::once(async move { Ok(opened) }).chain(watch.flat_map(|message| {
        // The watch sends encoded messages; the page wants their fields.
        let message = message.and_then(|m| {
            m.to_response()
                .map_err(|e| Status::internal(format!("failed to read a watch message: {e}")))
        });
        let events: Vec<SseEvent> = match message {
            Ok(message) if message.events.is_empty() => {
                let progress = serde_json::json!({
                    "resumeFrom": message.resume_from,
                    "appliedIndex": message.applied_index,
                    "nodeId": message.node_id,
                });
                vec![
                    SseEvent::default()
                        .event("progress")
                        .data(progress.to_string()),
                ]
            }
            Ok(message) => message
                .events
                .iter()
                .map(|event| match serde_json::to_string(event) {
                    Ok(data) => SseEvent::default()
                        .id(event.position.to_string())
                        .data(data),
                    // The stream must not skip a position silently: say so, and end.
                    Err(e) => SseEvent::default().event("end").data(end_json(
                        "Internal",
                        &format!("failed to encode event: {e}"),
                        event.position,
                    )),
                })
                .collect(),
            Err(status) => {
                let resume_from = client::resume_from_of(&status).unwrap_or(0);
                vec![SseEvent::default().event("end").data(end_json(
                    &format!("{:?}", status.code()),
                    status.message(),
                    resume_from,
                ))]
            }
        };
        futures::stream::iter(events.into_iter().map(Ok))
    }))
}

fn end_json(code: &str, message: &str, resume_from: u64) -> String {
    serde_json::json!({"code": code, "message": message, "resumeFrom": resume_from}).to_string()
}

async fn events(State(api): State<Api>, headers: HeaderMap, uri: Uri) -> Response {
    let opened = async {
        let caller = authorize(&api, &headers, "watch_events")?;
        let req = watch_request(&headers, &uri)?;
        api.watch_events(&caller, req).await.map_err(Status::from)
    };
    match opened.await {
        Ok(watch) => {
            let mut response = Sse::new(sse_events(watch))
                .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
                .into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            cors(response)
        }
        Err(status) => refusal(&status),
    }
}

async fn stats(State(api): State<Api>, headers: HeaderMap, uri: Uri) -> Response {
    let answer = async {
        let caller = authorize(&api, &headers, "event_stats")?;
        let mut req = v1::EventStatsRequest::default();
        for (key, value) in query_pairs(&uri)? {
            match key.as_str() {
                "tenant" => req.tenant_id = value,
                "project" => req.project_id = value,
                _ => {}
            }
        }
        api.event_stats(&caller, req).await.map_err(Status::from)
    };
    match answer.await {
        Ok(stats) => json(&stats),
        Err(status) => refusal(&status),
    }
}

async fn calls(State(api): State<Api>, headers: HeaderMap, uri: Uri) -> Response {
    let answer = async {
        let caller = authorize(&api, &headers, "list_calls")?;
        let mut tenant_id = String::new();
        for (key, value) in query_pairs(&uri)? {
            if key == "tenant" {
                tenant_id = value;
            }
        }
        let mut calls = Vec::new();
        let mut more = false;
        for state in [v1::CallState::Active, v1::CallState::HandedOff] {
            let page = api
                .list_calls(
                    &caller,
                    v1::ListCallsRequest {
                        tenant_id: tenant_id.clone(),
                        state: state.into(),
                        page_size: LIVE_CALLS_PER_STATE_MAX,
                        ..Default::default()
                    },
                )
                .await
                .map_err(Status::from)?;
            more |= !page.next_page_token.is_empty();
            calls.extend(page.calls);
        }
        Ok::<_, Status>(serde_json::json!({ "calls": calls, "more": more }))
    };
    match answer.await {
        Ok(body) => json(&body),
        Err(status) => refusal(&status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_id_resumes_after_that_position() {
        let mut headers = HeaderMap::new();
        headers.insert("last-event-id", HeaderValue::from_static("41"));
        let uri: Uri = "/live/events?from=3&min_severity=warning&type=agent.&project=P%2D1+x"
            .parse()
            .expect("uri");
        let req = watch_request(&headers, &uri).expect("request");
        assert_eq!(req.from_position, Some(42));
        assert_eq!(req.min_severity, i32::from(v1::Severity::Warning));
        assert_eq!(req.event_type_prefixes, vec!["agent.".to_owned()]);
        assert_eq!(req.project_id, "P-1 x");
    }

    #[test]
    fn malformed_queries_are_refused() {
        let headers = HeaderMap::new();
        for uri in [
            "/live/events?from=x",
            "/live/events?min_severity=loud",
            "/live/events?project=%zz",
        ] {
            let uri: Uri = uri.parse().expect("uri");
            let refused = watch_request(&headers, &uri).expect_err("malformed");
            assert_eq!(refused.code(), Code::InvalidArgument);
        }
    }
}
