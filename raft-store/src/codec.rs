//! The versioned encodings of everything the store persists or replicates, kept apart from the
//! domain types they carry.
//!
//! - **Stored records** (every value in RocksDB: state-machine records, Raft log entries, vote,
//!   metadata) are `RECORD_FORMAT` (one byte) followed by postcard over serde.
//! - **Log entries' requests** travel as a [`Proposal`]: `ENTRY_FORMAT` (one byte) followed by
//!   postcard of the domain [`Request`], inside the openraft entry, on disk and on the wire alike.
//!
//! A version this binary does not know is refused with an error that names it, never decoded
//! as if it were ours: a node never misapplies an entry written by a newer release. Decoding
//! never panics: corrupt bytes become [`Error::Corrupt`] naming what was read and under which
//! key. The byte layout of each version is pinned by golden tests below; a change to a stored
//! type that moves a byte fails them, and must come with a new version (ARCHITECTURE.md,
//! "Upgrade rule").

use std::fmt;

use serde::de::{DeserializeOwned, Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use domain::{Call, Command, Redactions, Request, Stamp};

use crate::error::Error;

/// Format of stored records written by this binary, for every type whose layout never changed
/// (a type whose layout changed writes its own [`Record::FORMAT`]).
pub const RECORD_FORMAT: u8 = 1;
/// Newest log-entry format this binary reads and writes. Format 2 adds `EraseCall` and the
/// request's redaction summary (`Request::redactions`); format 3 adds the activity commands
/// (`RecordActivity`, `SetRetention`, `CompactActivity`), in the same layout.
pub const ENTRY_FORMAT: u8 = 3;
/// Oldest log-entry format this binary still reads.
pub const ENTRY_FORMAT_MIN: u8 = 1;

/// A type stored as a record: its current format and how to read each older one.
///
/// A type whose layout changes raises its own `FORMAT` and overrides [`Record::decode_older`]
/// to read the layouts it had before, so that records written by an older release (in RocksDB
/// or inside a snapshot) stay readable and are never misread with the new layout.
pub trait Record: Serialize + DeserializeOwned {
    /// The format this binary writes for the type.
    const FORMAT: u8 = RECORD_FORMAT;

    /// Reads the body of a record of an older `format` (below [`Record::FORMAT`]).
    fn decode_older(format: u8, body: &[u8]) -> Result<Self, postcard::Error> {
        let _ = (format, body);
        Err(postcard::Error::DeserializeBadEncoding)
    }
}

macro_rules! records_of_first_format {
    ($($ty:ty),* $(,)?) => { $(impl Record for $ty {})* };
}

records_of_first_format!(
    u64,
    [u64; 4],
    domain::Head,
    domain::Turn,
    domain::Retention,
    crate::types::Entry,
    crate::types::LogId,
    crate::types::Vote,
    crate::types::StoredMembership,
);

/// A call record: format 2 added [`Call::erased`] as its last field.
impl Record for Call {
    const FORMAT: u8 = 2;

    fn decode_older(format: u8, body: &[u8]) -> Result<Self, postcard::Error> {
        match format {
            1 => postcard::from_bytes::<CallFormat1>(body).map(Call::from),
            _ => Err(postcard::Error::DeserializeBadEncoding),
        }
    }
}

/// An event record: format 2 made the call optional and added the activity fields (agent
/// activity, `domain::activity`).
impl Record for domain::Event {
    const FORMAT: u8 = 2;

    fn decode_older(format: u8, body: &[u8]) -> Result<Self, postcard::Error> {
        match format {
            1 => postcard::from_bytes::<EventFormat1>(body).map(domain::Event::from),
            _ => Err(postcard::Error::DeserializeBadEncoding),
        }
    }
}

/// The layout of an event record of format 1: every event belonged to a call.
#[derive(Deserialize)]
struct EventFormat1 {
    position: u64,
    event_id: uuid::Uuid,
    event_type: String,
    call_id: domain::CallId,
    tenant_id: String,
    trace_id: String,
    sequence_number: u64,
    at_ms: u64,
    payload: domain::Payload,
    metadata: domain::Labels,
}

impl From<EventFormat1> for domain::Event {
    fn from(e: EventFormat1) -> Self {
        domain::Event {
            position: e.position,
            event_id: e.event_id,
            event_type: e.event_type,
            call_id: Some(e.call_id),
            tenant_id: e.tenant_id,
            trace_id: e.trace_id,
            sequence_number: e.sequence_number,
            at_ms: e.at_ms,
            payload: e.payload,
            metadata: e.metadata,
            activity: None,
        }
    }
}

/// A remembered outcome: format 2 made the receipt an enum (a call's, or an activity
/// command's).
impl Record for domain::Remembered {
    const FORMAT: u8 = 2;

    fn decode_older(format: u8, body: &[u8]) -> Result<Self, postcard::Error> {
        match format {
            1 => postcard::from_bytes::<RememberedFormat1>(body).map(domain::Remembered::from),
            _ => Err(postcard::Error::DeserializeBadEncoding),
        }
    }
}

/// The layout of a remembered outcome of format 1: every receipt was a call's.
#[derive(Deserialize)]
struct RememberedFormat1 {
    fingerprint: [u8; 32],
    at_ms: u64,
    index: u64,
    result: Result<domain::CallReceipt, domain::Rejection>,
}

impl From<RememberedFormat1> for domain::Remembered {
    fn from(r: RememberedFormat1) -> Self {
        domain::Remembered {
            fingerprint: r.fingerprint,
            at_ms: r.at_ms,
            outcome: domain::Outcome {
                index: r.index,
                result: r.result.map(domain::Receipt::Call),
            },
        }
    }
}

/// The layout of a call record of format 1: [`Call`] before erasure existed.
#[derive(Deserialize)]
struct CallFormat1 {
    call_id: domain::CallId,
    tenant_id: String,
    source: String,
    channel: domain::Channel,
    metadata: domain::Labels,
    trace_id: String,
    room_name: String,
    created_at_ms: u64,
    lifecycle: domain::Lifecycle,
    turn_count: u64,
    last_sequence_number: u64,
    last_position: u64,
    summary: String,
    entities: domain::Labels,
}

impl From<CallFormat1> for Call {
    fn from(call: CallFormat1) -> Self {
        Call {
            call_id: call.call_id,
            tenant_id: call.tenant_id,
            source: call.source,
            channel: call.channel,
            metadata: call.metadata,
            trace_id: call.trace_id,
            room_name: call.room_name,
            created_at_ms: call.created_at_ms,
            lifecycle: call.lifecycle,
            turn_count: call.turn_count,
            last_sequence_number: call.last_sequence_number,
            last_position: call.last_position,
            summary: call.summary,
            entities: call.entities,
            erased: None,
        }
    }
}

pub fn encode<T: Record>(value: &T) -> Vec<u8> {
    let mut out = vec![T::FORMAT];
    // Every stored type is plain data with serde derives: encoding into memory cannot fail.
    postcard::to_io(value, &mut out).expect("stored values serialize to memory");
    out
}

pub fn decode<T: Record>(what: &'static str, key: &[u8], bytes: &[u8]) -> Result<T, Error> {
    let corrupt = |source| Error::Corrupt {
        what,
        key: hex(key),
        source,
    };
    match bytes.split_first() {
        Some((&format, body)) if format == T::FORMAT => postcard::from_bytes(body).map_err(corrupt),
        Some((&format, body)) if (RECORD_FORMAT..T::FORMAT).contains(&format) => {
            T::decode_older(format, body).map_err(corrupt)
        }
        Some((&found, _)) => Err(Error::UnknownFormat {
            what,
            key: hex(key),
            found,
            known: T::FORMAT,
        }),
        None => Err(corrupt(postcard::Error::DeserializeUnexpectedEnd)),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// What a normal log entry carries: a domain request in a versioned envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal(pub Request);

impl Proposal {
    /// The entry format a request needs: format 1 while it carries nothing format 1 cannot (a
    /// command of the first release, no redaction summary), so that nodes of the previous
    /// release keep reading those entries during a rolling upgrade; format 2 otherwise. A node
    /// that does not know format 2 refuses such an entry instead of misreading it.
    pub fn format(&self) -> u8 {
        if self.0.command.is_activity() {
            return 3;
        }
        let first_release = match self.0.command {
            Command::EraseCall { .. } => false,
            Command::RecordActivity { .. }
            | Command::SetRetention { .. }
            | Command::CompactActivity => unreachable!("activity commands are format 3"),
            Command::CreateCall { .. }
            | Command::StartCall { .. }
            | Command::AppendTurn { .. }
            | Command::LogEvent { .. }
            | Command::UpdateContext { .. }
            | Command::RequestHandoff { .. }
            | Command::EndCall { .. } => true,
        };
        if first_release && self.0.redactions.is_empty() {
            1
        } else {
            2
        }
    }

    /// The envelope: format byte, then postcard of the request in that format's layout.
    pub fn to_bytes(&self) -> Vec<u8> {
        let format = self.format();
        let mut out = vec![format];
        let encoded = if format == 1 {
            postcard::to_io(&RequestV1Ref::from(&self.0), &mut out).map(drop)
        } else {
            postcard::to_io(&self.0, &mut out).map(drop)
        };
        encoded.expect("requests serialize to memory");
        out
    }

    /// Reads an envelope, refusing a format this binary does not know.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProposalError> {
        let (&format, body) = bytes.split_first().ok_or(ProposalError::Empty)?;
        let request = match format {
            1 => postcard::from_bytes::<RequestV1>(body).map(Request::from),
            2 => postcard::from_bytes::<Request>(body).and_then(|request| {
                // Format 2 predates the activity commands: one there is not ours.
                if request.command.is_activity() {
                    Err(postcard::Error::DeserializeBadEncoding)
                } else {
                    Ok(request)
                }
            }),
            3 => postcard::from_bytes::<Request>(body),
            found => return Err(ProposalError::UnknownFormat { found }),
        };
        request.map(Proposal).map_err(ProposalError::Corrupt)
    }
}

/// A request as entry format 1 lays it out: without the redaction summary.
#[derive(Serialize)]
struct RequestV1Ref<'a> {
    tenant_id: &'a str,
    request_id: &'a str,
    command: &'a Command,
    stamp: &'a Stamp,
}

impl<'a> From<&'a Request> for RequestV1Ref<'a> {
    fn from(request: &'a Request) -> Self {
        Self {
            tenant_id: &request.tenant_id,
            request_id: &request.request_id,
            command: &request.command,
            stamp: &request.stamp,
        }
    }
}

