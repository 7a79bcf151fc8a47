//! A cluster of real `switchboard serve` processes on loopback, for integration tests, drills and
//! measurements. Every process is killed and every directory removed when the cluster drops,
//! also when a test fails.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{Agreement, Error, ServeCommand};

/// How often `stop` looks whether the node has exited.
const STOP_POLL: Duration = Duration::from_millis(20);

/// One node process and where it lives.
#[derive(Debug)]
pub struct ProcNode {
    pub id: u64,
    pub grpc: String,
    pub http: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
    extra_args: Vec<String>,
    /// Environment of the node's next start, beyond the inherited one (`set_env`).
    env: Vec<(String, String)>,
    /// Where the node's stderr goes from its next start (`capture_stderr`); else inherited.
    stderr_file: Option<PathBuf>,
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
    /// The token key set nodes verify with, when the cluster requires tokens
    /// ([`ProcessCluster::start_authenticated`]); the signing key lies next to it.
    tokens: Option<PathBuf>,
    /// An admin token of the cluster's key (for its own status and leader waits).
    admin_token: Option<String>,
    cluster_id: String,
    initial_cluster: String,
    pub nodes: BTreeMap<u64, ProcNode>,
    root: tempfile::TempDir,
}

/// A free loopback port (bound then released; the tiny race is acceptable for tests).
pub fn free_port() -> Result<u16, Error> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(Error::FreePort)
}

fn loopback_addr() -> Result<String, Error> {
    Ok(format!("127.0.0.1:{}", free_port()?))
}

/// Attempts at starting a cluster whose nodes all bind their ports.
const START_ATTEMPTS: u32 = 3;
/// How long a started cluster's nodes may take to bind their ports before it is used as is.
const BIND_WAIT: Duration = Duration::from_secs(10);
const BIND_POLL: Duration = Duration::from_millis(20);

impl ProcessCluster {
    /// Starts `n` voters that bootstrap themselves; `extra_args` go to every `serve`.
    ///
    /// Ports are picked free and released before the nodes bind them, so another process may
    /// take one in between (many tests run at once). A node that exits before it binds makes
    /// the whole cluster start again on new ports, up to [`START_ATTEMPTS`] times: a cluster
    /// without its bootstrapping node would never elect a leader.
    pub fn start(binary: &Path, n: u64, extra_args: &[&str]) -> Result<Self, Error> {
        Self::start_with(binary, n, extra_args, false)
    }

    /// [`ProcessCluster::start`], with nodes that require bearer tokens: a key set is made in
    /// the cluster's directory, and [`ProcessCluster::token`] mints tokens for it.
    pub fn start_authenticated(binary: &Path, n: u64, extra_args: &[&str]) -> Result<Self, Error> {
        Self::start_with(binary, n, extra_args, true)
    }

    fn start_with(binary: &Path, n: u64, extra_args: &[&str], tokens: bool) -> Result<Self, Error> {
        let mut attempt = 1;
        loop {
            let mut cluster = Self::start_once(binary, n, extra_args, tokens)?;
            match cluster.wait_bound() {
                None => return Ok(cluster),
                Some(id) if attempt < START_ATTEMPTS => {
                    eprintln!(
                        "harness: node {id} exited while starting (a port taken meanwhile?); \
                         starting the cluster again on new ports"
                    );
                    attempt += 1;
                }
                Some(_) => return Ok(cluster),
            }
        }
    }

