//! Time under clock faults. Leaders stamp every command with their wall clock, and leaders'
//! clocks may be minutes off or jump (`ClockSkew`, `ClockJump`); the state machine's clock
//! advances as `max(clock, stamp)`, so the log's time must still never go back, stay within
//! the largest injected skew of the real time the drill saw, and keep the one-hour
//! idempotency window meaning what it says: a retry seconds later gets the original outcome.
//!
//! Three verdicts: leader-stamped event times never decrease in log order (on every node);
//! call and event times are ordered (created ≤ started ≤ handed off ≤ ended) and within the
//! skew of the drill's own clock around the operation that produced them; and writes retried
//! with the same request id (the workload's deliberate delayed retries above all) got one
//! outcome, were replayed, and wrote once.

use std::collections::BTreeMap;

use super::{Facts, Verdict, logical_writes};
use crate::history::{CallTimes, Op, Outcome};

/// Tolerance for rounding and for the drill's and nodes' reads of the same host clock.
pub const CLOCK_SLACK_MS: u64 = 2_000;

/// What the clock checkers need besides the history: how far clocks were moved, and how to
/// turn history times (µs since the drill started) into wall-clock time.
#[derive(Debug, Clone, Default)]
pub struct ClockFacts {
    /// The largest wall-clock offset any node was given (0 without clock faults).
    pub skew_ms_max: u64,
    /// Wall-clock time (Unix ms) of history time zero, read from the drill's own clock.
    pub started_unix_ms: u64,
    /// History time at which the healed log was read: the latest any write can have applied.
    pub checked_at_us: u64,
    /// Clock faults, as history-time windows (µs): injected at, healed at.
    pub clock_faults_us: Vec<(u64, u64)>,
}

impl ClockFacts {
    fn wall_ms(&self, history_us: u64) -> u64 {
        self.started_unix_ms.saturating_add(history_us / 1000)
    }

    /// The window a stamp made between history times `from_us` and `to_us` must fall in.
    fn window_ms(&self, from_us: u64, to_us: u64) -> (u64, u64) {
        let margin = self.skew_ms_max.saturating_add(CLOCK_SLACK_MS);
        (
            self.wall_ms(from_us).saturating_sub(margin),
            self.wall_ms(to_us).saturating_add(margin),
        )
    }
}

/// Every clock verdict.
pub fn check(facts: &Facts, clock: &ClockFacts) -> Vec<Verdict> {
    vec![
        monotonic(facts),
        sane_times(facts, clock),
        idempotent_retries(facts, clock),
    ]
}

/// Leader-stamped event times never decrease in log order, on the final log and every node's.
pub fn monotonic(facts: &Facts) -> Verdict {
    let mut verdict = Verdict::new("leader time never goes back");
    let mut logs = vec![("final log".to_owned(), &facts.final_log)];
    for node in &facts.nodes {
        if let Some(events) = &node.events {
            logs.push((format!("node {}", node.node_id), events));
        }
    }
    let mut events = 0usize;
    let mut span_ms = (u64::MAX, 0u64);
    for (name, log) in &logs {
        let mut previous: Option<(u64, u64)> = None;
        for event in log.iter() {
            events += 1;
            if event.at_ms == 0 {
                verdict.violation(format!(
                    "{name}: event at position {} carries no leader time",
                    event.position
                ));
                continue;
            }
            span_ms = (span_ms.0.min(event.at_ms), span_ms.1.max(event.at_ms));
            if let Some((position, at_ms)) = previous
                && event.at_ms < at_ms
            {
                verdict.violation(format!(
                    "{name}: time goes back {} ms from position {position} ({at_ms}) to {} ({})",
                    at_ms - event.at_ms,
                    event.position,
                    event.at_ms
                ));
            }
            previous = Some((event.position, event.at_ms));
        }
    }
    verdict.checked = if span_ms.0 <= span_ms.1 {
        format!(
            "{events} events in {} logs, spanning {} ms of log time",
            logs.len(),
            span_ms.1 - span_ms.0
        )
    } else {
        format!("{events} events in {} logs", logs.len())
    };
    verdict
}

