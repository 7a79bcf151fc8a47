//! The drill's history: every operation a client issued, as invoked and as completed.
//!
//! Each operation is written to the history file twice, as JSON lines: `{"t":"invoke",...}` when
//! it is sent and `{"t":"ok"|"fail"|"unknown",...}` when it completes (times in microseconds
//! since the drill started, and the node it went to). Checkers read the completed records.
//! An outcome is `unknown` when the client cannot tell whether the write took effect (timeout,
//! connection lost, node unavailable): checkers let it go either way.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What an operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Create,
    Start,
    Turn,
    Event,
    Context,
    Handoff,
    End,
    /// `GetCall`: observes the call's state and last sequence number.
    GetCall,
    /// `ListCallEvents`: observes the call's events.
    ListEvents,
}

impl OpKind {
    pub fn is_write(self) -> bool {
        !matches!(self, OpKind::GetCall | OpKind::ListEvents)
    }
}

/// How a read was asked to be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadLevel {
    Linearizable,
    Local,
    /// `LOCAL` with `min_index`: never older than that index.
    MinIndex(u64),
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Sent, not completed yet (only seen in records of an interrupted drill).
    Pending,
    Ok,
    /// Definitely not applied: a replicated rejection or a refusal at the edge.
    Fail,
    /// May or may not have taken effect.
    Unknown,
}

/// Lifecycle state as the checkers see it, ordered along the arrows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Created,
    Active,
    HandedOff,
    Ended,
}

impl State {
    pub fn from_wire(state: i32) -> Option<Self> {
        match proto::v1::CallState::try_from(state).ok()? {
            proto::v1::CallState::Created => Some(State::Created),
            proto::v1::CallState::Active => Some(State::Active),
            proto::v1::CallState::HandedOff => Some(State::HandedOff),
            proto::v1::CallState::Ended => Some(State::Ended),
            proto::v1::CallState::Unspecified => None,
        }
    }
}

/// One event as a read or the final log returned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenEvent {
    pub position: u64,
    pub sequence: u64,
    pub event_type: String,
    pub call_id: String,
    /// The request id the workload wrote into the event (source, text, summary, reason or
    /// metadata), so that every acknowledged write can be found again; `None` for events that
    /// carry none (`call.started`).
    pub tag: Option<String>,
    /// Leader-stamped time of the event (the log's clock when it was applied), Unix ms.
    #[serde(default)]
    pub at_ms: u64,
    /// An agent activity record (not a call's event).
    #[serde(default)]
    pub activity: bool,
}

/// The leader-stamped times of one call as a response showed them (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallTimes {
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub handed_off_ms: Option<u64>,
    pub ended_ms: Option<u64>,
}

impl CallTimes {
    pub fn from_wire(call: &proto::v1::Call) -> Self {
        Self {
            created_ms: call.created_at_ms,
            started_ms: call.started_at_ms,
            handed_off_ms: call.handoff.as_ref().map(|h| h.at_ms),
            ended_ms: call.ended_at_ms,
        }
    }
}

/// One operation, invoked and (once done) completed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    pub id: u64,
    pub client: u32,
    pub kind: OpKind,
    /// Server call id; for a create, filled when it succeeds.
    pub call_id: String,
    /// Idempotency key of a write (a retry of the same write reuses it); empty for reads.
    pub request_id: String,
    /// Where it went: the node of a read; the leader that committed a write (or "cluster").
    pub node: String,
    pub read: Option<ReadLevel>,
    pub invoke_us: u64,
    /// `u64::MAX` while pending or when unknown.
    pub complete_us: u64,
    pub outcome: Outcome,
    /// gRPC code and message of a failure.
    pub error: String,
    /// `x-switchboard-rejection` of a rejected write (`AlreadyHandedOff`).
    pub rejection: Option<String>,
    /// Write: log index at which it applied. Read: applied index of the serving node.
    pub index: u64,
    /// Write: the call's state after it; read: the state observed.
    pub state: Option<State>,
    /// Write: the call's last sequence number after it; read: as observed.
    pub last_sequence: u64,
    /// Write answered from the idempotency record of an earlier attempt.
    pub replayed: bool,
    /// `ListEvents` reads: the events returned.
    pub events: Vec<SeenEvent>,
    /// The call's leader-stamped times, when the response carried the call.
    #[serde(default)]
    pub times: Option<CallTimes>,
    /// A deliberate retry of an acknowledged write, sent seconds later with the same request
    /// id: it must be answered with the original outcome and write nothing.
    #[serde(default)]
    pub delayed_retry: bool,
}

