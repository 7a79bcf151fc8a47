//! The internal Raft transport: openraft's network between the nodes of one cluster, over gRPC
//! (`switchboard.raft.v1.RaftService`).
//!
//! Owns both ends of the wire: [`NetworkFactory`] (the client openraft calls to reach a peer) and
//! [`RaftServiceImpl`] (the server that hands what peers send to the local [`crate::Raft`]). It
//! must not decide anything Raft decides: it moves openraft's messages, checks that they come
//! from this cluster and are meant for this node, and bounds time and memory while doing it.
//!
//! # Wire
//!
//! Every openraft message (AppendEntries, Vote, Pre-Vote, TransferLeader requests and their
//! responses, and the snapshot's vote, meta and response) travels postcard-encoded in
//! `RaftPayload.data`, with the sender's `cluster_id` and `from_node_id` and the `to_node_id` it
//! means to reach. A receiver refuses another cluster's or another node's message with
//! `FAILED_PRECONDITION` naming the sender's ids (never its own cluster id), so a peer whose
//! address now belongs to another node never answers a vote in that node's name.
//!
//! # Who may call
//!
//! With TLS ([`TransportConfig::authenticate_peers`]), every RPC is first checked against the
//! verified certificate of the connection it came on ([`crate::tls::PeerInfo`]): no certificate
//! is `UNAUTHENTICATED`; a certificate that names no node, a node of another cluster, a node
//! that is neither a member (voter or learner) of this node's membership nor in
//! `--initial-cluster`, or a node other than the payload's `from_node_id`, is
//! `PERMISSION_DENIED`. A node whose membership is still empty (a fresh node waiting to be
//! added) admits any node of its cluster: the CA is the authority then. Connections this node
//! dials present its own certificate and accept only the node they dialled ([`Dialer`]). Both ends must run the same openraft version: the
//! encoding is openraft's serde form, which changes when openraft's types do.
//!
//! # Errors: gRPC status, never in the payload
//!
//! A payload always carries a successful openraft response. Protocol answers such as "vote not
//! granted", `Conflict` or `HigherVote` are responses, not errors. The only error the receiving
//! `Raft` can return is `Fatal` (it stopped, panicked or lost its storage): the server maps it to
//! `UNAVAILABLE`. openraft 0.10's `RaftNetworkV2` returns `RPCError<C, Infallible>`, whose
//! `RemoteError` variant cannot be built, so there is nothing a remote error could become
//! except what follows. The client maps a status:
//!
//! | status | openraft error | why |
//! |---|---|---|
//! | `UNAVAILABLE` (connect refused, connection lost, remote Raft stopped), `FAILED_PRECONDITION` (other cluster or node), `INVALID_ARGUMENT` (undecodable: version skew), `UNIMPLEMENTED`, `RESOURCE_EXHAUSTED`, `PERMISSION_DENIED`, `UNAUTHENTICATED` | `Unreachable` | retrying at once cannot help: openraft backs off |
//! | `DEADLINE_EXCEEDED`, or our own timer | `Timeout` | |
//! | anything else (`CANCELLED`, `UNKNOWN`, `INTERNAL`, `ABORTED`, `DATA_LOSS`, ...) | `Network` | transient: openraft retries at once |
//!
//! Pre-Vote answers `UNIMPLEMENTED` from a peer that predates the RPC with a grant, as openraft's
//! own default does for networks without Pre-Vote, so a rolling upgrade keeps electing leaders.
//!
//! # Time
//!
//! A unary RPC is bounded by the smaller of [`TransportConfig::rpc_timeout`] and the hard TTL
//! openraft passes in `RPCOption` (for AppendEntries that is its heartbeat interval). A snapshot
//! transfer is bounded as a whole by [`TransportConfig::snapshot_timeout`], and each message of
//! it must be taken by the connection within `rpc_timeout`, so a stalled peer fails fast. The
//! `RPCOption` openraft passes to `full_snapshot` is ignored: it holds `install_snapshot_timeout`
//! (200 ms by default), which openraft documents as a per-segment timeout of its deprecated
//! chunked API and does not enforce on a streamed transfer. Connections are created lazily,
//! so an unreachable peer never blocks the caller, and are probed by HTTP/2 keepalive, so a peer
//! that vanished without closing its connection is noticed.
//!
//! # Snapshots
//!
//! `InstallSnapshot` streams one header (vote, meta, size, ids), data chunks of
//! [`TransportConfig::snapshot_chunk_bytes`] read from the open snapshot file, and one trailer
//! (size and SHA-256 of the data). Memory is bounded on both ends by a few chunks, never by the
//! snapshot's size. The receiver writes into `snapshots/incoming/`, checks size and digest
//! against the trailer, fsyncs, verifies the file's own framing and that it holds what the header
//! says (a bad file is refused here: the state machine would treat it as a storage error and stop
//! the node), then hands it to `Raft::install_full_snapshot`. A partial file is removed on every
//! failure, including the sender going away mid-stream.

