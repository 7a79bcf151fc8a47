//! One node: opens the data directory, starts Raft, bootstraps a fresh cluster, and serves the
//! gRPC port (public API, Raft, health, reflection) and the HTTP port until shutdown.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use anyhow::Context as _;
use openraft::SnapshotPolicy;
use openraft::async_runtime::WatchReceiver;
use proto::v1::activity_service_server::ActivityServiceServer;
use proto::v1::call_service_server::CallServiceServer;
use proto::v1::cluster_service_server::ClusterServiceServer;
use proto::v1::event_service_server::EventServiceServer;
use raft_store::{Claim, Identity, Member};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{Api, ApiConfig};
use crate::auth::{Auth, Verifier};
use crate::config::NodeConfig;
use crate::edge::Edge;
use crate::tls::{self, Dialer, NodeIdentity, Security, Tls};
use crate::transport::{self, NetworkFactory, TransportConfig};
use crate::watch::WatchServiceServer;
use crate::{Raft, observe};

/// Loads the TLS material, binds both ports, then serves until `shutdown` is cancelled.
pub async fn run(config: NodeConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let tls = load_tls(&config)?;
    let grpc = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("failed to bind the gRPC port {}", config.listen))?;
    let http = TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("failed to bind the HTTP port {}", config.http_listen))?;
    serve_loaded(config, tls, grpc, http, shutdown).await
}

/// The node's TLS material, or `None` under `--insecure` (said at WARN).
fn load_tls(config: &NodeConfig) -> anyhow::Result<Option<Arc<Tls>>> {
    match &config.security {
        Security::Insecure => {
            tracing::warn!(
                "--insecure: serving plaintext; clients and peers are not authenticated and \
                 anyone who can reach the gRPC port can act as a node of this cluster"
            );
            Ok(None)
        }
        Security::Tls(files) => {
            let tls = Tls::load(
                files.clone(),
                NodeIdentity::new(config.cluster_id.clone(), config.node_id),
            )
            .context("failed to load the tls material")?;
            let material = tls.current();
            tracing::info!(
                cert = %files.cert.display(),
                serial = material.serial(),
                not_after_unix = material.not_after_unix(),
                "tls on: both ports, mutual between nodes"
            );
            Ok(Some(tls))
        }
    }
}

fn raft_config(config: &NodeConfig) -> anyhow::Result<openraft::Config> {
    let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let raft = openraft::Config {
        cluster_name: config.cluster_id.clone(),
        heartbeat_interval: millis(config.heartbeat),
        election_timeout_min: millis(config.election_timeout_min),
        election_timeout_max: millis(config.election_timeout_max),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_logs_since_last),
        max_in_snapshot_log_to_keep: config.logs_kept_behind_snapshot,
        enable_pre_vote: Some(true),
        ..openraft::Config::default()
    };
    Ok(raft.validate()?)
}

/// How long openraft may take to load the store before the node gives up starting.
const STORE_LOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Serves on already bound listeners (tests bind port 0).
pub async fn serve(
    config: NodeConfig,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tls = load_tls(&config)?;
    serve_loaded(config, tls, grpc_listener, http_listener, shutdown).await
}

