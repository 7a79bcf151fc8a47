//! Every watch delivers the committed log filtered as it asked: in position order, each event
//! once, each as the log holds it, and none missing between where it started and where its last
//! checkpoint (`resume_from`) says it got to, across failovers and partitions. A watch that
//! ended in an error, or did not reach the end of the healed log, is a violation too.

use std::collections::BTreeMap;

use super::Verdict;
use crate::history::SeenEvent;

/// What one drill watcher saw.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct WatchRecord {
    pub name: String,
    /// Its filter: event types starting with any of these (empty: every type).
    pub type_prefixes: Vec<String>,
    /// The position it started from.
    pub from: u64,
    /// What it delivered, in order.
    pub events: Vec<SeenEvent>,
    /// Its last checkpoint: every matching event before it was delivered.
    pub resume_from: u64,
    /// Times the client moved it to another node.
    pub resumed: u64,
    /// The error that ended it, if any.
    pub error: Option<String>,
}

impl WatchRecord {
    fn wants(&self, event: &SeenEvent) -> bool {
        self.type_prefixes.is_empty()
            || self
                .type_prefixes
                .iter()
                .any(|p| event.event_type.starts_with(p.as_str()))
    }
}

/// Judges `records` against the healed leader's `final_log` (position order).
pub fn check(final_log: &[SeenEvent], records: &[WatchRecord]) -> Verdict {
    let mut verdict = Verdict::new("watch streams equal the filtered log");
    let log: BTreeMap<u64, &SeenEvent> = final_log.iter().map(|e| (e.position, e)).collect();
    let head = final_log.last().map_or(1, |e| e.position + 1);
    let mut delivered = 0usize;
    for record in records {
        let name = &record.name;
        delivered += record.events.len();
        if let Some(error) = &record.error {
            verdict.violation(format!("watch {name} ended with an error: {error}"));
        }
        let mut last = None;
        for event in &record.events {
            if let Some(last) = last
                && event.position <= last
            {
                verdict.violation(format!(
                    "watch {name}: position {} after {last} (a repeat or out of order)",
                    event.position
                ));
            }
            last = Some(event.position);
            if event.position < record.from || event.position >= record.resume_from {
                verdict.violation(format!(
                    "watch {name}: position {} outside [{}, {}), where it started and its checkpoint",
                    event.position, record.from, record.resume_from
                ));
            }
            if !record.wants(event) {
                verdict.violation(format!(
                    "watch {name}: position {} ({}) does not match its filter {:?}",
                    event.position, event.event_type, record.type_prefixes
                ));
            }
            match log.get(&event.position) {
                Some(committed)
                    if committed.event_type == event.event_type
                        && committed.call_id == event.call_id
                        && committed.sequence == event.sequence => {}
                Some(committed) => verdict.violation(format!(
                    "watch {name}: position {} delivered as {} of call {} seq {}, the log holds {} of call {} seq {}",
                    event.position,
                    event.event_type,
                    event.call_id,
                    event.sequence,
                    committed.event_type,
                    committed.call_id,
                    committed.sequence
                )),
                None => verdict.violation(format!(
                    "watch {name}: position {} ({}) is not in the committed log",
                    event.position, event.event_type
                )),
            }
        }
        let got: std::collections::BTreeSet<u64> =
            record.events.iter().map(|e| e.position).collect();
        for committed in final_log
            .iter()
            .filter(|e| e.position >= record.from && e.position < record.resume_from)
            .filter(|e| record.wants(e))
        {
            if !got.contains(&committed.position) {
                verdict.violation(format!(
                    "watch {name}: position {} ({} of call {}) was never delivered, though its checkpoint passed it",
                    committed.position, committed.event_type, committed.call_id
                ));
            }
        }
        if record.error.is_none() && record.resume_from < head {
            verdict.violation(format!(
                "watch {name}: stopped at position {} of a log that ends before {head}",
                record.resume_from
            ));
        }
    }
    verdict.checked = format!(
        "{} watches, {delivered} events delivered, {} resumptions",
        records.len(),
        records.iter().map(|r| r.resumed).sum::<u64>()
    );
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::fixtures::*;

    fn record(name: &str, prefixes: &[&str], from: u64, log: &[SeenEvent]) -> WatchRecord {
        let mut record = WatchRecord {
            name: name.to_owned(),
            type_prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
            from,
            resume_from: log.last().map_or(1, |e| e.position + 1),
            ..WatchRecord::default()
        };
        record.events = log
            .iter()
            .filter(|e| e.position >= from && record.wants(e))
            .cloned()
            .collect();
        record
    }

    #[test]
    fn streams_equal_to_the_filtered_log_pass() {
        let log = healthy_log();
        let records = [
            record("all", &[], 1, &log),
            record("lifecycle", &["call."], 1, &log),
            record("late", &["turn.", "call.ended"], 3, &log),
        ];
        let verdict = check(&log, &records);
        assert!(verdict.ok(), "{verdict:?}");
    }

    #[test]
    fn a_gap_a_repeat_a_stranger_and_a_stream_cut_short_are_caught() {
        let log = healthy_log();
        let mut gap = record("gap", &[], 1, &log);
        gap.events.remove(2);
        assert_eq!(check(&log, &[gap]).violation_count, 1);

        let mut repeat = record("repeat", &[], 1, &log);
        let again = repeat.events[1].clone();
        repeat.events.insert(2, again);
        assert_eq!(check(&log, &[repeat]).violation_count, 1);

        let mut unfiltered = record("unfiltered", &["call."], 1, &log);
        unfiltered.events.insert(2, log[2].clone());
        assert_eq!(check(&log, &[unfiltered]).violation_count, 1);

        let mut forged = record("forged", &[], 1, &log);
        forged.events[3].call_id = "b".to_owned();
        assert_eq!(check(&log, &[forged]).violation_count, 1);

        let mut short = record("short", &[], 1, &log[..3]);
        short.resume_from = 4;
        assert_eq!(check(&log, &[short]).violation_count, 1);

        let mut failed = record("failed", &[], 1, &log);
        failed.error = Some("PERMISSION_DENIED".to_owned());
        assert_eq!(check(&log, &[failed]).violation_count, 1);
    }
}
