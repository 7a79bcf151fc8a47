//! Named bounds on every input the replicated state machine accepts (DESIGN §6).
//!
//! These are compiled-in constants, not configuration: every replica must reach the same verdict
//! on the same log entry, so a bound that decides between "applied" and "rejected" cannot differ
//! between nodes. Node-level bounds (message sizes, queue depths, timeouts) live in the node's
//! validated config instead. Units come last in every name.

use serde::{Deserialize, Serialize};

pub const TENANT_ID_BYTES_MAX: usize = 128;
pub const REQUEST_ID_BYTES_MAX: usize = 128;
pub const SOURCE_BYTES_MAX: usize = 256;
pub const TRACE_ID_BYTES_MAX: usize = 128;
pub const METADATA_ENTRIES_MAX: usize = 32;
pub const METADATA_KEY_BYTES_MAX: usize = 128;
pub const METADATA_VALUE_BYTES_MAX: usize = 1024;
pub const SPEAKER_BYTES_MAX: usize = 64;
pub const TURN_TEXT_BYTES_MAX: usize = 16 * 1024;
pub const LANGUAGE_BYTES_MAX: usize = 35;
pub const EVENT_TYPE_BYTES_MAX: usize = 128;
pub const EVENT_PAYLOAD_BYTES_MAX: usize = 64 * 1024;
pub const SUMMARY_BYTES_MAX: usize = 16 * 1024;
pub const ENTITIES_MAX: usize = 64;
pub const ENTITY_KEY_BYTES_MAX: usize = 128;
pub const ENTITY_VALUE_BYTES_MAX: usize = 1024;
pub const REASON_BYTES_MAX: usize = 512;
pub const RESOLUTION_BYTES_MAX: usize = 512;
pub const TARGET_BYTES_MAX: usize = 256;
/// The subject of the token that asked for an erase, as the audit event records it.
pub const ACTOR_BYTES_MAX: usize = 256;

/// Turns copied into a handoff's immutable context snapshot.
pub const HANDOFF_TURNS_MAX: usize = 20;
/// Turns one call may hold; past it `AppendTurn` is rejected.
pub const CALL_TURNS_MAX: u64 = 10_000;
/// Events one call may hold; past it every command but `EndCall` and `EraseCall` is rejected
/// (so a call can always end and be erased: it then holds up to `CALL_EVENTS_MAX + 2` events).
pub const CALL_EVENTS_MAX: u64 = 100_000;

/// How long, in leader-stamped time, a `(tenant, request_id)` outcome is remembered.
pub const IDEMPOTENCY_WINDOW_MS: u64 = 60 * 60 * 1000;
/// Expired idempotency records removed per applied entry. Every entry adds at most one record,
/// so any value above one keeps the table bounded by the window.
pub const IDEMPOTENCY_PRUNE_PER_ENTRY_MAX: usize = 16;

/// Largest page any paginated read returns.
pub const PAGE_SIZE_MAX: u32 = 1000;
/// Page size when a request leaves it at zero.
pub const PAGE_SIZE_DEFAULT: u32 = 100;
/// Stored bytes of the items one page may carry; a page holds what fits (always at least one
/// item) and says where the next starts. Keeps every response far below gRPC's 4 MiB default
/// message bound whatever the items' sizes: 100 events of 64 KiB are 7 pages, not one error.
pub const PAGE_BYTES_MAX: usize = 1024 * 1024;
/// Most recent turns a context read may ask for.
pub const CONTEXT_TURNS_MAX: u32 = 100;
/// Most event-type prefixes one watch filters on.
pub const WATCH_TYPE_PREFIXES_MAX: usize = 16;

/// Agent activity (`RecordActivity`): the sizes of its typed fields.
pub const AGENT_TYPE_BYTES_MAX: usize = 100;
pub const AGENT_NAME_BYTES_MAX: usize = 255;
pub const PROJECT_ID_BYTES_MAX: usize = 255;
pub const TASK_ID_BYTES_MAX: usize = 255;
pub const TASK_DESCRIPTION_BYTES_MAX: usize = 4 * 1024;
pub const ACTIVITY_MESSAGE_BYTES_MAX: usize = 4 * 1024;
/// Activity payloads are JSON, and smaller than a call event's: activity is telemetry.
pub const ACTIVITY_PAYLOAD_BYTES_MAX: usize = 16 * 1024;
/// Entries one `RecordActivity` command carries; the whole batch is applied or none of it.
pub const ACTIVITY_BATCH_MAX: usize = 100;
/// Activity records one entry removes when a tenant's retention bound is passed. Larger than
/// a batch, so a tenant that writes at the bound's edge never outgrows it.
pub const ACTIVITY_COMPACT_PER_ENTRY_MAX: usize = 2 * ACTIVITY_BATCH_MAX;
/// The smallest age bound a retention may set: shorter would compact what was just written.
pub const RETENTION_AGE_MS_MIN: u64 = 60 * 1000;
/// Values a query's exact-match lists (types, severities) may hold.
pub const QUERY_VALUES_MAX: usize = 16;

