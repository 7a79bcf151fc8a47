//! Disk faults: damaged files in a stopped node's data directory (`disk-damage`), a full disk
//! (`disk-full`, a tmpfs per node), failing fsyncs (`sync-error`) and slow fsyncs
//! (`slow-disk`). The last two go through the fault shim (`fault-shim/`), an `LD_PRELOAD`
//! library controlled by a file per node: the kernel's device-mapper fault targets are not
//! available in the containers the drills run in (`dmsetup targets`: "/dev/mapper/control:
//! open failed: No such device"), and a shim needs nothing from the kernel.
//!
//! The rule every disk fault is judged by (`checkers::disk`): a node restarted on a damaged
//! disk refuses (exit code 74, `storage damaged:` on stderr) and is rejoined, or serves with
//! everything it had committed; it never comes back silently behind. The helpers here (damage a
//! file, watch a restart) are shared by the drill's nemesis and `tests/disk_faults.rs`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// After a sync-error hold, how long a node that appended under it may take to stop.
const SYNC_ERROR_EXIT_GRACE: Duration = Duration::from_secs(1);
/// How long `node reset --rejoin` may take to remove and wipe the node.
const REJOIN_WIPE_WAIT: Duration = Duration::from_secs(20);
/// How long it may then take for the restarted node to catch up and be promoted.
const REJOIN_WAIT: Duration = Duration::from_secs(40);

use super::nemesis::{FaultKind, Nemesis};
use crate::checkers::disk::{
    FaultWindow, NodeState, RestartFact, RestartOutcome, STORAGE_DAMAGED_MARK, StopFact,
};

/// The fault shim's file name, as Cargo builds it next to the binaries.
pub const SHIM_LIB_FILE: &str = "libfault_shim.so";
/// Overrides where the fault shim is found.
pub const SHIM_LIB_ENV: &str = "SWITCHBOARD_FAULT_SHIM_LIB";
/// The environment variable naming a node's shim control file (`fault_shim::CONTROL_ENV`).
pub const SHIM_CONTROL_ENV: &str = "SWITCHBOARD_FAULT_SHIM";
/// Size of each node's tmpfs in `disk-full` drills. A 30 s drill writes a few MiB of log and
/// state; RocksDB preallocates about 70 MiB for its write-ahead log (1.1 × the 64 MiB write
/// buffer). 256 MiB leaves room for both plus a snapshot, and little enough to fill quickly.
pub const DATA_TMPFS_MIB: u64 = 256;
/// Bytes flipped by a `Flip` damage.
pub const FLIP_BYTES: u64 = 16;
/// Bytes cut off the end of a file by a `TruncateTail` damage (a torn last write).
pub const TORN_TAIL_BYTES: u64 = 7;
/// How long a restarted node may take to either answer `Status` or exit.
pub const RESTART_OBSERVE_MS_MAX: u64 = 20_000;
/// While a damaged node restarts, its peers' messages to it are delayed this much, so that
/// the first `Status` shows what it loaded from disk before the leader can repair it.
pub const OBSERVE_PEER_DELAY_MS: u64 = 3_000;
/// The filler of a full disk is written in chunks of this size ...
const FILLER_CHUNK_BYTES: usize = 1 << 20;
/// ... up to this many bytes at most (more than any tmpfs the drill mounts).
const FILLER_BYTES_MAX: u64 = (DATA_TMPFS_MIB + 64) << 20;
/// The filler's name inside a node's data directory.
pub const FILLER_FILE: &str = "disk-full-filler";
/// Delay of `slow-disk` fsyncs, least and most (ms).
const SLOW_SYNC_MS: (u64, u64) = (50, 300);
/// How often a fault looks whether its node exited (ms).
const EXIT_POLL_MS: u64 = 100;
/// One `Status` attempt while watching a restart.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);
const OBSERVE_POLL: Duration = Duration::from_millis(20);

