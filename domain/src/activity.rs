//! Agent activity: typed, severity-ranked records of what agents do, in the same event log as
//! calls but not tied to one (DESIGN §7, the Activity aggregate keyed by `(tenant, position)`).
//!
//! An activity record is an [`Event`] whose `activity` holds the typed fields; its type is one of
//! [`ActivityType`]'s `agent.*` names, its payload is JSON, and it names a call only as a
//! reference (the call must exist for the tenant; the call's own sequence does not move). Each
//! record is its own aggregate, so its sequence number is 1.
//!
//! Retention is per tenant ([`Retention`]): once set, the oldest activity past its age or count
//! bound is removed, a bounded number per entry, by the entries that record the tenant's
//! activity and by `CompactActivity`. Call lifecycle records are never compacted.

use serde::{Deserialize, Serialize};

use crate::command::{Command, Rejection, Request};
use crate::decide::StateReader;
use crate::idempotency::ActivityReceipt;
use crate::limits::ACTIVITY_COMPACT_PER_ENTRY_MAX;
use crate::limits::{
    self, ACTIVITY_BATCH_MAX, ACTIVITY_MESSAGE_BYTES_MAX, ACTIVITY_PAYLOAD_BYTES_MAX,
    AGENT_NAME_BYTES_MAX, AGENT_TYPE_BYTES_MAX, Field, Invalid, METADATA_BOUNDS,
    PROJECT_ID_BYTES_MAX, Problem, RETENTION_AGE_MS_MIN, TASK_DESCRIPTION_BYTES_MAX,
    TASK_ID_BYTES_MAX,
};
use crate::model::{CallId, Event, Head, Labels, Payload, event_id};
use crate::redact::REDACTIONS_METADATA_KEY;

/// What an agent reports; the event type is its `agent.*` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ActivityType {
    Started,
    Progress,
    Completed,
    ConflictDetected,
    Paused,
    Error,
}

impl ActivityType {
    pub const ALL: [ActivityType; 6] = [
        ActivityType::Started,
        ActivityType::Progress,
        ActivityType::Completed,
        ActivityType::ConflictDetected,
        ActivityType::Paused,
        ActivityType::Error,
    ];

    /// The event type of records of this kind; fixed, whatever the variant is called in code.
    pub fn event_type(self) -> &'static str {
        match self {
            ActivityType::Started => "agent.started",
            ActivityType::Progress => "agent.progress",
            ActivityType::Completed => "agent.completed",
            ActivityType::ConflictDetected => "agent.conflict_detected",
            ActivityType::Paused => "agent.paused",
            ActivityType::Error => "agent.error",
        }
    }

    pub fn from_event_type(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.event_type() == name)
    }
}

/// How much a record matters, least first: a filter's minimum keeps this and everything above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    Debug,
    Info,
    Warning,
    Error,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Debug,
        Severity::Info,
        Severity::Warning,
        Severity::Error,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Debug => "debug",
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// Where the agent's task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ActivityStatus {
    Started,
    InProgress,
    Completed,
    Paused,
    Failed,
    Conflict,
}

impl ActivityStatus {
    pub const ALL: [ActivityStatus; 6] = [
        ActivityStatus::Started,
        ActivityStatus::InProgress,
        ActivityStatus::Completed,
        ActivityStatus::Paused,
        ActivityStatus::Failed,
        ActivityStatus::Conflict,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActivityStatus::Started => "started",
            ActivityStatus::InProgress => "in_progress",
            ActivityStatus::Completed => "completed",
            ActivityStatus::Paused => "paused",
            ActivityStatus::Failed => "failed",
            ActivityStatus::Conflict => "conflict",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// The typed fields an activity record carries in its event (type, payload, metadata and the
/// optional call are the event's own fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    pub agent_type: String,
    pub agent_name: String,
    /// Empty when the activity belongs to no project.
    pub project_id: String,
    pub task_id: String,
    pub task_description: String,
    pub severity: Severity,
    pub status: ActivityStatus,
    pub message: String,
}

/// One record as a client asks for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityInput {
    pub activity_type: ActivityType,
    pub activity: Activity,
    /// A call of the tenant the activity is about (a reference: the call's events do not move).
    pub call_id: Option<CallId>,
    /// JSON text; empty means `{}`.
    pub payload: String,
    pub metadata: Labels,
}

