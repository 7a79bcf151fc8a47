//! The check a data directory passes before the node may use it.
//!
//! RocksDB is first opened read-only (no data file is written, so a refusal leaves the evidence
//! as it was), and:
//! - every block of the Raft log is read with its checksum verified, every entry decoded and
//!   matched to its key, and the indexes must run without a hole from the purge point;
//! - the newest snapshot's checksum is verified;
//! - the committed and applied log ids must lie within the log or the snapshot: a node whose log
//!   ends before what it applied has lost entries it acknowledged;
//! - the vote and the last log id must not be older than the Raft marks ([`crate::marks`]).
//!
//! Any failure is [`Error::Damaged`], naming the file (and, from RocksDB, the offset).

use std::cmp::Ordering;
use std::path::Path;

use openraft::entry::RaftEntry;
use rocksdb::{DB, IteratorMode, ReadOptions};

use crate::codec::decode;
use crate::error::{Error, is_corruption};
use crate::keys::{
    self, CF_LOG, CF_META, CF_SM, COLUMN_FAMILIES, META_COMMITTED, META_LAST_PURGED, META_VOTE,
    SM_LAST_APPLIED,
};
use crate::marks::{MARKS_FILE, MarkValue};
use crate::snapshot::{self, SnapshotDir};
use crate::types::{Entry, LogId, Vote};

/// What a data directory holds, as found by [`inspect`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Found {
    pub vote: Option<Vote>,
    pub last_purged: Option<LogId>,
    /// The last entry's log id, or the purge point when the log is empty.
    pub last_log_id: Option<LogId>,
    pub committed: Option<LogId>,
    pub applied: Option<LogId>,
    pub snapshot: Option<LogId>,
    pub entries: u64,
}

impl Found {
    /// The marks a directory upgraded from a format without them starts from.
    pub fn as_marks(&self) -> MarkValue {
        MarkValue {
            vote: self.vote,
            last_log_id: self.last_log_id,
        }
    }

    /// Refuses a vote or last log id older than the marks recorded.
    pub fn check_against(&self, dir: &Path, marks: &MarkValue) -> Result<(), Error> {
        let file = dir.join(MARKS_FILE);
        if let Some(recorded) = &marks.vote {
            let older = match &self.vote {
                None => true,
                Some(found) => !matches!(
                    found.partial_cmp(recorded),
                    Some(Ordering::Greater | Ordering::Equal)
                ),
            };
            if older {
                return Err(Error::damaged(
                    dir,
                    format!(
                        "the vote went back: RocksDB holds {}, but {} recorded {recorded} as cast",
                        show(&self.vote),
                        file.display()
                    ),
                ));
            }
        }
        if marks.last_log_id.is_some() && self.last_log_id < marks.last_log_id {
            return Err(Error::damaged(
                dir,
                format!(
                    "the Raft log went back: it ends at {}, but {} recorded {} as durable \
                     (acknowledged entries were lost, e.g. from a cut write-ahead log)",
                    show(&self.last_log_id),
                    file.display(),
                    show(&marks.last_log_id),
                ),
            ));
        }
        Ok(())
    }
}

/// The error of a failed RocksDB open of a directory this node owns: damage when RocksDB reports
/// corruption (named down to the write-ahead log record when the log is what is damaged), or
/// finds its own files missing or inconsistent (a column family we created gone, a MANIFEST cut
/// short); an I/O failure (a lock held, permissions, EIO) is reported as it is, not as damage.
pub fn open_failed(dir: &Path, rocks: &Path, error: rocksdb::Error) -> Error {
    use rocksdb::ErrorKind;
    let damaged = matches!(
        error.kind(),
        ErrorKind::Corruption | ErrorKind::InvalidArgument | ErrorKind::NotFound
    );
    if !damaged {
        return Error::Open {
            path: rocks.to_path_buf(),
            source: error,
        };
    }
    let mut what = format!("RocksDB refused to open {}: {error}", rocks.display());
    if let Some(record) = crate::wal_scan::first_damage(rocks) {
        what.push_str(&format!("; first damaged write-ahead log record: {record}"));
    }
    Error::damaged(dir, what)
}

fn decoded<T: crate::codec::Record>(
    dir: &Path,
    rocks: &Path,
    what: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, Error> {
    decode(what, key, bytes).map_err(|e| Error::damaged(dir, format!("{e} in {}", rocks.display())))
}

fn show<T: std::fmt::Display>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map_or_else(|| "nothing".to_owned(), ToString::to_string)
}

