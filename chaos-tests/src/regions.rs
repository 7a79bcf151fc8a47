//! `chaos-tests regions`: measures the 5-node, 3-region compose variant
//! (`deploy/compose/regions/`), where inter-region latency comes from one delay relay per region.
//! It shows that every region reads locally: a `LOCAL` read with `min_index` costs about a
//! millisecond on every node, while a `LINEARIZABLE` read on a node away from the leader pays an
//! inter-region round trip (the follower asks the leader for a read index).
//!
//! It brings the file up as its own project (`sbregions-<pid>`, ports on a private loopback
//! address) unless given `--no-up --endpoints`, and takes it down on every exit path unless
//! `--keep`. It only reads and creates calls; it injects no fault.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use client::{Client, ClientConfig};
use hdrhistogram::Histogram;
use proto::v1::call_service_client::CallServiceClient;
use proto::v1::cluster_service_client::ClusterServiceClient;
use proto::v1::{self, Consistency, ReadOptions};
use tonic::transport::Channel;

use crate::bench::stats::Summary;
use crate::compose::{self, Compose};

/// Project prefix: projects are `sbregions-<pid>`.
const PROJECT_PREFIX: &str = "sbregions-";
/// The relay image the compose file names (`SWITCHBOARD_RELAY_IMAGE` overrides it).
const DEFAULT_RELAY_IMAGE: &str = "switchboard-relay:dev";
/// One-way delays the compose file applies when its variables are unset, in ms.
const DELAY_DEFAULTS_MS: [(&str, &str, u64); 3] = [("a", "b", 20), ("a", "c", 40), ("b", "c", 30)];
const TENANT: &str = "regions";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Above the node's default bounded read wait (5 s), so a slow node answers before we give up.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// How long every node may take to apply the last write before reads are timed.
const CATCH_UP_WAIT: Duration = Duration::from_secs(10);
/// Untimed requests per node and kind before measuring (connections, replication catch-up).
const WARMUP_REQUESTS: u32 = 5;
const LATENCY_US_MAX: u64 = 60_000_000;

/// `chaos-tests regions` options.
#[derive(Debug, Clone, clap::Args)]
pub struct RegionsArgs {
    /// The regions compose file.
    #[arg(long, default_value = "deploy/compose/regions/docker-compose.yml")]
    pub compose_file: PathBuf,
    /// Measure a running cluster instead of bringing one up (needs --endpoints).
    #[arg(long, requires = "endpoints")]
    pub no_up: bool,
    /// With --no-up: the nodes' gRPC addresses as reachable from here, comma-separated.
    #[arg(long, value_delimiter = ',', requires = "no_up")]
    pub endpoints: Vec<String>,
    /// With --no-up: the compose project running them, to find each node's region and the
    /// relays (compose names a project after the file's directory).
    #[arg(long, default_value = "regions", requires = "no_up")]
    pub project: String,
    /// Calls written through the client library.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub calls: u32,
    /// Reads timed per node and consistency level.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub reads: u32,
    /// Round-trip probes per pair of regions.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub rtt_probes: u32,
    /// How long the cluster may take to agree on a leader.
    #[arg(long, default_value = "120s", value_parser = harness::parse_duration)]
    pub leader_timeout: Duration,
    /// Leave the project running at the end (prints how to take it down).
    #[arg(long)]
    pub keep: bool,
    /// The cluster CA (PEM) [default: certs/ca.pem beside the compose file, written by
    /// deploy/compose/certs.sh]; without one the nodes are spoken to in plaintext.
    #[arg(long, env = "SWITCHBOARD_CA")]
    pub ca: Option<PathBuf>,
}

/// TLS towards the nodes, decided once per run from `--ca` (see [`tls`]).
static TLS: std::sync::OnceLock<Option<client::TlsConfig>> = std::sync::OnceLock::new();

/// How this run speaks TLS to the nodes.
fn tls() -> Option<&'static client::TlsConfig> {
    TLS.get().and_then(Option::as_ref)
}

/// The admin token of this run, minted once from the signing key the compose file's `certs`
/// step writes beside it (none: the nodes run without authentication).
static TOKEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

fn token() -> Option<&'static str> {
    TOKEN.get().and_then(Option::as_deref)
}

