//! Per-call sequence numbers gap-free and increasing: in the healed log positions run 1, 2, 3...
//! and each call's sequence numbers run 1, 2, 3... in position order; every `ListCallEvents`
//! read returned gap-free sequences from 1 that match the healed log (a read sees a prefix).

use std::collections::BTreeMap;

use super::{Facts, Verdict};
use crate::history::{OpKind, SeenEvent};

pub fn check(facts: &Facts) -> Verdict {
    let mut verdict = Verdict::new("sequence numbers gap-free and increasing");
    let mut last_seq: BTreeMap<&str, u64> = BTreeMap::new();
    let mut per_call: BTreeMap<&str, Vec<&SeenEvent>> = BTreeMap::new();
    for (i, event) in facts.final_log.iter().enumerate() {
        let expected = u64::try_from(i).unwrap_or(u64::MAX).saturating_add(1);
        if event.position != expected {
            verdict.violation(format!(
                "log position {} where {expected} was expected (gap or reorder)",
                event.position
            ));
        }
        if event.activity {
            continue;
        }
        let last = last_seq.entry(event.call_id.as_str()).or_insert(0);
        if event.sequence != *last + 1 {
            verdict.violation(format!(
                "call {}: sequence {} at position {} follows sequence {}",
                event.call_id, event.sequence, event.position, last
            ));
        }
        *last = event.sequence;
        per_call
            .entry(event.call_id.as_str())
            .or_default()
            .push(event);
    }
    let mut reads = 0usize;
    for op in &facts.ops {
        if op.kind != OpKind::ListEvents || !op.is_ok() {
            continue;
        }
        reads += 1;
        let healed = per_call.get(op.call_id.as_str());
        for (i, seen) in op.events.iter().enumerate() {
            let expected = u64::try_from(i).unwrap_or(u64::MAX).saturating_add(1);
            if seen.sequence != expected {
                verdict.violation(format!(
                    "read op {} of call {} on {}: sequence {} at offset {i}",
                    op.id, op.call_id, op.node, seen.sequence
                ));
                break;
            }
            if i > 0 && seen.position <= op.events[i - 1].position {
                verdict.violation(format!(
                    "read op {} of call {} on {}: position {} does not increase",
                    op.id, op.call_id, op.node, seen.position
                ));
                break;
            }
            let agrees = healed
                .and_then(|events| events.get(i))
                .is_some_and(|h| h.position == seen.position && h.event_type == seen.event_type);
            if !agrees && !facts.final_log.is_empty() {
                verdict.violation(format!(
                    "read op {} of call {} on {}: sequence {} ({} at position {}) is not in the healed log",
                    op.id, op.call_id, op.node, seen.sequence, seen.event_type, seen.position
                ));
                break;
            }
        }
    }
    verdict.checked = format!(
        "{} events of {} calls, {reads} event-list reads",
        facts.final_log.len(),
        per_call.len()
    );
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::fixtures::*;
    use crate::history::{Op, Outcome};

    fn list_read(events: Vec<SeenEvent>) -> Op {
        let mut op = Op::new(1, 0, OpKind::ListEvents, "a", "");
        op.outcome = Outcome::Ok;
        op.events = events;
        op
    }

    #[test]
    fn a_healthy_history_passes() {
        let facts = Facts {
            ops: vec![list_read(healthy_log()[..3].to_vec())],
            final_log: healthy_log(),
            nodes: vec![],
        };
        assert!(check(&facts).ok(), "{:?}", check(&facts));
    }

    #[test]
    fn a_sequence_gap_in_the_log_is_caught() {
        let mut log = healthy_log();
        log[3].sequence = 5;
        log[4].sequence = 6;
        let facts = Facts {
            ops: vec![],
            final_log: log,
            nodes: vec![],
        };
        assert!(!check(&facts).ok());
    }

    #[test]
    fn a_read_with_a_gap_is_caught() {
        let mut events = healthy_log()[..3].to_vec();
        events.remove(1);
        let facts = Facts {
            ops: vec![list_read(events)],
            final_log: healthy_log(),
            nodes: vec![],
        };
        assert_eq!(check(&facts).violation_count, 1);
    }
}
