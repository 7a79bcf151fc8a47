//! Raft marks: a record, outside RocksDB, of the newest vote and the last log id this node has
//! acknowledged as durable, checked when the store opens.
//!
//! Raft's safety argument assumes a node never forgets a vote it cast or an entry it
//! acknowledged. RocksDB alone cannot show that it forgot: a write-ahead log cut short looks like
//! a torn tail and replays "successfully" without the lost entries. So every vote is recorded
//! here, fsynced, before `save_vote` returns, and every log sync records the last log id it made
//! durable, fsynced, before any of its appends is acknowledged (`log_store::sync_loop`). At open,
//! a vote or last log id older than the record means the disk lost acknowledged state, and the
//! node refuses to start. The record is never ahead of what is durable (it is written after the
//! sync it describes, and lowered before a truncation), so a crash or power loss alone never
//! makes a healthy node refuse.
//!
//! File layout: two slots of [`SLOT_BYTES`], written alternately with `pwrite` and `fdatasync`,
//! so a torn write leaves the other slot (the previous record, still a valid lower bound):
//! `b"SWBMARK1" | u64 sequence | u32 body length | body | sha256 of everything before it`,
//! where the body is the versioned encoding of [`MarkValue`] (`codec`).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::{decode, encode};
use crate::error::Error;
use crate::types::{LogId, Vote};

/// File name of the marks, in the data directory next to `IDENTITY`.
pub const MARKS_FILE: &str = "RAFT-MARKS";
/// Bytes of one slot; the file holds two.
pub const SLOT_BYTES: usize = 256;

const MAGIC: &[u8; 8] = b"SWBMARK1";
const HEADER_BYTES: usize = MAGIC.len() + 8 + 4;
const DIGEST_BYTES: usize = 32;

/// What the marks record: lower bounds of the vote and of the last log id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MarkValue {
    pub vote: Option<Vote>,
    pub last_log_id: Option<LogId>,
}

impl crate::codec::Record for MarkValue {}

#[derive(Debug)]
struct State {
    sequence: u64,
    value: MarkValue,
    /// Bumped by every truncation: a sync of entries appended before it may name entries the
    /// truncation removed, and must not raise the mark.
    epoch: u64,
    /// The first write error: the marks are no longer kept, so nothing may be acknowledged.
    failed: Option<String>,
}

/// The open marks file. Clones share it.
#[derive(Debug, Clone)]
pub struct Marks {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    file: File,
    state: Mutex<State>,
}

impl Marks {
    /// Creates the marks of a fresh (or just wiped) data directory: no vote, no log.
    pub fn create(dir: &Path) -> Result<Self, Error> {
        Self::create_with(dir, MarkValue::default())
    }

