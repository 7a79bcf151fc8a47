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

use crate::domain::{self, Call, Change, Decision, Head, Remembered, Request, Turn, View};
use crate::error::Error;
use crate::keys::{
    self, CF_META, CF_SM, SM_CALL_COUNTS, SM_HEAD, SM_LAST_APPLIED, SM_MEMBERSHIP, table,
};
use crate::limits::{HANDOFF_TURNS_MAX, IDEMPOTENCY_PRUNE_PER_ENTRY_MAX, IDEMPOTENCY_WINDOW_MS};
use crate::reader::Reader;
use crate::snapshot::{Records, SnapshotDir, SnapshotFile};
use crate::txn::Txn;
use crate::types::{Entry, LogId, Response, SnapshotMeta, StoredMembership, TypeConfig};

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

    pub fn snapshot_dir(&self) -> &SnapshotDir {
        &self.snapshots
    }

    pub fn applied(&self) -> &Applied {
        &self.applied
    }

    fn cf(&self, name: &'static str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are checked when the store opens")
    }

    fn interrupted_install(&self) -> Result<Option<std::path::PathBuf>, Error> {
        let marker = self
            .db
            .get_cf(self.cf(CF_META), META_INSTALLING)
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
        self.published.send_replace(self.applied.clone());
        Ok(())
    }

    fn apply_request(
        &mut self,
        txn: &mut Txn<'_>,
        request: &Request,
        index: u64,
    ) -> Result<Response, Error> {
        let remembered: Option<Remembered> = match request.validate_envelope() {
            Ok(()) => txn.get(
                "idempotency record",
                &keys::idempotency(&request.tenant_id, &request.request_id),
            )?,
            Err(_) => None,
        };
        let call_id = request.command.call_id().or(request.stamp.minted_call_id);
        let call: Option<Call> = match &call_id {
            Some(id) => txn.get("call", &keys::call(id))?,
            None => None,
        };
        let recent_turns = match &call {
            Some(call) if request.command.needs_recent_turns() => {
                recent_turns(txn, call, HANDOFF_TURNS_MAX)?
            }
            _ => Vec::new(),
        };
        let view = View {
            call: call.as_ref(),
            recent_turns: &recent_turns,
        };
        let decision = domain::decide(self.head, remembered.as_ref(), view, request, index);
        self.head.clock_ms = self.head.clock_ms.max(request.stamp.at_ms);

        let response = match decision {
            Decision::Replay(outcome) => Response {
                outcome: Some(outcome),
                replayed: true,
                change: None,
            },
            Decision::Refused(outcome) => Response {
                outcome: Some(outcome),
                replayed: false,
                change: None,
            },
            Decision::Rejected { outcome, remember } => {
                remember_outcome(txn, request, &remember);
                Response {
                    outcome: Some(outcome),
                    replayed: false,
                    change: None,
                }
            }
            Decision::Applied {
                change,
                outcome,
                remember,
            } => {
                write_change(txn, call.as_ref(), &change)?;
                remember_outcome(txn, request, &remember);
                self.head = change.head;
                Response {
                    outcome: Some(outcome),
                    replayed: false,
                    change: Some(change),
                }
            }
        };
        prune_idempotency(txn, self.head.clock_ms)?;
        Ok(response)
    }

    /// Applies entries that follow `last_applied` as one `WriteBatch`; answers one response per
    /// entry, in order. Blank and membership entries answer an empty response.
    pub fn apply_batch(&mut self, entries: Vec<Entry>) -> Result<Vec<Response>, Error> {
        let db = self.db.clone();
        let mut txn = Txn::new(&db);
        let mut applied = self.applied.clone();
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            let log_id = entry.log_id();
            if let Some(last) = &applied.log_id {
                // Divergence-class invariant: an entry is never applied twice or out of order.
                // (Strictly increasing rather than +1: openraft's storage suite applies 3 then 5.)
                assert!(
                    log_id.index > last.index,
                    "apply must not repeat or reorder entries"
                );
            }
            let response = match entry.payload {
                EntryPayload::Blank => Response::default(),
                EntryPayload::Normal(request) => {
                    self.apply_request(&mut txn, &request, log_id.index)?
                }
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(log_id), membership);
                    Response::default()
                }
            };
            applied.log_id = Some(log_id);
            responses.push(response);
        }
        if !responses.is_empty() {
            self.commit(txn, &applied)?;
        }
        Ok(responses)
    }

    fn reply(
        &mut self,
        entries: Vec<Entry>,
        responders: &mut Vec<Option<ApplyResponder<TypeConfig>>>,
    ) -> Result<(), Error> {
        let responses = self.apply_batch(entries)?;
        for (responder, response) in responders.drain(..).zip(responses) {
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    fn commit(&mut self, txn: Txn<'_>, applied: &Applied) -> Result<(), Error> {
        let mut txn = txn;
        if let Some(log_id) = &applied.log_id {
            txn.put(SM_LAST_APPLIED.to_vec(), log_id);
        }
        txn.put(SM_MEMBERSHIP.to_vec(), &applied.membership);
        txn.put(SM_HEAD.to_vec(), &self.head);
        self.db
            .write(txn.into_batch())
            .map_err(Error::rocks("write apply batch"))?;
        self.applied = applied.clone();
        self.published.send_replace(self.applied.clone());
        Ok(())
    }

    /// Replaces the whole state with a verified snapshot file, resumably.
    fn install_from(&mut self, path: &Path) -> Result<(), Error> {
        let mut marked = WriteOptions::default();
        marked.set_sync(true);
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(CF_META),
            META_INSTALLING,
            path.to_string_lossy().as_bytes(),
        );
        self.db
            .write_opt(batch, &marked)
            .map_err(Error::rocks("mark snapshot install"))?;
        self.load_snapshot_records(path)?;
        self.reload()
    }

    /// Clears the state machine and loads every record of `path`, then clears the install
    /// marker, all durably. Safe to repeat after a crash at any point.
    fn load_snapshot_records(&mut self, path: &Path) -> Result<(), Error> {
        crate::snapshot::verify(path)?;
        let (_, mut records) = Records::open(path)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_SM), [0u8], [u8::MAX]);
        let mut batch_bytes = 0usize;
        while let Some((key, value)) = records.next_record()? {
            batch_bytes += key.len() + value.len();
            batch.put_cf(self.cf(CF_SM), key, value);
            if batch_bytes >= INSTALL_BATCH_BYTES_MAX {
                self.db
                    .write(std::mem::take(&mut batch))
                    .map_err(Error::rocks("install snapshot records"))?;
                batch_bytes = 0;
            }
        }
        batch.delete_cf(self.cf(CF_META), META_INSTALLING);
        let mut synced = WriteOptions::default();
        synced.set_sync(true);
        self.db
            .write_opt(batch, &synced)
            .map_err(Error::rocks("finish snapshot install"))?;
        Ok(())
    }
}

