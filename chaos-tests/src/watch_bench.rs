//! `chaos-tests watch-bench`: what watchers cost and how fast they hear of a commit.
//!
//! For each watcher count (e.g. 0, 1, 100, 1000), interleaved round by round so that machine
//! noise hits every count alike, a fresh cluster (one node by default: the watchers all on it)
//! runs a closed loop of writers (`LogEvent`, one call each) while that many `WatchEvents`
//! streams follow the log from now. It prints the write throughput, the node's CPU per write,
//! and the delivery latency: from the moment a writer got its acknowledgement (the entry was
//! committed and applied on the leader) to the moment a watcher had the event, per watcher and
//! event (an event delivered before its writer heard back counts as 0). Numbers go to stdout;
//! nothing is asserted.
//!
//! Two shapes of watcher: `--filter all` (each watcher takes every event: a firehose, as a
//! warehouse or relay consumer) and `--filter call` (each watcher follows one call of the
//! `--calls` the writers cycle through, as a human agent's console does). The CPU columns
//! (node and bench process, per delivered event) show what fan-out costs on this machine, where
//! the watchers' receiving side shares the cores with the node.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use harness::ProcessCluster;
use hdrhistogram::Histogram;
use proto::v1;
use proto::v1::watch_service_client::WatchServiceClient;
use tokio::task::JoinSet;

use crate::bench::procstat;
use crate::bench::stats::Summary;

/// Positions whose acknowledgement time is kept (the rest count as not acknowledged).
const ACKS_KEPT: usize = 4_000_000;
/// Watch streams per connection (the edge allows 256 requests in flight per connection).
const WATCHES_PER_CONNECTION: usize = 200;
const LEADER_WAIT: Duration = Duration::from_secs(30);
/// How long the watchers may take to notice the end of a run.
const WATCHERS_STOP_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, clap::Args)]
pub struct WatchBenchArgs {
    /// Watcher counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,1,100,1000")]
    pub watchers: Vec<usize>,
    /// Closed-loop writers.
    #[arg(long, default_value_t = 8)]
    pub writers: usize,
    /// Measured time of each run.
    #[arg(long, value_parser = harness::parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Unmeasured warm-up before each run.
    #[arg(long, value_parser = harness::parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// Rounds: each watcher count runs once per round.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// What each watcher follows: `all` (every event) or `call` (one call of `--calls`).
    #[arg(long, value_enum, default_value_t = Follow::All)]
    pub filter: Follow,
    /// Progress interval the watchers ask for, in milliseconds (the server's default is 1000).
    #[arg(long, default_value_t = 200)]
    pub progress_ms: u32,
    /// Calls the writers cycle through (at least one per writer; default one per writer).
    #[arg(long)]
    pub calls: Option<usize>,
    /// Nodes of the cluster (the watchers are spread over them).
    #[arg(long, default_value_t = 1)]
    pub nodes: u64,
    /// Extra flags for every `switchboard serve`.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    pub node_args: Vec<String>,
}

/// What a watcher of the bench follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Follow {
    /// Every event.
    All,
    /// One call's events.
    Call,
}

/// One run's numbers.
#[derive(Debug, Clone)]
struct Run {
    watchers: usize,
    writes_per_s: f64,
    write: Summary,
    delivery: Summary,
    deliveries: u64,
    node_cpu_ms_per_write: f64,
    node_peak_rss_mib: f64,
    node_cpu_us_per_delivery: f64,
    bench_cpu_s: f64,
    bench_cpu_us_per_delivery: f64,
    watch_errors: u64,
}