    /// Creates the marks file holding `value` (a fresh directory, or one upgraded from a format
    /// that had no marks, recording what it holds now).
    pub fn create_with(dir: &Path, value: MarkValue) -> Result<Self, Error> {
        let path = dir.join(MARKS_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(Error::io(&path))?;
        file.set_len(2 * SLOT_BYTES as u64)
            .map_err(Error::io(&path))?;
        let marks = Self::with(path, file, 0, value);
        marks
            .inner
            .write(&mut marks.inner.state.lock().expect("marks lock"))?;
        crate::identity::sync_dir(dir)?;
        Ok(marks)
    }

    /// Opens the marks of an existing data directory; a missing or unreadable file is damage.
    pub fn open(dir: &Path) -> Result<(Self, MarkValue), Error> {
        let path = dir.join(MARKS_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::damaged(
                        dir,
                        format!("the Raft marks file {} is missing", path.display()),
                    )
                } else {
                    Error::Io {
                        path: path.clone(),
                        source: e,
                    }
                }
            })?;
        let (sequence, value) = read_slots(&path, &file).map_err(|reason| {
            Error::damaged(
                dir,
                format!(
                    "the Raft marks file {} is unreadable: {reason}",
                    path.display()
                ),
            )
        })?;
        Ok((Self::with(path, file, sequence, value.clone()), value))
    }

    fn with(path: PathBuf, file: File, sequence: u64, value: MarkValue) -> Self {
        Self {
            inner: Arc::new(Inner {
                path,
                file,
                state: Mutex::new(State {
                    sequence,
                    value,
                    epoch: 0,
                    failed: None,
                }),
            }),
        }
    }

    /// The value last recorded.
    pub fn value(&self) -> MarkValue {
        self.inner.state.lock().expect("marks lock").value.clone()
    }

    /// Records `vote`, durably, before returning.
    pub fn record_vote(&self, vote: &Vote) -> Result<(), Error> {
        let mut state = self.inner.state.lock().expect("marks lock");
        state.value.vote = Some(*vote);
        self.inner.write(&mut state)
    }

    /// The epoch of appends issued from now on (see [`Marks::record_durable`]).
    pub fn epoch(&self) -> u64 {
        self.inner.state.lock().expect("marks lock").epoch
    }

    /// Before a truncation: lowers the recorded last log id to `to`, durably, and starts a new
    /// epoch so that no sync of the removed entries can raise it again.
    pub fn lower_last_log_id(&self, to: Option<LogId>) -> Result<(), Error> {
        let mut state = self.inner.state.lock().expect("marks lock");
        state.epoch += 1;
        if state.value.last_log_id > to {
            state.value.last_log_id = to;
            return self.inner.write(&mut state);
        }
        Ok(())
    }

    /// After a sync: the log up to `last`, appended in `epoch`, is durable. Records it, durably,
    /// before returning: the caller acknowledges the appends only then. A sync of entries from an
    /// earlier epoch (a truncation came between) records nothing.
    pub fn record_durable(&self, last: LogId, epoch: u64) -> Result<(), Error> {
        let mut state = self.inner.state.lock().expect("marks lock");
        if epoch == state.epoch && Some(last) > state.value.last_log_id {
            state.value.last_log_id = Some(last);
            return self.inner.write(&mut state);
        }
        if let Some(failed) = &state.failed {
            return Err(self.inner.failed(failed));
        }
        Ok(())
    }
}

impl Inner {
    fn failed(&self, why: &str) -> Error {
        Error::io(&self.path)(std::io::Error::other(format!(
            "an earlier write of the Raft marks failed: {why}"
        )))
    }

    fn write(&self, state: &mut State) -> Result<(), Error> {
        if let Some(failed) = &state.failed {
            return Err(self.failed(failed));
        }
        let sequence = state.sequence + 1;
        let slot = encode_slot(sequence, &state.value);
        let offset = (sequence % 2) * SLOT_BYTES as u64;
        let result = self
            .file
            .write_all_at(&slot, offset)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = result {
            // After a failed fdatasync nothing later proves the earlier writes: never again.
            state.failed.get_or_insert_with(|| e.to_string());
            return Err(Error::io(&self.path)(e));
        }
        state.sequence = sequence;
        Ok(())
    }
}

fn encode_slot(sequence: u64, value: &MarkValue) -> Vec<u8> {
    let body = encode(value);
    let mut slot = Vec::with_capacity(SLOT_BYTES);
    slot.extend_from_slice(MAGIC);
    slot.extend_from_slice(&sequence.to_le_bytes());
    slot.extend_from_slice(&(body.len() as u32).to_le_bytes());
    slot.extend_from_slice(&body);
    let digest = Sha256::digest(&slot);
    slot.extend_from_slice(&digest);
    assert!(
        slot.len() <= SLOT_BYTES,
        "a marks record ({} bytes) fits its slot",
        slot.len()
    );
    slot.resize(SLOT_BYTES, 0);
    slot
}

