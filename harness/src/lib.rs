//! Starts and watches real `switchboard serve` processes, for `switchboard dev`, the node's
//! integration tests, the drills and the benchmarks alike.
//!
//! It owns the one way to build a `serve` command line ([`ServeCommand`]), the one wait for an
//! elected leader ([`wait_for_leader`], over `ClusterService.Status`) and the one duration
//! grammar of every command line ([`parse_duration`]). With the `process-cluster` feature it
//! also owns [`ProcessCluster`], a cluster on loopback that cleans up after itself.
//!
//! It must not know how a node works inside: it speaks only the `serve` flags and the public
//! gRPC contract. Whatever it starts, it stops, also when the caller fails or panics.

#[cfg(feature = "process-cluster")]
mod cluster;
mod duration;
mod leader;
mod serve;

use std::time::Duration;

#[cfg(feature = "process-cluster")]
pub use cluster::{
    AuthChannel, Bearer, HARNESS_CLUSTER_ID, ProcNode, ProcessCluster, free_port, run_certs,
};
pub use duration::{DURATION_MAX, parse_duration, parse_duration_with_unit};
pub use leader::{Agreement, LastSeen, Leader, status, wait_for_leader};
pub use serve::{ServeCommand, initial_cluster, test_log_filter};

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{text:?} does not start with a number: write e.g. 500ms, 5s or 2m")]
    DurationNumber { text: String },
    #[error("{text:?} has no unit: write e.g. 500ms, 5s or 2m")]
    DurationNoUnit { text: String },
    #[error(
        "unknown unit {unit:?} in {text:?}: use ms, s, m (or min) or h; a bare number is seconds"
    )]
    DurationUnit { text: String, unit: String },
    #[error("{text:?} exceeds the maximum of {} h", max.as_secs() / 3600)]
    DurationTooLong { text: String, max: Duration },
    #[error("no endpoint to ask for a leader")]
    NoEndpoints,
    #[error("{endpoint:?} is not a valid gRPC address")]
    Endpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("failed to connect to {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("status request to {endpoint} failed")]
    Status {
        endpoint: String,
        #[source]
        source: tonic::Status,
    },
    #[error("no {agreement} leader within {within:?} ({last})")]
    NoLeader {
        agreement: Agreement,
        within: Duration,
        last: LastSeen,
    },
    #[error("failed to create the cluster's certificates")]
    Certs(#[source] std::io::Error),
    #[error("failed to create a temp directory")]
    TempDir(#[source] std::io::Error),
    #[error("this cluster does not require tokens (start it with start_authenticated)")]
    NoTokens,
    #[error("`switchboard {command}` failed: {detail}")]
    Tool { command: String, detail: String },
    #[error("failed to find a free port")]
    FreePort(#[source] std::io::Error),
    #[error("no node {0}")]
    NoNode(u64),
    #[error("node {0} is not running")]
    NotRunning(u64),
    #[error("failed to start node {id}")]
    Spawn {
        id: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to kill node {id}")]
    Kill {
        id: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to wait for node {id}")]
    Wait {
        id: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to signal node {id}")]
    Signal {
        id: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("node {id} did not stop within {wait:?} of SIGTERM")]
    StopTimeout { id: u64, wait: Duration },
}
