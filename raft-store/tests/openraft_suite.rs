//! openraft's own storage test suite, run against the RocksDB log store and state machine.
//!
//! The suite applies entries with index gaps (3, then 5) that a running Raft never produces,
//! while the state machine asserts that the applied index moves by exactly one per entry. The
//! suite's state machine is therefore [`Contiguous`]: it fills each gap with blank entries of
//! the next entry's leader before passing the entries on, so the assert keeps its full strength.

use std::io;

use futures::{Stream, StreamExt};
use openraft::OptionalSend;
use openraft::StorageError;
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use raft_store::{
    Entry, LogId, LogStore, SnapshotMeta, StateMachine, StoredMembership, TypeConfig,
};
use tempfile::TempDir;

mod support;

/// The store's state machine, fed contiguous entries.
struct Contiguous(StateMachine);

impl RaftStateMachine<TypeConfig> for Contiguous {
    type SnapshotData = <StateMachine as RaftStateMachine<TypeConfig>>::SnapshotData;
    type SnapshotBuilder = <StateMachine as RaftStateMachine<TypeConfig>>::SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        self.0.applied_state().await
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut next = self.0.applied().log_id.map_or(0, |id| id.index + 1);
        let mut filled: Vec<Result<EntryResponder<TypeConfig>, io::Error>> = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let log_id = entry.log_id();
            while next < log_id.index {
                let gap = LogId::new(log_id.leader_id, next);
                filled.push(Ok((Entry::new_blank(gap), None)));
                next += 1;
            }
            next = log_id.index + 1;
            filled.push(Ok((entry, responder)));
        }
        self.0.apply(futures::stream::iter(filled)).await
    }

    async fn try_create_snapshot_builder(&mut self, force: bool) -> Option<Self::SnapshotBuilder> {
        self.0.try_create_snapshot_builder(force).await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.0.get_snapshot_builder().await
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        self.0.install_snapshot(meta, snapshot).await
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<openraft::alias::SnapshotOf<TypeConfig, Self::SnapshotData>>, io::Error>
    {
        self.0.get_current_snapshot().await
    }
}

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, Contiguous, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, Contiguous), StorageError<TypeConfig>> {
        let dir =
            tempfile::tempdir().map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let store = raft_store::open(dir.path(), &support::identity(0))
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        Ok((dir, store.log, Contiguous(store.state_machine)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_store_passes_the_openraft_storage_suite() {
    Suite::test_all(RocksBuilder)
        .await
        .expect("openraft storage suite");
}
