//! Commands clients ask for, the stamp the leader adds, and the typed rejections.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::model::{CallId, CallState, Channel, Labels, Payload, Urgency, event_type};
use crate::activity::{self, ActivityInput, Retention};
use crate::limits::{
    self, ACTOR_BYTES_MAX, ENTITY_BOUNDS, EVENT_PAYLOAD_BYTES_MAX, EVENT_TYPE_BYTES_MAX, Field,
    Invalid, LANGUAGE_BYTES_MAX, METADATA_BOUNDS, Problem, REASON_BYTES_MAX, REQUEST_ID_BYTES_MAX,
    RESOLUTION_BYTES_MAX, SOURCE_BYTES_MAX, SPEAKER_BYTES_MAX, SUMMARY_BYTES_MAX, TARGET_BYTES_MAX,
    TENANT_ID_BYTES_MAX, TRACE_ID_BYTES_MAX, TURN_TEXT_BYTES_MAX,
};
use crate::redact::Redactions;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    CreateCall {
        source: String,
        channel: Channel,
        metadata: Labels,
        trace_id: Option<String>,
    },
    StartCall {
        call_id: CallId,
    },
    AppendTurn {
        call_id: CallId,
        speaker: String,
        text: String,
        confidence: f32,
        language: String,
        spoken_at_ms: u64,
    },
    LogEvent {
        call_id: CallId,
        event_type: String,
        payload: Payload,
        metadata: Labels,
    },
    UpdateContext {
        call_id: CallId,
        summary: Option<String>,
        entities: Labels,
    },
    RequestHandoff {
        call_id: CallId,
        reason: String,
        urgency: Urgency,
        target: Option<String>,
    },
    EndCall {
        call_id: CallId,
        reason: String,
        resolution: String,
    },
    /// Replaces the call's content with tombstones, keeping its lifecycle skeleton. Entry
    /// format 2.
    EraseCall {
        call_id: CallId,
        /// Why, as the operator states it; kept in the `call.erased` audit event.
        reason: String,
        /// Who asked: the subject of the caller's token.
        actor: String,
    },
    /// Appends agent activity records (one to `ACTIVITY_BATCH_MAX`, all or none). Entry format 3.
    RecordActivity {
        entries: Vec<ActivityInput>,
    },
    /// Sets the tenant's activity retention (an admin action). Entry format 3.
    SetRetention {
        retention: Retention,
    },
    /// Removes the tenant's activity past its retention, a bounded number per entry (the
    /// leader proposes it for tenants with a retention; an admin may too). Entry format 3.
    CompactActivity,
}

/// The kind of a command, for rejections and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CommandKind {
    CreateCall,
    StartCall,
    AppendTurn,
    LogEvent,
    UpdateContext,
    RequestHandoff,
    EndCall,
    EraseCall,
    RecordActivity,
    SetRetention,
    CompactActivity,
}

impl CommandKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::CreateCall => "CreateCall",
            CommandKind::StartCall => "StartCall",
            CommandKind::AppendTurn => "AppendTurn",
            CommandKind::LogEvent => "LogEvent",
            CommandKind::UpdateContext => "UpdateContext",
            CommandKind::RequestHandoff => "RequestHandoff",
            CommandKind::EndCall => "EndCall",
            CommandKind::EraseCall => "EraseCall",
            CommandKind::RecordActivity => "RecordActivity",
            CommandKind::SetRetention => "SetRetention",
            CommandKind::CompactActivity => "CompactActivity",
        }
    }
}

impl std::fmt::Display for CommandKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Command {
    pub fn kind(&self) -> CommandKind {
        match self {
            Command::CreateCall { .. } => CommandKind::CreateCall,
            Command::StartCall { .. } => CommandKind::StartCall,
            Command::AppendTurn { .. } => CommandKind::AppendTurn,
            Command::LogEvent { .. } => CommandKind::LogEvent,
            Command::UpdateContext { .. } => CommandKind::UpdateContext,
            Command::RequestHandoff { .. } => CommandKind::RequestHandoff,
            Command::EndCall { .. } => CommandKind::EndCall,
            Command::EraseCall { .. } => CommandKind::EraseCall,
            Command::RecordActivity { .. } => CommandKind::RecordActivity,
            Command::SetRetention { .. } => CommandKind::SetRetention,
            Command::CompactActivity => CommandKind::CompactActivity,
        }
    }

