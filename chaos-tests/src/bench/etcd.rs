//! The etcd baseline: a 3-member etcd cluster of real processes on loopback (Debian's
//! etcd-server) and the call lifecycle mapped onto etcd transactions.
//!
//! Data model per call `<id>`: `/calls/<id>/state` holds the lifecycle state; every transition is
//! one `Txn` that compares the state (create revision = 0 for create, value = expected state
//! otherwise) and puts the new state plus the new record: the call record (create, start, end),
//! the turn (`/calls/<id>/turns/<n>`) or the handoff with its context snapshot (the last turns),
//! so etcd stores the same bytes Switchboard does for the same call.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, ConnectOptions, GetOptions, KvClient, Txn, TxnOp};
use harness::free_port;

use super::workload::{self, Op, State};

/// How long to wait for a fresh cluster to elect a leader.
pub const READY_WAIT: Duration = Duration::from_secs(30);
/// Timeout of one benchmark request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Finds the etcd binary: `$ETCD_BIN`, else `etcd` on PATH, installing Debian's etcd-server
/// (and etcd-client, protobuf-compiler) when it is missing.
pub fn ensure_etcd() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("ETCD_BIN") {
        return Ok(PathBuf::from(path));
    }
    if let Some(found) = which("etcd") {
        return Ok(found);
    }
    let packages = ["etcd-server", "etcd-client", "protobuf-compiler"];
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/ensure-system-deps");
    eprintln!("etcd not found: installing {}", packages.join(" "));
    let status = if script.exists() {
        Command::new(&script).args(packages).status()?
    } else {
        let update = Command::new("apt-get").args(["update", "-qq"]).status()?;
        anyhow::ensure!(update.success(), "apt-get update failed: {update}");
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?
    };
    anyhow::ensure!(status.success(), "installing {packages:?} failed: {status}");
    which("etcd").ok_or_else(|| anyhow::anyhow!("etcd is still not on PATH after installing"))
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `etcd --version`, first line.
pub fn version(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// The etcd flags the benchmark sets explicitly, every one at etcd 3.4's default value except
/// the logger (zap at warn, like the Switchboard nodes' `warn` level). etcd always fsyncs its WAL.
pub fn tuning_flags() -> Vec<String> {
    [
        "--snapshot-count=100000",
        "--heartbeat-interval=100",
        "--election-timeout=1000",
        "--quota-backend-bytes=0",
        "--max-txn-ops=128",
        "--max-request-bytes=1572864",
        "--pre-vote=false",
        "--auto-compaction-retention=0",
        "--logger=zap",
        "--log-level=warn",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Every flag of one member's command line.
pub fn member_args(
    name: &str,
    data_dir: &str,
    peer_addr: &str,
    client_addr: &str,
    initial_cluster: &str,
    extra_flags: &[String],
) -> Vec<String> {
    let mut args = vec![
        format!("--name={name}"),
        format!("--data-dir={data_dir}"),
        format!("--listen-peer-urls=http://{peer_addr}"),
        format!("--initial-advertise-peer-urls=http://{peer_addr}"),
        format!("--listen-client-urls=http://{client_addr}"),
        format!("--advertise-client-urls=http://{client_addr}"),
        format!("--initial-cluster={initial_cluster}"),
        "--initial-cluster-state=new".to_owned(),
        "--initial-cluster-token=bench".to_owned(),
    ];
    args.extend(tuning_flags());
    args.extend(extra_flags.iter().cloned());
    args
}

#[derive(Debug)]
pub struct EtcdMember {
    pub name: String,
    pub client_addr: String,
    pub peer_addr: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
}

impl EtcdMember {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.client_addr)
    }
}

/// A cluster of etcd processes; every process is killed and the directory removed on drop.
#[derive(Debug)]
pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    /// The full command line of member 1, for the report.
    pub command_line: String,
    root: tempfile::TempDir,
}

