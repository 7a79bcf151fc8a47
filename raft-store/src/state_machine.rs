//! The replicated state machine on RocksDB (openraft's `RaftStateMachine`).
//!
//! Applies committed entries through the pure domain core and writes each apply batch as one
//! `WriteBatch` holding the domain records, `last_applied`, membership and the cluster head.
//! Storage errors are returned to openraft, which stops the node: an entry is never skipped.

use std::io;
use std::path::Path;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{ApplyResponder, EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use rocksdb::{DB, WriteBatch, WriteOptions};
use tokio::sync::watch;

use crate::codec::encode;
use crate::erasure::{self, Eraser, META_ERASE_APPLIED};
use crate::error::Error;
use crate::keys::{
    self, CF_META, CF_SM, SM_CALL_COUNTS, SM_HEAD, SM_LAST_APPLIED, SM_MEMBERSHIP, table,
};
use crate::reader::Reader;
use crate::snapshot::{Records, SnapshotDir, SnapshotFile};
use crate::txn::Txn;
use crate::types::{Entry, LogId, Response, SnapshotMeta, StoredMembership, TypeConfig};
use domain::{
    ActivityChange, Call, CallId, Change, Decision, Erasure, Event, Head, Remembered, Request,
    RequestKey, Retention, StateReader, Step, Turn,
};

use crate::indexes;
use crate::keys::Dim;

/// Entries applied per `WriteBatch`; a longer apply stream is written in several batches.
pub const APPLY_BATCH_ENTRIES_MAX: usize = 1024;
/// Bytes of snapshot records per `WriteBatch` while installing.
pub const INSTALL_BATCH_BYTES_MAX: usize = 4 << 20;
/// Marks an interrupted snapshot install in `CF_META`; its value is the snapshot's path.
const META_INSTALLING: &[u8] = b"sm_installing";

/// What has been applied; published after every apply batch and snapshot install.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Applied {
    pub log_id: Option<LogId>,
    pub membership: StoredMembership,
}

impl Applied {
    pub fn index(&self) -> u64 {
        self.log_id.as_ref().map_or(0, |id| id.index)
    }
}

#[derive(Debug)]
pub struct StateMachine {
    db: Arc<DB>,
    snapshots: SnapshotDir,
    applied: Applied,
    head: Head,
    published: watch::Sender<Applied>,
    /// The highest index of an applied erase or installed snapshot (`erasure`).
    erase_applied: watch::Sender<u64>,
}

impl StateMachine {
    pub(crate) fn open(db: Arc<DB>, snapshots: SnapshotDir) -> Result<Self, Error> {
        if db.cf_handle(CF_SM).is_none() {
            return Err(Error::Missing {
                what: "column family",
                key: CF_SM.to_owned(),
            });
        }
        let mut sm = Self {
            db,
            snapshots,
            applied: Applied::default(),
            head: Head::new(),
            published: watch::Sender::new(Applied::default()),
            erase_applied: watch::Sender::new(0),
        };
        if let Some(path) = sm.interrupted_install()? {
            tracing::warn!(snapshot = %path.display(), "resuming an interrupted snapshot install");
            sm.load_snapshot_records(&path)?;
        }
        sm.reload()?;
        // The snapshot is built only after the write-ahead log is synced, so the state machine is
        // never behind its latest snapshot; if it is, the store was damaged: restore from it.
        if let Some(path) = sm.snapshots.latest()? {
            let (meta, _) = Records::open(&path)?;
            if meta.last_log_id > sm.applied.log_id {
                tracing::warn!(snapshot = %path.display(), "state machine is behind its snapshot; restoring it");
                sm.install_from(&path)?;
            }
        }
        Ok(sm)
    }

    /// A cheap handle for reads from any task.
    pub fn reader(&self) -> Reader {
        Reader::new(self.db.clone(), self.published.subscribe())
    }