#[derive(Deserialize)]
struct RequestV1 {
    tenant_id: String,
    request_id: String,
    command: Command,
    stamp: Stamp,
}

impl From<RequestV1> for Request {
    fn from(v1: RequestV1) -> Self {
        Request {
            tenant_id: v1.tenant_id,
            request_id: v1.request_id,
            command: v1.command,
            stamp: v1.stamp,
            redactions: Redactions::default(),
        }
    }
}

/// Why a log entry's request could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProposalError {
    #[error("log entry has an empty request envelope")]
    Empty,
    #[error(
        "log entry has format {found}; this node reads formats {ENTRY_FORMAT_MIN}..={ENTRY_FORMAT}: \
         upgrade this node before the cluster proposes newer entries"
    )]
    UnknownFormat { found: u8 },
    #[error("log entry request is corrupt")]
    Corrupt(#[source] postcard::Error),
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let request = &self.0;
        write!(
            f,
            "{}(tenant={}, request_id={}",
            request.command.kind(),
            request.tenant_id,
            request.request_id
        )?;
        if let Some(call_id) = request.command.call_id() {
            write!(f, ", call_id={call_id}")?;
        }
        write!(f, ")")
    }
}

impl Serialize for Proposal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.to_bytes())
    }
}

impl<'de> Deserialize<'de> for Proposal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Envelope;

        impl<'de> Visitor<'de> for Envelope {
            type Value = Proposal;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a versioned log entry envelope")
            }

            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Proposal, E> {
                Proposal::from_bytes(bytes).map_err(E::custom)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Proposal, A::Error> {
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(byte) = seq.next_element::<u8>()? {
                    bytes.push(byte);
                }
                Proposal::from_bytes(&bytes).map_err(A::Error::custom)
            }
        }

        deserializer.deserialize_bytes(Envelope)
    }
}