/// The input field a violation is about; its `Display` is the name clients see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Field {
    TenantId,
    RequestId,
    CallId,
    Source,
    Channel,
    TraceId,
    Metadata,
    MetadataKey,
    MetadataValue,
    Speaker,
    Text,
    Confidence,
    Language,
    EventType,
    Payload,
    Summary,
    Entities,
    EntityKey,
    EntityValue,
    Reason,
    Urgency,
    Resolution,
    Target,
    PageSize,
    PageToken,
    LastTurns,
    State,
    Actor,
    /// A watch's event-type prefixes. Appended: stored rejections name fields by index.
    EventTypePrefixes,
    /// A watch's progress interval.
    ProgressInterval,
    /// Agent activity's fields (appended, like every field after `Actor`).
    AgentType,
    AgentName,
    ProjectId,
    TaskId,
    TaskDescription,
    Message,
    ActivityType,
    Severity,
    Status,
    Entries,
    Retention,
    TimeRange,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Field::TenantId => "tenant_id",
            Field::RequestId => "request_id",
            Field::CallId => "call_id",
            Field::Source => "source",
            Field::Channel => "channel",
            Field::TraceId => "trace_id",
            Field::Metadata => "metadata",
            Field::MetadataKey => "metadata key",
            Field::MetadataValue => "metadata value",
            Field::Speaker => "speaker",
            Field::Text => "text",
            Field::Confidence => "confidence",
            Field::Language => "language",
            Field::EventType => "event_type",
            Field::Payload => "payload",
            Field::Summary => "summary",
            Field::Entities => "entities",
            Field::EntityKey => "entity key",
            Field::EntityValue => "entity value",
            Field::Reason => "reason",
            Field::Urgency => "urgency",
            Field::Resolution => "resolution",
            Field::Target => "target",
            Field::PageSize => "page_size",
            Field::PageToken => "page_token",
            Field::LastTurns => "last_turns",
            Field::State => "state",
            Field::Actor => "actor",
            Field::EventTypePrefixes => "event_type_prefixes",
            Field::ProgressInterval => "progress_interval_ms",
            Field::AgentType => "agent_type",
            Field::AgentName => "agent_name",
            Field::ProjectId => "project_id",
            Field::TaskId => "task_id",
            Field::TaskDescription => "task_description",
            Field::Message => "message",
            Field::ActivityType => "activity_type",
            Field::Severity => "severity",
            Field::Status => "status",
            Field::Entries => "entries",
            Field::Retention => "retention",
            Field::TimeRange => "time range",
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is wrong with a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Problem {
    Empty,
    BytesOver {
        bytes_max: u64,
        bytes: u64,
    },
    EntriesOver {
        entries_max: u64,
        entries: u64,
    },
    NotInUnitRange,
    NotJson,
    Reserved,
    Malformed,
    Unspecified,
    OpaquePii,
    /// A retention bound below its minimum ([`RETENTION_AGE_MS_MIN`]) or a count of zero.
    BelowMinimum {
        min: u64,
        value: u64,
    },
    /// A range whose start is after its end.
    Inverted,
}

/// One field that breaks one bound: the payload of an `INVALID_ARGUMENT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{field} {problem}")]
pub struct Invalid {
    pub field: Field,
    pub problem: Problem,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Empty => write!(f, "must not be empty"),
            Problem::BytesOver { bytes_max, bytes } => {
                write!(f, "is {bytes} bytes, over the bound of {bytes_max} bytes")
            }
            Problem::EntriesOver {
                entries_max,
                entries,
            } => write!(f, "has {entries} entries, over the bound of {entries_max}"),
            Problem::NotInUnitRange => write!(f, "must be a number from 0 to 1"),
            Problem::NotJson => write!(f, "is not valid JSON"),
            Problem::Reserved => write!(f, "uses a name reserved for system events"),
            Problem::Malformed => write!(f, "is malformed"),
            Problem::Unspecified => write!(f, "must be specified"),
            // Opaque bytes cannot be redacted without breaking their encoding (`crate::redact`).
            Problem::OpaquePii => write!(
                f,
                "holds personal data that cannot be redacted inside opaque bytes: send it as JSON"
            ),
            Problem::BelowMinimum { min, value } => {
                write!(f, "is {value}, below the minimum of {min}")
            }
            Problem::Inverted => write!(f, "starts after it ends"),
        }
    }
}

