//! Checker: every `RecordActivity` batch is in the log all or not at all, once, at consecutive
//! positions; an acknowledged batch is there, at the positions its acknowledgement named.
//!
//! The drill's activity writer tags every record of a batch with the batch's request id
//! (metadata `rid`) and retries a batch under that id through the faults, so a batch applied
//! twice (a retry not recognised) or partly (a batch split) shows here.

use std::collections::BTreeMap;

use super::Verdict;
use crate::history::SeenEvent;

/// What the drill's activity writer did with one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivityBatch {
    pub request_id: String,
    pub records: u64,
    /// The acknowledged positions, first and last; `None` when the outcome is unknown (the
    /// client gave up, the batch may or may not be in the log).
    pub acked: Option<(u64, u64)>,
}

pub fn check(final_log: &[SeenEvent], batches: &[ActivityBatch]) -> Verdict {
    let mut verdict = Verdict::new("activity batches: all or none, once, as acknowledged");
    let mut found: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for event in final_log.iter().filter(|e| e.activity) {
        if let Some(tag) = &event.tag {
            found.entry(tag.as_str()).or_default().push(event.position);
        }
    }
    let acked = batches.iter().filter(|b| b.acked.is_some()).count();
    verdict.checked = format!("{} batches ({acked} acknowledged)", batches.len());
    for batch in batches {
        let positions = found
            .get(batch.request_id.as_str())
            .cloned()
            .unwrap_or_default();
        let consecutive = positions.windows(2).all(|w| w[1] == w[0] + 1);
        if !positions.is_empty() && (positions.len() as u64 != batch.records || !consecutive) {
            verdict.violation(format!(
                "batch {} ({} records) is in the log at positions {positions:?}",
                batch.request_id, batch.records
            ));
            continue;
        }
        if let Some((first, last)) = batch.acked {
            let expected: Vec<u64> = (first..=last).collect();
            if positions != expected {
                verdict.violation(format!(
                    "batch {} was acknowledged at {first}..={last} but the log holds it at {positions:?}",
                    batch.request_id
                ));
            }
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(position: u64, rid: &str) -> SeenEvent {
        SeenEvent {
            position,
            sequence: 1,
            event_type: "agent.progress".to_owned(),
            call_id: String::new(),
            tag: Some(rid.to_owned()),
            at_ms: position,
            activity: true,
        }
    }

    fn batch(rid: &str, acked: Option<(u64, u64)>) -> ActivityBatch {
        ActivityBatch {
            request_id: rid.to_owned(),
            records: 2,
            acked,
        }
    }

    #[test]
    fn a_healthy_history_passes() {
        let log = [
            record(3, "a"),
            record(4, "a"),
            record(7, "b"),
            record(8, "b"),
        ];
        let verdict = check(
            &log,
            &[batch("a", Some((3, 4))), batch("b", None), batch("c", None)],
        );
        assert!(verdict.ok(), "{:?}", verdict.violations);
    }

    #[test]
    fn a_twice_applied_batch_is_caught() {
        let log = [
            record(3, "a"),
            record(4, "a"),
            record(5, "a"),
            record(6, "a"),
        ];
        assert!(!check(&log, &[batch("a", Some((3, 4)))]).ok());
    }

    #[test]
    fn a_partial_or_split_batch_is_caught() {
        assert!(!check(&[record(3, "a")], &[batch("a", None)]).ok());
        let split = [record(3, "a"), record(5, "a")];
        assert!(!check(&split, &[batch("a", None)]).ok());
    }

    #[test]
    fn a_lost_or_moved_acknowledged_batch_is_caught() {
        assert!(!check(&[], &[batch("a", Some((3, 4)))]).ok());
        let moved = [record(5, "a"), record(6, "a")];
        assert!(!check(&moved, &[batch("a", Some((3, 4)))]).ok());
    }
}