mod client;
mod service;

use std::collections::BTreeSet;
use std::error::Error as StdError;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::tls::Dialer;
pub use client::{Network, NetworkFactory};
pub use service::{RaftServiceImpl, raft_service};

/// When this node last heard from a leader it follows (an `AppendEntries` it accepted or
/// answered with a conflict): how a follower knows it is cut off, which it cannot tell from its
/// own applied index. Clones share the instant.
#[derive(Debug, Clone)]
pub struct LeaderContact {
    epoch: std::time::Instant,
    /// Milliseconds from `epoch` to the last contact; 0 is never.
    last_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Default for LeaderContact {
    fn default() -> Self {
        Self::new()
    }
}

impl LeaderContact {
    pub fn new() -> Self {
        Self {
            epoch: std::time::Instant::now(),
            last_ms: std::sync::Arc::default(),
        }
    }

    /// Records a contact now.
    pub fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.last_ms
            .fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Time since the last contact; `None` if there was none.
    pub fn since(&self) -> Option<Duration> {
        match self.last_ms.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            ms => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        }
    }
}

/// Largest snapshot a node accepts, in bytes.
pub const SNAPSHOT_BYTES_MAX: u64 = 64 << 30;
/// Largest gRPC message of the Raft service, either way. An AppendEntries request holds up to
/// openraft's `max_payload_entries` entries; it must stay under this bound.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 64 << 20;
/// Bounds of [`TransportConfig::snapshot_chunk_bytes`]: a chunk travels as one message.
pub const SNAPSHOT_CHUNK_BYTES_MIN: usize = 4 << 10;
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 16 << 20;
// The largest chunk, with its message framing, fits in one message.
const _: () = assert!(SNAPSHOT_CHUNK_BYTES_MAX + 1024 < RAFT_MESSAGE_BYTES_MAX);
/// Longest cluster id, in bytes.
pub const CLUSTER_ID_BYTES_MAX: usize = 128;
/// Snapshot chunks queued between the file reader and the connection, per transfer.
pub const SNAPSHOT_CHUNKS_IN_FLIGHT: usize = 2;
/// Snapshots one node receives at once; more are refused with `RESOURCE_EXHAUSTED`.
pub const SNAPSHOT_RECEIVES_MAX: usize = 2;
/// Interval of HTTP/2 keepalive pings on a connection to a peer.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a keepalive ping may go unanswered before the connection is dropped.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How this node talks to its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// Id of the cluster; messages from any other cluster are refused.
    pub cluster_id: String,
    /// Raft id of this node.
    pub node_id: u64,
    /// Bound on one unary RPC (openraft's own, smaller TTL wins), and on each snapshot message.
    pub rpc_timeout: Duration,
    /// Bound on a whole snapshot transfer, from either end.
    pub snapshot_timeout: Duration,
    /// Bytes of snapshot data per message.
    pub snapshot_chunk_bytes: usize,
    /// Bound on establishing a TCP connection to a peer.
    pub connect_timeout: Duration,
    /// Whether the Raft service admits only callers with a verified certificate of a member
    /// node (TLS); `false` only under `--insecure`.
    pub authenticate_peers: bool,
    /// The `--initial-cluster` ids: members before this node knows any membership.
    pub initial_members: BTreeSet<u64>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            cluster_id: "switchboard".to_owned(),
            node_id: 0,
            rpc_timeout: Duration::from_secs(2),
            snapshot_timeout: Duration::from_secs(600),
            snapshot_chunk_bytes: 1 << 20,
            connect_timeout: Duration::from_secs(1),
            authenticate_peers: true,
            initial_members: BTreeSet::new(),
        }
    }
}

