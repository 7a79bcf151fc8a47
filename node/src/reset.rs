//! `switchboard node reset --rejoin`: the way back for a node whose disk cannot be trusted.
//!
//! A node that finds its storage damaged refuses to start (exit code [`EXIT_STORAGE_DAMAGED`]):
//! it may have lost entries it acknowledged or a vote it cast, and Raft's safety argument needs
//! neither to happen. It must not simply be wiped and restarted either: an empty voter could vote
//! again in a term where it already voted. The safe way back, which this command performs:
//! 1. remove the node from the cluster's membership (a majority of the others agrees);
//! 2. wipe its data directory, keeping only its identity, marked "rejoin" so that it never
//!    bootstraps a cluster of its own;
//! 3. once the operator (or the supervisor) starts it again, add it as a learner: the leader
//!    catches it up from a snapshot; then promote it if it was a voter.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use proto::v1::{AddLearnerRequest, PromoteRequest, RemoveRequest, StatusRequest};
use raft_store::{ROCKSDB_DIR, identity};

use crate::cli_client::{ClientOpts, EXIT_FAILED_PRECONDITION, EXIT_OTHER, EXIT_USAGE};

/// Exit code of `serve` when the data directory is damaged (BSD `EX_IOERR`).
pub const EXIT_STORAGE_DAMAGED: u8 = 74;
/// Pause between attempts to add the restarted node back.
const REJOIN_RETRY: Duration = Duration::from_millis(500);

/// `switchboard node ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum NodeCommand {
    /// Remove this node from the cluster, wipe its data directory and add it back as a learner
    /// that catches up from a snapshot (the way back from damaged storage).
    Reset(ResetArgs),
}

/// `switchboard node reset` options.
#[derive(Debug, Clone, Args)]
pub struct ResetArgs {
    /// The node's data directory (its `--data-dir`). The node must be stopped.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Confirms what reset does: remove the node from the cluster, wipe its data and re-add it.
    #[arg(long)]
    pub rejoin: bool,
    /// The node's gRPC address, when the cluster no longer lists it (a reset interrupted after
    /// the removal); default: the address the cluster's membership holds.
    #[arg(long)]
    pub advertise: Option<String>,
    /// How long to wait for the node to be started again and catch up.
    #[arg(long, default_value = "5m", value_parser = harness::parse_duration)]
    pub wait: Duration,
    /// Client options (`--endpoints` must reach the other nodes).
    #[command(flatten)]
    pub opts: ClientOpts,
}

#[derive(Debug, thiserror::Error)]
enum ResetError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Cli(Box<crate::cli_client::CliError>),
    #[error("{0}")]
    Other(String),
}

impl From<client::ClientError> for ResetError {
    fn from(error: client::ClientError) -> Self {
        ResetError::Cli(Box::new(error.into()))
    }
}

impl From<crate::cli_client::CliError> for ResetError {
    fn from(error: crate::cli_client::CliError) -> Self {
        ResetError::Cli(Box::new(error))
    }
}

impl ResetError {
    fn exit_code(&self) -> u8 {
        match self {
            ResetError::Usage(_) => EXIT_USAGE,
            ResetError::Refused(_) => EXIT_FAILED_PRECONDITION,
            ResetError::Cli(e) => e.exit_code(),
            ResetError::Other(_) => EXIT_OTHER,
        }
    }
}

