//! The drill's cluster: real `switchboard serve` processes, on loopback or each in its own
//! network namespace, with a delay proxy in front of every node for its peers. Like
//! `node::testkit::ProcessCluster`, generalised: processes can be paused, nodes can leave and
//! rejoin with a wiped data directory, and in namespace mode faults are real network faults.
//! Everything it started is stopped and removed when it drops (also on panic); nodes run with
//! `--exit-with-parent`, so they stop even when the drill is killed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use node::client::{Client, ClientConfig};
use proto::v1;

use crate::netns::Net;
use crate::proxy::{self, Proxy};

/// Temp directories of drills start with this (followed by the drill's pid).
pub const TEMP_PREFIX: &str = "sbchaos-";

/// Where nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Processes on 127.0.0.1: process faults and proxy delay only; no root needed.
    Loopback,
    /// Each node in its own network namespace: partitions and packet loss too (root).
    Netns,
}

#[derive(Debug)]
pub struct NodeProc {
    pub id: u64,
    /// Where the drill's clients reach the node (directly).
    pub grpc: String,
    listen: String,
    /// Where peers reach the node: its proxy.
    pub advertise: String,
    http: String,
    data_dir: PathBuf,
    child: Option<Child>,
    pub paused: bool,
    /// Started with `--initial-cluster` (false once its data directory was wiped).
    bootstrap: bool,
    pub proxy: Option<Proxy>,
    /// A client for this node alone: reads aimed at it, status, digest.
    pub client: Client,
}

impl NodeProc {
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }
}

#[derive(Debug)]
pub struct DrillCluster {
    binary: PathBuf,
    pub mode: Mode,
    cluster_id: String,
    initial_cluster: String,
    node_args: Vec<String>,
    pub nodes: BTreeMap<u64, NodeProc>,
    root: tempfile::TempDir,
    pub net: Option<Net>,
}

/// A client that talks to `endpoint` only, one attempt per call.
pub fn single_node_client(endpoint: &str) -> anyhow::Result<Client> {
    Ok(Client::new(ClientConfig {
        endpoints: vec![endpoint.to_owned()],
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(1500),
        call_deadline: Duration::from_millis(2000),
        retries_max: 0,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
    })?)
}

