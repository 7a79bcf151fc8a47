//! Load runners shared by both systems: closed loop with K workers, open loop at a fixed
//! offered rate, read loops, and preloading. Every loop is bounded by a deadline; every task is
//! owned by a `JoinSet` that is drained (or aborted) before the runner returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::KvClient;
use proto::v1::Consistency;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::etcd::{self, EtcdCall};
use super::sb::{self, SbCall, SbConn};
use super::stats::OpStats;
use super::workload::{self, Op};

/// Pause after a failed operation, so that a broken cluster does not spin the client.
const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// How long an open-loop run waits for its in-flight lifecycles after the last arrival.
const DRAIN_WAIT: Duration = Duration::from_secs(30);

/// One connection of either system.
#[derive(Clone)]
pub enum Conn {
    Sb(SbConn),
    Etcd(Box<KvClient>),
}

impl std::fmt::Debug for Conn {
    // etcd's KvClient has no Debug.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Conn::Sb(c) => f.debug_tuple("Sb").field(c).finish(),
            Conn::Etcd(_) => f.write_str("Etcd(KvClient)"),
        }
    }
}

/// One virtual call as the driver of its system tracks it.
#[derive(Debug)]
pub enum CallCtx {
    Sb(SbCall),
    Etcd(EtcdCall),
}

impl CallCtx {
    pub fn call_id(&self) -> &str {
        match self {
            CallCtx::Sb(c) => &c.call_id,
            CallCtx::Etcd(c) => &c.call_id,
        }
    }
}

impl Conn {
    pub fn new_call(&self, seq: u64, run: &str) -> CallCtx {
        match self {
            Conn::Sb(_) => CallCtx::Sb(SbCall::new(seq, run)),
            Conn::Etcd(_) => CallCtx::Etcd(EtcdCall::new(seq)),
        }
    }

    pub async fn step(&mut self, call: &mut CallCtx, op: Op) -> anyhow::Result<()> {
        match (self, call) {
            (Conn::Sb(conn), CallCtx::Sb(call)) => sb::step(conn, call, op).await,
            (Conn::Etcd(kv), CallCtx::Etcd(call)) => etcd::step(kv, call, op).await,
            _ => anyhow::bail!("call of one system driven on the other"),
        }
    }

    /// One read of a call record; `local` is LOCAL (Switchboard) / serializable (etcd).
    pub async fn read(&mut self, call_id: &str, local: bool) -> anyhow::Result<()> {
        match self {
            Conn::Sb(conn) => {
                let consistency = if local {
                    Consistency::Local
                } else {
                    Consistency::Linearizable
                };
                sb::read(conn, call_id, consistency).await
            }
            Conn::Etcd(kv) => etcd::read(kv, call_id, local).await,
        }
    }
}

/// What one load run measured.
#[derive(Debug, Default)]
pub struct LoadResult {
    pub stats: OpStats<Op>,
    /// Lifecycles whose `end` completed inside the window (closed loop) or that completed and
    /// arrived inside the window (open loop).
    pub lifecycles: u64,
    pub window: Duration,
    /// Open loop: arrivals not started because `inflight_max` lifecycles were running.
    pub dropped: u64,
}

/// K workers, each running lifecycles back to back; only operations that start after the
/// warm-up and finish before the end are recorded.
pub async fn closed_loop(
    pool: &[Conn],
    workers: usize,
    warmup: Duration,
    duration: Duration,
    run: &str,
) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(!pool.is_empty(), "empty connection pool");
    let next_seq = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut set = JoinSet::new();
    for w in 0..workers {
        let mut conn = pool[w % pool.len()].clone();
        let next_seq = next_seq.clone();
        let run = run.to_owned();
        set.spawn(async move {
            let mut stats = OpStats::default();
            let mut lifecycles = 0u64;
            'calls: while Instant::now() < end {
                let seq = next_seq.fetch_add(1, Ordering::Relaxed);
                let mut call = conn.new_call(seq, &run);
                for op in workload::lifecycle(seq) {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break 'calls;
                    }
                    match conn.step(&mut call, op).await {
                        Ok(()) => {
                            let t1 = Instant::now();
                            if t0 >= measure_from && t1 <= end {
                                stats.record(op, t1 - t0);
                                if op == Op::End {
                                    lifecycles += 1;
                                }
                            }
                        }
                        Err(e) => {
                            if t0 >= measure_from {
                                stats.record_error(op, || format!("{}: {e:#}", op.name()));
                            }
                            tokio::time::sleep(ERROR_PAUSE).await;
                            continue 'calls;
                        }
                    }
                }
            }
            (stats, lifecycles)
        });
    }
    let mut result = LoadResult {
        window: duration,
        ..LoadResult::default()
    };
    while let Some(joined) = set.join_next().await {
        let (stats, lifecycles) = joined?;
        result.stats.merge(&stats);
        result.lifecycles += lifecycles;
    }
    Ok(result)
}