#[cfg(test)]
mod tests {
    use domain::redact::PiiKind;
    use domain::{Channel, Labels};

    use super::*;

    fn request() -> Request {
        Request {
            tenant_id: "acme".into(),
            request_id: "r-1".into(),
            command: Command::CreateCall {
                source: "web".into(),
                channel: Channel::Chat,
                metadata: Labels::from([("k".to_owned(), "v".to_owned())]),
                trace_id: None,
            },
            stamp: Stamp {
                at_ms: 1_750_000_000_000,
                minted_call_id: Some(uuid::Uuid::from_u128(7)),
                minted_trace_id: None,
            },
            redactions: Default::default(),
        }
    }

    /// The byte layout of entry format 1. If this fails, a type inside `Request` changed its
    /// encoding: keep format 1 readable and add format 2 (ARCHITECTURE.md, "Upgrade rule").
    #[test]
    fn entry_format_1_layout_is_pinned() {
        let bytes = Proposal(request()).to_bytes();
        assert_eq!(
            hex(&bytes),
            concat!(
                "01", // entry format 1
                "0461636d65",
                "03722d31", // tenant "acme", request id "r-1"
                "00",
                "03776562",
                "01",
                "01016b0176",
                "00",           // CreateCall: source, Chat, metadata, no trace
                "80b883a1f732", // stamp: at_ms (varint)
                "01",
                "1000000000000000000000000000000007", // minted call id (16 bytes)
                "00",                                 // no minted trace id
            )
        );
        assert_eq!(Proposal::from_bytes(&bytes).ok(), Some(Proposal(request())));
    }