/// The call's last `max` turns, oldest first, by point reads (turn indexes are gap-free).
fn recent_turns(txn: &Txn<'_>, call: &Call, max: usize) -> Result<Vec<Turn>, Error> {
    let first = call.turn_count.saturating_sub(max as u64) + 1;
    let mut turns = Vec::with_capacity(max.min(call.turn_count as usize));
    for index in first..=call.turn_count {
        let key = keys::turn(&call.call_id, index);
        let turn = txn.get("turn", &key)?.ok_or_else(|| Error::Missing {
            what: "turn",
            key: crate::codec::hex(&key),
        })?;
        turns.push(turn);
    }
    Ok(turns)
}

/// Calls per state, indexed by `CallState::code() - 1`.
pub type CallCounts = [u64; 4];

fn count_slot(state: domain::CallState) -> usize {
    usize::from(state.code() - 1)
}

fn write_change(txn: &mut Txn<'_>, before: Option<&Call>, change: &Change) -> Result<(), Error> {
    let call = &change.call;
    if before.map(Call::state) != Some(call.state()) {
        let mut counts: CallCounts = txn.get("call counts", SM_CALL_COUNTS)?.unwrap_or_default();
        if let Some(before) = before {
            counts[count_slot(before.state())] -= 1;
        }
        counts[count_slot(call.state())] += 1;
        txn.put(SM_CALL_COUNTS.to_vec(), &counts);
    }
    match before {
        None => txn.put_raw(
            keys::tenant_call(&call.tenant_id, &call.call_id),
            Vec::new(),
        ),
        Some(before) if before.state() != call.state() => {
            txn.delete(keys::tenant_state_call(
                &before.tenant_id,
                before.state(),
                &before.call_id,
            ));
        }
        Some(_) => {}
    }
    txn.put_raw(
        keys::tenant_state_call(&call.tenant_id, call.state(), &call.call_id),
        Vec::new(),
    );
    txn.put(keys::call(&call.call_id), call);
    if let Some(turn) = &change.turn {
        txn.put(keys::turn(&call.call_id, turn.index), turn);
    }
    for event in &change.events {
        txn.put(keys::event(event.position), event);
        txn.put_raw(
            keys::call_event(&event.call_id, event.sequence_number),
            event.position.to_be_bytes().to_vec(),
        );
    }
    Ok(())
}

