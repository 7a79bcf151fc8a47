//! `switchboard dev`: a local cluster of N `switchboard serve` child processes on loopback.
//! Prints the endpoints once a leader is elected. A node that dies (say, a leader killed to
//! rehearse a failover) is restarted after a pause, so it rejoins and catches up. Ctrl-C or
//! SIGTERM stops every node; if `dev` itself is killed, the nodes notice and stop too.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use harness::{Agreement, ServeCommand};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

pub const DEV_NODES_MAX: u16 = 9;
/// Where `dev` keeps its token key set and admin token, inside its data directory.
pub const DEV_TOKEN_DIR: &str = "tokens";
/// The admin token `dev` writes for client commands (tenant `default`, role admin).
pub const DEV_ADMIN_TOKEN: &str = "admin.jwt";
/// The dev cluster's default data directory (`--data-dir`).
pub const DEV_DATA_DIR: &str = ".switchboard-dev";
const READY_WAIT: Duration = Duration::from_secs(60);
const STOP_WAIT: Duration = Duration::from_secs(10);
const RESTART_PAUSE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Number of nodes (1 to 9).
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// gRPC port of node 1; node i listens on base + i - 1, its HTTP port 1000 above.
    #[arg(long, default_value_t = 7101)]
    pub base_port: u16,
    /// Directory holding one data directory per node.
    #[arg(long, default_value = DEV_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Delete the data directories first (start a new cluster).
    #[arg(long)]
    pub fresh: bool,
    /// Run the nodes without TLS (plaintext, nothing authenticated).
    #[arg(long)]
    pub insecure: bool,
}

/// Cluster id of the dev cluster (its certificates are bound to it).
pub const DEV_CLUSTER_ID: &str = "switchboard-dev";

struct Node {
    id: u16,
    grpc: String,
    child: Child,
}

pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        (1..=DEV_NODES_MAX).contains(&args.nodes),
        "--nodes {} is invalid: must be from 1 to {DEV_NODES_MAX}",
        args.nodes
    );
    let last_port = args.base_port.checked_add(args.nodes - 1 + 1000);
    anyhow::ensure!(
        last_port.is_some(),
        "--base-port {} leaves no room for {} nodes",
        args.base_port,
        args.nodes
    );
    if args.fresh && args.data_dir.exists() {
        std::fs::remove_dir_all(&args.data_dir)
            .with_context(|| format!("failed to delete {}", args.data_dir.display()))?;
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("failed to create {}", args.data_dir.display()))?;
    let exe = std::env::current_exe().context("cannot find the switchboard binary")?;
    let (key_set, admin_token) = dev_tokens(&args.data_dir)?;
    // TLS by default: a CA and node certificates under the data directory, made once and
    // kept across runs (--fresh makes new ones with the new cluster).
    let certs_dir = args.data_dir.join("certs");
    let tls = if args.insecure {
        None
    } else {
        if !certs_dir.join(crate::tls::CA_FILE).exists() {
            crate::certs::init(&crate::certs::InitArgs {
                common: crate::certs::CommonArgs {
                    dir: certs_dir.clone(),
                    cluster_id: DEV_CLUSTER_ID.to_owned(),
                    hosts: Vec::new(),
                    days: 365,
                    force: true,
                    owner: None,
                },
                nodes: (1..=u64::from(DEV_NODES_MAX)).collect(),
                if_missing: false,
            })
            .context("failed to create the dev cluster's certificates")?;
        }
        Some(
            client::TlsConfig::from_ca_file(certs_dir.join(crate::tls::CA_FILE))
                .context("failed to read the dev cluster's CA")?,
        )
    };
    let addr = |i: u16| format!("127.0.0.1:{}", args.base_port + i - 1);
    let initial_cluster =
        harness::initial_cluster((1..=args.nodes).map(|i| (u64::from(i), addr(i))));

    let spawn = |id: u16| -> anyhow::Result<Child> {
        let serve = ServeCommand::new(
            u64::from(id),
            addr(id),
            args.data_dir.join(format!("node-{id}")),
        )
        .initial_cluster(&initial_cluster)
        .cluster_id(DEV_CLUSTER_ID)
        .token_keys(&key_set)
        .exit_with_parent();
        let serve = if args.insecure {
            serve.extra_args(["--insecure"])
        } else {
            serve.extra_args([std::ffi::OsStr::new("--tls-dir"), certs_dir.as_os_str()])
        };
        Command::from(serve.command(&exe))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("failed to start node {id}"))
    };
    let mut nodes = Vec::new();
    for id in 1..=args.nodes {
        nodes.push(Node {
            id,
            grpc: addr(id),
            child: spawn(id)?,
        });
    }

    let endpoints: Vec<String> = nodes.iter().map(|n| n.grpc.clone()).collect();
    // The first node that says it leads will do: data directories outlive a dev run, and a
    // node removed from the membership in an earlier run may never agree with the others.
    let token = std::fs::read_to_string(&admin_token)
        .with_context(|| format!("failed to read {}", admin_token.display()))?;
    let ready = harness::wait_for_leader(
        &endpoints,
        tls.as_ref(),
        Some(token.trim()),
        READY_WAIT,
        Agreement::LeaderOnly,
    );
    let outcome = tokio::select! {
        ready = ready => match ready {
            Ok(harness::Leader { id: leader, .. }) => {
                println!("switchboard dev cluster is up: {} nodes, leader node {leader}", nodes.len());
                for node in &nodes {
                    let scheme = if args.insecure { "http" } else { "https" };
                    println!("  node {}: grpc {}  http {scheme}://127.0.0.1:{}/metrics", node.id, node.grpc, args.base_port + node.id - 1 + 1000);
                }
                println!("  endpoints: {}", endpoints.join(","));
                println!(
                    "  admin token: {} (client commands run from this directory use it; elsewhere set SWITCHBOARD_TOKEN_FILE)",
                    admin_token.display()
                );
                if args.insecure {
                    println!("  plaintext (--insecure): give the CLI --insecure");
                } else {
                    let ca = std::path::absolute(certs_dir.join(crate::tls::CA_FILE))
                        .unwrap_or_else(|_| certs_dir.join(crate::tls::CA_FILE));
                    println!("  tls on: export SWITCHBOARD_CA={}", ca.display());
                }
                println!("  try: switchboard call create --tenant demo");
                println!("press Ctrl-C to stop every node");
                supervise(&mut nodes, &spawn).await
            }
            Err(e) => Err(e.into()),
        },
        stopped = stop_requested() => stopped.map(|()| ExitCode::SUCCESS),
    };
    stop_all(&mut nodes).await;
    outcome
}