    /// The byte layout of entry format 2: `EraseCall`, the eighth command. Format 1 requests keep
    /// their format byte, so nodes of the first release still read them.
    #[test]
    fn entry_format_2_layout_of_an_erase_is_pinned() {
        let erase = Request {
            command: Command::EraseCall {
                call_id: uuid::Uuid::from_u128(7),
                reason: "dsr".into(),
                actor: "ops".into(),
            },
            stamp: Stamp {
                at_ms: 1_750_000_000_000,
                minted_call_id: None,
                minted_trace_id: None,
            },
            ..request()
        };
        let bytes = Proposal(erase.clone()).to_bytes();
        assert_eq!(
            hex(&bytes),
            concat!(
                "02", // entry format 2
                "0461636d65",
                "03722d31", // tenant "acme", request id "r-1"
                "07",       // EraseCall
                "1000000000000000000000000000000007",
                "03647372",
                "036f7073",     // call id, reason "dsr", actor "ops"
                "80b883a1f732", // stamp: at_ms (varint)
                "00",
                "00", // no minted ids
                "00", // no redactions
            )
        );
        assert_eq!(Proposal::from_bytes(&bytes).ok(), Some(Proposal(erase)));
        assert_eq!(
            Proposal(request()).to_bytes()[0],
            1,
            "older commands stay format 1"
        );
    }

