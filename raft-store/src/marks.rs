//! Raft marks: a record, outside RocksDB, of the newest vote and the last durable log id this
//! node has acknowledged, checked when the store opens.
//!
//! Raft's safety argument assumes a node never forgets a vote it cast or an entry it
//! acknowledged. RocksDB alone cannot show that it forgot: a write-ahead log cut short looks like
//! a torn tail and replays "successfully" without the lost entries. So every vote is recorded
//! here, fsynced, before `save_vote` returns, and the last log id is recorded after the sync that
//! made it durable (coalesced by a background thread: the record is a lower bound that trails the
//! log by at most one interval). At open, a vote or last log id older than the record means the
//! disk lost acknowledged state, and the node refuses to start.
//!
//! File layout: two slots of [`SLOT_BYTES`], written alternately with `pwrite` and `fdatasync`,
//! so a torn write leaves the other slot (the previous record, still a valid lower bound):
//! `b"SWBMARK1" | u64 sequence | u32 body length | body | sha256 of everything before it`,
//! where the body is the versioned encoding of [`MarkValue`] (`codec`).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::{decode, encode};
use crate::error::Error;
use crate::types::{LogId, Vote};

/// File name of the marks, in the data directory next to `IDENTITY`.
pub const MARKS_FILE: &str = "RAFT-MARKS";
/// Bytes of one slot; the file holds two.
pub const SLOT_BYTES: usize = 256;
/// Least time between two coalesced records of the last log id: bounds the extra fsyncs to
/// 1000 / this per second however fast the log syncs.
pub const MARK_INTERVAL_MS: u64 = 20;

const MAGIC: &[u8; 8] = b"SWBMARK1";
const HEADER_BYTES: usize = MAGIC.len() + 8 + 4;
const DIGEST_BYTES: usize = 32;

/// What the marks record: lower bounds of the vote and of the last log id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MarkValue {
    pub vote: Option<Vote>,
    pub last_log_id: Option<LogId>,
}

#[derive(Debug)]
struct State {
    sequence: u64,
    value: MarkValue,
    /// Bumped by every truncation: a durable log id published from before it may name entries
    /// the truncation removed, and must not raise the mark.
    epoch: u64,
    /// The newest durable last log id waiting for the writer thread.
    pending: Option<(LogId, u64)>,
    closed: bool,
    /// The first write error: the marks are no longer kept, so the node must stop.
    failed: Option<String>,
}

/// The open marks file. Clones share it; when the last clone is dropped, the pending record is
/// written and the writer thread stops.
#[derive(Debug, Clone)]
pub struct Marks {
    handle: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    inner: Arc<Inner>,
    writer: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    file: File,
    state: Mutex<State>,
    wake: Condvar,
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
        let marks = Self::start(path, file, 0, value)?;
        let inner = marks.inner();
        inner.write(&mut inner.state.lock().expect("marks lock"))?;
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
        Ok((Self::start(path, file, sequence, value.clone())?, value))
    }

    fn start(path: PathBuf, file: File, sequence: u64, value: MarkValue) -> Result<Self, Error> {
        let inner = Arc::new(Inner {
            path,
            file,
            state: Mutex::new(State {
                sequence,
                value,
                epoch: 0,
                pending: None,
                closed: false,
                failed: None,
            }),
            wake: Condvar::new(),
        });
        let writer = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("raft-marks".into())
                .spawn(move || inner.writer_loop())
                .map_err(Error::io("raft-marks thread"))?
        };
        Ok(Self {
            handle: Arc::new(Handle {
                inner,
                writer: Some(writer),
            }),
        })
    }

    fn inner(&self) -> &Inner {
        &self.handle.inner
    }

    pub fn path(&self) -> &Path {
        &self.inner().path
    }

    /// The value last recorded (or being recorded).
    pub fn value(&self) -> MarkValue {
        self.inner().state.lock().expect("marks lock").value.clone()
    }

    /// Records `vote`, durably, before returning.
    pub fn record_vote(&self, vote: &Vote) -> Result<(), Error> {
        let mut state = self.inner().state.lock().expect("marks lock");
        state.value.vote = Some(*vote);
        self.inner().write(&mut state)
    }

    /// The epoch of appends issued from now on (see [`Marks::published_durable`]).
    pub fn epoch(&self) -> u64 {
        self.inner().state.lock().expect("marks lock").epoch
    }

    /// Before a truncation: lowers the recorded last log id to `to`, durably, and starts a new
    /// epoch so that no sync of the removed entries can raise it again.
    pub fn lower_last_log_id(&self, to: Option<LogId>) -> Result<(), Error> {
        let mut state = self.inner().state.lock().expect("marks lock");
        state.epoch += 1;
        state.pending = None;
        if state.value.last_log_id > to {
            state.value.last_log_id = to;
            return self.inner().write(&mut state);
        }
        Ok(())
    }

    /// After a sync: the log up to `last` (appended in `epoch`) is durable. The writer thread
    /// records it soon; the caller does not wait.
    pub fn published_durable(&self, last: LogId, epoch: u64) {
        let mut state = self.inner().state.lock().expect("marks lock");
        if epoch == state.epoch {
            state.pending = Some((last, epoch));
            self.inner().wake.notify_one();
        }
    }

    /// Records every pending last log id now (shutdown and tests).
    pub fn flush(&self) -> Result<(), Error> {
        let mut state = self.inner().state.lock().expect("marks lock");
        self.inner().take_pending(&mut state)
    }

    /// The first failure of the background writer, if any.
    pub fn failure(&self) -> Option<String> {
        self.inner()
            .state
            .lock()
            .expect("marks lock")
            .failed
            .clone()
    }
}

