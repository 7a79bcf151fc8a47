//! A cluster of real `switchboard serve` processes on loopback, for integration tests, drills and
//! measurements. Every process is killed and every directory removed when the cluster drops,
//! also when a test fails.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use proto::v1::cluster_service_client::ClusterServiceClient;

/// One node process and where it lives.
#[derive(Debug)]
pub struct ProcNode {
    pub id: u64,
    pub grpc: String,
    pub http: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
    extra_args: Vec<String>,
}

impl ProcNode {
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// How the process ended, once it has (without waiting).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

#[derive(Debug)]
pub struct ProcessCluster {
    binary: PathBuf,
    cluster_id: String,
    initial_cluster: String,
    pub nodes: BTreeMap<u64, ProcNode>,
    root: tempfile::TempDir,
}

/// A free loopback port (bound then released; the tiny race is acceptable for tests).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl ProcessCluster {
    /// Starts `n` voters that bootstrap themselves; `extra_args` go to every `serve`.
    pub fn start(binary: &Path, n: u64, extra_args: &[&str]) -> anyhow::Result<Self> {
        let root = tempfile::Builder::new()
            .prefix("switchboard-cluster-")
            .tempdir()?;
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let grpc = format!("127.0.0.1:{}", free_port()?);
            let http = format!("127.0.0.1:{}", free_port()?);
            nodes.insert(
                id,
                ProcNode {
                    id,
                    grpc,
                    http,
                    data_dir: root.path().join(format!("node-{id}")),
                    child: None,
                    extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
                },
            );
        }
        let initial_cluster = nodes
            .values()
            .map(|n| format!("{}={}", n.id, n.grpc))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            binary: binary.to_path_buf(),
            cluster_id: "testkit".to_owned(),
            initial_cluster,
            nodes,
            root,
        };
        let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
        for id in ids {
            cluster.restart(id)?;
        }
        Ok(cluster)
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Registers and starts a node that is not in the initial cluster (it waits to be added).
    pub fn start_extra(&mut self, id: u64, extra_args: &[&str]) -> anyhow::Result<&ProcNode> {
        let node = ProcNode {
            id,
            grpc: format!("127.0.0.1:{}", free_port()?),
            http: format!("127.0.0.1:{}", free_port()?),
            data_dir: self.root.path().join(format!("node-{id}")),
            child: None,
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
        };
        self.nodes.insert(id, node);
        self.spawn(id, false)?;
        Ok(&self.nodes[&id])
    }

    fn spawn(&mut self, id: u64, with_initial_cluster: bool) -> anyhow::Result<()> {
        let initial_cluster = self.initial_cluster.clone();
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow::anyhow!("no node {id}"))?;
        let mut command = Command::new(&self.binary);
        command
            .arg("serve")
            .args(["--node-id", &id.to_string()])
            .args(["--listen", &node.grpc])
            .args(["--http-listen", &node.http])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--cluster-id", &self.cluster_id])
            .args(&node.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("SWITCHBOARD_TEST_LOG")
                    .unwrap_or_else(|_| "warn,openraft=error".into()),
            )
            .stdin(Stdio::null());
        if with_initial_cluster {
            command.args(["--initial-cluster", &initial_cluster]);
        }
        node.child = Some(command.spawn()?);
        Ok(())
    }

    /// Starts (or restarts) node `id` of the initial cluster.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        self.spawn(id, true)
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow::anyhow!("no node {id}"))?;
        if let Some(mut child) = node.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERMs node `id` and waits (bounded) for it to exit; returns its exit status.
    pub fn stop(&mut self, id: u64, wait: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow::anyhow!("no node {id}"))?;
        let mut child = node
            .child
            .take()
            .ok_or_else(|| anyhow::anyhow!("node {id} is not running"))?;
        let pid = Pid::from_raw(i32::try_from(child.id())?);
        kill(pid, Signal::SIGTERM)?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > wait {
                child.kill()?;
                anyhow::bail!("node {id} did not stop within {wait:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.grpc.clone()).collect()
    }

    pub fn grpc(&self, id: u64) -> String {
        self.nodes
            .get(&id)
            .map(|n| n.grpc.clone())
            .unwrap_or_default()
    }

    /// Cluster status as node `id` sees it.
    pub async fn status(&self, id: u64) -> anyhow::Result<proto::v1::StatusResponse> {
        let mut client = ClusterServiceClient::connect(format!("http://{}", self.grpc(id))).await?;
        let mut request = tonic::Request::new(proto::v1::StatusRequest {});
        request.set_timeout(Duration::from_secs(2));
        Ok(client.status(request).await?.into_inner())
    }

    /// Waits until every running node agrees on one leader; returns it.
    pub async fn wait_for_leader(&mut self, within: Duration) -> anyhow::Result<u64> {
        let started = Instant::now();
        let mut last = String::from("no node answered");
        while started.elapsed() < within {
            let running: Vec<u64> = self
                .nodes
                .iter_mut()
                .filter_map(|(id, n)| n.is_running().then_some(*id))
                .collect();
            let mut leaders = Vec::new();
            for id in &running {
                match self.status(*id).await {
                    Ok(status) => leaders.push(status.leader_id),
                    Err(e) => last = format!("node {id}: {e}"),
                }
            }
            if leaders.len() == running.len()
                && let Some(Some(leader)) = leaders.first()
                && leaders.iter().all(|l| *l == Some(*leader))
                && running.contains(leader)
            {
                return Ok(*leader);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("no agreed leader within {within:?} ({last})")
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
