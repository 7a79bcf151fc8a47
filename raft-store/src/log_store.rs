//! The Raft log and vote on RocksDB (openraft's `RaftLogStorage`).
//!
//! Durability contract: an append returns once its entries are readable and fires its callback
//! only after they are fsynced; the vote is fsynced before `save_vote` returns. Appends are
//! coalesced by one sync thread: every callback queued while a sync runs is completed by the
//! next single `fsync` of the write-ahead log (group commit). Because the log and the state
//! machine share one RocksDB write-ahead log, that sync also makes every state-machine write
//! issued before it durable.
//!
//! The Raft marks ([`crate::marks`]) follow: each vote is recorded there before `save_vote`
//! returns; a second thread records the last log id each sync made durable, fsynced, before it
//! fires that sync's callbacks (while the next sync of the write-ahead log already runs); a
//! truncation lowers the record before it deletes anything.

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
use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions};

use crate::codec::{decode, encode};
use crate::error::Error;
use crate::keys::{self, CF_LOG, CF_META, META_COMMITTED, META_LAST_PURGED, META_VOTE};
use crate::marks::Marks;
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
    queue: Option<SyncSender<Flush>>,
    thread: Option<JoinHandle<()>>,
    ack_thread: Option<JoinHandle<()>>,
}

/// Appends whose write-ahead log sync is done, on their way to the marks and acknowledgement.
struct Synced {
    batch: Vec<Flush>,
    /// Why the sync failed (then, and for every later batch).
    failed: Option<String>,
}

/// One append waiting for the sync thread.
struct Flush {
    callback: IOFlushed<TypeConfig>,
    /// The last entry of the append, and the marks epoch it was issued in.
    last: Option<(LogId, u64)>,
}

/// The log store; clones share the database and the sync thread.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<DB>,
    syncer: Arc<Syncer>,
    stats: Arc<LogStats>,
    marks: Marks,
}

impl LogStore {
    pub(crate) fn new(db: Arc<DB>, marks: Marks) -> Result<Self, Error> {
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
        let (synced, to_ack) = std::sync::mpsc::sync_channel(SYNC_QUEUE_CALLBACKS_MAX);
        let thread = {
            let db = db.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("raft-log-sync".into())
                .spawn(move || sync_loop(&db, &pending, &stats, &synced))
                .map_err(Error::io("raft-log-sync thread"))?
        };
        let ack_thread = {
            let marks = marks.clone();
            std::thread::Builder::new()
                .name("raft-log-ack".into())
                .spawn(move || ack_loop(&to_ack, &marks))
                .map_err(Error::io("raft-log-ack thread"))?
        };
        Ok(Self {
            db,
            syncer: Arc::new(Syncer {
                queue: Some(queue),
                thread: Some(thread),
                ack_thread: Some(ack_thread),
            }),
            stats,
            marks,
        })
    }

    pub fn stats(&self) -> &LogStats {
        &self.stats
    }

    pub fn marks(&self) -> &Marks {
        &self.marks
    }

    fn cf(&self, name: &'static str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are checked when the store opens")
    }

    fn get_meta<T: crate::codec::Record>(
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
        // Block checksums are verified on every read of the log (RocksDB's default, stated here
        // because the log's safety depends on it): a flipped bit is an error, never an entry.
        let mut read = ReadOptions::default();
        read.set_verify_checksums(true);
        for item in self.db.iterator_cf_opt(
            self.cf(CF_LOG),
            read,
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
        // The sync thread ends with its queue and closes the ack thread's; join in that order.
        for thread in [self.thread.take(), self.ack_thread.take()]
            .into_iter()
            .flatten()
        {
            if thread.join().is_err() {
                tracing::error!("raft log sync thread panicked");
            }
        }
    }
}

/// Group commit, first stage: take every queued append, sync the write-ahead log once, pass them
/// on. Once a sync has failed, RocksDB's later syncs prove nothing about the writes before it
/// (the kernel may have dropped the dirty pages): every later batch fails too.
fn sync_loop(db: &DB, pending: &Receiver<Flush>, stats: &LogStats, synced: &SyncSender<Synced>) {
    let mut failed: Option<String> = None;
    while let Ok(first) = pending.recv() {
        let mut batch = vec![first];
        while let Ok(flush) = pending.try_recv() {
            batch.push(flush);
        }
        if failed.is_none() {
            stats.syncs.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = db.flush_wal(true) {
                failed = Some(format!("sync of the raft log failed: {e}"));
            }
        }
        let next = Synced {
            batch,
            failed: failed.clone(),
        };
        if synced.send(next).is_err() {
            return;
        }
    }
}

/// Group commit, second stage: record the newest durable log id of every synced batch waiting in
/// the Raft marks (one fdatasync for all of them), then acknowledge them. An append is thus
/// acknowledged only once both the write-ahead log and the marks cover it, while the next
/// write-ahead log sync already runs. A failure fails every callback, then and after: openraft
/// then stops the node rather than acknowledge what is not durable.
fn ack_loop(to_ack: &Receiver<Synced>, marks: &Marks) {
    let mut failed: Option<String> = None;
    while let Ok(first) = to_ack.recv() {
        let mut ready = vec![first];
        while let Ok(synced) = to_ack.try_recv() {
            ready.push(synced);
        }
        if failed.is_none() {
            failed = ready.iter().find_map(|s| s.failed.clone());
        }
        if failed.is_none()
            && let Some((last, epoch)) = ready
                .iter()
                .flat_map(|s| s.batch.iter())
                .rev()
                .find_map(|f| f.last)
            && let Err(e) = marks.record_durable(last, epoch)
        {
            failed = Some(format!("recording the raft marks failed: {e}"));
        }
        if let Some(e) = &failed {
            tracing::error!(error = %e, "the raft log is no longer durable; the node must stop");
        }
        for flush in ready.into_iter().flat_map(|s| s.batch) {
            flush.callback.io_completed(match &failed {
                None => Ok(()),
                Some(e) => Err(io::Error::other(e.clone())),
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
        // After RocksDB: a crash between the two leaves the marks older, still a lower bound.
        self.marks.record_vote(vote)?;
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
        let mut last = None;
        for entry in entries {
            batch.put_cf(
                self.cf(CF_LOG),
                keys::log_index(entry.index()),
                encode(&entry),
            );
            last = Some(entry.log_id());
            count += 1;
        }
        let epoch = self.marks.epoch();
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
            .send(Flush {
                callback,
                last: last.map(|id| (id, epoch)),
            })
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
        // The marks first (durably): they must never claim an entry the log no longer has.
        self.marks.lower_last_log_id(last_log_id)?;
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