pub async fn run(args: WatchBenchArgs) -> anyhow::Result<()> {
    let binary = crate::switchboard_binary()?;
    println!(
        "watch-bench: filter {:?}, progress every {} ms, {} calls, {} writers, {} node(s), {:?} per run",
        args.filter,
        args.progress_ms,
        calls_of(&args),
        args.writers,
        args.nodes,
        args.duration
    );
    let mut runs: Vec<Run> = Vec::new();
    for round in 1..=args.rounds {
        for &watchers in &args.watchers {
            let run = one_run(&binary, &args, watchers).await?;
            println!(
                "round {round} watchers {:>5}: {:>7.0} writes/s  write p50 {:>6.2} p99 {:>6.2} ms  delivery p50 {:>6.2} p99 {:>6.2} p99.9 {:>6.2} ms ({} deliveries)  node {:.3} ms CPU/write, {:.2} us CPU/delivery, peak {:.0} MiB  bench {:.1}s CPU, {:.2} us CPU/delivery  watch errors {}",
                watchers,
                run.writes_per_s,
                run.write.p50_ms,
                run.write.p99_ms,
                run.delivery.p50_ms,
                run.delivery.p99_ms,
                run.delivery.p999_ms,
                run.deliveries,
                run.node_cpu_ms_per_write,
                run.node_cpu_us_per_delivery,
                run.node_peak_rss_mib,
                run.bench_cpu_s,
                run.bench_cpu_us_per_delivery,
                run.watch_errors,
            );
            runs.push(run);
        }
    }
    println!(
        "\nsummary over {} rounds (min / median / max):",
        args.rounds
    );
    println!(
        "| watchers | writes/s | vs 0 watchers (median) | delivery p50 ms | delivery p99 ms | node CPU ms/write | node CPU us/delivery | bench CPU us/delivery |"
    );
    println!("|---:|---|---:|---|---|---|---|---|");
    let baseline = median(
        runs.iter()
            .filter(|r| r.watchers == 0)
            .map(|r| r.writes_per_s)
            .collect(),
    );
    for &watchers in &args.watchers {
        let of = |f: fn(&Run) -> f64| -> Vec<f64> {
            runs.iter()
                .filter(|r| r.watchers == watchers)
                .map(f)
                .collect()
        };
        let throughput = of(|r| r.writes_per_s);
        let ratio = match baseline {
            Some(base) if base > 0.0 => median(throughput.clone()).map_or("-".to_owned(), |m| {
                format!("{:+.1}%", (m / base - 1.0) * 100.0)
            }),
            _ => "-".to_owned(),
        };
        let delivery = |f: fn(&Run) -> f64| {
            if watchers == 0 {
                "-".to_owned()
            } else {
                triple(of(f), 2)
            }
        };
        println!(
            "| {watchers} | {} | {ratio} | {} | {} | {} | {} | {} |",
            triple(throughput, 0),
            delivery(|r| r.delivery.p50_ms),
            delivery(|r| r.delivery.p99_ms),
            triple(of(|r| r.node_cpu_ms_per_write), 3),
            delivery(|r| r.node_cpu_us_per_delivery),
            delivery(|r| r.bench_cpu_us_per_delivery),
        );
    }
    Ok(())
}

