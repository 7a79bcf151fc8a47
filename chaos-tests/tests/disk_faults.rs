//! Disk faults against real `switchboard serve` processes on loopback. Each test builds a
//! 3-node cluster, writes a few hundred entries, stops a follower, damages one file of its data
//! directory and restarts it. The node must either refuse (exit code 74 with a
//! `storage damaged:` line) or serve with a log reaching the committed index and term it had
//! before it stopped; and the other two must keep accepting writes. One test makes a
//! follower's fsyncs fail through the fault shim (it must stop), one tears the tail of the
//! newest write-ahead log.
//!
//! The damaged node is restarted on fresh ports that its peers do not know, so the first
//! `Status` shows what it loaded from its disk, before a leader could repair it.
//! Needs the `switchboard` binary and `libfault_shim.so` next to the test's target directory
//! (`cargo build --workspace --all-targets`), or `SWITCHBOARD_BIN` / `SWITCHBOARD_FAULT_SHIM_LIB`.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use chaos_tests::checkers::disk::{EXIT_PANIC, NodeState, RestartOutcome, judge_restart};
use chaos_tests::drill::cluster::single_node_client;
use chaos_tests::drill::disk::{
    self, DamageKind, DamageTarget, SHIM_CONTROL_ENV, ShimControl, observe_restart,
};
use client::{Client, ClientConfig};
use harness::{ProcessCluster, ServeCommand};
use proto::v1;

const LEADER_WAIT: Duration = Duration::from_secs(20);
/// Entries written before the damage.
const ENTRIES: u32 = 300;
/// Writes in flight at once while filling the log.
const WRITES_IN_FLIGHT: usize = 16;
const CATCH_UP_WAIT: Duration = Duration::from_secs(15);
const RESTART_WAIT: Duration = Duration::from_secs(15);
/// How long a follower whose fsyncs fail may take to stop while the cluster writes.
const SYNC_ERROR_STOP_WAIT: Duration = Duration::from_secs(10);
const WRITES_AFTER: u32 = 20;
const POLL: Duration = Duration::from_millis(50);

fn binary() -> PathBuf {
    let binary = chaos_tests::switchboard_binary();
    assert!(
        binary.is_ok(),
        "build the node first (cargo build --workspace --all-targets) or set SWITCHBOARD_BIN: {binary:?}"
    );
    binary.expect("checked above")
}

fn writer(cluster: &ProcessCluster) -> Client {
    Client::new(ClientConfig {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(2000),
        call_deadline: Duration::from_millis(6000),
        retries_max: 8,
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..cluster.client_config()
    })
    .expect("client")
}

fn create(request_id: String) -> v1::CreateCallRequest {
    v1::CreateCallRequest {
        tenant_id: "acme".into(),
        request_id,
        source: "pstn:+15550100".into(),
        channel: v1::Channel::Voice.into(),
        ..Default::default()
    }
}

/// Writes `n` calls (each one log entry), `WRITES_IN_FLIGHT` at a time; every one must succeed.
async fn write_calls(client: &Client, prefix: &str, n: u32) {
    let mut next = 0;
    while next < n {
        let batch: Vec<_> = (next..n.min(next + WRITES_IN_FLIGHT as u32))
            .map(|k| client.create_call(create(format!("{prefix}-{k}"))))
            .collect();
        next += batch.len() as u32;
        for result in futures::future::join_all(batch).await {
            if let Err(e) = result {
                panic!("write {prefix} failed: {e}");
            }
        }
    }
}

async fn status(cluster: &ProcessCluster, grpc: &str) -> Option<v1::StatusResponse> {
    tokio::time::timeout(
        Duration::from_secs(1),
        harness::status(grpc, cluster.tls(), cluster.admin_token()),
    )
    .await
    .ok()?
    .ok()
}