fn remember_outcome(txn: &mut Txn<'_>, request: &Request, remember: &Remembered) {
    txn.put(
        keys::idempotency(&request.tenant_id, &request.request_id),
        remember,
    );
    txn.put_raw(
        keys::idempotency_expiry(remember.at_ms, &request.tenant_id, &request.request_id),
        Vec::new(),
    );
}

/// Deletes up to `IDEMPOTENCY_PRUNE_PER_ENTRY_MAX` expired records, oldest first. Runs after
/// every request entry, so the work per entry is bounded and the result is the same on every
/// replica however the log was split into apply batches.
fn prune_idempotency(txn: &mut Txn<'_>, clock_ms: u64) -> Result<(), Error> {
    let Some(cutoff_ms) = clock_ms.checked_sub(IDEMPOTENCY_WINDOW_MS) else {
        return Ok(());
    };
    let start = [table::IDEMPOTENCY_EXPIRY];
    let mut end = vec![table::IDEMPOTENCY_EXPIRY];
    end.extend_from_slice(&cutoff_ms.to_be_bytes());
    for expiry_key in txn.scan_keys(&start, &end, IDEMPOTENCY_PRUNE_PER_ENTRY_MAX)? {
        let Some((at_ms, record_key)) = keys::split_idempotency_expiry(&expiry_key) else {
            return Err(Error::Missing {
                what: "idempotency expiry key",
                key: crate::codec::hex(&expiry_key),
            });
        };
        // The same request id may have been reused after expiring: keep the newer record.
        let record: Option<Remembered> = txn.get("idempotency record", record_key)?;
        if record.is_some_and(|r| r.at_ms == at_ms) {
            txn.delete(record_key.to_vec());
        }
        txn.delete(expiry_key);
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
        let found = crate::snapshot::verify(&snapshot.path)?;
        if found.last_log_id != meta.last_log_id || found.last_membership != meta.last_membership {
            return Err(Error::BadSnapshot {
                path: snapshot.path.clone(),
                reason: format!(
                    "file holds {:?} but the leader sent {:?}",
                    found.last_log_id, meta.last_log_id
                ),
            }
            .into());
        }
        let path = self.snapshots.adopt(&snapshot.path, meta)?;
        self.install_from(&path)?;
        self.snapshots.retire_older_than(&path)?;
        tracing::info!(last_log_id = ?meta.last_log_id, "installed snapshot");
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
