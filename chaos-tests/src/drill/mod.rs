//! Chaos drills, Jepsen-style: real `switchboard` processes (on loopback, or each in its own
//! network namespace), a workload of concurrent clients recorded in a history, a nemesis that
//! injects faults chosen from one seed, and checkers that judge the history and the healed
//! cluster.
//!
//! A drill has two phases. Safety: the workload runs while the nemesis injects faults. Liveness:
//! every fault is healed and the cluster must accept a write within `--liveness-bound`; then
//! the nodes must converge, and every checker runs. The report prints the seed, each fault with
//! its time, operations by outcome, every verdict and the replay command. The drill never
//! changes anything outside what it created, and removes all of it on every exit path.

pub mod activity;
pub mod clock;
pub mod cluster;
pub mod disk;
pub mod nemesis;
pub mod watchers;
pub mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use harness::Agreement;
use proto::v1;

use crate::checkers::clock::ClockFacts;
use crate::checkers::{self, Facts, NodeFinal, Verdict};
use crate::history::{History, OpKind, Outcome, ReadLevel, SeenEvent};
use crate::rng::Rng;
use cluster::{DrillCluster, Mode};
use nemesis::{FaultKind, FaultRecord, Nemesis, Timing};

/// How long the watchers may take, once the healed log's end is known, to deliver up to it.
const WATCH_DRAIN_WAIT: Duration = Duration::from_secs(30);
/// Pages of the event log read per node after healing (1000 events each).
const EVENT_PAGES_MAX: u32 = 10_000;
/// Attempts to read one page of a node's event log after healing.
const PAGE_ATTEMPTS: u32 = 5;
/// How long the cluster may take to elect a leader, at the start and after healing. Some node
/// saying it leads is enough (`Agreement::LeaderOnly`): after healing, a node removed from the
/// membership, or wiped and waiting to be added back, names no leader or a stale one.
const LEADER_WAIT: Duration = Duration::from_secs(60);
const CONVERGE_WAIT: Duration = Duration::from_secs(60);
const CLIENTS_STOP_WAIT: Duration = Duration::from_secs(30);

/// `chaos-tests drill` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DrillArgs {
    /// Seed of every decision (faults, timing, operations); random when absent (printed).
    #[arg(long, env = "CHAOS_SEED")]
    pub seed: Option<u64>,
    /// Length of the safety phase (faults on), e.g. 60s, 5m.
    #[arg(long, default_value = "60s", value_parser = harness::parse_duration)]
    pub duration: Duration,
    /// Number of nodes (3 or 5).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=5))]
    pub nodes: u64,
    /// Concurrent workload clients.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub clients: u32,
    /// Where nodes run; default: netns when root with ip and nft, else loopback.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Compose mode: the compose file whose `nodeN` services are the cluster.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/compose/docker-compose.yml"))]
    pub compose_file: PathBuf,
    /// Compose mode: the node image (default: the compose file's, switchboard:dev).
    #[arg(long)]
    pub image: Option<String>,
    /// Faults to inject (comma-separated); default: every fault the mode supports.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub faults: Vec<FaultKind>,
    /// Run the workload without any fault.
    #[arg(long)]
    pub no_faults: bool,
    /// Quiet time between faults, most (ms; the least is a quarter of it).
    #[arg(long, default_value_t = 2000)]
    pub quiet_ms_max: u64,
    /// How long a fault lasts, most (ms; the least is a quarter of it).
    #[arg(long, default_value_t = 4000)]
    pub hold_ms_max: u64,
    /// After healing, the cluster must accept a write within this bound.
    #[arg(long, default_value = "30s", value_parser = harness::parse_duration)]
    pub liveness_bound: Duration,
    /// History file (JSON lines); default: <tmp>/switchboard-chaos-<seed>.jsonl.
    #[arg(long)]
    pub history: Option<PathBuf>,
    /// Extra flags for every `switchboard serve`, e.g. `--node-arg=--heartbeat-ms=50`.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    pub node_args: Vec<String>,
    /// Also write the report's numbers as one JSON object to this file (what `soak` reads).
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
}

/// Runs one drill; returns whether every checker passed.
pub async fn run(args: DrillArgs) -> anyhow::Result<bool> {
    let seed = args.seed.unwrap_or_else(|| {
        // The only value not derived from a seed: the seed itself, printed for replay.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_007)
    });
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = drill(seed, &args) => result,
        _ = terminate.recv() => {
            eprintln!("terminated; cleaning up (replay with CHAOS_SEED={seed})");
            anyhow::bail!("terminated")
        }
        _ = tokio::signal::ctrl_c() => {
            // Returning drops the cluster: processes, namespaces and directories go with it.
            eprintln!("interrupted; cleaning up (replay with CHAOS_SEED={seed})");
            anyhow::bail!("interrupted")
        }
    }
}

