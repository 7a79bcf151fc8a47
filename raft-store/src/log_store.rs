//! The Raft log and vote on RocksDB (openraft's `RaftLogStorage`).
//!
//! Durability contract: an append returns once its entries are readable and fires its callback
//! only after they are fsynced; the vote is fsynced before `save_vote` returns. Appends are
//! coalesced by one sync thread: every callback queued while a sync runs is completed by the
//! next single `fsync` of the write-ahead log (group commit). Because the log and the state
//! machine share one RocksDB write-ahead log, that sync also makes every state-machine write
//! issued before it durable.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::thread::JoinHandle;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use rocksdb::{DB, Direction, IteratorMode, WriteBatch, WriteOptions};

use crate::codec::{decode, encode};
use crate::error::Error;
use crate::keys::{self, CF_LOG, CF_META, META_COMMITTED, META_LAST_PURGED, META_VOTE};
use crate::types::{Entry, LogId, TypeConfig, Vote};

/// Callbacks waiting for the sync thread; appends block when it is this far behind.
pub const SYNC_QUEUE_CALLBACKS_MAX: usize = 4096;

/// Counters that show group commit at work.
#[derive(Debug, Default)]
pub struct LogStats {
    pub appends: AtomicU64,
    pub entries: AtomicU64,
    pub syncs: AtomicU64,
}

/// Owns the sync thread: dropping it closes the queue and joins the thread, which completes
/// every queued callback first, so the database is released when the last store handle goes.
#[derive(Debug)]
struct Syncer {
    queue: Option<SyncSender<IOFlushed<TypeConfig>>>,
    thread: Option<JoinHandle<()>>,
}

/// The log store; clones share the database and the sync thread.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<DB>,
    syncer: Arc<Syncer>,
    stats: Arc<LogStats>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<DB>) -> Result<Self, Error> {
        for cf in [CF_LOG, CF_META] {
            if db.cf_handle(cf).is_none() {
                return Err(Error::Missing {
                    what: "column family",
                    key: cf.to_owned(),
                });
            }
        }
        let stats = Arc::new(LogStats::default());
        let (queue, pending) = std::sync::mpsc::sync_channel(SYNC_QUEUE_CALLBACKS_MAX);
        let thread = {
            let db = db.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("raft-log-sync".into())
                .spawn(move || sync_loop(&db, &pending, &stats))
                .map_err(Error::io("raft-log-sync thread"))?
        };
        Ok(Self {
            db,
            syncer: Arc::new(Syncer {
                queue: Some(queue),
                thread: Some(thread),
            }),
            stats,
        })
    }

    pub fn stats(&self) -> &LogStats {
        &self.stats
    }

    fn cf(&self, name: &'static str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are checked when the store opens")
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, Error> {
        let bytes = self
            .db
            .get_pinned_cf(self.cf(CF_META), key)
            .map_err(Error::rocks("read raft metadata"))?;
        bytes.map(|b| decode(what, key, &b)).transpose()
    }

    fn read_entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>, Error> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        let from = keys::log_index(start);
        for item in self.db.iterator_cf(
            self.cf(CF_LOG),
            IteratorMode::From(&from, Direction::Forward),
        ) {
            let (key, value) = item.map_err(Error::rocks("read raft log"))?;
            let index = keys::decode_u64(&key).ok_or_else(|| Error::Missing {
                what: "log index in key",
                key: crate::codec::hex(&key),
            })?;
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = decode("raft log entry", &key, &value)?;
            if entry.index() != index {
                return Err(Error::Missing {
                    what: "log entry matching its key",
                    key: crate::codec::hex(&key),
                });
            }
            out.push(entry);
        }
        Ok(out)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, Error> {
        match self
            .db
            .iterator_cf(self.cf(CF_LOG), IteratorMode::End)
            .next()
        {
            None => Ok(None),
            Some(item) => {
                let (key, value) = item.map_err(Error::rocks("read raft log"))?;
                let entry: Entry = decode("raft log entry", &key, &value)?;
                Ok(Some(entry.log_id()))
            }
        }
    }

    /// Waits until every append issued so far is durable. Used on shutdown and by tests.
    pub fn sync(&self) -> Result<(), Error> {
        self.db
            .flush_wal(true)
            .map_err(Error::rocks("sync write-ahead log"))
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("raft log sync thread panicked");
        }
    }
}

/// Group commit: take every queued callback, sync once, complete them all.
fn sync_loop(db: &DB, pending: &Receiver<IOFlushed<TypeConfig>>, stats: &LogStats) {
    while let Ok(first) = pending.recv() {
        let mut batch = vec![first];
        while let Ok(callback) = pending.try_recv() {
            batch.push(callback);
        }
        let result = db.flush_wal(true);
        stats.syncs.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &result {
            tracing::error!(error = %e, "failed to sync raft log; the node must stop");
        }
        for callback in batch {
            callback.io_completed(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::other(e.to_string())),
            });
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self.read_entries(range)?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.get_meta("vote", META_VOTE)?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> =
            self.get_meta("last purged log id", META_LAST_PURGED)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), META_VOTE, encode(vote));
        self.db
            .write_opt(batch, &options)
            .map_err(Error::rocks("save vote"))?;
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not synced on its own: it rides on the next log sync. A committed index that is lost
        // in a crash is recovered from the cluster, and is never ahead of the durable log.
        let mut batch = WriteBatch::default();
        match committed {
            Some(log_id) => batch.put_cf(self.cf(CF_META), META_COMMITTED, encode(&log_id)),
            None => batch.delete_cf(self.cf(CF_META), META_COMMITTED),
        }
        self.db
            .write(batch)
            .map_err(Error::rocks("save committed"))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get_meta("committed log id", META_COMMITTED)?)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let mut count = 0u64;
        for entry in entries {
            batch.put_cf(
                self.cf(CF_LOG),
                keys::log_index(entry.index()),
                encode(&entry),
            );
            count += 1;
        }
        // Written (readable) now, without waiting for the disk; the sync thread makes it durable.
        self.db
            .write(batch)
            .map_err(Error::rocks("append raft log"))?;
        self.stats.appends.fetch_add(1, Ordering::Relaxed);
        self.stats.entries.fetch_add(count, Ordering::Relaxed);
        self.syncer
            .queue
            .as_ref()
            .expect("the queue is only taken when the syncer drops")
            .send(callback)
            .map_err(|_| io::Error::from(Error::SyncStopped))?;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.cf(CF_LOG),
            keys::log_index(from),
            keys::log_index(u64::MAX),
        );
        batch.delete_cf(self.cf(CF_LOG), keys::log_index(u64::MAX));
        // Not synced: the write-ahead log is ordered, so any later append's sync covers it, and a
        // truncation lost in a crash only brings back entries that were never acknowledged after it.
        self.db
            .write(batch)
            .map_err(Error::rocks("truncate raft log"))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // One batch: the purge mark and the deletion land together or not at all.
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), META_LAST_PURGED, encode(&log_id));
        batch.delete_range_cf(
            self.cf(CF_LOG),
            keys::log_index(0),
            keys::log_index(log_id.index() + 1),
        );
        self.db
            .write(batch)
            .map_err(Error::rocks("purge raft log"))?;
        Ok(())
    }
}
