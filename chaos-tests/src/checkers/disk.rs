//! Disk-fault invariants, judged from what the nemesis observed around each disk fault
//! ([`DiskFacts`]) and from the history:
//! - a node restarted on a damaged data directory either refuses (exit code
//!   [`EXIT_STORAGE_DAMAGED`], a `storage damaged:` line) or serves with a log that reaches at
//!   least the committed index and term it had before it stopped: it never forgets silently;
//! - a node whose fsyncs fail stops (a clean non-zero exit), and a node that stops because of
//!   its disk stops cleanly (no panic, no signal);
//! - the rest of the cluster keeps accepting writes while one node's disk fails.
//!
//! "No acknowledged write is lost" is the `durability` checker's, which runs in every drill.

use super::{Facts, Verdict};
use crate::history::Outcome;

/// The exit code of `switchboard serve` when it refuses damaged storage (sysexits `EX_IOERR`).
pub const EXIT_STORAGE_DAMAGED: i32 = 74;
/// What the refusal line on stderr contains.
pub const STORAGE_DAMAGED_MARK: &str = "storage damaged:";
/// Exit code of a Rust panic: a node that panics on a disk error did not stop cleanly.
pub const EXIT_PANIC: i32 = 101;
/// A disk fault window shorter than this is not judged for availability (a leader's
/// replacement takes about a second to elect; the bound leaves room for a loaded machine).
pub const SERVING_WINDOW_MS_MIN: u64 = 2_500;
/// Time after a fault begins that the cluster may spend electing a new leader.
pub const SERVING_GRACE_MS: u64 = 1_500;

/// A node's durable state as its `Status` reported it before it was stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeState {
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub term: u64,
}

impl NodeState {
    pub fn of(status: &proto::v1::StatusResponse) -> Self {
        Self {
            last_log_index: status.last_log_index,
            committed_index: status.committed_index,
            applied_index: status.applied_index,
            term: status.term,
        }
    }
}

/// How a node came back after its data directory was damaged (or its disk failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartOutcome {
    /// It answered `Status` with this state.
    Served(NodeState),
    /// It exited; `code` is `None` when a signal ended it. `line` is the first stderr line
    /// naming damaged storage, else the last line it wrote.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
        line: String,
    },
    /// Neither answered nor exited within the bound.
    Silent { waited_ms: u64 },
}

/// One restart of a node after a disk fault.
#[derive(Debug, Clone)]
pub struct RestartFact {
    pub node_id: u64,
    /// What was done to it, e.g. "flipped 16 bytes at 4096 of rocksdb/000012.log".
    pub what: String,
    pub before: NodeState,
    pub outcome: RestartOutcome,
}

/// How a node fared while its disk failed under it (sync errors, a full disk).
#[derive(Debug, Clone)]
pub struct StopFact {
    pub node_id: u64,
    /// The fault, as named on the command line.
    pub kind: &'static str,
    /// Whether the fault obliges the node to stop (failing fsyncs do; a full disk may be
    /// absorbed by space RocksDB preallocated).
    pub must_stop: bool,
    /// Entries the cluster committed while the fault held.
    pub committed_during: u64,
    /// Entries the node itself appended while the fault held, when its status was read at
    /// both ends (a lagging follower may receive nothing, so the cluster's commits alone do
    /// not show that it had anything to sync).
    pub appended_during: Option<u64>,
    /// `None` when the node was still running at the end of the fault.
    pub exit: Option<(Option<i32>, Option<i32>)>,
}

/// A disk fault's time span, in milliseconds since the drill started.
#[derive(Debug, Clone)]
pub struct FaultWindow {
    pub kind: &'static str,
    pub node_id: u64,
    pub from_ms: u64,
    pub to_ms: u64,
}

/// What the nemesis saw around disk faults.
#[derive(Debug, Clone, Default)]
pub struct DiskFacts {
    pub restarts: Vec<RestartFact>,
    pub stops: Vec<StopFact>,
    pub windows: Vec<FaultWindow>,
}

impl DiskFacts {
    pub fn is_empty(&self) -> bool {
        self.restarts.is_empty() && self.stops.is_empty() && self.windows.is_empty()
    }
}

/// Every disk checker.
pub fn check_all(facts: &Facts, disk: &DiskFacts) -> Vec<Verdict> {
    vec![
        never_behind(disk),
        damaged_stops_or_serves(disk),
        serving_during_fault(facts, disk),
    ]
}