    fn redacted_request() -> Request {
        let mut request = request();
        request.redactions = [(PiiKind::Card, 1), (PiiKind::Email, 2)]
            .into_iter()
            .collect();
        request
    }

    /// The byte layout of entry format 2: format 1's request followed by the redaction summary
    /// (a map of kind index to count). A request without redactions is still written in format
    /// 1 (pinned above), which nodes of the previous release read.
    #[test]
    fn entry_format_2_layout_is_pinned() {
        let bytes = Proposal(redacted_request()).to_bytes();
        let format_1 = Proposal(request()).to_bytes();
        assert_eq!(format_1[0], 1);
        assert_eq!(bytes[0], 2);
        assert_eq!(
            hex(&bytes[1..]),
            format!(
                "{}{}",
                hex(&format_1[1..]),
                concat!(
                    "02",   // two kinds
                    "0101", // card (kind 1): 1
                    "0202", // email (kind 2): 2
                )
            )
        );
        assert_eq!(
            Proposal::from_bytes(&bytes).ok(),
            Some(Proposal(redacted_request()))
        );
    }

    #[test]
    fn a_format_1_entry_reads_as_a_request_without_redactions() {
        let decoded = Proposal::from_bytes(&Proposal(request()).to_bytes()).expect("format 1");
        assert!(decoded.0.redactions.is_empty());
        // Format 1 bytes are not format 2 bytes: a wrong format byte is corrupt, not misread.
        let mut bytes = Proposal(request()).to_bytes();
        bytes[0] = 2;
        assert!(matches!(
            Proposal::from_bytes(&bytes),
            Err(ProposalError::Corrupt(_))
        ));
    }

    #[test]
    fn an_entry_of_an_unknown_format_is_refused_naming_it() {
        let mut bytes = Proposal(request()).to_bytes();
        let format = bytes[0];
        bytes[0] = ENTRY_FORMAT + 1;
        let error = Proposal::from_bytes(&bytes).expect_err("newer format");
        assert!(
            error
                .to_string()
                .contains(&format!("format {}", ENTRY_FORMAT + 1)),
            "{error}"
        );
        // Through serde (how openraft entries are decoded), the refusal survives.
        let wrapped = postcard::to_stdvec(&SerBytes(&bytes)).expect("encode");
        assert!(postcard::from_bytes::<Proposal>(&wrapped).is_err());
        bytes[0] = format;
        let wrapped = postcard::to_stdvec(&SerBytes(&bytes)).expect("encode");
        assert_eq!(
            postcard::from_bytes::<Proposal>(&wrapped).ok(),
            Some(Proposal(request()))
        );
    }