    /// Whether the command is about the tenant's activity, not one call.
    pub fn is_activity(&self) -> bool {
        matches!(
            self,
            Command::RecordActivity { .. }
                | Command::SetRetention { .. }
                | Command::CompactActivity
        )
    }

    /// The call a command addresses; `None` for `CreateCall`, whose id the leader mints, and
    /// for the tenant's activity commands.
    pub fn call_id(&self) -> Option<CallId> {
        match self {
            Command::CreateCall { .. }
            | Command::RecordActivity { .. }
            | Command::SetRetention { .. }
            | Command::CompactActivity => None,
            Command::StartCall { call_id }
            | Command::AppendTurn { call_id, .. }
            | Command::LogEvent { call_id, .. }
            | Command::UpdateContext { call_id, .. }
            | Command::RequestHandoff { call_id, .. }
            | Command::EndCall { call_id, .. }
            | Command::EraseCall { call_id, .. } => Some(*call_id),
        }
    }

    /// Checks every field against its bound (DESIGN §6).
    pub fn validate(&self) -> Result<(), Invalid> {
        match self {
            Command::CreateCall {
                source,
                channel: _,
                metadata,
                trace_id,
            } => {
                limits::check_bytes(Field::Source, source, SOURCE_BYTES_MAX)?;
                limits::check_map(METADATA_BOUNDS, metadata.iter())?;
                if let Some(trace_id) = trace_id {
                    limits::check_bytes(Field::TraceId, trace_id, TRACE_ID_BYTES_MAX)?;
                }
                Ok(())
            }
            Command::StartCall { .. } => Ok(()),
            Command::AppendTurn {
                speaker,
                text,
                confidence,
                language,
                ..
            } => {
                limits::check_required(Field::Speaker, speaker, SPEAKER_BYTES_MAX)?;
                limits::check_required(Field::Text, text, TURN_TEXT_BYTES_MAX)?;
                if !(0.0..=1.0).contains(confidence) {
                    return Err(Invalid::new(Field::Confidence, Problem::NotInUnitRange));
                }
                limits::check_bytes(Field::Language, language, LANGUAGE_BYTES_MAX)
            }
            Command::LogEvent {
                event_type,
                payload,
                metadata,
                ..
            } => {
                limits::check_required(Field::EventType, event_type, EVENT_TYPE_BYTES_MAX)?;
                if event_type::RESERVED.contains(&event_type.as_str()) {
                    return Err(Invalid::new(Field::EventType, Problem::Reserved));
                }
                if payload.len_bytes() > EVENT_PAYLOAD_BYTES_MAX {
                    return Err(Invalid::new(
                        Field::Payload,
                        Problem::BytesOver {
                            bytes_max: EVENT_PAYLOAD_BYTES_MAX as u64,
                            bytes: payload.len_bytes() as u64,
                        },
                    ));
                }
                if let Payload::Json(text) = payload
                    && serde_json::from_str::<serde::de::IgnoredAny>(text).is_err()
                {
                    return Err(Invalid::new(Field::Payload, Problem::NotJson));
                }
                limits::check_map(METADATA_BOUNDS, metadata.iter())
            }
            Command::UpdateContext {
                summary, entities, ..
            } => {
                if let Some(summary) = summary {
                    limits::check_bytes(Field::Summary, summary, SUMMARY_BYTES_MAX)?;
                }
                limits::check_map(ENTITY_BOUNDS, entities.iter())
            }
            Command::RequestHandoff { reason, target, .. } => {
                limits::check_required(Field::Reason, reason, REASON_BYTES_MAX)?;
                if let Some(target) = target {
                    limits::check_bytes(Field::Target, target, TARGET_BYTES_MAX)?;
                }
                Ok(())
            }
            Command::EndCall {
                reason, resolution, ..
            } => {
                limits::check_required(Field::Reason, reason, REASON_BYTES_MAX)?;
                limits::check_bytes(Field::Resolution, resolution, RESOLUTION_BYTES_MAX)
            }
            Command::EraseCall { reason, actor, .. } => {
                limits::check_bytes(Field::Reason, reason, REASON_BYTES_MAX)?;
                limits::check_required(Field::Actor, actor, ACTOR_BYTES_MAX)
            }
            Command::RecordActivity { entries } => activity::validate_batch(entries),
            Command::SetRetention { retention } => retention.validate(),
            Command::CompactActivity => Ok(()),
        }
    }

