//! Conversions between the wire types (`proto::v1`) and the domain (`raft_store::domain`).
//!
//! Requests become domain commands here, with every wire-only failure (an unparsable call id,
//! an unspecified enum) reported as the same `Invalid {field, problem}` the domain uses, so the
//! client sees one kind of INVALID_ARGUMENT whichever layer found it. Cluster members given to
//! `AddLearner` and `Initialize` are checked here too, against the bounds in [`crate::config`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use domain::limits::{Field, Invalid, Problem};
use domain::{
    Activity, ActivityInput, ActivityStatus, ActivityType, Call, CallId, CallState, Channel,
    Command, ContextSnapshot, Erasure, Event, Handoff, Labels, Lifecycle, Payload, Rejection,
    Retention, Severity, Turn, Urgency,
};
use proto::v1;
use raft_store::Member;

use crate::config::{MEMBER_ADDR_BYTES_MAX, REGION_BYTES_MAX};

pub fn call_id(text: &str) -> Result<CallId, Invalid> {
    if text.is_empty() {
        return Err(Invalid::new(Field::CallId, Problem::Empty));
    }
    CallId::parse_str(text).map_err(|_| Invalid::new(Field::CallId, Problem::Malformed))
}

fn labels(map: HashMap<String, String>) -> Labels {
    map.into_iter().collect()
}

