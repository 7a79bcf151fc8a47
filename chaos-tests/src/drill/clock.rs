//! Clock faults: a node's wall clock skewed or jumping, at runtime, while its monotonic clock
//! keeps real time, which is what a misconfigured or NTP-stepped host looks like.
//!
//! Nodes of a drill with clock faults run under libfaketime (`LD_PRELOAD`, Debian package
//! `faketime`), each with its own offset file (`FAKETIME_TIMESTAMP_FILE`, re-read on every
//! call with `FAKETIME_NO_CACHE=1`). `FAKETIME_DONT_FAKE_MONOTONIC=1` keeps `CLOCK_MONOTONIC`
//! real, so tokio timers, Raft heartbeats and elections are untouched: only `SystemTime`, the
//! leader's stamp, moves. libfaketime was chosen over a test-only flag in the node because it
//! needs no code in the product and fakes the clock the way the host would (every
//! `clock_gettime(CLOCK_REALTIME)` of the process, RocksDB's included); the node calls glibc's
//! `clock_gettime`, which the preload intercepts.
//!
//! The faults themselves (`ClockSkew`, `ClockJump`) are injected here; each moves leadership
//! or the leader's clock so that the log sees stamps from differently skewed leaders, and
//! resets every offset it set before the next fault. This module never changes the host's
//! clock.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::nemesis::{FaultKind, Nemesis};

/// Where Debian and Ubuntu install libfaketime; the thread-safe build first.
const LIBFAKETIME_CANDIDATES: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
];
/// Overrides the search: the path of a libfaketime shared object.
pub const LIBFAKETIME_ENV: &str = "CHAOS_LIBFAKETIME";
/// A skew moves a node's clock by at least this much and at most [`SKEW_MS_MAX`], ahead or
/// behind: minutes, far more than NTP ever leaves, far less than the one-hour idempotency window.
pub const SKEW_MS_MIN: u64 = 2 * 60 * 1000;
pub const SKEW_MS_MAX: u64 = 10 * 60 * 1000;

/// The libfaketime shared object, if installed (or named by `CHAOS_LIBFAKETIME`).
pub fn find_libfaketime() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(LIBFAKETIME_ENV) {
        let path = PathBuf::from(path);
        return path.exists().then_some(path);
    }
    LIBFAKETIME_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// The refusal when clock faults are asked for and libfaketime is missing.
pub fn missing_libfaketime() -> String {
    format!(
        "clock faults need libfaketime: install it with `scripts/ensure-system-deps faketime` \
         (Debian package faketime), or name the library with {LIBFAKETIME_ENV}=PATH"
    )
}

/// Per-node wall-clock offsets of a drill's nodes, through libfaketime offset files.
#[derive(Debug)]
pub struct ClockControl {
    library: PathBuf,
    dir: PathBuf,
    /// The largest offset (either sign) any node was given: how far a leader-stamped time may
    /// be from real time.
    skew_ms_max: u64,
}

impl ClockControl {
    /// Offset files live in `dir` (created), one per node, all at zero until a fault.
    pub fn new(library: PathBuf, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            library,
            dir: dir.to_path_buf(),
            skew_ms_max: 0,
        })
    }

    fn offset_file(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.offset"))
    }

    /// The environment that puts node `id` under its offset file (zero when absent).
    pub fn env(&self, id: u64) -> anyhow::Result<Vec<(&'static str, String)>> {
        let file = self.offset_file(id);
        if !file.exists() {
            self.write(id, 0)?;
        }
        Ok(vec![
            ("LD_PRELOAD", self.library.display().to_string()),
            ("FAKETIME_TIMESTAMP_FILE", file.display().to_string()),
            ("FAKETIME_NO_CACHE", "1".to_owned()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
        ])
    }

    /// Writes the offset atomically (rename), so that a node never reads half a file.
    fn write(&self, id: u64, offset_ms: i64) -> anyhow::Result<()> {
        let file = self.offset_file(id);
        let temp = self.dir.join(format!("node-{id}.offset.tmp"));
        // libfaketime reads "+S" / "-S" as an offset in (fractional) seconds.
        let sign = if offset_ms < 0 { '-' } else { '+' };
        let abs = offset_ms.unsigned_abs();
        std::fs::write(&temp, format!("{sign}{}.{:03}\n", abs / 1000, abs % 1000))?;
        std::fs::rename(&temp, &file)?;
        Ok(())
    }

    /// Moves node `id`'s wall clock `offset_ms` away from real time (negative: behind).
    pub fn set_offset(&mut self, id: u64, offset_ms: i64) -> anyhow::Result<()> {
        self.skew_ms_max = self.skew_ms_max.max(offset_ms.unsigned_abs());
        self.write(id, offset_ms)
    }

    /// Every node back on real time.
    pub fn reset_all(&mut self, ids: &[u64]) -> anyhow::Result<()> {
        for id in ids {
            self.write(*id, 0)?;
        }
        Ok(())
    }

    pub fn skew_ms_max(&self) -> u64 {
        self.skew_ms_max
    }
}