    struct SerBytes<'a>(&'a [u8]);

    impl Serialize for SerBytes<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(self.0)
        }
    }

    #[test]
    fn a_proposal_survives_postcard_and_json() {
        let proposal = Proposal(request());
        let bytes = postcard::to_stdvec(&proposal).expect("encode");
        assert_eq!(
            postcard::from_bytes::<Proposal>(&bytes).ok(),
            Some(proposal.clone())
        );
        let json = serde_json::to_string(&proposal).expect("encode");
        assert_eq!(serde_json::from_str::<Proposal>(&json).ok(), Some(proposal));
    }

    /// The largest stored record, a call with a handoff.
    fn handed_off_call() -> Call {
        use domain::{ContextSnapshot, Handoff, Lifecycle, Turn, Urgency};
        let turn = Turn {
            index: 1,
            speaker: "caller".into(),
            text: "hi".into(),
            confidence: 0.5,
            language: "en".into(),
            spoken_at_ms: 1,
            appended_at_ms: 2,
            position: 3,
        };
        Call {
            call_id: uuid::Uuid::from_u128(7),
            tenant_id: "acme".into(),
            source: "web".into(),
            channel: Channel::Voice,
            metadata: Labels::new(),
            trace_id: "t".into(),
            room_name: "r".into(),
            created_at_ms: 5,
            lifecycle: Lifecycle::HandedOff {
                started_at_ms: 6,
                handoff: Handoff {
                    reason: "x".into(),
                    urgency: Urgency::High,
                    target: None,
                    at_ms: 7,
                    position: 4,
                    snapshot: ContextSnapshot {
                        summary: "s".into(),
                        entities: Labels::new(),
                        recent_turns: vec![turn],
                    },
                },
            },
            turn_count: 1,
            last_sequence_number: 4,
            last_position: 4,
            summary: "s".into(),
            entities: Labels::new(),
            erased: None,
        }
    }

    /// The body of [`handed_off_call`] up to its last field of format 1.
    const CALL_BODY_FORMAT_1: &str = concat!(
        "1000000000000000000000000000000007", // call id
        "0461636d65",
        "03776562",
        "00",
        "00", // tenant, source, Voice, metadata
        "0174",
        "0172",
        "05", // trace id, room name, created_at_ms
        "02",
        "06", // HandedOff, started_at_ms
        "0178",
        "02",
        "00",
        "07",
        "04", // reason, High, no target, at_ms, position
        "0173",
        "00", // snapshot summary, entities
        "01",
        "01",
        "0663616c6c6572",
        "026869", // one turn: index, speaker, text
        "0000003f",
        "02656e",
        "01",
        "02",
        "03", // confidence, language, times, position
        "01",
        "04",
        "04",
        "0173",
        "00", // counts, summary, entities
    );

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// Call records written before erasure existed (format 1, in RocksDB or inside a snapshot)
    /// stay readable: a call of format 1 reads as a call that was never erased. If this fails,
    /// a type inside `Call` changed its encoding: add a format (ARCHITECTURE.md, "Upgrade rule").
    #[test]
    fn call_record_format_1_layout_is_still_read() {
        let bytes = unhex(&format!("01{CALL_BODY_FORMAT_1}"));
        assert_eq!(
            decode::<Call>("call", b"k", &bytes).ok(),
            Some(handed_off_call())
        );
    }

    /// The byte layout of call record format 2: format 1's, then the erasure.
    #[test]
    fn call_record_format_2_layout_is_pinned() {
        let mut call = handed_off_call();
        let bytes = encode(&call);
        assert_eq!(hex(&bytes), format!("02{CALL_BODY_FORMAT_1}00"));
        assert_eq!(
            decode::<Call>("call", b"k", &bytes).ok(),
            Some(call.clone())
        );
        call.erased = Some(domain::Erasure {
            at_ms: 8,
            position: 5,
            turns: 1,
            events: 4,
            entities: 0,
        });
        let bytes = encode(&call);
        assert_eq!(
            hex(&bytes),
            format!("02{CALL_BODY_FORMAT_1}01{}", "0805010400")
        );
        assert_eq!(decode::<Call>("call", b"k", &bytes).ok(), Some(call));
    }

    /// Every other record is still format 1: its layout did not change.
    #[test]
    fn records_other_than_calls_stay_format_1() {
        assert_eq!(encode(&42u64)[0], 1);
        assert_eq!(encode(&domain::Head::new())[0], 1);
    }

    #[test]
    fn a_record_of_an_unknown_format_is_refused_naming_it() {
        let mut bytes = encode(&42u64);
        assert_eq!(decode::<u64>("answer", b"k", &bytes).ok(), Some(42));
        bytes[0] = RECORD_FORMAT + 1;
        let error = decode::<u64>("answer", b"k", &bytes).expect_err("newer format");
        assert!(error.to_string().contains("format 2"), "{error}");
        let mut bytes = encode(&handed_off_call());
        bytes[0] = <Call as Record>::FORMAT + 1;
        let error = decode::<Call>("call", b"k", &bytes).expect_err("newer format");
        assert!(error.to_string().contains("format 3"), "{error}");
    }
}