fn wire_labels(map: &BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn channel(value: i32) -> Result<Channel, Invalid> {
    match v1::Channel::try_from(value) {
        Ok(v1::Channel::Voice) => Ok(Channel::Voice),
        Ok(v1::Channel::Chat) => Ok(Channel::Chat),
        Ok(v1::Channel::Unspecified) => Err(Invalid::new(Field::Channel, Problem::Unspecified)),
        Err(_) => Err(Invalid::new(Field::Channel, Problem::Malformed)),
    }
}

fn urgency(value: i32) -> Result<Urgency, Invalid> {
    match v1::Urgency::try_from(value) {
        // Unspecified urgency is the ordinary case, not an error.
        Ok(v1::Urgency::Unspecified | v1::Urgency::Normal) => Ok(Urgency::Normal),
        Ok(v1::Urgency::Low) => Ok(Urgency::Low),
        Ok(v1::Urgency::High) => Ok(Urgency::High),
        Ok(v1::Urgency::Critical) => Ok(Urgency::Critical),
        Err(_) => Err(Invalid::new(Field::Urgency, Problem::Malformed)),
    }
}

/// The state filter of a list request: unspecified means any state.
pub fn state_filter(value: i32) -> Result<Option<CallState>, Invalid> {
    match v1::CallState::try_from(value) {
        Ok(v1::CallState::Unspecified) => Ok(None),
        Ok(v1::CallState::Created) => Ok(Some(CallState::Created)),
        Ok(v1::CallState::Active) => Ok(Some(CallState::Active)),
        Ok(v1::CallState::HandedOff) => Ok(Some(CallState::HandedOff)),
        Ok(v1::CallState::Ended) => Ok(Some(CallState::Ended)),
        Err(_) => Err(Invalid::new(Field::State, Problem::Malformed)),
    }
}

/// A mutating request as the three things every write carries: who, the idempotency key, what.
#[derive(Debug)]
pub struct WriteRequest {
    pub tenant_id: String,
    pub request_id: String,
    pub command: Command,
}

pub fn create_call(req: v1::CreateCallRequest) -> Result<WriteRequest, Invalid> {
    Ok(WriteRequest {
        command: Command::CreateCall {
            source: req.source,
            channel: channel(req.channel)?,
            metadata: labels(req.metadata),
            trace_id: req.trace_id,
        },
        tenant_id: req.tenant_id,
        request_id: req.request_id,
    })
}

pub fn start_call(req: v1::StartCallRequest) -> Result<WriteRequest, Invalid> {
    Ok(WriteRequest {
        command: Command::StartCall {
            call_id: call_id(&req.call_id)?,
        },
        tenant_id: req.tenant_id,
        request_id: req.request_id,
    })
}

pub fn append_turn(req: v1::AppendTurnRequest) -> Result<WriteRequest, Invalid> {
    Ok(WriteRequest {
        command: Command::AppendTurn {
            call_id: call_id(&req.call_id)?,
            speaker: req.speaker,
            text: req.text,
            confidence: req.confidence,
            language: req.language,
            spoken_at_ms: req.spoken_at_ms,
        },
        tenant_id: req.tenant_id,
        request_id: req.request_id,
    })
}

pub fn log_event(req: v1::LogEventRequest) -> Result<WriteRequest, Invalid> {
    let payload = match req.payload {
        Some(v1::log_event_request::Payload::PayloadJson(json)) => Payload::Json(json),
        Some(v1::log_event_request::Payload::PayloadBytes(bytes)) => Payload::Bytes(bytes),
        None => Payload::Json("{}".to_owned()),
    };
    Ok(WriteRequest {
        command: Command::LogEvent {
            call_id: call_id(&req.call_id)?,
            event_type: req.event_type,
            payload,
            metadata: labels(req.metadata),
        },
        tenant_id: req.tenant_id,
        request_id: req.request_id,
    })
}

pub fn update_context(req: v1::UpdateContextRequest) -> Result<WriteRequest, Invalid> {
    Ok(WriteRequest {
        command: Command::UpdateContext {
            call_id: call_id(&req.call_id)?,
            summary: req.summary,
            entities: labels(req.entities),
        },
        tenant_id: req.tenant_id,
        request_id: req.request_id,
    })
}

pub fn request_handoff(req: v1::RequestHandoffRequest) -> Result<WriteRequest, Invalid> {
    Ok(WriteRequest {
        command: Command::RequestHandoff {
            call_id: call_id(&req.call_id)?,
            reason: req.reason,
            urgency: urgency(req.urgency)?,
            target: req.target,
        },
        tenant_id: req.tenant_id,
        request_id: req.request_id,
    })
}

pub fn end_call(req: v1::EndCallRequest) -> Result<WriteRequest, Invalid> {
    Ok(WriteRequest {
        command: Command::EndCall {
            call_id: call_id(&req.call_id)?,
            reason: req.reason,
            resolution: req.resolution,
        },
        tenant_id: req.tenant_id,
        request_id: req.request_id,
    })
}

/// An erase asked by `actor` (the subject of the caller's token).
pub fn erase_call(req: v1::EraseCallRequest, actor: &str) -> Result<WriteRequest, Invalid> {
    Ok(WriteRequest {
        command: Command::EraseCall {
            call_id: call_id(&req.call_id)?,
            reason: req.reason,
            actor: actor.to_owned(),
        },
        tenant_id: req.tenant_id,
        request_id: req.request_id,
    })
}

/// A cluster member given to `AddLearner` or `Initialize` that cannot be one. Not a domain
/// [`Invalid`]: members are Raft membership, which the domain never sees. Messages name the field
/// and the bound it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberInvalid {
    #[error("node_id must be a positive integer")]
    NodeIdZero,
    #[error("node_ids must not be empty")]
    NodeIdsEmpty,
    #[error("members must not be empty")]
    MembersEmpty,
    #[error("addr must not be empty")]
    AddrEmpty,
    #[error("addr is {bytes} bytes, over the bound of {bytes_max} bytes")]
    AddrBytesOver { bytes: usize, bytes_max: usize },
    #[error("addr {addr:?} is not host:port (a non-empty host and a port in 1..=65535)")]
    AddrNotHostPort { addr: String },
    #[error("region is {bytes} bytes, over the bound of {bytes_max} bytes")]
    RegionBytesOver { bytes: usize, bytes_max: usize },
    #[error("node_ids: node {node_id} is not a member of the cluster")]
    NotAMember { node_id: u64 },
}

/// True for `host:port` with a non-empty host and a port in 1..=65535 that is also a plain URI
/// authority (no spaces, path or user info): peers and clients dial `http://{addr}`.
fn is_host_port(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    let port_ok = !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && matches!(port.parse::<u16>(), Ok(1..));
    !host.is_empty()
        && port_ok
        && !addr.contains('@')
        && addr.parse::<http::uri::Authority>().is_ok()
}

