//! Switchboard's replicated store: the durable Raft log and state machine on one RocksDB
//! instance per node, on top of the pure `domain` crate.
//!
//! Owns: the openraft storage traits ([`LogStore`], [`StateMachine`]), the versioned encodings
//! of log entries and stored records, snapshots, data directory identity, and reads of the
//! applied state ([`Reader`]). Must not hold domain rules (it interprets the effects that
//! `domain::decide` returns), touch the network or decide consistency levels.

pub mod codec;
pub mod error;
pub mod identity;
pub mod keys;
pub mod log_store;
pub mod reader;
pub mod snapshot;
pub mod state_machine;
mod txn;
pub mod types;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use error::Error;
pub use identity::{Claim, Identity, IdentityError};
pub use log_store::LogStore;
pub use reader::{At, Context, Page, ReadError, Reader};
pub use snapshot::SnapshotFile;
pub use state_machine::{Applied, StateMachine};
pub use types::{
    Entry, LogId, Member, NodeId, Proposal, Response, SnapshotMeta, StoredMembership, TypeConfig,
    Vote,
};

/// Sub-directory of the data directory holding RocksDB.
pub const ROCKSDB_DIR: &str = "rocksdb";
/// Sub-directory of the data directory holding snapshot files.
pub const SNAPSHOT_DIR: &str = "snapshots";

/// An opened data directory: the log store and the state machine for one node.
#[derive(Debug)]
pub struct Store {
    pub claim: Claim,
    pub log: LogStore,
    pub state_machine: StateMachine,
}

/// Opens (or, when fresh, claims and creates) the data directory of `identity`.
///
/// The identity is checked before RocksDB is opened, so a directory of another cluster or node,
/// or of an unknown format, is refused without a single byte changed.
pub fn open(dir: &Path, identity: &Identity) -> Result<Store, Error> {
    let claim = identity::claim(dir, identity)?;
    let db = Arc::new(open_rocksdb(&dir.join(ROCKSDB_DIR), claim)?);
    let snapshots = snapshot::SnapshotDir::new(dir.join(SNAPSHOT_DIR))?;
    let log = LogStore::new(db.clone())?;
    let state_machine = StateMachine::open(db, snapshots)?;
    Ok(Store {
        claim,
        log,
        state_machine,
    })
}

fn open_rocksdb(path: &PathBuf, claim: Claim) -> Result<rocksdb::DB, Error> {
    let mut options = rocksdb::Options::default();
    // A directory we already own must already have its database: never silently start empty.
    options.create_if_missing(claim == Claim::Fresh);
    options.create_missing_column_families(claim == Claim::Fresh);
    options.set_max_background_jobs(2);
    options.set_keep_log_file_num(4);
    options.set_max_total_wal_size(256 << 20);
    let families = keys::COLUMN_FAMILIES
        .iter()
        .map(|name| rocksdb::ColumnFamilyDescriptor::new(*name, rocksdb::Options::default()));
    rocksdb::DB::open_cf_descriptors(&options, path, families).map_err(|source| Error::Open {
        path: path.clone(),
        source,
    })
}
