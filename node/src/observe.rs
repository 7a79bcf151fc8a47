//! Observability: metric names (one place, bounded labels), the Prometheus recorder, the task
//! that publishes Raft and state-machine gauges, and the HTTP endpoints `/metrics`, `/healthz`
//! and `/readyz` (beside the live activity page of [`crate::live`]).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use openraft::async_runtime::WatchReceiver;
use raft_store::Reader;
use tokio_util::sync::CancellationToken;

use crate::Raft;

pub mod names {
    pub const RAFT_TERM: &str = "switchboard_raft_term";
    pub const RAFT_LEADER_ID: &str = "switchboard_raft_leader_id";
    pub const RAFT_IS_LEADER: &str = "switchboard_raft_is_leader";
    pub const RAFT_COMMITTED_INDEX: &str = "switchboard_raft_committed_index";
    pub const RAFT_APPLIED_INDEX: &str = "switchboard_raft_applied_index";
    pub const RAFT_LAST_LOG_INDEX: &str = "switchboard_raft_last_log_index";
    pub const RAFT_APPLY_LAG: &str = "switchboard_raft_apply_lag_entries";
    pub const RAFT_SNAPSHOT_INDEX: &str = "switchboard_raft_snapshot_index";
    pub const CALLS: &str = "switchboard_calls";
    pub const GRPC_REQUEST_SECONDS: &str = "switchboard_grpc_request_duration_seconds";
    /// Client requests admitted, by `class` (`read`, `write`).
    pub const ADMISSION_ADMITTED: &str = "switchboard_admission_admitted_total";
    /// Client requests shed with RESOURCE_EXHAUSTED, by `class` and `reason` (`queue_full`,
    /// `queue_wait`).
    pub const ADMISSION_SHED: &str = "switchboard_admission_shed_total";
    /// Client requests being served, by `class`.
    pub const ADMISSION_IN_FLIGHT: &str = "switchboard_admission_in_flight";
    /// Client requests waiting for a slot, by `class`.
    pub const ADMISSION_QUEUED: &str = "switchboard_admission_queued";
    /// Requests refused by authentication or authorization, by `reason` (`missing`,
    /// `expired`, `role`, `tenant`, ...: [`crate::auth::AuthError::reason`]).
    pub const AUTH_REFUSED: &str = "switchboard_auth_refused_total";
    /// Admin actions, by `action` and `outcome` (`ok`, `error`).
    pub const ADMIN_ACTIONS: &str = "switchboard_admin_actions_total";
    /// Token key set reloads, by `outcome` (`ok`, `error`).
    pub const TOKEN_KEYS_RELOADS: &str = "switchboard_token_keys_reloads_total";
    /// Erasure passes completed on this node (`crate::erasure`).
    pub const ERASURE_PASSES: &str = "switchboard_erasure_passes_total";
    /// Erasure passes that failed and are retried.
    pub const ERASURE_PASS_FAILURES: &str = "switchboard_erasure_pass_failures_total";
    /// Duration of each completed erasure pass.
    pub const ERASURE_PASS_SECONDS: &str = "switchboard_erasure_pass_duration_seconds";
    /// PII values redacted from the writes this node proposed as leader (counted once the entry
    /// is in the log), by `kind` (`address`, `card`, `email`, `phone`) and `policy` (`mask`,
    /// `hash`).
    pub const PII_REDACTIONS: &str = "switchboard_pii_redactions_total";
    /// Activity records this node recorded as leader (`RecordActivity`).
    pub const ACTIVITY_RECORDED: &str = "switchboard_activity_recorded_total";
    /// Activity records retention removed by writes this node proposed as leader.
    pub const ACTIVITY_COMPACTED: &str = "switchboard_activity_compacted_total";
    /// Watches this node serves (`WatchEvents`).
    pub const WATCHERS: &str = "switchboard_watchers";
    /// Events sent to watchers.
    pub const WATCH_EVENTS_SENT: &str = "switchboard_watch_events_sent_total";
    /// Watches ended, by `reason` (`consumer_left`, `behind`, `contact_lost`, `shutting_down`,
    /// `storage`).
    pub const WATCH_ENDED: &str = "switchboard_watch_ended_total";
    /// Connections the gRPC port holds (`node/src/edge.rs`).
    pub const EDGE_CONNECTIONS: &str = "switchboard_edge_connections";
    /// Connections closed and requests refused at the edge, by `reason` (`connections`,
    /// `connections_per_client`, `handshake_timeout`, `connection`, `client`, `request_time`,
    /// `message_bytes`).
    pub const EDGE_REFUSED: &str = "switchboard_edge_refused_total";
}