impl ActivityInput {
    pub fn validate(&self) -> Result<(), Invalid> {
        let a = &self.activity;
        limits::check_required(Field::AgentType, &a.agent_type, AGENT_TYPE_BYTES_MAX)?;
        limits::check_required(Field::AgentName, &a.agent_name, AGENT_NAME_BYTES_MAX)?;
        limits::check_bytes(Field::ProjectId, &a.project_id, PROJECT_ID_BYTES_MAX)?;
        limits::check_required(Field::TaskId, &a.task_id, TASK_ID_BYTES_MAX)?;
        limits::check_bytes(
            Field::TaskDescription,
            &a.task_description,
            TASK_DESCRIPTION_BYTES_MAX,
        )?;
        limits::check_bytes(Field::Message, &a.message, ACTIVITY_MESSAGE_BYTES_MAX)?;
        limits::check_bytes(Field::Payload, &self.payload, ACTIVITY_PAYLOAD_BYTES_MAX)?;
        if !self.payload.is_empty()
            && serde_json::from_str::<serde::de::IgnoredAny>(&self.payload).is_err()
        {
            return Err(Invalid::new(Field::Payload, Problem::NotJson));
        }
        limits::check_map(METADATA_BOUNDS, self.metadata.iter())
    }

    /// The payload as stored: `{}` for none.
    pub fn payload_json(&self) -> String {
        if self.payload.is_empty() {
            "{}".to_owned()
        } else {
            self.payload.clone()
        }
    }
}

/// Checks a batch: between one and [`ACTIVITY_BATCH_MAX`] entries, each valid.
pub fn validate_batch(entries: &[ActivityInput]) -> Result<(), Invalid> {
    if entries.is_empty() {
        return Err(Invalid::new(Field::Entries, Problem::Empty));
    }
    if entries.len() > ACTIVITY_BATCH_MAX {
        return Err(Invalid::new(
            Field::Entries,
            Problem::EntriesOver {
                entries_max: ACTIVITY_BATCH_MAX as u64,
                entries: entries.len() as u64,
            },
        ));
    }
    entries.iter().try_for_each(ActivityInput::validate)
}

/// A tenant's bound on how much activity it keeps: records older than `age_ms` (in
/// leader-stamped time) or beyond the newest `records` are removed. `None` is no bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Retention {
    pub age_ms: Option<u64>,
    pub records: Option<u64>,
}

impl Retention {
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(age_ms) = self.age_ms
            && age_ms < RETENTION_AGE_MS_MIN
        {
            return Err(Invalid::new(
                Field::Retention,
                Problem::BelowMinimum {
                    min: RETENTION_AGE_MS_MIN,
                    value: age_ms,
                },
            ));
        }
        if self.records == Some(0) {
            return Err(Invalid::new(
                Field::Retention,
                Problem::BelowMinimum { min: 1, value: 0 },
            ));
        }
        Ok(())
    }

    pub fn is_unbounded(&self) -> bool {
        self.age_ms.is_none() && self.records.is_none()
    }

    /// Whether the oldest kept record, stamped `at_ms`, is to go when the tenant holds `held`
    /// records and the clock reads `clock_ms`.
    pub fn drops(&self, at_ms: u64, held: u64, clock_ms: u64) -> bool {
        self.records.is_some_and(|max| held > max)
            || self
                .age_ms
                .is_some_and(|age| at_ms < clock_ms.saturating_sub(age))
    }
}

/// The effect of an accepted activity command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityChange {
    pub head: Head,
    pub tenant_id: String,
    /// Records appended, in position order.
    pub events: Vec<Event>,
    /// The tenant's new retention, for `SetRetention`.
    pub retention: Option<Retention>,
    /// The tenant's oldest records, removed under its retention (oldest first): the store
    /// deletes each with its index rows and counts.
    pub compacted: Vec<Event>,
    /// Whether more records past the retention remain after this entry.
    pub more: bool,
}

impl ActivityChange {
    pub fn receipt(&self) -> ActivityReceipt {
        ActivityReceipt {
            first_position: self.events.first().map_or(0, |e| e.position),
            last_position: self.events.last().map_or(0, |e| e.position),
            compacted: self.compacted.len() as u64,
            more: self.more,
        }
    }
}

