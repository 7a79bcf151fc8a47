//! The benchmark's results as data (serialized to JSON) and as markdown tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::procstat::NodeUsage;
use super::stats::{Summary, ratio};

/// One load run of one system at one concurrency (or offered rate).
#[derive(Debug, Clone, Serialize)]
pub struct LoadRow {
    /// "switchboard" or "etcd".
    pub system: String,
    /// "raw" (tonic clients at the leader), "library" (`client::Client`) or "etcd-client".
    pub client: String,
    /// "closed" or "open".
    pub mode: String,
    /// Closed loop: workers; open loop: peak lifecycles allowed in flight.
    pub concurrency: usize,
    pub connections: usize,
    pub offered_lifecycles_per_s: Option<f64>,
    pub window_s: f64,
    pub transitions: u64,
    pub lifecycles: u64,
    pub errors: u64,
    pub dropped: u64,
    pub transitions_per_s: f64,
    pub lifecycles_per_s: f64,
    /// Every transition type together.
    pub all: Summary,
    pub ops: BTreeMap<String, Summary>,
    pub nodes: Vec<NodeUsage>,
    /// CPU seconds of the load generator (this process) during the run.
    pub generator_cpu_s: f64,
    pub error_samples: Vec<String>,
}

/// Switchboard / etcd at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub mode: String,
    pub concurrency: usize,
    pub offered_lifecycles_per_s: Option<f64>,
    pub switchboard_client: String,
    /// Switchboard lifecycles/s divided by etcd's (higher is better for Switchboard).
    pub throughput_ratio: Option<f64>,
    /// Switchboard p99 (all transitions) divided by etcd's (lower is better for Switchboard).
    pub p99_ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReadRow {
    pub system: String,
    /// "linearizable" or "local" (etcd: serializable).
    pub consistency: String,
    pub concurrency: usize,
    pub connections: usize,
    pub calls: usize,
    pub window_s: f64,
    pub reads_per_s: f64,
    pub errors: u64,
    pub latency: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailoverRow {
    pub system: String,
    pub profile: String,
    pub flags: String,
    pub runs: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub trials_ms: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RssRow {
    pub system: String,
    pub calls: u64,
    pub load_s: f64,
    /// RSS per node after the load (and a short settle), MiB.
    pub rss_mib: BTreeMap<String, f64>,
    /// Peak RSS per node during the load, MiB.
    pub peak_rss_mib: BTreeMap<String, f64>,
    /// Data directory size per node after the load, MiB.
    pub data_mib: BTreeMap<String, f64>,
}

/// Target checks, measured (never asserted).
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub switchboard_peak_lifecycles_per_s: Option<f64>,
    pub switchboard_peak_concurrency: Option<usize>,
    pub etcd_peak_lifecycles_per_s: Option<f64>,
    pub etcd_peak_concurrency: Option<usize>,
    /// Peak / peak (target ≥ 2).
    pub saturation_ratio: Option<f64>,
    /// Concurrencies at which Switchboard's p99 is worse than etcd's.
    pub p99_worse_at: Vec<usize>,
    /// Median failover of the fastest Switchboard profile, ms (target < 1000).
    pub failover_median_ms: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub command: String,
    pub started_unix_s: u64,
    pub total_s: f64,
    pub settings: BTreeMap<String, String>,
    pub lifecycle: Vec<LoadRow>,
    pub open_loop: Vec<LoadRow>,
    pub comparisons: Vec<Comparison>,
    pub reads: Vec<ReadRow>,
    pub failover: Vec<FailoverRow>,
    pub rss: Vec<RssRow>,
    pub verdict: Verdict,
}

/// Pairs every Switchboard row with the etcd row of the same mode and concurrency.
pub fn compare(rows: &[LoadRow]) -> Vec<Comparison> {
    let mut out = Vec::new();
    for sb in rows.iter().filter(|r| r.system == "switchboard") {
        let Some(etcd) = rows.iter().find(|r| {
            r.system == "etcd"
                && r.mode == sb.mode
                && r.concurrency == sb.concurrency
                && r.offered_lifecycles_per_s == sb.offered_lifecycles_per_s
        }) else {
            continue;
        };
        out.push(Comparison {
            mode: sb.mode.clone(),
            concurrency: sb.concurrency,
            offered_lifecycles_per_s: sb.offered_lifecycles_per_s,
            switchboard_client: sb.client.clone(),
            throughput_ratio: ratio(sb.lifecycles_per_s, etcd.lifecycles_per_s),
            p99_ratio: ratio(sb.all.p99_ms, etcd.all.p99_ms),
        });
    }
    out
}

/// The closed-loop row with the most lifecycles/s of `system` (and `client`).
pub fn peak<'a>(rows: &'a [LoadRow], system: &str, client: &str) -> Option<&'a LoadRow> {
    rows.iter()
        .filter(|r| r.system == system && r.client == client && r.mode == "closed")
        .max_by(|a, b| a.lifecycles_per_s.total_cmp(&b.lifecycles_per_s))
}

