//! Per-call linearizability of the lifecycle. Each call is a small register holding its state
//! (none, CREATED, ACTIVE, HANDED_OFF, ENDED) with compare-and-set transitions: a write's
//! answer (success, or the rejection it got) constrains the state at its linearization point,
//! and a `LINEARIZABLE` `GetCall` must observe the state. A history is linearizable when some
//! total order of the operations, consistent with real time (an operation that completed before
//! another was invoked comes first), explains every answer. Writes with unknown outcomes may be
//! placed anywhere after their invocation or left out. Search: Wing & Gong with memoization of
//! (set of placed operations, state), bounded per call.

use std::collections::{BTreeMap, HashSet};

use super::{Facts, Verdict, call_of, logical_writes};
use crate::history::{OpKind, Outcome, ReadLevel, State};

/// Most search states explored per call before the call is reported as inconclusive.
pub const SEARCH_STATES_MAX: usize = 500_000;

const NONE: u8 = 0;
const CREATED: u8 = 1;
const ACTIVE: u8 = 2;
const HANDED_OFF: u8 = 3;
const ENDED: u8 = 4;

fn code(state: State) -> u8 {
    match state {
        State::Created => CREATED,
        State::Active => ACTIVE,
        State::HandedOff => HANDED_OFF,
        State::Ended => ENDED,
    }
}

/// What an operation requires of the state and what it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Succeeded: the transition of its kind.
    Applied(OpKind),
    /// Rejected: the state it was rejected in is one of `states` (bit set), unchanged.
    RejectedIn(u8),
    /// A read that observed this state.
    Observed(u8),
}

#[derive(Debug, Clone)]
struct MOp {
    invoke_us: u64,
    complete_us: u64,
    /// Unknown outcome: may be placed (as a success) or left out.
    optional: bool,
    effect: Effect,
    label: String,
}

fn bit(state: u8) -> u8 {
    1 << state
}

fn step(state: u8, effect: Effect) -> Option<u8> {
    match effect {
        Effect::Observed(s) => (s == state).then_some(state),
        Effect::RejectedIn(mask) => (mask & bit(state) != 0).then_some(state),
        Effect::Applied(kind) => match (kind, state) {
            (OpKind::Create, NONE) => Some(CREATED),
            (OpKind::Start, CREATED) => Some(ACTIVE),
            (OpKind::Turn | OpKind::Event, ACTIVE | HANDED_OFF) => Some(state),
            (OpKind::Context, CREATED | ACTIVE | HANDED_OFF) => Some(state),
            (OpKind::Handoff, ACTIVE) => Some(HANDED_OFF),
            (OpKind::End, CREATED | ACTIVE | HANDED_OFF) => Some(ENDED),
            _ => None,
        },
    }
}

/// The states in which `kind` gets `rejection`; `None` when the rejection says nothing about
/// the lifecycle (invalid input, limits, request id reuse).
fn rejected_in(kind: OpKind, rejection: &str) -> Option<u8> {
    match (rejection, kind) {
        ("CallEnded", _) => Some(bit(ENDED)),
        ("UnknownCall", _) => Some(bit(NONE)),
        ("AlreadyHandedOff", OpKind::Handoff) => Some(bit(HANDED_OFF)),
        ("IllegalTransition", OpKind::Start) => Some(bit(ACTIVE) | bit(HANDED_OFF)),
        ("IllegalTransition", OpKind::Turn | OpKind::Event | OpKind::Handoff) => Some(bit(CREATED)),
        // Any other combination is itself a wrong answer: no state explains it.
        ("IllegalTransition" | "AlreadyHandedOff", _) => Some(0),
        _ => None,
    }
}

/// Result of searching one call.
#[derive(Debug, PartialEq, Eq)]
enum Search {
    Linearizable,
    NotLinearizable,
    Inconclusive,
}

struct Searcher<'a> {
    ops: &'a [MOp],
    failed: HashSet<(Vec<u64>, u8)>,
    explored: usize,
}

