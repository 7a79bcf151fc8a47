//! [`EventWatch`]: a `WatchEvents` stream that outlives the node serving it.
//!
//! Every message of a watch carries `resume_from`, a checkpoint: all matching events before it
//! were delivered. The watch remembers the last one and, when its node fails (the stream breaks,
//! the node ends it with a resume position, or it falls silent for three progress intervals, as a
//! paused or cut-off node does), opens the same watch on the next endpoint from that position.
//! Positions are cluster-wide and every node delivers them in order, so the application sees each
//! event once, in order, across any number of nodes. A node that ends the watch names the
//! position to resume from (`x-switchboard-resume-from`), which also holds before the first
//! message. Errors the caller must fix (a bad filter, a call no node knows, a token refused) end
//! the watch; everything else is retried with the
//! client's backoff, at most `retries_max` times in a row without a message.

use std::time::Duration;

use proto::v1::{self, watch_service_client::WatchServiceClient};
use tokio::time::Instant;
use tonic::{Code, Request, Status, Streaming};
use tracing::debug;

use crate::{
    AUTHORIZATION_HEADER, Client, ClientError, GiveUp, Route, is_overloaded, resume_from_of,
};

/// How long a watch waits for a message before it takes its node for gone: this many progress
/// intervals (the node sends one at least every interval), and never less than
/// [`SILENCE_MIN`].
const SILENT_INTERVALS: u32 = 3;
const SILENCE_MIN: Duration = Duration::from_secs(3);
/// Progress interval the server uses when the request names none.
const PROGRESS_INTERVAL_DEFAULT_MS: u32 = 1_000;

/// A resumable watch of the event log; see the [module docs](self). Made by
/// [`Client::watch_events`]; connects on the first [`EventWatch::next`].
#[derive(Debug)]
pub struct EventWatch {
    client: Client,
    request: v1::WatchEventsRequest,
    stream: Option<(String, Streaming<v1::WatchEventsResponse>)>,
    /// The endpoint the next open goes to.
    target: usize,
    /// Checkpoint: the `resume_from` of the last message delivered.
    resume_from: Option<u64>,
    silence_max: Duration,
    /// Failures since the last message, and the endpoints they were on.
    failures: u32,
    tried: Vec<String>,
    failing_since: Option<Instant>,
    /// Times the watch moved to another node.
    resumed: u64,
}

impl Client {
    /// A watch of the events `request` filters, from `request.from_position` (absent: from
    /// now). Nothing is sent until the first [`EventWatch::next`].
    pub fn watch_events(&self, request: v1::WatchEventsRequest) -> EventWatch {
        let interval_ms = match request.progress_interval_ms {
            0 => PROGRESS_INTERVAL_DEFAULT_MS,
            ms => ms,
        };
        let silence_max =
            (Duration::from_millis(u64::from(interval_ms)) * SILENT_INTERVALS).max(SILENCE_MIN);
        EventWatch {
            target: self.first_target(Route::Any),
            client: self.clone(),
            resume_from: request.from_position,
            request,
            stream: None,
            silence_max,
            failures: 0,
            tried: Vec::new(),
            failing_since: None,
            resumed: 0,
        }
    }
}

impl EventWatch {
    /// The next message: matching events continuing the stream without gaps or repeats, or none
    /// (a progress message). Its `resume_from` is where this watch would resume, and what to
    /// store as a checkpoint. An error is final: the watch is over.
    pub async fn next(&mut self) -> Result<v1::WatchEventsResponse, ClientError> {
        loop {
            let status = match self.stream.take() {
                None => match self.open().await {
                    Ok(opened) => {
                        self.stream = Some(opened);
                        continue;
                    }
                    Err(status) => status,
                },
                Some((addr, mut stream)) => {
                    match tokio::time::timeout(self.silence_max, stream.message()).await {
                        Ok(Ok(Some(message))) => {
                            self.stream = Some((addr, stream));
                            if let Some(message) = self.deliver(message) {
                                return Ok(message);
                            }
                            continue;
                        }
                        Ok(Ok(None)) => Status::unavailable(format!("{addr} ended the watch")),
                        Ok(Err(status)) => status,
                        Err(_) => Status::unavailable(format!(
                            "{addr} sent nothing for {} ms",
                            self.silence_max.as_millis()
                        )),
                    }
                }
            };
            self.fail(status).await?;
        }
    }