/// Reads the CA once: `--ca`, else the one beside the compose file, else none (plaintext).
fn init_tls(args: &RegionsArgs) -> anyhow::Result<()> {
    let beside = args
        .compose_file
        .parent()
        .map(|dir| dir.join("certs").join("ca.pem"))
        .filter(|path| path.exists());
    let tls = match args.ca.clone().or(beside) {
        Some(path) => {
            // Nodes are published on a private loopback address their certificates do not
            // list; every node certificate names `localhost`.
            let mut tls = client::TlsConfig::from_ca_file(&path)?;
            tls.server_name = Some("localhost".to_owned());
            Some(tls)
        }
        None => None,
    };
    let _ = TLS.set(tls);
    let key = args
        .compose_file
        .parent()
        .map(|dir| {
            dir.join("certs")
                .join("tokens")
                .join("token-signing-k1.pem")
        })
        .filter(|path| path.exists());
    let token = match key {
        Some(key) => Some(crate::drill::cluster::issue_admin_token(
            &crate::switchboard_binary()?,
            &key,
        )?),
        None => None,
    };
    let _ = TOKEN.set(token);
    Ok(())
}

/// One node as measured from here.
#[derive(Debug, Clone)]
struct NodeAt {
    id: u64,
    region: String,
    /// The address the cluster knows it by (`node3:7103`).
    advertised: String,
    /// Where this host reaches it.
    reachable: String,
    /// Its container, when it runs in a compose project this tool can see.
    container: Option<String>,
}

/// Runs the measurement; SIGINT and SIGTERM stop it, and the project goes down either way.
pub async fn run(args: RegionsArgs) -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = measure(&args) => result,
        // Returning drops the project guard inside `measure`, which takes it down.
        _ = terminate.recv() => anyhow::bail!("terminated; the project is taken down"),
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; the project is taken down"),
    }
}

async fn measure(args: &RegionsArgs) -> anyhow::Result<()> {
    let mut project = None;
    let (project_name, endpoints) = if args.no_up {
        (args.project.clone(), args.endpoints.clone())
    } else {
        let relay_image = std::env::var("SWITCHBOARD_RELAY_IMAGE")
            .unwrap_or_else(|_| DEFAULT_RELAY_IMAGE.to_owned());
        if compose::docker(&["image", "inspect", "--format", "{{.Id}}", &relay_image])
            .await
            .is_err()
        {
            anyhow::bail!("image {relay_image} is missing: build it with deploy/image/build.sh");
        }
        let image = std::env::var("SWITCHBOARD_IMAGE").ok();
        println!("bringing up {} ...", args.compose_file.display());
        let mut up = Compose::up(&args.compose_file, PROJECT_PREFIX, image.as_deref()).await?;
        if args.keep {
            up.keep();
        }
        let endpoints = up
            .services()
            .await?
            .into_values()
            .map(|service| service.published)
            .collect();
        let name = up.project.clone();
        println!(
            "project {name}: {}, ports on {}",
            up.file.display(),
            up.host_ip
        );
        project = Some(Guard {
            compose: up,
            keep: args.keep,
        });
        (name, endpoints)
    };

    // After `up`: the compose file's `certs` step writes the CA.
    init_tls(args)?;
    let harness::Leader { id: leader, term } = harness::wait_for_leader(
        &endpoints,
        tls(),
        token(),
        args.leader_timeout,
        harness::Agreement::Unanimous,
    )
    .await?;
    let nodes = locate(&project_name, &endpoints).await?;
    let leader_region = nodes
        .get(&leader)
        .map(|n| n.region.clone())
        .unwrap_or_default();
    println!("leader: node {leader} (region {leader_region}), term {term}");
    print_delays();

    measure_round_trips(&project_name, &nodes, args.rtt_probes).await;

    let client = Client::new(ClientConfig {
        // The leader first: the first write goes straight to it.
        endpoints: leader_first(&nodes, leader),
        resolve: nodes
            .values()
            .map(|n| (n.advertised.clone(), n.reachable.clone()))
            .collect(),
        tls: tls().cloned(),
        token: token().map(client::BearerToken::new),
        ..ClientConfig::default()
    })?;
    let (written, writes) = write_calls(&client, args.calls).await?;
    let last_index = written.last().map_or(0, |(_, index)| *index);
    wait_caught_up(&nodes, last_index, CATCH_UP_WAIT).await?;
    let writes = Summary::of(&writes);
    println!();
    println!(
        "writes: {} CreateCall through the client library (leader in region {leader_region}): p50 {:.2} ms, p99 {:.2} ms",
        args.calls, writes.p50_ms, writes.p99_ms
    );

    println!();
    println!(
        "reads: {} GetCall per node and level, from this host to each node directly (no redirects);",
        args.reads
    );
    println!("LOCAL carries min_index = the write's index (read-your-writes on any node)");
    println!(
        "{:>4}  {:<6}  {:<8}  {:>9}  {:>9}  {:>9}  {:>9}",
        "node", "region", "role", "LOCAL p50", "LOCAL p99", "LIN p50", "LIN p99"
    );
    for node in nodes.values() {
        let (local, linearizable) = time_reads(node, &written, last_index, args.reads).await?;
        let (local, linearizable) = (Summary::of(&local), Summary::of(&linearizable));
        println!(
            "{:>4}  {:<6}  {:<8}  {:>9.2}  {:>9.2}  {:>9.2}  {:>9.2}",
            node.id,
            node.region,
            if node.id == leader {
                "leader"
            } else {
                "follower"
            },
            local.p50_ms,
            local.p99_ms,
            linearizable.p50_ms,
            linearizable.p99_ms
        );
    }
    println!("(milliseconds; hdrhistogram, 3 significant digits)");
    measure_read_index(&project_name, &nodes, leader, args.rtt_probes).await;
    drop(project);
    Ok(())
}

