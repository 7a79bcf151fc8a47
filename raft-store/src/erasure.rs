//! The node-local side of erasure: which applied erases still have bytes on this node's disk,
//! and the RocksDB work that removes them.
//!
//! An applied `EraseCall` replaces the call's content with tombstones in the state machine, but
//! the old bytes stay on disk: in the Raft log entries that carried them, in older snapshot
//! files, in memtables and the write-ahead log, and in older versions of keys inside SST files.
//! The state machine records the index of every applied erase (and of every installed
//! snapshot, which replaces what this node held before) in `CF_META`, node-local and never in
//! a snapshot; the node's erasure task ([`Eraser`]) then builds a snapshot that covers it and
//! purges the Raft log through it (both through openraft), and calls [`Eraser::purge_disk`],
//! which flushes every column family and compacts each of them down to the bottommost level so
//! that no SST keeps an older version, and retires older snapshot files. Once that pass ends,
//! [`Eraser::mark_purged`] records it, so a pass interrupted by a crash runs again after restart.
//!
//! What it relies on (see `rocksdb_options`): the write-ahead log is not archived
//! (`WAL_ttl_seconds` and `WAL_size_limit_MB` are 0) nor recycled (`recycle_log_file_num` is 0),
//! so a write-ahead log file whose every column family was flushed is deleted; no checkpoint,
//! backup engine or blob file exists; no RocksDB snapshot or iterator lives longer than a read
//! or a snapshot build. Freed disk blocks are the filesystem's: encryption at rest is left to
//! the disk.

use std::sync::Arc;
use std::time::Instant;

use rocksdb::{BottommostLevelCompaction, CompactOptions, DB, FlushOptions, WriteOptions};
use tokio::sync::watch;

use crate::codec::{decode, encode};
use crate::error::Error;
use crate::keys::{CF_META, COLUMN_FAMILIES};
use crate::snapshot::SnapshotDir;

/// In `CF_META`: the highest log index at which this node applied an erase or installed a
/// snapshot (a snapshot replaces everything the node held, erased or not).
pub(crate) const META_ERASE_APPLIED: &[u8] = b"erase_applied";
/// In `CF_META`: the highest such index whose bytes a completed pass removed from the disk.
const META_ERASE_PURGED: &[u8] = b"erase_purged";

/// What one disk pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskPass {
    /// Column families flushed and compacted.
    pub column_families: usize,
    /// How long the flush and the compactions took, in milliseconds.
    pub elapsed_ms: u64,
}

/// Cheap handle on the node-local erasure bookkeeping and disk work; clones share the store.
#[derive(Debug, Clone)]
pub struct Eraser {
    db: Arc<DB>,
    snapshots: SnapshotDir,
    applied: watch::Receiver<u64>,
}

impl Eraser {
    pub(crate) fn new(db: Arc<DB>, snapshots: SnapshotDir, applied: watch::Receiver<u64>) -> Self {
        Self {
            db,
            snapshots,
            applied,
        }
    }

    /// The highest index of an applied erase (or installed snapshot) so far, updated by every
    /// apply batch that holds one.
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// The index a pass must cover, when an erase (or install) was applied after the last
    /// completed pass.
    pub fn pending(&self) -> Result<Option<u64>, Error> {
        let applied = read_index(&self.db, META_ERASE_APPLIED)?;
        let purged = read_index(&self.db, META_ERASE_PURGED)?;
        Ok(applied.filter(|applied| Some(*applied) > purged))
    }

    /// Flushes every column family's memtable (so the write-ahead log files that held erased
    /// values become obsolete and are deleted), compacts every column family over its whole key
    /// range with the bottommost level forced (so no SST keeps an older version of an erased
    /// key, a purged log entry or a deleted range), and removes snapshot files older than the
    /// newest. Blocking: run it on a blocking thread. Compacting whole column families rather
    /// than the erased call's keys is deliberate: a call's events are spread over the
    /// cluster-wide event table, and a snapshot install deletes the whole state.
    pub fn purge_disk(&self) -> Result<DiskPass, Error> {
        let started = Instant::now();
        let families: Vec<_> = COLUMN_FAMILIES
            .iter()
            .map(|name| {
                self.db
                    .cf_handle(name)
                    .expect("column families are checked when the store opens")
            })
            .collect();
        let mut flush = FlushOptions::default();
        flush.set_wait(true);
        self.db
            .flush_cfs_opt(&families, &flush)
            .map_err(Error::rocks("flush before erasure compaction"))?;
        let mut compact = CompactOptions::default();
        compact.set_exclusive_manual_compaction(true);
        compact.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        for cf in &families {
            self.db
                .compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &compact);
        }
        if let Some(latest) = self.snapshots.latest()? {
            self.snapshots.retire_older_than(&latest)?;
        }
        Ok(DiskPass {
            column_families: families.len(),
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// Records that a pass covering `index` completed (synced), so it is not run again.
    pub fn mark_purged(&self, index: u64) -> Result<(), Error> {
        let cf = self
            .db
            .cf_handle(CF_META)
            .expect("column families are checked when the store opens");
        let mut synced = WriteOptions::default();
        synced.set_sync(true);
        self.db
            .put_cf_opt(cf, META_ERASE_PURGED, encode(&index), &synced)
            .map_err(Error::rocks("record erasure pass"))
    }
}

/// The index stored under `key` in `CF_META`.
pub(crate) fn read_index(db: &DB, key: &'static [u8]) -> Result<Option<u64>, Error> {
    let cf = db
        .cf_handle(CF_META)
        .expect("column families are checked when the store opens");
    db.get_cf(cf, key)
        .map_err(Error::rocks("read erasure mark"))?
        .map(|bytes| decode("erasure mark", key, &bytes))
        .transpose()
}
