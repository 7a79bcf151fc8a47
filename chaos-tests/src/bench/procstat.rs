//! CPU time and resident memory of node processes, read from `/proc` (Linux only).
//! The sampler is owned by the phase that starts it and is stopped and awaited by it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on every Linux target).
const TICKS_PER_S: f64 = 100.0;

/// Interval between RSS samples.
pub const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(200);

/// User + system CPU seconds consumed so far by `pid` (threads included).
pub fn cpu_seconds(pid: u32) -> std::io::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu_seconds(&text).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/stat"),
        )
    })
}

/// Parses utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line.
pub fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces and parentheses: skip to the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field N is at index N - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_S)
}

/// Resident set size of `pid`, in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_kib(&text, "VmRSS:")
        .map(|kib| kib * 1024)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("no VmRSS in /proc/{pid}/status"),
            )
        })
}

/// The value of a `Key:   1234 kB` line of `/proc/<pid>/status`, in KiB.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU and memory of one node over one phase.
#[derive(Debug, Clone, Serialize)]
pub struct NodeUsage {
    pub node: String,
    pub cpu_s: f64,
    pub peak_rss_mib: f64,
}

/// Samples the RSS of a fixed set of processes until stopped; also takes CPU at both ends.
#[derive(Debug)]
pub struct Usage {
    nodes: Vec<(String, u32)>,
    cpu_start: Vec<f64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    sampler: Option<tokio::task::JoinHandle<Vec<u64>>>,
}

impl Usage {
    /// Starts sampling `nodes` (name, pid).
    pub fn start(nodes: Vec<(String, u32)>) -> Self {
        let cpu_start = nodes
            .iter()
            .map(|(_, pid)| cpu_seconds(*pid).unwrap_or(0.0))
            .collect();
        let pids: Vec<u32> = nodes.iter().map(|(_, pid)| *pid).collect();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let sampler = tokio::spawn(async move {
            let mut peak = vec![0u64; pids.len()];
            let mut tick = tokio::time::interval(RSS_SAMPLE_INTERVAL);
            loop {
                for (i, pid) in pids.iter().enumerate() {
                    if let Ok(rss) = rss_bytes(*pid) {
                        peak[i] = peak[i].max(rss);
                    }
                }
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => break,
                }
            }
            peak
        });
        Self {
            nodes,
            cpu_start,
            stop: Some(stop),
            sampler: Some(sampler),
        }
    }

    /// Stops sampling; CPU seconds since start and peak RSS per node.
    pub async fn finish(mut self) -> Vec<NodeUsage> {
        let cpu_end: Vec<f64> = self
            .nodes
            .iter()
            .map(|(_, pid)| cpu_seconds(*pid).unwrap_or(0.0))
            .collect();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let peaks = match self.sampler.take() {
            Some(handle) => handle.await.unwrap_or_default(),
            None => Vec::new(),
        };
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, (name, _))| NodeUsage {
                node: name.clone(),
                cpu_s: (cpu_end[i] - self.cpu_start[i]).max(0.0),
                peak_rss_mib: peaks.get(i).copied().unwrap_or(0) as f64 / (1024.0 * 1024.0),
            })
            .collect()
    }
}

impl Drop for Usage {
    fn drop(&mut self) {
        if let Some(handle) = self.sampler.take() {
            handle.abort();
        }
    }
}

/// Current RSS per node in MiB (0 for a process that cannot be read).
pub fn rss_now_mib(nodes: &[(String, u32)]) -> BTreeMap<String, f64> {
    nodes
        .iter()
        .map(|(name, pid)| {
            let rss = rss_bytes(*pid).unwrap_or(0) as f64 / (1024.0 * 1024.0);
            (name.clone(), rss)
        })
        .collect()
}

/// Total size of the files under `dir`, in bytes (bounded walk: symlinks are not followed).
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    let mut visited = 0usize;
    while let Some(d) = stack.pop() {
        visited += 1;
        if visited > 100_000 {
            break;
        }
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => total += entry.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}
