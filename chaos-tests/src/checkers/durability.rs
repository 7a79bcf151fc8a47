//! Every acknowledged write is present after healing, exactly once; a rejected write left no
//! trace; an unknown outcome may go either way but never twice. The workload writes each
//! request id into the event it produces (source, text, summary, reason, metadata), so a write
//! is found in the healed log by its request id. All definite answers to retries of one request
//! id must agree (the idempotency record answers a retry with the original outcome).

use std::collections::{BTreeMap, BTreeSet};

use super::{Facts, Verdict, call_of, logical_writes};
use crate::history::{OpKind, Outcome, SeenEvent};

pub fn check(facts: &Facts) -> Verdict {
    let mut verdict = Verdict::new("acknowledged writes survive, exactly once");
    let mut by_tag: BTreeMap<&str, Vec<&SeenEvent>> = BTreeMap::new();
    let mut started: BTreeSet<&str> = BTreeSet::new();
    for event in facts.call_events() {
        if let Some(tag) = &event.tag {
            by_tag.entry(tag.as_str()).or_default().push(event);
        }
        if event.event_type == "call.started" {
            started.insert(event.call_id.as_str());
        }
    }
    for (tag, events) in &by_tag {
        if events.len() > 1 {
            let positions: Vec<u64> = events.iter().map(|e| e.position).collect();
            verdict.violation(format!(
                "request {tag} was applied {} times, at positions {positions:?}",
                events.len()
            ));
        }
    }
    let logical = logical_writes(&facts.ops);
    let (mut acked, mut failed, mut unknown) = (0usize, 0usize, 0usize);
    for write in &logical {
        let Some(first) = write.attempts.first() else {
            continue;
        };
        let rid = first.request_id.as_str();
        let kind = first.kind;
        let definite: BTreeSet<Outcome> = write
            .attempts
            .iter()
            .map(|op| op.outcome)
            .filter(|o| matches!(o, Outcome::Ok | Outcome::Fail))
            .collect();
        if definite.len() > 1 {
            verdict.violation(format!(
                "request {rid} ({kind:?}): retries got different definite outcomes (ok and fail)"
            ));
        }
        let found = by_tag.get(rid).map_or(0, Vec::len);
        match write.outcome() {
            Outcome::Ok => {
                acked += 1;
                let call = call_of(write);
                if kind == OpKind::Start {
                    if !started.contains(call) {
                        verdict.violation(format!(
                            "request {rid}: acknowledged start of call {call}, but the log has no call.started"
                        ));
                    }
                } else if found == 0 {
                    verdict.violation(format!(
                        "request {rid} ({kind:?} on call {call}) was acknowledged at index {} but is not in the healed log",
                        write.answer.map_or(0, |op| op.index)
                    ));
                } else if let Some(event) = by_tag.get(rid).and_then(|e| e.first())
                    && event.call_id != call
                {
                    verdict.violation(format!(
                        "request {rid} was acknowledged for call {call} but applied to call {}",
                        event.call_id
                    ));
                }
            }
            Outcome::Fail => {
                failed += 1;
                if found > 0 {
                    verdict.violation(format!(
                        "request {rid} ({kind:?}) was rejected ({}) but is in the healed log",
                        write.answer.map_or("", |op| op.error.as_str())
                    ));
                }
            }
            Outcome::Unknown | Outcome::Pending => unknown += 1,
        }
    }
    verdict.checked = format!(
        "{} writes: {acked} acknowledged, {failed} rejected, {unknown} unknown",
        logical.len()
    );
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::fixtures::*;
    use crate::history::State;

    fn healthy_ops() -> Vec<crate::history::Op> {
        let mut create = ok_write(0, OpKind::Create, "a", (0, 1), State::Created, 1);
        create.request_id = "r0".into();
        vec![
            create,
            ok_write(2, OpKind::Turn, "a", (2, 3), State::Active, 3),
            write(8, OpKind::Turn, "a", "r8", (4, 5), Outcome::Unknown),
        ]
    }

    #[test]
    fn a_healthy_history_passes() {
        let facts = Facts {
            ops: healthy_ops(),
            final_log: healthy_log(),
            nodes: vec![],
        };
        assert!(check(&facts).ok(), "{:?}", check(&facts));
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let mut ops = healthy_ops();
        ops.push(ok_write(9, OpKind::Turn, "a", (6, 7), State::Active, 6));
        let facts = Facts {
            ops,
            final_log: healthy_log(),
            nodes: vec![],
        };
        assert_eq!(check(&facts).violation_count, 1);
    }

    #[test]
    fn a_write_applied_twice_is_caught() {
        let mut log = healthy_log();
        log.insert(3, event(4, 4, "turn.appended", "a", "r2"));
        let facts = Facts {
            ops: healthy_ops(),
            final_log: log,
            nodes: vec![],
        };
        assert!(!check(&facts).ok());
    }

    #[test]
    fn a_rejected_write_in_the_log_is_caught() {
        let mut ops = healthy_ops();
        ops[1].outcome = Outcome::Fail;
        let facts = Facts {
            ops,
            final_log: healthy_log(),
            nodes: vec![],
        };
        assert_eq!(check(&facts).violation_count, 1);
    }
}