/// Waits until node `id` has committed and applied at least `index`.
async fn wait_caught_up(cluster: &ProcessCluster, id: u64, index: u64) -> v1::StatusResponse {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < CATCH_UP_WAIT {
        if let Some(s) = status(cluster, &cluster.grpc(id)).await {
            if s.applied_index >= index && s.committed_index >= index {
                return s;
            }
            last = Some(s);
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("node {id} did not reach index {index} within {CATCH_UP_WAIT:?}: {last:?}");
}

async fn leader_index(cluster: &ProcessCluster, leader: u64) -> u64 {
    status(cluster, &cluster.grpc(leader))
        .await
        .map_or(0, |s| s.committed_index)
}

/// A node process the test started itself (on ports its peers do not know); killed on drop.
struct Isolated {
    child: Child,
    grpc: String,
}

impl Drop for Isolated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts node `id` on its data directory at fresh loopback ports, stderr to `log`.
fn start_isolated(cluster: &ProcessCluster, id: u64, log: &Path) -> Isolated {
    let grpc = format!("127.0.0.1:{}", harness::free_port().expect("port"));
    let http = format!("127.0.0.1:{}", harness::free_port().expect("port"));
    let data_dir = cluster.nodes.get(&id).expect("node").data_dir.clone();
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open stderr file");
    let mut serve = ServeCommand::new(id, &grpc, &data_dir)
        .http_listen(&http)
        .cluster_id(cluster.cluster_id())
        .exit_with_parent();
    serve = match cluster.certs_dir() {
        Some(dir) => serve.extra_args([std::ffi::OsStr::new("--tls-dir"), dir.as_os_str()]),
        None => serve.extra_args(["--insecure"]),
    };
    if let Some(dir) = cluster.token_dir() {
        serve = serve.token_keys(dir.join("token-keys.json"));
    }
    let child = serve
        .log_filter(harness::test_log_filter())
        .command(cluster.binary())
        .stdin(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn the damaged node");
    Isolated { child, grpc }
}

/// The file of `target` to damage: the newest write-ahead log, the largest table file, the
/// current manifest, the newest snapshot.
fn pick_file(data_dir: &Path, target: DamageTarget) -> PathBuf {
    let files = target.files(data_dir);
    let chosen = match target {
        DamageTarget::Sst => files.iter().max_by_key(|f| disk::file_len(f)).cloned(),
        _ => files.last().cloned(),
    };
    chosen.unwrap_or_else(|| {
        let listing: Vec<_> = walk(data_dir);
        panic!("no {target:?} file in {}: {listing:?}", data_dir.display())
    })
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(format!(
                "{} ({} bytes)",
                path.display(),
                disk::file_len(&path)
            ));
        }
    }
    out
}

/// The scenario of every damage test; see the module documentation.
async fn damaged_follower_refuses_or_remembers(target: DamageTarget, kind: DamageKind) {
    let mut cluster = ProcessCluster::start(&binary(), 3, &[]).expect("start cluster");
    let leader = cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    let follower = *cluster
        .nodes
        .keys()
        .rev()
        .find(|id| **id != leader)
        .expect("a follower");
    let client = writer(&cluster);
    write_calls(&client, "before", ENTRIES).await;

    match target {
        // Table files appear when RocksDB flushes a memtable; a restart flushes what it
        // recovers from the write-ahead log.
        DamageTarget::Sst => {
            cluster.kill(follower).expect("kill");
            cluster.restart(follower).expect("restart");
            let index = leader_index(&cluster, leader).await;
            wait_caught_up(&cluster, follower, index).await;
            write_calls(&client, "after-flush", ENTRIES / 3).await;
        }
        DamageTarget::Snapshot => {
            let node = single_node_client(
                &cluster.grpc(follower),
                cluster.tls(),
                cluster.admin_token(),
            )
            .expect("client");
            node.trigger_snapshot(v1::TriggerSnapshotRequest {})
                .await
                .expect("snapshot on the follower");
        }
        DamageTarget::Wal | DamageTarget::Manifest => {}
    }
    let index = leader_index(&cluster, leader).await;
    let before = NodeState::of(&wait_caught_up(&cluster, follower, index).await);
    cluster.kill(follower).expect("kill the follower");

    let data_dir = cluster.nodes.get(&follower).expect("node").data_dir.clone();
    let file = pick_file(&data_dir, target);
    let what = disk::damage(&data_dir, &file, kind, 500).expect("damage");
    println!("node {follower} (before: {before:?}): {what}");

    let log = cluster
        .root()
        .join(format!("node-{follower}.damaged.stderr"));
    let mut isolated = start_isolated(&cluster, follower, &log);
    let grpc = isolated.grpc.clone();
    let outcome = observe_restart(
        &grpc,
        cluster.tls(),
        cluster.admin_token(),
        || isolated.child.try_wait().ok().flatten(),
        &log,
        0,
        RESTART_WAIT,
    )
    .await;
    drop(isolated);
    println!("node {follower} came back: {outcome:?}");
    if let Err(why) = judge_restart(&before, &outcome) {
        let stderr = std::fs::read_to_string(&log).unwrap_or_default();
        panic!("node {follower} after {what}: {why}\n--- its stderr ---\n{stderr}");
    }

    // The other two still take writes.
    write_calls(&client, "after-damage", WRITES_AFTER).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_wal_is_refused_or_remembered() {
    damaged_follower_refuses_or_remembers(DamageTarget::Wal, DamageKind::Flip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_truncated_in_the_middle_is_refused_or_remembered() {
    damaged_follower_refuses_or_remembers(DamageTarget::Wal, DamageKind::Truncate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_sst_is_refused_or_remembered() {
    damaged_follower_refuses_or_remembers(DamageTarget::Sst, DamageKind::Flip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_manifest_is_refused_or_remembered() {
    damaged_follower_refuses_or_remembers(DamageTarget::Manifest, DamageKind::Flip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_snapshot_is_refused_or_remembered() {
    damaged_follower_refuses_or_remembers(DamageTarget::Snapshot, DamageKind::Flip).await;
}

/// A torn tail of the newest write-ahead log: after an fsync a tail of acknowledged data
/// cannot tear, so whatever the node drops must not reach below what it had committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_wal_tail_loses_nothing_committed() {
    damaged_follower_refuses_or_remembers(DamageTarget::Wal, DamageKind::TornTail).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_fsyncs_fail_stops_and_the_cluster_serves_on() {
    let shim = disk::shim_library();
    assert!(shim.is_ok(), "{shim:?}");
    let shim = shim.expect("checked above");
    let mut cluster = ProcessCluster::start(&binary(), 3, &[]).expect("start cluster");
    let leader = cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    let follower = *cluster
        .nodes
        .keys()
        .rev()
        .find(|id| **id != leader)
        .expect("a follower");
    // Restart the follower with the shim in front of its disk (passing everything through).
    let control = cluster.root().join(format!("node-{follower}.shim"));
    ShimControl::Ok.write(&control).expect("control file");
    cluster
        .set_env(follower, "LD_PRELOAD", &shim.to_string_lossy())
        .expect("env");
    cluster
        .set_env(follower, SHIM_CONTROL_ENV, &control.to_string_lossy())
        .expect("env");
    let stderr = cluster.capture_stderr(follower).expect("stderr");
    cluster.kill(follower).expect("kill");
    cluster.restart(follower).expect("restart with the shim");
    let client = writer(&cluster);
    write_calls(&client, "before", ENTRIES / 3).await;
    let index = leader_index(&cluster, leader).await;
    let before = NodeState::of(&wait_caught_up(&cluster, follower, index).await);

    ShimControl::FailSync.write(&control).expect("fail-sync");
    let started = Instant::now();
    let mut exit = None;
    let mut batch = 0;
    while started.elapsed() < SYNC_ERROR_STOP_WAIT {
        // Writes keep coming, so the follower has appends to sync; the cluster must take them.
        write_calls(&client, &format!("during-{batch}"), 5).await;
        batch += 1;
        exit = cluster
            .nodes
            .get_mut(&follower)
            .and_then(harness::ProcNode::exit_status);
        if exit.is_some() {
            break;
        }
    }
    let text = std::fs::read_to_string(&stderr).unwrap_or_default();
    let Some(exit) = exit else {
        panic!(
            "node {follower} kept running {SYNC_ERROR_STOP_WAIT:?} with failing fsyncs\n--- its stderr ---\n{text}"
        );
    };
    assert!(
        exit.code().is_some_and(|c| c != 0 && c != EXIT_PANIC),
        "node {follower} must stop with an error exit, not {exit:?}\n--- its stderr ---\n{text}"
    );
    println!(
        "node {follower} stopped ({exit:?}) after {} ms: {}",
        started.elapsed().as_millis(),
        disk::exit_line(&stderr, 0)
    );
    write_calls(&client, "after-stop", WRITES_AFTER).await;

    // Healed, it comes back with what it had, or refuses.
    ShimControl::Ok.write(&control).expect("ok");
    let from = disk::file_len(&stderr);
    cluster.restart(follower).expect("restart");
    let tls = cluster.tls().cloned();
    let token = cluster.admin_token().map(str::to_owned);
    let node = cluster.nodes.get_mut(&follower).expect("node");
    let grpc = node.grpc.clone();
    let outcome = observe_restart(
        &grpc,
        tls.as_ref(),
        token.as_deref(),
        || node.exit_status(),
        &stderr,
        from,
        RESTART_WAIT,
    )
    .await;
    println!("node {follower} came back: {outcome:?}");
    if let Err(why) = judge_restart(&before, &outcome) {
        let text = std::fs::read_to_string(&stderr).unwrap_or_default();
        panic!("node {follower} after failed fsyncs: {why}\n--- its stderr ---\n{text}");
    }
    if let RestartOutcome::Served(_) = outcome {
        let index = leader_index(&cluster, leader).await;
        wait_caught_up(&cluster, follower, index).await;
    }
}