/// Takes the project down when dropped (unless kept), saying so.
struct Guard {
    compose: Compose,
    keep: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.keep {
            eprintln!(
                "kept project {}: take it down with: {}",
                self.compose.project,
                self.compose.down_command()
            );
        } else {
            eprintln!("taking project {} down", self.compose.project);
        }
        // Dropping `compose` right after this runs `down -v` unless kept.
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("constant histogram bounds are valid")
}

fn record(histogram: &mut Histogram<u64>, took: Duration) {
    let us = u64::try_from(took.as_micros()).unwrap_or(LATENCY_US_MAX);
    histogram.saturating_record(us.clamp(1, LATENCY_US_MAX));
}

async fn channel(addr: &str) -> anyhow::Result<Channel> {
    client::endpoint(addr, tls())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("failed to connect to {addr}: {e}"))
}

async fn status(addr: &str) -> anyhow::Result<v1::StatusResponse> {
    let mut request = tonic::Request::new(v1::StatusRequest {});
    request.set_timeout(RPC_TIMEOUT);
    if let Some(value) = token().and_then(|t| client::BearerToken::new(t).header_value()) {
        request.metadata_mut().insert("authorization", value);
    }
    Ok(ClusterServiceClient::new(channel(addr).await?)
        .status(request)
        .await?
        .into_inner())
}

