//! Storage that refuses rather than forgets: a data directory damaged while the node was down
//! (a byte flipped or a file cut short in the write-ahead log, an SST, the MANIFEST, a snapshot,
//! or a disk that lost recent writes) must not open. The error says `storage damaged`, names what
//! was found, and leaves every data file as it was; only an incomplete record at the very end of
//! the write-ahead log (a write torn by a crash, never acknowledged) may be dropped.
//!
//! The first test reproduces what a hostile tester found: with point-in-time recovery, 16 bytes
//! overwritten in the middle of the write-ahead log made a store open "normally" with a third of
//! its entries and an older vote.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use openraft::storage::{
    IOFlushed, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine,
};
use openraft::type_config::TypeConfigExt;
use raft_store::{Entry, TypeConfig};
use sha2::{Digest, Sha256};

mod support;

const ENTRIES: u64 = 1800;
const ENTRIES_PER_TERM: u64 = 300;
const BATCH: u64 = 20;

/// Appends `entries` and waits until they are durable.
async fn append_entries(store: &mut raft_store::Store, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    store
        .log
        .append(entries, IOFlushed::signal(tx))
        .await
        .expect("append");
    rx.await.expect("ack").expect("durable");
}

/// Appends `from..=to` in `term` (votes for `term` first) and waits until all are durable.
async fn append(store: &mut raft_store::Store, term: u64, from: u64, to: u64) {
    store
        .log
        .save_vote(&support::vote(term))
        .await
        .expect("save vote");
    let mut index = from;
    while index <= to {
        let end = (index + BATCH - 1).min(to);
        let batch: Vec<Entry> = (index..=end)
            .map(|i| {
                support::normal(
                    term,
                    i,
                    support::request(
                        "t",
                        &format!("r{i}"),
                        domain::Command::StartCall {
                            call_id: domain::CallId::from_u128(u128::from(i)),
                        },
                        domain::Stamp {
                            at_ms: i,
                            minted_call_id: None,
                            minted_trace_id: None,
                        },
                    ),
                )
            })
            .collect();
        append_entries(store, batch).await;
        index = end + 1;
    }
}

/// Opens the store in `dir`, appends `from..=to` in `term` and closes it.
async fn append_and_close(dir: &Path, term: u64, from: u64, to: u64) {
    let mut store = support::open(dir);
    append(&mut store, term, from, to).await;
}

/// A closed store holding `ENTRIES` entries over several terms, all acknowledged.
async fn filled(dir: &Path) {
    let mut store = support::open(dir);
    let mut index = 1;
    let mut term = 1;
    while index <= ENTRIES {
        let to = (index + ENTRIES_PER_TERM - 1).min(ENTRIES);
        append(&mut store, term, index, to).await;
        index = to + 1;
        term += 1;
    }
}

fn rocks(dir: &Path) -> PathBuf {
    dir.join(raft_store::ROCKSDB_DIR)
}

/// Files of the store with the given name predicate, largest first.
fn files(dir: &Path, pick: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut found: Vec<(u64, PathBuf)> = walk(dir)
        .into_iter()
        .filter(|p| pick(&p.file_name().expect("test step").to_string_lossy()))
        .map(|p| (std::fs::metadata(&p).expect("test step").len(), p))
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found.into_iter().map(|(_, p)| p).collect()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("test step") {
        let path = entry.expect("test step").path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Digest of every data file: RocksDB's own diagnostic `LOG*` files excepted.
fn data_files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    walk(dir)
        .into_iter()
        .filter(|p| {
            !p.file_name()
                .expect("test step")
                .to_string_lossy()
                .starts_with("LOG")
        })
        .map(|p| {
            let digest = Sha256::digest(std::fs::read(&p).expect("test step")).to_vec();
            (p, digest)
        })
        .collect()
}

fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("test step");
    file.write_all_at(bytes, offset).expect("test step");
    file.sync_all().expect("test step");
}

fn truncate(path: &Path, len: u64) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("test step");
    file.set_len(len).expect("test step");
    file.sync_all().expect("test step");
}