impl TransportConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cluster_id.is_empty() {
            return Err(ConfigError::Empty {
                field: "cluster_id",
            });
        }
        if self.cluster_id.len() > CLUSTER_ID_BYTES_MAX {
            return Err(ConfigError::OutOfRange {
                field: "cluster_id",
                value: self.cluster_id.len() as u64,
                min: 1,
                max: CLUSTER_ID_BYTES_MAX as u64,
            });
        }
        for (field, value) in [
            ("rpc_timeout", self.rpc_timeout),
            ("snapshot_timeout", self.snapshot_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Zero { field });
            }
        }
        if self.snapshot_timeout < self.rpc_timeout {
            return Err(ConfigError::Shorter {
                field: "snapshot_timeout",
                value: self.snapshot_timeout,
                other: "rpc_timeout",
                other_value: self.rpc_timeout,
            });
        }
        if !(SNAPSHOT_CHUNK_BYTES_MIN..=SNAPSHOT_CHUNK_BYTES_MAX)
            .contains(&self.snapshot_chunk_bytes)
        {
            return Err(ConfigError::OutOfRange {
                field: "snapshot_chunk_bytes",
                value: self.snapshot_chunk_bytes as u64,
                min: SNAPSHOT_CHUNK_BYTES_MIN as u64,
                max: SNAPSHOT_CHUNK_BYTES_MAX as u64,
            });
        }
        Ok(())
    }
}

/// A [`TransportConfig`] field with a value it must not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("transport config {field} must not be empty")]
    Empty { field: &'static str },
    #[error("transport config {field} must be greater than zero")]
    Zero { field: &'static str },
    #[error("transport config {field} is {value}, outside {min}..={max}")]
    OutOfRange {
        field: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("transport config {field} ({value:?}) must be at least {other} ({other_value:?})")]
    Shorter {
        field: &'static str,
        value: Duration,
        other: &'static str,
        other_value: Duration,
    },
}

impl ConfigError {
    /// The offending field.
    pub fn field(&self) -> &'static str {
        match self {
            ConfigError::Empty { field }
            | ConfigError::Zero { field }
            | ConfigError::OutOfRange { field, .. }
            | ConfigError::Shorter { field, .. } => field,
        }
    }
}