/// New lifecycles arrive at `rate` per second regardless of how fast earlier ones finish; each
/// runs its steps back to back. `create` latency is measured from the scheduled arrival, so a
/// late start (the generator or the system falling behind) counts against the system.
pub async fn open_loop(
    pool: &[Conn],
    rate: f64,
    warmup: Duration,
    duration: Duration,
    inflight_max: usize,
    run: &str,
) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(!pool.is_empty(), "empty connection pool");
    anyhow::ensure!(rate > 0.0 && rate.is_finite(), "open-loop rate must be > 0");
    let interval = Duration::from_secs_f64(1.0 / rate);
    let arrivals = ((warmup + duration).as_secs_f64() * rate).ceil() as u64;
    let start = Instant::now();
    let measure_from = start + warmup;
    let mut result = LoadResult {
        window: duration,
        ..LoadResult::default()
    };
    let mut set: JoinSet<(OpStats<Op>, u64)> = JoinSet::new();
    let absorb = |result: &mut LoadResult, joined: Result<(OpStats<Op>, u64), _>| match joined {
        Ok((stats, done)) => {
            result.stats.merge(&stats);
            result.lifecycles += done;
        }
        Err(e) => tracing::warn!(error = %e, "open-loop lifecycle task failed"),
    };
    for seq in 0..arrivals {
        let at = start + interval.mul_f64(seq as f64);
        tokio::time::sleep_until(at).await;
        while let Some(joined) = set.try_join_next() {
            absorb(&mut result, joined);
        }
        let measured = at >= measure_from;
        if set.len() >= inflight_max {
            if measured {
                result.dropped += 1;
            }
            continue;
        }
        let mut conn = pool[(seq as usize) % pool.len()].clone();
        let run = run.to_owned();
        set.spawn(async move {
            let mut stats = OpStats::default();
            let mut call = conn.new_call(seq, &run);
            for op in workload::lifecycle(seq) {
                let t0 = if op == Op::Create { at } else { Instant::now() };
                match conn.step(&mut call, op).await {
                    Ok(()) => {
                        if measured {
                            stats.record(op, t0.elapsed());
                        }
                    }
                    Err(e) => {
                        if measured {
                            stats.record_error(op, || format!("{}: {e:#}", op.name()));
                        }
                        return (stats, 0);
                    }
                }
            }
            (stats, u64::from(measured))
        });
    }
    let drain_until = Instant::now() + DRAIN_WAIT;
    loop {
        match tokio::time::timeout_at(drain_until, set.join_next()).await {
            Ok(Some(joined)) => absorb(&mut result, joined),
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    left = set.len(),
                    "open-loop lifecycles still running: aborted"
                );
                set.abort_all();
                break;
            }
        }
    }
    Ok(result)
}

/// Runs `ops` of `count` fresh calls with `workers` workers; returns the call ids created.
/// Used to load data before read and memory measurements; fails on the first error.
pub async fn preload(
    pool: &[Conn],
    count: u64,
    workers: usize,
    ops: &'static [Op],
    run: &str,
) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(!pool.is_empty(), "empty connection pool");
    let next_seq = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for w in 0..workers.max(1) {
        let mut conn = pool[w % pool.len()].clone();
        let next_seq = next_seq.clone();
        let run = run.to_owned();
        set.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let seq = next_seq.fetch_add(1, Ordering::Relaxed);
                if seq >= count {
                    return Ok::<_, anyhow::Error>(ids);
                }
                let mut call = conn.new_call(seq, &run);
                for op in ops {
                    conn.step(&mut call, *op).await?;
                }
                ids.push(call.call_id().to_owned());
            }
        });
    }
    let mut ids = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    while let Some(joined) = set.join_next().await {
        ids.extend(joined??);
    }
    Ok(ids)
}

/// `workers` readers reading random preloaded calls for `duration` (after `warmup`).
pub async fn read_loop(
    pool: &[Conn],
    ids: Arc<Vec<String>>,
    workers: usize,
    warmup: Duration,
    duration: Duration,
    local: bool,
) -> anyhow::Result<OpStats<&'static str>> {
    anyhow::ensure!(!pool.is_empty() && !ids.is_empty(), "nothing to read");
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut set = JoinSet::new();
    for w in 0..workers {
        let mut conn = pool[w % pool.len()].clone();
        let ids = ids.clone();
        set.spawn(async move {
            let mut stats = OpStats::default();
            let mut rng = workload::Rng::new(w as u64 + 1);
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let id = &ids[rng.below(ids.len())];
                match conn.read(id, local).await {
                    Ok(()) => {
                        let t1 = Instant::now();
                        if t0 >= measure_from && t1 <= end {
                            stats.record("read", t1 - t0);
                        }
                    }
                    Err(e) => {
                        if t0 >= measure_from {
                            stats.record_error("read", || format!("read: {e:#}"));
                        }
                        tokio::time::sleep(ERROR_PAUSE).await;
                    }
                }
            }
            stats
        });
    }
    let mut merged = OpStats::default();
    while let Some(joined) = set.join_next().await {
        merged.merge(&joined?);
    }
    Ok(merged)
}