/// Opens `rocks` read-only and checks it and the snapshots of `dir` (see the module docs).
pub fn inspect(dir: &Path, rocks: &Path, options: &rocksdb::Options) -> Result<Found, Error> {
    let db = DB::open_cf_for_read_only(options, rocks, COLUMN_FAMILIES, false)
        .map_err(|e| open_failed(dir, rocks, e))?;
    let damaged = |what: String| Error::damaged(dir, what);
    let rocks_failed = |op: &'static str| {
        move |e: rocksdb::Error| {
            if is_corruption(&e) {
                Error::damaged(dir, format!("{op} in {}: {e}", rocks.display()))
            } else {
                Error::Rocks { op, source: e }
            }
        }
    };
    let cf = |name: &str| {
        db.cf_handle(name).ok_or_else(|| Error::Missing {
            what: "column family",
            key: name.to_owned(),
        })
    };
    let get = |family: &str, key: &[u8], what: &'static str| -> Result<Option<Vec<u8>>, Error> {
        db.get_cf(cf(family)?, key)
            .map_err(rocks_failed(what))
            .map(|v| v.map(|b| b.to_vec()))
    };

    let mut found = Found::default();
    if let Some(b) = get(CF_META, META_VOTE, "read the vote")? {
        found.vote = Some(decoded(dir, rocks, "vote", META_VOTE, &b)?);
    }
    if let Some(b) = get(CF_META, META_LAST_PURGED, "read the purge point")? {
        found.last_purged = Some(decoded(
            dir,
            rocks,
            "last purged log id",
            META_LAST_PURGED,
            &b,
        )?);
    }
    if let Some(b) = get(CF_META, META_COMMITTED, "read the committed log id")? {
        found.committed = Some(decoded(dir, rocks, "committed log id", META_COMMITTED, &b)?);
    }
    if let Some(b) = get(CF_SM, SM_LAST_APPLIED, "read the applied log id")? {
        found.applied = Some(decoded(
            dir,
            rocks,
            "last applied log id",
            SM_LAST_APPLIED,
            &b,
        )?);
    }

    // Every block of the log, checksums verified, without filling the block cache.
    let mut read = ReadOptions::default();
    read.set_verify_checksums(true);
    read.fill_cache(false);
    let mut previous: Option<u64> = found.last_purged.as_ref().map(|id| id.index());
    let mut last: Option<LogId> = None;
    for item in db.iterator_cf_opt(cf(CF_LOG)?, read, IteratorMode::Start) {
        let (key, value) = item.map_err(rocks_failed("read the Raft log"))?;
        let index = keys::decode_u64(&key).ok_or_else(|| {
            damaged(format!(
                "a Raft log key {} is not an index, in {}",
                crate::codec::hex(&key),
                rocks.display()
            ))
        })?;
        let entry: Entry = decoded(dir, rocks, "raft log entry", &key, &value)?;
        if entry.index() != index {
            return Err(damaged(format!(
                "the Raft log entry under index {index} says it is entry {}, in {}",
                entry.index(),
                rocks.display()
            )));
        }
        if let Some(previous) = previous
            && index != previous + 1
        {
            return Err(damaged(format!(
                "the Raft log has a hole: entry {index} follows {previous}, in {}",
                rocks.display()
            )));
        }
        previous = Some(index);
        last = Some(entry.log_id());
        found.entries += 1;
    }
    found.last_log_id = last.or(found.last_purged);

    // Every block of the state machine and the metadata too, checksums verified: a flipped bit
    // in a state-machine SST otherwise surfaces only when a later read, snapshot or compaction
    // reaches it, with the node already serving (drill seed 106 found one stopping Raft at a
    // snapshot install).
    for (name, op) in [
        (CF_SM, "read the state machine"),
        (CF_META, "read the Raft metadata"),
    ] {
        let mut read = ReadOptions::default();
        read.set_verify_checksums(true);
        read.fill_cache(false);
        for item in db.iterator_cf_opt(cf(name)?, read, IteratorMode::Start) {
            item.map_err(rocks_failed(op))?;
        }
    }
    drop(db);

    let snapshots = SnapshotDir::new(dir.join(crate::SNAPSHOT_DIR))?;
    if let Some(path) = snapshots.latest()? {
        let meta = snapshot::verify(&path).map_err(|e| match e {
            Error::BadSnapshot { path, reason } => damaged(format!(
                "the snapshot {} is invalid: {reason}",
                path.display()
            )),
            other => other,
        })?;
        found.snapshot = meta.last_log_id;
    }

    // What was committed or applied must still be in the log or the snapshot.
    let held = found.last_log_id.max(found.snapshot);
    let held_index = held.as_ref().map(|id| id.index());
    for (what, id) in [("committed", &found.committed), ("applied", &found.applied)] {
        if let Some(id) = id
            && held_index.is_none_or(|held| id.index() > held)
        {
            return Err(damaged(format!(
                "entry {} was {what}, but the Raft log and the snapshots end at {} \
                 (acknowledged entries were lost)",
                id.index(),
                show(&held_index)
            )));
        }
    }
    Ok(found)
}