/// Decides an activity command (`RecordActivity`, `SetRetention`, `CompactActivity`) for the
/// request's tenant, from the head after the clock advanced: the records it appends, then what
/// the tenant's retention removes.
pub(crate) fn decide<R: StateReader>(
    state: &R,
    request: &Request,
    head: Head,
) -> Result<Result<ActivityChange, Rejection>, R::Error> {
    if let Err(invalid) = request.validate() {
        return Ok(Err(Rejection::Invalid(invalid)));
    }
    let tenant_id = &request.tenant_id;
    let mut change = ActivityChange {
        head,
        tenant_id: tenant_id.clone(),
        events: Vec::new(),
        retention: None,
        compacted: Vec::new(),
        more: false,
    };
    let mut retention = state.retention(tenant_id)?.unwrap_or_default();
    match &request.command {
        Command::RecordActivity { entries } => {
            for entry in entries {
                // A referenced call must be the tenant's; its trace id follows the record.
                let trace_id = match entry.call_id {
                    Some(call_id) => match state.call(&call_id)? {
                        Some(call) if call.visible_to(tenant_id) => call.trace_id,
                        _ => return Ok(Err(Rejection::UnknownCall { call_id })),
                    },
                    None => String::new(),
                };
                let position = change.head.next_position;
                let mut metadata = entry.metadata.clone();
                if !request.redactions.is_empty() {
                    metadata.insert(
                        REDACTIONS_METADATA_KEY.to_owned(),
                        request.redactions.to_json(),
                    );
                }
                change.events.push(Event {
                    position,
                    event_id: event_id(position),
                    event_type: entry.activity_type.event_type().to_owned(),
                    call_id: entry.call_id,
                    tenant_id: tenant_id.clone(),
                    trace_id,
                    sequence_number: 1,
                    at_ms: head.clock_ms,
                    payload: Payload::Json(entry.payload_json()),
                    metadata,
                    activity: Some(Box::new(entry.activity.clone())),
                });
                change.head.next_position = position + 1;
            }
        }
        Command::SetRetention { retention: set } => {
            retention = *set;
            change.retention = Some(*set);
        }
        Command::CompactActivity => {}
        other => unreachable!("{} is not an activity command", other.kind()),
    }
    if retention.is_unbounded() {
        return Ok(Ok(change));
    }
    // Oldest first: once the oldest stays, every newer one does too (at_ms never decreases
    // along positions, and the count only falls as records go).
    let mut held = state.activity_held(tenant_id)? + change.events.len() as u64;
    let clock_ms = head.clock_ms;
    let oldest = state.oldest_activity(tenant_id, 1)?;
    if !oldest
        .first()
        .is_some_and(|e| retention.drops(e.at_ms, held, clock_ms))
    {
        return Ok(Ok(change));
    }
    let candidates = state.oldest_activity(tenant_id, ACTIVITY_COMPACT_PER_ENTRY_MAX + 1)?;
    let mut candidates = candidates.into_iter();
    for event in candidates.by_ref() {
        if !retention.drops(event.at_ms, held, clock_ms) {
            return Ok(Ok(change));
        }
        change.compacted.push(event);
        held = held.saturating_sub(1);
        if change.compacted.len() == ACTIVITY_COMPACT_PER_ENTRY_MAX {
            break;
        }
    }
    change.more = candidates
        .next()
        .is_some_and(|e| retention.drops(e.at_ms, held, clock_ms));
    Ok(Ok(change))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> ActivityInput {
        ActivityInput {
            activity_type: ActivityType::Started,
            activity: Activity {
                agent_type: "agent-security".into(),
                agent_name: "Security Agent".into(),
                project_id: "P-1".into(),
                task_id: "T-1".into(),
                task_description: "scan".into(),
                severity: Severity::Info,
                status: ActivityStatus::Started,
                message: String::new(),
            },
            call_id: None,
            payload: String::new(),
            metadata: Labels::new(),
        }
    }

    #[test]
    fn names_round_trip() {
        for t in ActivityType::ALL {
            assert_eq!(ActivityType::from_event_type(t.event_type()), Some(t));
        }
        for s in Severity::ALL {
            assert_eq!(Severity::parse(s.as_str()), Some(s));
        }
        for s in ActivityStatus::ALL {
            assert_eq!(ActivityStatus::parse(s.as_str()), Some(s));
        }
        assert!(Severity::Debug < Severity::Critical);
    }

    #[test]
    fn batches_are_bounded_and_every_entry_checked() {
        assert!(validate_batch(&[input()]).is_ok());
        assert_eq!(
            validate_batch(&[]).expect_err("empty").field,
            Field::Entries
        );
        let too_many = vec![input(); ACTIVITY_BATCH_MAX + 1];
        assert_eq!(
            validate_batch(&too_many).expect_err("over").to_string(),
            format!(
                "entries has {} entries, over the bound of {ACTIVITY_BATCH_MAX}",
                ACTIVITY_BATCH_MAX + 1
            )
        );
        let mut bad = input();
        bad.payload = "{not json".into();
        assert_eq!(
            validate_batch(&[input(), bad]).expect_err("json"),
            Invalid::new(Field::Payload, Problem::NotJson)
        );
        let mut nameless = input();
        nameless.activity.agent_name.clear();
        assert_eq!(
            nameless.validate().expect_err("name").field,
            Field::AgentName
        );
    }

    #[test]
    fn retention_drops_past_either_bound() {
        let r = Retention {
            age_ms: Some(RETENTION_AGE_MS_MIN),
            records: Some(10),
        };
        assert!(r.validate().is_ok());
        assert!(!r.drops(1_000_000, 10, 1_000_000));
        assert!(r.drops(1_000_000, 11, 1_000_000));
        assert!(r.drops(1_000_000, 1, 1_000_000 + RETENTION_AGE_MS_MIN + 1));
        assert!(!Retention::default().drops(0, u64::MAX, u64::MAX));
        assert!(
            Retention {
                age_ms: Some(1),
                records: None
            }
            .validate()
            .is_err()
        );
        assert!(
            Retention {
                age_ms: None,
                records: Some(0)
            }
            .validate()
            .is_err()
        );
    }
}