/// Why a restart broke the "refuse or remember" rule, if it did.
pub fn judge_restart(before: &NodeState, outcome: &RestartOutcome) -> Result<(), String> {
    match outcome {
        RestartOutcome::Served(after) if after.last_log_index < before.committed_index => {
            Err(format!(
                "serves with last log index {} but had committed {} before it stopped",
                after.last_log_index, before.committed_index
            ))
        }
        RestartOutcome::Served(after) if after.term < before.term => Err(format!(
            "serves in term {} but was in term {} before it stopped",
            after.term, before.term
        )),
        RestartOutcome::Served(_) => Ok(()),
        RestartOutcome::Exited {
            code: Some(EXIT_STORAGE_DAMAGED),
            line,
            ..
        } if line.contains(STORAGE_DAMAGED_MARK) => Ok(()),
        RestartOutcome::Exited { code, signal, line } => Err(format!(
            "exited ({}) without refusing as damaged storage (code {EXIT_STORAGE_DAMAGED}, \"{STORAGE_DAMAGED_MARK}\"): {line}",
            describe_exit(*code, *signal)
        )),
        RestartOutcome::Silent { waited_ms } => Err(format!(
            "neither served nor exited within {waited_ms} ms of its restart"
        )),
    }
}

pub fn describe_exit(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(code), _) => format!("code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => "unknown status".to_owned(),
    }
}

/// No node serves with a log or term older than it had acknowledged.
fn never_behind(disk: &DiskFacts) -> Verdict {
    let mut verdict = Verdict::new("no node serves older than it acknowledged");
    let mut served = 0;
    for fact in &disk.restarts {
        let RestartOutcome::Served(_) = fact.outcome else {
            continue;
        };
        served += 1;
        if let Err(why) = judge_restart(&fact.before, &fact.outcome) {
            verdict.violation(format!("node {} after {}: {why}", fact.node_id, fact.what));
        }
    }
    verdict.checked = format!(
        "{} restarts on faulted disks, {served} served",
        disk.restarts.len()
    );
    verdict
}

/// A node on a damaged or failing disk refuses, stops cleanly, or serves correctly.
fn damaged_stops_or_serves(disk: &DiskFacts) -> Verdict {
    let mut verdict = Verdict::new("a damaged node refuses or stops cleanly");
    let mut refused = 0;
    for fact in &disk.restarts {
        if matches!(fact.outcome, RestartOutcome::Served(_)) {
            continue;
        }
        match judge_restart(&fact.before, &fact.outcome) {
            Ok(()) => refused += 1,
            Err(why) => {
                verdict.violation(format!("node {} after {}: {why}", fact.node_id, fact.what))
            }
        }
    }
    for stop in &disk.stops {
        match stop.exit {
            None if stop.must_stop && stop.appended_during.is_some_and(|n| n > 0) => verdict
                .violation(format!(
                    "node {} appended {} entries under {} and kept running ({} committed \
                     meanwhile)",
                    stop.node_id,
                    stop.appended_during.unwrap_or(0),
                    stop.kind,
                    stop.committed_during
                )),
            Some((code, signal)) if code == Some(EXIT_PANIC) || code.is_none() => verdict
                .violation(format!(
                    "node {} did not stop cleanly under {}: {}",
                    stop.node_id,
                    stop.kind,
                    describe_exit(code, signal)
                )),
            Some((Some(0), _)) => verdict.violation(format!(
                "node {} exited with code 0 under {}: a disk failure must be an error exit",
                stop.node_id, stop.kind
            )),
            _ => {}
        }
    }
    verdict.checked = format!(
        "{} restarts ({refused} refused), {} disk failures while running",
        disk.restarts.len(),
        disk.stops.len()
    );
    verdict
}