fn replay_command(seed: u64, args: &DrillArgs, mode: Mode, faults: &[FaultKind]) -> String {
    let faults: Vec<String> = faults.iter().map(|f| f.name()).collect();
    let mut line = format!(
        "CHAOS_SEED={seed} cargo run -p chaos-tests --release -- drill --duration {}s --nodes {} --clients {} --mode {}",
        args.duration.as_secs(),
        args.nodes,
        args.clients,
        mode_name(mode),
    );
    if mode == Mode::Compose {
        line.push_str(&format!(" --compose-file {}", args.compose_file.display()));
        if let Some(image) = &args.image {
            line.push_str(&format!(" --image {image}"));
        }
    }
    if faults.is_empty() {
        line.push_str(" --no-faults");
    } else {
        line.push_str(&format!(" --faults {}", faults.join(",")));
    }
    for arg in &args.node_args {
        line.push_str(&format!(" --node-arg={arg}"));
    }
    line
}

pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Loopback => "loopback",
        Mode::Netns => "netns",
        Mode::Compose => "compose",
    }
}

async fn drill(seed: u64, args: &DrillArgs) -> anyhow::Result<bool> {
    let mode = match args.mode {
        Some(mode) => mode,
        None if crate::netns::preflight().is_ok() => Mode::Netns,
        None => Mode::Loopback,
    };
    let mut faults: Vec<FaultKind> = if args.no_faults {
        Vec::new()
    } else if args.faults.is_empty() {
        FaultKind::defaults(mode)
    } else {
        args.faults.clone()
    };
    if faults.contains(&FaultKind::DiskFull) && mode != Mode::Compose && !disk::is_root() {
        anyhow::bail!(
            "fault disk-full needs root: it mounts a tmpfs as each node's data directory"
        );
    }
    let libfaketime = if faults.iter().any(|f| f.is_clock()) {
        match clock::find_libfaketime() {
            Some(library) => Some(library),
            None if args.faults.is_empty() => {
                // Defaults are "what this machine can do": leave clock faults out, say so.
                println!("   clock faults left out: {}", clock::missing_libfaketime());
                faults.retain(|f| !f.is_clock());
                None
            }
            None => anyhow::bail!("{}", clock::missing_libfaketime()),
        }
    } else {
        None
    };
    if let Some(f) = faults.iter().find(|f| !f.supported(mode)) {
        let modes: Vec<&str> = [Mode::Loopback, Mode::Netns, Mode::Compose]
            .into_iter()
            .filter(|m| f.supported(*m))
            .map(mode_name)
            .collect();
        anyhow::bail!("fault {f:?} needs --mode {}", modes.join(" or "));
    }
    if mode == Mode::Compose && !args.node_args.is_empty() {
        anyhow::bail!("--node-arg does not reach containers: set node options in the compose file");
    }
    let replay = replay_command(seed, args, mode, &faults);
    let nodes = if mode == Mode::Compose {
        "the compose file's".to_owned()
    } else {
        args.nodes.to_string()
    };
    println!(
        "== switchboard drill: seed {seed}, mode {mode:?}, {nodes} nodes, {} clients, safety phase {:?}",
        args.clients, args.duration
    );
    println!("   replay: {replay}");
    let mut cluster = if mode == Mode::Compose {
        let cluster =
            DrillCluster::start_compose(&args.compose_file, args.image.as_deref()).await?;
        if let Some(compose) = &cluster.compose {
            println!(
                "   compose project {} from {}, ports on {}: nodes {:?}",
                compose.project,
                compose.file.display(),
                compose.host_ip,
                cluster.ids()
            );
        }
        cluster
    } else {
        let binary = crate::switchboard_binary()?;
        let mut node_args = vec![
            // Small snapshot thresholds so that snapshots, purges and installs happen in a drill.
            "--snapshot-logs-since-last=500".to_owned(),
            "--logs-kept-behind-snapshot=50".to_owned(),
        ];
        node_args.extend(args.node_args.iter().cloned());
        let disk = cluster::DiskSetup {
            shim: if faults.iter().any(|f| f.needs_shim()) {
                Some(disk::shim_library()?)
            } else {
                None
            },
            tmpfs_mib: faults
                .contains(&FaultKind::DiskFull)
                .then_some(disk::DATA_TMPFS_MIB),
        };
        DrillCluster::start_with_disks(binary, mode, args.nodes, node_args, disk, libfaketime)
            .await?
    };
    harness::wait_for_leader(
        &cluster.endpoints(),
        cluster.tls(),
        cluster.token(),
        LEADER_WAIT,
        Agreement::LeaderOnly,
    )
    .await?;
    let history_path = args
        .history
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("switchboard-chaos-{seed}.jsonl")));
    let history = History::create(Some(&history_path))?;
    let started = Instant::now();
    let node_clients: Vec<(u64, client::Client)> = cluster
        .nodes
        .values()
        .map(|n| (n.id, n.client.clone()))
        .collect();
    let shared = workload::Shared::new(history.clone(), seed, cluster.reach(), node_clients);

    // Watchers run through both phases, then drain to the end of the healed log.
    let (drain_watchers, mut watchers) = watchers::start(&cluster.reach(), WATCH_DRAIN_WAIT)?;

    // Safety phase.
    println!("-- safety phase: workload + faults {faults:?}");
    let mut clients = tokio::task::JoinSet::new();
    for who in 0..args.clients {
        clients.spawn(workload::run_client(shared.clone(), who));
    }
    // Agent activity batches beside the call workload, judged on their own.
    let activity_writer = tokio::spawn(activity::run(cluster.reach(), seed, shared.clone()));
    let timing = Timing {
        quiet_ms: (args.quiet_ms_max / 4, args.quiet_ms_max.max(1)),
        hold_ms: (args.hold_ms_max / 4, args.hold_ms_max.max(1)),
    };
    let (records, floods, disk_facts) = {
        let mut nemesis = Nemesis::new(
            &mut cluster,
            Rng::fork(seed, 1),
            faults.clone(),
            timing,
            started,
        )?;
        if faults.is_empty() {
            tokio::time::sleep(args.duration).await;
        } else {
            nemesis.run(args.duration).await;
        }
        (nemesis.records, nemesis.floods, nemesis.disk)
    };
    let remaining = args.duration.saturating_sub(started.elapsed());
    tokio::time::sleep(remaining).await;
    shared.stop.store(true, Ordering::Relaxed);
    let stop_deadline = Instant::now() + CLIENTS_STOP_WAIT;
    while !clients.is_empty() && Instant::now() < stop_deadline {
        match tokio::time::timeout(Duration::from_secs(1), clients.join_next()).await {
            Ok(Some(Ok(Err(e)))) => println!("   client stopped with an error: {e}"),
            Ok(Some(Err(e))) => println!("   client task failed: {e}"),
            _ => {}
        }
    }
    clients.abort_all();
    let activity_batches = match tokio::time::timeout(CLIENTS_STOP_WAIT, activity_writer).await {
        Ok(Ok(batches)) => batches,
        _ => {
            println!("   activity writer did not stop in time");
            Vec::new()
        }
    };

    // Liveness phase.
    println!("-- liveness phase: heal everything");
    let healed_at = Instant::now();
    heal_all(&mut cluster).await;
    let liveness = probe_write(&shared, args.liveness_bound).await;
    match liveness {
        Some(took) => println!("   first write {} ms after healing", took.as_millis()),
        None => println!("   no write within {:?} of healing", args.liveness_bound),
    }
    let convergence = converge(&cluster, CONVERGE_WAIT).await;
    let leader = cluster.leader().await;
    if let Some(leader) = leader
        && let Some(client) = cluster.client_of(leader)
    {
        let node = (leader, client);
        for call_id in shared.known_call_ids() {
            workload::read_call(
                &shared,
                999,
                &node,
                &call_id,
                ReadLevel::Linearizable,
                false,
            )
            .await;
        }
    }
    let nodes = collect_finals(&cluster).await;
    history.flush();
    // The leader's log, else any node's (a node without one is a violation of its own).
    let final_log = leader
        .and_then(|l| nodes.iter().find(|n| n.node_id == l && n.events.is_some()))
        .or_else(|| nodes.iter().find(|n| n.events.is_some()))
        .and_then(|n| n.events.clone())
        .unwrap_or_default();
    let head = final_log.last().map_or(1, |e| e.position + 1);
    drain_watchers.send_replace(Some(head));
    let mut watch_records = Vec::new();
    let watchers_deadline = Instant::now() + WATCH_DRAIN_WAIT + Duration::from_secs(5);
    while let Ok(Some(joined)) = tokio::time::timeout(
        watchers_deadline.saturating_duration_since(Instant::now()),
        watchers.join_next(),
    )
    .await
    {
        match joined {
            Ok(record) => watch_records.push(record),
            Err(e) => println!("   watcher task failed: {e}"),
        }
    }
    watchers.abort_all();
    let facts = Facts {
        ops: history.ops(),
        final_log,
        nodes,
    };
    let mut verdicts = checkers::check_all(&facts);
    verdicts.push(checkers::activity_batches::check(
        &facts.final_log,
        &activity_batches,
    ));
    let mut watch_verdict = checkers::watch_streams::check(&facts.final_log, &watch_records);
    if watch_records.len() < watchers::specs().len() {
        watch_verdict.violation(format!(
            "{} of {} watchers did not finish within {:?}",
            watchers::specs().len() - watch_records.len(),
            watchers::specs().len(),
            WATCH_DRAIN_WAIT
        ));
    }
    verdicts.push(watch_verdict);
    verdicts.push(checkers::leader_under_flood::check(&floods));
    if faults.iter().any(|f| f.opt_in()) {
        verdicts.extend(checkers::disk::check_all(&facts, &disk_facts));
    }
    let clock_facts = ClockFacts {
        skew_ms_max: cluster.clock.as_ref().map_or(0, |c| c.skew_ms_max()),
        started_unix_ms: history.started_unix_ms(),
        checked_at_us: history.now_us(),
        clock_faults_us: records
            .iter()
            .filter(|r| r.kind.is_clock())
            .map(|r| {
                let healed_ms = r.healed_ms.unwrap_or(u64::MAX / 1000);
                (r.at_ms * 1000, healed_ms * 1000)
            })
            .collect(),
    };
    verdicts.extend(checkers::clock::check(&facts, &clock_facts));
    let mut live = Verdict::new("liveness after healing");
    live.checked = format!("bound {:?}", args.liveness_bound);
    if liveness.is_none() {
        live.violation(format!(
            "no write was accepted within {:?} of healing",
            args.liveness_bound
        ));
    }
    if let Err(e) = &convergence {
        live.violation(format!("nodes did not converge: {e}"));
    }
    verdicts.push(live);
    let ok = verdicts.iter().all(Verdict::ok);
    let evidence = if ok {
        None
    } else {
        Some(cluster.keep_evidence().await)
    };
    let r = Report {
        seed,
        mode,
        args,
        records: &records,
        facts: &facts,
        verdicts: &verdicts,
        liveness,
        healed_after_ms: u64::try_from(healed_at.duration_since(started).as_millis()).unwrap_or(0),
        history_path: &history_path,
        replay: &replay,
        evidence: evidence.as_deref(),
    };
    report(&r);
    if let Some(path) = &args.summary_json {
        let summary = DrillSummary::new(&faults, &r);
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?).map_err(|e| {
            anyhow::anyhow!("failed to write the summary to {}: {e}", path.display())
        })?;
    }
    Ok(ok)
}

