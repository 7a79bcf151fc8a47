//! Snapshot files: a point-in-time dump of the state-machine column family, streamed to and from
//! disk in bounded memory.
//!
//! Format (all integers big-endian):
//! ```text
//! magic "SWBSNAP2" | u32 meta_len | meta (JSON SnapshotMeta)
//! ( 0x01 | u32 key_len | key | u32 value_len | value )*
//! 0x02 | u64 record_count | sha256 of every byte before this trailer
//! ```
//! A file is only ever used after its checksum has been verified, so a torn or corrupt file is
//! an error naming the file, never a half-installed state.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rocksdb::{DB, IteratorMode};
use sha2::{Digest, Sha256};

use crate::codec::decode;
use crate::error::Error;
use crate::keys::{CF_SM, SM_LAST_APPLIED, SM_MEMBERSHIP};
use crate::types::{LogId, SnapshotMeta, StoredMembership};

const MAGIC: &[u8; 8] = b"SWBSNAP2";
const TAG_RECORD: u8 = 0x01;
const TAG_END: u8 = 0x02;
pub const SNAPSHOT_META_BYTES_MAX: u32 = 1 << 20;
pub const SNAPSHOT_KEY_BYTES_MAX: u32 = 4096;
pub const SNAPSHOT_VALUE_BYTES_MAX: u32 = 16 << 20;
const SUFFIX: &str = "snap";
const IO_BUFFER_BYTES: usize = 256 * 1024;
/// First allocation for a length-prefixed field; it grows with what is read.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Listings taken again when the newest snapshot vanished before it could be opened.
const OPEN_ATTEMPTS: u32 = 8;

/// A snapshot on disk, opened. The open handle keeps the data readable even if a newer snapshot
/// replaces the file while this one is being sent.
#[derive(Debug)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub file: File,
}

impl SnapshotFile {
    pub fn open(path: PathBuf) -> Result<Self, Error> {
        let file = File::open(&path).map_err(Error::io(&path))?;
        Ok(Self { path, file })
    }

    pub fn size_bytes(&self) -> Result<u64, Error> {
        Ok(self.file.metadata().map_err(Error::io(&self.path))?.len())
    }
}

/// Where a node keeps its snapshots.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    dir: PathBuf,
}

