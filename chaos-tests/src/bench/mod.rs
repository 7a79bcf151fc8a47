//! `chaos-tests bench`: Switchboard against etcd, side by side, in one run on this machine.
//!
//! Both systems run as 3 real processes on loopback (Switchboard through
//! [`harness::ProcessCluster`], etcd through [`etcd::EtcdCluster`]), one after the other with the
//! same workload, client concurrency, connection pool and disk (the system temp directory), both
//! durable (fsync on) and at default tuning. Phases: the lifecycle workload in closed loop for each K (a fresh
//! cluster per system and K, interleaved so that machine noise hits both alike), open loop at
//! a fixed offered rate, LINEARIZABLE vs LOCAL reads, memory after many stored calls, and
//! failover. Results go to stdout as they come and to markdown + JSON at the end.
//!
//! It must not assert performance: it measures and reports, the reader judges.

pub mod etcd;
pub mod procstat;
pub mod report;
pub mod run;
pub mod sb;
pub mod stats;
pub mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::ProcessCluster;

use self::etcd::EtcdCluster;
use self::procstat::Usage;
use self::report::{FailoverRow, LoadRow, ReadRow, Report, RssRow};
use self::run::{Conn, LoadResult};
use self::stats::Summary;
use self::workload::Op;

/// How long a fresh cluster may take to elect a leader.
const LEADER_WAIT: Duration = Duration::from_secs(30);
/// Workers that preload data for the read and memory phases.
const PRELOAD_WORKERS: usize = 64;
/// Attempt timeout of one failover write (same as `chaos-tests failover`).
const FAILOVER_ATTEMPT: Duration = Duration::from_millis(500);
/// Give up a failover trial after this long without a successful write.
const FAILOVER_WAIT: Duration = Duration::from_secs(30);

/// Node flags of the "fast" failover profile (both systems' analogues).
const SB_FAST_FLAGS: [&str; 3] = [
    "--heartbeat-ms=50",
    "--election-timeout-min-ms=200",
    "--election-timeout-max-ms=400",
];
/// etcd randomizes its election timeout in [t, 2t): 200 ms gives Switchboard's 200..400 ms; it
/// requires the timeout to be at least 5 heartbeats, hence 40 ms.
const ETCD_FAST_FLAGS: [&str; 2] = ["--heartbeat-interval=40", "--election-timeout=200"];

/// `chaos-tests bench` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Closed-loop client counts (K), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    pub concurrency: Vec<usize>,
    /// Measured time of each closed-loop and open-loop run (e.g. 20s, 500ms, 1m).
    #[arg(long, value_parser = harness::parse_duration, default_value = "20s")]
    pub duration: Duration,
    /// Unmeasured warm-up before each run.
    #[arg(long, value_parser = harness::parse_duration, default_value = "3s")]
    pub warmup: Duration,
    /// Connections per system: min(K, this). One HTTP/2 connection each.
    #[arg(long, default_value_t = 16)]
    pub connections_max: usize,
    /// Switchboard clients to measure: raw (tonic at the leader) and/or library.
    #[arg(long, value_delimiter = ',', default_value = "raw,library")]
    pub clients: Vec<String>,
    /// Open-loop offered rates in new lifecycles per second (0 or empty: skip).
    #[arg(long, value_delimiter = ',', default_value = "100,300")]
    pub open_rate: Vec<f64>,
    /// Open loop: most lifecycles in flight; later arrivals are dropped and counted.
    #[arg(long, default_value_t = 4096)]
    pub open_inflight_max: usize,
    /// Readers for the LINEARIZABLE vs LOCAL read phase (0: skip).
    #[arg(long, default_value_t = 64)]
    pub read_concurrency: usize,
    /// Calls created (and started) before the read phase.
    #[arg(long, default_value_t = 1000)]
    pub read_calls: u64,
    /// Measured time of each read run.
    #[arg(long, value_parser = harness::parse_duration, default_value = "10s")]
    pub read_duration: Duration,
    /// Calls created before measuring memory (0: skip).
    #[arg(long, default_value_t = 100_000)]
    pub rss_calls: u64,
    /// Failover trials per system and profile (0: skip).
    #[arg(long, default_value_t = 20)]
    pub failover_runs: usize,
    /// Failover profiles: "default" (each system's default timeouts) and/or "fast".
    #[arg(long, value_delimiter = ',', default_value = "default,fast")]
    pub failover_profiles: Vec<String>,
    /// Systems to run.
    #[arg(long, value_delimiter = ',', default_value = "switchboard,etcd")]
    pub systems: Vec<String>,
    /// Extra flags for every `switchboard serve`, e.g. `--node-arg=--heartbeat-ms=50`.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    pub node_args: Vec<String>,
    /// Extra flags for every etcd member, e.g. `--etcd-arg=--snapshot-count=10000`.
    #[arg(long = "etcd-arg", allow_hyphen_values = true)]
    pub etcd_args: Vec<String>,
    /// Where to write `<name>.md` and `<name>.json`.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/bench-results"))]
    pub out_dir: PathBuf,
    /// Base name of the result files.
    #[arg(long, default_value = "latest")]
    pub name: String,
}