/// A cluster member as Raft records it, checked first: nothing is proposed for a member that
/// breaks a bound.
pub fn member(node_id: u64, addr: String, region: String) -> Result<(u64, Member), MemberInvalid> {
    if node_id == 0 {
        return Err(MemberInvalid::NodeIdZero);
    }
    if addr.is_empty() {
        return Err(MemberInvalid::AddrEmpty);
    }
    if addr.len() > MEMBER_ADDR_BYTES_MAX {
        return Err(MemberInvalid::AddrBytesOver {
            bytes: addr.len(),
            bytes_max: MEMBER_ADDR_BYTES_MAX,
        });
    }
    if !is_host_port(&addr) {
        return Err(MemberInvalid::AddrNotHostPort { addr });
    }
    if region.len() > REGION_BYTES_MAX {
        return Err(MemberInvalid::RegionBytesOver {
            bytes: region.len(),
            bytes_max: REGION_BYTES_MAX,
        });
    }
    Ok((node_id, Member::new(addr, region)))
}

/// The node ids of a `Promote` or `Remove`, at least one.
pub fn node_ids(ids: Vec<u64>) -> Result<BTreeSet<u64>, MemberInvalid> {
    if ids.is_empty() {
        return Err(MemberInvalid::NodeIdsEmpty);
    }
    Ok(ids.into_iter().collect())
}

/// The wire kind of a rejection: the `x-switchboard-rejection` metadata names it. One exhaustive
/// match, so a new rejection cannot reach clients without a kind in the proto contract.
pub fn wire_rejection(rejection: &Rejection) -> v1::RejectionKind {
    match rejection {
        Rejection::UnknownCall { .. } => v1::RejectionKind::UnknownCall,
        Rejection::CallExists { .. } => v1::RejectionKind::CallExists,
        Rejection::IllegalTransition { .. } => v1::RejectionKind::IllegalTransition,
        Rejection::AlreadyHandedOff { .. } => v1::RejectionKind::AlreadyHandedOff,
        Rejection::CallEnded { .. } => v1::RejectionKind::CallEnded,
        Rejection::CallLimitReached { .. } => v1::RejectionKind::CallLimitReached,
        Rejection::Invalid(_) => v1::RejectionKind::Invalid,
        Rejection::RequestIdReused { .. } => v1::RejectionKind::RequestIdReused,
        Rejection::MissingStamp => v1::RejectionKind::MissingStamp,
        Rejection::CallErased { .. } => v1::RejectionKind::CallErased,
    }
}

pub fn wire_state(state: CallState) -> v1::CallState {
    match state {
        CallState::Created => v1::CallState::Created,
        CallState::Active => v1::CallState::Active,
        CallState::HandedOff => v1::CallState::HandedOff,
        CallState::Ended => v1::CallState::Ended,
    }
}

fn wire_urgency(urgency: Urgency) -> v1::Urgency {
    match urgency {
        Urgency::Low => v1::Urgency::Low,
        Urgency::Normal => v1::Urgency::Normal,
        Urgency::High => v1::Urgency::High,
        Urgency::Critical => v1::Urgency::Critical,
    }
}

pub fn wire_turn(turn: &Turn) -> v1::Turn {
    v1::Turn {
        index: turn.index,
        speaker: turn.speaker.clone(),
        text: turn.text.clone(),
        confidence: turn.confidence,
        language: turn.language.clone(),
        spoken_at_ms: turn.spoken_at_ms,
        appended_at_ms: turn.appended_at_ms,
        position: turn.position,
    }
}

fn wire_snapshot(snapshot: &ContextSnapshot) -> v1::ContextSnapshot {
    v1::ContextSnapshot {
        summary: snapshot.summary.clone(),
        entities: wire_labels(&snapshot.entities),
        recent_turns: snapshot.recent_turns.iter().map(wire_turn).collect(),
    }
}

pub fn wire_handoff(handoff: &Handoff) -> v1::Handoff {
    v1::Handoff {
        reason: handoff.reason.clone(),
        urgency: wire_urgency(handoff.urgency).into(),
        target: handoff.target.clone().unwrap_or_default(),
        at_ms: handoff.at_ms,
        position: handoff.position,
        snapshot: Some(wire_snapshot(&handoff.snapshot)),
    }
}