    /// Where the watch resumes: every matching event before this position was delivered (`None`
    /// before the first message of a watch from now).
    pub fn resume_from(&self) -> Option<u64> {
        self.resume_from
    }

    /// How many times the watch moved to another node (or reopened on the same one).
    pub fn resumed(&self) -> u64 {
        self.resumed
    }

    /// Opens the watch on the current target, from the checkpoint.
    async fn open(&mut self) -> Result<(String, Streaming<v1::WatchEventsResponse>), Status> {
        let (index, addr, channel) = self.client.peer_at(self.target);
        self.target = index;
        if !self.tried.contains(&addr) {
            self.tried.push(addr.clone());
        }
        let mut request = Request::new(v1::WatchEventsRequest {
            from_position: self.resume_from,
            ..self.request.clone()
        });
        if let Some(authorization) = &self.client.inner.authorization {
            request
                .metadata_mut()
                .insert(AUTHORIZATION_HEADER, authorization.clone());
        }
        debug!(endpoint = %addr, from = ?self.resume_from, "opening watch");
        let config = self.client.config();
        let opened = tokio::time::timeout(
            config.request_timeout,
            WatchServiceClient::new(channel).watch_events(request),
        )
        .await;
        match opened {
            Ok(Ok(response)) => Ok((addr, response.into_inner())),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "opening the watch on {addr} took over {} ms",
                config.request_timeout.as_millis()
            ))),
        }
    }

    /// Takes a message: drops what was delivered before (never expected: a node starts at the
    /// checkpoint), moves the checkpoint, and resets the failure count.
    fn deliver(&mut self, mut message: v1::WatchEventsResponse) -> Option<v1::WatchEventsResponse> {
        if let Some(from) = self.resume_from {
            message.events.retain(|event| event.position >= from);
            if message.resume_from < from {
                return None;
            }
        }
        self.resume_from = Some(message.resume_from);
        self.failures = 0;
        self.failing_since = None;
        self.tried.clear();
        Some(message)
    }

    /// A failed open or a broken stream: final errors end the watch, anything else moves to the
    /// next endpoint (after a backoff once every endpoint has failed).
    async fn fail(&mut self, status: Status) -> Result<(), ClientError> {
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        self.failures += 1;
        let (_, addr, _) = self.client.peer_at(self.target);
        debug!(
            endpoint = %addr,
            code = crate::code_name(status.code()),
            message = status.message(),
            resume_from = ?self.resume_from,
            "watch failed; resuming elsewhere"
        );
        let give_up = |reason| ClientError {
            op: "watch_events",
            code: status.code(),
            message: status.message().to_owned(),
            attempts: self.failures,
            elapsed: since.elapsed(),
            tried: self.tried.clone(),
            reason,
            request_id: String::new(),
            rejection: None,
            overloaded: is_overloaded(&status),
        };
        // A node that ended the watch names where to resume: before the first message of a
        // watch from now, that is the position it started at, which no other node knows.
        if let Some(position) = resume_from_of(&status) {
            self.resume_from = Some(self.resume_from.map_or(position, |at| at.max(position)));
        }
        // A call just created may not be applied yet on the node asked: NOT_FOUND is final
        // only once every endpoint has said it since the last message.
        let lagging =
            status.code() == Code::NotFound && self.tried.len() < self.client.endpoints().len();
        if is_final(&status) && !lagging {
            return Err(give_up(GiveUp::NotRetryable));
        }
        if self.failures > self.client.config().retries_max {
            return Err(give_up(GiveUp::RetriesExhausted));
        }
        self.resumed += 1;
        self.target = self.client.next_target(Route::Any, self.target, &addr);
        if self.client.is_tried(self.target, &self.tried) {
            tokio::time::sleep(self.client.backoff(self.failures)).await;
        }
        Ok(())
    }
}

/// Errors no other node or later attempt answers differently.
fn is_final(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::FailedPrecondition
            | Code::Unimplemented
            | Code::OutOfRange
    )
}