impl BenchArgs {
    fn runs(&self, system: &str) -> bool {
        self.systems.iter().any(|s| s == system)
    }

    fn connections(&self, k: usize) -> usize {
        k.clamp(1, self.connections_max.max(1))
    }
}

/// A running cluster of either system, with what the phases need from it.
// One per bench run.
#[allow(clippy::large_enum_variant)]
enum Cluster {
    Sb(ProcessCluster),
    Etcd(EtcdCluster),
}

impl Cluster {
    async fn start_sb(binary: &std::path::Path, flags: &[String]) -> anyhow::Result<Self> {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mut cluster = ProcessCluster::start(binary, 3, &flags)?;
        cluster.wait_for_leader(LEADER_WAIT).await?;
        Ok(Cluster::Sb(cluster))
    }

    async fn start_etcd(binary: &std::path::Path, flags: &[String]) -> anyhow::Result<Self> {
        let mut cluster = EtcdCluster::start(binary, 3, flags)?;
        cluster.wait_for_leader(LEADER_WAIT).await?;
        Ok(Cluster::Etcd(cluster))
    }

    fn pids(&self) -> Vec<(String, u32)> {
        match self {
            Cluster::Sb(c) => c
                .nodes
                .values()
                .filter_map(|n| n.pid().map(|pid| (format!("n{}", n.id), pid)))
                .collect(),
            Cluster::Etcd(c) => c.pids(),
        }
    }

    fn data_dirs(&self) -> Vec<(String, PathBuf)> {
        match self {
            Cluster::Sb(c) => c
                .nodes
                .values()
                .map(|n| (format!("n{}", n.id), n.data_dir.clone()))
                .collect(),
            Cluster::Etcd(c) => c
                .members
                .iter()
                .map(|m| (m.name.clone(), m.data_dir.clone()))
                .collect(),
        }
    }

    /// Write connections at the leader (`client` "raw"/"etcd-client") or library clients.
    async fn write_pool(&mut self, client: &str, size: usize) -> anyhow::Result<Vec<Conn>> {
        match self {
            Cluster::Sb(c) => {
                let leader = c.wait_for_leader(LEADER_WAIT).await?;
                let pool = if client == "library" {
                    sb::library_pool(&c.client_config(), size)?
                } else {
                    sb::raw_pool(&[c.grpc(leader)], c.tls(), c.admin_token(), size).await?
                };
                Ok(pool.into_iter().map(Conn::Sb).collect())
            }
            Cluster::Etcd(c) => {
                let leader = c.wait_for_leader(LEADER_WAIT).await?;
                let pool = etcd::connect_pool(&[c.members[leader].url()], size).await?;
                Ok(pool
                    .into_iter()
                    .map(|kv| Conn::Etcd(Box::new(kv)))
                    .collect())
            }
        }
    }