pub fn wire_call(call: &Call) -> v1::Call {
    let (ended_at_ms, end_reason, resolution) = match &call.lifecycle {
        Lifecycle::Ended {
            ended_at_ms,
            reason,
            resolution,
            ..
        } => (Some(*ended_at_ms), reason.clone(), resolution.clone()),
        _ => (None, String::new(), String::new()),
    };
    v1::Call {
        call_id: call.call_id.to_string(),
        tenant_id: call.tenant_id.clone(),
        source: call.source.clone(),
        channel: match call.channel {
            Channel::Voice => v1::Channel::Voice,
            Channel::Chat => v1::Channel::Chat,
        }
        .into(),
        metadata: wire_labels(&call.metadata),
        trace_id: call.trace_id.clone(),
        room_name: call.room_name.clone(),
        state: wire_state(call.state()).into(),
        created_at_ms: call.created_at_ms,
        started_at_ms: call.lifecycle.started_at_ms(),
        ended_at_ms,
        end_reason,
        resolution,
        turn_count: call.turn_count,
        last_sequence_number: call.last_sequence_number,
        summary: call.summary.clone(),
        entities: wire_labels(&call.entities),
        handoff: call.lifecycle.handoff().map(wire_handoff),
        last_position: call.last_position,
        erasure: call.erased.as_ref().map(wire_erasure),
    }
}

pub fn wire_erasure(erasure: &Erasure) -> v1::Erasure {
    v1::Erasure {
        at_ms: erasure.at_ms,
        position: erasure.position,
        turns: erasure.turns,
        events: erasure.events,
        entities: erasure.entities,
    }
}

pub fn wire_event(event: &Event) -> v1::Event {
    v1::Event {
        position: event.position,
        event_id: event.event_id.to_string(),
        event_type: event.event_type.clone(),
        call_id: event.call_id.map(|id| id.to_string()).unwrap_or_default(),
        tenant_id: event.tenant_id.clone(),
        trace_id: event.trace_id.clone(),
        sequence_number: event.sequence_number,
        at_ms: event.at_ms,
        payload: Some(match &event.payload {
            Payload::Json(json) => v1::event::Payload::PayloadJson(json.clone()),
            Payload::Bytes(bytes) => v1::event::Payload::PayloadBytes(bytes.clone()),
        }),
        metadata: wire_labels(&event.metadata),
        activity: event.activity.as_deref().map(wire_activity),
    }
}

pub fn wire_activity(activity: &Activity) -> v1::Activity {
    v1::Activity {
        agent_type: activity.agent_type.clone(),
        agent_name: activity.agent_name.clone(),
        project_id: activity.project_id.clone(),
        task_id: activity.task_id.clone(),
        task_description: activity.task_description.clone(),
        severity: wire_severity(activity.severity) as i32,
        status: wire_status(activity.status) as i32,
        message: activity.message.clone(),
    }
}

pub fn wire_severity(severity: Severity) -> v1::Severity {
    match severity {
        Severity::Debug => v1::Severity::Debug,
        Severity::Info => v1::Severity::Info,
        Severity::Warning => v1::Severity::Warning,
        Severity::Error => v1::Severity::Error,
        Severity::Critical => v1::Severity::Critical,
    }
}

fn wire_status(status: ActivityStatus) -> v1::ActivityStatus {
    match status {
        ActivityStatus::Started => v1::ActivityStatus::Started,
        ActivityStatus::InProgress => v1::ActivityStatus::InProgress,
        ActivityStatus::Completed => v1::ActivityStatus::Completed,
        ActivityStatus::Paused => v1::ActivityStatus::Paused,
        ActivityStatus::Failed => v1::ActivityStatus::Failed,
        ActivityStatus::Conflict => v1::ActivityStatus::Conflict,
    }
}

/// A severity of a record: it must be set.
fn severity(value: i32) -> Result<Severity, Invalid> {
    min_severity(value)?.ok_or(Invalid::new(Field::Severity, Problem::Unspecified))
}

/// A filter's minimum severity: unspecified means none.
pub fn min_severity(value: i32) -> Result<Option<Severity>, Invalid> {
    match v1::Severity::try_from(value) {
        Ok(v1::Severity::Unspecified) => Ok(None),
        Ok(v1::Severity::Debug) => Ok(Some(Severity::Debug)),
        Ok(v1::Severity::Info) => Ok(Some(Severity::Info)),
        Ok(v1::Severity::Warning) => Ok(Some(Severity::Warning)),
        Ok(v1::Severity::Error) => Ok(Some(Severity::Error)),
        Ok(v1::Severity::Critical) => Ok(Some(Severity::Critical)),
        Err(_) => Err(Invalid::new(Field::Severity, Problem::Malformed)),
    }
}