/// The fault shim library: `$SWITCHBOARD_FAULT_SHIM_LIB`, or the one Cargo built next to this
/// program (or next to the `switchboard` binary).
pub fn shim_library() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(SHIM_LIB_ENV) {
        return Ok(PathBuf::from(path));
    }
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.to_path_buf());
        dirs.push(dir.join(".."));
    }
    if let Ok(binary) = crate::switchboard_binary()
        && let Some(dir) = binary.parent()
    {
        dirs.push(dir.to_path_buf());
    }
    for dir in &dirs {
        let candidate = dir.join(SHIM_LIB_FILE);
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "no fault shim ({SHIM_LIB_FILE}) in {dirs:?}: the sync-error and slow-disk faults need it; \
         build it (cargo build --workspace --all-targets) or set {SHIM_LIB_ENV}"
    )
}

/// What the fault shim does, as written to a node's control file (the shim's grammar).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShimControl {
    Ok,
    FailSync,
    SlowSync { ms: u64 },
    EnospcWrite,
}

impl ShimControl {
    pub fn line(self) -> String {
        match self {
            ShimControl::Ok => "ok\n".to_owned(),
            ShimControl::FailSync => "fail-sync\n".to_owned(),
            ShimControl::SlowSync { ms } => format!("slow-sync {ms}\n"),
            ShimControl::EnospcWrite => "enospc-write\n".to_owned(),
        }
    }

    /// Writes the control file whole (a temp file renamed over it: the shim never reads half
    /// a line).
    pub fn write(self, path: &Path) -> std::io::Result<()> {
        let temp = path.with_extension("shim-new");
        std::fs::write(&temp, self.line())?;
        std::fs::rename(&temp, path)
    }
}

/// Whether this process runs as root (the owner of `/proc/self` is its effective user).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Mounts a tmpfs of `mib` MiB at `dir` (created if missing).
pub fn mount_tmpfs(dir: &Path, mib: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o"])
        .arg(format!("size={mib}m,mode=0700"))
        .arg("sbchaos-data")
        .arg(dir)
        .status()?;
    anyhow::ensure!(
        status.success(),
        "mount -t tmpfs at {} failed ({status}); the disk-full fault needs root",
        dir.display()
    );
    Ok(())
}

/// Unmounts what [`mount_tmpfs`] mounted (lazily: a node may still be exiting).
pub fn unmount_tmpfs(dir: &Path) {
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(dir)
        .status();
}

/// Which file of a data directory to damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageTarget {
    /// A RocksDB write-ahead log, `rocksdb/*.log` (not empty).
    Wal,
    /// A RocksDB table file, `rocksdb/*.sst`.
    Sst,
    /// The RocksDB manifest, `rocksdb/MANIFEST-*`.
    Manifest,
    /// A snapshot file, `snapshots/*.snap`.
    Snapshot,
}

impl DamageTarget {
    pub const ALL: [DamageTarget; 4] = [
        DamageTarget::Wal,
        DamageTarget::Sst,
        DamageTarget::Manifest,
        DamageTarget::Snapshot,
    ];

    /// The candidate files in `data_dir`, sorted by name (RocksDB numbers files in creation
    /// order, so the last write-ahead log is the newest).
    pub fn files(self, data_dir: &Path) -> Vec<PathBuf> {
        let (dir, matches): (PathBuf, fn(&str) -> bool) = match self {
            DamageTarget::Wal => (data_dir.join("rocksdb"), |n| n.ends_with(".log")),
            DamageTarget::Sst => (data_dir.join("rocksdb"), |n| n.ends_with(".sst")),
            DamageTarget::Manifest => (data_dir.join("rocksdb"), |n| n.starts_with("MANIFEST-")),
            DamageTarget::Snapshot => (data_dir.join("snapshots"), |n| n.ends_with(".snap")),
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(matches))
            .filter(|e| e.metadata().is_ok_and(|m| m.is_file() && m.len() > 0))
            .map(|e| e.path())
            .collect();
        files.sort();
        files
    }
}

