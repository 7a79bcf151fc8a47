//! Invariant checkers, one per file. Each takes the drill's [`Facts`] (the history and what the
//! healed cluster holds), or for `leader_under_flood` what the nemesis saw during its read
//! floods ([`FloodFacts`]), and returns a [`Verdict`]; each has a unit test showing it catches a
//! deliberately broken history. They only read: they never talk to the cluster.

pub mod activity_batches;
pub mod clock;
pub mod convergence;
pub mod disk;
pub mod durability;
pub mod ended_immutable;
pub mod handoff_once;
pub mod leader_under_flood;
pub mod lifecycle_linearizable;
pub mod no_orphans;
pub mod sequences;
pub mod stale_reads;
pub mod watch_streams;

use std::collections::BTreeMap;

use crate::history::{Op, Outcome, SeenEvent};
pub use leader_under_flood::{FloodFacts, LeadershipSample};

/// Most violations a verdict keeps (the count is always exact).
pub const VIOLATIONS_KEPT_MAX: usize = 20;

/// What one node holds after healing.
#[derive(Debug, Clone, Default)]
pub struct NodeFinal {
    pub node_id: u64,
    /// Applied index and hex SHA-256 of the state machine, when the node answered.
    pub digest: Option<(u64, String)>,
    /// The whole event log as this node serves it (`LOCAL`), when it answered.
    pub events: Option<Vec<SeenEvent>>,
}

/// Everything the checkers look at.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Completed operations.
    pub ops: Vec<Op>,
    /// The event log after healing (from the leader), position order.
    pub final_log: Vec<SeenEvent>,
    /// Per member: digest and log after healing.
    pub nodes: Vec<NodeFinal>,
}

impl Facts {
    /// The final log's call events: agent activity records belong to no call's lifecycle and
    /// are judged by [`activity_batches`].
    pub fn call_events(&self) -> impl Iterator<Item = &SeenEvent> {
        self.final_log.iter().filter(|e| !e.activity)
    }
}

/// One checker's result.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub name: &'static str,
    /// What was checked, e.g. "212 calls".
    pub checked: String,
    pub violations: Vec<String>,
    pub violation_count: usize,
    /// Notes that are not violations (e.g. a search bound was hit).
    pub notes: Vec<String>,
}

impl Verdict {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            checked: String::new(),
            violations: Vec::new(),
            violation_count: 0,
            notes: Vec::new(),
        }
    }

    pub fn ok(&self) -> bool {
        self.violation_count == 0
    }

    pub fn violation(&mut self, what: String) {
        self.violation_count += 1;
        if self.violations.len() < VIOLATIONS_KEPT_MAX {
            self.violations.push(what);
        }
    }
}

/// Runs every checker.
pub fn check_all(facts: &Facts) -> Vec<Verdict> {
    vec![
        handoff_once::check(facts),
        ended_immutable::check(facts),
        no_orphans::check(facts),
        sequences::check(facts),
        durability::check(facts),
        lifecycle_linearizable::check(facts),
        stale_reads::check(facts),
        convergence::check(facts),
    ]
}

/// One logical write: every attempt the workload made with one request id (retries after
/// timeouts reuse it; the server applies it at most once and answers each with one outcome).
#[derive(Debug, Clone)]
pub struct Logical<'a> {
    pub attempts: Vec<&'a Op>,
    pub invoke_us: u64,
    /// Earliest definite completion; `u64::MAX` when every attempt is unknown.
    pub complete_us: u64,
    /// The definite attempt that completed first, if any.
    pub answer: Option<&'a Op>,
}

impl Logical<'_> {
    pub fn outcome(&self) -> Outcome {
        self.answer.map_or(Outcome::Unknown, |op| op.outcome)
    }
}

/// Writes grouped by request id, in invocation order.
pub fn logical_writes(ops: &[Op]) -> Vec<Logical<'_>> {
    let mut groups: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops.iter().filter(|op| op.kind.is_write()) {
        groups.entry(op.request_id.as_str()).or_default().push(op);
    }
    let mut out: Vec<Logical<'_>> = groups
        .into_values()
        .map(|mut attempts| {
            attempts.sort_by_key(|op| op.invoke_us);
            let invoke_us = attempts.first().map_or(0, |op| op.invoke_us);
            let answer = attempts
                .iter()
                .filter(|op| matches!(op.outcome, Outcome::Ok | Outcome::Fail))
                .min_by_key(|op| op.complete_us)
                .copied();
            Logical {
                invoke_us,
                complete_us: answer.map_or(u64::MAX, |op| op.complete_us),
                answer,
                attempts,
            }
        })
        .collect();
    out.sort_by_key(|l| l.invoke_us);
    out
}

/// The call id a logical write addressed (a create's is known only from its success).
pub fn call_of<'a>(logical: &Logical<'a>) -> &'a str {
    logical
        .attempts
        .iter()
        .map(|op| op.call_id.as_str())
        .find(|id| !id.is_empty())
        .unwrap_or("")
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Small builders for the checkers' broken-history tests.

    use crate::history::{Op, OpKind, Outcome, ReadLevel, SeenEvent, State};

    pub fn write(
        id: u64,
        kind: OpKind,
        call: &str,
        rid: &str,
        span: (u64, u64),
        outcome: Outcome,
    ) -> Op {
        let mut op = Op::new(id, 0, kind, call, rid);
        op.invoke_us = span.0;
        op.complete_us = if outcome == Outcome::Unknown {
            u64::MAX
        } else {
            span.1
        };
        op.outcome = outcome;
        op
    }

    pub fn ok_write(
        id: u64,
        kind: OpKind,
        call: &str,
        span: (u64, u64),
        state: State,
        seq: u64,
    ) -> Op {
        let mut op = write(id, kind, call, &format!("r{id}"), span, Outcome::Ok);
        op.state = Some(state);
        op.last_sequence = seq;
        op.index = id;
        op
    }

    pub fn read(id: u64, call: &str, span: (u64, u64), state: State, seq: u64) -> Op {
        let mut op = Op::new(id, 0, OpKind::GetCall, call, "");
        op.invoke_us = span.0;
        op.complete_us = span.1;
        op.outcome = Outcome::Ok;
        op.read = Some(ReadLevel::Linearizable);
        op.state = Some(state);
        op.last_sequence = seq;
        op
    }

    pub fn event(
        position: u64,
        sequence: u64,
        event_type: &str,
        call: &str,
        tag: &str,
    ) -> SeenEvent {
        SeenEvent {
            position,
            sequence,
            event_type: event_type.to_owned(),
            call_id: call.to_owned(),
            tag: (!tag.is_empty()).then(|| tag.to_owned()),
            at_ms: 1_000 + position,
            activity: false,
        }
    }

    /// A healthy log for call "a": created, started, one turn, handed off, ended.
    pub fn healthy_log() -> Vec<SeenEvent> {
        vec![
            event(1, 1, "call.created", "a", "r0"),
            event(2, 2, "call.started", "a", ""),
            event(3, 3, "turn.appended", "a", "r2"),
            event(4, 4, "call.handed_off", "a", "r3"),
            event(5, 5, "call.ended", "a", "r4"),
        ]
    }
}
