//! The one mapping from errors to gRPC `Status` (STYLE "Errors"): everything the API can fail
//! with becomes an [`ApiError`], and only `From<ApiError> for Status` decides codes and metadata.

use domain::Rejection;
use domain::limits::Invalid;
use raft_store::ReadError;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

pub use client::{LEADER_ADDR_HEADER, LEADER_ID_HEADER, REJECTION_HEADER};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid argument: {0}")]
    Invalid(#[from] Invalid),
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
    Membership(String),
    #[error("raft failure: {0}")]
    Raft(String),
    #[error("node is shutting down")]
    ShuttingDown,
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
        | Rejection::RequestIdReused { .. } => Code::FailedPrecondition,
        Rejection::MissingStamp => Code::Internal,
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        let message = error.to_string();
        match error {
            ApiError::Invalid(_) => Status::invalid_argument(message),
            ApiError::Rejected(rejection) => {
                let mut status = Status::new(rejection_code(&rejection), message);
                status.metadata_mut().insert(
                    REJECTION_HEADER,
                    MetadataValue::from_static(rejection.name()),
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
            ApiError::NotCaughtUp { .. } => Status::unavailable(message),
            ApiError::Read(ReadError::UnknownCall { .. }) => Status::not_found(message),
            ApiError::Read(ReadError::Invalid(_)) => Status::invalid_argument(message),
            ApiError::Read(ReadError::Storage(e)) => {
                tracing::error!(error = %e, "storage failure while serving a read");
                Status::internal(message)
            }
            ApiError::Membership(_) => Status::failed_precondition(message),
            ApiError::Raft(_) => {
                tracing::error!(error = %message, "raft failure while serving a request");
                Status::internal(message)
            }
            ApiError::ShuttingDown => Status::unavailable(message),
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
    fn unknown_call_is_not_found() {
        let status = Status::from(ApiError::Rejected(Rejection::UnknownCall {
            call_id: CallId::from_u128(9),
        }));
        assert_eq!(status.code(), Code::NotFound);
    }
}