/// How often gauges are refreshed besides on every Raft metrics change.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// Installs the process-wide Prometheus recorder; returns the handle that renders it.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(names::GRPC_REQUEST_SECONDS.to_owned()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
        )?
        .install_recorder()?;
    Ok(handle)
}

/// Ready: a leader is known and this node has applied everything it knows to be committed.
pub fn is_ready(raft: &Raft) -> bool {
    let metrics = raft.metrics().borrow_watched().clone();
    let committed = metrics.local_committed.map_or(0, |l| l.index);
    let applied = metrics.last_applied.map_or(0, |l| l.index);
    metrics.current_leader.is_some() && applied >= committed && metrics.running_state.is_ok()
}

/// Publishes gauges until `shutdown`.
pub async fn publish(raft: Raft, reader: Reader, shutdown: CancellationToken) {
    let mut changes = raft.metrics();
    loop {
        {
            let m = changes.borrow_and_update().clone();
            let leader = m.current_leader.unwrap_or(0);
            let committed = m.local_committed.map_or(0, |l| l.index);
            let applied = m.last_applied.map_or(0, |l| l.index);
            metrics::gauge!(names::RAFT_TERM).set(m.current_term as f64);
            metrics::gauge!(names::RAFT_LEADER_ID).set(leader as f64);
            metrics::gauge!(names::RAFT_IS_LEADER).set(f64::from(u8::from(leader == m.id)));
            metrics::gauge!(names::RAFT_COMMITTED_INDEX).set(committed as f64);
            metrics::gauge!(names::RAFT_APPLIED_INDEX).set(applied as f64);
            metrics::gauge!(names::RAFT_LAST_LOG_INDEX).set(m.last_log_index.unwrap_or(0) as f64);
            metrics::gauge!(names::RAFT_APPLY_LAG).set(committed.saturating_sub(applied) as f64);
            metrics::gauge!(names::RAFT_SNAPSHOT_INDEX)
                .set(m.snapshot.map_or(0, |l| l.index) as f64);
        }
        match reader.call_counts() {
            Ok(counts) => {
                for (state, count) in counts.value {
                    metrics::gauge!(names::CALLS, "state" => state.as_str()).set(count as f64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "failed to read call counts for metrics"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(PUBLISH_INTERVAL) => {}
        }
    }
}

#[derive(Clone)]
struct HttpState {
    raft: Raft,
    prometheus: Arc<PrometheusHandle>,
}

/// Serves `/metrics`, `/healthz`, `/readyz` and the live page's routes (through `api`, whose
/// watches they open) on `listener` until `shutdown`.
pub async fn serve_http(
    listener: crate::tls::HttpListener,
    raft: Raft,
    api: crate::api::Api,
    prometheus: PrometheusHandle,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = HttpState {
        raft,
        prometheus: Arc::new(prometheus),
    };
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|State(s): State<HttpState>| async move { s.prometheus.render() }),
        )
        .route(
            "/healthz",
            get(|State(s): State<HttpState>| async move {
                match s.raft.metrics().borrow_watched().running_state.clone() {
                    Ok(()) => (StatusCode::OK, "ok".to_owned()),
                    Err(fatal) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("raft stopped: {fatal}"),
                    ),
                }
            }),
        )
        .route(
            "/readyz",
            get(|State(s): State<HttpState>| async move {
                if is_ready(&s.raft) {
                    (StatusCode::OK, "ready")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: no leader known or apply behind commit",
                    )
                }
            }),
        )
        .with_state(state)
        .merge(crate::live::router(api));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