/// The dev cluster's token key set (made on first start, kept across runs) and a fresh admin
/// token for the `default` tenant, valid 30 days: `(key set, token file)`.
fn dev_tokens(data_dir: &std::path::Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = data_dir.join(DEV_TOKEN_DIR);
    let key_set = dir.join(crate::auth::files::KEY_SET);
    let signing_key = dir.join(crate::auth::files::signing_key("dev"));
    if !key_set.exists() || !signing_key.exists() {
        crate::auth::keygen(&dir, "dev", true)?;
    }
    let key = crate::auth::SigningKey::read_pem(&signing_key, None)?;
    let claims = crate::auth::SigningKey::claims(
        "dev",
        "default",
        crate::auth::Role::Admin,
        Duration::from_secs(30 * 24 * 3600),
    );
    let token_file = dir.join(DEV_ADMIN_TOKEN);
    std::fs::write(&token_file, key.sign(&claims)?)
        .with_context(|| format!("failed to write {}", token_file.display()))?;
    Ok((key_set, token_file))
}

async fn stop_requested() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    println!("stopping the dev cluster");
    Ok(())
}

/// Restarts nodes that die until a stop is requested.
async fn supervise(
    nodes: &mut [Node],
    spawn: &dyn Fn(u16) -> anyhow::Result<Child>,
) -> anyhow::Result<ExitCode> {
    let stop = stop_requested();
    tokio::pin!(stop);
    loop {
        let died = futures::future::select_all(nodes.iter_mut().map(|n| {
            let id = n.id;
            Box::pin(async move { (id, n.child.wait().await) })
        }));
        let (id, status) = tokio::select! {
            stopped = &mut stop => return stopped.map(|()| ExitCode::SUCCESS),
            ((id, status), _, _) = died => (id, status),
        };
        eprintln!(
            "node {id} exited ({}); restarting it in {} s",
            status.map_or_else(|e| e.to_string(), |s| s.to_string()),
            RESTART_PAUSE.as_secs()
        );
        tokio::select! {
            stopped = &mut stop => return stopped.map(|()| ExitCode::SUCCESS),
            () = tokio::time::sleep(RESTART_PAUSE) => {}
        }
        let node = nodes
            .iter_mut()
            .find(|n| n.id == id)
            .ok_or_else(|| anyhow::anyhow!("no node {id}"))?;
        node.child = spawn(id)?;
        eprintln!("node {id} restarted");
    }
}

async fn stop_all(nodes: &mut [Node]) {
    for node in nodes.iter() {
        if let Some(pid) = node.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    for node in nodes.iter_mut() {
        match tokio::time::timeout(STOP_WAIT, node.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!(
                    "node {} did not stop within {} s; killing it",
                    node.id,
                    STOP_WAIT.as_secs()
                );
                let _ = node.child.kill().await;
            }
        }
    }
}
