//! A cluster of real `switchboard serve` processes on loopback, for integration tests, drills and
//! measurements. Every process is killed and every directory removed when the cluster drops,
//! also when a test fails.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use client::{ClientConfig, TlsConfig};

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
    cluster_id: String,
    initial_cluster: String,
    pub nodes: BTreeMap<u64, ProcNode>,
    /// Where `switchboard certs init` wrote the cluster's CA and node certificates; `None`
    /// when the nodes run `--insecure`.
    certs_dir: Option<PathBuf>,
    /// How clients of this cluster speak TLS (trusting its CA); `None` under `--insecure`.
    tls: Option<TlsConfig>,
    /// The token key set directory (`token keygen` layout, signing key `k1` included); `None`
    /// when the nodes run `--insecure` (no authentication).
    tokens: Option<PathBuf>,
    /// An admin token of the cluster's key, for its own status requests and for
    /// [`ProcessCluster::client_config`].
    admin_token: Option<String>,
    root: tempfile::TempDir,
}

/// A raw gRPC channel that sends the cluster's admin token with every request
/// ([`ProcessCluster::channel`]); generated clients take it like a `Channel`.
pub type AuthChannel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to every request (nothing under `--insecure`).
#[derive(Debug, Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    /// Sends `token` (nothing when `None`, or when it is not a header value).
    pub fn new(token: Option<&str>) -> Self {
        Self(token.and_then(|t| client::BearerToken::new(t).header_value()))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The cluster id of every [`ProcessCluster`].
pub const HARNESS_CLUSTER_ID: &str = "harness";

/// Runs `binary certs ARGS` (creating certificates), failing with its stderr.
pub fn run_certs(binary: &Path, args: &[&OsStr]) -> Result<(), Error> {
    let output = Command::new(binary)
        .arg("certs")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(Error::Certs)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Certs(std::io::Error::other(format!(
            "switchboard certs {:?} failed ({}): {}",
            args,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))))
    }
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
    /// The nodes speak TLS with certificates that `switchboard certs init` makes in the
    /// cluster's directory, unless `extra_args` holds `--insecure`.
    ///
    /// Ports are picked free and released before the nodes bind them, so another process may
    /// take one in between (many tests run at once). A node that exits before it binds makes
    /// the whole cluster start again on new ports, up to [`START_ATTEMPTS`] times: a cluster
    /// without its bootstrapping node would never elect a leader.
    pub fn start(binary: &Path, n: u64, extra_args: &[&str]) -> Result<Self, Error> {
        let mut attempt = 1;
        loop {
            let mut cluster = Self::start_once(binary, n, extra_args)?;
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

    fn start_once(binary: &Path, n: u64, extra_args: &[&str]) -> Result<Self, Error> {
        let root = tempfile::Builder::new()
            .prefix("switchboard-cluster-")
            .tempdir()
            .map_err(Error::TempDir)?;
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
        let insecure = extra_args.contains(&"--insecure");
        let tokens = if insecure {
            None
        } else {
            let dir = root.path().join("tokens");
            run_tool(
                binary,
                &["token", "keygen", "--dir", &dir.to_string_lossy()],
            )?;
            Some(dir)
        };
        let (certs_dir, tls) = if insecure {
            (None, None)
        } else {
            let dir = root.path().join("certs");
            let ids = (1..=n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
            run_certs(
                binary,
                &[
                    OsStr::new("init"),
                    OsStr::new("--dir"),
                    dir.as_os_str(),
                    OsStr::new("--nodes"),
                    OsStr::new(&ids),
                    OsStr::new("--cluster-id"),
                    OsStr::new(HARNESS_CLUSTER_ID),
                ],
            )?;
            let tls = TlsConfig::from_ca_file(dir.join("ca.pem")).map_err(Error::Certs)?;
            (Some(dir), Some(tls))
        };
        let mut cluster = Self {
            binary: binary.to_path_buf(),
            cluster_id: HARNESS_CLUSTER_ID.to_owned(),
            initial_cluster,
            nodes,
            certs_dir,
            tls,
            tokens,
            admin_token: None,
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

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The directory of the cluster's CA and node certificates (`certs init` layout); `None`
    /// under `--insecure`.
    pub fn certs_dir(&self) -> Option<&Path> {
        self.certs_dir.as_deref()
    }

    /// How a client of this cluster speaks TLS; `None` under `--insecure`.
    pub fn tls(&self) -> Option<&TlsConfig> {
        self.tls.as_ref()
    }

    /// The one client configuration of this cluster, for every test, drill and bench: every
    /// node's endpoint and the TLS (and, later, credentials) to reach them. Callers change
    /// timeouts with `..cluster.client_config()`.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            endpoints: self.endpoints(),
            tls: self.tls.clone(),
            token: self.admin_token.as_deref().map(client::BearerToken::new),
            ..ClientConfig::default()
        }
    }

    /// [`ProcessCluster::client_config`] with another bearer token (another tenant or role).
    pub fn client_config_with_token(&self, token: &str) -> ClientConfig {
        ClientConfig {
            token: Some(client::BearerToken::new(token)),
            ..self.client_config()
        }
    }

    /// A bearer token for `tenant` and `role` (`agent`, `viewer`, `admin`), of the given
    /// subject, signed with the cluster's key (valid one hour).
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

    /// The admin token the cluster uses itself; `None` under `--insecure`.
    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref()
    }

    /// The directory of the token key set and signing key; `None` under `--insecure`.
    pub fn token_dir(&self) -> Option<&Path> {
        self.tokens.as_deref()
    }

    /// A lazily connecting raw gRPC channel to node `id`, with the cluster's TLS, for tests
    /// that speak the wire contract without the client library.
    pub fn channel(&self, id: u64) -> Result<AuthChannel, Error> {
        self.channel_to(&self.grpc(id))
    }

    /// [`ProcessCluster::channel`] to any address (a node's, or one the cluster names).
    pub fn channel_to(&self, addr: &str) -> Result<AuthChannel, Error> {
        let channel = client::endpoint(addr, self.tls.as_ref())
            .map(|e| e.connect_lazy())
            .map_err(|source| Error::Endpoint {
                endpoint: addr.to_owned(),
                source,
            })?;
        let bearer = Bearer::new(self.admin_token.as_deref());
        Ok(tonic::service::interceptor::InterceptedService::new(
            channel, bearer,
        ))
    }

    /// Issues node `id` a certificate from the cluster's CA (a node added later, or a rotated
    /// certificate with `force`).
    pub fn issue_cert(&self, id: u64, force: bool) -> Result<(), Error> {
        let Some(dir) = &self.certs_dir else {
            return Ok(());
        };
        let node_id = id.to_string();
        let mut args = vec![
            OsStr::new("node"),
            OsStr::new("--dir"),
            dir.as_os_str(),
            OsStr::new("--node-id"),
            OsStr::new(&node_id),
            OsStr::new("--cluster-id"),
            OsStr::new(&self.cluster_id),
        ];
        if force {
            args.push(OsStr::new("--force"));
        }
        run_certs(&self.binary, &args)
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
        if !self.nodes.contains_key(&id) {
            self.issue_cert(id, false)?;
        }
        self.nodes.insert(id, node);
        self.spawn(id, false)?;
        self.nodes.get(&id).ok_or(Error::NoNode(id))
    }

    fn spawn(&mut self, id: u64, with_initial_cluster: bool) -> Result<(), Error> {
        let node = self.nodes.get_mut(&id).ok_or(Error::NoNode(id))?;
        let mut serve = ServeCommand::new(id, &node.grpc, &node.data_dir)
            .http_listen(&node.http)
            .cluster_id(&self.cluster_id);
        if let Some(dir) = &self.certs_dir {
            serve = serve.extra_args([OsStr::new("--tls-dir"), dir.as_os_str()]);
        }
        if let Some(dir) = &self.tokens {
            serve = serve.token_keys(dir.join("token-keys.json"));
        }
        serve = serve
            .extra_args(&node.extra_args)
            .log_filter(crate::test_log_filter());
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
        crate::status(&node.grpc, self.tls.as_ref(), self.admin_token.as_deref()).await
    }

    /// Waits until every running node agrees on one leader, a running node; returns its id.
    pub async fn wait_for_leader(&mut self, within: Duration) -> Result<u64, Error> {
        let running: Vec<String> = self
            .nodes
            .values_mut()
            .filter_map(|n| n.is_running().then(|| n.grpc.clone()))
            .collect();
        let leader = crate::wait_for_leader(
            &running,
            self.tls.as_ref(),
            self.admin_token.as_deref(),
            within,
            Agreement::Unanimous,
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
