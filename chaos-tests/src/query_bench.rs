//! `chaos-tests query-bench`: `QueryEvents` and `EventStats` latency over a large activity log.
//!
//! One node is loaded with `--events` activity records (batches of 100, several writers) of one
//! tenant, spread over agent types, projects, tasks, severities and event types the way an
//! agent fleet's log is (most progress at info, few errors and conflicts). Then each query of a
//! fixed set (broad: the whole tenant, one type; selective: a task, critical activity;
//! combined filters with a walked count; metadata only; a time window) and the statistics run
//! `--iterations` times each, interleaved over `--rounds` rounds. Printed per query: p50, p99
//! and p99.9 (min / median / max over the rounds), events returned, the node's CPU per query
//! and its RSS. Nothing is asserted.

use std::time::{Duration, Instant};

use harness::ProcessCluster;
use hdrhistogram::Histogram;
use proto::v1;
use proto::v1::activity_service_client::ActivityServiceClient;
use proto::v1::event_service_client::EventServiceClient;
use tokio::task::JoinSet;

use crate::bench::procstat;
use crate::bench::stats::Summary;
use crate::watch_bench::triple;

const LEADER_WAIT: Duration = Duration::from_secs(30);
const TENANT: &str = "bench";
const BATCH: usize = 100;
const AGENTS: u64 = 10;
const PROJECTS: u64 = 100;
const TASKS: u64 = 10_000;

#[derive(Debug, Clone, clap::Args)]
pub struct QueryBenchArgs {
    /// Activity records to load.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Concurrent loaders.
    #[arg(long, default_value_t = 8)]
    pub loaders: usize,
    /// Runs of each query per round.
    #[arg(long, default_value_t = 200)]
    pub iterations: usize,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Extra flags for `switchboard serve`.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    pub node_args: Vec<String>,
}