/// Waits until every node has applied `index`; a node that does not is not replicating, and
/// timing its reads would only time the bounded `min_index` wait.
async fn wait_caught_up(
    nodes: &BTreeMap<u64, NodeAt>,
    index: u64,
    within: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let mut behind = Vec::new();
        for node in nodes.values() {
            match status(&node.reachable).await {
                Ok(status) if status.applied_index >= index => {}
                Ok(status) => behind.push(format!(
                    "node {} (region {}) applied {}",
                    node.id, node.region, status.applied_index
                )),
                Err(e) => behind.push(format!("node {}: {e}", node.id)),
            }
        }
        if behind.is_empty() {
            return Ok(());
        }
        if started.elapsed() > within {
            anyhow::bail!(
                "{} within {within:?} of the last write (index {index}): replication is failing; \
                 the heartbeat interval bounds every Raft RPC, so it must exceed the longest \
                 inter-region round trip",
                behind.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each endpoint's node id and advertised address (asked of the node), and its region and
/// container (from the compose project's `nodeN` container and its `--region` argument).
async fn locate(project: &str, endpoints: &[String]) -> anyhow::Result<BTreeMap<u64, NodeAt>> {
    let mut nodes = BTreeMap::new();
    for endpoint in endpoints {
        let status = status(endpoint).await?;
        let id = status.node_id;
        let advertised = status
            .members
            .iter()
            .find(|m| m.node_id == id)
            .map(|m| m.addr.clone())
            .ok_or_else(|| anyhow::anyhow!("node {id} at {endpoint} is not a member"))?;
        let container = service_container(project, &format!("node{id}")).await;
        let region = match &container {
            Some(container) => container_region(container).await?,
            None => String::from("?"),
        };
        nodes.insert(
            id,
            NodeAt {
                id,
                region,
                advertised,
                reachable: endpoint.clone(),
                container,
            },
        );
    }
    if nodes.values().any(|n| n.container.is_none()) {
        eprintln!(
            "warning: project {project} has no container for some nodes: their region shows as ? \
             and round trips are not measured (give --project)"
        );
    }
    Ok(nodes)
}

/// The running container of `service` in `project`, found by compose's labels (v1 and v2 set
/// the same ones).
async fn service_container(project: &str, service: &str) -> Option<String> {
    let ids = compose::docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--filter",
        &format!("label=com.docker.compose.service={service}"),
    ])
    .await
    .ok()?;
    ids.lines()
        .map(str::trim)
        .find(|id| !id.is_empty())
        .map(str::to_owned)
}

/// The `--region` argument a node container runs with.
async fn container_region(container: &str) -> anyhow::Result<String> {
    let args = compose::container_args(container).await?;
    Ok(compose::flag_value(&args, "--region").unwrap_or_else(|| String::from("?")))
}

/// The container's address on the network whose name ends with `_<network>`.
async fn container_ip(container: &str, network: &str) -> anyhow::Result<String> {
    let networks = compose::container_networks(container).await?;
    let suffix = format!("_{network}");
    networks
        .iter()
        .find(|(name, _)| name.ends_with(&suffix))
        .and_then(|(_, settings)| settings["IPAddress"].as_str())
        .filter(|ip| !ip.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("container {container} is not on network {network}"))
}

/// Configured one-way delay between two regions, in ms, as the compose file reads it.
fn configured_delay_ms(from: &str, to: &str) -> Option<u64> {
    let (low, high) = if from < to { (from, to) } else { (to, from) };
    let (_, _, default) = DELAY_DEFAULTS_MS
        .iter()
        .find(|(a, b, _)| *a == low && *b == high)?;
    let name = format!(
        "SWITCHBOARD_DELAY_{}{}_MS",
        low.to_uppercase(),
        high.to_uppercase()
    );
    Some(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(*default),
    )
}

fn print_delays() {
    let delays: Vec<String> = DELAY_DEFAULTS_MS
        .iter()
        .filter_map(|(a, b, _)| configured_delay_ms(a, b).map(|ms| format!("{a}-{b} {ms} ms")))
        .collect();
    println!(
        "one-way delays (added on the sending region's relay, each direction): {}",
        delays.join(", ")
    );
}

/// Times `probes` Status calls to a node of region Y through the relay of region X (reached
/// from this host on region X's network) and directly (on region Y's network): the difference
/// is the X→Y→X round trip the relays add. Best effort: prints why when it cannot measure.
async fn measure_round_trips(project: &str, nodes: &BTreeMap<u64, NodeAt>, probes: u32) {
    // The first node of each region stands for it.
    let mut regions: BTreeMap<&str, &NodeAt> = BTreeMap::new();
    for node in nodes.values() {
        regions.entry(node.region.as_str()).or_insert(node);
    }
    println!();
    println!(
        "inter-region round trip: {probes} Status calls to a node of region Y through region X's relay, minus the same calls straight to the node"
    );
    println!(
        "{:>4}  {:>4}  {:>13}  {:>12}  {:>12}",
        "X", "Y", "configured ms", "measured p50", "measured p99"
    );
    for from in regions.keys() {
        for (to, target) in &regions {
            if from == to {
                continue;
            }
            let configured = configured_delay_ms(from, to)
                .map_or_else(|| String::from("?"), |ms| (2 * ms).to_string());
            match round_trip(project, from, target, probes).await {
                Ok((p50, p99)) => {
                    println!("{from:>4}  {to:>4}  {configured:>13}  {p50:>12.2}  {p99:>12.2}")
                }
                Err(e) => println!("{from:>4}  {to:>4}  {configured:>13}  not measured: {e}"),
            }
        }
    }
}

/// The round trip added between region `from` and `target`'s region, in ms: (p50 through the
/// relays − p50 direct, p99 through the relays − p50 direct).
async fn round_trip(
    project: &str,
    from: &str,
    target: &NodeAt,
    probes: u32,
) -> anyhow::Result<(f64, f64)> {
    let node_container = target
        .container
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("node {} has no container", target.id))?;
    let relay = service_container(project, &format!("relay-{from}"))
        .await
        .ok_or_else(|| anyhow::anyhow!("project {project} has no relay-{from}"))?;
    let port = target
        .advertised
        .rsplit_once(':')
        .map(|(_, port)| port)
        .ok_or_else(|| anyhow::anyhow!("advertised address {}", target.advertised))?;
    let via_relay = format!(
        "{}:{port}",
        container_ip(&relay, &format!("region-{from}")).await?
    );
    let direct = format!(
        "{}:{port}",
        container_ip(node_container, &format!("region-{}", target.region)).await?
    );
    let via = time_status(&via_relay, target.id, probes).await?;
    let straight = time_status(&direct, target.id, probes).await?;
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok((
        ms(&via, 0.5) - ms(&straight, 0.5),
        ms(&via, 0.99) - ms(&straight, 0.5),
    ))
}

