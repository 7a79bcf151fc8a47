//! Nothing is accepted after ENDED: in the healed log no event of a call follows its
//! `call.ended`; and no write to a call that was invoked after an acknowledged end of that call
//! completed was acknowledged as newly applied (a replay of an earlier request is fine).

use std::collections::BTreeMap;

use super::{Facts, Verdict};
use crate::history::OpKind;

pub fn check(facts: &Facts) -> Verdict {
    let mut verdict = Verdict::new("nothing accepted after ENDED");
    let mut ended_at: BTreeMap<&str, u64> = BTreeMap::new();
    for event in facts.call_events() {
        if let Some(end) = ended_at.get(event.call_id.as_str()) {
            verdict.violation(format!(
                "call {}: {} at position {} (sequence {}) follows its call.ended at position {end}",
                event.call_id, event.event_type, event.position, event.sequence
            ));
        }
        if event.event_type == "call.ended" {
            ended_at.insert(event.call_id.as_str(), event.position);
        }
    }
    // Earliest completion of an acknowledged end, per call.
    let mut end_acked: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for op in &facts.ops {
        if op.kind == OpKind::End && op.is_ok() {
            let entry = end_acked
                .entry(op.call_id.as_str())
                .or_insert((op.complete_us, op.id));
            if op.complete_us < entry.0 {
                *entry = (op.complete_us, op.id);
            }
        }
    }
    let mut writes_checked = 0usize;
    for op in &facts.ops {
        if !op.kind.is_write() || op.kind == OpKind::Create || !op.is_ok() || op.replayed {
            continue;
        }
        let Some((ended_us, end_op)) = end_acked.get(op.call_id.as_str()) else {
            continue;
        };
        writes_checked += 1;
        if op.invoke_us > *ended_us {
            verdict.violation(format!(
                "call {}: op {} ({:?}, request {}) invoked at {} us was applied after op {end_op} ended the call at {ended_us} us",
                op.call_id, op.id, op.kind, op.request_id, op.invoke_us
            ));
        }
    }
    verdict.checked = format!(
        "{} ended calls in the log, {writes_checked} acknowledged writes to calls that ended",
        ended_at.len()
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
            ops: vec![
                ok_write(2, OpKind::Turn, "a", (1, 5), State::Active, 3),
                ok_write(4, OpKind::End, "a", (10, 20), State::Ended, 5),
            ],
            final_log: healthy_log(),
            nodes: vec![],
        };
        assert!(check(&facts).ok(), "{:?}", check(&facts));
    }

    #[test]
    fn a_turn_accepted_after_the_end_is_caught() {
        let facts = Facts {
            ops: vec![
                ok_write(4, OpKind::End, "a", (10, 20), State::Ended, 5),
                ok_write(5, OpKind::Turn, "a", (30, 40), State::Ended, 6),
            ],
            final_log: healthy_log(),
            nodes: vec![],
        };
        assert_eq!(check(&facts).violation_count, 1);
    }

    #[test]
    fn an_event_after_call_ended_in_the_log_is_caught() {
        let mut log = healthy_log();
        log.push(event(6, 6, "turn.appended", "a", "r5"));
        let facts = Facts {
            ops: vec![],
            final_log: log,
            nodes: vec![],
        };
        assert_eq!(check(&facts).violation_count, 1);
    }
}