impl SnapshotDir {
    pub fn new(dir: PathBuf) -> Result<Self, Error> {
        fs::create_dir_all(dir.join("incoming")).map_err(Error::io(&dir))?;
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// A fresh path, on the same file system as the snapshots, for a snapshot being received.
    pub fn incoming_path(&self, name: &str) -> PathBuf {
        self.dir.join("incoming").join(name)
    }

    fn final_path(&self, meta: &SnapshotMeta, digest: &[u8]) -> PathBuf {
        let index = meta.last_log_id.as_ref().map_or(0, |id| id.index + 1);
        let hex = crate::codec::hex(&digest[..8]);
        self.dir
            .join(format!("snapshot-{index:020}-{hex}.{SUFFIX}"))
    }

    /// The snapshot with the highest last log index, if any.
    pub fn latest(&self) -> Result<Option<PathBuf>, Error> {
        Ok(self
            .list()?
            .into_iter()
            .max_by_key(|(rank, _)| *rank)
            .map(|(_, path)| path))
    }

    fn list(&self) -> Result<Vec<(u64, PathBuf)>, Error> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(Error::io(&self.dir))? {
            let path = entry.map_err(Error::io(&self.dir))?.path();
            let rank = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("snapshot-"))
                .and_then(|n| n.split('-').next())
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(rank) = rank
                && path.extension().is_some_and(|e| e == SUFFIX)
            {
                out.push((rank, path));
            }
        }
        Ok(out)
    }

    /// Opens the newest snapshot with its metadata, if any. A build or an install running at the
    /// same time may retire the file between listing and opening it: then the listing is
    /// taken again (a newer file is in place by then). Once open, the handle keeps the data
    /// readable whatever happens to the file.
    pub fn open_latest(&self) -> Result<Option<(SnapshotMeta, SnapshotFile)>, Error> {
        self.open_latest_with(|_| {})
    }

    /// [`SnapshotDir::open_latest`], calling `before_open` with each path it is about to open
    /// (tests use it to retire the file at the worst moment).
    fn open_latest_with(
        &self,
        mut before_open: impl FnMut(&Path),
    ) -> Result<Option<(SnapshotMeta, SnapshotFile)>, Error> {
        let mut attempt = 0;
        loop {
            let Some(path) = self.latest()? else {
                return Ok(None);
            };
            before_open(&path);
            match File::open(&path) {
                Ok(mut file) => {
                    // The clone shares the offset: rewind once the metadata is read.
                    let reader = file.try_clone().map_err(Error::io(&path))?;
                    let (meta, _) = Records::from_file(&path, reader)?;
                    file.seek(SeekFrom::Start(0)).map_err(Error::io(&path))?;
                    return Ok(Some((meta, SnapshotFile { path, file })));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < OPEN_ATTEMPTS => {
                    attempt += 1;
                }
                Err(e) => return Err(Error::Io { path, source: e }),
            }
        }
    }

    /// Removes snapshots older than `keep`. A file already gone was retired by a concurrent
    /// build or install.
    pub fn retire_older_than(&self, keep: &Path) -> Result<(), Error> {
        let keep_rank = self
            .list()?
            .into_iter()
            .find(|(_, path)| path == keep)
            .map_or(0, |(rank, _)| rank);
        for (rank, path) in self.list()? {
            if rank < keep_rank {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::Io { path, source: e }),
                }
            }
        }
        Ok(())
    }

    /// Puts a verified snapshot in place: as is when it already is one of ours, moved when it
    /// was received into `incoming/`, copied otherwise (the caller keeps its file).
    pub fn adopt(&self, from: &Path, meta: &SnapshotMeta) -> Result<PathBuf, Error> {
        if from.parent() == Some(self.dir.as_path()) {
            return Ok(from.to_path_buf());
        }
        let digest = file_digest(from)?;
        let to = self.final_path(meta, &digest);
        if from.parent() == Some(self.dir.join("incoming").as_path()) {
            fs::rename(from, &to).map_err(Error::io(from))?;
        } else {
            let tmp = self.incoming_path(&format!("adopt-{}.tmp", std::process::id()));
            fs::copy(from, &tmp).map_err(Error::io(from))?;
            File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(Error::io(&tmp))?;
            fs::rename(&tmp, &to).map_err(Error::io(&tmp))?;
        }
        crate::identity::sync_dir(&self.dir)?;
        Ok(to)
    }

    /// Writes a snapshot of the state machine as of now. The caller must have synced the
    /// write-ahead log first if the snapshot will allow purging the Raft log.
    pub fn build(&self, db: &DB) -> Result<(SnapshotMeta, PathBuf), Error> {
        let cf = db
            .cf_handle(CF_SM)
            .expect("column families are checked when the store opens");
        let view = db.snapshot();
        let last_log_id: Option<LogId> = view
            .get_cf(cf, SM_LAST_APPLIED)
            .map_err(Error::rocks("read snapshot view"))?
            .map(|b| decode("last applied log id", SM_LAST_APPLIED, &b))
            .transpose()?;
        let last_membership: StoredMembership = view
            .get_cf(cf, SM_MEMBERSHIP)
            .map_err(Error::rocks("read snapshot view"))?
            .map(|b| decode("membership", SM_MEMBERSHIP, &b))
            .transpose()?
            .unwrap_or_default();
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };

        let tmp = self.incoming_path(&format!("build-{}.tmp", std::process::id()));
        let mut out = HashingWriter::new(&tmp)?;
        out.write_all(MAGIC)?;
        let meta_json = serde_json::to_vec(&meta).expect("snapshot meta serializes to memory");
        out.write_all(
            &u32::try_from(meta_json.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        )?;
        out.write_all(&meta_json)?;
        let mut count = 0u64;
        for item in view.iterator_cf(cf, IteratorMode::Start) {
            let (key, value) = item.map_err(Error::rocks("read snapshot view"))?;
            out.write_all(&[TAG_RECORD])?;
            out.write_all(&len32(&key).to_be_bytes())?;
            out.write_all(&key)?;
            out.write_all(&len32(&value).to_be_bytes())?;
            out.write_all(&value)?;
            count += 1;
        }
        out.write_all(&[TAG_END])?;
        out.write_all(&count.to_be_bytes())?;
        let digest = out.finish()?;
        let path = self.final_path(&meta, &digest);
        fs::rename(&tmp, &path).map_err(Error::io(&tmp))?;
        crate::identity::sync_dir(&self.dir)?;
        Ok((meta, path))
    }
}

fn len32(bytes: &[u8]) -> u32 {
    // Keys and values come from our own tables, far below 4 GiB; the reader enforces the bounds.
    u32::try_from(bytes.len()).unwrap_or(u32::MAX)
}

/// Buffered file writer that hashes what it writes, then appends the hash and fsyncs.
struct HashingWriter {
    path: PathBuf,
    out: BufWriter<File>,
    hasher: Sha256,
}

impl HashingWriter {
    fn new(path: &Path) -> Result<Self, Error> {
        let file = File::create(path).map_err(Error::io(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(IO_BUFFER_BYTES, file),
            hasher: Sha256::new(),
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.hasher.update(bytes);
        self.out.write_all(bytes).map_err(Error::io(&self.path))
    }

    fn finish(mut self) -> Result<[u8; 32], Error> {
        let digest: [u8; 32] = self.hasher.finalize().into();
        self.out.write_all(&digest).map_err(Error::io(&self.path))?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&self.path)(e.into_error()))?;
        file.sync_all().map_err(Error::io(&self.path))?;
        Ok(digest)
    }
}