/// Opens `dir`, which must be refused as damaged, without a data file changed. Returns the
/// message.
fn refused(dir: &Path) -> String {
    let before = data_files(dir);
    let error = match raft_store::open(dir, &support::identity(1)) {
        Ok(_) => panic!("a damaged store opened"),
        Err(e) => e,
    };
    assert!(error.is_damaged(), "not reported as damage: {error}");
    let message = error.to_string();
    assert!(message.starts_with("storage damaged: "), "{message}");
    assert!(
        message.contains("switchboard node reset --rejoin"),
        "{message}"
    );
    assert_eq!(data_files(dir), before, "the refusal changed data files");
    message
}

/// Flushes every column family to SST files (a test of damage to SSTs needs them).
fn flush_to_ssts(dir: &Path) {
    let mut options = rocksdb::Options::default();
    options.create_if_missing(false);
    let db = rocksdb::DB::open_cf(&options, rocks(dir), raft_store::keys::COLUMN_FAMILIES)
        .expect("open rocksdb");
    for name in raft_store::keys::COLUMN_FAMILIES {
        db.flush_cf(db.cf_handle(name).expect("test step"))
            .expect("flush");
    }
}

/// The SST files of one column family.
fn ssts_of(dir: &Path, family: &str) -> Vec<PathBuf> {
    let options = rocksdb::Options::default();
    let db = rocksdb::DB::open_cf_for_read_only(
        &options,
        rocks(dir),
        raft_store::keys::COLUMN_FAMILIES,
        false,
    )
    .expect("open rocksdb read-only");
    db.live_files()
        .expect("live files")
        .into_iter()
        .filter(|f| f.column_family_name == family)
        .map(|f| rocks(dir).join(f.name.trim_start_matches('/')))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_bytes_overwritten_in_the_middle_of_the_wal_are_refused() {
    let tmp = tempfile::tempdir().expect("test step");
    filled(tmp.path()).await;
    let wal = files(&rocks(tmp.path()), |n| n.ends_with(".log"))
        .into_iter()
        .next()
        .expect("a write-ahead log");
    let len = std::fs::metadata(&wal).expect("test step").len();
    overwrite(&wal, len / 2, &[0xA5; 16]);
    let message = refused(tmp.path());
    assert!(message.contains("Corruption"), "{message}");
    let name = wal
        .file_name()
        .expect("test step")
        .to_string_lossy()
        .into_owned();
    assert!(
        message.contains(&format!("{name} at offset ")),
        "{message} does not name the record in {name}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_cut_short_is_refused_by_the_raft_marks() {
    let tmp = tempfile::tempdir().expect("test step");
    filled(tmp.path()).await;
    let wal = files(&rocks(tmp.path()), |n| n.ends_with(".log"))
        .into_iter()
        .next()
        .expect("a write-ahead log");
    let len = std::fs::metadata(&wal).expect("test step").len();
    truncate(&wal, len / 2);
    let message = refused(tmp.path());
    assert!(message.contains("went back"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_record_after_the_last_acknowledged_one_is_dropped_and_nothing_else() {
    let tmp = tempfile::tempdir().expect("test step");
    filled(tmp.path()).await;
    let wal = files(&rocks(tmp.path()), |n| n.ends_with(".log"))
        .into_iter()
        .next()
        .expect("a write-ahead log");
    // A record header promising more bytes than follow: a write torn by a crash.
    let len = std::fs::metadata(&wal).expect("test step").len();
    overwrite(
        &wal,
        len,
        &[0x11, 0x22, 0x33, 0x44, 0xff, 0x0f, 0x01, 0xab, 0xcd],
    );
    let mut store = raft_store::open(tmp.path(), &support::identity(1)).expect("open");
    let state = store.log.get_log_state().await.expect("test step");
    assert_eq!(state.last_log_id.map(|id| id.index), Some(ENTRIES));
    let entries = store
        .log
        .try_get_log_entries(1..=ENTRIES)
        .await
        .expect("read log");
    assert_eq!(entries.len() as u64, ENTRIES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_raft_log_sst_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().expect("test step");
    filled(tmp.path()).await;
    flush_to_ssts(tmp.path());
    let sst = ssts_of(tmp.path(), raft_store::keys::CF_LOG)
        .into_iter()
        .next()
        .expect("a raft log sst");
    let len = std::fs::metadata(&sst).expect("test step").len();
    // A data block, well before the index and footer at the end of the file.
    overwrite(&sst, len / 3, &[0x5A]);
    let message = refused(tmp.path());
    let name = sst
        .file_name()
        .expect("test step")
        .to_string_lossy()
        .into_owned();
    assert!(message.contains(&name), "{message} does not name {name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_manifest_is_refused() {
    let tmp = tempfile::tempdir().expect("test step");
    filled(tmp.path()).await;
    flush_to_ssts(tmp.path());
    let manifest = files(&rocks(tmp.path()), |n| n.starts_with("MANIFEST-"))
        .into_iter()
        .next()
        .expect("a manifest");
    let len = std::fs::metadata(&manifest).expect("test step").len();
    overwrite(&manifest, len / 2, &[0xFF, 0x00, 0xFF, 0x00]);
    refused(tmp.path());
}

/// Found by the soak: a MANIFEST cut short makes RocksDB say "Column family not found", an
/// invalid-argument error, not corruption; in a directory we own it is damage all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_cut_short_is_refused() {
    let tmp = tempfile::tempdir().expect("test step");
    filled(tmp.path()).await;
    let manifest = files(&rocks(tmp.path()), |n| n.starts_with("MANIFEST-"))
        .into_iter()
        .next()
        .expect("a manifest");
    let len = std::fs::metadata(&manifest).expect("test step").len();
    truncate(&manifest, len / 2);
    refused(tmp.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_newest_snapshot_is_refused() {
    let tmp = tempfile::tempdir().expect("test step");
    {
        let mut store = support::open(tmp.path());
        // From index 0, as openraft's log starts (the state machine asserts it).
        append(&mut store, 1, 0, 10).await;
        let entries: Vec<Entry> = store
            .log
            .try_get_log_entries(0..=10)
            .await
            .expect("read log");
        store
            .state_machine
            .apply_batch(entries)
            .expect("apply entries");
        store.log.sync().expect("sync");
        let mut builder = store.state_machine.get_snapshot_builder().await;
        builder.build_snapshot().await.expect("build snapshot");
    }
    let snapshot = files(&tmp.path().join(raft_store::SNAPSHOT_DIR), |n| {
        n.ends_with(".snap")
    })
    .into_iter()
    .next()
    .expect("a snapshot file");
    let len = std::fs::metadata(&snapshot).expect("test step").len();
    overwrite(&snapshot, len / 2, &[0x01]);
    let message = refused(tmp.path());
    assert!(
        message.contains(&snapshot.display().to_string()),
        "{message}"
    );
}

/// A byte flipped in a state-machine SST is refused at open, naming the file with RocksDB's
/// cause: the inspection reads every state-machine block, so the node never serves (and a later
/// snapshot install or compaction never stops Raft) over a damaged block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_state_machine_sst_is_refused_at_open_naming_the_file() {
    use domain::{CallId, Channel, Command, Labels, Payload, Stamp};
    const EVENTS: u64 = 40;
    let tmp = tempfile::tempdir().expect("test step");
    let call_id = CallId::from_u128(7);
    {
        let mut store = support::open(tmp.path());
        store
            .log
            .save_vote(&support::vote(1))
            .await
            .expect("test step");
        let stamp = |at_ms, minted_call_id| Stamp {
            at_ms,
            minted_call_id,
            minted_trace_id: None,
        };
        let create = Command::CreateCall {
            source: "web".into(),
            channel: Channel::Voice,
            metadata: Labels::new(),
            trace_id: None,
        };
        let mut entries = vec![
            support::blank(1, 0),
            support::normal(
                1,
                1,
                support::request("t", "c", create, stamp(1, Some(call_id))),
            ),
            support::normal(
                1,
                2,
                support::request("t", "s", Command::StartCall { call_id }, stamp(2, None)),
            ),
        ];
        let payload = format!("\"{}\"", "y".repeat(60_000));
        for n in 0..EVENTS {
            let event = Command::LogEvent {
                call_id,
                event_type: "agent.note".into(),
                payload: Payload::Json(payload.clone()),
                metadata: Labels::new(),
            };
            entries.push(support::normal(
                1,
                3 + n,
                support::request("t", &format!("e{n}"), event, stamp(3 + n, None)),
            ));
        }
        append_entries(&mut store, entries.clone()).await;
        store.state_machine.apply_batch(entries).expect("apply");
        store.log.sync().expect("sync");
    }
    flush_to_ssts(tmp.path());
    let sst = ssts_of(tmp.path(), raft_store::keys::CF_SM)
        .into_iter()
        .next()
        .expect("a state machine sst");
    let len = std::fs::metadata(&sst).expect("test step").len();
    overwrite(&sst, len / 2, &[0x77, 0x77]);
    let error = refused(tmp.path());
    let name = sst
        .file_name()
        .expect("test step")
        .to_string_lossy()
        .into_owned();
    assert!(
        error.contains("Corruption") && error.contains(&name),
        "{error} does not give the cause in {name}"
    );
}

/// A disk that lost recent writes (here: RocksDB's directory put back as it was earlier) shows
/// as a vote or a log older than the Raft marks recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_or_log_older_than_the_raft_marks_is_refused() {
    let tmp = tempfile::tempdir().expect("test step");
    let earlier = tempfile::tempdir().expect("test step");
    append_and_close(tmp.path(), 3, 1, 50).await;
    copy_dir(&rocks(tmp.path()), &earlier.path().join("rocksdb"));
    append_and_close(tmp.path(), 4, 51, 100).await;
    std::fs::remove_dir_all(rocks(tmp.path())).expect("test step");
    copy_dir(&earlier.path().join("rocksdb"), &rocks(tmp.path()));
    let message = refused(tmp.path());
    assert!(message.contains("vote went back"), "{message}");

    // The vote alone kept: the log is still behind.
    {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(false);
        let db = rocksdb::DB::open_cf(
            &options,
            rocks(tmp.path()),
            raft_store::keys::COLUMN_FAMILIES,
        )
        .expect("test step");
        let meta = db.cf_handle(raft_store::keys::CF_META).expect("test step");
        db.put_cf(
            meta,
            raft_store::keys::META_VOTE,
            raft_store::codec::encode(&support::vote(4)),
        )
        .expect("test step");
    }
    let message = refused(tmp.path());
    assert!(message.contains("Raft log went back"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_raft_marks_file_is_refused() {
    let tmp = tempfile::tempdir().expect("test step");
    append_and_close(tmp.path(), 1, 1, 5).await;
    std::fs::remove_file(tmp.path().join(raft_store::marks::MARKS_FILE)).expect("test step");
    let message = refused(tmp.path());
    assert!(message.contains("missing"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_2_directory_is_upgraded_with_marks_of_what_it_holds() {
    let tmp = tempfile::tempdir().expect("test step");
    append_and_close(tmp.path(), 2, 1, 30).await;
    std::fs::remove_file(tmp.path().join(raft_store::marks::MARKS_FILE)).expect("test step");
    let old = raft_store::Identity {
        format_version: raft_store::identity::UPGRADABLE_FORMAT_VERSION,
        ..support::identity(1)
    };
    raft_store::identity::write(tmp.path(), &old).expect("test step");
    {
        let store = raft_store::open(tmp.path(), &support::identity(1)).expect("upgrade");
        let marks = store.log.marks().value();
        assert_eq!(marks.vote, Some(support::vote(2)));
        assert_eq!(marks.last_log_id, Some(support::log_id(2, 30)));
    }
    let identity = raft_store::identity::read(tmp.path())
        .expect("test step")
        .expect("test step");
    assert_eq!(
        identity.format_version,
        raft_store::identity::FORMAT_VERSION
    );
    support::open(tmp.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoining_directory_opens_empty_and_is_an_ordinary_one_after() {
    let tmp = tempfile::tempdir().expect("test step");
    let rejoining = raft_store::Identity {
        rejoin: true,
        ..support::identity(1)
    };
    std::fs::create_dir_all(tmp.path()).expect("test step");
    raft_store::identity::write(tmp.path(), &rejoining).expect("test step");
    {
        let mut store = raft_store::open(tmp.path(), &support::identity(1)).expect("open");
        assert_eq!(store.claim, raft_store::Claim::Rejoining);
        assert_eq!(
            store
                .log
                .get_log_state()
                .await
                .expect("test step")
                .last_log_id,
            None
        );
    }
    let store = raft_store::open(tmp.path(), &support::identity(1)).expect("reopen");
    assert_eq!(store.claim, raft_store::Claim::Existing);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("test step");
    for entry in std::fs::read_dir(from).expect("test step") {
        let entry = entry.expect("test step");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), target).expect("test step");
        }
    }
}