/// Times in the order of the lifecycle, each within the skew of the real time around the
/// operation that saw it.
pub fn sane_times(facts: &Facts, clock: &ClockFacts) -> Verdict {
    let mut verdict = Verdict::new("call and event times sane");
    let mut calls_seen = 0usize;
    for op in facts.ops.iter().filter(|op| op.is_ok()) {
        let Some(times) = op.times else {
            continue;
        };
        calls_seen += 1;
        check_call_times(&mut verdict, op, &times, clock);
    }
    // Each tagged event against the attempts of the write that produced it.
    let writes = logical_writes(&facts.ops);
    let by_tag: BTreeMap<&str, _> = writes
        .iter()
        .filter_map(|l| l.attempts.first().map(|op| (op.request_id.as_str(), l)))
        .collect();
    let mut events_checked = 0usize;
    for event in &facts.final_log {
        let Some(write) = event.tag.as_deref().and_then(|tag| by_tag.get(tag)) else {
            continue;
        };
        events_checked += 1;
        let all_definite = write
            .attempts
            .iter()
            .all(|op| matches!(op.outcome, Outcome::Ok | Outcome::Fail));
        let last_us = if all_definite {
            write
                .attempts
                .iter()
                .map(|op| op.complete_us)
                .max()
                .unwrap_or(clock.checked_at_us)
        } else {
            clock.checked_at_us
        };
        let (low, high) = clock.window_ms(write.invoke_us, last_us);
        if event.at_ms < low || event.at_ms > high {
            verdict.violation(format!(
                "event at position {} ({}, request {}) is stamped {} but its write ran between \
                 {} and {} (real time, ± {} ms of skew and slack)",
                event.position,
                event.event_type,
                event.tag.as_deref().unwrap_or(""),
                event.at_ms,
                clock.wall_ms(write.invoke_us),
                clock.wall_ms(last_us),
                clock.skew_ms_max + CLOCK_SLACK_MS
            ));
        }
    }
    verdict.checked = format!(
        "{calls_seen} call snapshots, {events_checked} events against their writes, skew at most {} ms",
        clock.skew_ms_max
    );
    verdict
}

fn check_call_times(verdict: &mut Verdict, op: &Op, times: &CallTimes, clock: &ClockFacts) {
    let call = &op.call_id;
    let ordered = [
        ("created", Some(times.created_ms)),
        ("started", times.started_ms),
        ("handed off", times.handed_off_ms),
        ("ended", times.ended_ms),
    ];
    let mut previous: Option<(&str, u64)> = None;
    for (name, at_ms) in ordered {
        let Some(at_ms) = at_ms else {
            continue;
        };
        if let Some((before, before_ms)) = previous
            && at_ms < before_ms
        {
            verdict.violation(format!(
                "call {call} (op {}): {name} at {at_ms} before {before} at {before_ms}",
                op.id
            ));
        }
        previous = Some((name, at_ms));
        // Stamped between the drill's start and the moment this answer arrived.
        let (low, high) = clock.window_ms(0, op.complete_us);
        if at_ms < low || at_ms > high {
            verdict.violation(format!(
                "call {call} (op {}): {name} at {at_ms} is outside {low}..={high} (real time of \
                 the drill up to this answer, ± {} ms of skew and slack)",
                op.id,
                clock.skew_ms_max + CLOCK_SLACK_MS
            ));
        }
    }
}