    /// A digest of the command's content, used to tell a retry of a request from a different
    /// request that reuses its id. Computed over an explicit canonical form (see
    /// [`Canonical`]), never over an encoding, so it stays stable when types or their
    /// serialization change; changing it is a format change of the idempotency records.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut c = Canonical::new(self.kind());
        match self {
            Command::CreateCall {
                source,
                channel,
                metadata,
                trace_id,
            } => {
                c.str(source);
                c.str(channel.as_str());
                c.map(metadata);
                c.opt_str(trace_id.as_deref());
            }
            Command::StartCall { call_id } => c.id(call_id),
            Command::AppendTurn {
                call_id,
                speaker,
                text,
                confidence,
                language,
                spoken_at_ms,
            } => {
                c.id(call_id);
                c.str(speaker);
                c.str(text);
                c.u64(u64::from(confidence.to_bits()));
                c.str(language);
                c.u64(*spoken_at_ms);
            }
            Command::LogEvent {
                call_id,
                event_type,
                payload,
                metadata,
            } => {
                c.id(call_id);
                c.str(event_type);
                match payload {
                    Payload::Json(text) => c.tagged(b'j', text.as_bytes()),
                    Payload::Bytes(bytes) => c.tagged(b'b', bytes),
                }
                c.map(metadata);
            }
            Command::UpdateContext {
                call_id,
                summary,
                entities,
            } => {
                c.id(call_id);
                c.opt_str(summary.as_deref());
                c.map(entities);
            }
            Command::RequestHandoff {
                call_id,
                reason,
                urgency,
                target,
            } => {
                c.id(call_id);
                c.str(reason);
                c.str(urgency.as_str());
                c.opt_str(target.as_deref());
            }
            Command::EndCall {
                call_id,
                reason,
                resolution,
            } => {
                c.id(call_id);
                c.str(reason);
                c.str(resolution);
            }
            Command::EraseCall {
                call_id,
                reason,
                actor,
            } => {
                c.id(call_id);
                c.str(reason);
                c.str(actor);
            }
            Command::RecordActivity { entries } => {
                c.u64(entries.len() as u64);
                for entry in entries {
                    let a = &entry.activity;
                    c.str(entry.activity_type.event_type());
                    c.str(&a.agent_type);
                    c.str(&a.agent_name);
                    c.str(&a.project_id);
                    c.str(&a.task_id);
                    c.str(&a.task_description);
                    c.str(a.severity.as_str());
                    c.str(a.status.as_str());
                    c.str(&a.message);
                    match &entry.call_id {
                        Some(id) => c.id(id),
                        None => c.opt_str(None),
                    }
                    c.str(&entry.payload);
                    c.map(&entry.metadata);
                }
            }
            Command::SetRetention { retention } => {
                c.opt_u64(retention.age_ms);
                c.opt_u64(retention.records);
            }
            Command::CompactActivity => {}
        }
        c.finish()
    }
}

/// The canonical form a fingerprint hashes: a version tag, the command's name, then each field
/// in declaration order as a one-byte type tag and its bytes (length-prefixed where variable),
/// maps in key order. Unambiguous: no two different commands have the same form.
struct Canonical(Sha256);

impl Canonical {
    const VERSION: &'static [u8] = b"switchboard.command.fingerprint.v1";