/// What to do to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// Invert [`FLIP_BYTES`] bytes at the offset.
    Flip,
    /// Cut the file at the offset.
    Truncate,
    /// Cut the last [`TORN_TAIL_BYTES`] bytes.
    TornTail,
}

/// Damages `file` at `permille` of its length; returns what was done, relative to `data_dir`.
pub fn damage(
    data_dir: &Path,
    file: &Path,
    kind: DamageKind,
    permille: u64,
) -> std::io::Result<String> {
    let len = std::fs::metadata(file)?.len();
    let name = file
        .strip_prefix(data_dir)
        .unwrap_or(file)
        .display()
        .to_string();
    let offset = len.saturating_mul(permille.min(1000)) / 1000;
    match kind {
        DamageKind::Flip => {
            let offset = offset.min(len.saturating_sub(FLIP_BYTES));
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(file)?;
            let mut bytes = vec![0u8; usize::try_from(FLIP_BYTES.min(len)).unwrap_or(0)];
            f.seek(SeekFrom::Start(offset))?;
            f.read_exact(&mut bytes)?;
            for b in &mut bytes {
                *b = !*b;
            }
            f.seek(SeekFrom::Start(offset))?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            Ok(format!(
                "flipped {} bytes at {offset} of {name} ({len} bytes)",
                bytes.len()
            ))
        }
        DamageKind::Truncate => {
            truncate(file, offset)?;
            Ok(format!("truncated {name} from {len} to {offset} bytes"))
        }
        DamageKind::TornTail => {
            let to = len.saturating_sub(TORN_TAIL_BYTES);
            truncate(file, to)?;
            Ok(format!("tore the tail of {name}: {len} to {to} bytes"))
        }
    }
}

fn truncate(file: &Path, to: u64) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(file)?;
    f.set_len(to)?;
    f.sync_all()
}

/// The length of a file, 0 when it does not exist (where a restart's stderr starts).
pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The line a node wrote about damaged storage since `from` in `log`, else its last line.
pub fn exit_line(log: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(log)
        && f.seek(SeekFrom::Start(from)).is_ok()
    {
        let _ = f.take(1 << 20).read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines
        .iter()
        .find(|l| l.contains(STORAGE_DAMAGED_MARK))
        .or(lines.last())
        .map(|l| l.trim().to_owned())
        .unwrap_or_default()
}

/// Describes how a process ended, for [`RestartOutcome::Exited`].
pub fn exited(status: ExitStatus, log: &Path, from: u64) -> RestartOutcome {
    RestartOutcome::Exited {
        code: status.code(),
        signal: status.signal(),
        line: exit_line(log, from),
    }
}

/// Watches a restarted node until it answers `Status` at `grpc` or exits (`poll_exit`), at
/// most `within`. Its stderr is `log` from offset `from`.
pub async fn observe_restart(
    grpc: &str,
    tls: Option<&client::TlsConfig>,
    token: Option<&str>,
    mut poll_exit: impl FnMut() -> Option<ExitStatus>,
    log: &Path,
    from: u64,
    within: Duration,
) -> RestartOutcome {
    let started = Instant::now();
    while started.elapsed() < within {
        if let Some(status) = poll_exit() {
            return exited(status, log, from);
        }
        if let Ok(Ok(status)) =
            tokio::time::timeout(STATUS_TIMEOUT, harness::status(grpc, tls, token)).await
        {
            return RestartOutcome::Served(NodeState::of(&status));
        }
        tokio::time::sleep(OBSERVE_POLL).await;
    }
    // One last look: it may have exited while the last status attempt timed out.
    match poll_exit() {
        Some(status) => exited(status, log, from),
        None => RestartOutcome::Silent {
            waited_ms: u64::try_from(within.as_millis()).unwrap_or(u64::MAX),
        },
    }
}

/// Fills the file system of `dir` with a filler file until it is full (bounded); returns the
/// bytes written.
pub fn fill(dir: &Path) -> std::io::Result<u64> {
    let mut f = std::fs::File::create(dir.join(FILLER_FILE))?;
    let chunk = vec![0xA5u8; FILLER_CHUNK_BYTES];
    let mut written = 0u64;
    while written < FILLER_BYTES_MAX {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) => break,
            Err(e) => return Err(e),
        }
    }
    // Flush what fits; ENOSPC here is the point.
    let _ = f.sync_all();
    Ok(written)
}