/// One key-value pair of the state machine.
pub type Record = (Vec<u8>, Vec<u8>);

/// Streams a snapshot file's records after checking its framing; see [`verify`].
pub struct Records {
    path: PathBuf,
    input: BufReader<File>,
    hasher: Sha256,
    count: u64,
    done: bool,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("path", &self.path)
            .field("count", &self.count)
            .finish()
    }
}

impl Records {
    /// Opens a snapshot and reads its metadata.
    pub fn open(path: &Path) -> Result<(SnapshotMeta, Records), Error> {
        let file = File::open(path).map_err(Error::io(path))?;
        Self::from_file(path, file)
    }

    /// Reads the metadata of the snapshot open as `file` (at offset 0).
    pub fn from_file(path: &Path, file: File) -> Result<(SnapshotMeta, Records), Error> {
        let mut records = Records {
            path: path.to_path_buf(),
            input: BufReader::with_capacity(IO_BUFFER_BYTES, file),
            hasher: Sha256::new(),
            count: 0,
            done: false,
        };
        let magic = records.read_vec(MAGIC.len())?;
        if magic != MAGIC {
            if magic.starts_with(b"SWBSNAP") {
                return Err(records.bad(format!(
                    "snapshot format {} is not the one this binary reads ({})",
                    String::from_utf8_lossy(&magic),
                    String::from_utf8_lossy(MAGIC)
                )));
            }
            return Err(records.bad("not a switchboard snapshot (bad magic)"));
        }
        let meta_len = records.read_u32()?;
        if meta_len > SNAPSHOT_META_BYTES_MAX {
            return Err(records.bad(format!("metadata length {meta_len} over the bound")));
        }
        let meta_json = records.read_vec(meta_len as usize)?;
        let meta: SnapshotMeta = serde_json::from_slice(&meta_json)
            .map_err(|e| records.bad(format!("metadata is not valid: {e}")))?;
        Ok((meta, records))
    }

    fn bad(&self, reason: impl Into<String>) -> Error {
        Error::BadSnapshot {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => self.bad("truncated"),
            _ => Error::io(&self.path)(e),
        })?;
        self.hasher.update(&*buf);
        Ok(())
    }

    /// Reads `len` bytes, allocating as they arrive rather than up front, so a length prefix
    /// (already within its bound) that claims more than the file holds is refused as truncated
    /// without ever being allocated. Found by the `snapshot` fuzz target: a 16 MiB value length
    /// in a 660-byte file allocated 16 MiB before finding the file short.
    fn read_vec(&mut self, len: usize) -> Result<Vec<u8>, Error> {
        let mut buf = Vec::with_capacity(len.min(READ_CHUNK_BYTES));
        let read = (&mut self.input)
            .take(len as u64)
            .read_to_end(&mut buf)
            .map_err(Error::io(&self.path))?;
        if read < len {
            return Err(self.bad("truncated"));
        }
        self.hasher.update(&buf);
        Ok(buf)
    }

    fn read_u32(&mut self) -> Result<u32, Error> {
        let mut buf = [0u8; 4];
        self.read_exact(&mut buf)?;
        Ok(u32::from_be_bytes(buf))
    }

    /// The next record, `None` at a verified end, or an error for a corrupt file.
    pub fn next_record(&mut self) -> Result<Option<Record>, Error> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.read_exact(&mut tag)?;
        match tag[0] {
            TAG_RECORD => {
                let key_len = self.read_u32()?;
                if key_len > SNAPSHOT_KEY_BYTES_MAX {
                    return Err(self.bad(format!("key length {key_len} over the bound")));
                }
                let key = self.read_vec(key_len as usize)?;
                let value_len = self.read_u32()?;
                if value_len > SNAPSHOT_VALUE_BYTES_MAX {
                    return Err(self.bad(format!("value length {value_len} over the bound")));
                }
                let value = self.read_vec(value_len as usize)?;
                self.count += 1;
                Ok(Some((key, value)))
            }
            TAG_END => {
                let mut count = [0u8; 8];
                self.read_exact(&mut count)?;
                let expected: [u8; 32] = self.hasher.clone().finalize().into();
                let mut found = [0u8; 32];
                self.input
                    .read_exact(&mut found)
                    .map_err(|_| self.bad("truncated checksum"))?;
                if found != expected {
                    return Err(self.bad("checksum mismatch"));
                }
                if u64::from_be_bytes(count) != self.count {
                    return Err(self.bad("record count mismatch"));
                }
                let mut rest = [0u8; 1];
                if self.input.read(&mut rest).map_err(Error::io(&self.path))? != 0 {
                    return Err(self.bad("trailing bytes after the checksum"));
                }
                self.done = true;
                Ok(None)
            }
            other => Err(self.bad(format!("unknown record tag {other:#x}"))),
        }
    }
}

