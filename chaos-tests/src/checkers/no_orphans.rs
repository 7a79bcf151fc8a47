//! No turn or event without its call: every event in the healed log belongs to a call whose
//! `call.created` comes first (sequence 1); every acknowledged write names a call that exists.

use std::collections::BTreeMap;

use super::{Facts, Verdict};
use crate::history::OpKind;

pub fn check(facts: &Facts) -> Verdict {
    let mut verdict = Verdict::new("no turn or event without its call");
    let mut created: BTreeMap<&str, u64> = BTreeMap::new();
    for event in facts.call_events() {
        if event.event_type == "call.created" {
            if event.sequence != 1 {
                verdict.violation(format!(
                    "call {}: call.created at position {} has sequence {}, not 1",
                    event.call_id, event.position, event.sequence
                ));
            }
            if let Some(first) = created.insert(event.call_id.as_str(), event.position) {
                verdict.violation(format!(
                    "call {} created twice, at positions {first} and {}",
                    event.call_id, event.position
                ));
            }
        } else if !created.contains_key(event.call_id.as_str()) {
            verdict.violation(format!(
                "{} at position {} belongs to call {}, which has no earlier call.created",
                event.event_type, event.position, event.call_id
            ));
        }
    }
    let mut acked = 0usize;
    for op in &facts.ops {
        if op.kind == OpKind::Create || !op.kind.is_write() || !op.is_ok() {
            continue;
        }
        acked += 1;
        if !created.contains_key(op.call_id.as_str()) {
            verdict.violation(format!(
                "op {} ({:?}, request {}) was acknowledged for call {}, which the log never created",
                op.id, op.kind, op.request_id, op.call_id
            ));
        }
    }
    verdict.checked = format!(
        "{} events of {} calls, {acked} acknowledged writes",
        facts.final_log.len(),
        created.len()
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
            ops: vec![ok_write(2, OpKind::Turn, "a", (1, 5), State::Active, 3)],
            final_log: healthy_log(),
            nodes: vec![],
        };
        assert!(check(&facts).ok(), "{:?}", check(&facts));
    }

    #[test]
    fn an_event_of_an_uncreated_call_is_caught() {
        let mut log = healthy_log();
        log.push(event(6, 2, "turn.appended", "ghost", "r9"));
        let facts = Facts {
            ops: vec![ok_write(9, OpKind::Turn, "ghost", (1, 5), State::Active, 2)],
            final_log: log,
            nodes: vec![],
        };
        assert_eq!(check(&facts).violation_count, 2);
    }
}
