//! `chaos-tests sse-bench`: the node's memory while SSE clients follow the live page's feed.
//!
//! One node (release binary from `SWITCHBOARD_BIN`, TLS and tokens as always); `--clients`
//! streams of `/live/events` (each as the live page opens it, with a viewer token), and a writer
//! recording activity at `--rate` records per second the whole time. The node's resident memory
//! is sampled every `--sample` after a warm-up; it prints each sample, the growth from the first
//! minute to the last, and the least-squares slope in MiB per minute. A control phase first
//! (`--control`, on by default) runs the same writer on a fresh node without clients: storage
//! grows with the writes (memtables, caches) whoever watches, so the clients' own cost is the
//! difference between the two. Each client checks what it
//! reads: positions one after another (the tenant's log has nothing else), so a stream that
//! stalls, skips or repeats shows in the numbers. Nothing is asserted.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use harness::ProcessCluster;
use proto::v1;
use proto::v1::activity_service_client::ActivityServiceClient;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::task::JoinSet;

use crate::bench::procstat;

const TENANT: &str = "bench";
const LEADER_WAIT: Duration = Duration::from_secs(30);
/// Records per write of the writer.
const BATCH: u64 = 10;
/// Largest HTTP head line or chunk a client reads.
const CHUNK_BYTES_MAX: usize = 1 << 20;
/// Pause before a client reconnects after its stream broke.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);
const MIB: f64 = (1 << 20) as f64;

#[derive(Debug, Clone, clap::Args)]
pub struct SseBenchArgs {
    /// SSE clients following `/live/events`.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// Measured time.
    #[arg(long, value_parser = harness::parse_duration, default_value = "5m")]
    pub duration: Duration,
    /// Unmeasured time with the clients connected and the writer running, before sampling.
    #[arg(long, value_parser = harness::parse_duration, default_value = "30s")]
    pub warmup: Duration,
    /// Activity records written per second, throughout.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Interval between memory samples.
    #[arg(long, value_parser = harness::parse_duration, default_value = "10s")]
    pub sample: Duration,
    /// Run the same schedule without clients first, on a fresh node, and compare.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub control: bool,
    /// Extra flags for `switchboard serve`.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    pub node_args: Vec<String>,
}

/// One phase's memory figures.
struct Phase {
    clients: usize,
    first_minute_mib: f64,
    last_minute_mib: f64,
    slope_mib_per_min: f64,
}