/// Reads a whole snapshot file, checking framing, bounds and checksum; returns its metadata.
pub fn verify(path: &Path) -> Result<SnapshotMeta, Error> {
    let (meta, mut records) = Records::open(path)?;
    while records.next_record()?.is_some() {}
    Ok(meta)
}

fn file_digest(path: &Path) -> Result<[u8; 32], Error> {
    let mut input = BufReader::new(File::open(path).map_err(Error::io(path))?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; IO_BUFFER_BYTES];
    loop {
        let n = input.read(&mut buf).map_err(Error::io(path))?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use openraft::impls::leader_id_adv::LeaderId;

    use super::*;

    fn db_at(dir: &Path) -> DB {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        DB::open_cf(&options, dir, [CF_SM]).expect("open rocksdb")
    }

    fn set_applied(db: &DB, index: u64) {
        let cf = db.cf_handle(CF_SM).expect("column family");
        let id = LogId::new(
            LeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        );
        db.put_cf(cf, SM_LAST_APPLIED, crate::codec::encode(&id))
            .expect("put");
    }

    fn applied_index(meta: &SnapshotMeta) -> Option<u64> {
        meta.last_log_id.as_ref().map(|id| id.index)
    }

    #[test]
    fn open_latest_lists_again_when_a_build_retires_the_file_under_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = db_at(&tmp.path().join("db"));
        let snapshots = SnapshotDir::new(tmp.path().join("snapshots")).expect("snapshot dir");
        set_applied(&db, 5);
        let (_, first) = snapshots.build(&db).expect("first build");
        set_applied(&db, 9);

        // The worst moment: the newest file is listed, then a newer build lands and retires it
        // before it is opened.
        let mut opened = Vec::new();
        let found = snapshots
            .open_latest_with(|path| {
                opened.push(path.to_path_buf());
                if path == first {
                    let (_, second) = snapshots.build(&db).expect("second build");
                    snapshots.retire_older_than(&second).expect("retire");
                }
            })
            .expect("no error")
            .expect("a snapshot");
        assert_eq!(applied_index(&found.0), Some(9));
        assert_eq!(
            opened.len(),
            2,
            "listed again after the first file vanished"
        );
        assert!(!first.exists());

        // Retiring a file that is already gone is not an error.
        snapshots
            .retire_older_than(&found.1.path)
            .expect("retire again");
    }

    /// Regression (fuzz target `snapshot`, input `fuzz/corpus/snapshot/oom-value-length`): a
    /// value length within the bound (16 MiB) in a file holding a few bytes after it. Refused
    /// as truncated; the reader no longer allocates the claimed length first (the fuzz run
    /// replays the input under `-malloc_limit_mb=8`, which is what catches the allocation).
    #[test]
    fn a_value_length_the_file_does_not_hold_is_refused_as_truncated() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("short.snap");
        let meta = serde_json::to_vec(&SnapshotMeta::default()).expect("meta");
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&len32(&meta).to_be_bytes());
        bytes.extend_from_slice(&meta);
        bytes.push(TAG_RECORD);
        bytes.extend_from_slice(&2u32.to_be_bytes());
        bytes.extend_from_slice(&[0x01, 0x02]);
        bytes.extend_from_slice(&SNAPSHOT_VALUE_BYTES_MAX.to_be_bytes());
        bytes.extend_from_slice(b"abc");
        std::fs::write(&path, &bytes).expect("write");
        let (_, mut records) = Records::open(&path).expect("the header is valid");
        match records.next_record() {
            Err(Error::BadSnapshot { reason, .. }) => assert_eq!(reason, "truncated"),
            other => panic!("expected a truncated snapshot, got {other:?}"),
        }
    }

    #[test]
    fn an_open_snapshot_stays_readable_after_it_is_retired() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = db_at(&tmp.path().join("db"));
        let snapshots = SnapshotDir::new(tmp.path().join("snapshots")).expect("snapshot dir");
        set_applied(&db, 3);
        snapshots.build(&db).expect("build");
        let (meta, mut open) = snapshots.open_latest().expect("open").expect("a snapshot");
        set_applied(&db, 4);
        let (_, newer) = snapshots.build(&db).expect("newer build");
        snapshots.retire_older_than(&newer).expect("retire");
        assert!(!open.path.exists());
        let mut bytes = Vec::new();
        open.file
            .read_to_end(&mut bytes)
            .expect("read the retired file");
        assert!(bytes.starts_with(MAGIC));
        assert_eq!(applied_index(&meta), Some(3));
    }
}
