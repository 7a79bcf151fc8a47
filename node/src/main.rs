//! The `switchboard` binary: `serve` runs a node, `dev` a local cluster, the other subcommands
//! talk to a cluster through the client library.

use std::process::ExitCode;

use clap::Parser;
use node::config::ServeArgs;
use node::dev::DevArgs;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Raft-replicated system of record for live AI voice and chat calls"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run one node.
    Serve(Box<ServeArgs>),
    /// Run a local cluster of N nodes as child processes.
    Dev(DevArgs),
    /// Check an HTTP endpoint (for container health checks): exit 0 on a 2xx answer.
    Probe(node::probe::ProbeArgs),
    /// Create a development CA and node certificates (`init`), or one more node's (`node`).
    #[command(subcommand)]
    Certs(node::certs::CertsCommand),
    /// Operate on one node's data directory (reset a damaged node).
    #[command(subcommand)]
    Node(node::reset::NodeCommand),
    /// Make token signing keys and mint bearer tokens.
    #[command(subcommand)]
    Token(node::token::TokenCommand),
    #[command(flatten)]
    Client(node::cli_client::ClientCommand),
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

/// Resolves when the parent process is gone (this process was re-parented).
async fn parent_gone() {
    let parent = nix::unistd::getppid();
    while nix::unistd::getppid() == parent {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let exit_with_parent = args.exit_with_parent;
    let config = args.resolve()?;
    let shutdown = CancellationToken::new();
    if exit_with_parent {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            parent_gone().await;
            tracing::warn!("parent process is gone; stopping");
            shutdown.cancel();
        });
    }
    let server = node::server::run(config, shutdown.clone());
    tokio::pin!(server);
    tokio::select! {
        served = &mut server => served?,
        signal = shutdown_signal() => {
            if let Err(e) = signal {
                tracing::error!(error = %e, "failed to listen for signals; stopping");
            }
            tracing::info!("shutdown requested");
            shutdown.cancel();
            server.await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether the failure is damaged storage: then the node must be rejoined, not restarted, and
/// says so with its own exit code.
fn storage_damaged(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<raft_store::Error>()
            .is_some_and(raft_store::Error::is_damaged)
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Dev(args) => node::dev::run(args).await,
        Command::Probe(args) => node::probe::run(args).await.map(|status| {
            println!("{status}");
            ExitCode::SUCCESS
        }),
        Command::Client(cmd) => return node::cli_client::run(cmd).await,
        Command::Certs(cmd) => node::certs::run(&cmd)
            .map(|()| ExitCode::SUCCESS)
            .map_err(anyhow::Error::from),
        Command::Node(cmd) => return node::reset::run(cmd).await,
        Command::Token(cmd) => node::token::run(cmd)
            .map(|()| ExitCode::SUCCESS)
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("switchboard: {e:#}");
            if storage_damaged(&e) {
                ExitCode::from(node::reset::EXIT_STORAGE_DAMAGED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