/// What the clients saw, shared.
#[derive(Default)]
struct Seen {
    events: AtomicU64,
    /// An event whose position was not the one after the previous event of its stream.
    out_of_order: AtomicU64,
    reconnects: AtomicU64,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub async fn run(args: SseBenchArgs) -> anyhow::Result<()> {
    let mut phases = Vec::new();
    if args.control {
        phases.push(phase(&args, 0).await?);
    }
    phases.push(phase(&args, args.clients).await?);
    println!(
        "\n| clients | RSS first minute MiB | RSS last minute MiB | growth MiB | slope MiB/min |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for p in &phases {
        println!(
            "| {} | {:.1} | {:.1} | {:+.1} | {:+.2} |",
            p.clients,
            p.first_minute_mib,
            p.last_minute_mib,
            p.last_minute_mib - p.first_minute_mib,
            p.slope_mib_per_min
        );
    }
    if let [control, measured] = phases.as_slice() {
        println!(
            "clients' own growth (measured minus control): {:+.1} MiB over the run, slope {:+.2} MiB/min",
            (measured.last_minute_mib - measured.first_minute_mib)
                - (control.last_minute_mib - control.first_minute_mib),
            measured.slope_mib_per_min - control.slope_mib_per_min
        );
    }
    Ok(())
}

async fn phase(args: &SseBenchArgs, clients: usize) -> anyhow::Result<Phase> {
    let binary = crate::switchboard_binary()?;
    let mut flags: Vec<String> = vec![format!("--watchers-max={}", clients + 16)];
    flags.extend(args.node_args.iter().cloned());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut cluster = ProcessCluster::start(&binary, 1, &flags)?;
    let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
    let node = &cluster.nodes[&leader];
    let pid = node
        .pid()
        .ok_or_else(|| anyhow::anyhow!("the node has no pid"))?;
    let http = node.http.clone();
    let ca = cluster
        .certs_dir()
        .ok_or_else(|| anyhow::anyhow!("the bench cluster runs without TLS"))?
        .join("ca.pem");
    let tls = Arc::new(tls_config(&ca)?);
    let viewer = cluster.token("sse-bench", TENANT, "viewer")?;
    let rss = || procstat::rss_bytes(pid).map_or(0.0, |b| b as f64 / MIB);
    println!(
        "\nsse-bench: {} clients, {} records/s, warm-up {:?}, measured {:?}; node RSS before the clients {:.1} MiB",
        clients,
        args.rate,
        args.warmup,
        args.duration,
        rss()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let (tls, http, viewer, stop, seen) = (
            tls.clone(),
            http.clone(),
            viewer.clone(),
            stop.clone(),
            seen.clone(),
        );
        tasks.spawn(async move {
            let mut last: Option<u64> = None;
            while !stop.load(Ordering::Relaxed) {
                if follow(&tls, &http, &viewer, &mut last, &stop, &seen)
                    .await
                    .is_err()
                {
                    seen.reconnects.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
            }
            anyhow::Ok(())
        });
    }

    // The writer, at a steady rate.
    let channel = cluster.channel(leader)?;
    let written = Arc::new(AtomicU64::new(0));
    {
        let (stop, written) = (stop.clone(), written.clone());
        let every = Duration::from_secs_f64(BATCH as f64 / args.rate.max(1) as f64);
        tasks.spawn(async move {
            let mut client = ActivityServiceClient::new(channel);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut batch = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let entries = (batch * BATCH..(batch + 1) * BATCH)
                    .map(crate::query_bench::record)
                    .collect();
                client
                    .record_activity(v1::RecordActivityRequest {
                        tenant_id: TENANT.to_owned(),
                        request_id: format!("sse-{batch}"),
                        entries,
                    })
                    .await?;
                written.fetch_add(BATCH, Ordering::Relaxed);
                batch += 1;
            }
            anyhow::Ok(())
        });
    }

    tokio::time::sleep(args.warmup).await;
    let started = Instant::now();
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let cpu_before = procstat::cpu_seconds(pid).unwrap_or(0.0);
    let events_before = seen.events.load(Ordering::Relaxed);
    let written_before = written.load(Ordering::Relaxed);
    loop {
        let t = started.elapsed().as_secs_f64();
        let mib = rss();
        samples.push((t, mib));
        println!(
            "t={t:>5.0}s  node RSS {mib:>7.1} MiB  records written {:>8}  events delivered {:>9}  out of order {}  reconnects {}",
            written.load(Ordering::Relaxed),
            seen.events.load(Ordering::Relaxed),
            seen.out_of_order.load(Ordering::Relaxed),
            seen.reconnects.load(Ordering::Relaxed),
        );
        if started.elapsed() >= args.duration {
            break;
        }
        tokio::time::sleep(
            args.sample
                .min(args.duration.saturating_sub(started.elapsed())),
        )
        .await;
    }
    let cpu = procstat::cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
    let delivered = seen.events.load(Ordering::Relaxed) - events_before;
    let wrote = written.load(Ordering::Relaxed) - written_before;
    // Read before the node stops (which breaks every stream).
    let out_of_order = seen.out_of_order.load(Ordering::Relaxed);
    let reconnects = seen.reconnects.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    drop(cluster);
    tasks.abort_all();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(Err(error)) = joined {
            println!("a bench task failed: {error:#}");
        }
    }