    /// Read connections spread round-robin over every node.
    async fn read_pool(&self, size: usize) -> anyhow::Result<Vec<Conn>> {
        match self {
            Cluster::Sb(c) => Ok(sb::raw_pool(&c.endpoints(), c.tls(), c.admin_token(), size)
                .await?
                .into_iter()
                .map(Conn::Sb)
                .collect()),
            Cluster::Etcd(c) => {
                let urls: Vec<String> = c.members.iter().map(|m| m.url()).collect();
                Ok(etcd::connect_pool(&urls, size)
                    .await?
                    .into_iter()
                    .map(|kv| Conn::Etcd(Box::new(kv)))
                    .collect())
            }
        }
    }
}

fn bench_cpu_s() -> f64 {
    procstat::cpu_seconds(std::process::id()).unwrap_or(0.0)
}

#[allow(clippy::too_many_arguments)]
fn load_row(
    system: &str,
    client: &str,
    mode: &str,
    concurrency: usize,
    connections: usize,
    offered: Option<f64>,
    result: &LoadResult,
    nodes: Vec<procstat::NodeUsage>,
    generator_cpu_s: f64,
) -> LoadRow {
    let window_s = result.window.as_secs_f64();
    let transitions = result.stats.count();
    LoadRow {
        system: system.to_owned(),
        client: client.to_owned(),
        mode: mode.to_owned(),
        concurrency,
        connections,
        offered_lifecycles_per_s: offered,
        window_s,
        transitions,
        lifecycles: result.lifecycles,
        errors: result.stats.errors(),
        dropped: result.dropped,
        transitions_per_s: transitions as f64 / window_s,
        lifecycles_per_s: result.lifecycles as f64 / window_s,
        all: Summary::of(&result.stats.combined()),
        ops: result
            .stats
            .summaries()
            .into_iter()
            .map(|(op, s)| (op.name().to_owned(), s))
            .collect(),
        nodes,
        generator_cpu_s,
        error_samples: result.stats.error_samples.clone(),
    }
}

fn print_row(row: &LoadRow) {
    let nodes = row
        .nodes
        .iter()
        .map(|n| format!("{} {:.1}s/{:.0}MiB", n.node, n.cpu_s, n.peak_rss_mib))
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "{:<11} {:<11} {:<6} K={:<4} {:>8.0} transitions/s {:>7.1} lifecycles/s  p50 {:>6.2} p99 {:>7.2} p99.9 {:>7.2} max {:>7.1} ms  errors {} dropped {}  [{nodes}] gen {:.1}s",
        row.system,
        row.client,
        row.mode,
        row.offered_lifecycles_per_s
            .map_or(row.concurrency.to_string(), |r| format!("{r:.0}/s")),
        row.transitions_per_s,
        row.lifecycles_per_s,
        row.all.p50_ms,
        row.all.p99_ms,
        row.all.p999_ms,
        row.all.max_ms,
        row.errors,
        row.dropped,
        row.generator_cpu_s,
    );
    for sample in &row.error_samples {
        println!("    error: {sample}");
    }
}

/// The system/client pairs of a lifecycle sweep, interleaved per K.
fn variants(args: &BenchArgs) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if args.runs("switchboard") {
        for client in &args.clients {
            out.push(("switchboard", client.clone()));
        }
    }
    if args.runs("etcd") {
        out.push(("etcd", "etcd-client".to_owned()));
    }
    out
}

struct Env {
    sb_binary: PathBuf,
    etcd_binary: Option<PathBuf>,
    sb_flags: Vec<String>,
    etcd_flags: Vec<String>,
}