/// Times Status calls on one connection to `addr`, checking node `id` answers.
async fn time_status(addr: &str, id: u64, probes: u32) -> anyhow::Result<Histogram<u64>> {
    let mut client = ClusterServiceClient::new(channel(addr).await?);
    let mut histogram = new_histogram();
    for probe in 0..WARMUP_REQUESTS + probes {
        let mut request = tonic::Request::new(v1::StatusRequest {});
        request.set_timeout(RPC_TIMEOUT);
        let started = Instant::now();
        let answer = client.status(request).await?.into_inner();
        let took = started.elapsed();
        anyhow::ensure!(
            answer.node_id == id,
            "{addr} answered as node {}, expected node {id}",
            answer.node_id
        );
        if probe >= WARMUP_REQUESTS {
            record(&mut histogram, took);
        }
    }
    Ok(histogram)
}

/// Times the leader's `ReadIndex` as a follower of each region asks it: through that region's
/// relay (straight to the leader in its own region). A follower's LINEARIZABLE read is this
/// plus a local read.
async fn measure_read_index(
    project: &str,
    nodes: &BTreeMap<u64, NodeAt>,
    leader: u64,
    probes: u32,
) {
    let Some(leader) = nodes.get(&leader) else {
        return;
    };
    let mut regions: Vec<&str> = nodes.values().map(|n| n.region.as_str()).collect();
    regions.sort_unstable();
    regions.dedup();
    println!();
    println!(
        "leader ReadIndex (quorum-confirmed by the leader in region {}), {probes} calls asked from each region:",
        leader.region
    );
    println!("{:>4}  {:>12}  {:>12}", "from", "p50 ms", "p99 ms");
    for from in regions {
        match time_read_index(project, from, leader, probes).await {
            Ok(histogram) => {
                let summary = Summary::of(&histogram);
                println!(
                    "{from:>4}  {:>12.2}  {:>12.2}",
                    summary.p50_ms, summary.p99_ms
                );
            }
            Err(e) => println!("{from:>4}  not measured: {e}"),
        }
    }
}