fn decode_slot(path: &Path, slot: &[u8]) -> Result<(u64, MarkValue), String> {
    if &slot[..MAGIC.len()] != MAGIC {
        return Err("bad magic".into());
    }
    let sequence = u64::from_le_bytes(slot[8..16].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(slot[16..20].try_into().expect("4 bytes")) as usize;
    if HEADER_BYTES + len + DIGEST_BYTES > SLOT_BYTES {
        return Err(format!("body length {len} overruns the slot"));
    }
    let end = HEADER_BYTES + len;
    if Sha256::digest(&slot[..end]).as_slice() != &slot[end..end + DIGEST_BYTES] {
        return Err("checksum mismatch".into());
    }
    let key = path.to_string_lossy();
    let value = decode("raft marks", key.as_bytes(), &slot[HEADER_BYTES..end])
        .map_err(|e| e.to_string())?;
    Ok((sequence, value))
}

/// The valid slot with the highest sequence; an error when neither is valid.
fn read_slots(path: &Path, file: &File) -> Result<(u64, MarkValue), String> {
    let mut bytes = vec![0u8; 2 * SLOT_BYTES];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| format!("{e} (the file must hold {} bytes)", 2 * SLOT_BYTES))?;
    let slots = [&bytes[..SLOT_BYTES], &bytes[SLOT_BYTES..]];
    let decoded: Vec<Result<(u64, MarkValue), String>> =
        slots.iter().map(|s| decode_slot(path, s)).collect();
    decoded
        .iter()
        .filter_map(|d| d.as_ref().ok())
        .max_by_key(|(sequence, _)| *sequence)
        .cloned()
        .ok_or_else(|| {
            let reasons: Vec<String> = decoded
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    format!(
                        "slot {i} at offset {}: {}",
                        i * SLOT_BYTES,
                        d.as_ref().err().map_or("valid", |e| e.as_str())
                    )
                })
                .collect();
            reasons.join("; ")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::impls::leader_id_adv::LeaderId;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(LeaderId { term, node_id: 1 }, index)
    }

    #[test]
    fn a_torn_slot_leaves_the_previous_record() {
        let tmp = tempfile::tempdir().expect("test step");
        let marks = Marks::create(tmp.path()).expect("test step");
        marks.record_vote(&Vote::new(3, 1)).expect("test step");
        marks.record_vote(&Vote::new(4, 2)).expect("test step");
        let path = tmp.path().join(MARKS_FILE);
        let (_, value) = Marks::open(tmp.path()).expect("test step");
        assert_eq!(value.vote, Some(Vote::new(4, 2)));
        // Tear the newest slot (sequence 3, slot 1): the previous record is read.
        let mut bytes = std::fs::read(&path).expect("test step");
        bytes[SLOT_BYTES + 30] ^= 0x40;
        std::fs::write(&path, &bytes).expect("test step");
        let (_, value) = Marks::open(tmp.path()).expect("test step");
        assert_eq!(value.vote, Some(Vote::new(3, 1)));
        // Both torn: damage, naming the file.
        bytes[30] ^= 0x40;
        std::fs::write(&path, &bytes).expect("test step");
        let err = Marks::open(tmp.path()).expect_err("an error").to_string();
        assert!(
            err.contains("storage damaged") && err.contains(MARKS_FILE),
            "{err}"
        );
        assert!(err.contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn a_truncation_lowers_the_mark_and_stale_syncs_cannot_raise_it() {
        let tmp = tempfile::tempdir().expect("test step");
        let marks = Marks::create(tmp.path()).expect("test step");
        let epoch = marks.epoch();
        marks
            .record_durable(log_id(1, 10), epoch)
            .expect("test step");
        assert_eq!(marks.value().last_log_id, Some(log_id(1, 10)));
        marks
            .lower_last_log_id(Some(log_id(1, 5)))
            .expect("test step");
        // A sync of entries appended before the truncation records nothing.
        marks
            .record_durable(log_id(1, 10), epoch)
            .expect("test step");
        assert_eq!(marks.value().last_log_id, Some(log_id(1, 5)));
        marks
            .record_durable(log_id(2, 7), marks.epoch())
            .expect("test step");
        let (_, value) = Marks::open(tmp.path()).expect("test step");
        assert_eq!(value.last_log_id, Some(log_id(2, 7)));
    }

    #[test]
    fn a_missing_file_is_damage() {
        let tmp = tempfile::tempdir().expect("test step");
        let err = Marks::open(tmp.path()).expect_err("an error").to_string();
        assert!(
            err.contains("storage damaged") && err.contains("missing"),
            "{err}"
        );
    }
}