impl Env {
    async fn cluster(&self, system: &str) -> anyhow::Result<Cluster> {
        match system {
            "switchboard" => Cluster::start_sb(&self.sb_binary, &self.sb_flags).await,
            _ => {
                let binary = self
                    .etcd_binary
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("etcd is not available"))?;
                Cluster::start_etcd(binary, &self.etcd_flags).await
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn load_phase(
    env: &Env,
    args: &BenchArgs,
    system: &str,
    client: &str,
    k: usize,
    connections: usize,
    open_rate: Option<f64>,
    run_id: &str,
) -> anyhow::Result<LoadRow> {
    let mut cluster = env.cluster(system).await?;
    let pool = cluster.write_pool(client, connections).await?;
    let usage = Usage::start(cluster.pids());
    let cpu0 = bench_cpu_s();
    let result = match open_rate {
        None => run::closed_loop(&pool, k, args.warmup, args.duration, run_id).await?,
        Some(rate) => {
            run::open_loop(
                &pool,
                rate,
                args.warmup,
                args.duration,
                args.open_inflight_max,
                run_id,
            )
            .await?
        }
    };
    let generator_cpu_s = bench_cpu_s() - cpu0;
    let nodes = usage.finish().await;
    drop(pool);
    drop(cluster);
    let mode = if open_rate.is_some() {
        "open"
    } else {
        "closed"
    };
    Ok(load_row(
        system,
        client,
        mode,
        k,
        connections,
        open_rate,
        &result,
        nodes,
        generator_cpu_s,
    ))
}

async fn read_phase(env: &Env, args: &BenchArgs, system: &str) -> anyhow::Result<Vec<ReadRow>> {
    let mut cluster = env.cluster(system).await?;
    let writers = cluster.write_pool("raw", args.connections_max).await?;
    let ids = run::preload(
        &writers,
        args.read_calls,
        PRELOAD_WORKERS,
        &[Op::Create, Op::Start],
        "reads",
    )
    .await?;
    drop(writers);
    let ids = Arc::new(ids);
    let connections = args.connections(args.read_concurrency);
    let pool = cluster.read_pool(connections).await?;
    let mut rows = Vec::new();
    for (local, name) in [(false, "linearizable"), (true, "local")] {
        let stats = run::read_loop(
            &pool,
            ids.clone(),
            args.read_concurrency,
            args.warmup.min(Duration::from_secs(2)),
            args.read_duration,
            local,
        )
        .await?;
        let latency = stats
            .summaries()
            .first()
            .map(|(_, s)| *s)
            .unwrap_or_default();
        let row = ReadRow {
            system: system.to_owned(),
            consistency: name.to_owned(),
            concurrency: args.read_concurrency,
            connections,
            calls: ids.len(),
            window_s: args.read_duration.as_secs_f64(),
            reads_per_s: stats.count() as f64 / args.read_duration.as_secs_f64(),
            errors: stats.errors(),
            latency,
        };
        println!(
            "{:<11} read {:<12} K={} {:>8.0} reads/s  p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.1} ms  errors {}",
            row.system,
            row.consistency,
            row.concurrency,
            row.reads_per_s,
            latency.p50_ms,
            latency.p99_ms,
            latency.p999_ms,
            latency.max_ms,
            row.errors
        );
        for sample in &stats.error_samples {
            println!("    error: {sample}");
        }
        rows.push(row);
    }
    Ok(rows)
}

async fn rss_phase(env: &Env, args: &BenchArgs, system: &str) -> anyhow::Result<RssRow> {
    let mut cluster = env.cluster(system).await?;
    let pool = cluster.write_pool("raw", args.connections_max).await?;
    let usage = Usage::start(cluster.pids());
    let started = Instant::now();
    run::preload(&pool, args.rss_calls, PRELOAD_WORKERS, &[Op::Create], "rss").await?;
    let load_s = started.elapsed().as_secs_f64();
    drop(pool);
    // Let followers finish applying and background flushes settle before sampling.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peaks = usage.finish().await;
    let pids = cluster.pids();
    let row = RssRow {
        system: system.to_owned(),
        calls: args.rss_calls,
        load_s,
        rss_mib: procstat::rss_now_mib(&pids),
        peak_rss_mib: peaks
            .iter()
            .map(|n| (n.node.clone(), n.peak_rss_mib))
            .collect(),
        data_mib: cluster
            .data_dirs()
            .iter()
            .map(|(n, d)| (n.clone(), procstat::dir_bytes(d) as f64 / (1024.0 * 1024.0)))
            .collect(),
    };
    println!(
        "{:<11} memory after {} calls (loaded in {:.1}s): RSS {:?} MiB, peak {:?} MiB, data {:?} MiB",
        row.system, row.calls, row.load_s, row.rss_mib, row.peak_rss_mib, row.data_mib
    );
    Ok(row)
}

async fn etcd_failover_trial(
    binary: &std::path::Path,
    flags: &[String],
    run: usize,
) -> anyhow::Result<Duration> {
    let mut cluster = EtcdCluster::start(binary, 3, flags)?;
    let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
    anyhow::ensure!(
        etcd::try_write(
            &cluster.members[leader].url(),
            format!("/failover/{run}/0"),
            Duration::from_secs(5)
        )
        .await,
        "write before the kill failed"
    );
    let survivors: Vec<String> = (0..cluster.members.len())
        .filter(|i| *i != leader)
        .map(|i| cluster.members[i].url())
        .collect();
    cluster.kill(leader)?;
    let killed = Instant::now();
    let mut attempt = 1u64;
    loop {
        for url in &survivors {
            if etcd::try_write(url, format!("/failover/{run}/{attempt}"), FAILOVER_ATTEMPT).await {
                return Ok(killed.elapsed());
            }
            attempt += 1;
        }
        anyhow::ensure!(
            killed.elapsed() < FAILOVER_WAIT,
            "no etcd write succeeded within {FAILOVER_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn failover_phase(
    env: &Env,
    args: &BenchArgs,
    system: &str,
    profile: &str,
) -> anyhow::Result<FailoverRow> {
    let mut times = Vec::with_capacity(args.failover_runs);
    let flags: Vec<String> = match (system, profile) {
        ("switchboard", "fast") => SB_FAST_FLAGS.iter().map(|s| (*s).to_owned()).collect(),
        ("etcd", "fast") => ETCD_FAST_FLAGS.iter().map(|s| (*s).to_owned()).collect(),
        _ => Vec::new(),
    };
    for run in 0..args.failover_runs {
        let took = if system == "switchboard" {
            let mut all = env.sb_flags.clone();
            all.extend(flags.iter().cloned());
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            crate::failover::trial(&env.sb_binary, run, &all).await?
        } else {
            let binary = env
                .etcd_binary
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("etcd is not available"))?;
            let mut all = env.etcd_flags.clone();
            all.extend(flags.iter().cloned());
            etcd_failover_trial(binary, &all, run).await?
        };
        times.push(took);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let row = FailoverRow {
        system: system.to_owned(),
        profile: profile.to_owned(),
        flags: flags.join(" "),
        runs: times.len(),
        median_ms: stats::median(&times).map(ms).unwrap_or(0.0),
        min_ms: times.iter().min().copied().map(ms).unwrap_or(0.0),
        max_ms: times.iter().max().copied().map(ms).unwrap_or(0.0),
        trials_ms: times.iter().map(|d| ms(*d)).collect(),
    };
    println!(
        "{:<11} failover {:<7} {} runs: median {:.0} ms, min {:.0} ms, max {:.0} ms",
        row.system, row.profile, row.runs, row.median_ms, row.min_ms, row.max_ms
    );
    Ok(row)
}

fn mount_of(path: &std::path::Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "unknown".into();
    };
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mounts
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() >= 3 && path.starts_with(f[1]))
                .then(|| (f[1].len(), format!("{} {} on {}", f[0], f[2], f[1])))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, m)| m)
}

fn settings(args: &BenchArgs, env: &Env) -> BTreeMap<String, String> {
    let mut s = BTreeMap::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    s.insert("machine.cpu".into(), format!("{cores} cores, {cpu}"));
    s.insert(
        "machine.kernel".into(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
    );
    let tmp = std::env::temp_dir();
    s.insert(
        "machine.disk (data dirs of both systems)".into(),
        format!("{} ({})", tmp.display(), mount_of(&tmp)),
    );
    s.insert(
        "switchboard.binary".into(),
        env.sb_binary.display().to_string(),
    );
    // Resolve the serve options exactly as `switchboard serve` would, to print every default.
    let probe = node::config::ServeArgs {
        node_id: Some(1),
        listen: "127.0.0.1:7101".parse().ok(),
        data_dir: Some(PathBuf::from("<tempdir>/node-N")),
        initial_cluster: Some("1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103".into()),
        ..Default::default()
    };
    if let Ok(config) = probe.resolve() {
        s.insert(
            "switchboard.serve defaults".into(),
            format!(
                "heartbeat {:?}, election timeout {:?}..{:?}, snapshot every {} entries, {} entries kept behind snapshot, write timeout {:?}, read wait max {:?}, grpc message max {} B, grpc concurrency per connection {}",
                config.heartbeat,
                config.election_timeout_min,
                config.election_timeout_max,
                config.snapshot_logs_since_last,
                config.logs_kept_behind_snapshot,
                config.write_timeout,
                config.read_wait_max,
                config.grpc_message_bytes_max,
                config.edge.requests_in_flight_per_connection_max
            ),
        );
    }
    s.insert(
        "switchboard.extra serve flags".into(),
        env.sb_flags.join(" "),
    );
    s.insert(
        "switchboard.durability".into(),
        "log append acknowledged after fsync of the RocksDB WAL (group commit); vote fsynced; reply after commit + apply".into(),
    );
    s.insert(
        "switchboard.log level".into(),
        "RUST_LOG=warn,openraft=error".into(),
    );
    if let Some(binary) = &env.etcd_binary {
        s.insert("etcd.version".into(), etcd::version(binary));
        s.insert(
            "etcd.flags (all at 3.4 defaults, logger aside)".into(),
            etcd::tuning_flags().join(" "),
        );
        s.insert("etcd.extra flags".into(), env.etcd_flags.join(" "));
        let sample = etcd::member_args(
            "n1",
            "<tempdir>/n1",
            "127.0.0.1:<peer1>",
            "127.0.0.1:<client1>",
            "n1=http://127.0.0.1:<peer1>,n2=http://127.0.0.1:<peer2>,n3=http://127.0.0.1:<peer3>",
            &env.etcd_flags,
        );
        s.insert(
            "etcd.command line (member 1)".into(),
            format!("{} {}", binary.display(), sample.join(" ")),
        );
        s.insert(
            "etcd.durability".into(),
            "WAL fsync before acknowledging (etcd 3.4 has no way to turn it off)".into(),
        );
        s.insert(
            "etcd.data model".into(),
            "/calls/<id>/state + record key per transition; Txn(compare create_revision=0 | value=state) then put state, put record".into(),
        );
    }
    s.insert(
        "workload".into(),
        format!(
            "create, start, {} turns ({} B text), handoff on every other call (snapshot of the turns), end; tenant {:?}; mean {} transitions per lifecycle",
            workload::TURNS_PER_CALL,
            workload::TURN_TEXT_BYTES,
            workload::TENANT,
            workload::transitions_per_lifecycle_mean()
        ),
    );
    s.insert(
        "run.concurrency (closed loop K)".into(),
        format!("{:?}", args.concurrency),
    );
    s.insert("run.connections".into(), format!("min(K, {}) per system, one HTTP/2 connection each; writes to the leader, reads round-robin over all nodes", args.connections_max));
    s.insert(
        "run.duration / warmup".into(),
        format!(
            "{:?} measured after {:?} warm-up; a fresh cluster per system and K",
            args.duration, args.warmup
        ),
    );
    s.insert("run.switchboard clients".into(), args.clients.join(","));
    s.insert(
        "run.open loop".into(),
        format!(
            "rates {:?} lifecycles/s, in-flight max {}",
            args.open_rate, args.open_inflight_max
        ),
    );
    s.insert(
        "run.reads".into(),
        format!(
            "{} readers, {} calls, {:?} each consistency; LOCAL = etcd serializable",
            args.read_concurrency, args.read_calls, args.read_duration
        ),
    );
    s.insert(
        "run.memory".into(),
        format!(
            "{} calls created (CreateCall / create txn), RSS sampled every {:?}",
            args.rss_calls,
            procstat::RSS_SAMPLE_INTERVAL
        ),
    );
    s.insert("run.failover".into(), format!("{} trials per system and profile {:?}; fast = switchboard `{}`, etcd `{}`; attempt timeout {:?}", args.failover_runs, args.failover_profiles, SB_FAST_FLAGS.join(" "), ETCD_FAST_FLAGS.join(" "), FAILOVER_ATTEMPT));
    s.insert(
        "run.request timeout".into(),
        format!("{:?}", sb::REQUEST_TIMEOUT),
    );
    s
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let env = Env {
        sb_binary: crate::switchboard_binary()?,
        etcd_binary: if args.runs("etcd") {
            Some(etcd::ensure_etcd()?)
        } else {
            None
        },
        sb_flags: args.node_args.clone(),
        etcd_flags: args.etcd_args.clone(),
    };
    let settings = settings(&args, &env);
    println!("settings:");
    for (k, v) in &settings {
        println!("  {k}: {v}");
    }
    let mut lifecycle = Vec::new();
    for &k in &args.concurrency {
        for (system, client) in variants(&args) {
            let row = load_phase(
                &env,
                &args,
                system,
                &client,
                k,
                args.connections(k),
                None,
                &format!("k{k}-{client}"),
            )
            .await?;
            print_row(&row);
            lifecycle.push(row);
        }
    }
    let mut open_loop = Vec::new();
    for &rate in args.open_rate.iter().filter(|r| **r > 0.0) {
        for (system, client) in variants(&args) {
            let row = load_phase(
                &env,
                &args,
                system,
                &client,
                args.open_inflight_max,
                args.connections_max,
                Some(rate),
                &format!("open{rate}-{client}"),
            )
            .await?;
            print_row(&row);
            open_loop.push(row);
        }
    }
    let systems: Vec<&str> = ["switchboard", "etcd"]
        .into_iter()
        .filter(|s| args.runs(s))
        .collect();
    let mut reads = Vec::new();
    if args.read_concurrency > 0 && args.read_calls > 0 {
        for system in &systems {
            reads.extend(read_phase(&env, &args, system).await?);
        }
    }
    let mut rss = Vec::new();
    if args.rss_calls > 0 {
        for system in &systems {
            rss.push(rss_phase(&env, &args, system).await?);
        }
    }
    let mut failover = Vec::new();
    if args.failover_runs > 0 {
        for profile in &args.failover_profiles {
            for system in &systems {
                failover.push(failover_phase(&env, &args, system, profile).await?);
            }
        }
    }

    let mut comparisons = report::compare(&lifecycle);
    comparisons.extend(report::compare(&open_loop));
    let verdict = report::verdict(&lifecycle, &comparisons, &failover);
    let report = Report {
        command,
        started_unix_s,
        total_s: started.elapsed().as_secs_f64(),
        settings,
        lifecycle,
        open_loop,
        comparisons,
        reads,
        failover,
        rss,
        verdict,
    };
    let markdown = report::markdown(&report);
    std::fs::create_dir_all(&args.out_dir)?;
    let md_path = args.out_dir.join(format!("{}.md", args.name));
    let json_path = args.out_dir.join(format!("{}.json", args.name));
    std::fs::write(&md_path, &markdown)?;
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)?;
    println!("\n{markdown}");
    println!("wrote {} and {}", md_path.display(), json_path.display());
    Ok(())
}