/// The drill's outcome in a form a program reads (`--summary-json`): what `soak` tabulates.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DrillSummary {
    pub seed: u64,
    pub mode: String,
    /// Fault kinds the nemesis chose from, as named on the command line.
    pub faults: Vec<String>,
    pub faults_injected: usize,
    pub ops_ok: usize,
    pub ops_fail: usize,
    pub ops_unknown: usize,
    /// Milliseconds from healing to the first accepted write; `None`: none within the bound.
    pub liveness_ms: Option<u64>,
    pub verdicts: Vec<VerdictSummary>,
    pub pass: bool,
    pub replay: String,
    pub history: String,
    /// Node logs and data kept after a failed run.
    pub evidence: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VerdictSummary {
    pub name: String,
    pub pass: bool,
    pub checked: String,
    pub violation_count: usize,
    /// The first violations (at most `checkers::VIOLATIONS_KEPT_MAX`).
    pub violations: Vec<String>,
}

impl DrillSummary {
    fn new(faults: &[FaultKind], r: &Report<'_>) -> Self {
        let count = |outcome: fn(Outcome) -> bool| {
            r.facts.ops.iter().filter(|op| outcome(op.outcome)).count()
        };
        Self {
            seed: r.seed,
            mode: mode_name(r.mode).to_owned(),
            faults: faults.iter().map(|f| f.name()).collect(),
            faults_injected: r.records.len(),
            ops_ok: count(|o| o == Outcome::Ok),
            ops_fail: count(|o| o == Outcome::Fail),
            ops_unknown: count(|o| matches!(o, Outcome::Unknown | Outcome::Pending)),
            liveness_ms: r
                .liveness
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            verdicts: r
                .verdicts
                .iter()
                .map(|v| VerdictSummary {
                    name: v.name.to_owned(),
                    pass: v.ok(),
                    checked: v.checked.clone(),
                    violation_count: v.violation_count,
                    violations: v.violations.clone(),
                })
                .collect(),
            pass: r.verdicts.iter().all(Verdict::ok),
            replay: r.replay.to_owned(),
            history: r.history_path.display().to_string(),
            evidence: r.evidence.map(|p| p.display().to_string()),
        }
    }
}

