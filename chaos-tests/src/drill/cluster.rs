//! The drill's cluster: real `switchboard serve` processes, on loopback or each in its own
//! network namespace, with a delay proxy in front of every node for its peers; or the
//! containers of a Docker Compose project (`deploy/compose/`). Like
//! `harness::ProcessCluster`, generalised: processes can be paused, nodes can leave and
//! rejoin with a wiped data directory, and in namespace mode faults are real network faults.
//! Everything it started is stopped and removed when it drops (also on panic); nodes run with
//! `--exit-with-parent`, so they stop even when the drill is killed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use client::{Client, ClientConfig, TlsConfig};
use harness::ServeCommand;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use proto::v1;

use super::clock::ClockControl;
use crate::compose::{Attachment, Compose};
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
    /// The containers of a compose file (`--compose-file`): container faults (Docker).
    Compose,
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
    /// Compose mode: the node's container.
    container: Option<String>,
    /// Compose mode: the networks the container was cut from, to connect it back.
    pub detached: Vec<Attachment>,
    /// The fault shim's control file when the node runs with it preloaded (disk faults).
    pub shim_control: Option<PathBuf>,
    /// Whether the data directory is a tmpfs of its own (the disk-full fault fills it).
    pub tmpfs: bool,
}

impl NodeProc {
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }
}

/// How the drill's clients reach the cluster: endpoints, and where to connect for the
/// addresses nodes advertise to each other (compose mode: `node2:7101` is not a name the host
/// resolves).
#[derive(Debug, Clone, Default)]
pub struct Reach {
    pub endpoints: Vec<String>,
    pub resolve: Vec<(String, String)>,
    /// TLS towards the nodes (the cluster's CA); `None` when they run `--insecure`.
    pub tls: Option<TlsConfig>,
    /// The admin bearer token the drill's clients send; `None` when the nodes run `--insecure`.
    pub token: Option<String>,
}

impl Reach {
    /// The one client configuration of a drill's (or bench's) cluster: every client of a
    /// drill is built from it, so that what a client needs to be let in (TLS, credentials)
    /// is decided here. Callers change timeouts and retries with `..reach.client_config()`.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            endpoints: self.endpoints.clone(),
            resolve: self.resolve.clone(),
            tls: self.tls.clone(),
            token: self.token.as_deref().map(client::BearerToken::new),
            ..ClientConfig::default()
        }
    }
}

/// What the disk faults need from the cluster, decided before the nodes start.
#[derive(Debug, Clone, Default)]
pub struct DiskSetup {
    /// Run every node with this fault shim preloaded (`LD_PRELOAD`), each with a control file.
    pub shim: Option<PathBuf>,
    /// Give every node a tmpfs of this many MiB as its data directory (root only).
    pub tmpfs_mib: Option<u64>,
}

#[derive(Debug)]
pub struct DrillCluster {
    binary: PathBuf,
    disk: DiskSetup,
    pub mode: Mode,
    cluster_id: String,
    initial_cluster: String,
    node_args: Vec<String>,
    pub nodes: BTreeMap<u64, NodeProc>,
    root: tempfile::TempDir,
    pub net: Option<Net>,
    pub compose: Option<Compose>,
    /// Per-node wall-clock offsets, when the drill injects clock faults.
    pub clock: Option<ClockControl>,
    /// The certificates of the nodes (`certs init` layout); `None` under `--insecure`.
    certs_dir: Option<PathBuf>,
    /// How clients reach the nodes over TLS; `None` under `--insecure`.
    tls: Option<TlsConfig>,
    /// The token key set the nodes verify with (`token keygen` layout); `None` under
    /// `--insecure` and in compose mode (the compose file brings its own).
    tokens_dir: Option<PathBuf>,
    /// The admin token every drill client sends; `None` under `--insecure`.
    token: Option<String>,
}

/// A client that talks to `endpoint` only, one attempt per call.
pub fn single_node_client(
    endpoint: &str,
    tls: Option<&TlsConfig>,
    token: Option<&str>,
) -> anyhow::Result<Client> {
    let reach = Reach {
        endpoints: vec![endpoint.to_owned()],
        resolve: Vec::new(),
        tls: tls.cloned(),
        token: token.map(str::to_owned),
    };
    Ok(Client::new(ClientConfig {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(1500),
        call_deadline: Duration::from_millis(2000),
        retries_max: 0,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        ..reach.client_config()
    })?)
}

