//! The one mapping from errors to gRPC `Status` (STYLE "Errors"): everything the API can fail
//! with becomes an [`ApiError`], and only `From<ApiError> for Status` decides codes and metadata.

use domain::Rejection;
use domain::limits::Invalid;
use openraft::error::{
    ChangeMembershipError, ClientWriteError, Fatal, ForwardToLeader, InitializeError,
    LinearizableReadError, PreconditionFailed, QuorumNotEnough, RaftError,
};
use openraft::type_config::alias::CommittedLeaderIdOf;
use raft_store::{NodeId, ReadError, TypeConfig};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

pub use client::{LEADER_ADDR_HEADER, LEADER_ID_HEADER, OVERLOADED_HEADER, REJECTION_HEADER};

use crate::admission::Overloaded;
use crate::auth::AuthError;
use crate::convert::MemberInvalid;

/// A membership change openraft refused.
pub type MembershipError = ChangeMembershipError<CommittedLeaderIdOf<TypeConfig>, NodeId>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid argument: {0}")]
    Invalid(#[from] Invalid),
    #[error("invalid argument: {0}")]
    Member(#[from] MemberInvalid),
    #[error("{0}")]
    Rejected(Rejection),
    #[error("{}", not_leader_message(.leader_id, .leader_addr))]
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    #[error(
        "{what} did not finish within {timeout_ms} ms; the outcome is unknown, retry with the same request_id"
    )]
    Timeout { what: &'static str, timeout_ms: u64 },
    #[error(
        "node {node_id} has applied index {applied_index}; waited {waited_ms} ms for index {min_index}"
    )]
    NotCaughtUp {
        node_id: u64,
        min_index: u64,
        applied_index: u64,
        waited_ms: u64,
    },
    #[error("{0}")]
    Read(#[from] ReadError),
    #[error("cluster change refused: {0}")]
    Membership(MembershipError),
    #[error("cluster initialization refused: {0}")]
    Initialize(InitializeError<TypeConfig>),
    #[error("leadership not confirmed: {0}")]
    NoQuorum(QuorumNotEnough<TypeConfig>),
    #[error("proposal refused: {0}")]
    Precondition(PreconditionFailed<TypeConfig>),
    #[error("raft stopped: {0}")]
    Fatal(#[from] Fatal<TypeConfig>),
    #[error("log entry {index} applied without an outcome")]
    NoOutcome { index: u64 },
    #[error("leader address {addr:?} is not a usable endpoint")]
    LeaderAddr {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("node is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Overloaded(#[from] Overloaded),
    #[error("a read of applied state did not complete: {0}")]
    ReadTask(String),
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error("the audit trail could not be written")]
    AuditTrail,
    #[error(
        "node {node_id} has acknowledged log index {matched_index} of the leader's {last_log_index}: a learner is promoted once it has caught up"
    )]
    LearnerBehind {
        node_id: u64,
        matched_index: u64,
        last_log_index: u64,
    },
    #[error("watch refused: {0}")]
    WatchRefused(crate::watch::WatchEnd),
    #[error(
        "this node serves {watchers_max} watches, its bound (--watchers-max); watch on another node"
    )]
    WatchersFull { watchers_max: usize },
}

/// The one conversion of openraft's API errors: a fatal error stops Raft, every other error is
/// the API's own and converts by its type (below).
impl<E> From<RaftError<TypeConfig, E>> for ApiError
where
    E: Into<ApiError> + std::fmt::Debug,
{
    fn from(error: RaftError<TypeConfig, E>) -> Self {
        match error {
            RaftError::APIError(e) => e.into(),
            RaftError::Fatal(fatal) => ApiError::Fatal(fatal),
        }
    }
}

/// Who openraft says leads; the API adds what this node knows before answering
/// (`Api::with_known_leader`).
impl From<ForwardToLeader<TypeConfig>> for ApiError {
    fn from(forward: ForwardToLeader<TypeConfig>) -> Self {
        ApiError::NotLeader {
            leader_id: forward.leader_id,
            leader_addr: forward.leader_node.map(|member| member.addr),
        }
    }
}

impl From<ClientWriteError<TypeConfig>> for ApiError {
    fn from(error: ClientWriteError<TypeConfig>) -> Self {
        match error {
            // A discarded entry may still commit through the new leader: the client retries
            // there with the same request_id, which answers with the original outcome.
            ClientWriteError::ForwardToLeader(forward)
            | ClientWriteError::LogEntryDiscarded(forward) => forward.into(),
            ClientWriteError::ChangeMembershipError(e) => ApiError::Membership(e),
            ClientWriteError::PreconditionFailed(e) => ApiError::Precondition(e),
        }
    }
}

impl From<LinearizableReadError<TypeConfig>> for ApiError {
    fn from(error: LinearizableReadError<TypeConfig>) -> Self {
        match error {
            LinearizableReadError::ForwardToLeader(forward) => forward.into(),
            LinearizableReadError::QuorumNotEnough(e) => ApiError::NoQuorum(e),
        }
    }
}