impl Op {
    pub fn new(id: u64, client: u32, kind: OpKind, call_id: &str, request_id: &str) -> Self {
        Self {
            id,
            client,
            kind,
            call_id: call_id.to_owned(),
            request_id: request_id.to_owned(),
            node: String::new(),
            read: None,
            invoke_us: 0,
            complete_us: u64::MAX,
            outcome: Outcome::Pending,
            error: String::new(),
            rejection: None,
            index: 0,
            state: None,
            last_sequence: 0,
            replayed: false,
            events: Vec::new(),
            times: None,
            delayed_retry: false,
        }
    }

    pub fn is_ok(&self) -> bool {
        self.outcome == Outcome::Ok
    }

    /// Completed with a definite answer before `at_us`.
    pub fn done_before(&self, at_us: u64) -> bool {
        matches!(self.outcome, Outcome::Ok | Outcome::Fail) && self.complete_us < at_us
    }
}

#[derive(Debug, Serialize)]
struct Line<'a> {
    t: &'static str,
    #[serde(flatten)]
    op: &'a Op,
}

#[derive(Debug)]
struct Inner {
    ops: Vec<Op>,
    file: Option<BufWriter<File>>,
    next_id: u64,
}

/// The shared recorder; clones write to the same history.
#[derive(Debug, Clone)]
pub struct History {
    started: Instant,
    /// Wall-clock time (Unix ms) of `started`, read once from the drill's own clock, which no
    /// fault touches: what checkers compare leader-stamped times with.
    started_unix_ms: u64,
    inner: Arc<Mutex<Inner>>,
}

impl History {
    /// A history written to `path` (and kept in memory for the checkers).
    pub fn create(path: Option<&Path>) -> anyhow::Result<Self> {
        let file = match path {
            Some(path) => Some(BufWriter::new(File::create(path)?)),
            None => None,
        };
        let started_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Ok(Self {
            started: Instant::now(),
            started_unix_ms,
            inner: Arc::new(Mutex::new(Inner {
                ops: Vec::new(),
                file,
                next_id: 0,
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Records are appended whole under the lock: a poisoned lock holds nothing half-written.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wall-clock time (Unix ms) at which the history started (its time zero).
    pub fn started_unix_ms(&self) -> u64 {
        self.started_unix_ms
    }

    /// Microseconds since the drill started.
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn write_line(inner: &mut Inner, t: &'static str, op: &Op) {
        if let Some(file) = inner.file.as_mut() {
            // The history file is a report; a failure to write it must not stop the drill.
            if let Ok(line) = serde_json::to_string(&Line { t, op }) {
                let _ = writeln!(file, "{line}");
            }
        }
    }

    /// Records the invocation of `op` (stamping its id and time); returns its id.
    pub fn invoke(&self, mut op: Op) -> Op {
        let now = self.now_us();
        let mut inner = self.lock();
        op.id = inner.next_id;
        inner.next_id += 1;
        op.invoke_us = now;
        Self::write_line(&mut inner, "invoke", &op);
        op
    }

    /// Records the completion of `op` (stamping the time for a definite outcome).
    pub fn complete(&self, mut op: Op) {
        if matches!(op.outcome, Outcome::Ok | Outcome::Fail) {
            op.complete_us = self.now_us();
        } else {
            op.complete_us = u64::MAX;
        }
        let t = match op.outcome {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Unknown | Outcome::Pending => "unknown",
        };
        let mut inner = self.lock();
        Self::write_line(&mut inner, t, &op);
        inner.ops.push(op);
    }

    /// Every completed operation, in completion order.
    pub fn ops(&self) -> Vec<Op> {
        self.lock().ops.clone()
    }

    pub fn flush(&self) {
        if let Some(file) = self.lock().file.as_mut() {
            let _ = file.flush();
        }
    }
}