impl Nemesis<'_> {
    /// Injects one disk fault and heals it.
    pub(super) async fn disk_fault(&mut self, kind: FaultKind, hold: Duration) {
        match kind {
            FaultKind::DiskDamage => self.disk_damage(hold).await,
            FaultKind::SyncError => self.sync_error(hold).await,
            FaultKind::SlowDisk => self.slow_disk(hold).await,
            FaultKind::DiskFull => self.disk_full(hold).await,
            _ => {}
        }
    }

    fn window(&mut self, kind: &'static str, node_id: u64, from_ms: u64) {
        let to_ms = self.now_ms();
        self.disk.windows.push(FaultWindow {
            kind,
            node_id,
            from_ms,
            to_ms,
        });
    }

    async fn highest_committed(&self) -> u64 {
        self.cluster
            .statuses()
            .await
            .values()
            .map(|s| s.committed_index)
            .max()
            .unwrap_or(0)
    }

    /// Stop a node, damage one file of its data directory, restart it and judge how it came
    /// back; a refusing node is rejoined.
    async fn disk_damage(&mut self, hold: Duration) {
        let target = self.random_node();
        let Some(data_dir) = self.cluster.data_dir(target) else {
            let i = self.record(
                FaultKind::DiskDamage,
                format!("skipped: node {target} has no data directory"),
            );
            self.healed(i);
            return;
        };
        let before = match self.cluster.status(target).await {
            Ok(status) => NodeState::of(&status),
            Err(e) => {
                let i = self.record(
                    FaultKind::DiskDamage,
                    format!("skipped: node {target} did not answer status: {e}"),
                );
                self.healed(i);
                return;
            }
        };
        let from_ms = self.now_ms();
        let i = self.record(
            FaultKind::DiskDamage,
            format!(
                "kill -9 node {target} (last log {}, committed {}, term {}), damage its data",
                before.last_log_index, before.committed_index, before.term
            ),
        );
        if let Err(e) = self.cluster.kill(target).await {
            self.trouble(i, format!("kill: {e}"));
        }
        // Seeded: the kind of file (falling back to one that exists), the file, the damage.
        let wanted = *self
            .rng
            .pick(&DamageTarget::ALL)
            .unwrap_or(&DamageTarget::Wal);
        let present: Vec<DamageTarget> = DamageTarget::ALL
            .into_iter()
            .filter(|t| !t.files(&data_dir).is_empty())
            .collect();
        let chosen = if present.contains(&wanted) {
            Some(wanted)
        } else {
            self.rng.pick(&present).copied()
        };
        let Some(chosen) = chosen else {
            self.trouble(i, "no file to damage".into());
            if let Err(e) = self.cluster.restart(target).await {
                self.trouble(i, format!("restart: {e}"));
            }
            self.healed(i);
            return;
        };
        let files = chosen.files(&data_dir);
        let file = self.rng.pick(&files).cloned().unwrap_or_default();
        let kinds: &[DamageKind] = if chosen == DamageTarget::Wal {
            &[DamageKind::Flip, DamageKind::Truncate, DamageKind::TornTail]
        } else {
            &[DamageKind::Flip, DamageKind::Truncate]
        };
        let kind = *self.rng.pick(kinds).unwrap_or(&DamageKind::Flip);
        let permille = self.rng.range(100, 900);
        let what = match damage(&data_dir, &file, kind, permille) {
            Ok(what) => what,
            Err(e) => {
                self.trouble(i, format!("damage {}: {e}", file.display()));
                format!("failed damage of {}", file.display())
            }
        };
        self.note(i, &format!("; {what}"));
        tokio::time::sleep(hold.min(Duration::from_secs(2))).await;
        self.restart_and_judge(i, target, before, what).await;
        self.window("disk-damage", target, from_ms);
        self.healed(i);
    }

    /// Restarts `target` on its (damaged) disk with its peers' messages held back, records how
    /// it came back, and rejoins it when it did not come back serving.
    async fn restart_and_judge(&mut self, i: usize, target: u64, before: NodeState, what: String) {
        let log = self.cluster.log_path(target);
        let from = file_len(&log);
        let grpc = self
            .cluster
            .nodes
            .get(&target)
            .map(|n| n.grpc.clone())
            .unwrap_or_default();
        self.set_peer_delay(target, OBSERVE_PEER_DELAY_MS);
        let tls = self.cluster.tls().cloned();
        let token = self.cluster.token().map(str::to_owned);
        let outcome = match self.cluster.restart(target).await {
            Ok(()) => {
                let cluster = &mut *self.cluster;
                observe_restart(
                    &grpc,
                    tls.as_ref(),
                    token.as_deref(),
                    || cluster.exit_status(target),
                    &log,
                    from,
                    Duration::from_millis(RESTART_OBSERVE_MS_MAX),
                )
                .await
            }
            Err(e) => {
                self.trouble(i, format!("restart: {e}"));
                RestartOutcome::Silent { waited_ms: 0 }
            }
        };
        self.set_peer_delay(target, 0);
        let verdict = crate::checkers::disk::judge_restart(&before, &outcome);
        let how = match &outcome {
            RestartOutcome::Served(s) => format!(
                "; came back serving: last log {}, term {}",
                s.last_log_index, s.term
            ),
            RestartOutcome::Exited { code, signal, line } => format!(
                "; exited ({}): {line}",
                crate::checkers::disk::describe_exit(*code, *signal)
            ),
            RestartOutcome::Silent { waited_ms } => {
                format!("; neither served nor exited in {waited_ms} ms")
            }
        };
        self.note(i, &how);
        if let Err(why) = &verdict {
            self.trouble(i, format!("violation: {why}"));
        }
        let rejoin = !matches!(outcome, RestartOutcome::Served(_));
        self.disk.restarts.push(RestartFact {
            node_id: target,
            what,
            before,
            outcome,
        });
        if rejoin {
            self.rejoin(i, target).await;
        }
    }

    /// Rejoins the node the way an operator does: `switchboard node reset --rejoin` removes it
    /// from the membership and wipes its data directory; the node is started again; the command
    /// waits for it to catch up as a learner and promotes it.
    async fn rejoin(&mut self, i: usize, target: u64) {
        match self.reset_rejoin(target).await {
            Ok(()) => self.note(i, "; rejoined with `switchboard node reset --rejoin`"),
            Err(e) => self.trouble(i, format!("node reset --rejoin: {e:#}")),
        }
    }

    async fn reset_rejoin(&mut self, target: u64) -> anyhow::Result<()> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

        self.cluster.kill(target).await?;
        let data_dir = self
            .cluster
            .data_dir(target)
            .ok_or_else(|| anyhow::anyhow!("no node {target}"))?;
        let others: Vec<String> = self
            .cluster
            .nodes
            .values()
            .filter(|n| n.id != target)
            .map(|n| n.grpc.clone())
            .collect();
        let mut command = tokio::process::Command::new(self.cluster.binary());
        command
            .args([
                "node",
                "reset",
                "--rejoin",
                "--wait",
                "30s",
                "--timeout",
                "10s",
            ])
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--endpoints")
            .arg(others.join(","));
        for (advertised, reachable) in self.cluster.reach().resolve {
            command
                .arg("--resolve")
                .arg(format!("{advertised}={reachable}"));
        }
        match self.cluster.certs_dir() {
            Some(dir) => command.arg("--ca").arg(dir.join("ca.pem")),
            None => command.arg("--insecure"),
        };
        if let Some(token) = self.cluster.token() {
            command.env("SWITCHBOARD_TOKEN", token);
        }
        let mut child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let wiped = tokio::time::timeout(REJOIN_WIPE_WAIT, async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("wiped") {
                    return Ok::<bool, std::io::Error>(true);
                }
            }
            Ok(false)
        })
        .await;
        if !matches!(wiped, Ok(Ok(true))) {
            let _ = child.kill().await;
            let mut said = String::new();
            let _ = stderr.read_to_string(&mut said).await;
            anyhow::bail!("did not wipe the node: {}", said.trim());
        }
        self.cluster.start_rejoining(target)?;
        let status = tokio::time::timeout(REJOIN_WAIT, child.wait()).await;
        let mut said = String::new();
        let _ = stderr.read_to_string(&mut said).await;
        match status {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => anyhow::bail!("{status}: {}", said.trim()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => anyhow::bail!("still waiting after {REJOIN_WAIT:?}: {}", said.trim()),
        }
    }

    fn set_peer_delay(&self, target: u64, delay_ms: u64) {
        if let Some(p) = self
            .cluster
            .nodes
            .get(&target)
            .and_then(|n| n.proxy.as_ref())
        {
            p.shape.set(delay_ms, 0);
        }
    }

    fn shim(&mut self, i: usize, target: u64, control: ShimControl) {
        let path = self
            .cluster
            .nodes
            .get(&target)
            .and_then(|n| n.shim_control.clone());
        match path {
            Some(path) => {
                if let Err(e) = control.write(&path) {
                    self.trouble(i, format!("shim control {}: {e}", path.display()));
                }
            }
            None => self.trouble(i, format!("node {target} runs without the fault shim")),
        }
    }

    /// Waits up to `hold` or until `target` exits; returns how it exited, if it did.
    async fn hold_or_exit(&mut self, target: u64, hold: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + hold;
        while Instant::now() < deadline {
            if let Some(status) = self.cluster.exit_status(target) {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(EXIT_POLL_MS)).await;
        }
        self.cluster.exit_status(target)
    }

    /// What `target`'s status says now, if it answers.
    async fn node_state(&mut self, target: u64) -> Option<NodeState> {
        self.cluster
            .status(target)
            .await
            .ok()
            .map(|s| NodeState::of(&s))
    }

    /// Ends a fault held on `target` since `from_ms`: when the node stopped early, the fault
    /// stays on for the rest of the hold (the cluster must serve without it); records the
    /// fault's window and returns the entries the cluster committed meanwhile.
    async fn end_of_hold(
        &mut self,
        kind: &'static str,
        target: u64,
        hold: Duration,
        from_ms: u64,
        committed_at_start: u64,
        stopped: bool,
    ) -> u64 {
        if stopped {
            let left = hold.saturating_sub(Duration::from_millis(self.now_ms() - from_ms));
            tokio::time::sleep(left).await;
        }
        let committed_during = self
            .highest_committed()
            .await
            .saturating_sub(committed_at_start);
        self.window(kind, target, from_ms);
        committed_during
    }

    /// Every fsync of one node fails with EIO: it must stop; healed, it must come back with
    /// what it had, or refuse.
    async fn sync_error(&mut self, hold: Duration) {
        let target = if self.rng.chance(50) {
            self.leader_or_random().await
        } else {
            self.random_node()
        };
        let before = self.node_state(target).await;
        let committed_at_start = self.highest_committed().await;
        let from_ms = self.now_ms();
        let i = self.record(
            FaultKind::SyncError,
            format!(
                "every fsync of node {target} fails (EIO) for {} ms",
                hold.as_millis()
            ),
        );
        self.shim(i, target, ShimControl::FailSync);
        let mut exit = self.hold_or_exit(target, hold).await;
        // What the node itself appended meanwhile: with every fsync failing, a node that
        // appended anything must stop (it may take a moment after its last append).
        let mut appended_during = None;
        if exit.is_none()
            && let (Some(start), Ok(end)) = (&before, self.cluster.status(target).await)
        {
            let appended = end.last_log_index.saturating_sub(start.last_log_index);
            appended_during = Some(appended);
            if appended > 0 {
                exit = self.hold_or_exit(target, SYNC_ERROR_EXIT_GRACE).await;
            }
        }
        let committed_during = self
            .end_of_hold(
                "sync-error",
                target,
                hold,
                from_ms,
                committed_at_start,
                exit.is_some(),
            )
            .await;
        self.disk.stops.push(StopFact {
            node_id: target,
            kind: "sync-error",
            must_stop: true,
            committed_during,
            appended_during,
            exit: exit.map(|s| (s.code(), s.signal())),
        });
        self.shim(i, target, ShimControl::Ok);
        match exit {
            Some(status) => {
                self.note(
                    i,
                    &format!(
                        "; it stopped ({}) after {committed_during} entries committed",
                        crate::checkers::disk::describe_exit(status.code(), status.signal())
                    ),
                );
                let before = before.unwrap_or_default();
                self.restart_and_judge(i, target, before, "failed fsyncs (EIO)".into())
                    .await;
            }
            None => self.note(
                i,
                &format!(
                    "; still running after {committed_during} entries committed, having \
                     appended {}",
                    appended_during.map_or("(unknown)".to_owned(), |n| n.to_string())
                ),
            ),
        }
        self.healed(i);
    }

    /// Every fsync of one node is slow.
    async fn slow_disk(&mut self, hold: Duration) {
        let target = self.random_node();
        let delay = self.rng.range(SLOW_SYNC_MS.0, SLOW_SYNC_MS.1);
        let from_ms = self.now_ms();
        let i = self.record(
            FaultKind::SlowDisk,
            format!(
                "every fsync of node {target} takes {delay} ms more for {} ms",
                hold.as_millis()
            ),
        );
        self.shim(i, target, ShimControl::SlowSync { ms: delay });
        tokio::time::sleep(hold).await;
        self.shim(i, target, ShimControl::Ok);
        self.window("slow-disk", target, from_ms);
        self.healed(i);
    }

    /// One node's disk (its own tmpfs) fills up: it may absorb that in preallocated space or
    /// stop, but cleanly; healed (filler removed) it must come back with what it had.
    async fn disk_full(&mut self, hold: Duration) {
        let target = self.random_node();
        let tmpfs = self.cluster.nodes.get(&target).is_some_and(|n| n.tmpfs);
        let data_dir = if tmpfs {
            self.cluster.data_dir(target)
        } else {
            None
        };
        let Some(data_dir) = data_dir else {
            let i = self.record(
                FaultKind::DiskFull,
                format!("skipped: node {target} has no tmpfs"),
            );
            self.healed(i);
            return;
        };
        let before = self.node_state(target).await;
        let committed_at_start = self.highest_committed().await;
        let from_ms = self.now_ms();
        let i = self.record(
            FaultKind::DiskFull,
            format!("fill node {target}'s disk for {} ms", hold.as_millis()),
        );
        match fill(&data_dir) {
            Ok(bytes) => self.note(i, &format!("; filler of {} MiB", bytes >> 20)),
            Err(e) => self.trouble(i, format!("fill: {e}")),
        }
        let exit = self.hold_or_exit(target, hold).await;
        let committed_during = self
            .end_of_hold(
                "disk-full",
                target,
                hold,
                from_ms,
                committed_at_start,
                exit.is_some(),
            )
            .await;
        self.disk.stops.push(StopFact {
            node_id: target,
            kind: "disk-full",
            must_stop: false,
            committed_during,
            appended_during: None,
            exit: exit.map(|s| (s.code(), s.signal())),
        });
        if let Err(e) = std::fs::remove_file(data_dir.join(FILLER_FILE)) {
            self.trouble(i, format!("remove filler: {e}"));
        }
        match exit {
            Some(status) => {
                self.note(
                    i,
                    &format!(
                        "; it stopped ({})",
                        crate::checkers::disk::describe_exit(status.code(), status.signal())
                    ),
                );
                let before = before.unwrap_or_default();
                self.restart_and_judge(i, target, before, "a full disk".into())
                    .await;
            }
            None => self.note(i, "; it kept running"),
        }
        self.healed(i);
    }
}

