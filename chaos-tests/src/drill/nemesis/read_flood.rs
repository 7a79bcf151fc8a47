//! The `ReadFlood` fault: for the hold time, many concurrent readers ask every node for the
//! largest page of the event log (`ListEvents(limit=1000)`, the default LINEARIZABLE
//! consistency), while every node's term and leader are sampled. The samples become
//! [`FloodFacts`] for the "no leader change under read flood" checker.
//!
//! Readers that are shed (`RESOURCE_EXHAUSTED`) back off briefly, as a well-behaved client does;
//! every read and the whole flood are bounded in time.

use std::time::{Duration, Instant};

use client::Client;
use proto::v1;
use tokio::task::JoinSet;

use super::{FaultKind, Nemesis, ms_since};
use crate::checkers::{FloodFacts, LeadershipSample};

/// Concurrent readers of one flood, spread over the nodes.
pub const FLOOD_READERS: usize = 128;
/// Events asked for per read: the page bound (`domain::limits::PAGE_SIZE_MAX`).
const FLOOD_PAGE_LIMIT: u32 = 1000;
/// A reader that was shed waits this long before asking again.
const SHED_BACKOFF: Duration = Duration::from_millis(50);
/// Bound of one read; past it the read counts as failed.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How often every node's status is sampled during the flood.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// Rounds of sampling at most, whatever the hold (bounds the loop).
const SAMPLE_ROUNDS_MAX: u32 = 10_000;

/// What one reader saw.
#[derive(Debug, Default)]
struct Tally {
    served: u64,
    shed: u64,
    failed: u64,
}

async fn reader(client: Client, until: Instant) -> Tally {
    let mut tally = Tally::default();
    while Instant::now() < until {
        let read = client.list_events(v1::ListEventsRequest {
            from_position: 0,
            limit: FLOOD_PAGE_LIMIT,
            read: None,
        });
        match tokio::time::timeout(READ_TIMEOUT, read).await {
            Ok(Ok(_)) => tally.served += 1,
            Ok(Err(e)) if e.is_overloaded() => {
                tally.shed += 1;
                tokio::time::sleep(SHED_BACKOFF).await;
            }
            Ok(Err(_)) | Err(_) => {
                tally.failed += 1;
                tokio::time::sleep(SHED_BACKOFF).await;
            }
        }
    }
    tally
}

impl Nemesis<'_> {
    /// Floods every node with large reads for `hold`, sampling leadership meanwhile.
    pub(super) async fn read_flood(&mut self, hold: Duration) {
        let before = self.leadership_now().await;
        let i = self.record(
            FaultKind::ReadFlood,
            format!(
                "{FLOOD_READERS} readers of ListEvents(limit={FLOOD_PAGE_LIMIT}) over every \
                 node for {} ms; leadership before: {}",
                hold.as_millis(),
                before.map_or("no leader".to_owned(), |(term, leader)| format!(
                    "term {term}, leader {leader}"
                ))
            ),
        );
        let at_ms = ms_since(self.started);
        let until = Instant::now() + hold;
        let clients: Vec<Client> = self
            .cluster
            .nodes
            .values()
            .map(|n| n.client.clone())
            .collect();
        let mut readers = JoinSet::new();
        for client in clients.iter().cycle().take(FLOOD_READERS) {
            readers.spawn(reader(client.clone(), until));
        }
        let mut samples = Vec::new();
        for _ in 0..SAMPLE_ROUNDS_MAX {
            self.sample_leadership(&mut samples).await;
            if Instant::now() >= until {
                break;
            }
            tokio::time::sleep(
                SAMPLE_INTERVAL.min(until.saturating_duration_since(Instant::now())),
            )
            .await;
        }
        let mut total = Tally::default();
        // Every reader stops at `until` after at most one bounded read.
        let drain_by = Instant::now() + READ_TIMEOUT + SHED_BACKOFF * 2;
        while let Ok(Some(done)) =
            tokio::time::timeout_at(drain_by.into(), readers.join_next()).await
        {
            match done {
                Ok(tally) => {
                    total.served += tally.served;
                    total.shed += tally.shed;
                    total.failed += tally.failed;
                }
                Err(e) => self.trouble(i, format!("reader task: {e}")),
            }
        }
        readers.abort_all();
        // Once more after the flood: an election it caused may end just after it.
        self.sample_leadership(&mut samples).await;
        self.healed(i);
        let flood = FloodFacts {
            at_ms,
            healed_ms: ms_since(self.started),
            readers: FLOOD_READERS,
            served: total.served,
            shed: total.shed,
            failed: total.failed,
            before,
            samples,
        };
        let changes = flood.changes();
        if let Some(record) = self.records.get_mut(i) {
            record.what.push_str(&format!(
                "; {} pages served, {} shed, {} failed; {}",
                total.served,
                total.shed,
                total.failed,
                if changes.is_empty() {
                    "no leader change".to_owned()
                } else {
                    format!("{} samples show a leader change", changes.len())
                }
            ));
        }
        self.floods.push(flood);
    }

    /// `(term, leader)` as the node that leads reports it, if one does.
    async fn leadership_now(&self) -> Option<(u64, u64)> {
        self.cluster
            .statuses()
            .await
            .into_values()
            .filter(|s| s.leader_id == Some(s.node_id))
            .max_by_key(|s| s.term)
            .map(|s| (s.term, s.node_id))
    }

    async fn sample_leadership(&self, samples: &mut Vec<LeadershipSample>) {
        let at_ms = ms_since(self.started);
        for (node_id, status) in self.cluster.statuses().await {
            samples.push(LeadershipSample {
                at_ms,
                node_id,
                term: status.term,
                leader_id: status.leader_id,
            });
        }
    }
}