pub fn verdict(rows: &[LoadRow], comparisons: &[Comparison], failover: &[FailoverRow]) -> Verdict {
    let sb = peak(rows, "switchboard", "raw").or_else(|| peak(rows, "switchboard", "library"));
    let etcd = peak(rows, "etcd", "etcd-client");
    Verdict {
        switchboard_peak_lifecycles_per_s: sb.map(|r| r.lifecycles_per_s),
        switchboard_peak_concurrency: sb.map(|r| r.concurrency),
        etcd_peak_lifecycles_per_s: etcd.map(|r| r.lifecycles_per_s),
        etcd_peak_concurrency: etcd.map(|r| r.concurrency),
        saturation_ratio: match (sb, etcd) {
            (Some(s), Some(e)) => ratio(s.lifecycles_per_s, e.lifecycles_per_s),
            _ => None,
        },
        p99_worse_at: comparisons
            .iter()
            .filter(|c| {
                c.mode == "closed"
                    && c.switchboard_client == "raw"
                    && c.p99_ratio.is_some_and(|r| r > 1.0)
            })
            .map(|c| c.concurrency)
            .collect(),
        failover_median_ms: failover
            .iter()
            .map(|f| (format!("{}/{}", f.system, f.profile), f.median_ms))
            .collect(),
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
}

fn per_node<F: Fn(&NodeUsage) -> f64>(nodes: &[NodeUsage], f: F, digits: usize) -> String {
    nodes
        .iter()
        .map(|n| format!("{:.digits$}", f(n)))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn label(row: &LoadRow) -> String {
    match row.client.as_str() {
        "raw" => "Switchboard".to_owned(),
        "library" => "Switchboard (client lib)".to_owned(),
        _ => "etcd 3.4".to_owned(),
    }
}

/// The throughput/latency table of load rows.
pub fn load_table(rows: &[LoadRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| K | system | transitions/s | lifecycles/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | CPU s per node | peak RSS MiB per node |"
    );
    let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|");
    for r in rows {
        let k = match r.offered_lifecycles_per_s {
            Some(rate) => format!("{rate:.0}/s"),
            None => r.concurrency.to_string(),
        };
        let _ = writeln!(
            s,
            "| {k} | {} | {:.0} | {:.1} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {} | {} |",
            label(r),
            r.transitions_per_s,
            r.lifecycles_per_s,
            r.all.p50_ms,
            r.all.p99_ms,
            r.all.p999_ms,
            r.all.max_ms,
            r.errors + r.dropped,
            per_node(&r.nodes, |n| n.cpu_s, 1),
            per_node(&r.nodes, |n| n.peak_rss_mib, 0),
        );
    }
    s
}

/// Per-operation latency of load rows.
pub fn ops_table(rows: &[LoadRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| K | system | op | count | p50 ms | p99 ms | p99.9 ms | max ms |"
    );
    let _ = writeln!(s, "|---:|---|---|---:|---:|---:|---:|---:|");
    for r in rows {
        let k = match r.offered_lifecycles_per_s {
            Some(rate) => format!("{rate:.0}/s"),
            None => r.concurrency.to_string(),
        };
        for (op, o) in &r.ops {
            let _ = writeln!(
                s,
                "| {k} | {} | {op} | {} | {:.2} | {:.2} | {:.2} | {:.1} |",
                label(r),
                o.count,
                o.p50_ms,
                o.p99_ms,
                o.p999_ms,
                o.max_ms
            );
        }
    }
    s
}

pub fn markdown(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Switchboard vs etcd: lifecycle benchmark\n");
    let _ = writeln!(s, "Command: `{}`  ", report.command);
    let _ = writeln!(
        s,
        "Total run time: {:.0} s. Both systems: 3 nodes on this machine's loopback, one after \
         the other, same disk, fsync on, default tuning.\n",
        report.total_s
    );
    let _ = writeln!(
        s,
        "## Lifecycle, closed loop (K clients)\n\nEach virtual call: create, start, 6 turns, \
         handoff (half the calls), end; one Switchboard write RPC or one etcd transaction per \
         transition. Latency over all transitions.\n"
    );
    s.push_str(&load_table(&report.lifecycle));
    let _ = writeln!(
        s,
        "\n### Switchboard / etcd\n\n| mode | K | Switchboard client | lifecycles/s ratio | p99 ratio (lower is better) |\n|---|---:|---|---:|---:|"
    );
    for c in &report.comparisons {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {}× | {} |",
            c.mode,
            c.offered_lifecycles_per_s
                .map_or(c.concurrency.to_string(), |r| format!("{r:.0}/s")),
            c.switchboard_client,
            opt(c.throughput_ratio, 2),
            opt(c.p99_ratio, 2)
        );
    }
    if !report.open_loop.is_empty() {
        let _ = writeln!(
            s,
            "\n## Lifecycle, open loop (fixed offered rate of new calls)\n\n`create` latency is \
             measured from the scheduled arrival. K column: offered lifecycles/s.\n"
        );
        s.push_str(&load_table(&report.open_loop));
    }
    let _ = writeln!(s, "\n## Latency per operation type\n");
    s.push_str(&ops_table(&report.lifecycle));
    if !report.open_loop.is_empty() {
        s.push('\n');
        s.push_str(&ops_table(&report.open_loop));
    }
    if !report.reads.is_empty() {
        let _ = writeln!(
            s,
            "\n## Reads of one call record\n\n| system | consistency | K | reads/s | p50 ms | p99 ms | p99.9 ms | max ms | errors |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in &report.reads {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {} |",
                r.system,
                r.consistency,
                r.concurrency,
                r.reads_per_s,
                r.latency.p50_ms,
                r.latency.p99_ms,
                r.latency.p999_ms,
                r.latency.max_ms,
                r.errors
            );
        }
    }
    if !report.failover.is_empty() {
        let _ = writeln!(
            s,
            "\n## Failover: leader SIGKILL → first successful write\n\n| system | profile | flags | runs | median ms | min ms | max ms |\n|---|---|---|---:|---:|---:|---:|"
        );
        for f in &report.failover {
            let _ = writeln!(
                s,
                "| {} | {} | `{}` | {} | {:.0} | {:.0} | {:.0} |",
                f.system,
                f.profile,
                if f.flags.is_empty() {
                    "(defaults)"
                } else {
                    &f.flags
                },
                f.runs,
                f.median_ms,
                f.min_ms,
                f.max_ms
            );
        }
    }
    if !report.rss.is_empty() {
        let _ = writeln!(
            s,
            "\n## Memory with stored calls\n\n| system | calls | load s | RSS MiB per node after | peak RSS MiB per node | data dir MiB per node |\n|---|---:|---:|---|---|---|"
        );
        let join = |m: &BTreeMap<String, f64>| {
            m.values()
                .map(|v| format!("{v:.0}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        for r in &report.rss {
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {} | {} | {} |",
                r.system,
                r.calls,
                r.load_s,
                join(&r.rss_mib),
                join(&r.peak_rss_mib),
                join(&r.data_mib)
            );
        }
    }
    let v = &report.verdict;
    let _ = writeln!(
        s,
        "\n## Targets (measured, not asserted)\n\n- Saturation: Switchboard {} lifecycles/s (K={}) vs etcd {} lifecycles/s (K={}): ratio {} (target ≥ 2).\n- Switchboard p99 worse than etcd's at K = {:?} (target: none).\n- Failover medians: {}.",
        opt(v.switchboard_peak_lifecycles_per_s, 1),
        v.switchboard_peak_concurrency
            .map_or_else(|| "–".to_owned(), |k| k.to_string()),
        opt(v.etcd_peak_lifecycles_per_s, 1),
        v.etcd_peak_concurrency
            .map_or_else(|| "–".to_owned(), |k| k.to_string()),
        opt(v.saturation_ratio, 2),
        v.p99_worse_at,
        v.failover_median_ms
            .iter()
            .map(|(k, ms)| format!("{k} {ms:.0} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(s, "\n## Settings\n\n| setting | value |\n|---|---|");
    for (k, v) in &report.settings {
        let _ = writeln!(s, "| {k} | `{}` |", v.replace('|', "\\|"));
    }
    s
}