/// Every attempt of one request id that got a definite answer got the same one (same outcome,
/// index and call); a deliberate delayed retry of an acknowledged write is a replay; such a
/// write is in the log once.
pub fn idempotent_retries(facts: &Facts, clock: &ClockFacts) -> Verdict {
    let mut verdict = Verdict::new("idempotent retries across clock faults");
    let writes = logical_writes(&facts.ops);
    let mut tags: BTreeMap<&str, usize> = BTreeMap::new();
    for event in &facts.final_log {
        if let Some(tag) = event.tag.as_deref() {
            *tags.entry(tag).or_default() += 1;
        }
    }
    let mut retried = 0usize;
    let mut delayed = 0usize;
    let mut across_clock_faults = 0usize;
    for write in &writes {
        let definite: Vec<&Op> = write
            .attempts
            .iter()
            .copied()
            .filter(|op| matches!(op.outcome, Outcome::Ok | Outcome::Fail))
            .collect();
        let Some(first) = definite.iter().min_by_key(|op| op.complete_us).copied() else {
            continue;
        };
        let rid = first.request_id.as_str();
        if definite.len() > 1 {
            retried += 1;
        }
        for op in definite.iter().filter(|op| op.id != first.id) {
            // A create's call id is known only from a success.
            let same_call =
                op.call_id.is_empty() || first.call_id.is_empty() || op.call_id == first.call_id;
            if op.outcome != first.outcome
                || op.index != first.index
                || op.rejection != first.rejection
                || !same_call
            {
                verdict.violation(format!(
                    "request {rid}: attempt {} got {:?} at index {} (call {:?}, rejection {:?}), \
                     attempt {} got {:?} at index {} (call {:?}, rejection {:?})",
                    first.id,
                    first.outcome,
                    first.index,
                    first.call_id,
                    first.rejection,
                    op.id,
                    op.outcome,
                    op.index,
                    op.call_id,
                    op.rejection
                ));
            }
        }
        for op in write.attempts.iter().filter(|op| op.delayed_retry) {
            delayed += 1;
            let crossed = clock
                .clock_faults_us
                .iter()
                .any(|(at, healed)| first.complete_us < *healed && op.invoke_us > *at);
            if crossed {
                across_clock_faults += 1;
            }
            if op.is_ok() && first.is_ok() && op.id != first.id && !op.replayed {
                verdict.violation(format!(
                    "request {rid}: the delayed retry (op {}) of a write acknowledged at index {} \
                     was not answered as a replay: it was applied again at index {}",
                    op.id, first.index, op.index
                ));
            }
            let copies = tags.get(rid).copied().unwrap_or(0);
            if first.is_ok() && copies > 1 {
                verdict.violation(format!(
                    "request {rid}: retried after a delay, and the log holds {copies} events \
                     written by it"
                ));
            }
        }
    }
    verdict.checked = format!(
        "{retried} request ids answered more than once; {delayed} delayed retries, \
         {across_clock_faults} across a clock fault"
    );
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::NodeFinal;
    use crate::checkers::fixtures::*;
    use crate::history::{OpKind, State};

    const T0_MS: u64 = 1_700_000_000_000;

    fn clock(skew_ms_max: u64) -> ClockFacts {
        ClockFacts {
            skew_ms_max,
            started_unix_ms: T0_MS,
            checked_at_us: 60_000_000,
            clock_faults_us: vec![(5_000_000, 9_000_000)],
        }
    }

    /// A log for call "a" stamped at real time: write `rN` ran 1..2 s after `N` seconds.
    fn stamped_log() -> Vec<crate::history::SeenEvent> {
        let mut log = healthy_log();
        for (i, event) in log.iter_mut().enumerate() {
            event.at_ms = T0_MS + (i as u64) * 1000 + 1500;
        }
        log
    }

    fn ops_for(log: &[crate::history::SeenEvent]) -> Vec<Op> {
        log.iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let tag = e.tag.clone()?;
                let s = i as u64 * 1_000_000;
                let mut op = write(
                    i as u64,
                    OpKind::Event,
                    "a",
                    &tag,
                    (s + 1_000_000, s + 2_000_000),
                    Outcome::Ok,
                );
                op.index = e.position;
                Some(op)
            })
            .collect()
    }

    fn facts(log: Vec<crate::history::SeenEvent>, ops: Vec<Op>) -> Facts {
        Facts {
            ops,
            nodes: vec![NodeFinal {
                node_id: 1,
                digest: None,
                events: Some(log.clone()),
            }],
            final_log: log,
        }
    }

    #[test]
    fn a_healthy_history_passes_every_clock_checker() {
        let log = stamped_log();
        let mut ops = ops_for(&log);
        let mut snapshot = ok_write(9, OpKind::End, "a", (5_000_000, 6_000_000), State::Ended, 5);
        snapshot.times = Some(CallTimes {
            created_ms: T0_MS + 1500,
            started_ms: Some(T0_MS + 2500),
            handed_off_ms: Some(T0_MS + 4500),
            ended_ms: Some(T0_MS + 5500),
        });
        ops.push(snapshot);
        let facts = facts(log, ops);
        for verdict in check(&facts, &clock(0)) {
            assert!(verdict.ok(), "{verdict:?}");
        }
    }

    #[test]
    fn time_going_back_in_the_log_is_caught() {
        let mut log = stamped_log();
        log[3].at_ms = log[1].at_ms - 1;
        let verdict = monotonic(&facts(log, vec![]));
        // Once in the final log, once in node 1's.
        assert_eq!(verdict.violation_count, 2, "{verdict:?}");
    }

    #[test]
    fn a_call_ended_before_it_started_is_caught() {
        let mut op = ok_write(1, OpKind::End, "a", (1_000_000, 2_000_000), State::Ended, 3);
        op.times = Some(CallTimes {
            created_ms: T0_MS + 1000,
            started_ms: Some(T0_MS + 1500),
            handed_off_ms: None,
            ended_ms: Some(T0_MS + 1200),
        });
        let verdict = sane_times(&facts(vec![], vec![op]), &clock(0));
        assert_eq!(verdict.violation_count, 1, "{verdict:?}");
        assert!(verdict.violations[0].contains("ended"), "{verdict:?}");
    }

    #[test]
    fn a_stamp_further_ahead_than_the_largest_skew_is_caught() {
        let skew_ms = 300_000;
        let mut log = stamped_log();
        // Within the skew: fine.
        log[2].at_ms += skew_ms;
        log[3].at_ms += skew_ms;
        log[4].at_ms += skew_ms;
        let ops = ops_for(&log);
        assert!(sane_times(&facts(log.clone(), ops.clone()), &clock(skew_ms)).ok());
        // Beyond it (the log is still monotonic: only the sanity check can see this).
        log[4].at_ms += CLOCK_SLACK_MS + 60_000;
        let verdict = sane_times(&facts(log.clone(), ops), &clock(skew_ms));
        assert_eq!(verdict.violation_count, 1, "{verdict:?}");
        assert!(monotonic(&facts(log, vec![])).ok());
    }

    #[test]
    fn a_call_snapshot_stamped_in_the_future_is_caught() {
        let mut op = ok_write(
            1,
            OpKind::Create,
            "a",
            (1_000_000, 2_000_000),
            State::Created,
            1,
        );
        op.times = Some(CallTimes {
            created_ms: T0_MS + 2_000 + 600_000 + CLOCK_SLACK_MS + 1,
            started_ms: None,
            handed_off_ms: None,
            ended_ms: None,
        });
        let verdict = sane_times(&facts(vec![], vec![op]), &clock(600_000));
        assert_eq!(verdict.violation_count, 1, "{verdict:?}");
    }

    fn original_and_retry() -> (Op, Op) {
        let mut original = write(
            1,
            OpKind::Turn,
            "a",
            "r1",
            (1_000_000, 2_000_000),
            Outcome::Ok,
        );
        original.index = 40;
        let mut retry = write(
            2,
            OpKind::Turn,
            "a",
            "r1",
            (12_000_000, 13_000_000),
            Outcome::Ok,
        );
        retry.index = 40;
        retry.replayed = true;
        retry.delayed_retry = true;
        (original, retry)
    }

    fn one_turn_log() -> Vec<crate::history::SeenEvent> {
        vec![
            event(1, 1, "call.created", "a", "r0"),
            event(2, 2, "turn.appended", "a", "r1"),
        ]
    }

    #[test]
    fn a_delayed_retry_answered_as_a_replay_passes_and_counts_the_clock_fault() {
        let (original, retry) = original_and_retry();
        let verdict = idempotent_retries(&facts(one_turn_log(), vec![original, retry]), &clock(0));
        assert!(verdict.ok(), "{verdict:?}");
        assert!(
            verdict.checked.contains("1 across a clock fault"),
            "{verdict:?}"
        );
    }

    #[test]
    fn a_delayed_retry_applied_again_is_caught() {
        let (original, mut retry) = original_and_retry();
        retry.replayed = false;
        retry.index = 77;
        let mut log = one_turn_log();
        log.push(event(3, 3, "turn.appended", "a", "r1"));
        let verdict = idempotent_retries(&facts(log, vec![original, retry]), &clock(0));
        // A different index, not a replay, and two events written by one request.
        assert_eq!(verdict.violation_count, 3, "{verdict:?}");
    }

    #[test]
    fn a_retry_with_a_different_outcome_is_caught() {
        let (original, mut retry) = original_and_retry();
        retry.outcome = Outcome::Fail;
        retry.rejection = Some("CallEnded".into());
        let verdict = idempotent_retries(&facts(one_turn_log(), vec![original, retry]), &clock(0));
        assert_eq!(verdict.violation_count, 1, "{verdict:?}");
    }
}