fn signed_minutes(offset_ms: i64) -> String {
    format!("{:+.1} min", offset_ms as f64 / 60_000.0)
}

impl Nemesis<'_> {
    /// An offset of [`SKEW_MS_MIN`]..=[`SKEW_MS_MAX`], ahead or behind.
    fn draw_offset_ms(&mut self) -> i64 {
        let magnitude = i64::try_from(self.rng.range(SKEW_MS_MIN, SKEW_MS_MAX)).unwrap_or(0);
        if self.rng.chance(50) {
            magnitude
        } else {
            -magnitude
        }
    }

    fn set_offset(&mut self, record: usize, id: u64, offset_ms: i64) {
        let result = match self.cluster.clock.as_mut() {
            Some(clock) => clock.set_offset(id, offset_ms),
            None => Err(anyhow::anyhow!(missing_libfaketime())),
        };
        if let Err(e) = result {
            self.trouble(record, format!("set clock of node {id}: {e}"));
        }
    }

    /// `ClockSkew`: one node's clock (the leader's, most of the time) runs minutes ahead or
    /// behind; halfway, the current leader is SIGKILLed (and restarted) so that leadership moves
    /// between the skewed node and the others while the skew holds.
    pub(super) async fn clock_skew(&mut self, hold: Duration) {
        let target = if self.rng.chance(70) {
            self.leader_or_random().await
        } else {
            self.random_node()
        };
        let offset_ms = self.draw_offset_ms();
        let i = self.record(
            FaultKind::ClockSkew,
            format!(
                "clock of node {target} {} for {} ms; the leader is killed halfway",
                signed_minutes(offset_ms),
                hold.as_millis()
            ),
        );
        self.set_offset(i, target, offset_ms);
        tokio::time::sleep(hold / 2).await;
        let leader = self.leader_or_random().await;
        if let Err(e) = self.cluster.kill(leader).await {
            self.trouble(i, format!("kill leader {leader}: {e}"));
        }
        tokio::time::sleep(hold / 4).await;
        if let Err(e) = self.cluster.restart(leader).await {
            self.trouble(i, format!("restart node {leader}: {e}"));
        }
        tokio::time::sleep(hold / 4).await;
        if let Some(rec) = self.records.get_mut(i) {
            rec.what.push_str(&format!(" (killed node {leader})"));
        }
        self.set_offset(i, target, 0);
        self.healed(i);
    }

    /// `ClockJump`: the leader's clock steps back by minutes mid-run, later steps forward past
    /// real time, then returns to it.
    pub(super) async fn clock_jump(&mut self, hold: Duration) {
        let target = self.leader_or_random().await;
        let back_ms = -i64::try_from(self.rng.range(SKEW_MS_MIN, SKEW_MS_MAX)).unwrap_or(0);
        let ahead_ms = i64::try_from(self.rng.range(SKEW_MS_MIN / 2, SKEW_MS_MAX)).unwrap_or(0);
        let i = self.record(
            FaultKind::ClockJump,
            format!(
                "clock of leader {target} jumps {}, then {}, over {} ms",
                signed_minutes(back_ms),
                signed_minutes(ahead_ms),
                hold.as_millis()
            ),
        );
        self.set_offset(i, target, back_ms);
        tokio::time::sleep(hold / 2).await;
        self.set_offset(i, target, ahead_ms);
        tokio::time::sleep(hold / 2).await;
        self.set_offset(i, target, 0);
        self.healed(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_written_in_libfaketime_form_and_tracked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut clock =
            ClockControl::new(PathBuf::from("/nonexistent/libfaketime.so.1"), dir.path())
                .expect("control");
        let env = clock.env(2).expect("env");
        let file = dir.path().join("node-2.offset");
        assert!(env.contains(&("FAKETIME_TIMESTAMP_FILE", file.display().to_string())));
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "+0.000\n");
        clock.set_offset(2, -150_250).expect("set");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "-150.250\n");
        clock.set_offset(2, 90_000).expect("set");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "+90.000\n");
        assert_eq!(clock.skew_ms_max(), 150_250);
        clock.reset_all(&[2]).expect("reset");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "+0.000\n");
    }
}
