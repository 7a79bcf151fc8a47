//! The 'lifecycle' workload, as data: which transitions a virtual call makes, which state each
//! one expects and leaves, and the payloads both systems store. Pure: no I/O, no clock, so the
//! same call number yields the same steps and bytes on Switchboard and on etcd.

use serde::Serialize;

/// Turns appended by every virtual call between start and handoff/end.
pub const TURNS_PER_CALL: usize = 6;

/// Tenant of every benchmark call.
pub const TENANT: &str = "bench";

/// One transition type; on Switchboard one write RPC, on etcd one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Create,
    Start,
    Turn,
    Handoff,
    End,
}

impl Op {
    pub const ALL: [Op; 5] = [Op::Create, Op::Start, Op::Turn, Op::Handoff, Op::End];

    pub fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Start => "start",
            Op::Turn => "turn",
            Op::Handoff => "handoff",
            Op::End => "end",
        }
    }
}

/// Lifecycle state as the etcd baseline stores it in a call's state key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Created,
    Active,
    HandedOff,
    Ended,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Created => "CREATED",
            State::Active => "ACTIVE",
            State::HandedOff => "HANDED_OFF",
            State::Ended => "ENDED",
        }
    }
}

/// Whether the `call_seq`-th call is handed off: every other call, so exactly half.
pub fn hands_off(call_seq: u64) -> bool {
    call_seq.is_multiple_of(2)
}

/// The steps of call number `call_seq`: create, start, 6 turns, handoff (half), end.
pub fn lifecycle(call_seq: u64) -> Vec<Op> {
    let mut ops = Vec::with_capacity(TURNS_PER_CALL + 4);
    ops.push(Op::Create);
    ops.push(Op::Start);
    ops.extend(std::iter::repeat_n(Op::Turn, TURNS_PER_CALL));
    if hands_off(call_seq) {
        ops.push(Op::Handoff);
    }
    ops.push(Op::End);
    ops
}

/// Mean transitions per lifecycle over a long run (half the calls skip the handoff).
pub fn transitions_per_lifecycle_mean() -> f64 {
    (TURNS_PER_CALL + 3) as f64 + 0.5
}

/// What `op` requires the state to be and what it leaves, for the etcd compare-and-put.
/// `None` as requirement means "the call must not exist" (compare create revision = 0).
/// Returns `None` when the op is illegal from `from` (the workload never does that).
pub fn transition(from: Option<State>, op: Op) -> Option<(Option<State>, State)> {
    let to = match (from, op) {
        (None, Op::Create) => State::Created,
        (Some(State::Created), Op::Start) => State::Active,
        (Some(s @ (State::Active | State::HandedOff)), Op::Turn) => s,
        (Some(State::Active), Op::Handoff) => State::HandedOff,
        (Some(State::Created | State::Active | State::HandedOff), Op::End) => State::Ended,
        _ => return None,
    };
    Some((from, to))
}

/// Caller number of call `call_seq` (a fixed-width E.164-like string).
pub fn source(call_seq: u64) -> String {
    format!("pstn:+1555{:07}", call_seq % 10_000_000)
}

/// Metadata every call is created with.
pub const METADATA: [(&str, &str); 2] = [("queue", "support"), ("locale", "en-US")];

/// Who speaks turn `turn` (1-based): the caller on odd turns, the agent on even ones.
pub fn speaker(turn: u32) -> &'static str {
    if turn % 2 == 1 { "caller" } else { "agent" }
}

/// Length of every turn's text, in bytes: a typical short utterance.
pub const TURN_TEXT_BYTES: usize = 96;

/// The text of turn `turn` of call `call_seq`: exactly [`TURN_TEXT_BYTES`] ASCII bytes.
pub fn turn_text(call_seq: u64, turn: u32) -> String {
    let mut text = format!(
        "call {call_seq} turn {turn}: my card was charged twice for the same order, can you help"
    );
    while text.len() < TURN_TEXT_BYTES {
        text.push('.');
    }
    text.truncate(TURN_TEXT_BYTES);
    text
}

pub const TURN_CONFIDENCE: f32 = 0.93;
pub const TURN_LANGUAGE: &str = "en-US";
pub const HANDOFF_REASON: &str = "billing dispute";
pub const HANDOFF_TARGET: &str = "billing";
pub const END_REASON: &str = "resolved";
pub const END_RESOLUTION: &str = "refund issued";

/// A small deterministic generator (xorshift64*) for picking keys to read; not for security.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-enough index below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}
