//! Reads are never stale. A `LINEARIZABLE` read (any node) sees at least the state and last
//! sequence number of every write or linearizable read of that call that completed before the
//! read was invoked. A `min_index` read reports an applied index of at least `min_index` and
//! sees every acknowledged write of that call with an index at or below it.

use std::collections::BTreeMap;

use super::{Facts, Verdict};
use crate::history::{Op, OpKind, ReadLevel};

/// What a read observed: state (when a `GetCall`) and the last sequence number.
fn observed(op: &Op) -> (Option<crate::history::State>, u64) {
    match op.kind {
        OpKind::ListEvents => (None, op.events.last().map_or(0, |e| e.sequence)),
        _ => (op.state, op.last_sequence),
    }
}

pub fn check(facts: &Facts) -> Verdict {
    let mut verdict = Verdict::new("reads never stale");
    let mut by_call: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in &facts.ops {
        if op.is_ok() && !op.call_id.is_empty() {
            by_call.entry(op.call_id.as_str()).or_default().push(op);
        }
    }
    let (mut linearizable, mut min_index) = (0usize, 0usize);
    for (call, ops) in &by_call {
        // Evidence: acknowledged writes and linearizable reads, as (completed, state, sequence).
        let evidence: Vec<&&Op> = ops
            .iter()
            .filter(|op| {
                op.kind.is_write()
                    || (op.kind == OpKind::GetCall && op.read == Some(ReadLevel::Linearizable))
            })
            .collect();
        for read in ops.iter().filter(|op| !op.kind.is_write()) {
            let (seen_state, seen_seq) = observed(read);
            match read.read {
                Some(ReadLevel::Linearizable) => {
                    linearizable += 1;
                    for before in evidence.iter().filter(|e| e.done_before(read.invoke_us)) {
                        let stale_state = matches!((seen_state, before.state), (Some(seen), Some(known)) if seen < known);
                        if stale_state || seen_seq < before.last_sequence {
                            verdict.violation(format!(
                                "call {call}: linearizable read op {} on {} [{}..{}] saw {seen_state:?}/seq {seen_seq}, but op {} ({:?} {}) completed at {} with {:?}/seq {}",
                                read.id, read.node, read.invoke_us, read.complete_us, before.id, before.kind,
                                before.request_id, before.complete_us, before.state, before.last_sequence
                            ));
                            break;
                        }
                    }
                }
                Some(ReadLevel::MinIndex(index)) => {
                    min_index += 1;
                    if read.index < index {
                        verdict.violation(format!(
                            "call {call}: read op {} on {} asked min_index {index} and was served at applied index {}",
                            read.id, read.node, read.index
                        ));
                        continue;
                    }
                    for write in ops.iter().filter(|w| {
                        w.kind.is_write() && !w.replayed && w.index > 0 && w.index <= index
                    }) {
                        let stale_state = matches!((seen_state, write.state), (Some(seen), Some(known)) if seen < known);
                        if stale_state || seen_seq < write.last_sequence {
                            verdict.violation(format!(
                                "call {call}: read op {} on {} with min_index {index} saw {seen_state:?}/seq {seen_seq}, older than op {} ({:?} {}) at index {} with {:?}/seq {}",
                                read.id, read.node, write.id, write.kind, write.request_id,
                                write.index, write.state, write.last_sequence
                            ));
                            break;
                        }
                    }
                }
                Some(ReadLevel::Local) | None => {}
            }
        }
    }
    verdict.checked = format!("{linearizable} linearizable reads, {min_index} min_index reads");
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::fixtures::*;
    use crate::history::State;

    #[test]
    fn fresh_reads_pass() {
        let facts = Facts {
            ops: vec![
                ok_write(1, OpKind::Start, "a", (0, 10), State::Active, 2),
                read(2, "a", (5, 15), State::Created, 1),
                read(3, "a", (20, 30), State::Active, 2),
            ],
            ..Facts::default()
        };
        assert!(check(&facts).ok(), "{:?}", check(&facts));
    }

    #[test]
    fn a_stale_linearizable_read_is_caught() {
        let facts = Facts {
            ops: vec![
                ok_write(1, OpKind::Turn, "a", (0, 10), State::Active, 3),
                read(2, "a", (20, 30), State::Active, 2),
            ],
            ..Facts::default()
        };
        assert_eq!(check(&facts).violation_count, 1);
    }

    #[test]
    fn a_min_index_read_older_than_its_index_is_caught() {
        let mut stale = read(2, "a", (20, 30), State::Active, 2);
        stale.read = Some(ReadLevel::MinIndex(7));
        stale.index = 6;
        let mut behind = read(3, "a", (20, 30), State::Active, 2);
        behind.read = Some(ReadLevel::MinIndex(7));
        behind.index = 9;
        let facts = Facts {
            ops: vec![
                ok_write(7, OpKind::Handoff, "a", (0, 10), State::HandedOff, 3),
                stale,
                behind,
            ],
            ..Facts::default()
        };
        assert_eq!(check(&facts).violation_count, 2);
    }
}