/// The `n`-th record of the load, deterministic.
pub(crate) fn record(n: u64) -> v1::ActivityEntry {
    // A cheap mix so neighbours differ (splitmix64's finaliser).
    let mut x = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    let pick = x % 100;
    let (activity_type, status) = match pick {
        0..=59 => (v1::ActivityType::Progress, v1::ActivityStatus::InProgress),
        60..=74 => (v1::ActivityType::Started, v1::ActivityStatus::Started),
        75..=89 => (v1::ActivityType::Completed, v1::ActivityStatus::Completed),
        90..=93 => (v1::ActivityType::Error, v1::ActivityStatus::Failed),
        94 => (
            v1::ActivityType::ConflictDetected,
            v1::ActivityStatus::Conflict,
        ),
        _ => (v1::ActivityType::Paused, v1::ActivityStatus::Paused),
    };
    let severity = match (x >> 8) % 100 {
        0..=29 => v1::Severity::Debug,
        30..=84 => v1::Severity::Info,
        85..=94 => v1::Severity::Warning,
        95..=98 => v1::Severity::Error,
        _ => v1::Severity::Critical,
    };
    let task = (x >> 16) % TASKS;
    v1::ActivityEntry {
        activity_type: activity_type.into(),
        activity: Some(v1::Activity {
            agent_type: format!("agent-{}", task % AGENTS),
            agent_name: format!("Agent {}", task % AGENTS),
            project_id: format!("p-{}", task % PROJECTS),
            task_id: format!("t-{task}"),
            task_description: "work on the task".to_owned(),
            severity: severity.into(),
            status: status.into(),
            message: format!("step {n}"),
        }),
        call_id: String::new(),
        payload_json: format!(r#"{{"n":{n}}}"#),
        metadata: [("lane".to_owned(), format!("{}", (x >> 40) % 10))].into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Query {
    TenantNewest,
    TenantNewestWithTotal,
    OneType,
    OneTask,
    Critical,
    ProjectErrorsWithTotal,
    AgentWarningsWithTotal,
    MetadataOnly,
    TimeWindowErrors,
    StatsTenant,
    StatsProject,
}

impl Query {
    const ALL: [Query; 11] = [
        Query::TenantNewest,
        Query::TenantNewestWithTotal,
        Query::OneType,
        Query::OneTask,
        Query::Critical,
        Query::ProjectErrorsWithTotal,
        Query::AgentWarningsWithTotal,
        Query::MetadataOnly,
        Query::TimeWindowErrors,
        Query::StatsTenant,
        Query::StatsProject,
    ];

    fn name(self) -> &'static str {
        match self {
            Query::TenantNewest => "broad: tenant, newest 100",
            Query::TenantNewestWithTotal => "broad: tenant, newest 100 + total",
            Query::OneType => "broad: type agent.progress, 100",
            Query::OneTask => "selective: one task + total",
            Query::Critical => "selective: severity >= critical, 100 + total",
            Query::ProjectErrorsWithTotal => "combined: project + severity >= error + total",
            Query::AgentWarningsWithTotal => {
                "combined: agent + severity >= warning + total (walked)"
            }
            Query::MetadataOnly => "metadata lane=3 only, 100",
            Query::TimeWindowErrors => "time window (last 10%) + type agent.error + total",
            Query::StatsTenant => "EventStats: tenant",
            Query::StatsProject => "EventStats: one project",
        }
    }
}

struct Measured {
    query: Query,
    summary: Summary,
    returned: f64,
    node_cpu_ms: f64,
}

pub async fn run(args: QueryBenchArgs) -> anyhow::Result<()> {
    let binary = crate::switchboard_binary()?;
    let mut flags: Vec<&str> = vec!["--requests-in-flight-per-client-max=100000"];
    flags.extend(args.node_args.iter().map(String::as_str));
    let mut cluster = ProcessCluster::start(&binary, 1, &flags)?;
    let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
    let pid = cluster
        .nodes
        .values()
        .find_map(|n| n.pid())
        .ok_or_else(|| anyhow::anyhow!("the node has no pid"))?;
    let channel = cluster.channel(leader)?;

    // Load.
    let started = Instant::now();
    // Records are stamped by the leader as they commit: the load's own span, not the hour
    // buckets', tells where the last tenth of them starts.
    let load_started_ms = now_ms();
    let batches = args.events.div_ceil(BATCH as u64);
    let mut loaders = JoinSet::new();
    for loader in 0..args.loaders.max(1) as u64 {
        let mut client = ActivityServiceClient::new(channel.clone());
        let loaders_n = args.loaders.max(1) as u64;
        let total = args.events;
        loaders.spawn(async move {
            let mut batch = loader;
            while batch < batches {
                let first = batch * BATCH as u64;
                let entries = (first..(first + BATCH as u64).min(total))
                    .map(record)
                    .collect();
                client
                    .record_activity(v1::RecordActivityRequest {
                        tenant_id: TENANT.to_owned(),
                        request_id: format!("load-{batch}"),
                        entries,
                    })
                    .await?;
                batch += loaders_n;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = loaders.join_next().await {
        done??;
    }
    let load_s = started.elapsed().as_secs_f64();
    println!(
        "loaded {} records in {load_s:.1} s ({:.0} records/s), node RSS {:.0} MiB",
        args.events,
        args.events as f64 / load_s,
        procstat::rss_bytes(pid).unwrap_or(0) as f64 / (1 << 20) as f64
    );

    let mut events = EventServiceClient::new(channel.clone());
    let last_ms = now_ms();
    let window_from = last_ms - last_ms.saturating_sub(load_started_ms) / 10;

    let mut measured: Vec<Measured> = Vec::new();
    for round in 1..=args.rounds {
        for query in Query::ALL {
            let cpu_before = procstat::cpu_seconds(pid).unwrap_or(0.0);
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut returned = 0u64;
            for i in 0..args.iterations as u64 {
                let took = Instant::now();
                returned += one(&mut events, query, i, window_from).await?;
                histogram.record(u64::try_from(took.elapsed().as_micros()).unwrap_or(u64::MAX))?;
            }
            let cpu = procstat::cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
            let m = Measured {
                query,
                summary: Summary::of(&histogram),
                returned: returned as f64 / args.iterations as f64,
                node_cpu_ms: cpu * 1000.0 / args.iterations as f64,
            };
            println!(
                "round {round} {:<50} p50 {:>7.2} p99 {:>7.2} p99.9 {:>7.2} ms  {:>6.0} returned  node {:.2} ms CPU/query",
                query.name(),
                m.summary.p50_ms,
                m.summary.p99_ms,
                m.summary.p999_ms,
                m.returned,
                m.node_cpu_ms
            );
            measured.push(m);
        }
    }
    println!(
        "\nsummary: {} records, {} rounds x {} runs (min / median / max over rounds), node RSS {:.0} MiB",
        args.events,
        args.rounds,
        args.iterations,
        procstat::rss_bytes(pid).unwrap_or(0) as f64 / (1 << 20) as f64
    );
    println!("| query | p50 ms | p99 ms | p99.9 ms | returned | node CPU ms/query |");
    println!("|---|---|---|---|---:|---|");
    for query in Query::ALL {
        let of = |f: fn(&Measured) -> f64| -> Vec<f64> {
            measured
                .iter()
                .filter(|m| m.query == query)
                .map(f)
                .collect()
        };
        println!(
            "| {} | {} | {} | {} | {:.0} | {} |",
            query.name(),
            triple(of(|m| m.summary.p50_ms), 2),
            triple(of(|m| m.summary.p99_ms), 2),
            triple(of(|m| m.summary.p999_ms), 2),
            of(|m| m.returned).first().copied().unwrap_or(0.0),
            triple(of(|m| m.node_cpu_ms), 2),
        );
    }
    Ok(())
}

/// Runs the `i`-th instance of `query`; returns how many events (or buckets) it returned.
async fn one(
    events: &mut EventServiceClient<harness::AuthChannel>,
    query: Query,
    i: u64,
    window_from: u64,
) -> anyhow::Result<u64> {
    let base = v1::QueryEventsRequest {
        tenant_id: TENANT.to_owned(),
        newest_first: true,
        limit: 100,
        ..Default::default()
    };
    let request = match query {
        Query::TenantNewest => base,
        Query::TenantNewestWithTotal => v1::QueryEventsRequest {
            with_total: true,
            ..base
        },
        Query::OneType => v1::QueryEventsRequest {
            event_types: vec!["agent.progress".to_owned()],
            ..base
        },
        Query::OneTask => v1::QueryEventsRequest {
            task_id: format!("t-{}", (i * 7919) % TASKS),
            with_total: true,
            ..base
        },
        Query::Critical => v1::QueryEventsRequest {
            min_severity: v1::Severity::Critical.into(),
            with_total: true,
            ..base
        },
        Query::ProjectErrorsWithTotal => v1::QueryEventsRequest {
            project_id: format!("p-{}", i % PROJECTS),
            min_severity: v1::Severity::Error.into(),
            with_total: true,
            ..base
        },
        Query::AgentWarningsWithTotal => v1::QueryEventsRequest {
            agent_type: format!("agent-{}", i % AGENTS),
            min_severity: v1::Severity::Warning.into(),
            with_total: true,
            ..base
        },
        Query::MetadataOnly => v1::QueryEventsRequest {
            metadata: [("lane".to_owned(), "3".to_owned())].into(),
            ..base
        },
        Query::TimeWindowErrors => v1::QueryEventsRequest {
            event_types: vec!["agent.error".to_owned()],
            from_ms: window_from,
            with_total: true,
            ..base
        },
        Query::StatsTenant | Query::StatsProject => {
            let project_id = match query {
                Query::StatsProject => format!("p-{}", i % PROJECTS),
                _ => String::new(),
            };
            let stats = events
                .event_stats(v1::EventStatsRequest {
                    tenant_id: TENANT.to_owned(),
                    project_id,
                    ..Default::default()
                })
                .await?
                .into_inner();
            return Ok(stats.buckets.len() as u64);
        }
    };
    Ok(events
        .query_events(request)
        .await?
        .into_inner()
        .events
        .len() as u64)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