pub async fn run(command: NodeCommand) -> ExitCode {
    let NodeCommand::Reset(args) = command;
    match reset(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn reset(args: &ResetArgs) -> Result<(), ResetError> {
    let dir = &args.data_dir;
    let found = identity::read(dir)
        .map_err(|e| ResetError::Refused(e.to_string()))?
        .ok_or_else(|| {
            ResetError::Refused(format!(
                "{} has no identity file: not a Switchboard data directory",
                dir.display()
            ))
        })?;
    if !args.rejoin {
        return Err(ResetError::Usage(format!(
            "reset removes node {} from cluster {:?}, wipes {} and adds the node back as a \
             learner; say --rejoin to do it",
            found.node_id,
            found.cluster_id,
            dir.display()
        )));
    }
    ensure_stopped(dir)?;

    let client = client::Client::new(crate::cli_client::client_config(&args.opts)?)
        .map_err(crate::cli_client::CliError::from)?;
    let status = client.status(StatusRequest {}).await?;
    if status.cluster_id != found.cluster_id {
        return Err(ResetError::Refused(format!(
            "--endpoints reach cluster {:?}, but {} belongs to cluster {:?}",
            status.cluster_id,
            dir.display(),
            found.cluster_id
        )));
    }
    let node_id = found.node_id;
    let member = status
        .members
        .iter()
        .find(|m| m.node_id == node_id)
        .cloned();
    let (addr, region, voter) = match (&member, &args.advertise) {
        (Some(m), _) => (m.addr.clone(), m.region.clone(), m.voter),
        (None, Some(addr)) => (addr.clone(), String::new(), true),
        (None, None) => {
            return Err(ResetError::Usage(format!(
                "node {node_id} is not a member of cluster {:?}; give --advertise with its \
                 address to add it back",
                found.cluster_id
            )));
        }
    };
    let deadline = Instant::now() + args.wait;
    if member.is_some() {
        // The node may have been the leader: the others need an election (and a majority) before
        // they can change the membership. Retried until --wait runs out.
        loop {
            match client
                .remove(RemoveRequest {
                    node_ids: vec![node_id],
                })
                .await
            {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "removal of node {node_id} not accepted yet");
                    tokio::time::sleep(REJOIN_RETRY).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        println!("node {node_id} removed from cluster {:?}", found.cluster_id);
    }

    wipe(dir, &found).map_err(|e| ResetError::Other(format!("wipe {}: {e}", dir.display())))?;
    println!(
        "{} wiped; start node {node_id} again now (same flags): waiting up to {:?} for it to \
         catch up",
        dir.display(),
        args.wait
    );

    loop {
        let added = client
            .add_learner(AddLearnerRequest {
                node_id,
                addr: addr.clone(),
                region: region.clone(),
            })
            .await;
        match added {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "node {node_id} not caught up yet");
            }
            Err(last_error) => {
                return Err(ResetError::Other(format!(
                    "node {node_id} did not catch up within {:?} (last: {last_error}); once it runs, \
                 add it with `switchboard cluster add-learner --node-id {node_id} --addr {addr}`",
                    args.wait
                )));
            }
        }
        tokio::time::sleep(REJOIN_RETRY).await;
    }
    println!("node {node_id} caught up as a learner at {addr}");
    if voter {
        client
            .promote(PromoteRequest {
                node_ids: vec![node_id],
            })
            .await?;
        println!("node {node_id} is a voter again");
    }
    Ok(())
}

/// Refuses while a process holds the node's RocksDB lock (the node is running).
fn ensure_stopped(dir: &Path) -> Result<(), ResetError> {
    use nix::fcntl::{FcntlArg, fcntl};
    use nix::libc;

    let lock_path = dir.join(ROCKSDB_DIR).join("LOCK");
    let file = match fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lock_path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(ResetError::Other(format!(
                "open {}: {e}",
                lock_path.display()
            )));
        }
    };
    // RocksDB takes a POSIX record lock on LOCK; F_GETLK reports a holder without taking it.
    let mut probe = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    fcntl(&file, FcntlArg::F_GETLK(&mut probe))
        .map_err(|e| ResetError::Other(format!("probe the lock {}: {e}", lock_path.display())))?;
    if probe.l_type != libc::F_UNLCK as libc::c_short {
        return Err(ResetError::Refused(format!(
            "process {} holds {}: stop the node before resetting it",
            probe.l_pid,
            lock_path.display()
        )));
    }
    Ok(())
}

/// Removes everything in `dir` but the identity, then marks the identity "rejoin".
fn wipe(dir: &Path, found: &identity::Identity) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == identity::IDENTITY_FILE {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
    }
    let rejoining = identity::Identity {
        format_version: identity::FORMAT_VERSION,
        rejoin: true,
        ..found.clone()
    };
    identity::write(dir, &rejoining).map_err(std::io::Error::other)
}