/// Cluster id of drill clusters (their certificates are bound to it).
pub const DRILL_CLUSTER_ID: &str = "chaos";

/// Creates the CA and node certificates of a drill cluster of nodes `ids` in `dir`, valid for
/// loopback and, in namespace mode, every node's namespace address.
pub fn make_certs(
    binary: &std::path::Path,
    dir: &std::path::Path,
    ids: &[u64],
    namespaces: bool,
) -> anyhow::Result<TlsConfig> {
    let nodes = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let mut args: Vec<std::ffi::OsString> = vec![
        "init".into(),
        "--dir".into(),
        dir.into(),
        "--nodes".into(),
        nodes.into(),
        "--cluster-id".into(),
        DRILL_CLUSTER_ID.into(),
        "--days".into(),
        "2".into(),
    ];
    if namespaces {
        let hosts = ids
            .iter()
            .map(|id| Net::ip(*id))
            .collect::<Vec<_>>()
            .join(",");
        args.push("--hosts".into());
        args.push(hosts.into());
    }
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    harness::run_certs(binary, &args)?;
    Ok(TlsConfig::from_ca_file(dir.join("ca.pem"))?)
}

/// Makes a token key set in `dir` and an admin token of it (the drill's clients' token).
pub fn make_tokens(binary: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<String> {
    let run = |args: &[&std::ffi::OsStr]| -> anyhow::Result<String> {
        let output = std::process::Command::new(binary).args(args).output()?;
        anyhow::ensure!(
            output.status.success(),
            "switchboard {:?} failed: {}",
            args,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    run(&[
        "token".as_ref(),
        "keygen".as_ref(),
        "--dir".as_ref(),
        dir.as_os_str(),
    ])?;
    issue_admin_token(binary, &dir.join("token-signing-k1.pem"))
}

/// An admin token (every tenant, one day) signed with the key at `key`.
pub fn issue_admin_token(
    binary: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<String> {
    let output = std::process::Command::new(binary)
        .args([
            "token",
            "issue",
            "--tenant",
            "*",
            "--role",
            "admin",
            "--subject",
            "chaos-drill",
        ])
        .args(["--ttl", "24h", "--key"])
        .arg(key)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "switchboard token issue failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A kept drill directory (evidence of a failed run) holds this file; sweeps leave it alone.
const KEPT_MARKER: &str = "KEPT";

/// Removes temp directories of drills whose process is gone, unless kept as evidence.
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
            && !entry.path().join(KEPT_MARKER).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl DrillCluster {
    /// Starts `n` voters (ids 1..=n) that bootstrap themselves; with `libfaketime`, each under
    /// its own wall-clock offset (zero until a clock fault moves it).
    pub async fn start(
        binary: PathBuf,
        mode: Mode,
        n: u64,
        node_args: Vec<String>,
        libfaketime: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        Self::start_with_disks(
            binary,
            mode,
            n,
            node_args,
            DiskSetup::default(),
            libfaketime,
        )
        .await
    }

    /// Like [`Self::start`], with the fault shim and/or a tmpfs per node for disk faults.
    pub async fn start_with_disks(
        binary: PathBuf,
        mode: Mode,
        n: u64,
        node_args: Vec<String>,
        disk: DiskSetup,
        libfaketime: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        sweep_temp_dirs();
        let root = tempfile::Builder::new()
            .prefix(&format!("{TEMP_PREFIX}{}-", std::process::id()))
            .tempdir()?;
        let net = match mode {
            Mode::Loopback => None,
            Mode::Netns => Some(Net::create(&(1..=n).collect::<Vec<_>>())?),
            Mode::Compose => anyhow::bail!("compose clusters start with start_compose"),
        };
        let clock = match libfaketime {
            Some(library) => Some(ClockControl::new(library, &root.path().join("clock"))?),
            None => None,
        };
        let (certs_dir, tls) = if node_args.iter().any(|a| a == "--insecure") {
            (None, None)
        } else {
            let dir = root.path().join("certs");
            let ids: Vec<u64> = (1..=n).collect();
            let tls = make_certs(&binary, &dir, &ids, net.is_some())?;
            (Some(dir), Some(tls))
        };
        let (tokens_dir, token) = if certs_dir.is_some() {
            let dir = root.path().join("tokens");
            let token = make_tokens(&binary, &dir)?;
            (Some(dir), Some(token))
        } else {
            (None, None)
        };
        let mut cluster = Self {
            certs_dir,
            tls,
            tokens_dir,
            token,
            binary,
            disk,
            mode,
            cluster_id: DRILL_CLUSTER_ID.to_owned(),
            initial_cluster: String::new(),
            node_args,
            nodes: BTreeMap::new(),
            root,
            net,
            compose: None,
            clock,
        };
        for id in 1..=n {
            cluster.prepare(id, true)?;
        }
        cluster.initial_cluster =
            harness::initial_cluster(cluster.nodes.values().map(|n| (n.id, &n.advertise)));
        for id in 1..=n {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    /// Brings the compose file up as a project of its own; its `nodeN` services are the nodes.
    pub async fn start_compose(
        file: &std::path::Path,
        image: Option<&str>,
    ) -> anyhow::Result<Self> {
        sweep_temp_dirs();
        let root = tempfile::Builder::new()
            .prefix(&format!("{TEMP_PREFIX}{}-", std::process::id()))
            .tempdir()?;
        let compose = Compose::up(file, "sbdrill-", image).await?;
        // The compose file's `certs` step writes the cluster's CA beside it before any node
        // starts. Nodes are published on a private loopback address their certificates do not
        // list; every node certificate names `localhost`.
        let certs_dir = file
            .parent()
            .map(|dir| dir.join("certs"))
            .filter(|dir| dir.join("ca.pem").exists());
        let tls = match &certs_dir {
            Some(dir) => {
                let mut tls = TlsConfig::from_ca_file(dir.join("ca.pem"))?;
                tls.server_name = Some("localhost".to_owned());
                Some(tls)
            }
            None => None,
        };
        // The same step writes the cluster's token key set and signing key there too.
        let token = match &certs_dir {
            Some(dir) => Some(issue_admin_token(
                &crate::switchboard_binary()?,
                &dir.join("tokens").join("token-signing-k1.pem"),
            )?),
            None => None,
        };
        let services = compose.services().await?;
        let mut nodes = BTreeMap::new();
        for service in services.into_values() {
            let client = single_node_client(&service.published, tls.as_ref(), token.as_deref())?;
            nodes.insert(
                service.node_id,
                NodeProc {
                    id: service.node_id,
                    grpc: service.published.clone(),
                    listen: service.published,
                    advertise: service.advertise,
                    http: String::new(),
                    data_dir: PathBuf::new(),
                    child: None,
                    paused: false,
                    bootstrap: true,
                    proxy: None,
                    client,
                    container: Some(service.container),
                    detached: Vec::new(),
                    shim_control: None,
                    tmpfs: false,
                },
            );
        }
        Ok(Self {
            binary: PathBuf::new(),
            disk: DiskSetup::default(),
            mode: Mode::Compose,
            cluster_id: String::new(),
            initial_cluster: String::new(),
            node_args: Vec::new(),
            nodes,
            root,
            net: None,
            compose: Some(compose),
            clock: None,
            certs_dir,
            tls,
            tokens_dir: None,
            token,
        })
    }

    /// The node's container, in compose mode.
    fn container(&self, id: u64) -> Option<(&Compose, &str)> {
        let node = self.nodes.get(&id)?;
        Some((self.compose.as_ref()?, node.container.as_deref()?))
    }

    /// Registers node `id`: addresses, proxy, data directory (not started).
    fn prepare(&mut self, id: u64, bootstrap: bool) -> anyhow::Result<()> {
        let (listen, http, proxy_addr, ns_path) = match &mut self.net {
            None => (
                format!("127.0.0.1:{}", harness::free_port()?),
                format!("127.0.0.1:{}", harness::free_port()?),
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
        let client = single_node_client(&listen, self.tls.as_ref(), self.token.as_deref())?;
        let data_dir = self.root.path().join(format!("node-{id}"));
        let tmpfs = match self.disk.tmpfs_mib {
            Some(mib) => {
                super::disk::mount_tmpfs(&data_dir, mib)?;
                true
            }
            None => false,
        };
        let shim_control = match &self.disk.shim {
            Some(_) => {
                let path = self.root.path().join(format!("node-{id}.shim"));
                super::disk::ShimControl::Ok.write(&path)?;
                Some(path)
            }
            None => None,
        };
        let node = NodeProc {
            id,
            grpc: listen.clone(),
            listen,
            advertise,
            http,
            data_dir,
            child: None,
            paused: false,
            bootstrap,
            proxy: Some(proxy),
            client,
            container: None,
            detached: Vec::new(),
            shim_control,
            tmpfs,
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
        let mut serve = ServeCommand::new(id, &node.listen, &node.data_dir)
            .advertise(&node.advertise)
            .http_listen(&node.http)
            .cluster_id(&self.cluster_id)
            .exit_with_parent();
        if let Some(dir) = &self.certs_dir {
            serve = serve.extra_args([std::ffi::OsStr::new("--tls-dir"), dir.as_os_str()]);
        }
        if let Some(dir) = &self.tokens_dir {
            serve = serve.token_keys(dir.join("token-keys.json"));
        }
        serve = serve
            .extra_args(&self.node_args)
            .log_filter(harness::test_log_filter());
        if node.bootstrap {
            serve = serve.initial_cluster(&self.initial_cluster);
        }
        // Both the fault shim and libfaketime are preloaded when both are in use.
        let mut preload: Vec<String> = Vec::new();
        if let (Some(shim), Some(control)) = (&self.disk.shim, &node.shim_control) {
            preload.push(shim.display().to_string());
            serve = serve.env(super::disk::SHIM_CONTROL_ENV, control);
        }
        if let Some(clock) = &self.clock {
            for (key, value) in clock.env(id)? {
                if key == "LD_PRELOAD" {
                    preload.push(value);
                } else {
                    serve = serve.env(key, value);
                }
            }
        }
        if !preload.is_empty() {
            serve = serve.env("LD_PRELOAD", preload.join(":"));
        }
        serve
            .configure(&mut command)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        node.child = Some(command.spawn()?);
        node.paused = false;
        Ok(())
    }

    pub fn root(&self) -> &std::path::Path {
        self.root.path()
    }

    /// Keeps the drill's directory (node logs and data) after the drill, for a failed run;
    /// compose mode also keeps the containers' logs there.
    pub async fn keep_evidence(&mut self) -> PathBuf {
        self.root.disable_cleanup(true);
        // Later drills sweep the directories of dead drills; not this one (a soak runs many).
        let _ = std::fs::write(
            self.root.path().join(KEPT_MARKER),
            b"evidence of a failed drill\n",
        );
        if let Some(compose) = &self.compose {
            match compose.run(&["logs", "--no-color", "-t"]).await {
                Ok(logs) => {
                    let _ = std::fs::write(self.root.path().join("compose.log"), logs);
                }
                Err(e) => println!("   compose logs: {e}"),
            }
        }
        self.root.path().to_path_buf()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.grpc.clone()).collect()
    }

    pub fn reach(&self) -> Reach {
        Reach {
            endpoints: self.endpoints(),
            resolve: self
                .nodes
                .values()
                .filter(|n| n.advertise != n.grpc && self.mode == Mode::Compose)
                .map(|n| (n.advertise.clone(), n.grpc.clone()))
                .collect(),
            tls: self.tls.clone(),
            token: self.token.clone(),
        }
    }

    /// How clients reach the nodes over TLS; `None` under `--insecure`.
    pub fn tls(&self) -> Option<&TlsConfig> {
        self.tls.as_ref()
    }

    /// The admin token the drill's clients send; `None` under `--insecure`.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The directory of the nodes' certificates; `None` under `--insecure`.
    pub fn certs_dir(&self) -> Option<&std::path::Path> {
        self.certs_dir.as_deref()
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
    pub async fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        if let Some((compose, container)) = self.container(id) {
            return compose.kill(container).await;
        }
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
    pub async fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        if let Some((compose, container)) = self.container(id) {
            return compose.start(container).await;
        }
        let running = self.nodes.get_mut(&id).is_some_and(NodeProc::is_running);
        if running {
            return Ok(());
        }
        self.spawn(id)
    }

    pub async fn pause(&mut self, id: u64) -> anyhow::Result<()> {
        if let Some((compose, container)) = self.container(id) {
            compose.pause(container).await?;
        } else {
            kill(self.pid(id)?, Signal::SIGSTOP)?;
        }
        if let Some(node) = self.nodes.get_mut(&id) {
            node.paused = true;
        }
        Ok(())
    }

    pub async fn resume(&mut self, id: u64) -> anyhow::Result<()> {
        if let Some((compose, container)) = self.container(id) {
            compose.unpause(container).await?;
        } else if let Ok(pid) = self.pid(id) {
            kill(pid, Signal::SIGCONT)?;
        }
        if let Some(node) = self.nodes.get_mut(&id) {
            node.paused = false;
        }
        Ok(())
    }

    /// The `switchboard` binary the nodes run.
    pub fn binary(&self) -> &std::path::Path {
        &self.binary
    }

    /// Starts node `id` on a directory `switchboard node reset --rejoin` wiped, without
    /// `--initial-cluster` (it waits to be added back; its identity forbids bootstrapping anyway).
    pub fn start_rejoining(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow::anyhow!("no node {id}"))?;
        node.bootstrap = false;
        self.spawn(id)
    }

    /// Kills node `id`, wipes its data directory and starts it fresh without
    /// `--initial-cluster`: it waits to be added back.
    pub async fn wipe_and_start_fresh(&mut self, id: u64) -> anyhow::Result<()> {
        if self.mode == Mode::Compose {
            anyhow::bail!("wiping a node is not supported in compose mode");
        }
        self.kill(id).await?;
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow::anyhow!("no node {id}"))?;
        if node.tmpfs {
            // The mount point stays; only what is in it goes.
            for entry in std::fs::read_dir(&node.data_dir)? {
                let path = entry?.path();
                if path.is_dir() {
                    std::fs::remove_dir_all(&path)?;
                } else {
                    std::fs::remove_file(&path)?;
                }
            }
        } else if node.data_dir.exists() {
            std::fs::remove_dir_all(&node.data_dir)?;
        }
        node.bootstrap = false;
        self.spawn(id)
    }

    /// Compose mode: cuts node `id`'s container from every network it is on.
    pub async fn disconnect(&mut self, id: u64) -> anyhow::Result<()> {
        let (compose, container) = self
            .container(id)
            .ok_or_else(|| anyhow::anyhow!("disconnect needs --mode compose"))?;
        let detached = compose.disconnect(container).await?;
        if let Some(node) = self.nodes.get_mut(&id) {
            node.detached.extend(detached);
        }
        Ok(())
    }

    /// Compose mode: connects node `id`'s container back to the networks it was cut from.
    pub async fn reconnect(&mut self, id: u64) -> anyhow::Result<()> {
        let detached = match self.nodes.get_mut(&id) {
            Some(node) => std::mem::take(&mut node.detached),
            None => return Ok(()),
        };
        if detached.is_empty() {
            return Ok(());
        }
        let (compose, container) = self
            .container(id)
            .ok_or_else(|| anyhow::anyhow!("reconnect needs --mode compose"))?;
        compose.connect(container, &detached).await
    }

    /// Compose mode: `docker restart` (SIGTERM, then start) node `id`'s container and wait
    /// until its health check passes.
    pub async fn restart_gracefully(
        &mut self,
        id: u64,
        healthy_within: Duration,
    ) -> anyhow::Result<()> {
        let (compose, container) = self
            .container(id)
            .ok_or_else(|| anyhow::anyhow!("rolling restart needs --mode compose"))?;
        compose.restart(container).await?;
        compose.wait_healthy(container, healthy_within).await
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

    /// Node `id`'s data directory (processes only).
    pub fn data_dir(&self, id: u64) -> Option<PathBuf> {
        self.nodes
            .get(&id)
            .filter(|n| n.container.is_none())
            .map(|n| n.data_dir.clone())
    }

    /// The file node `id`'s stdout and stderr are appended to.
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.root.path().join(format!("node-{id}.log"))
    }

    /// How node `id`'s process ended, once it has (without waiting); `None` while it runs or
    /// when it was never started.
    pub fn exit_status(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let child = self.nodes.get_mut(&id)?.child.as_mut()?;
        child.try_wait().ok().flatten()
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
            if node.tmpfs {
                super::disk::unmount_tmpfs(&node.data_dir);
            }
        }
    }
}