/// What can go wrong moving Raft messages; becomes a gRPC status at the server's edge and an
/// openraft `RPCError` at the client's.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("failed to encode {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error("failed to decode {what} from node {from}")]
    Decode {
        what: &'static str,
        from: u64,
        #[source]
        source: postcard::Error,
    },
    // Names the sender's cluster only: this node's cluster id is not the caller's to learn.
    #[error(
        "cluster id mismatch: node {from} of cluster {theirs:?} is not of node {node_id}'s cluster"
    )]
    ClusterMismatch {
        node_id: u64,
        from: u64,
        theirs: String,
    },
    #[error("the raft service answers only nodes of this cluster: {reason}")]
    Unauthenticated { reason: &'static str },
    #[error("the caller's certificate names no node of this cluster")]
    NotANode,
    #[error("the caller's certificate names node {node_id} of another cluster")]
    ForeignCluster { node_id: u64 },
    #[error("node {node_id} is not a member of this cluster")]
    NotMember { node_id: u64 },
    #[error(
        "the caller's certificate names node {cert_node_id} but the message claims node {from}"
    )]
    Impersonation { cert_node_id: u64, from: u64 },
    #[error("node {from} sent a message for node {to} to node {node_id}")]
    WrongNode { node_id: u64, from: u64, to: u64 },
    #[error("node {node_id} has stopped serving raft")]
    Stopped {
        node_id: u64,
        #[source]
        source: openraft::errors::Fatal<raft_store::TypeConfig>,
    },
    #[error("invalid address {addr:?} of node {target}")]
    BadAddress {
        target: u64,
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{rpc} to node {target} at {addr} failed")]
    Rpc {
        rpc: &'static str,
        target: u64,
        addr: String,
        #[source]
        source: tonic::Status,
    },
    #[error("node {node} answered as node {from} of cluster {cluster_id:?}")]
    WrongReply {
        node: u64,
        from: u64,
        cluster_id: String,
    },
    #[error("snapshot stream from node {from} broke")]
    StreamBroken {
        from: u64,
        #[source]
        source: tonic::Status,
    },
    #[error("a snapshot stream must open with a header, got {got}")]
    NoHeader { got: &'static str },
    #[error("snapshot stream sent {got} after its header")]
    OutOfOrder { got: &'static str },
    #[error("snapshot stream ended before its trailer, after {received_bytes} bytes")]
    NoTrailer { received_bytes: u64 },
    #[error("snapshot of {size_bytes} bytes is over the bound of {max_bytes} bytes")]
    SnapshotTooLarge { size_bytes: u64, max_bytes: u64 },
    #[error("snapshot stream carries more than the {size_bytes} bytes its header announced")]
    SnapshotOverrun { size_bytes: u64 },
    #[error(
        "snapshot size mismatch: header says {header_bytes} bytes, trailer {trailer_bytes}, received {received_bytes}"
    )]
    SnapshotSize {
        header_bytes: u64,
        trailer_bytes: u64,
        received_bytes: u64,
    },
    #[error("snapshot sha256 mismatch after {received_bytes} bytes")]
    SnapshotDigest { received_bytes: u64 },
    #[error("received snapshot is not valid")]
    SnapshotInvalid(#[source] raft_store::Error),
    #[error("received snapshot holds {found:?}, the header announced {announced:?}")]
    SnapshotMeta {
        found: Box<raft_store::SnapshotMeta>,
        announced: Box<raft_store::SnapshotMeta>,
    },
    #[error("node {node_id} is already receiving {receives_max} snapshots")]
    SnapshotBusy { node_id: u64, receives_max: usize },
    #[error("snapshot from node {from} not received within {timeout:?}")]
    SnapshotTimeout { from: u64, timeout: Duration },
    #[error("i/o failed on {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        use tonic::Code;
        let code = match &error {
            Error::Decode { .. }
            | Error::NoHeader { .. }
            | Error::OutOfOrder { .. }
            | Error::NoTrailer { .. }
            | Error::SnapshotTooLarge { .. }
            | Error::SnapshotOverrun { .. }
            | Error::SnapshotInvalid(_)
            | Error::SnapshotMeta { .. } => Code::InvalidArgument,
            Error::ClusterMismatch { .. } | Error::WrongNode { .. } => Code::FailedPrecondition,
            Error::Unauthenticated { .. } => Code::Unauthenticated,
            Error::NotANode
            | Error::ForeignCluster { .. }
            | Error::NotMember { .. }
            | Error::Impersonation { .. } => Code::PermissionDenied,
            Error::Stopped { .. } => Code::Unavailable,
            Error::SnapshotBusy { .. } => Code::ResourceExhausted,
            Error::SnapshotSize { .. } | Error::SnapshotDigest { .. } => Code::DataLoss,
            Error::SnapshotTimeout { .. } => Code::DeadlineExceeded,
            Error::Rpc { source, .. } | Error::StreamBroken { source, .. } => source.code(),
            Error::Encode { .. }
            | Error::BadAddress { .. }
            | Error::WrongReply { .. }
            | Error::Io { .. } => Code::Internal,
        };
        tonic::Status::new(code, chain(&error))
    }
}

/// An error and its sources, `: `-separated, for a status message or a log line.
pub(crate) fn chain(error: &dyn StdError) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(next) = source {
        out.push_str(": ");
        out.push_str(&next.to_string());
        source = next.source();
    }
    out
}

pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, Error> {
    postcard::to_stdvec(value).map_err(|source| Error::Encode { what, source })
}

pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    from: u64,
    bytes: &[u8],
) -> Result<T, Error> {
    postcard::from_bytes(bytes).map_err(|source| Error::Decode { what, from, source })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::Membership;
    use openraft::entry::RaftEntry;
    use openraft::impls::leader_id_adv::LeaderId;
    use openraft::raft::{AppendEntriesResponse, VoteRequest};
    use raft_store::{LogId, Member, NodeId, SnapshotMeta, StoredMembership, TypeConfig, Vote};

    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert_eq!(TransportConfig::default().validate(), Ok(()));
    }

    #[test]
    fn invalid_config_names_the_field() {
        let cases: Vec<(TransportConfig, &str)> = vec![
            (
                TransportConfig {
                    cluster_id: String::new(),
                    ..Default::default()
                },
                "cluster_id",
            ),
            (
                TransportConfig {
                    cluster_id: "x".repeat(CLUSTER_ID_BYTES_MAX + 1),
                    ..Default::default()
                },
                "cluster_id",
            ),
            (
                TransportConfig {
                    rpc_timeout: Duration::ZERO,
                    ..Default::default()
                },
                "rpc_timeout",
            ),
            (
                TransportConfig {
                    connect_timeout: Duration::ZERO,
                    ..Default::default()
                },
                "connect_timeout",
            ),
            (
                TransportConfig {
                    snapshot_timeout: Duration::from_millis(10),
                    ..Default::default()
                },
                "snapshot_timeout",
            ),
            (
                TransportConfig {
                    snapshot_chunk_bytes: 16,
                    ..Default::default()
                },
                "snapshot_chunk_bytes",
            ),
            (
                TransportConfig {
                    snapshot_chunk_bytes: SNAPSHOT_CHUNK_BYTES_MAX + 1,
                    ..Default::default()
                },
                "snapshot_chunk_bytes",
            ),
        ];
        for (config, field) in cases {
            let error = config.validate().expect_err(field);
            assert_eq!(error.field(), field);
            assert!(error.to_string().contains(field), "{error}");
        }
    }

    fn round_trip<T>(value: &T) -> T
    where
        T: Serialize + DeserializeOwned,
    {
        let bytes = encode("value", value).expect("plain data encodes");
        decode("value", 1, &bytes).expect("bytes just encoded decode")
    }

    #[test]
    fn openraft_messages_survive_postcard() {
        let vote = Vote::new(3, 1);
        let log_id = LogId::new(
            LeaderId {
                term: 3,
                node_id: 1,
            },
            7,
        );
        let request = VoteRequest::<TypeConfig>::new(vote, Some(log_id));
        assert_eq!(round_trip(&request), request);

        let response = AppendEntriesResponse::<TypeConfig>::PartialSuccess(Some(log_id));
        assert_eq!(round_trip(&response), response);

        let members = BTreeMap::from([
            (1, Member::new("127.0.0.1:1", "eu")),
            (2, Member::new("127.0.0.1:2", "us")),
        ]);
        let membership =
            Membership::<NodeId, Member>::new(vec![BTreeSet::from([1, 2])], members.clone())
                .expect("voters are members");
        let meta = SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: StoredMembership::new(Some(log_id), membership.clone()),
        };
        assert_eq!(round_trip(&meta), meta);

        let entry = raft_store::Entry::new_membership(log_id, membership);
        let request = openraft::raft::AppendEntriesRequest::<TypeConfig> {
            vote,
            prev_log_id: None,
            entries: vec![entry],
            leader_commit: Some(log_id),
        };
        // No PartialEq on AppendEntriesRequest: compare what it prints.
        assert_eq!(
            format!("{:?}", round_trip(&request)),
            format!("{request:?}")
        );
    }

    #[test]
    fn garbage_is_a_decode_error_naming_what_and_who() {
        let error = decode::<VoteRequest<TypeConfig>>("vote request", 9, &[0xff; 3])
            .expect_err("garbage does not decode");
        let status = tonic::Status::from(error);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("vote request from node 9"),
            "{status:?}"
        );
    }
}
