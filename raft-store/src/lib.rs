//! Switchboard's replicated store: the durable Raft log and state machine on one RocksDB
//! instance per node, on top of the pure `domain` crate.
//!
//! Owns: the openraft storage traits ([`LogStore`], [`StateMachine`]), the versioned encodings
//! of log entries and stored records, snapshots, data directory identity, and reads of the
//! applied state ([`Reader`]). Must not hold domain rules (it interprets the effects that
//! `domain::decide` returns), touch the network or decide consistency levels.

pub mod codec;
pub mod erasure;
pub mod error;
pub mod identity;
pub mod indexes;
pub mod inspect;
pub mod keys;
pub mod log_store;
pub mod marks;
pub mod query;
pub mod reader;
pub mod snapshot;
pub mod state_machine;
mod txn;
pub mod types;
mod wal_scan;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use erasure::{DiskPass, Eraser};
pub use error::Error;
pub use identity::{Claim, Identity, IdentityError};
pub use log_store::LogStore;
pub use query::{AgentStats, EventQuery, EventStats, QueryPage, Total};
pub use reader::{At, Context, EVENTS_SCANNED_MAX, EventScan, Page, ReadError, Reader};
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
/// or of an unknown format, is refused without a single byte changed. An existing directory is
/// then inspected read-only ([`inspect`]) and refused as [`Error::Damaged`] when it lost or
/// garbled anything it acknowledged, before any data file is written.
pub fn open(dir: &Path, identity: &Identity) -> Result<Store, Error> {
    let claim = identity::claim(dir, identity)?;
    let rocks = dir.join(ROCKSDB_DIR);
    let marks = match claim {
        Claim::Fresh | Claim::Rejoining => marks::Marks::create(dir)?,
        Claim::Existing => {
            let found = inspect::inspect(dir, &rocks, &rocksdb_options(claim))?;
            let (marks, recorded) = marks::Marks::open(dir)?;
            found.check_against(dir, &recorded)?;
            marks
        }
        Claim::Upgrade => {
            let found = inspect::inspect(dir, &rocks, &rocksdb_options(claim))?;
            let marks = marks::Marks::create_with(dir, found.as_marks())?;
            identity::write(dir, identity)?;
            tracing::info!(
                dir = %dir.display(),
                from = identity::UPGRADABLE_FORMAT_VERSION,
                to = identity::FORMAT_VERSION,
                "data directory upgraded: Raft marks recorded"
            );
            marks
        }
    };
    let db = Arc::new(open_rocksdb(&rocks, claim)?);
    if claim == Claim::Rejoining {
        // The store exists now: a restart before the leader catches it up is an ordinary one.
        identity::write(dir, identity)?;
    }
    let snapshots = snapshot::SnapshotDir::new(dir.join(SNAPSHOT_DIR))?;
    let log = LogStore::new(db.clone(), marks)?;
    let state_machine = StateMachine::open(db, snapshots)?;
    Ok(Store {
        claim,
        log,
        state_machine,
    })
}

/// RocksDB options of every open, read-only or not.
fn rocksdb_options(claim: Claim) -> rocksdb::Options {
    let mut options = rocksdb::Options::default();
    // A directory we already own must already have its database: never silently start empty.
    options.create_if_missing(claim.creates());
    options.create_missing_column_families(claim.creates());
    // Only an incomplete record at the end of the write-ahead log may be dropped at recovery: it
    // is a write torn by a crash, and never acknowledged (acknowledgement waits for the fsync).
    // A checksum mismatch anywhere fails the open. (The default, point-in-time recovery, stops
    // replay at the first bad record and carries on without everything after it.) A log cut
    // short looks like a torn tail: the Raft marks catch that (`inspect`).
    options.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);
    options.set_paranoid_checks(true);
    options.set_max_background_jobs(2);
    options.set_keep_log_file_num(4);
    options.set_max_total_wal_size(256 << 20);
    // Erasure relies on these (RocksDB's defaults, stated so nobody changes them unawares): a
    // write-ahead log file whose column families were all flushed is deleted, never archived
    // or recycled with old records inside (see `erasure`).
    options.set_wal_ttl_seconds(0);
    options.set_wal_size_limit_mb(0);
    options.set_recycle_log_file_num(0);
    options
}

fn open_rocksdb(path: &PathBuf, claim: Claim) -> Result<rocksdb::DB, Error> {
    let options = rocksdb_options(claim);
    let families = keys::COLUMN_FAMILIES
        .iter()
        .map(|name| rocksdb::ColumnFamilyDescriptor::new(*name, rocksdb::Options::default()));
    rocksdb::DB::open_cf_descriptors(&options, path, families).map_err(|source| {
        if claim.creates() {
            Error::Open {
                path: path.clone(),
                source,
            }
        } else {
            inspect::open_failed(path.parent().unwrap_or(path), path, source)
        }
    })
}