    /// Waits (bounded) until every node accepts connections on its gRPC port; returns the id
    /// of a node that exited instead.
    fn wait_bound(&mut self) -> Option<u64> {
        let deadline = Instant::now() + BIND_WAIT;
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            loop {
                let node = self.nodes.get_mut(&id)?;
                if node.exit_status().is_some() {
                    return Some(id);
                }
                let bound = node.grpc.parse().is_ok_and(|addr| {
                    std::net::TcpStream::connect_timeout(&addr, BIND_POLL).is_ok()
                });
                if bound || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(BIND_POLL);
            }
        }
        None
    }

    fn start_once(binary: &Path, n: u64, extra_args: &[&str], tokens: bool) -> Result<Self, Error> {
        let root = tempfile::Builder::new()
            .prefix("switchboard-cluster-")
            .tempdir()
            .map_err(Error::TempDir)?;
        let tokens = if tokens {
            let dir = root.path().join("tokens");
            run_tool(
                binary,
                &["token", "keygen", "--dir", &dir.to_string_lossy()],
            )?;
            Some(dir)
        } else {
            None
        };
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            nodes.insert(
                id,
                ProcNode {
                    id,
                    grpc: loopback_addr()?,
                    http: loopback_addr()?,
                    data_dir: root.path().join(format!("node-{id}")),
                    child: None,
                    extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
                    env: Vec::new(),
                    stderr_file: None,
                },
            );
        }
        let initial_cluster =
            crate::initial_cluster(nodes.values().map(|n| (n.id, n.grpc.as_str())));
        let mut cluster = Self {
            binary: binary.to_path_buf(),
            tokens,
            admin_token: None,
            cluster_id: "harness".to_owned(),
            initial_cluster,
            nodes,
            root,
        };
        if cluster.tokens.is_some() {
            cluster.admin_token = Some(cluster.token("harness", "*", "admin")?);
        }
        let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
        for id in ids {
            cluster.restart(id)?;
        }
        Ok(cluster)
    }

    /// A bearer token for `tenant` and `role` (`agent`, `viewer`, `admin`), signed with the
    /// cluster's key, of the given subject; only for a cluster from
    /// [`ProcessCluster::start_authenticated`].
    pub fn token(&self, subject: &str, tenant: &str, role: &str) -> Result<String, Error> {
        let dir = self.tokens.as_ref().ok_or(Error::NoTokens)?;
        let key = dir.join("token-signing-k1.pem");
        let out = run_tool(
            &self.binary,
            &[
                "token",
                "issue",
                "--key",
                &key.to_string_lossy(),
                "--tenant",
                tenant,
                "--role",
                role,
                "--subject",
                subject,
                "--ttl",
                "1h",
            ],
        )?;
        Ok(out.trim().to_owned())
    }

    /// The admin token the cluster uses for its own status requests, when tokens are required.
    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref()
    }

    /// The directory of the token key set and signing key, when tokens are required.
    pub fn token_dir(&self) -> Option<&Path> {
        self.tokens.as_deref()
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
    pub fn start_extra(&mut self, id: u64, extra_args: &[&str]) -> Result<&ProcNode, Error> {
        let node = ProcNode {
            id,
            grpc: loopback_addr()?,
            http: loopback_addr()?,
            data_dir: self.root.path().join(format!("node-{id}")),
            child: None,
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
            env: Vec::new(),
            stderr_file: None,
        };
        self.nodes.insert(id, node);
        self.spawn(id, false)?;
        self.nodes.get(&id).ok_or(Error::NoNode(id))
    }

    fn spawn(&mut self, id: u64, with_initial_cluster: bool) -> Result<(), Error> {
        let node = self.nodes.get_mut(&id).ok_or(Error::NoNode(id))?;
        let mut serve = ServeCommand::new(id, &node.grpc, &node.data_dir)
            .http_listen(&node.http)
            .cluster_id(&self.cluster_id)
            .insecure()
            .extra_args(&node.extra_args)
            .log_filter(crate::test_log_filter());
        if let Some(dir) = &self.tokens {
            serve = serve.token_keys(dir.join("token-keys.json"));
        }
        if with_initial_cluster {
            serve = serve.initial_cluster(&self.initial_cluster);
        }
        for (key, value) in &node.env {
            serve = serve.env(key, value);
        }
        let mut command = serve.command(&self.binary);
        command.stdin(Stdio::null());
        if let Some(path) = &node.stderr_file {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| Error::Spawn { id, source })?;
            command.stderr(file);
        }
        let child = command
            .spawn()
            .map_err(|source| Error::Spawn { id, source })?;
        node.child = Some(child);
        Ok(())
    }

    /// Sets an environment variable for node `id` from its next (re)start on.
    pub fn set_env(&mut self, id: u64, key: &str, value: &str) -> Result<(), Error> {
        let node = self.nodes.get_mut(&id).ok_or(Error::NoNode(id))?;
        node.env.retain(|(k, _)| k != key);
        node.env.push((key.to_owned(), value.to_owned()));
        Ok(())
    }

    /// From node `id`'s next (re)start on, appends its stderr to a file in the cluster's
    /// directory (returned), so that a test can read why it exited.
    pub fn capture_stderr(&mut self, id: u64) -> Result<PathBuf, Error> {
        let path = self.root.path().join(format!("node-{id}.stderr"));
        let node = self.nodes.get_mut(&id).ok_or(Error::NoNode(id))?;
        node.stderr_file = Some(path.clone());
        Ok(path)
    }

    /// Starts (or restarts) node `id` of the initial cluster.
    pub fn restart(&mut self, id: u64) -> Result<(), Error> {
        self.spawn(id, true)
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&mut self, id: u64) -> Result<(), Error> {
        let node = self.nodes.get_mut(&id).ok_or(Error::NoNode(id))?;
        if let Some(mut child) = node.child.take() {
            child
                .kill()
                .and_then(|()| child.wait())
                .map_err(|source| Error::Kill { id, source })?;
        }
        Ok(())
    }

    /// SIGTERMs node `id` and waits (bounded) for it to exit; returns its exit status.
    pub fn stop(&mut self, id: u64, wait: Duration) -> Result<std::process::ExitStatus, Error> {
        let node = self.nodes.get_mut(&id).ok_or(Error::NoNode(id))?;
        let mut child = node.child.take().ok_or(Error::NotRunning(id))?;
        let pid = i32::try_from(child.id()).expect("Linux pids fit in an i32 (at most 2^22)");
        kill(Pid::from_raw(pid), Signal::SIGTERM).map_err(|errno| Error::Signal {
            id,
            source: errno.into(),
        })?;
        let started = Instant::now();
        loop {
            let exited = child
                .try_wait()
                .map_err(|source| Error::Wait { id, source })?;
            if let Some(status) = exited {
                return Ok(status);
            }
            if started.elapsed() > wait {
                child
                    .kill()
                    .and_then(|()| child.wait())
                    .map_err(|source| Error::Kill { id, source })?;
                return Err(Error::StopTimeout { id, wait });
            }
            std::thread::sleep(STOP_POLL);
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
    pub async fn status(&self, id: u64) -> Result<proto::v1::StatusResponse, Error> {
        let node = self.nodes.get(&id).ok_or(Error::NoNode(id))?;
        crate::status_as(&node.grpc, self.admin_token.as_deref()).await
    }

    /// Waits until every running node agrees on one leader, a running node; returns its id.
    pub async fn wait_for_leader(&mut self, within: Duration) -> Result<u64, Error> {
        let running: Vec<String> = self
            .nodes
            .values_mut()
            .filter_map(|n| n.is_running().then(|| n.grpc.clone()))
            .collect();
        let leader = crate::wait_for_leader_as(
            &running,
            within,
            Agreement::Unanimous,
            self.admin_token.as_deref(),
        )
        .await?;
        Ok(leader.id)
    }
}

/// Runs `binary args...` to completion; its stdout, or an error with its stderr.
fn run_tool(binary: &Path, args: &[&str]) -> Result<String, Error> {
    let output = std::process::Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Tool {
            command: args.join(" "),
            detail: source.to_string(),
        })?;
    if !output.status.success() {
        return Err(Error::Tool {
            command: args.join(" "),
            detail: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
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