/// Removes temp directories of drills whose process is gone.
pub fn sweep_temp_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(TEMP_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next() else {
            continue;
        };
        if !pid.is_empty()
            && pid.chars().all(|c| c.is_ascii_digit())
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl DrillCluster {
    /// Starts `n` voters (ids 1..=n) that bootstrap themselves.
    pub async fn start(
        binary: PathBuf,
        mode: Mode,
        n: u64,
        node_args: Vec<String>,
    ) -> anyhow::Result<Self> {
        sweep_temp_dirs();
        let root = tempfile::Builder::new()
            .prefix(&format!("{TEMP_PREFIX}{}-", std::process::id()))
            .tempdir()?;
        let net = match mode {
            Mode::Loopback => None,
            Mode::Netns => Some(Net::create(&(1..=n).collect::<Vec<_>>())?),
        };
        let mut cluster = Self {
            binary,
            mode,
            cluster_id: "chaos".to_owned(),
            initial_cluster: String::new(),
            node_args,
            nodes: BTreeMap::new(),
            root,
            net,
        };
        for id in 1..=n {
            cluster.prepare(id, true)?;
        }
        cluster.initial_cluster = cluster
            .nodes
            .values()
            .map(|n| format!("{}={}", n.id, n.advertise))
            .collect::<Vec<_>>()
            .join(",");
        for id in 1..=n {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    /// Registers node `id`: addresses, proxy, data directory (not started).
    fn prepare(&mut self, id: u64, bootstrap: bool) -> anyhow::Result<()> {
        let (listen, http, proxy_addr, ns_path) = match &mut self.net {
            None => (
                format!("127.0.0.1:{}", node::testkit::free_port()?),
                format!("127.0.0.1:{}", node::testkit::free_port()?),
                "127.0.0.1:0".to_owned(),
                None,
            ),
            Some(net) => {
                net.add_host(id)?;
                let ip = Net::ip(id);
                (
                    format!("{ip}:7100"),
                    format!("{ip}:8100"),
                    format!("{ip}:7200"),
                    Some(net.ns_path(id)),
                )
            }
        };
        let listener = proxy::bind(proxy_addr.parse()?, ns_path)?;
        let proxy = proxy::start(listener, listen.clone())?;
        let advertise = proxy.listen.to_string();
        let client = single_node_client(&listen)?;
        let node = NodeProc {
            id,
            grpc: listen.clone(),
            listen,
            advertise,
            http,
            data_dir: self.root.path().join(format!("node-{id}")),
            child: None,
            paused: false,
            bootstrap,
            proxy: Some(proxy),
            client,
        };
        self.nodes.insert(id, node);
        Ok(())
    }

    fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let log_path = self.root.path().join(format!("node-{id}.log"));
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow::anyhow!("no node {id}"))?;
        let mut command = match &self.net {
            None => std::process::Command::new(&self.binary),
            Some(net) => net.command(id, &self.binary),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        command
            .arg("serve")
            .args(["--node-id", &id.to_string()])
            .args(["--listen", &node.listen])
            .args(["--advertise", &node.advertise])
            .args(["--http-listen", &node.http])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--cluster-id", &self.cluster_id])
            .arg("--exit-with-parent")
            .args(&self.node_args)
            .env(
                "RUST_LOG",
                std::env::var("SWITCHBOARD_TEST_LOG")
                    .unwrap_or_else(|_| "warn,openraft=error".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if node.bootstrap {
            command.args(["--initial-cluster", &self.initial_cluster]);
        }
        node.child = Some(command.spawn()?);
        node.paused = false;
        Ok(())
    }

    pub fn root(&self) -> &std::path::Path {
        self.root.path()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.grpc.clone()).collect()
    }

    pub fn client_of(&self, id: u64) -> Option<Client> {
        self.nodes.get(&id).map(|n| n.client.clone())
    }

    fn pid(&self, id: u64) -> anyhow::Result<Pid> {
        let child = self
            .nodes
            .get(&id)
            .and_then(|n| n.child.as_ref())
            .ok_or_else(|| anyhow::anyhow!("node {id} is not running"))?;
        Ok(Pid::from_raw(i32::try_from(child.id())?))
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
        node.paused = false;
        Ok(())
    }

    /// Starts node `id` again on its data directory.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let running = self.nodes.get_mut(&id).is_some_and(NodeProc::is_running);
        if running {
            return Ok(());
        }
        self.spawn(id)
    }

    pub fn pause(&mut self, id: u64) -> anyhow::Result<()> {
        kill(self.pid(id)?, Signal::SIGSTOP)?;
        if let Some(node) = self.nodes.get_mut(&id) {
            node.paused = true;
        }
        Ok(())
    }

    pub fn resume(&mut self, id: u64) -> anyhow::Result<()> {
        if let Ok(pid) = self.pid(id) {
            kill(pid, Signal::SIGCONT)?;
        }
        if let Some(node) = self.nodes.get_mut(&id) {
            node.paused = false;
        }
        Ok(())
    }

    /// Kills node `id`, wipes its data directory and starts it fresh without
    /// `--initial-cluster`: it waits to be added back.
    pub fn wipe_and_start_fresh(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill(id)?;
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow::anyhow!("no node {id}"))?;
        if node.data_dir.exists() {
            std::fs::remove_dir_all(&node.data_dir)?;
        }
        node.bootstrap = false;
        self.spawn(id)
    }

    /// Node `id`'s view of the cluster (one attempt, short timeout).
    pub async fn status(&self, id: u64) -> anyhow::Result<v1::StatusResponse> {
        let client = self
            .client_of(id)
            .ok_or_else(|| anyhow::anyhow!("no node {id}"))?;
        Ok(client.status(v1::StatusRequest {}).await?)
    }

    /// Statuses of every node that answered.
    pub async fn statuses(&self) -> BTreeMap<u64, v1::StatusResponse> {
        let asks = self
            .nodes
            .keys()
            .map(|id| async move { (*id, self.status(*id).await) });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .filter_map(|(id, s)| s.ok().map(|s| (id, s)))
            .collect()
    }

    /// The node that says it leads (highest term wins), if any answered so.
    pub async fn leader(&self) -> Option<u64> {
        self.statuses()
            .await
            .into_values()
            .filter(|s| s.leader_id == Some(s.node_id))
            .max_by_key(|s| s.term)
            .map(|s| s.node_id)
    }

    pub fn http(&self, id: u64) -> Option<String> {
        self.nodes.get(&id).map(|n| n.http.clone())
    }
}

impl Drop for DrillCluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            node.proxy = None;
        }
    }
}