impl From<InitializeError<TypeConfig>> for ApiError {
    fn from(error: InitializeError<TypeConfig>) -> Self {
        ApiError::Initialize(error)
    }
}

fn not_leader_message(leader_id: &Option<u64>, leader_addr: &Option<String>) -> String {
    match (leader_id, leader_addr) {
        (Some(id), Some(addr)) => {
            format!("this node is not the leader; the leader is node {id} at {addr}")
        }
        (Some(id), None) => {
            format!("this node is not the leader; the leader is node {id}, address unknown")
        }
        _ => "this node is not the leader and no leader is known; retry later".to_owned(),
    }
}

fn rejection_code(rejection: &Rejection) -> Code {
    match rejection {
        Rejection::UnknownCall { .. } => Code::NotFound,
        Rejection::Invalid(_) => Code::InvalidArgument,
        Rejection::CallExists { .. } => Code::AlreadyExists,
        Rejection::IllegalTransition { .. }
        | Rejection::AlreadyHandedOff { .. }
        | Rejection::CallEnded { .. }
        | Rejection::CallLimitReached { .. }
        | Rejection::CallErased { .. }
        | Rejection::RequestIdReused { .. } => Code::FailedPrecondition,
        Rejection::MissingStamp => Code::Internal,
    }
}

/// An internal failure: logged here, where it is handled, and answered as INTERNAL without its
/// detail. The detail can name member addresses, paths or storage internals, which are the
/// operator's business, not the client's.
fn internal(detail: String) -> Status {
    tracing::error!(error = %detail, "internal failure while serving a request");
    Status::internal("internal error; the node logged the cause")
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        let message = error.to_string();
        match error {
            ApiError::Invalid(_) | ApiError::Member(_) => Status::invalid_argument(message),
            ApiError::Rejected(rejection) => {
                let mut status = Status::new(rejection_code(&rejection), message);
                status.metadata_mut().insert(
                    REJECTION_HEADER,
                    MetadataValue::from_static(
                        crate::convert::wire_rejection(&rejection).wire_name(),
                    ),
                );
                status
            }
            ApiError::NotLeader {
                leader_id,
                leader_addr,
            } => {
                let mut status = Status::unavailable(message);
                let id = leader_id.map(|id| id.to_string()).unwrap_or_default();
                let addr = leader_addr.unwrap_or_default();
                // Both always present (empty when unknown), as DESIGN §4 says.
                if let Ok(id) = MetadataValue::try_from(id.as_str()) {
                    status.metadata_mut().insert(LEADER_ID_HEADER, id);
                }
                if let Ok(addr) = MetadataValue::try_from(addr.as_str()) {
                    status.metadata_mut().insert(LEADER_ADDR_HEADER, addr);
                }
                status
            }
            ApiError::Timeout { .. } => Status::deadline_exceeded(message),
            // Counted here, the one place every refusal passes; the label is bounded.
            ApiError::Auth(error) => {
                metrics::counter!(crate::observe::names::AUTH_REFUSED, "reason" => error.reason())
                    .increment(1);
                if error.is_denied() {
                    Status::permission_denied(message)
                } else {
                    Status::unauthenticated(message)
                }
            }
            // Not a rejection: nothing was done, so it is not final and names no
            // `RejectionKind` (those are replicated verdicts). The header tells the client it
            // is this node's load, not a message over the size bound, and that backing off helps.
            ApiError::Overloaded(overloaded) => {
                let mut status = Status::resource_exhausted(message);
                status.metadata_mut().insert(
                    OVERLOADED_HEADER,
                    MetadataValue::from_static(overloaded.class.as_str()),
                );
                status
            }
            // Both pass: a lagging node catches up, a leader that lost its quorum steps down or
            // gets it back; the client retries (elsewhere).
            ApiError::NotCaughtUp { .. } => Status::unavailable(message),
            // openraft describes the whole membership, addresses included: log it, say less.
            ApiError::NoQuorum(_) => {
                tracing::warn!(error = %message, "leadership not confirmed by a quorum");
                Status::unavailable(
                    "this node could not confirm its leadership with a quorum; retry later",
                )
            }
            ApiError::Read(ReadError::UnknownCall { .. }) => Status::not_found(message),
            ApiError::Read(ReadError::Invalid(_)) => Status::invalid_argument(message),
            ApiError::Initialize(InitializeError::NotInMembers(_)) => {
                Status::invalid_argument(message)
            }
            ApiError::Membership(_)
            | ApiError::LearnerBehind { .. }
            | ApiError::Initialize(InitializeError::NotAllowed(_))
            | ApiError::Precondition(_) => Status::failed_precondition(message),
            ApiError::ShuttingDown | ApiError::Fatal(Fatal::Stopped) => {
                Status::unavailable(message)
            }
            // Another node may serve it: the client moves on.
            ApiError::WatchRefused(_) => Status::unavailable(message),
            ApiError::WatchersFull { .. } => Status::resource_exhausted(message),
            ApiError::Read(ReadError::Storage(_))
            | ApiError::Fatal(_)
            | ApiError::NoOutcome { .. }
            | ApiError::ReadTask(_)
            | ApiError::AuditTrail
            | ApiError::LeaderAddr { .. } => internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use domain::{CallId, CallState, CommandKind};

    use super::*;

    #[test]
    fn an_illegal_transition_is_failed_precondition_naming_call_state_and_command() {
        let call_id = CallId::from_u128(1);
        let status = Status::from(ApiError::Rejected(Rejection::IllegalTransition {
            call_id,
            from: CallState::Created,
            command: CommandKind::RequestHandoff,
        }));
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().contains(&call_id.to_string()));
        assert!(status.message().contains("CREATED"));
        assert!(status.message().contains("RequestHandoff"));
        assert_eq!(
            status
                .metadata()
                .get(REJECTION_HEADER)
                .map(|v| v.to_str().ok()),
            Some(Some("IllegalTransition"))
        );
    }

    #[test]
    fn not_leader_carries_both_headers_even_when_unknown() {
        let status = Status::from(ApiError::NotLeader {
            leader_id: None,
            leader_addr: None,
        });
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.metadata().get(LEADER_ID_HEADER).map(|v| v.len()),
            Some(0)
        );
        assert_eq!(
            status.metadata().get(LEADER_ADDR_HEADER).map(|v| v.len()),
            Some(0)
        );
        let status = Status::from(ApiError::NotLeader {
            leader_id: Some(2),
            leader_addr: Some("127.0.0.1:7102".into()),
        });
        assert_eq!(
            status
                .metadata()
                .get(LEADER_ADDR_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some("127.0.0.1:7102")
        );
    }

    #[test]
    fn a_redirect_from_openraft_names_the_leader_it_knows() {
        let forward =
            ForwardToLeader::<TypeConfig>::new(3, raft_store::Member::new("10.0.0.3:7101", ""));
        let error = ApiError::from(
            RaftError::<TypeConfig, ClientWriteError<TypeConfig>>::APIError(
                ClientWriteError::ForwardToLeader(forward),
            ),
        );
        assert!(
            matches!(&error, ApiError::NotLeader { leader_id: Some(3), leader_addr: Some(addr) } if addr == "10.0.0.3:7101"),
            "{error:?}"
        );
        assert_eq!(Status::from(error).code(), Code::Unavailable);
    }

    #[test]
    fn a_bad_member_is_invalid_argument_naming_the_field() {
        let status = Status::from(ApiError::Member(MemberInvalid::RegionBytesOver {
            bytes: 65,
            bytes_max: 64,
        }));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("region"), "{}", status.message());
        assert!(status.message().contains("64"), "{}", status.message());
    }

    #[test]
    fn internal_and_quorum_failures_do_not_show_member_addresses_to_clients() {
        let no_quorum = LinearizableReadError::QuorumNotEnough(QuorumNotEnough::<TypeConfig> {
            cluster: "{1: 10.9.8.7:7101, 2: 10.9.8.6:7101}".into(),
            got: [1].into(),
        });
        let status = Status::from(ApiError::from(no_quorum));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("10.9.8"), "{}", status.message());
        let storage = ApiError::LeaderAddr {
            addr: "10.9.8.7:bad".into(),
            source: tonic::transport::Endpoint::from_shared("\0".to_owned())
                .expect_err("not a uri"),
        };
        let status = Status::from(storage);
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("10.9.8"), "{}", status.message());
    }

    #[test]
    fn raft_failures_are_internal_but_a_stopped_raft_is_unavailable() {
        let panicked =
            RaftError::<TypeConfig, LinearizableReadError<TypeConfig>>::Fatal(Fatal::Panicked);
        assert_eq!(
            Status::from(ApiError::from(panicked)).code(),
            Code::Internal
        );
        let stopped = RaftError::<TypeConfig, InitializeError<TypeConfig>>::Fatal(Fatal::Stopped);
        assert_eq!(
            Status::from(ApiError::from(stopped)).code(),
            Code::Unavailable
        );
        let no_quorum = LinearizableReadError::QuorumNotEnough(QuorumNotEnough::<TypeConfig> {
            cluster: "{1, 2, 3}".into(),
            got: [1].into(),
        });
        assert_eq!(
            Status::from(ApiError::from(no_quorum)).code(),
            Code::Unavailable
        );
    }

    #[test]
    fn a_shed_request_is_resource_exhausted_naming_its_class() {
        use crate::admission::{Class, ClassLimits, Shed};
        let status = Status::from(ApiError::from(Overloaded {
            node_id: 2,
            class: Class::Read,
            limits: ClassLimits {
                in_flight_max: 16,
                queue_max: 64,
            },
            shed: Shed::QueueFull,
        }));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status
                .metadata()
                .get(OVERLOADED_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some("read")
        );
        assert!(status.metadata().get(REJECTION_HEADER).is_none());
        assert!(
            status.message().contains("retry with backoff"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn unknown_call_is_not_found() {
        let status = Status::from(ApiError::Rejected(Rejection::UnknownCall {
            call_id: CallId::from_u128(9),
        }));
        assert_eq!(status.code(), Code::NotFound);
    }
}