    /// A handle for the node's erasure task.
    pub fn eraser(&self) -> Eraser {
        Eraser::new(
            self.db.clone(),
            self.snapshots.clone(),
            self.erase_applied.subscribe(),
        )
    }

    pub fn snapshot_dir(&self) -> &SnapshotDir {
        &self.snapshots
    }

    /// Compares the derived tables with the stored events (`indexes::verify`): the differences,
    /// at most `max`. Blocking; for tests and tools.
    pub fn verify_indexes(&self, max: usize) -> Result<Vec<String>, Error> {
        indexes::verify(&self.db, max)
    }

    pub fn applied(&self) -> &Applied {
        &self.applied
    }

    fn interrupted_install(&self) -> Result<Option<std::path::PathBuf>, Error> {
        let marker = self
            .db
            .get_cf(cf(&self.db, CF_META), META_INSTALLING)
            .map_err(Error::rocks("read install marker"))?;
        Ok(marker
            .map(|bytes| std::path::PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())))
    }

    /// Loads `applied` and `head` from RocksDB and publishes them.
    fn reload(&mut self) -> Result<(), Error> {
        let txn = Txn::new(&self.db);
        self.applied = Applied {
            log_id: txn.get("last applied log id", SM_LAST_APPLIED)?,
            membership: txn.get("membership", SM_MEMBERSHIP)?.unwrap_or_default(),
        };
        self.head = txn.get("head", SM_HEAD)?.unwrap_or_else(Head::new);
        // Derived tables from an older release (or an older leader's snapshot) are rebuilt
        // before anything reads them.
        indexes::ensure(&self.db)?;
        self.published.send_replace(self.applied.clone());
        let erased = erasure::read_index(&self.db, META_ERASE_APPLIED)?;
        self.erase_applied.send_replace(erased.unwrap_or(0));
        Ok(())
    }

    /// Decides one request through the domain and writes the step into the batch's overlay.
    fn apply_request(
        &mut self,
        txn: &mut Txn<'_>,
        request: &Request,
        index: u64,
    ) -> Result<Response, Error> {
        let step = domain::decide(
            &Overlay {
                txn,
                head: self.head,
            },
            request,
            index,
        )?;
        write_step(txn, request, &step)?;
        self.head = step.head;
        let replayed = matches!(step.decision, Decision::Replay(_));
        let (outcome, change) = match step.decision {
            Decision::Replay(outcome) | Decision::Refused(outcome) => (outcome, None),
            Decision::Rejected { outcome, .. } => (outcome, None),
            Decision::Applied {
                outcome, change, ..
            } => (outcome, Some(change)),
            Decision::Recorded { outcome, .. } => (outcome, None),
        };
        Ok(Response {
            outcome: Some(outcome),
            replayed,
            change,
        })
    }

    /// Applies entries that follow `last_applied` as one `WriteBatch`; answers one response per
    /// entry, in order. Blank and membership entries answer an empty response.
    pub fn apply_batch(&mut self, entries: Vec<Entry>) -> Result<Vec<Response>, Error> {
        let db = self.db.clone();
        let mut txn = Txn::new(&db);
        let mut applied = self.applied.clone();
        let mut responses = Vec::with_capacity(entries.len());
        let mut erased_at = None;
        for entry in entries {
            let log_id = entry.log_id();
            // Divergence-class invariant: every entry is applied once, in order, none skipped.
            // (The log starts at index 0: openraft's initial membership entry.)
            let expected = applied.log_id.as_ref().map_or(0, |last| last.index + 1);
            assert_eq!(
                log_id.index, expected,
                "the applied index moves by exactly one per entry"
            );
            let response = match entry.payload {
                EntryPayload::Blank => Response::default(),
                EntryPayload::Normal(proposal) => {
                    self.apply_request(&mut txn, &proposal.0, log_id.index)?
                }
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(log_id), membership);
                    Response::default()
                }
            };
            if response.change.as_ref().is_some_and(|c| c.erase.is_some()) {
                erased_at = Some(log_id.index);
            }
            applied.log_id = Some(log_id);
            responses.push(response);
        }
        if !responses.is_empty() {
            self.commit(txn, &applied, erased_at)?;
        }
        Ok(responses)
    }

    fn reply(
        &mut self,
        entries: Vec<Entry>,
        responders: &mut Vec<Option<ApplyResponder<TypeConfig>>>,
    ) -> Result<(), Error> {
        // An erase rewrites up to `CALL_EVENTS_MAX + 1` events and `CALL_TURNS_MAX` turns in one
        // entry (about 2 s for 100,000 events of 1 KiB in a debug build): tell a multi-threaded
        // runtime so that it moves its other tasks (openraft's core, heartbeats) off this thread.
        let erases = entries.iter().any(|entry| {
            matches!(&entry.payload, EntryPayload::Normal(p) if matches!(p.0.command, domain::Command::EraseCall { .. }))
        });
        let multi_thread = tokio::runtime::Handle::try_current().is_ok_and(|handle| {
            handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        });
        let responses = if erases && multi_thread {
            tokio::task::block_in_place(|| self.apply_batch(entries))?
        } else {
            self.apply_batch(entries)?
        };
        for (responder, response) in responders.drain(..).zip(responses) {
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    /// Writes the batch; `erased_at` is the index of its last erase, recorded node-locally (in
    /// the same write) for the erasure task.
    fn commit(
        &mut self,
        txn: Txn<'_>,
        applied: &Applied,
        erased_at: Option<u64>,
    ) -> Result<(), Error> {
        let mut txn = txn;
        if let Some(log_id) = &applied.log_id {
            txn.put(SM_LAST_APPLIED.to_vec(), log_id);
        }
        txn.put(SM_MEMBERSHIP.to_vec(), &applied.membership);
        txn.put(SM_HEAD.to_vec(), &self.head);
        let mut batch = txn.into_batch();
        if let Some(index) = erased_at {
            batch.put_cf(cf(&self.db, CF_META), META_ERASE_APPLIED, encode(&index));
        }
        self.db
            .write(batch)
            .map_err(Error::rocks("write apply batch"))?;
        self.applied = applied.clone();
        self.published.send_replace(self.applied.clone());
        if let Some(index) = erased_at {
            self.erase_applied.send_replace(index);
        }
        Ok(())
    }

    /// Replaces the whole state with a verified snapshot file, resumably. Blocking: call it
    /// at open, or from a blocking task.
    fn install_from(&mut self, path: &Path) -> Result<(), Error> {
        install_records(&self.db, path)?;
        self.reload()
    }

    /// Finishes an install that a crash interrupted. Blocking, like `install_from`.
    fn load_snapshot_records(&mut self, path: &Path) -> Result<(), Error> {
        load_records(&self.db, path)
    }
}

fn cf<'db>(db: &'db DB, name: &'static str) -> &'db rocksdb::ColumnFamily {
    db.cf_handle(name)
        .expect("column families are checked when the store opens")
}

/// Marks the install (synced), then loads the records of `path`.
fn install_records(db: &DB, path: &Path) -> Result<(), Error> {
    let mut marked = WriteOptions::default();
    marked.set_sync(true);
    let mut batch = WriteBatch::default();
    batch.put_cf(
        cf(db, CF_META),
        META_INSTALLING,
        path.to_string_lossy().as_bytes(),
    );
    db.write_opt(batch, &marked)
        .map_err(Error::rocks("mark snapshot install"))?;
    load_records(db, path)
}

/// Clears the state machine and loads every record of `path`, then clears the install marker,
/// all durably. Safe to repeat after a crash at any point.
fn load_records(db: &DB, path: &Path) -> Result<(), Error> {
    crate::snapshot::verify(path)?;
    let (meta, mut records) = Records::open(path)?;
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(cf(db, CF_SM), [0u8], [u8::MAX]);
    let mut batch_bytes = 0usize;
    while let Some((key, value)) = records.next_record()? {
        batch_bytes += key.len() + value.len();
        batch.put_cf(cf(db, CF_SM), key, value);
        if batch_bytes >= INSTALL_BATCH_BYTES_MAX {
            db.write(std::mem::take(&mut batch))
                .map_err(Error::rocks("install snapshot records"))?;
            batch_bytes = 0;
        }
    }
    batch.delete_cf(cf(db, CF_META), META_INSTALLING);
    // The install replaced everything this node held, so what it held (erased content
    // included) is to be removed from its disk: the erasure task runs a pass for it.
    let installed_at = meta.last_log_id.as_ref().map_or(0, |id| id.index);
    batch.put_cf(cf(db, CF_META), META_ERASE_APPLIED, encode(&installed_at));
    let mut synced = WriteOptions::default();
    synced.set_sync(true);
    db.write_opt(batch, &synced)
        .map_err(Error::rocks("finish snapshot install"))?;
    Ok(())
}

/// The domain's view of the state during an apply batch: the overlay merged with RocksDB.
struct Overlay<'a, 'db> {
    txn: &'a Txn<'db>,
    head: Head,
}

impl StateReader for Overlay<'_, '_> {
    type Error = Error;

    fn head(&self) -> Head {
        self.head
    }

    fn call(&self, call_id: &CallId) -> Result<Option<Call>, Error> {
        self.txn.get("call", &keys::call(call_id))
    }

    fn turn(&self, call_id: &CallId, index: u64) -> Result<Turn, Error> {
        let key = keys::turn(call_id, index);
        self.txn.get("turn", &key)?.ok_or_else(|| Error::Missing {
            what: "turn",
            key: crate::codec::hex(&key),
        })
    }

    fn remembered(&self, tenant_id: &str, request_id: &str) -> Result<Option<Remembered>, Error> {
        self.txn.get(
            "idempotency record",
            &keys::idempotency(tenant_id, request_id),
        )
    }

    fn retention(&self, tenant_id: &str) -> Result<Option<Retention>, Error> {
        self.txn.get("retention", &keys::retention(tenant_id))
    }

    fn activity_held(&self, tenant_id: &str) -> Result<u64, Error> {
        Ok(self
            .txn
            .get("counter", &keys::counter(tenant_id, "", Dim::Activity, b""))?
            .unwrap_or(0))
    }

    fn oldest_activity(&self, tenant_id: &str, limit: usize) -> Result<Vec<Event>, Error> {
        let prefix = keys::index_prefix(tenant_id, Dim::Activity, b"");
        let end = keys::prefix_end(&prefix).expect("an index prefix has an end");
        self.txn
            .scan_keys(&prefix, &end, limit)?
            .into_iter()
            .map(|row| {
                let key = keys::trailing_position(&row).map(keys::event);
                let event = match &key {
                    Some(key) => self.txn.get::<Event>("event", key)?,
                    None => None,
                };
                event.ok_or_else(|| Error::Missing {
                    what: "activity record of an index row",
                    key: crate::codec::hex(&row),
                })
            })
            .collect()
    }

    fn remembered_before(&self, before_ms: u64, limit: usize) -> Result<Vec<RequestKey>, Error> {
        let start = [table::IDEMPOTENCY_EXPIRY];
        let mut end = vec![table::IDEMPOTENCY_EXPIRY];
        end.extend_from_slice(&before_ms.to_be_bytes());
        self.txn
            .scan_keys(&start, &end, limit)?
            .into_iter()
            .map(|key| match keys::split_idempotency_expiry(&key) {
                Some((at_ms, tenant_id, request_id)) => Ok(RequestKey {
                    at_ms,
                    tenant_id,
                    request_id,
                }),
                None => Err(Error::Missing {
                    what: "idempotency expiry key",
                    key: crate::codec::hex(&key),
                }),
            })
            .collect()
    }
}

/// Calls per state, indexed by `keys::state_code(state) - 1`.
pub type CallCounts = [u64; 4];

fn count_slot(state: domain::CallState) -> usize {
    usize::from(keys::state_code(state) - 1)
}

/// Writes what a step says: expired idempotency records first, then the change and the
/// remembered outcome. Interprets; decides nothing.
fn write_step(txn: &mut Txn<'_>, request: &Request, step: &Step) -> Result<(), Error> {
    for expired in &step.expired {
        let key = &expired.key;
        if expired.drop_record {
            txn.delete(keys::idempotency(&key.tenant_id, &key.request_id));
        }
        txn.delete(keys::idempotency_expiry(
            key.at_ms,
            &key.tenant_id,
            &key.request_id,
        ));
    }
    let remember = match &step.decision {
        Decision::Replay(_) | Decision::Refused(_) => return Ok(()),
        Decision::Rejected { remember, .. } => remember,
        Decision::Applied {
            change, remember, ..
        } => {
            write_change(txn, change)?;
            remember
        }
        Decision::Recorded {
            change, remember, ..
        } => {
            write_activity(txn, change)?;
            remember
        }
    };
    txn.put(
        keys::idempotency(&request.tenant_id, &request.request_id),
        remember,
    );
    txn.put_raw(
        keys::idempotency_expiry(remember.at_ms, &request.tenant_id, &request.request_id),
        Vec::new(),
    );
    Ok(())
}

fn write_change(txn: &mut Txn<'_>, change: &Change) -> Result<(), Error> {
    let call = &change.call;
    let before = change.previous_state;
    if before != Some(call.state()) {
        let mut counts: CallCounts = txn.get("call counts", SM_CALL_COUNTS)?.unwrap_or_default();
        if let Some(before) = before {
            let slot = &mut counts[count_slot(before)];
            // A call leaving a state was counted in it: a count below zero is a damaged store.
            *slot = slot.checked_sub(1).ok_or_else(|| Error::Missing {
                what: "call count of the state a call leaves",
                key: crate::codec::hex(SM_CALL_COUNTS),
            })?;
        }
        counts[count_slot(call.state())] += 1;
        txn.put(SM_CALL_COUNTS.to_vec(), &counts);
    }
    match before {
        None => txn.put_raw(
            keys::tenant_call(&call.tenant_id, &call.call_id),
            Vec::new(),
        ),
        Some(before) if before != call.state() => {
            txn.delete(keys::tenant_state_call(
                &call.tenant_id,
                before,
                &call.call_id,
            ));
        }
        Some(_) => {}
    }
    txn.put_raw(
        keys::tenant_state_call(&call.tenant_id, call.state(), &call.call_id),
        Vec::new(),
    );
    txn.put(keys::call(&call.call_id), call);
    if let Some(erasure) = &change.erase {
        erase_content(txn, &call.call_id, erasure)?;
    }
    if let Some(turn) = &change.turn {
        txn.put(keys::turn(&call.call_id, turn.index), turn);
    }
    for event in &change.events {
        txn.put(keys::event(event.position), event);
        txn.put_raw(
            keys::call_event(&call.call_id, event.sequence_number),
            event.position.to_be_bytes().to_vec(),
        );
        indexes::add(txn, event)?;
    }
    Ok(())
}

/// Writes an activity change: the retention it sets, the records it removes (with their
/// index rows and counts), then the records it appends.
fn write_activity(txn: &mut Txn<'_>, change: &ActivityChange) -> Result<(), Error> {
    if let Some(retention) = &change.retention {
        txn.put(keys::retention(&change.tenant_id), retention);
    }
    for event in &change.compacted {
        txn.delete(keys::event(event.position));
        indexes::remove(txn, event)?;
    }
    for event in &change.events {
        txn.put(keys::event(event.position), event);
        indexes::add(txn, event)?;
    }
    Ok(())
}

/// Replaces an erased call's turns and earlier events with their tombstones, where they are
/// stored: the turn table and the cluster-wide event log (which the per-call event index points
/// into). At most `CALL_TURNS_MAX` turns and `CALL_EVENTS_MAX + 1` events per erase.
fn erase_content(txn: &mut Txn<'_>, call_id: &CallId, erasure: &Erasure) -> Result<(), Error> {
    for index in 1..=erasure.turns {
        let key = keys::turn(call_id, index);
        let turn: Turn = txn.get("turn", &key)?.ok_or_else(|| Error::Missing {
            what: "turn of an erased call",
            key: crate::codec::hex(&key),
        })?;
        txn.put(key, &turn.erased());
    }
    for sequence_number in 1..=erasure.events {
        let index_key = keys::call_event(call_id, sequence_number);
        let position = txn
            .get_raw(&index_key)?
            .and_then(|bytes| keys::decode_u64(&bytes))
            .ok_or_else(|| Error::Missing {
                what: "event index entry of an erased call",
                key: crate::codec::hex(&index_key),
            })?;
        let key = keys::event(position);
        let event: Event = txn.get("event", &key)?.ok_or_else(|| Error::Missing {
            what: "event of an erased call",
            key: crate::codec::hex(&key),
        })?;
        txn.put(key, &event.erased());
    }
    Ok(())
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.applied.log_id, self.applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            batch.push(entry);
            responders.push(responder);
            if batch.len() >= APPLY_BATCH_ENTRIES_MAX {
                self.reply(std::mem::take(&mut batch), &mut responders)?;
            }
        }
        if !batch.is_empty() {
            self.reply(batch, &mut responders)?;
        }
        Ok(())
    }

    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<Self::SnapshotBuilder> {
        Some(self.get_snapshot_builder().await)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        // Verifying reads the whole file and installing writes the whole state: both run on a
        // blocking thread, never on the runtime that also serves Raft and clients.
        let db = self.db.clone();
        let snapshots = self.snapshots.clone();
        let meta = meta.clone();
        let SnapshotFile { path, file } = snapshot;
        drop(file);
        let installed = tokio::task::spawn_blocking(move || -> Result<SnapshotMeta, Error> {
            let found = crate::snapshot::verify(&path)?;
            if found.last_log_id != meta.last_log_id
                || found.last_membership != meta.last_membership
            {
                return Err(Error::BadSnapshot {
                    path,
                    reason: format!(
                        "file holds {:?} but the leader sent {:?}",
                        found.last_log_id, meta.last_log_id
                    ),
                });
            }
            let path = snapshots.adopt(&path, &meta)?;
            install_records(&db, &path)?;
            snapshots.retire_older_than(&path)?;
            Ok(meta)
        })
        .await
        .map_err(io::Error::other)??;
        self.reload()?;
        tracing::info!(last_log_id = ?installed.last_log_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>>, io::Error> {
        Ok(self
            .snapshots
            .open_latest()?
            .map(|(meta, snapshot)| openraft::storage::Snapshot { meta, snapshot }))
    }
}

/// Builds snapshots off the apply path, from a RocksDB point-in-time view.
#[derive(Debug)]
pub struct SnapshotBuilder {
    db: Arc<DB>,
    snapshots: SnapshotDir,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(
        &mut self,
    ) -> Result<openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>, io::Error> {
        let db = self.db.clone();
        let snapshots = self.snapshots.clone();
        let built = tokio::task::spawn_blocking(move || -> Result<_, Error> {
            // Make the state that the snapshot captures durable before the snapshot lets Raft
            // purge the log behind it.
            db.flush_wal(true)
                .map_err(Error::rocks("sync before snapshot"))?;
            let (meta, path) = snapshots.build(&db)?;
            snapshots.retire_older_than(&path)?;
            Ok((meta, path))
        })
        .await
        .map_err(io::Error::other)??;
        let (meta, path) = built;
        tracing::info!(last_log_id = ?meta.last_log_id, snapshot = %path.display(), "built snapshot");
        Ok(openraft::storage::Snapshot {
            meta,
            snapshot: SnapshotFile::open(path)?,
        })
    }
}