    let minute = |from: f64, to: f64| -> Option<f64> {
        let inside: Vec<f64> = samples
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, m)| *m)
            .collect();
        (!inside.is_empty()).then(|| inside.iter().sum::<f64>() / inside.len() as f64)
    };
    let end = samples.last().map_or(0.0, |(t, _)| *t);
    let first = minute(0.0, 60.0);
    let last = minute((end - 60.0).max(0.0), end + 1.0);
    let (min, max) = samples
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), (_, m)| {
            (lo.min(*m), hi.max(*m))
        });
    println!(
        "summary: {} records written ({:.0}/s), {} events delivered ({:.1} per record, {} clients), node CPU {:.1} s ({:.0} us per delivered event)",
        wrote,
        wrote as f64 / end.max(1.0),
        delivered,
        delivered as f64 / wrote.max(1) as f64,
        clients,
        cpu,
        cpu * 1e6 / delivered.max(1) as f64
    );
    println!(
        "node RSS: first minute mean {:.1} MiB, last minute mean {:.1} MiB (growth {:+.1} MiB), min {min:.1}, max {max:.1}, slope {:+.2} MiB/min",
        first.unwrap_or(0.0),
        last.unwrap_or(0.0),
        last.unwrap_or(0.0) - first.unwrap_or(0.0),
        slope(&samples) * 60.0
    );
    println!("streams: {out_of_order} out of order, {reconnects} reconnects during the run");
    Ok(Phase {
        clients,
        first_minute_mib: first.unwrap_or(0.0),
        last_minute_mib: last.unwrap_or(0.0),
        slope_mib_per_min: slope(&samples) * 60.0,
    })
}

/// Least-squares slope of `(t, y)`, per unit of `t`.
fn slope(samples: &[(f64, f64)]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (st, sy) = samples
        .iter()
        .fold((0.0, 0.0), |(a, b), (t, y)| (a + t, b + y));
    let (mt, my) = (st / n, sy / n);
    let (num, den) = samples.iter().fold((0.0, 0.0), |(num, den), (t, y)| {
        (num + (t - mt) * (y - my), den + (t - mt) * (t - mt))
    });
    if den == 0.0 { 0.0 } else { num / den }
}

fn tls_config(ca: &Path) -> anyhow::Result<rustls::ClientConfig> {
    let pem = node::tls::read_pem_file(ca)?;
    let roots = node::tls::roots_from_pem(ca, &pem)?;
    Ok(
        rustls::ClientConfig::builder_with_provider(node::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Follows `/live/events` from after `last` until the stream breaks or `stop`.
async fn follow(
    tls: &Arc<rustls::ClientConfig>,
    http: &str,
    token: &str,
    last: &mut Option<u64>,
    stop: &AtomicBool,
    seen: &Seen,
) -> anyhow::Result<()> {
    let tcp = tokio::net::TcpStream::connect(http).await?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1")?;
    let io: Box<dyn Io> = Box::new(
        tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await?,
    );
    let mut io = BufReader::new(io);
    let mut head = format!(
        "GET /live/events HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n"
    );
    if let Some(last) = last {
        head.push_str(&format!("Last-Event-ID: {last}\r\n"));
    }
    head.push_str("\r\n");
    io.get_mut().write_all(head.as_bytes()).await?;
    io.get_mut().flush().await?;
    let mut line = String::new();
    io.read_line(&mut line).await?;
    anyhow::ensure!(line.starts_with("HTTP/1.1 200"), "answered {line:?}");
    let mut chunked = false;
    loop {
        line.clear();
        io.read_line(&mut line).await?;
        let header = line.trim_end().to_ascii_lowercase();
        if header.is_empty() {
            break;
        }
        chunked |= header.starts_with("transfer-encoding:") && header.contains("chunked");
    }
    anyhow::ensure!(chunked, "the event stream is not chunked");
    // SSE lines, across chunk boundaries.
    let mut text = String::new();
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        io.read_line(&mut line).await?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)?;
        anyhow::ensure!(size > 0, "the stream ended");
        anyhow::ensure!(size <= CHUNK_BYTES_MAX, "a chunk of {size} bytes");
        let mut chunk = vec![0; size + 2];
        io.read_exact(&mut chunk).await?;
        chunk.truncate(size);
        text.push_str(std::str::from_utf8(&chunk)?);
        while let Some(end) = text.find('\n') {
            if let Some(id) = text[..end].strip_prefix("id:") {
                let position: u64 = id.trim().parse()?;
                if last.is_some_and(|l| position != l + 1) {
                    seen.out_of_order.fetch_add(1, Ordering::Relaxed);
                }
                *last = Some(position);
                seen.events.fetch_add(1, Ordering::Relaxed);
            }
            text.drain(..=end);
        }
    }
    Ok(())
}