async fn time_read_index(
    project: &str,
    from: &str,
    leader: &NodeAt,
    probes: u32,
) -> anyhow::Result<Histogram<u64>> {
    let port = leader
        .advertised
        .rsplit_once(':')
        .map(|(_, port)| port)
        .ok_or_else(|| anyhow::anyhow!("advertised address {}", leader.advertised))?;
    let container = if from == leader.region {
        leader
            .container
            .clone()
            .ok_or_else(|| anyhow::anyhow!("node {} has no container", leader.id))?
    } else {
        service_container(project, &format!("relay-{from}"))
            .await
            .ok_or_else(|| anyhow::anyhow!("project {project} has no relay-{from}"))?
    };
    let addr = format!(
        "{}:{port}",
        container_ip(&container, &format!("region-{from}")).await?
    );
    let mut client = ClusterServiceClient::new(channel(&addr).await?);
    let mut histogram = new_histogram();
    for probe in 0..WARMUP_REQUESTS + probes {
        let mut request = tonic::Request::new(v1::ReadIndexRequest {});
        request.set_timeout(RPC_TIMEOUT);
        let started = Instant::now();
        client.read_index(request).await?;
        if probe >= WARMUP_REQUESTS {
            record(&mut histogram, started.elapsed());
        }
    }
    Ok(histogram)
}

fn leader_first(nodes: &BTreeMap<u64, NodeAt>, leader: u64) -> Vec<String> {
    let mut endpoints: Vec<String> = nodes
        .get(&leader)
        .map(|n| n.reachable.clone())
        .into_iter()
        .collect();
    endpoints.extend(
        nodes
            .values()
            .filter(|n| n.id != leader)
            .map(|n| n.reachable.clone()),
    );
    endpoints
}

/// Creates `calls` calls one after the other; returns (call id, log index) of each and the
/// write latencies.
async fn write_calls(
    client: &Client,
    calls: u32,
) -> anyhow::Result<(Vec<(String, u64)>, Histogram<u64>)> {
    let mut written = Vec::with_capacity(calls as usize);
    let mut histogram = new_histogram();
    for _ in 0..calls {
        let started = Instant::now();
        let response = client
            .create_call(v1::CreateCallRequest {
                tenant_id: TENANT.into(),
                source: "chaos-tests regions".into(),
                channel: v1::Channel::Voice.into(),
                ..Default::default()
            })
            .await?;
        record(&mut histogram, started.elapsed());
        let call_id = response
            .call
            .map(|c| c.call_id)
            .ok_or_else(|| anyhow::anyhow!("create_call answered without a call"))?;
        let index = response.meta.map_or(0, |m| m.index);
        written.push((call_id, index));
    }
    Ok((written, histogram))
}

/// Alternates LOCAL (with `min_index`) and LINEARIZABLE reads of the written calls on one node;
/// returns both histograms. Every answer must come from that node and carry the right call.
async fn time_reads(
    node: &NodeAt,
    written: &[(String, u64)],
    last_index: u64,
    reads: u32,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let mut client = CallServiceClient::new(channel(&node.reachable).await?);
    let (mut local, mut linearizable) = (new_histogram(), new_histogram());
    for read in 0..WARMUP_REQUESTS + reads {
        let (call_id, index) = &written[read as usize % written.len()];
        // Warm-up reads wait for the last write, so timed reads never wait on replication.
        let min_index = if read < WARMUP_REQUESTS {
            last_index
        } else {
            *index
        };
        for (consistency, min_index, histogram) in [
            (Consistency::Local, min_index, &mut local),
            (Consistency::Linearizable, 0, &mut linearizable),
        ] {
            let mut request = tonic::Request::new(v1::GetCallRequest {
                tenant_id: TENANT.into(),
                call_id: call_id.clone(),
                read: Some(ReadOptions {
                    consistency: consistency.into(),
                    min_index,
                }),
            });
            request.set_timeout(RPC_TIMEOUT);
            let started = Instant::now();
            let answer = client
                .get_call(request)
                .await
                .map_err(|status| {
                    anyhow::anyhow!(
                        "node {} {consistency:?} read: {:?}: {}",
                        node.id,
                        status.code(),
                        status.message()
                    )
                })?
                .into_inner();
            let took = started.elapsed();
            let served_by = answer.meta.map_or(0, |m| m.node_id);
            anyhow::ensure!(
                served_by == node.id,
                "a read sent to node {} was served by node {served_by}",
                node.id
            );
            anyhow::ensure!(
                answer.call.is_some_and(|c| c.call_id == *call_id),
                "node {} answered another call",
                node.id
            );
            if read >= WARMUP_REQUESTS {
                record(histogram, took);
            }
        }
    }
    Ok((local, linearizable))
}