/// Heals every fault: network rules, proxy shapes, clocks, paused and dead processes,
/// membership.
async fn heal_all(cluster: &mut DrillCluster) {
    disk::heal_disks(cluster);
    let ids = cluster.ids();
    if let Some(clock) = cluster.clock.as_mut()
        && let Err(e) = clock.reset_all(&ids)
    {
        println!("   reset clocks: {e}");
    }
    if let Some(net) = &cluster.net
        && let Err(e) = net.heal()
    {
        println!("   heal network: {e}");
    }
    for id in cluster.ids() {
        if let Some(node) = cluster.nodes.get(&id)
            && let Some(p) = &node.proxy
        {
            p.shape.clear();
        }
        if let Err(e) = cluster.reconnect(id).await {
            println!("   reconnect node {id}: {e}");
        }
        if let Err(e) = cluster.resume(id).await {
            println!("   resume node {id}: {e}");
        }
        if let Err(e) = cluster.restart(id).await {
            println!("   restart node {id}: {e}");
        }
    }
    // Every node must be a voter again (a membership fault may have been cut short).
    let admin = match workload::write_client(&cluster.reach()) {
        Ok(admin) => admin,
        Err(e) => {
            println!("   admin client: {e}");
            return;
        }
    };
    let leader = harness::wait_for_leader(
        &cluster.endpoints(),
        cluster.tls(),
        cluster.token(),
        LEADER_WAIT,
        Agreement::LeaderOnly,
    )
    .await;
    if leader.is_err() {
        println!("   no leader after healing");
        return;
    }
    let Ok(status) = admin.status(v1::StatusRequest {}).await else {
        return;
    };
    for id in cluster.ids() {
        let voter = status.members.iter().any(|m| m.node_id == id && m.voter);
        if !voter {
            println!("   node {id} is not a voter after healing: adding it back");
            if let Err(e) = nemesis::readd(cluster, &admin, id).await {
                println!("   re-add node {id}: {e}");
            }
        }
    }
}