impl Invalid {
    pub fn new(field: Field, problem: Problem) -> Self {
        Self { field, problem }
    }
}

/// `value` is at most `bytes_max` bytes long.
pub fn check_bytes(field: Field, value: &str, bytes_max: usize) -> Result<(), Invalid> {
    if value.len() > bytes_max {
        return Err(Invalid::new(
            field,
            Problem::BytesOver {
                bytes_max: bytes_max as u64,
                bytes: value.len() as u64,
            },
        ));
    }
    Ok(())
}

/// `value` is non-empty and at most `bytes_max` bytes long.
pub fn check_required(field: Field, value: &str, bytes_max: usize) -> Result<(), Invalid> {
    if value.is_empty() {
        return Err(Invalid::new(field, Problem::Empty));
    }
    check_bytes(field, value, bytes_max)
}

/// Bounds of a string map: entry count, key and value sizes; keys must be non-empty.
#[derive(Debug, Clone, Copy)]
pub struct MapBounds {
    pub field: Field,
    pub key_field: Field,
    pub value_field: Field,
    pub entries_max: usize,
    pub key_bytes_max: usize,
    pub value_bytes_max: usize,
}

pub const METADATA_BOUNDS: MapBounds = MapBounds {
    field: Field::Metadata,
    key_field: Field::MetadataKey,
    value_field: Field::MetadataValue,
    entries_max: METADATA_ENTRIES_MAX,
    key_bytes_max: METADATA_KEY_BYTES_MAX,
    value_bytes_max: METADATA_VALUE_BYTES_MAX,
};

pub const ENTITY_BOUNDS: MapBounds = MapBounds {
    field: Field::Entities,
    key_field: Field::EntityKey,
    value_field: Field::EntityValue,
    entries_max: ENTITIES_MAX,
    key_bytes_max: ENTITY_KEY_BYTES_MAX,
    value_bytes_max: ENTITY_VALUE_BYTES_MAX,
};

pub fn check_map<'a>(
    bounds: MapBounds,
    entries: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<(), Invalid> {
    if entries.len() > bounds.entries_max {
        return Err(Invalid::new(
            bounds.field,
            Problem::EntriesOver {
                entries_max: bounds.entries_max as u64,
                entries: entries.len() as u64,
            },
        ));
    }
    for (key, value) in entries {
        check_required(bounds.key_field, key, bounds.key_bytes_max)?;
        check_bytes(bounds.value_field, value, bounds.value_bytes_max)?;
    }
    Ok(())
}

/// A page size from a request: zero means the default, above the maximum is an error.
pub fn page_size(requested: u32) -> Result<u32, Invalid> {
    match requested {
        0 => Ok(PAGE_SIZE_DEFAULT),
        n if n > PAGE_SIZE_MAX => Err(Invalid::new(
            Field::PageSize,
            Problem::EntriesOver {
                entries_max: u64::from(PAGE_SIZE_MAX),
                entries: u64::from(n),
            },
        )),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_field_and_the_bound() {
        let err = check_required(
            Field::Text,
            &"x".repeat(TURN_TEXT_BYTES_MAX + 1),
            TURN_TEXT_BYTES_MAX,
        )
        .expect_err("over the bound");
        assert_eq!(
            err.to_string(),
            format!(
                "text is {} bytes, over the bound of {} bytes",
                TURN_TEXT_BYTES_MAX + 1,
                TURN_TEXT_BYTES_MAX
            )
        );
    }

    #[test]
    fn page_size_zero_is_the_default_and_over_max_is_rejected() {
        assert_eq!(page_size(0), Ok(PAGE_SIZE_DEFAULT));
        assert_eq!(page_size(PAGE_SIZE_MAX), Ok(PAGE_SIZE_MAX));
        assert!(page_size(PAGE_SIZE_MAX + 1).is_err());
    }
}