    fn new(kind: CommandKind) -> Self {
        let mut c = Self(Sha256::new());
        c.tagged(b'v', Self::VERSION);
        c.str(kind.as_str());
        c
    }

    fn tagged(&mut self, tag: u8, bytes: &[u8]) {
        self.0.update([tag]);
        self.0.update((bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
    }

    fn str(&mut self, value: &str) {
        self.tagged(b's', value.as_bytes());
    }

    fn opt_str(&mut self, value: Option<&str>) {
        match value {
            Some(value) => self.tagged(b'S', value.as_bytes()),
            None => self.0.update([b'n']),
        }
    }

    fn u64(&mut self, value: u64) {
        self.0.update([b'u']);
        self.0.update(value.to_be_bytes());
    }

    fn opt_u64(&mut self, value: Option<u64>) {
        match value {
            Some(value) => self.u64(value),
            None => self.0.update([b'n']),
        }
    }

    fn id(&mut self, id: &CallId) {
        self.0.update([b'i']);
        self.0.update(id.as_bytes());
    }

    fn map(&mut self, map: &Labels) {
        self.0.update([b'm']);
        self.0.update((map.len() as u64).to_be_bytes());
        for (key, value) in map {
            self.str(key);
            self.str(value);
        }
    }

    fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

/// What the leader decided before proposing: time and minted ids. Replicas never read a clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub at_ms: u64,
    /// The id of the call a `CreateCall` creates (UUIDv7 minted by the leader).
    pub minted_call_id: Option<CallId>,
    /// The trace id a `CreateCall` without one gets (minted by the leader; stored in W3C
    /// trace-id form, 32 lowercase hex digits).
    pub minted_trace_id: Option<uuid::Uuid>,
}

/// A client request as it is replicated: who asks, under which idempotency key, for what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub tenant_id: String,
    pub request_id: String,
    pub command: Command,
    pub stamp: Stamp,
    /// What the leader redacted from the command before proposing (DESIGN §8): which kinds of
    /// PII, how many. Recorded in the events the request produces. Empty in log-entry format 1.
    pub redactions: Redactions,
}

impl Request {
    /// Validates every field of the request, envelope included.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.validate_envelope()?;
        self.command.validate()
    }

    /// Validates who asks and the idempotency key, without the command.
    pub fn validate_envelope(&self) -> Result<(), Invalid> {
        limits::check_required(Field::TenantId, &self.tenant_id, TENANT_ID_BYTES_MAX)?;
        limits::check_required(Field::RequestId, &self.request_id, REQUEST_ID_BYTES_MAX)
    }
}

/// Why a command was not applied. Deterministic and replicated like a success; changes no call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("call {call_id} not found")]
    UnknownCall { call_id: CallId },
    #[error("call {call_id} already exists")]
    CallExists { call_id: CallId },
    #[error("call {call_id} is {from}: {command} is not allowed in that state")]
    IllegalTransition {
        call_id: CallId,
        from: CallState,
        command: CommandKind,
    },
    #[error("call {call_id} was already handed off at event position {at_position}")]
    AlreadyHandedOff { call_id: CallId, at_position: u64 },
    #[error("call {call_id} has ended: {command} is not allowed on an ended call")]
    CallEnded {
        call_id: CallId,
        command: CommandKind,
    },
    #[error("call {call_id}: {limit} reached ({max})")]
    CallLimitReached {
        call_id: CallId,
        limit: CallLimit,
        max: u64,
    },
    #[error("invalid argument: {0}")]
    Invalid(Invalid),
    #[error("request_id {request_id} was already used for a different request")]
    RequestIdReused { request_id: String },
    #[error("create call request carries no minted call id")]
    MissingStamp,
    #[error("call {call_id} was erased: {command} is not allowed on an erased call")]
    CallErased {
        call_id: CallId,
        command: CommandKind,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallLimit {
    Turns,
    Events,
    Entities,
}

impl std::fmt::Display for CallLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CallLimit::Turns => "turns per call",
            CallLimit::Events => "events per call",
            CallLimit::Entities => "entities per call",
        })
    }
}