fn status(value: i32) -> Result<ActivityStatus, Invalid> {
    match v1::ActivityStatus::try_from(value) {
        Ok(v1::ActivityStatus::Unspecified) => {
            Err(Invalid::new(Field::Status, Problem::Unspecified))
        }
        Ok(v1::ActivityStatus::Started) => Ok(ActivityStatus::Started),
        Ok(v1::ActivityStatus::InProgress) => Ok(ActivityStatus::InProgress),
        Ok(v1::ActivityStatus::Completed) => Ok(ActivityStatus::Completed),
        Ok(v1::ActivityStatus::Paused) => Ok(ActivityStatus::Paused),
        Ok(v1::ActivityStatus::Failed) => Ok(ActivityStatus::Failed),
        Ok(v1::ActivityStatus::Conflict) => Ok(ActivityStatus::Conflict),
        Err(_) => Err(Invalid::new(Field::Status, Problem::Malformed)),
    }
}

fn activity_type(value: i32) -> Result<ActivityType, Invalid> {
    match v1::ActivityType::try_from(value) {
        Ok(v1::ActivityType::Unspecified) => {
            Err(Invalid::new(Field::ActivityType, Problem::Unspecified))
        }
        Ok(v1::ActivityType::Started) => Ok(ActivityType::Started),
        Ok(v1::ActivityType::Progress) => Ok(ActivityType::Progress),
        Ok(v1::ActivityType::Completed) => Ok(ActivityType::Completed),
        Ok(v1::ActivityType::ConflictDetected) => Ok(ActivityType::ConflictDetected),
        Ok(v1::ActivityType::Paused) => Ok(ActivityType::Paused),
        Ok(v1::ActivityType::Error) => Ok(ActivityType::Error),
        Err(_) => Err(Invalid::new(Field::ActivityType, Problem::Malformed)),
    }
}

/// The wire name of an activity type, as the CLI takes it (`started`, `conflict_detected`).
pub fn activity_type_by_name(name: &str) -> Option<v1::ActivityType> {
    ActivityType::from_event_type(&format!("agent.{name}")).map(|t| match t {
        ActivityType::Started => v1::ActivityType::Started,
        ActivityType::Progress => v1::ActivityType::Progress,
        ActivityType::Completed => v1::ActivityType::Completed,
        ActivityType::ConflictDetected => v1::ActivityType::ConflictDetected,
        ActivityType::Paused => v1::ActivityType::Paused,
        ActivityType::Error => v1::ActivityType::Error,
    })
}

fn activity_entry(entry: v1::ActivityEntry) -> Result<ActivityInput, Invalid> {
    let activity = entry
        .activity
        .ok_or(Invalid::new(Field::AgentType, Problem::Empty))?;
    Ok(ActivityInput {
        activity_type: activity_type(entry.activity_type)?,
        activity: Activity {
            severity: severity(activity.severity)?,
            status: status(activity.status)?,
            agent_type: activity.agent_type,
            agent_name: activity.agent_name,
            project_id: activity.project_id,
            task_id: activity.task_id,
            task_description: activity.task_description,
            message: activity.message,
        },
        call_id: match entry.call_id.as_str() {
            "" => None,
            text => Some(call_id(text)?),
        },
        payload: entry.payload_json,
        metadata: labels(entry.metadata),
    })
}

pub fn record_activity(req: v1::RecordActivityRequest) -> Result<WriteRequest, Invalid> {
    Ok(WriteRequest {
        command: Command::RecordActivity {
            entries: req
                .entries
                .into_iter()
                .map(activity_entry)
                .collect::<Result<_, _>>()?,
        },
        tenant_id: req.tenant_id,
        request_id: req.request_id,
    })
}

pub fn set_retention(req: v1::SetRetentionRequest) -> Result<WriteRequest, Invalid> {
    Ok(WriteRequest {
        command: Command::SetRetention {
            retention: Retention {
                age_ms: (req.max_age_ms > 0).then_some(req.max_age_ms),
                records: (req.max_records > 0).then_some(req.max_records),
            },
        },
        tenant_id: req.tenant_id,
        request_id: req.request_id,
    })
}

pub fn compact_activity(req: v1::CompactActivityRequest) -> Result<WriteRequest, Invalid> {
    Ok(WriteRequest {
        command: Command::CompactActivity,
        tenant_id: req.tenant_id,
        request_id: req.request_id,
    })
}