async fn serve_loaded(
    config: NodeConfig,
    tls: Option<Arc<Tls>>,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let dialer = match &tls {
        Some(tls) => Dialer::Tls(tls.clone()),
        None => Dialer::Plain,
    };
    let auth = authentication(&config)?;
    let identity = Identity::new(config.cluster_id.clone(), config.node_id);
    let store = raft_store::open(&config.data_dir, &identity).with_context(|| {
        format!(
            "failed to open the data directory {}",
            config.data_dir.display()
        )
    })?;
    let claim = store.claim;
    let reader = store.state_machine.reader();
    let snapshots = store.state_machine.snapshot_dir().clone();
    let eraser = store.state_machine.eraser();
    let log = store.log.clone();

    let transport_config = TransportConfig {
        cluster_id: config.cluster_id.clone(),
        node_id: config.node_id,
        authenticate_peers: tls.is_some(),
        initial_members: config.initial_cluster.keys().copied().collect(),
        ..TransportConfig::default()
    };
    transport_config.validate()?;
    let network = NetworkFactory::with_dialer(transport_config.clone(), dialer.clone());
    // openraft's metrics start as zeros and show the store only once its core has loaded it; the
    // node answers nothing before they do, so no client or operator ever sees a restarted node
    // "empty" (status with last log 0 and term 0) for a moment.
    let stored_last_index = {
        use openraft::storage::RaftLogStorage;
        let mut log = store.log.clone();
        log.get_log_state()
            .await
            .context("failed to read the stored log state")?
            .last_log_id
            .map(|id| id.index)
    };
    let raft = Raft::new(
        config.node_id,
        Arc::new(raft_config(&config)?),
        network,
        store.log,
        store.state_machine,
    )
    .await
    .context("failed to start raft")?;
    raft.wait(Some(STORE_LOAD_WAIT))
        .log_index_at_least(stored_last_index, "metrics show the stored log")
        .await
        .context("raft did not load the stored log in time")?;
    tracing::info!(
        node_id = config.node_id,
        grpc = %grpc_listener.local_addr()?,
        http = %http_listener.local_addr()?,
        data_dir = %config.data_dir.display(),
        fresh = claim == Claim::Fresh,
        "node started"
    );
    bootstrap(&raft, &config, claim).await?;

    let contact = transport::LeaderContact::new();
    let watches = crate::watch::Watches::start(
        config.node_id,
        raft.clone(),
        reader.clone(),
        contact.clone(),
        config.watch,
        shutdown.clone(),
    )
    .context("failed to start serving watches")?;
    let api = Api::new(
        raft.clone(),
        reader.clone(),
        ApiConfig {
            node_id: config.node_id,
            cluster_id: config.cluster_id.clone(),
            write_timeout: config.write_timeout,
            read_wait_max: config.read_wait_max,
            admission: config.admission,
            auth: auth.clone(),
            pii: config.pii.clone(),
            dialer,
            watches,
        },
    );
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CallServiceServer<Api>>().await;
    health.set_serving::<EventServiceServer<Api>>().await;
    health.set_serving::<ActivityServiceServer<Api>>().await;
    health.set_serving::<WatchServiceServer<Api>>().await;
    health.set_serving::<ClusterServiceServer<Api>>().await;
    // v1 and v1alpha: grpcurl and older tools speak only the latter.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let prometheus = observe::install_recorder().ok();
    let raft_stopped = tokio::spawn(watch_raft(raft.clone(), shutdown.clone()));
    let mut tasks = JoinSet::new();
    tasks.spawn(observe::publish(raft.clone(), reader, shutdown.clone()));
    tasks.spawn(reload_on_hangup(auth, shutdown.clone()));
    tasks.spawn(crate::erasure::run(raft.clone(), eraser, shutdown.clone()));
    tasks.spawn(crate::retention::run(api.clone(), shutdown.clone()));
    if let Some(tls) = &tls {
        let (tls, shutdown) = (tls.clone(), shutdown.clone());
        tasks.spawn(async move {
            if let Err(error) = tls::reload_on_sighup(tls, shutdown).await {
                tracing::error!(%error, "failed to listen for SIGHUP; certificates reload only on restart");
            }
        });
    }
    // Connection bounds first (before any TLS handshake), then TLS: see `edge.rs`.
    let edge = Edge::new(config.edge);
    let (grpc_incoming, grpc_accept) = tls::incoming_admitted(
        grpc_listener,
        tls.clone(),
        tls::Port::Grpc,
        shutdown.clone(),
        {
            let edge = edge.clone();
            move |tcp, remote| edge.admit_counted(tcp, remote)
        },
    );
    tasks.spawn(grpc_accept);
    let http_addr = http_listener.local_addr()?;
    let (http_incoming, http_accept) = tls::incoming(
        http_listener,
        tls.clone(),
        tls::Port::Http,
        shutdown.clone(),
    );
    tasks.spawn(http_accept);
    let http_listener = tls::HttpListener::new(http_incoming, http_addr);
    if let Some(prometheus) = prometheus {
        tasks.spawn({
            let (raft, api, shutdown) = (raft.clone(), api.clone(), shutdown.clone());
            async move {
                if let Err(e) =
                    observe::serve_http(http_listener, raft, api, prometheus, shutdown).await
                {
                    tracing::error!(error = %e, "http server failed");
                }
            }
        });
    } else {
        tracing::warn!(
            "a metrics recorder is already installed in this process; /metrics is not served"
        );
    }

    let bytes_max = config.grpc_message_bytes_max;
    let grpc = edge
        .server_builder()
        .layer(edge.layer())
        .layer(tower::layer::layer_fn(|inner| Timed { inner }))
        .add_service(
            CallServiceServer::new(api.clone())
                .max_decoding_message_size(bytes_max)
                .max_encoding_message_size(bytes_max),
        )
        .add_service(
            EventServiceServer::new(api.clone())
                .max_decoding_message_size(bytes_max)
                .max_encoding_message_size(bytes_max),
        )
        .add_service(
            ActivityServiceServer::new(api.clone())
                .max_decoding_message_size(bytes_max)
                .max_encoding_message_size(bytes_max),
        )
        .add_service(
            WatchServiceServer::new(api.clone())
                .max_decoding_message_size(bytes_max)
                .max_encoding_message_size(bytes_max),
        )
        .add_service(
            ClusterServiceServer::new(api.clone())
                .max_decoding_message_size(config.cluster_message_bytes_max),
        )
        .add_service(transport::raft_service(
            raft.clone(),
            transport_config,
            snapshots,
            contact,
        ))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(
            // TLS (or, under --insecure, plaintext) connections with TCP_NODELAY set: see
            // `tls::incoming`. Handlers find the peer's verified certificate in the request
            // extensions (`tls::PeerInfo`).
            grpc_incoming,
            shutdown.clone().cancelled_owned(),
        );
    let served = grpc.await;
    shutdown.cancel();

    tracing::info!(node_id = config.node_id, "node stopping");
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft did not shut down cleanly");
    }
    while tasks.join_next().await.is_some() {}
    if let Err(e) = log.sync() {
        tracing::error!(error = %e, "failed to sync the raft log at shutdown");
    }
    served.context("gRPC server failed")?;
    if let Ok(Some(why)) = raft_stopped.await {
        anyhow::bail!("raft stopped on its own: {why}");
    }
    tracing::info!(node_id = config.node_id, "node stopped");
    Ok(())
}