impl EtcdCluster {
    pub fn start(binary: &Path, n: usize, extra_flags: &[String]) -> anyhow::Result<Self> {
        let root = tempfile::Builder::new().prefix("etcd-cluster-").tempdir()?;
        let mut members = Vec::with_capacity(n);
        for i in 1..=n {
            members.push(EtcdMember {
                name: format!("n{i}"),
                client_addr: format!("127.0.0.1:{}", free_port()?),
                peer_addr: format!("127.0.0.1:{}", free_port()?),
                data_dir: root.path().join(format!("n{i}")),
                child: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer_addr))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            members,
            command_line: String::new(),
            root,
        };
        for i in 0..n {
            let m = &cluster.members[i];
            let args = member_args(
                &m.name,
                &m.data_dir.display().to_string(),
                &m.peer_addr,
                &m.client_addr,
                &initial_cluster,
                extra_flags,
            );
            if i == 0 {
                cluster.command_line = format!("{} {}", binary.display(), args.join(" "));
            }
            let log = std::fs::File::create(cluster.root.path().join(format!("{}.log", m.name)))?;
            let child = Command::new(binary)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?;
            cluster.members[i].child = Some(child);
        }
        Ok(cluster)
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// (name, pid) of every running member.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.members
            .iter()
            .filter_map(|m| m.pid().map(|pid| (m.name.clone(), pid)))
            .collect()
    }