#[cfg(test)]
mod tests {
    use domain::{CallLimit, CommandKind};

    use super::*;

    #[test]
    fn every_rejection_has_its_own_kind_and_every_kind_a_rejection() {
        let id = CallId::from_u128(1);
        let all = [
            Rejection::UnknownCall { call_id: id },
            Rejection::CallExists { call_id: id },
            Rejection::IllegalTransition {
                call_id: id,
                from: CallState::Created,
                command: CommandKind::EndCall,
            },
            Rejection::AlreadyHandedOff {
                call_id: id,
                at_position: 1,
            },
            Rejection::CallEnded {
                call_id: id,
                command: CommandKind::EndCall,
            },
            Rejection::CallLimitReached {
                call_id: id,
                limit: CallLimit::Turns,
                max: 1,
            },
            Rejection::Invalid(Invalid::new(Field::Text, Problem::Empty)),
            Rejection::RequestIdReused {
                request_id: "r".into(),
            },
            Rejection::MissingStamp,
            Rejection::CallErased {
                call_id: id,
                command: CommandKind::AppendTurn,
            },
        ];
        let kinds: Vec<v1::RejectionKind> = all.iter().map(wire_rejection).collect();
        assert_eq!(kinds, v1::RejectionKind::ALL);
    }

    #[test]
    fn a_malformed_call_id_names_the_field() {
        let err = call_id("not-a-uuid").expect_err("malformed");
        assert_eq!(err.field, Field::CallId);
        assert_eq!(call_id("").expect_err("empty").problem, Problem::Empty);
    }

    #[test]
    fn a_member_within_bounds_is_accepted() {
        for addr in [
            "127.0.0.1:7101",
            "node-4:1",
            "[::1]:65535",
            "switchboard-3.svc:7101",
        ] {
            let (id, member) =
                member(4, addr.to_owned(), "eu-west-1".to_owned()).expect("valid member");
            assert_eq!((id, member.addr.as_str()), (4, addr));
        }
        let region = "r".repeat(REGION_BYTES_MAX);
        assert!(member(4, "a:1".to_owned(), region).is_ok());
    }

    #[test]
    fn a_member_breaking_a_bound_is_refused_naming_the_field_and_the_bound() {
        let refused = |node_id: u64, addr: &str, region: &str| {
            member(node_id, addr.to_owned(), region.to_owned()).expect_err("refused")
        };
        assert_eq!(refused(0, "a:1", ""), MemberInvalid::NodeIdZero);
        assert_eq!(refused(4, "", ""), MemberInvalid::AddrEmpty);
        for addr in [
            "node-4",
            ":7101",
            "node-4:",
            "node-4:0",
            "node-4:65536",
            "node-4:+80",
            "node 4:7101",
            "user@node-4:7101",
            "node-4:7101/x",
            "::1:7101",
        ] {
            assert_eq!(
                refused(4, addr, ""),
                MemberInvalid::AddrNotHostPort {
                    addr: addr.to_owned()
                },
                "{addr}"
            );
        }
        let long = format!("{}:7101", "h".repeat(MEMBER_ADDR_BYTES_MAX));
        let error = refused(4, &long, "");
        assert_eq!(
            error,
            MemberInvalid::AddrBytesOver {
                bytes: long.len(),
                bytes_max: MEMBER_ADDR_BYTES_MAX
            }
        );
        let message = error.to_string();
        assert!(message.starts_with("addr "), "{message}");
        assert!(
            message.contains(&MEMBER_ADDR_BYTES_MAX.to_string()),
            "{message}"
        );
        let error = refused(4, "a:1", &"r".repeat(REGION_BYTES_MAX + 1));
        let message = error.to_string();
        assert!(message.starts_with("region "), "{message}");
        assert!(message.contains(&REGION_BYTES_MAX.to_string()), "{message}");
        assert_eq!(node_ids(vec![]), Err(MemberInvalid::NodeIdsEmpty));
    }

    #[test]
    fn an_unspecified_channel_is_invalid() {
        let req = v1::CreateCallRequest {
            tenant_id: "t".into(),
            request_id: "r".into(),
            ..Default::default()
        };
        assert_eq!(
            create_call(req).expect_err("no channel"),
            Invalid::new(Field::Channel, Problem::Unspecified)
        );
    }
}
