//! Handoff at most once per call: the healed log holds at most one `call.handed_off` per call,
//! and at most one distinct request id was ever acknowledged as a successful handoff of a call
//! (retries of one request id are the same handoff).

use std::collections::{BTreeMap, BTreeSet};

use super::{Facts, Verdict};
use crate::history::OpKind;

pub fn check(facts: &Facts) -> Verdict {
    let mut verdict = Verdict::new("handoff at most once");
    let mut in_log: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for event in facts.call_events() {
        if event.event_type == "call.handed_off" {
            in_log
                .entry(event.call_id.as_str())
                .or_default()
                .push(event.position);
        }
    }
    for (call, positions) in &in_log {
        if positions.len() > 1 {
            verdict.violation(format!(
                "call {call} has {} call.handed_off events in the log, at positions {positions:?}",
                positions.len()
            ));
        }
    }
    let mut acked: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for op in &facts.ops {
        if op.kind == OpKind::Handoff && op.is_ok() {
            acked
                .entry(op.call_id.as_str())
                .or_default()
                .insert(op.request_id.as_str());
        }
    }
    for (call, request_ids) in &acked {
        if request_ids.len() > 1 {
            verdict.violation(format!(
                "call {call}: {} different handoff requests were acknowledged: {request_ids:?}",
                request_ids.len()
            ));
        }
    }
    verdict.checked = format!(
        "{} handed-off calls in the log, {} with acknowledged handoffs",
        in_log.len(),
        acked.len()
    );
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::fixtures::*;
    use crate::history::{OpKind, State};

    #[test]
    fn a_healthy_history_passes() {
        let facts = Facts {
            ops: vec![ok_write(
                3,
                OpKind::Handoff,
                "a",
                (10, 20),
                State::HandedOff,
                4,
            )],
            final_log: healthy_log(),
            nodes: vec![],
        };
        assert!(check(&facts).ok(), "{:?}", check(&facts));
    }

    #[test]
    fn two_acknowledged_handoffs_of_one_call_are_caught() {
        let facts = Facts {
            ops: vec![
                ok_write(3, OpKind::Handoff, "a", (10, 20), State::HandedOff, 4),
                ok_write(7, OpKind::Handoff, "a", (12, 25), State::HandedOff, 5),
            ],
            final_log: healthy_log(),
            nodes: vec![],
        };
        let verdict = check(&facts);
        assert_eq!(verdict.violation_count, 1, "{verdict:?}");
    }

    #[test]
    fn two_handoff_events_in_the_log_are_caught() {
        let mut log = healthy_log();
        log.insert(4, event(5, 5, "call.handed_off", "a", "r9"));
        let facts = Facts {
            ops: vec![],
            final_log: log,
            nodes: vec![],
        };
        assert!(!check(&facts).ok());
    }
}