fn calls_of(args: &WatchBenchArgs) -> usize {
    args.calls.unwrap_or(args.writers).max(args.writers).max(1)
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

/// `min / median / max` of `values` with `decimals` decimals (`-` when empty).
pub(crate) fn triple(mut values: Vec<f64>, decimals: usize) -> String {
    if values.is_empty() {
        return "-".to_owned();
    }
    values.sort_by(f64::total_cmp);
    let (min, med, max) = (
        values[0],
        values[values.len() / 2],
        values[values.len() - 1],
    );
    format!("{min:.decimals$} / {med:.decimals$} / {max:.decimals$}")
}

async fn one_run(
    binary: &std::path::Path,
    args: &WatchBenchArgs,
    watchers: usize,
) -> anyhow::Result<Run> {
    // Every watcher comes from loopback: raise the per-address bounds to let them in.
    let mut flags: Vec<String> = vec![
        format!("--watchers-max={}", watchers.max(1) + 16),
        "--requests-in-flight-per-client-max=100000".to_owned(),
        "--connections-per-client-max=10000".to_owned(),
    ];
    flags.extend(args.node_args.iter().cloned());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut cluster = ProcessCluster::start(binary, args.nodes, &flags)?;
    let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
    let pids: Vec<(String, u32)> = cluster
        .nodes
        .values()
        .filter_map(|n| n.pid().map(|pid| (format!("n{}", n.id), pid)))
        .collect();

    // The calls written to, created before anything is measured, a writer's share each.
    let writer_channel = cluster.channel(leader)?;
    let writers = args.writers.max(1);
    let mut creators = JoinSet::new();
    for w in 0..writers {
        let channel = writer_channel.clone();
        let shares: Vec<usize> = (w..calls_of(args)).step_by(writers).collect();
        creators.spawn(async move {
            let mut calls_client = v1::call_service_client::CallServiceClient::new(channel);
            let mut created = Vec::new();
            for n in shares {
                let call = calls_client
                    .create_call(v1::CreateCallRequest {
                        tenant_id: "bench".to_owned(),
                        request_id: format!("create-{n}"),
                        source: format!("writer-{w}"),
                        channel: v1::Channel::Voice.into(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .call
                    .ok_or_else(|| anyhow::anyhow!("create answered without a call"))?;
                calls_client
                    .start_call(v1::StartCallRequest {
                        tenant_id: "bench".to_owned(),
                        request_id: format!("start-{n}"),
                        call_id: call.call_id.clone(),
                    })
                    .await?;
                created.push((n, call.call_id));
            }
            anyhow::Ok((w, created))
        });
    }
    // Per writer, the calls it cycles through; `calls[n]` is the n-th call.
    let mut shares: Vec<Vec<String>> = vec![Vec::new(); writers];
    let mut calls = vec![String::new(); calls_of(args)];
    while let Some(joined) = creators.join_next().await {
        let (w, created) = joined??;
        for (n, call_id) in created {
            shares[w].push(call_id.clone());
            calls[n] = call_id;
        }
    }

    let epoch = Instant::now();
    let acks: Arc<Vec<AtomicU64>> = Arc::new((0..ACKS_KEPT).map(|_| AtomicU64::new(0)).collect());
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));

    // Watchers, from now, spread over the nodes and over connections.
    let endpoints = cluster.endpoints();
    let mut watch_tasks = JoinSet::new();
    let mut channels = Vec::new();
    for i in 0..watchers.div_ceil(WATCHES_PER_CONNECTION) {
        channels.push(cluster.channel_to(&endpoints[i % endpoints.len()])?);
    }
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel::<()>(watchers.max(1));
    for w in 0..watchers {
        let channel = channels[w / WATCHES_PER_CONNECTION].clone();
        let (acks, measuring, stop, errors) = (
            acks.clone(),
            measuring.clone(),
            stop.clone(),
            errors.clone(),
        );
        let opened = opened_tx.clone();
        let progress_ms = args.progress_ms;
        let followed = match args.filter {
            Follow::All => String::new(),
            Follow::Call => calls[w % calls.len()].clone(),
        };
        watch_tasks.spawn(async move {
            let mut histogram =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut client = WatchServiceClient::new(channel);
            // Progress messages at least this often keep an idle stream's loop turning, so it
            // sees `stop` without a timer per message.
            let request = v1::WatchEventsRequest {
                progress_interval_ms: progress_ms,
                call_id: followed,
                ..Default::default()
            };
            let mut stream = match client.watch_events(request).await {
                Ok(response) => response.into_inner(),
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    let _ = opened.send(()).await;
                    return histogram;
                }
            };
            let mut first = true;
            while !stop.load(Ordering::Relaxed) {
                match stream.message().await {
                    Ok(Some(message)) => {
                        if first {
                            first = false;
                            let _ = opened.send(()).await;
                        }
                        let now_us = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                        if !measuring.load(Ordering::Relaxed) {
                            continue;
                        }
                        for event in &message.events {
                            let acked = usize::try_from(event.position)
                                .ok()
                                .and_then(|p| acks.get(p))
                                .map_or(0, |a| a.load(Ordering::Relaxed));
                            let latency = if acked == 0 {
                                0
                            } else {
                                now_us.saturating_sub(acked)
                            };
                            let _ = histogram.record(latency.max(1));
                        }
                    }
                    Ok(None) | Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            histogram
        });
    }
    drop(opened_tx);
    for _ in 0..watchers {
        if tokio::time::timeout(Duration::from_secs(30), opened_rx.recv())
            .await
            .ok()
            .flatten()
            .is_none()
        {
            break;
        }
    }

    // Writers, closed loop.
    let writes = Arc::new(AtomicU64::new(0));
    let mut write_tasks = JoinSet::new();
    for share in shares {
        let channel = writer_channel.clone();
        let (acks, measuring, stop, writes) = (
            acks.clone(),
            measuring.clone(),
            stop.clone(),
            writes.clone(),
        );
        write_tasks.spawn(async move {
            let mut histogram =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut calls_client = v1::call_service_client::CallServiceClient::new(channel);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let call_id = &share[usize::try_from(n).unwrap_or(0) % share.len()];
                n += 1;
                let sent = Instant::now();
                let answer = calls_client
                    .log_event(v1::LogEventRequest {
                        tenant_id: "bench".to_owned(),
                        request_id: format!("{call_id}-{n}"),
                        call_id: call_id.clone(),
                        event_type: "bench.tick".to_owned(),
                        payload: Some(v1::log_event_request::Payload::PayloadJson(format!(
                            r#"{{"n":{n}}}"#
                        ))),
                        ..Default::default()
                    })
                    .await;
                let now_us = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                if let Ok(answer) = answer
                    && let Some(event) = answer.into_inner().event
                {
                    if let Some(slot) = usize::try_from(event.position)
                        .ok()
                        .and_then(|p| acks.get(p))
                    {
                        slot.store(now_us.max(1), Ordering::Relaxed);
                    }
                    if measuring.load(Ordering::Relaxed) {
                        writes.fetch_add(1, Ordering::Relaxed);
                        let _ = histogram.record(
                            u64::try_from(sent.elapsed().as_micros())
                                .unwrap_or(u64::MAX)
                                .max(1),
                        );
                    }
                }
            }
            histogram
        });
    }

    tokio::time::sleep(args.warmup).await;
    let usage = procstat::Usage::start(pids);
    let bench_cpu = procstat::cpu_seconds(std::process::id()).unwrap_or(0.0);
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(args.duration).await;
    measuring.store(false, Ordering::Relaxed);
    let window = started.elapsed();
    let nodes = usage.finish().await;
    let bench_cpu_s = procstat::cpu_seconds(std::process::id()).unwrap_or(0.0) - bench_cpu;
    stop.store(true, Ordering::Relaxed);

    let mut write = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    while let Some(joined) = write_tasks.join_next().await {
        write.add(joined?)?;
    }
    let mut delivery = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let deadline = tokio::time::Instant::now() + WATCHERS_STOP_WAIT;
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, watch_tasks.join_next()).await {
        delivery.add(joined?)?;
    }
    // A stream that stopped sending (not even progress) counts as an error.
    let stuck = watch_tasks.len() as u64;
    errors.fetch_add(stuck, Ordering::Relaxed);
    watch_tasks.abort_all();
    let written = writes.load(Ordering::Relaxed);
    let node_cpu_s: f64 = nodes.iter().map(|n| n.cpu_s).sum();
    drop(cluster);
    let deliveries = delivery.len();
    let per_delivery = |cpu_s: f64| {
        if deliveries == 0 {
            0.0
        } else {
            cpu_s * 1e6 / deliveries as f64
        }
    };
    Ok(Run {
        watchers,
        writes_per_s: written as f64 / window.as_secs_f64(),
        write: Summary::of(&write),
        deliveries,
        delivery: Summary::of(&delivery),
        node_cpu_us_per_delivery: per_delivery(node_cpu_s),
        bench_cpu_us_per_delivery: per_delivery(bench_cpu_s),
        node_cpu_ms_per_write: if written == 0 {
            0.0
        } else {
            node_cpu_s * 1000.0 / written as f64
        },
        node_peak_rss_mib: nodes.iter().map(|n| n.peak_rss_mib).fold(0.0, f64::max),
        bench_cpu_s,
        watch_errors: errors.load(Ordering::Relaxed),
    })
}
