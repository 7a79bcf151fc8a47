//! A node whose write-ahead log was damaged while it was down refuses to start (exit code 74,
//! `storage damaged: ...`), and `switchboard node reset --rejoin` brings it back: removed from
//! the membership, wiped, caught up from the cluster as a learner and promoted again, with every
//! acknowledged write readable on it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use client::{Client, ClientConfig};
use harness::ProcessCluster;
use proto::v1::{self, Consistency, ReadOptions};

const LEADER_WAIT: Duration = Duration::from_secs(30);
const EXIT_WAIT: Duration = Duration::from_secs(30);
const CALLS: usize = 200;
const TENANT: &str = "acme";
const EXIT_STORAGE_DAMAGED: i32 = 74;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_switchboard"))
}

fn client(cluster: &ProcessCluster, endpoints: Vec<String>) -> Client {
    Client::new(ClientConfig {
        endpoints,
        ..cluster.client_config()
    })
    .expect("client config")
}

/// The largest write-ahead log file of a node.
fn wal_of(data_dir: &Path) -> PathBuf {
    let mut logs: Vec<(u64, PathBuf)> = std::fs::read_dir(data_dir.join("rocksdb"))
        .expect("list rocksdb")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| (std::fs::metadata(&p).expect("stat").len(), p))
        .collect();
    logs.sort();
    logs.pop().expect("a write-ahead log").1
}

fn reset_command(
    cluster: &ProcessCluster,
    data_dir: &Path,
    endpoints: &[String],
    rejoin: bool,
) -> Command {
    let mut command = Command::new(binary());
    if let Some(dir) = cluster.certs_dir() {
        command.env("SWITCHBOARD_CA", dir.join("ca.pem"));
    }
    if let Some(token) = cluster.admin_token() {
        command.env("SWITCHBOARD_TOKEN", token);
    }
    command
        .arg("node")
        .arg("reset")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--endpoints")
        .arg(endpoints.join(","))
        .arg("--wait")
        .arg("60s");
    if rejoin {
        command.arg("--rejoin");
    }
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_damaged_wal_refuses_to_start_and_rejoins_after_reset() {
    let mut cluster = ProcessCluster::start(binary(), 3, &[]).expect("start cluster");
    let leader = cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    let target = *cluster
        .nodes
        .keys()
        .find(|id| **id != leader)
        .expect("follower");
    let others: Vec<String> = cluster
        .nodes
        .values()
        .filter(|n| n.id != target)
        .map(|n| n.grpc.clone())
        .collect();
    let writer = client(&cluster, cluster.endpoints());
    let mut call_ids = Vec::new();
    let mut last_index = 0;
    for n in 0..CALLS {
        let response = writer
            .create_call(v1::CreateCallRequest {
                tenant_id: TENANT.into(),
                request_id: format!("create-{n}"),
                source: "pstn:+15550100".into(),
                channel: v1::Channel::Voice.into(),
                ..Default::default()
            })
            .await
            .expect("create call");
        last_index = response.meta.as_ref().map_or(0, |m| m.index);
        call_ids.push(response.call.expect("call").call_id);
    }
    // Every write reached the target before it stops.
    let deadline = Instant::now() + LEADER_WAIT;
    while cluster.status(target).await.map_or(0, |s| s.applied_index) < last_index {
        assert!(Instant::now() < deadline, "node {target} never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let data_dir = cluster.nodes[&target].data_dir.clone();
    cluster
        .stop(target, Duration::from_secs(10))
        .expect("stop the target");

    // 16 bytes overwritten in the middle of its write-ahead log.
    let wal = wal_of(&data_dir);
    let len = std::fs::metadata(&wal).expect("stat wal").len();
    assert!(
        len > 4096,
        "the write-ahead log holds the writes ({len} bytes)"
    );
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&wal)
            .expect("open wal");
        file.write_all_at(&[0xA5; 16], len / 2).expect("damage");
        file.sync_all().expect("sync");
    }

    // It refuses to start, naming the damage and the way back.
    cluster.restart(target).expect("spawn the target");
    let deadline = Instant::now() + EXIT_WAIT;
    let status = loop {
        if let Some(status) = cluster
            .nodes
            .get_mut(&target)
            .expect("target")
            .exit_status()
        {
            break status;
        }
        assert!(Instant::now() < deadline, "a damaged node kept running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Some(EXIT_STORAGE_DAMAGED), "{status:?}");

    // Without --rejoin, reset only says what it would do.
    let said = reset_command(&cluster, &data_dir, &others, false)
        .output()
        .expect("run reset");
    assert_eq!(said.status.code(), Some(2), "{said:?}");
    assert!(String::from_utf8_lossy(&said.stderr).contains("--rejoin"));
    assert!(wal.exists(), "reset without --rejoin wiped the node");

    let mut reset = reset_command(&cluster, &data_dir, &others, true)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn reset");
    let mut lines = BufReader::new(reset.stdout.take().expect("stdout")).lines();
    loop {
        let line = lines
            .next()
            .expect("reset says it wiped")
            .expect("read line");
        eprintln!("reset: {line}");
        if line.contains("wiped") {
            break;
        }
    }
    cluster.restart(target).expect("start the wiped target");
    for line in lines {
        eprintln!("reset: {}", line.expect("read line"));
    }
    let done = reset.wait().expect("reset exits");
    assert!(done.success(), "reset failed: {done:?}");

    // The rejoined node learns its own promotion from the log (bounded wait; a status call may
    // fail while the machine is loaded, the node must not have exited).
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        let seen = match cluster.status(target).await {
            Ok(status)
                if status
                    .members
                    .iter()
                    .any(|m| m.node_id == target && m.voter) =>
            {
                break;
            }
            Ok(status) => format!("members {:?}", status.members),
            Err(e) => format!("status: {e}"),
        };
        let exited = cluster.nodes.get_mut(&target).and_then(|n| n.exit_status());
        assert!(
            exited.is_none(),
            "the rejoined node exited: {exited:?} ({seen})"
        );
        assert!(
            Instant::now() < deadline,
            "node {target} is not a voter again: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every acknowledged call is on the rejoined node.
    let on_target = client(&cluster, vec![cluster.grpc(target)]);
    for call_id in [&call_ids[0], &call_ids[CALLS / 2], &call_ids[CALLS - 1]] {
        let found = on_target
            .get_call(v1::GetCallRequest {
                tenant_id: TENANT.into(),
                call_id: call_id.clone(),
                read: Some(ReadOptions {
                    consistency: Consistency::Local.into(),
                    min_index: last_index,
                }),
            })
            .await
            .expect("the rejoined node serves the call");
        assert_eq!(found.call.map(|c| c.call_id).as_ref(), Some(call_id));
    }

    // A running node is never reset.
    let refused = reset_command(&cluster, &data_dir, &others, true)
        .output()
        .expect("run reset");
    assert_eq!(refused.status.code(), Some(4), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("stop the node"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