/// How this node authenticates callers: the key set of `--token-keys`, or nobody with
/// `--insecure` (said loudly: every caller is then an administrator).
fn authentication(config: &NodeConfig) -> anyhow::Result<Auth> {
    match &config.token_keys {
        Some(path) => {
            let verifier = Verifier::load(path)?;
            tracing::info!(key_set = %path.display(), "bearer tokens required");
            Ok(Auth::Tokens(Arc::new(verifier)))
        }
        None => {
            tracing::warn!(
                "--insecure without --token-keys: no authentication, every caller is an anonymous admin of every tenant; never use this outside development"
            );
            Ok(Auth::Off)
        }
    }
}

/// Re-reads the token key set on every SIGHUP until shutdown; a key set that does not load is
/// logged and the keys in use stay.
async fn reload_on_hangup(auth: Auth, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::error!(error = %e, "failed to listen for SIGHUP; keys reload only on restart");
            return;
        }
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            received = hangups.recv() => if received.is_none() { return },
        }
        match auth.reload() {
            Ok(Some(kids)) => {
                metrics::counter!(observe::names::TOKEN_KEYS_RELOADS, "outcome" => "ok")
                    .increment(1);
                tracing::info!(keys = ?kids, "token key set reloaded");
            }
            Ok(None) => {}
            Err(e) => {
                metrics::counter!(observe::names::TOKEN_KEYS_RELOADS, "outcome" => "error")
                    .increment(1);
                tracing::error!(error = %e, "failed to reload the token key set; the keys in use stay");
            }
        }
    }
}

/// Waits for Raft to stop on its own (openraft stops a node on a storage error) and then shuts
/// the node down, so that the process exits with an error and its supervisor (systemd, Docker,
/// Kubernetes) restarts it, rather than serving on with a dead consensus core. Returns why, or
/// `None` when the node is shutting down anyway.
async fn watch_raft(raft: crate::Raft, shutdown: CancellationToken) -> Option<String> {
    let mut metrics = raft.metrics();
    loop {
        let stopped = match &metrics.borrow_and_update().running_state {
            Ok(()) => None,
            Err(fatal) => Some(fatal.to_string()),
        };
        if let Some(why) = stopped {
            if shutdown.is_cancelled() {
                return None;
            }
            tracing::error!(error = %why, "raft stopped on its own; shutting the node down");
            shutdown.cancel();
            return Some(why);
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            changed = metrics.changed() => if changed.is_err() {
                // The core is gone without saying why (it panicked): the node must not go on
                // answering without Raft.
                if shutdown.is_cancelled() {
                    return None;
                }
                let why = "the raft core ended unexpectedly (it panicked; see the log above)";
                tracing::error!(error = why, "raft stopped on its own; shutting the node down");
                shutdown.cancel();
                return Some(why.to_owned());
            },
        }
    }
}

/// On the first start of a fresh data directory, the lowest id of `--initial-cluster`
/// initializes the cluster; the others wait to hear from it. Restarts never initialize.
async fn bootstrap(raft: &Raft, config: &NodeConfig, claim: Claim) -> anyhow::Result<()> {
    let Some(first) = config.initial_cluster.keys().next().copied() else {
        return Ok(());
    };
    if claim != Claim::Fresh || first != config.node_id || raft.is_initialized().await? {
        return Ok(());
    }
    let members: BTreeMap<u64, Member> = config
        .initial_cluster
        .iter()
        .map(|(id, addr)| {
            let region = if *id == config.node_id {
                config.region.clone()
            } else {
                String::new()
            };
            (*id, Member::new(addr.clone(), region))
        })
        .collect();
    tracing::info!(members = ?members.keys().collect::<Vec<_>>(), "initializing a new cluster");
    raft.initialize(members)
        .await
        .context("failed to initialize the cluster")?;
    Ok(())
}

/// Records the latency of every known gRPC method.
#[derive(Debug, Clone)]
struct Timed<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for Timed<S>
where
    S: tower::Service<http::Request<B>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // Only the methods of the RPC tables get a latency series: labels stay bounded whatever
        // paths clients send.
        let path = request.uri().path();
        let method = proto::RPC_PATHS
            .iter()
            .chain(proto::WATCH_RPC_PATHS)
            .chain(proto::RAFT_RPC_PATHS)
            .find(|m| **m == path)
            .copied();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            if let Some(method) = method {
                metrics::histogram!(observe::names::GRPC_REQUEST_SECONDS, "method" => method)
                    .record(started.elapsed().as_secs_f64());
            }
            result
        })
    }
}
