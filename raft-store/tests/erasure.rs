//! The store's side of erasure: an applied erase (or an installed snapshot) is recorded
//! node-locally until a pass is recorded, across reopens; and a disk pass (after the snapshot
//! and the log purge that openraft does on a node) leaves no erased byte in any file of the
//! data directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use domain::{CallId, Channel, Command};
use openraft::storage::{IOFlushed, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::type_config::TypeConfigExt;
use raft_store::{Entry, LogStore, StateMachine, TypeConfig};

mod support;

const TENANT: &str = "acme";
const CALL: CallId = CallId::from_u128(0x0197_0000_0000_7000_8000_0000_0000_0001);

use support::stamp;

/// The entries of a call that holds `marker` in a turn and its summary, erased at index 5.
fn erased_call(marker: &str) -> Vec<Entry> {
    let send = |index: u64, command: Command, minted: Option<CallId>| {
        let request = support::request(
            TENANT,
            &format!("r-{index}"),
            command,
            stamp(1_000 + index, minted),
        );
        support::normal(1, index, request)
    };
    vec![
        support::blank(1, 0),
        send(
            1,
            Command::CreateCall {
                source: "web".into(),
                channel: Channel::Chat,
                metadata: BTreeMap::new(),
                trace_id: None,
            },
            Some(CALL),
        ),
        send(2, Command::StartCall { call_id: CALL }, None),
        send(
            3,
            Command::AppendTurn {
                call_id: CALL,
                speaker: "caller".into(),
                text: format!("my number is {marker}"),
                confidence: 1.0,
                language: "en".into(),
                spoken_at_ms: 1,
            },
            None,
        ),
        send(
            4,
            Command::UpdateContext {
                call_id: CALL,
                summary: Some(format!("caller said {marker}")),
                entities: BTreeMap::new(),
            },
            None,
        ),
        send(5, erase(), None),
    ]
}

fn erase() -> Command {
    Command::EraseCall {
        call_id: CALL,
        reason: "dsr".into(),
        actor: "ops".into(),
    }
}

async fn append(log: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(tx))
        .await
        .expect("append");
    rx.await.expect("ack").expect("durable");
}

fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("list dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
            {
                out.push(path);
            }
        }
    }
    out
}

fn reopen(dir: &Path, sm: StateMachine, log: LogStore) -> (StateMachine, LogStore) {
    drop((sm, log));
    let store = support::open(dir);
    (store.state_machine, store.log)
}

#[tokio::test]
async fn an_applied_erase_stays_pending_across_reopens_until_a_pass_is_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = support::open(dir.path());
    let (mut sm, mut log) = (store.state_machine, store.log);
    assert_eq!(sm.eraser().pending().expect("pending"), None);

    let entries = erased_call("nothing-secret");
    sm.apply_batch(entries.clone()).expect("apply");
    append(&mut log, entries).await;
    assert_eq!(*sm.eraser().watch_applied().borrow(), 5);
    assert_eq!(sm.eraser().pending().expect("pending"), Some(5));

    // A crash before the pass: the next start still owes it.
    let (mut sm, mut log) = reopen(dir.path(), sm, log);
    assert_eq!(sm.eraser().pending().expect("pending"), Some(5));
    sm.eraser().mark_purged(5).expect("record the pass");
    assert_eq!(sm.eraser().pending().expect("pending"), None);

    // A repeated erase erases nothing, so it owes no pass.
    let again = support::normal(
        1,
        6,
        support::request(TENANT, "r-again", erase(), stamp(2_000, None)),
    );
    sm.apply_batch(vec![again.clone()]).expect("apply");
    append(&mut log, vec![again]).await;
    let (sm, _log) = reopen(dir.path(), sm, log);
    assert_eq!(sm.eraser().pending().expect("pending"), None);
}

#[tokio::test]
async fn an_installed_snapshot_owes_a_pass() {
    let source_dir = tempfile::tempdir().expect("tempdir");
    let mut source = support::open(source_dir.path()).state_machine;
    source
        .apply_batch(erased_call("x"))
        .expect("apply on the source");
    let snapshot = source
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");

    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = support::open(dir.path()).state_machine;
    sm.install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .expect("install");
    assert_eq!(sm.eraser().pending().expect("pending"), Some(5));
}

#[tokio::test]
async fn after_the_snapshot_the_log_purge_and_a_disk_pass_no_file_holds_an_erased_byte() {
    // Random hex: stored as a literal by any compression, shared with nothing else on disk.
    let marker = "e3b1c7a95f0d4286bb19d2a7c4e8f610";
    let dir = tempfile::tempdir().expect("tempdir");
    let store = support::open(dir.path());
    let (mut sm, mut log) = (store.state_machine, store.log);
    let mut entries = erased_call(marker);
    let erase_entry = entries.pop().expect("the erase");

    // Control: the content is on disk (log, write-ahead log, a snapshot file, and SSTs after a
    // flush), so a search that finds nothing later means something.
    sm.apply_batch(entries.clone()).expect("apply");
    append(&mut log, entries).await;
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build before the erase");
    // A reopen replays the write-ahead log into SST files: old versions now sit in SSTs, which
    // only a compaction rewrites.
    let (mut sm, mut log) = reopen(dir.path(), sm, log);
    let held = files_holding(dir.path(), marker.as_bytes());
    assert!(
        held.iter()
            .any(|p| p.extension().is_some_and(|e| e == "sst")),
        "the content is in an SST before the erase: {held:?}"
    );
    assert!(
        held.iter()
            .any(|p| p.starts_with(dir.path().join("snapshots"))),
        "the content is in a snapshot file before the erase: {held:?}"
    );

    sm.apply_batch(vec![erase_entry.clone()])
        .expect("apply erase");
    append(&mut log, vec![erase_entry]).await;
    let eraser = sm.eraser();
    assert_eq!(eraser.pending().expect("pending"), Some(5));
    // What openraft does on the node's request: a snapshot that covers the erase (which
    // retires older ones), then the log purged through it.
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build after the erase");
    log.purge(support::log_id(1, 5)).await.expect("purge");
    let held = files_holding(dir.path(), marker.as_bytes());
    assert!(
        !held.is_empty(),
        "without the disk pass the old bytes stay: the test can fail"
    );

    let pass = eraser.purge_disk().expect("disk pass");
    assert_eq!(pass.column_families, 3);
    eraser.mark_purged(5).expect("record");
    assert_eq!(
        files_holding(dir.path(), marker.as_bytes()),
        Vec::<PathBuf>::new(),
        "no file holds an erased byte after the pass (before it: {held:?})"
    );
}