impl Inner {
    fn take_pending(&self, state: &mut State) -> Result<(), Error> {
        if let Some((last, epoch)) = state.pending.take()
            && epoch == state.epoch
            && Some(&last) > state.value.last_log_id.as_ref()
        {
            state.value.last_log_id = Some(last);
            return self.write(state);
        }
        Ok(())
    }

    fn writer_loop(&self) {
        let mut state = self.state.lock().expect("marks lock");
        loop {
            while state.pending.is_none() && !state.closed {
                state = self.wake.wait(state).expect("marks lock");
            }
            if state.closed {
                return;
            }
            if let Err(e) = self.take_pending(&mut state) {
                tracing::error!(error = %e, "failed to record the Raft marks; the node must stop");
                state.failed.get_or_insert_with(|| e.to_string());
                return;
            }
            // Rest for the interval (records arriving meanwhile are coalesced), unless closed.
            let until = Instant::now() + Duration::from_millis(MARK_INTERVAL_MS);
            while !state.closed {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                state = self
                    .wake
                    .wait_timeout(state, until - now)
                    .expect("marks lock")
                    .0;
            }
        }
    }

    fn write(&self, state: &mut State) -> Result<(), Error> {
        if let Some(failed) = &state.failed {
            return Err(Error::io(&self.path)(std::io::Error::other(failed.clone())));
        }
        let sequence = state.sequence + 1;
        let slot = encode_slot(sequence, &state.value);
        let offset = (sequence % 2) * SLOT_BYTES as u64;
        let result = self
            .file
            .write_all_at(&slot, offset)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = result {
            state.failed.get_or_insert_with(|| e.to_string());
            return Err(Error::io(&self.path)(e));
        }
        state.sequence = sequence;
        Ok(())
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        {
            let mut state = self.inner.state.lock().expect("marks lock");
            if let Err(e) = self.inner.take_pending(&mut state) {
                tracing::warn!(error = %e, "failed to record the Raft marks at shutdown");
            }
            state.closed = true;
            self.inner.wake.notify_all();
        }
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("raft marks writer thread panicked");
        }
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
        drop(marks);
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
        marks.published_durable(log_id(1, 10), epoch);
        marks.flush().expect("test step");
        assert_eq!(marks.value().last_log_id, Some(log_id(1, 10)));
        marks
            .lower_last_log_id(Some(log_id(1, 5)))
            .expect("test step");
        // A sync of entries appended before the truncation is ignored.
        marks.published_durable(log_id(1, 10), epoch);
        marks.flush().expect("test step");
        assert_eq!(marks.value().last_log_id, Some(log_id(1, 5)));
        marks.published_durable(log_id(2, 7), marks.epoch());
        marks.flush().expect("test step");
        drop(marks);
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
