//! The data of the domain: calls and their lifecycle, turns, handoffs, events.
//!
//! Everything here is plain data with deterministic serialization (maps are `BTreeMap`), so every
//! replica that applies the same log holds byte-identical records.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::activity::Activity;

pub type CallId = Uuid;
pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Channel {
    Voice,
    Chat,
}

impl Channel {
    /// The name in event payloads; fixed, whatever the variant is called in code.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Voice => "VOICE",
            Channel::Chat => "CHAT",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Urgency {
    Low,
    Normal,
    High,
    Critical,
}

impl Urgency {
    /// The name in event payloads; fixed, whatever the variant is called in code.
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::Low => "LOW",
            Urgency::Normal => "NORMAL",
            Urgency::High => "HIGH",
            Urgency::Critical => "CRITICAL",
        }
    }
}

/// The name of a lifecycle state, without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CallState {
    Created,
    Active,
    HandedOff,
    Ended,
}

impl CallState {
    pub const ALL: [CallState; 4] = [
        CallState::Created,
        CallState::Active,
        CallState::HandedOff,
        CallState::Ended,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Created => "CREATED",
            CallState::Active => "ACTIVE",
            CallState::HandedOff => "HANDED_OFF",
            CallState::Ended => "ENDED",
        }
    }
}

impl std::fmt::Display for CallState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One utterance in a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// Per-call turn index, from 1.
    pub index: u64,
    pub speaker: String,
    pub text: String,
    pub confidence: f32,
    pub language: String,
    /// When the client says the utterance happened.
    pub spoken_at_ms: u64,
    /// Leader-stamped time at which the turn was committed.
    pub appended_at_ms: u64,
    /// Position of the `turn.appended` event that recorded it.
    pub position: u64,
}

/// What a handoff carries to whoever picks the call up; immutable once written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextSnapshot {
    pub summary: String,
    pub entities: Labels,
    /// The last turns before the handoff, oldest first, at most `HANDOFF_TURNS_MAX`.
    pub recent_turns: Vec<Turn>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handoff {
    pub reason: String,
    pub urgency: Urgency,
    pub target: Option<String>,
    pub at_ms: u64,
    /// Position of the `call.handed_off` event.
    pub position: u64,
    pub snapshot: ContextSnapshot,
}

/// A call's lifecycle: one enum whose variants carry what exists in that state, so that no
/// combination of fields can contradict the state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Lifecycle {
    Created,
    Active {
        started_at_ms: u64,
    },
    HandedOff {
        started_at_ms: u64,
        handoff: Handoff,
    },
    Ended {
        started_at_ms: Option<u64>,
        handoff: Option<Handoff>,
        ended_at_ms: u64,
        reason: String,
        resolution: String,
    },
}

impl Lifecycle {
    pub fn state(&self) -> CallState {
        match self {
            Lifecycle::Created => CallState::Created,
            Lifecycle::Active { .. } => CallState::Active,
            Lifecycle::HandedOff { .. } => CallState::HandedOff,
            Lifecycle::Ended { .. } => CallState::Ended,
        }
    }

    pub fn started_at_ms(&self) -> Option<u64> {
        match self {
            Lifecycle::Created => None,
            Lifecycle::Active { started_at_ms } | Lifecycle::HandedOff { started_at_ms, .. } => {
                Some(*started_at_ms)
            }
            Lifecycle::Ended { started_at_ms, .. } => *started_at_ms,
        }
    }