    /// Waits until every running member names the same leader; returns its index.
    pub async fn wait_for_leader(&mut self, within: Duration) -> anyhow::Result<usize> {
        let started = Instant::now();
        let mut last = String::from("no member answered");
        while started.elapsed() < within {
            self.check_running()?;
            let mut leaders = Vec::new();
            let mut ids = Vec::new();
            for m in self.members.iter().filter(|m| m.child.is_some()) {
                match member_status(&m.url()).await {
                    Ok((id, leader)) => {
                        ids.push(id);
                        leaders.push(leader);
                    }
                    Err(e) => last = format!("{}: {e}", m.name),
                }
            }
            let running = self.members.iter().filter(|m| m.child.is_some()).count();
            if leaders.len() == running
                && let Some(leader) = leaders.first()
                && *leader != 0
                && leaders.iter().all(|l| l == leader)
                && let Some(pos) = ids.iter().position(|id| id == leader)
            {
                // `ids` follows the running members in order; map back to the member index.
                let running_idx: Vec<usize> = (0..self.members.len())
                    .filter(|i| self.members[*i].child.is_some())
                    .collect();
                return Ok(running_idx[pos]);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("no agreed etcd leader within {within:?} ({last})")
    }

    /// Fails, with the end of its log, when a started member has exited.
    fn check_running(&mut self) -> anyhow::Result<()> {
        for m in &mut self.members {
            if let Some(child) = &mut m.child
                && let Some(status) = child.try_wait()?
            {
                m.child = None;
                let log = std::fs::read_to_string(self.root.path().join(format!("{}.log", m.name)))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                anyhow::bail!(
                    "etcd member {} exited ({status}): {}",
                    m.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        Ok(())
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.members.get_mut(i).and_then(|m| m.child.take()) {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn options(timeout: Duration) -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout)
}

/// (this member's id, the leader it knows, 0 when none).
async fn member_status(url: &str) -> anyhow::Result<(u64, u64)> {
    let client = etcd_client::Client::connect([url], Some(options(Duration::from_secs(2)))).await?;
    let status = client.maintenance_client().status().await?;
    let id = status.header().map(|h| h.member_id()).unwrap_or(0);
    Ok((id, status.leader()))
}

/// A pool of `size` connections (one etcd client, hence one HTTP/2 connection, each) to `urls`,
/// spread round-robin.
pub async fn connect_pool(urls: &[String], size: usize) -> anyhow::Result<Vec<KvClient>> {
    let mut pool = Vec::with_capacity(size);
    for i in 0..size.max(1) {
        let url = &urls[i % urls.len()];
        let client = etcd_client::Client::connect([url], Some(options(REQUEST_TIMEOUT))).await?;
        pool.push(client.kv_client());
    }
    Ok(pool)
}

/// What the etcd baseline knows about one virtual call.
#[derive(Debug)]
pub struct EtcdCall {
    pub seq: u64,
    pub call_id: String,
    pub state: Option<State>,
    pub turns: u32,
    /// Turn records so far, for the handoff's context snapshot.
    pub recent_turns: Vec<serde_json::Value>,
}

impl EtcdCall {
    pub fn new(seq: u64) -> Self {
        Self {
            seq,
            call_id: uuid::Uuid::now_v7().to_string(),
            state: None,
            turns: 0,
            recent_turns: Vec::new(),
        }
    }
}

fn state_key(call_id: &str) -> String {
    format!("/calls/{call_id}/state")
}

pub fn record_key(call_id: &str) -> String {
    format!("/calls/{call_id}/record")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn call_record(call: &EtcdCall, state: State) -> serde_json::Value {
    serde_json::json!({
        "call_id": call.call_id,
        "tenant_id": workload::TENANT,
        "source": workload::source(call.seq),
        "channel": "VOICE",
        "metadata": workload::METADATA.iter().copied().collect::<std::collections::BTreeMap<_, _>>(),
        "room_name": format!("call_{}", call.call_id),
        "state": state.as_str(),
        "at_ms": now_ms(),
        "turn_count": call.turns,
    })
}

/// Runs `op` on `call` as one compare-and-put transaction.
pub async fn step(kv: &mut KvClient, call: &mut EtcdCall, op: Op) -> anyhow::Result<()> {
    let (expected, next) = workload::transition(call.state, op)
        .ok_or_else(|| anyhow::anyhow!("illegal {} from {:?}", op.name(), call.state))?;
    let skey = state_key(&call.call_id);
    let compare = match expected {
        None => Compare::create_revision(skey.clone(), CompareOp::Equal, 0),
        Some(s) => Compare::value(skey.clone(), CompareOp::Equal, s.as_str()),
    };
    let (rkey, record) = match op {
        Op::Create | Op::Start => (record_key(&call.call_id), call_record(call, next)),
        Op::Turn => {
            let n = call.turns + 1;
            let turn = serde_json::json!({
                "index": n,
                "speaker": workload::speaker(n),
                "text": workload::turn_text(call.seq, n),
                "confidence": workload::TURN_CONFIDENCE,
                "language": workload::TURN_LANGUAGE,
                "spoken_at_ms": now_ms(),
            });
            call.recent_turns.push(turn.clone());
            (format!("/calls/{}/turns/{n:06}", call.call_id), turn)
        }
        Op::Handoff => (
            format!("/calls/{}/handoff", call.call_id),
            serde_json::json!({
                "reason": workload::HANDOFF_REASON,
                "urgency": "HIGH",
                "target": workload::HANDOFF_TARGET,
                "at_ms": now_ms(),
                "snapshot": { "summary": "", "entities": {}, "recent_turns": call.recent_turns },
            }),
        ),
        Op::End => {
            let mut record = call_record(call, next);
            record["end_reason"] = workload::END_REASON.into();
            record["resolution"] = workload::END_RESOLUTION.into();
            (record_key(&call.call_id), record)
        }
    };
    let txn = Txn::new().when([compare]).and_then([
        TxnOp::put(skey, next.as_str(), None),
        TxnOp::put(rkey, serde_json::to_vec(&record)?, None),
    ]);
    let response = kv.txn(txn).await?;
    anyhow::ensure!(
        response.succeeded(),
        "{} compare failed for call {}",
        op.name(),
        call.call_id
    );
    if op == Op::Turn {
        call.turns += 1;
    }
    call.state = Some(next);
    Ok(())
}

/// Reads a call record; `serializable` is etcd's local (possibly stale) read.
pub async fn read(kv: &mut KvClient, call_id: &str, serializable: bool) -> anyhow::Result<()> {
    let options = serializable.then(|| GetOptions::new().with_serializable());
    let response = kv.get(record_key(call_id), options).await?;
    anyhow::ensure!(!response.kvs().is_empty(), "call {call_id} not found");
    Ok(())
}

/// One failover write attempt against `url`: a fresh connection, bounded by `timeout`.
pub async fn try_write(url: &str, key: String, timeout: Duration) -> bool {
    let attempt = async {
        let client = etcd_client::Client::connect([url], Some(options(timeout))).await?;
        client.kv_client().put(key, "x", None).await
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Ok(_)))
}
