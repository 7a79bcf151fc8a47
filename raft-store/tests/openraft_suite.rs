//! openraft's own storage test suite, run against the RocksDB log store and state machine.

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use raft_store::{LogStore, StateMachine, TypeConfig};
use tempfile::TempDir;

mod support;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir =
            tempfile::tempdir().map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let store = raft_store::open(dir.path(), &support::identity(0))
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        Ok((dir, store.log, store.state_machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_store_passes_the_openraft_storage_suite() {
    Suite::test_all(RocksBuilder)
        .await
        .expect("openraft storage suite");
}