/// Writes until one succeeds; returns how long that took, `None` past `bound`.
async fn probe_write(shared: &workload::Shared, bound: Duration) -> Option<Duration> {
    let started = Instant::now();
    let client = workload::write_client(shared.reach()).ok()?;
    for n in 0..10_000u32 {
        if started.elapsed() > bound {
            return None;
        }
        let op = workload::write_once(
            shared,
            &client,
            998,
            workload::Write::probe(&format!("probe-{n}")),
        )
        .await;
        if op.outcome == Outcome::Ok {
            let took = started.elapsed();
            return (took <= bound).then_some(took);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Waits until every node has applied the same index, the leader's commit index.
async fn converge(cluster: &DrillCluster, within: Duration) -> anyhow::Result<u64> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < within {
        let statuses = cluster.statuses().await;
        let applied: BTreeMap<u64, u64> = statuses
            .iter()
            .map(|(id, s)| (*id, s.applied_index))
            .collect();
        let committed = statuses
            .values()
            .map(|s| s.committed_index)
            .max()
            .unwrap_or(0);
        if statuses.len() == cluster.nodes.len()
            && applied.values().all(|a| *a == committed)
            && committed > 0
        {
            return Ok(committed);
        }
        last = format!("applied {applied:?}, committed {committed}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("not converged within {within:?}: {last}")
}

async fn collect_finals(cluster: &DrillCluster) -> Vec<NodeFinal> {
    let mut finals = Vec::new();
    for (id, node) in &cluster.nodes {
        let digest = node
            .client
            .digest(v1::DigestRequest {})
            .await
            .ok()
            .map(|d| {
                (
                    d.applied_index,
                    d.sha256
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>(),
                )
            });
        let events = read_all_events(&node.client).await;
        finals.push(NodeFinal {
            node_id: *id,
            digest,
            events,
        });
    }
    finals
}

async fn read_all_events(client: &client::Client) -> Option<Vec<SeenEvent>> {
    let mut events = Vec::new();
    let mut from = 1;
    for _ in 0..EVENT_PAGES_MAX {
        let request = v1::ListEventsRequest {
            from_position: from,
            limit: 1000,
            read: Some(v1::ReadOptions {
                consistency: v1::Consistency::Local.into(),
                min_index: 0,
            }),
        };
        // A node that just came back (a container reconnected, a process restarted) may drop
        // a connection or two: a few attempts per page, then it has no log to give.
        let mut page = None;
        for attempt in 0..PAGE_ATTEMPTS {
            match client.list_events(request).await {
                Ok(p) => {
                    page = Some(p);
                    break;
                }
                Err(e) if attempt + 1 == PAGE_ATTEMPTS => {
                    println!("   reading the event log from position {from}: {e}");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
        let page = page?;
        events.extend(page.events.iter().map(workload::seen_event));
        if page.next == 0 {
            return Some(events);
        }
        from = page.next;
    }
    Some(events)
}

struct Report<'a> {
    seed: u64,
    mode: Mode,
    args: &'a DrillArgs,
    records: &'a [FaultRecord],
    facts: &'a Facts,
    verdicts: &'a [Verdict],
    liveness: Option<Duration>,
    healed_after_ms: u64,
    history_path: &'a std::path::Path,
    replay: &'a str,
    /// Node logs and data kept after a failed run.
    evidence: Option<&'a std::path::Path>,
}

fn report(r: &Report<'_>) {
    println!();
    println!("== drill report ==");
    println!(
        "seed {}  mode {:?}  nodes {}  clients {}  safety phase {:?}",
        r.seed,
        r.mode,
        r.facts.nodes.len(),
        r.args.clients,
        r.args.duration
    );
    println!("faults injected: {}", r.records.len());
    for f in r.records {
        let healed = f.healed_ms.map_or("-".to_owned(), |h| format!("{h} ms"));
        println!(
            "  {:>7} ms .. {:>9}  {:?}: {}",
            f.at_ms, healed, f.kind, f.what
        );
        for t in &f.trouble {
            println!("                         trouble: {t}");
        }
    }
    let mut by_kind: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    let mut totals = [0usize; 3];
    for op in &r.facts.ops {
        let slot = match op.outcome {
            Outcome::Ok => 0,
            Outcome::Fail => 1,
            Outcome::Unknown | Outcome::Pending => 2,
        };
        let name = match (op.kind, op.read) {
            (OpKind::GetCall | OpKind::ListEvents, Some(ReadLevel::MinIndex(_))) => {
                format!("{:?}/min_index", op.kind)
            }
            (OpKind::GetCall | OpKind::ListEvents, Some(level)) => {
                format!("{:?}/{level:?}", op.kind)
            }
            (kind, _) => format!("{kind:?}"),
        };
        by_kind.entry(name).or_default()[slot] += 1;
        totals[slot] += 1;
    }
    println!(
        "operations: {} (ok {}, fail {}, unknown {})",
        r.facts.ops.len(),
        totals[0],
        totals[1],
        totals[2]
    );
    for (kind, [ok, fail, unknown]) in &by_kind {
        println!("  {kind:<28} ok {ok:>6}  fail {fail:>6}  unknown {unknown:>6}");
    }
    println!(
        "liveness: healed at {} ms; first write {}",
        r.healed_after_ms,
        r.liveness.map_or("never".to_owned(), |d| format!(
            "after {} ms (bound {:?})",
            d.as_millis(),
            r.args.liveness_bound
        ))
    );
    println!("checkers:");
    for v in r.verdicts {
        println!(
            "  {} {:<42} {}",
            if v.ok() { "PASS" } else { "FAIL" },
            v.name,
            v.checked
        );
        for note in &v.notes {
            println!("       note: {note}");
        }
        for violation in &v.violations {
            println!("       violation: {violation}");
        }
        if v.violation_count > v.violations.len() {
            println!("       ... {} violations in all", v.violation_count);
        }
    }
    println!("history: {}", r.history_path.display());
    if let Some(dir) = r.evidence {
        println!("node logs and data kept in {}", dir.display());
    }
    let ok = r.verdicts.iter().all(Verdict::ok);
    println!("verdict: {}", if ok { "PASS" } else { "FAIL" });
    println!("replay: {}", r.replay);
}
