//! The erasure task: after this node applies an erase, the erased bytes leave its disk.
//!
//! An applied `EraseCall` tombstones the call's content in the state machine; the old bytes are
//! still in the Raft log entries that carried them, in older snapshot files, in memtables and
//! the write-ahead log, and in older versions inside SST files. For every erase applied (or
//! snapshot installed) after the last completed pass, one pass on this node:
//!
//! 1. builds a snapshot covering the erase's index, unless one does (openraft
//!    `trigger().snapshot()`; the build retires older snapshot files);
//! 2. purges the Raft log through that index (`trigger().purge_log`, which ignores
//!    `max_in_snapshot_log_to_keep`), re-asking until the purge shows in the metrics: a leader
//!    postpones a purge while a replication stream reads those entries;
//! 3. flushes every column family and compacts each with the bottommost level forced
//!    ([`raft_store::Eraser::purge_disk`]), so no SST, write-ahead log file or snapshot file
//!    holds the old bytes;
//! 4. records the pass node-locally, so a pass cut short by a crash runs again at restart.
//!
//! One pass covers every erase applied before it starts. The bound: a pass ends within
//! [`ERASURE_BOUND`] of the erase being applied on this node, on a healthy disk with the node
//! running. Each completed pass logs one line and counts in
//! `switchboard_erasure_passes_total`; a pass over the bound logs a warning. A failed pass is
//! retried with a capped backoff. Owned by the node server (one task in its `JoinSet`, stopped
//! by its cancellation token); it never blocks the runtime (disk work runs on a blocking thread).

use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use raft_store::Eraser;
use tokio_util::sync::CancellationToken;

use crate::Raft;
use crate::observe::names;

/// The erasure bound: a pass completes within this time of the erase being applied on a node.
pub const ERASURE_BOUND: Duration = Duration::from_secs(60);
/// Longest wait for the snapshot that covers the erase.
const SNAPSHOT_WAIT_MAX: Duration = Duration::from_secs(20);
/// Longest wait for the log purge through the erase.
const PURGE_WAIT_MAX: Duration = Duration::from_secs(20);
/// How often a postponed log purge is asked for again.
const PURGE_RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// Backoff after a failed pass: doubles from the minimum up to the maximum.
const RETRY_BACKOFF_MIN: Duration = Duration::from_secs(1);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why a pass did not complete.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("raft refused to {what}: {source}")]
    Raft {
        what: &'static str,
        #[source]
        source: openraft::error::Fatal<raft_store::TypeConfig>,
    },
    #[error("no snapshot covering index {index} within {waited_ms} ms")]
    SnapshotTimeout { index: u64, waited_ms: u64 },
    #[error("the raft log was not purged through index {index} within {waited_ms} ms")]
    PurgeTimeout { index: u64, waited_ms: u64 },
    #[error("store: {0}")]
    Store(#[from] raft_store::Error),
    #[error("the disk pass task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error("the node is shutting down")]
    ShuttingDown,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Runs passes until `shutdown`: one at start when a pass is pending (an erase applied before
/// a crash or restart), then one after every apply batch holding an erase.
pub async fn run(raft: Raft, eraser: Eraser, shutdown: CancellationToken) {
    let mut applied = eraser.watch_applied();
    let mut backoff = RETRY_BACKOFF_MIN;
    loop {
        // Seen before the check, so an erase applied during a pass wakes the next loop.
        applied.borrow_and_update();
        let pending = {
            let eraser = eraser.clone();
            tokio::task::spawn_blocking(move || eraser.pending()).await
        };
        let failed = match pending {
            Ok(Ok(Some(index))) => match pass(&raft, &eraser, index, &shutdown).await {
                Ok(()) => {
                    backoff = RETRY_BACKOFF_MIN;
                    continue;
                }
                Err(PassError::ShuttingDown) => return,
                Err(error) => Some(error),
            },
            Ok(Ok(None)) => None,
            Ok(Err(error)) => Some(PassError::Store(error)),
            Err(error) => Some(PassError::Task(error)),
        };
        if let Some(error) = failed {
            tracing::warn!(%error, retry_in_ms = millis(backoff), "erasure pass failed; retrying");
            metrics::counter!(names::ERASURE_PASS_FAILURES).increment(1);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = applied.changed() => if changed.is_err() {
                return;
            },
        }
    }
}

/// One pass covering the erase (or install) applied at `index`.
async fn pass(
    raft: &Raft,
    eraser: &Eraser,
    index: u64,
    shutdown: &CancellationToken,
) -> Result<(), PassError> {
    let started = Instant::now();
    let refused = |what: &'static str| {
        move |source: openraft::error::Fatal<raft_store::TypeConfig>| PassError::Raft {
            what,
            source,
        }
    };

    let covered = |m: &openraft::RaftMetrics<raft_store::TypeConfig>| {
        m.snapshot.as_ref().is_some_and(|s| s.index >= index)
    };
    if !covered(&raft.metrics().borrow_watched()) {
        raft.trigger()
            .snapshot()
            .await
            .map_err(refused("build a snapshot"))?;
        let wait = raft.wait(Some(SNAPSHOT_WAIT_MAX));
        let built = wait.metrics(covered, "snapshot covers the erase");
        tokio::select! {
            () = shutdown.cancelled() => return Err(PassError::ShuttingDown),
            waited = built => {
                waited.map_err(|_| PassError::SnapshotTimeout {
                    index,
                    waited_ms: millis(SNAPSHOT_WAIT_MAX),
                })?;
            }
        }
    }

    let purge_started = Instant::now();
    loop {
        let purged = raft
            .metrics()
            .borrow_watched()
            .purged
            .as_ref()
            .is_some_and(|p| p.index >= index);
        if purged {
            break;
        }
        if purge_started.elapsed() >= PURGE_WAIT_MAX {
            return Err(PassError::PurgeTimeout {
                index,
                waited_ms: millis(PURGE_WAIT_MAX),
            });
        }
        raft.trigger()
            .purge_log(index)
            .await
            .map_err(refused("purge the log"))?;
        tokio::select! {
            () = shutdown.cancelled() => return Err(PassError::ShuttingDown),
            () = tokio::time::sleep(PURGE_RETRY_INTERVAL) => {}
        }
    }

    let disk = {
        let eraser = eraser.clone();
        tokio::task::spawn_blocking(move || {
            let disk = eraser.purge_disk()?;
            eraser.mark_purged(index)?;
            Ok::<_, raft_store::Error>(disk)
        })
        .await
        .map_err(PassError::Task)??
    };
    let elapsed = started.elapsed();
    metrics::counter!(names::ERASURE_PASSES).increment(1);
    metrics::histogram!(names::ERASURE_PASS_SECONDS).record(elapsed.as_secs_f64());
    tracing::info!(
        through_index = index,
        elapsed_ms = millis(elapsed),
        compaction_ms = disk.elapsed_ms,
        column_families = disk.column_families,
        "erasure pass completed: snapshot covers the erase, log purged, column families compacted"
    );
    if elapsed > ERASURE_BOUND {
        tracing::warn!(
            through_index = index,
            elapsed_ms = millis(elapsed),
            bound_ms = millis(ERASURE_BOUND),
            "erasure pass took longer than its bound"
        );
    }
    Ok(())
}
