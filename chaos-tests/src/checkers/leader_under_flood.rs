//! No leader change under a read flood: while the nemesis floods the cluster with client reads
//! (`FaultKind::ReadFlood`), every node keeps the term and leader it had when the flood began.
//!
//! Why: reads change nothing, so a leader change during a read flood can only mean that Raft's
//! heartbeats waited behind client reads (issue 17: two leader changes under 200 concurrent
//! large `ListEvents`). Faults run one at a time, so nothing else in the window explains one.

use super::Verdict;

/// One node's view of leadership at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeadershipSample {
    /// Since the drill started.
    pub at_ms: u64,
    pub node_id: u64,
    pub term: u64,
    pub leader_id: Option<u64>,
}

/// What one read flood did and what the cluster's leadership looked like meanwhile.
#[derive(Debug, Clone, Default)]
pub struct FloodFacts {
    pub at_ms: u64,
    pub healed_ms: u64,
    pub readers: usize,
    pub served: u64,
    pub shed: u64,
    /// Reads that failed other than by being shed (timeouts under the flood, for example).
    pub failed: u64,
    /// `(term, leader)` as the leader reported it when the flood began; `None` when no leader
    /// was known then (the flood is then not judged).
    pub before: Option<(u64, u64)>,
    /// Every node's status, sampled through the flood and once after it.
    pub samples: Vec<LeadershipSample>,
}

impl FloodFacts {
    /// The samples that show another term or leader than before the flood.
    pub fn changes(&self) -> Vec<LeadershipSample> {
        let Some((term, leader)) = self.before else {
            return Vec::new();
        };
        self.samples
            .iter()
            .filter(|s| s.term != term || s.leader_id != Some(leader))
            .copied()
            .collect()
    }
}

pub fn check(floods: &[FloodFacts]) -> Verdict {
    let mut verdict = Verdict::new("no leader change under read flood");
    let mut samples = 0;
    for flood in floods {
        samples += flood.samples.len();
        let window = format!("flood {}..{} ms", flood.at_ms, flood.healed_ms);
        let Some((term, leader)) = flood.before else {
            verdict
                .notes
                .push(format!("{window}: no leader when it began; not judged"));
            continue;
        };
        let changes = flood.changes();
        verdict.notes.push(format!(
            "{window}: {} readers, {} pages served, {} shed, {} failed; term {term}, leader \
             {leader}; {} samples showing a leader change",
            flood.readers,
            flood.served,
            flood.shed,
            flood.failed,
            changes.len()
        ));
        for change in changes {
            verdict.violation(format!(
                "{window}: node {} saw term {} leader {:?} at {} ms (before the flood: term \
                 {term}, leader {leader})",
                change.node_id, change.term, change.leader_id, change.at_ms
            ));
        }
    }
    verdict.checked = if floods.is_empty() {
        "no read flood injected".to_owned()
    } else {
        format!("{} read floods, {samples} leadership samples", floods.len())
    };
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, node_id: u64, term: u64, leader_id: Option<u64>) -> LeadershipSample {
        LeadershipSample {
            at_ms,
            node_id,
            term,
            leader_id,
        }
    }

    fn flood(samples: Vec<LeadershipSample>) -> FloodFacts {
        FloodFacts {
            at_ms: 1_000,
            healed_ms: 5_000,
            readers: 128,
            served: 900,
            shed: 300,
            before: Some((3, 1)),
            samples,
            ..FloodFacts::default()
        }
    }

    #[test]
    fn a_stable_leader_through_the_flood_passes() {
        let floods = vec![flood(vec![
            sample(1_100, 1, 3, Some(1)),
            sample(1_100, 2, 3, Some(1)),
            sample(4_900, 3, 3, Some(1)),
        ])];
        let verdict = check(&floods);
        assert!(verdict.ok(), "{:?}", verdict.violations);
        assert_eq!(verdict.notes.len(), 1);
    }

    #[test]
    fn an_election_during_the_flood_is_caught() {
        let floods = vec![flood(vec![
            sample(1_100, 1, 3, Some(1)),
            // A follower stopped hearing heartbeats: a new term, then a new leader.
            sample(2_300, 2, 4, None),
            sample(2_600, 2, 4, Some(2)),
            sample(2_600, 1, 3, Some(1)),
        ])];
        let verdict = check(&floods);
        assert_eq!(verdict.violation_count, 2, "{:?}", verdict.violations);
        assert!(verdict.violations[0].contains("node 2"), "{:?}", verdict);
    }

    #[test]
    fn a_node_losing_its_leader_in_the_same_term_is_caught() {
        let floods = vec![flood(vec![sample(2_000, 3, 3, None)])];
        assert_eq!(check(&floods).violation_count, 1);
    }

    #[test]
    fn a_flood_that_began_without_a_leader_is_noted_not_judged() {
        let mut leaderless = flood(vec![sample(2_000, 3, 4, Some(2))]);
        leaderless.before = None;
        let verdict = check(&[leaderless]);
        assert!(verdict.ok());
        assert!(
            verdict.notes[0].contains("not judged"),
            "{:?}",
            verdict.notes
        );
    }
}