    pub fn handoff(&self) -> Option<&Handoff> {
        match self {
            Lifecycle::HandedOff { handoff, .. } => Some(handoff),
            Lifecycle::Ended { handoff, .. } => handoff.as_ref(),
            Lifecycle::Created | Lifecycle::Active { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub call_id: CallId,
    pub tenant_id: String,
    pub source: String,
    pub channel: Channel,
    pub metadata: Labels,
    pub trace_id: String,
    pub room_name: String,
    pub created_at_ms: u64,
    pub lifecycle: Lifecycle,
    /// Turns appended so far; the last turn's index.
    pub turn_count: u64,
    /// Sequence number of the call's latest event (gap-free from 1).
    pub last_sequence_number: u64,
    /// Position of the call's latest event.
    pub last_position: u64,
    pub summary: String,
    pub entities: Labels,
    /// Set once the call's content was erased ([`Erasure`]); never cleared.
    pub erased: Option<Erasure>,
}

/// The record that a call's content was erased: what stays of the erase in the call's
/// skeleton (the `call.erased` event holds the same and the actor and reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Erasure {
    /// Leader-stamped time of the erase.
    pub at_ms: u64,
    /// Position of the `call.erased` event.
    pub position: u64,
    /// Turns whose content was replaced by tombstones.
    pub turns: u64,
    /// Events of the call (before `call.erased`) whose payload and metadata were replaced.
    pub events: u64,
    /// Entities removed from the call's current context (those copied into a handoff snapshot
    /// are removed too, not counted again).
    pub entities: u64,
}

/// The payload every erased event carries instead of its own.
pub const ERASED_PAYLOAD: &str = r#"{"erased":true}"#;

impl Turn {
    /// The turn with its content removed: index, times and position stay.
    pub fn erased(&self) -> Turn {
        Turn {
            index: self.index,
            speaker: String::new(),
            text: String::new(),
            confidence: 0.0,
            language: String::new(),
            spoken_at_ms: self.spoken_at_ms,
            appended_at_ms: self.appended_at_ms,
            position: self.position,
        }
    }
}

impl Event {
    /// The event with its payload and metadata replaced by the erased tombstone: position,
    /// id, type, call, tenant, trace, sequence number and time stay.
    pub fn erased(&self) -> Event {
        Event {
            payload: Payload::Json(ERASED_PAYLOAD.to_owned()),
            metadata: Labels::new(),
            ..self.clone()
        }
    }
}

impl Handoff {
    /// The handoff record without content: urgency, time and position stay.
    pub fn erased(&self) -> Handoff {
        Handoff {
            reason: String::new(),
            urgency: self.urgency,
            target: None,
            at_ms: self.at_ms,
            position: self.position,
            snapshot: ContextSnapshot {
                summary: String::new(),
                entities: Labels::new(),
                recent_turns: self
                    .snapshot
                    .recent_turns
                    .iter()
                    .map(Turn::erased)
                    .collect(),
            },
        }
    }
}

impl Lifecycle {
    /// The same state with its times and positions, without free text.
    pub fn erased(&self) -> Lifecycle {
        match self {
            Lifecycle::Created => Lifecycle::Created,
            Lifecycle::Active { started_at_ms } => Lifecycle::Active {
                started_at_ms: *started_at_ms,
            },
            Lifecycle::HandedOff {
                started_at_ms,
                handoff,
            } => Lifecycle::HandedOff {
                started_at_ms: *started_at_ms,
                handoff: handoff.erased(),
            },
            Lifecycle::Ended {
                started_at_ms,
                handoff,
                ended_at_ms,
                ..
            } => Lifecycle::Ended {
                started_at_ms: *started_at_ms,
                handoff: handoff.as_ref().map(Handoff::erased),
                ended_at_ms: *ended_at_ms,
                reason: String::new(),
                resolution: String::new(),
            },
        }
    }
}

impl Call {
    pub fn state(&self) -> CallState {
        self.lifecycle.state()
    }

    /// Whether `tenant_id` may see this call. The tenancy rule: a call exists only for its own
    /// tenant; to every other tenant it is unknown (never "forbidden", so ids cannot be probed).
    pub fn visible_to(&self, tenant_id: &str) -> bool {
        self.tenant_id == tenant_id
    }

    pub fn room_name_for(call_id: &CallId) -> String {
        format!("call_{}", call_id.as_hyphenated())
    }
}

/// An event payload: JSON text or opaque bytes (e.g. an encoded protobuf).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    Json(String),
    Bytes(Vec<u8>),
}

impl Payload {
    pub fn len_bytes(&self) -> usize {
        match self {
            Payload::Json(text) => text.len(),
            Payload::Bytes(bytes) => bytes.len(),
        }
    }
}

/// One entry of the append-only event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Cluster-wide, gap-free, from 1.
    pub position: u64,
    /// Derived from `position` alone (see [`event_id`]).
    pub event_id: Uuid,
    pub event_type: String,
    /// The call the event belongs to; for agent activity, the call it is about, if any.
    pub call_id: Option<CallId>,
    pub tenant_id: String,
    pub trace_id: String,
    /// Per aggregate, gap-free, from 1: a call's events count up; an activity record is its own
    /// aggregate (DESIGN §7), so it is 1.
    pub sequence_number: u64,
    pub at_ms: u64,
    pub payload: Payload,
    pub metadata: Labels,
    /// Set on agent activity records ([`crate::activity`]): their typed fields.
    pub activity: Option<Box<Activity>>,
}

/// System event types; semantic events logged by clients may not use them.
pub mod event_type {
    pub const CALL_CREATED: &str = "call.created";
    pub const CALL_STARTED: &str = "call.started";
    pub const TURN_APPENDED: &str = "turn.appended";
    pub const CONTEXT_UPDATED: &str = "context.updated";
    pub const CALL_HANDED_OFF: &str = "call.handed_off";
    pub const CALL_ENDED: &str = "call.ended";
    pub const CALL_ERASED: &str = "call.erased";

    pub const RESERVED: [&str; 7] = [
        CALL_CREATED,
        CALL_STARTED,
        TURN_APPENDED,
        CONTEXT_UPDATED,
        CALL_HANDED_OFF,
        CALL_ENDED,
        CALL_ERASED,
    ];
}

/// The event id of a position: a version-8 UUID whose low 64 bits are the position, so ids are
/// unique within a cluster, identical on every replica and derivable without a lookup.
pub fn event_id(position: u64) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(b"sbevent\0");
    bytes[8..].copy_from_slice(&position.to_be_bytes());
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// Cluster-wide counters the domain advances with every accepted command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Head {
    /// Position the next event gets.
    pub next_position: u64,
    /// Latest leader-stamped time seen; the state machine's clock never goes back, even when a
    /// new leader's wall clock is behind the old one's.
    pub clock_ms: u64,
}

impl Head {
    pub fn new() -> Self {
        Self {
            next_position: 1,
            clock_ms: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_distinct_and_stable_per_position() {
        assert_eq!(event_id(7), event_id(7));
        assert_ne!(event_id(7), event_id(8));
        assert_eq!(event_id(1).get_version_num(), 8);
    }
}