impl Searcher<'_> {
    fn run(&mut self, placed: &mut Vec<u64>, state: u8) -> Search {
        let is_placed = |placed: &Vec<u64>, i: usize| placed[i / 64] & (1 << (i % 64)) != 0;
        let all_required = self
            .ops
            .iter()
            .enumerate()
            .all(|(i, op)| op.optional || is_placed(placed, i));
        if all_required {
            return Search::Linearizable;
        }
        if self.failed.contains(&(placed.clone(), state)) {
            return Search::NotLinearizable;
        }
        self.explored += 1;
        if self.explored > SEARCH_STATES_MAX {
            return Search::Inconclusive;
        }
        let horizon = self
            .ops
            .iter()
            .enumerate()
            .filter(|(i, op)| !op.optional && !is_placed(placed, *i))
            .map(|(_, op)| op.complete_us)
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..self.ops.len() {
            let op = &self.ops[i];
            if op.invoke_us > horizon {
                break;
            }
            if is_placed(placed, i) {
                continue;
            }
            let Some(next) = step(state, op.effect) else {
                continue;
            };
            placed[i / 64] |= 1 << (i % 64);
            let result = self.run(placed, next);
            placed[i / 64] &= !(1 << (i % 64));
            if result != Search::NotLinearizable {
                return result;
            }
        }
        self.failed.insert((placed.clone(), state));
        Search::NotLinearizable
    }
}

fn search(ops: &[MOp]) -> Search {
    let mut searcher = Searcher {
        ops,
        failed: HashSet::new(),
        explored: 0,
    };
    let mut placed = vec![0u64; ops.len().div_ceil(64).max(1)];
    searcher.run(&mut placed, NONE)
}