/// Resets every node's shim to `ok` and removes every filler (the drill's final heal).
pub fn heal_disks(cluster: &super::cluster::DrillCluster) {
    for node in cluster.nodes.values() {
        if let Some(control) = &node.shim_control
            && let Err(e) = ShimControl::Ok.write(control)
        {
            println!("   shim control of node {}: {e}", node.id);
        }
        if node.tmpfs
            && let Some(dir) = cluster.data_dir(node.id)
        {
            let _ = std::fs::remove_file(dir.join(FILLER_FILE));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_control_lines_are_the_shims_grammar() {
        assert_eq!(ShimControl::Ok.line(), "ok\n");
        assert_eq!(ShimControl::FailSync.line(), "fail-sync\n");
        assert_eq!(ShimControl::SlowSync { ms: 80 }.line(), "slow-sync 80\n");
        assert_eq!(ShimControl::EnospcWrite.line(), "enospc-write\n");
    }

    #[test]
    fn damage_flips_truncates_and_tears_where_asked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("000007.log");
        std::fs::write(&file, vec![0u8; 1000]).expect("write");
        let what = damage(dir.path(), &file, DamageKind::Flip, 500).expect("flip");
        assert!(what.contains("at 500 of 000007.log"), "{what}");
        let bytes = std::fs::read(&file).expect("read");
        assert_eq!(bytes.iter().filter(|b| **b == 0xFF).count(), 16);
        assert_eq!(bytes[500], 0xFF);
        damage(dir.path(), &file, DamageKind::TornTail, 0).expect("tear");
        assert_eq!(file_len(&file), 993);
        damage(dir.path(), &file, DamageKind::Truncate, 500).expect("truncate");
        assert_eq!(file_len(&file), 496);
    }

    #[test]
    fn targets_find_their_files_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let rocks = dir.path().join("rocksdb");
        let snaps = dir.path().join("snapshots");
        std::fs::create_dir_all(&rocks).expect("mkdir");
        std::fs::create_dir_all(snaps.join("incoming")).expect("mkdir");
        for name in [
            "000004.log",
            "000009.log",
            "000008.sst",
            "MANIFEST-000005",
            "LOG",
        ] {
            std::fs::write(rocks.join(name), b"x").expect("write");
        }
        std::fs::write(rocks.join("000010.log"), b"").expect("write");
        std::fs::write(snaps.join("snapshot-5-abcd.snap"), b"x").expect("write");
        let names = |t: DamageTarget| -> Vec<String> {
            t.files(dir.path())
                .iter()
                .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
                .collect()
        };
        // The empty newest log is not a target: there is nothing in it to damage.
        assert_eq!(names(DamageTarget::Wal), ["000004.log", "000009.log"]);
        assert_eq!(names(DamageTarget::Sst), ["000008.sst"]);
        assert_eq!(names(DamageTarget::Manifest), ["MANIFEST-000005"]);
        assert_eq!(names(DamageTarget::Snapshot), ["snapshot-5-abcd.snap"]);
    }

    #[test]
    fn the_exit_line_prefers_the_storage_damaged_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("node.log");
        std::fs::write(&log, "old run\n").expect("write");
        let from = file_len(&log);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("open");
        writeln!(f, "switchboard: storage damaged: rocksdb/000009.log at 4096; run `switchboard node reset --rejoin`").expect("write");
        writeln!(f, "goodbye").expect("write");
        assert!(exit_line(&log, from).starts_with("switchboard: storage damaged:"));
        assert_eq!(exit_line(&log, file_len(&log)), "");
    }
}