/// The cluster accepts writes while one node's disk fails.
fn serving_during_fault(facts: &Facts, disk: &DiskFacts) -> Verdict {
    let mut verdict = Verdict::new("writes succeed while one node's disk fails");
    let mut judged = 0;
    for window in &disk.windows {
        if window.to_ms.saturating_sub(window.from_ms) < SERVING_WINDOW_MS_MIN {
            continue;
        }
        judged += 1;
        let from_us = (window.from_ms + SERVING_GRACE_MS) * 1000;
        let to_us = window.to_ms * 1000;
        let acked = facts
            .ops
            .iter()
            .filter(|op| op.kind.is_write() && op.outcome == Outcome::Ok)
            .any(|op| op.complete_us >= from_us && op.complete_us <= to_us);
        if !acked {
            verdict.violation(format!(
                "no write was acknowledged between {} ms and {} ms, while {} held on node {}",
                window.from_ms + SERVING_GRACE_MS,
                window.to_ms,
                window.kind,
                window.node_id
            ));
        }
    }
    verdict.checked = format!(
        "{judged} of {} disk fault windows long enough to judge",
        disk.windows.len()
    );
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::fixtures::*;
    use crate::history::{OpKind, State};

    fn before() -> NodeState {
        NodeState {
            last_log_index: 120,
            committed_index: 110,
            applied_index: 110,
            term: 3,
        }
    }

    fn restart(outcome: RestartOutcome) -> DiskFacts {
        DiskFacts {
            restarts: vec![RestartFact {
                node_id: 3,
                what: "flipped 16 bytes of rocksdb/000009.log".into(),
                before: before(),
                outcome,
            }],
            ..DiskFacts::default()
        }
    }

    fn served(last_log_index: u64, term: u64) -> RestartOutcome {
        RestartOutcome::Served(NodeState {
            last_log_index,
            committed_index: 0,
            applied_index: 0,
            term,
        })
    }

    #[test]
    fn a_node_that_remembers_or_refuses_passes() {
        for outcome in [
            served(110, 3),
            served(130, 4),
            RestartOutcome::Exited {
                code: Some(EXIT_STORAGE_DAMAGED),
                signal: None,
                line: "storage damaged: rocksdb/000009.log at 4096: checksum mismatch; run `switchboard node reset --rejoin`".into(),
            },
        ] {
            let verdicts = check_all(&Facts::default(), &restart(outcome.clone()));
            assert!(verdicts.iter().all(Verdict::ok), "{outcome:?}: {verdicts:?}");
        }
    }

    #[test]
    fn a_node_serving_behind_its_committed_index_is_caught() {
        // The reported bug: last log 728 instead of 1812, silently.
        let verdict = never_behind(&restart(served(72, 3)));
        assert_eq!(verdict.violation_count, 1, "{verdict:?}");
    }

    #[test]
    fn a_node_serving_in_an_older_term_is_caught() {
        let verdict = never_behind(&restart(served(120, 2)));
        assert_eq!(verdict.violation_count, 1, "{verdict:?}");
    }

    #[test]
    fn a_crash_or_an_unexplained_exit_is_caught() {
        for outcome in [
            RestartOutcome::Exited {
                code: Some(EXIT_PANIC),
                signal: None,
                line: "thread 'main' panicked".into(),
            },
            RestartOutcome::Exited {
                code: Some(1),
                signal: None,
                line: "switchboard: failed to open".into(),
            },
            // The right code without the line that tells the operator what to do.
            RestartOutcome::Exited {
                code: Some(EXIT_STORAGE_DAMAGED),
                signal: None,
                line: String::new(),
            },
            RestartOutcome::Exited {
                code: None,
                signal: Some(6),
                line: String::new(),
            },
            RestartOutcome::Silent { waited_ms: 15_000 },
        ] {
            let verdict = damaged_stops_or_serves(&restart(outcome.clone()));
            assert_eq!(verdict.violation_count, 1, "{outcome:?}: {verdict:?}");
        }
    }

    #[test]
    fn a_node_running_on_through_failing_syncs_is_caught() {
        let stop = |exit, appended_during| DiskFacts {
            stops: vec![StopFact {
                node_id: 2,
                kind: "sync-error",
                must_stop: true,
                committed_during: 500,
                appended_during,
                exit,
            }],
            ..DiskFacts::default()
        };
        assert!(damaged_stops_or_serves(&stop(Some((Some(1), None)), Some(40))).ok());
        // It received nothing to sync (a lagging follower): running on is no violation.
        assert!(damaged_stops_or_serves(&stop(None, Some(0))).ok());
        assert!(damaged_stops_or_serves(&stop(None, None)).ok());
        assert_eq!(
            damaged_stops_or_serves(&stop(None, Some(40))).violation_count,
            1
        );
        assert_eq!(
            damaged_stops_or_serves(&stop(Some((Some(EXIT_PANIC), None)), Some(40)))
                .violation_count,
            1
        );
        assert_eq!(
            damaged_stops_or_serves(&stop(Some((Some(0), None)), Some(40))).violation_count,
            1
        );
    }

    #[test]
    fn a_cluster_that_stops_writing_during_a_disk_fault_is_caught() {
        let disk = DiskFacts {
            windows: vec![FaultWindow {
                kind: "sync-error",
                node_id: 1,
                from_ms: 10_000,
                to_ms: 16_000,
            }],
            ..DiskFacts::default()
        };
        // Writes before and after the window, none inside it.
        let ops = vec![
            ok_write(
                1,
                OpKind::Create,
                "a",
                (9_000_000, 9_500_000),
                State::Created,
                1,
            ),
            ok_write(
                2,
                OpKind::Start,
                "a",
                (16_500_000, 17_000_000),
                State::Active,
                2,
            ),
        ];
        let facts = Facts {
            ops,
            ..Facts::default()
        };
        assert_eq!(serving_during_fault(&facts, &disk).violation_count, 1);

        let mut ops = facts.ops.clone();
        ops.push(ok_write(
            3,
            OpKind::Turn,
            "a",
            (13_000_000, 13_100_000),
            State::Active,
            3,
        ));
        let facts = Facts {
            ops,
            ..Facts::default()
        };
        assert!(serving_during_fault(&facts, &disk).ok());
    }
}