pub fn check(facts: &Facts) -> Verdict {
    let mut verdict = Verdict::new("per-call lifecycle linearizable");
    let mut calls: BTreeMap<&str, Vec<MOp>> = BTreeMap::new();
    for write in logical_writes(&facts.ops) {
        let call = call_of(&write);
        let Some(first) = write.attempts.first() else {
            continue;
        };
        if call.is_empty() {
            continue;
        }
        let kind = first.kind;
        let label = |outcome: &str| {
            format!(
                "{kind:?} {} [{}..{}] {outcome}",
                first.request_id,
                write.invoke_us,
                if write.complete_us == u64::MAX {
                    "?".to_owned()
                } else {
                    write.complete_us.to_string()
                }
            )
        };
        let mop = match (write.outcome(), write.answer) {
            (Outcome::Ok, _) => MOp {
                invoke_us: write.invoke_us,
                complete_us: write.complete_us,
                optional: false,
                effect: Effect::Applied(kind),
                label: label("ok"),
            },
            (Outcome::Fail, Some(answer)) => {
                let Some(mask) = answer
                    .rejection
                    .as_deref()
                    .and_then(|r| rejected_in(kind, r))
                else {
                    continue;
                };
                MOp {
                    invoke_us: write.invoke_us,
                    complete_us: write.complete_us,
                    optional: false,
                    effect: Effect::RejectedIn(mask),
                    label: label(&format!(
                        "rejected {}",
                        answer.rejection.as_deref().unwrap_or("")
                    )),
                }
            }
            _ => MOp {
                invoke_us: write.invoke_us,
                complete_us: u64::MAX,
                optional: true,
                effect: Effect::Applied(kind),
                label: label("unknown"),
            },
        };
        calls.entry(call).or_default().push(mop);
    }
    for op in &facts.ops {
        if op.kind == OpKind::GetCall
            && op.is_ok()
            && op.read == Some(ReadLevel::Linearizable)
            && let Some(state) = op.state
        {
            calls.entry(op.call_id.as_str()).or_default().push(MOp {
                invoke_us: op.invoke_us,
                complete_us: op.complete_us,
                optional: false,
                effect: Effect::Observed(code(state)),
                label: format!(
                    "read on {} [{}..{}] saw {state:?}",
                    op.node, op.invoke_us, op.complete_us
                ),
            });
        }
    }
    let mut inconclusive = 0usize;
    let mut ops_total = 0usize;
    for (call, ops) in &mut calls {
        ops.sort_by_key(|op| op.invoke_us);
        ops_total += ops.len();
        match search(ops) {
            Search::Linearizable => {}
            Search::Inconclusive => inconclusive += 1,
            Search::NotLinearizable => {
                let excerpt: Vec<&str> = ops.iter().map(|op| op.label.as_str()).collect();
                verdict.violation(format!(
                    "call {call}: no linearization explains its history: {}",
                    excerpt.join("; ")
                ));
            }
        }
    }
    if inconclusive > 0 {
        verdict.notes.push(format!(
            "{inconclusive} calls inconclusive (search bound {SEARCH_STATES_MAX} states)"
        ));
    }
    verdict.checked = format!("{} calls, {ops_total} operations", calls.len());
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::fixtures::*;

    fn rejected(id: u64, kind: OpKind, span: (u64, u64), rejection: &str) -> crate::history::Op {
        let mut op = write(id, kind, "a", &format!("r{id}"), span, Outcome::Fail);
        op.rejection = Some(rejection.to_owned());
        op
    }

    #[test]
    fn concurrent_handoffs_with_one_winner_are_linearizable() {
        let facts = Facts {
            ops: vec![
                ok_write(0, OpKind::Create, "a", (0, 10), State::Created, 1),
                ok_write(1, OpKind::Start, "a", (20, 30), State::Active, 2),
                rejected(2, OpKind::Handoff, (40, 60), "AlreadyHandedOff"),
                ok_write(3, OpKind::Handoff, "a", (41, 59), State::HandedOff, 3),
                write(4, OpKind::End, "a", "r4", (70, 0), Outcome::Unknown),
                read(5, "a", (80, 90), State::HandedOff, 3),
            ],
            ..Facts::default()
        };
        let verdict = check(&facts);
        assert!(verdict.ok(), "{verdict:?}");
    }

    #[test]
    fn a_read_that_goes_back_in_time_is_caught() {
        let facts = Facts {
            ops: vec![
                ok_write(0, OpKind::Create, "a", (0, 10), State::Created, 1),
                ok_write(1, OpKind::Start, "a", (20, 30), State::Active, 2),
                ok_write(2, OpKind::End, "a", (40, 50), State::Ended, 3),
                read(3, "a", (60, 70), State::Active, 2),
            ],
            ..Facts::default()
        };
        assert_eq!(check(&facts).violation_count, 1);
    }

    #[test]
    fn a_rejection_no_state_explains_is_caught() {
        // The handoff completed before the second one was sent, yet that one saw IllegalTransition
        // (as if the call were still CREATED).
        let facts = Facts {
            ops: vec![
                ok_write(0, OpKind::Create, "a", (0, 10), State::Created, 1),
                ok_write(1, OpKind::Start, "a", (20, 30), State::Active, 2),
                ok_write(2, OpKind::Handoff, "a", (40, 50), State::HandedOff, 3),
                rejected(3, OpKind::Handoff, (60, 70), "IllegalTransition"),
            ],
            ..Facts::default()
        };
        assert_eq!(check(&facts).violation_count, 1);
    }

    #[test]
    fn a_turn_accepted_after_an_acknowledged_end_is_caught() {
        let facts = Facts {
            ops: vec![
                ok_write(0, OpKind::Create, "a", (0, 10), State::Created, 1),
                ok_write(1, OpKind::Start, "a", (20, 30), State::Active, 2),
                ok_write(2, OpKind::End, "a", (40, 50), State::Ended, 3),
                ok_write(3, OpKind::Turn, "a", (60, 70), State::Ended, 4),
            ],
            ..Facts::default()
        };
        assert_eq!(check(&facts).violation_count, 1);
    }
}
