//! The nemesis: one fault at a time, chosen and timed from the drill's seed, each healed before
//! the next. Process faults work on loopback and in namespaces (kill -9 and restart,
//! SIGSTOP/SIGCONT, membership changes, a restart that needs a snapshot install, delay through
//! the proxies); network faults (partitions of every shape, random loss) need namespace mode;
//! container faults (kill, pause, disconnect from the network, rolling restart) compose mode.
//! Load faults (a flood of large client reads, `read_flood.rs`) work in every mode.

mod read_flood;

use std::time::{Duration, Instant};

use client::Client;
use proto::v1;

use super::cluster::{DrillCluster, Mode};
use crate::checkers::FloodFacts;
use crate::netns::{Rule, cut};
use crate::rng::Rng;

/// Kinds of fault, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultKind {
    /// SIGKILL a random node, restart it later.
    Kill,
    /// SIGKILL the leader, restart it later.
    KillLeader,
    /// SIGSTOP a random node, SIGCONT it later.
    Pause,
    /// SIGSTOP the leader.
    PauseLeader,
    /// Cut the leader off from every other node (namespace mode).
    IsolateLeader,
    /// Split into a majority and a minority (namespace mode).
    Halves,
    /// Two sides that only one bridge node sees both of (namespace mode).
    Bridge,
    /// One node cannot call the others; they can still call it (namespace mode).
    OneWay,
    /// Random packet loss between all nodes (namespace mode).
    Loss,
    /// Delay every peer link through the proxies.
    Delay,
    /// One slow link: small throughput and some delay into one node.
    SlowLink,
    /// Remove a follower, wipe it, add it back as a learner and promote it.
    Membership,
    /// Kill a follower, snapshot and purge the log on the leader, restart the follower.
    Snapshot,
    /// Disconnect a container (the leader's half the time) from every network (compose mode).
    Disconnect,
    /// Restart every container in turn, each healthy before the next (compose mode).
    RollingRestart,
    /// Flood every node with large client reads for the hold time.
    ReadFlood,
    /// Kill a node, flip bits in or truncate one of its files (WAL, SST, MANIFEST, snapshot),
    /// restart it: it must refuse (exit 74) and is rejoined, or serve all it had committed.
    DiskDamage,
    /// Fill one node's disk (a tmpfs per node; root, not compose).
    DiskFull,
    /// Make every fsync of one node fail with EIO (fault shim): it must stop.
    SyncError,
    /// Make every fsync of one node slow (fault shim).
    SlowDisk,
    /// A node's wall clock (the leader's, mostly) minutes ahead or behind; the leader is killed
    /// halfway so that leadership moves (libfaketime; not in compose mode).
    ClockSkew,
    /// The leader's wall clock jumps back by minutes, then forward past real time.
    ClockJump,
}

/// Families of faults: `chaos-tests soak` gives each run one family, in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultGroup {
    /// Processes killed, paused, restarted.
    Process,
    /// Partitions, loss, delay, slow links.
    Network,
    /// Membership changes and snapshot installs.
    Membership,
    /// Damaged, full, failing or slow disks.
    Disk,
    /// Skewed and jumping wall clocks.
    Clock,
    /// More load than the cluster can serve.
    Overload,
}

impl FaultGroup {
    pub fn name(self) -> &'static str {
        match self {
            FaultGroup::Process => "process",
            FaultGroup::Network => "network",
            FaultGroup::Membership => "membership",
            FaultGroup::Disk => "disk",
            FaultGroup::Clock => "clock",
            FaultGroup::Overload => "overload",
        }
    }
}

impl FaultKind {
    /// Whether the fault can be injected in `mode`.
    pub fn supported(self, mode: Mode) -> bool {
        use FaultKind::*;
        match self {
            Kill | KillLeader | Pause | PauseLeader | Snapshot => true,
            IsolateLeader | Halves | Bridge | OneWay | Loss => mode == Mode::Netns,
            Delay | SlowLink | Membership => mode != Mode::Compose,
            Disconnect | RollingRestart => mode == Mode::Compose,
            ReadFlood => true,
            // They reach into data directories and preload a shim: processes only.
            DiskDamage | SyncError | SlowDisk => mode != Mode::Compose,
            DiskFull => mode != Mode::Compose && super::disk::is_root(),
            ClockSkew | ClockJump => mode != Mode::Compose,
        }
    }

    /// Disk faults run only when asked for (`--faults`): they need the fault shim built, and
    /// adding them to the defaults would change every seed's schedule.
    pub fn opt_in(self) -> bool {
        use FaultKind::*;
        matches!(self, DiskDamage | DiskFull | SyncError | SlowDisk)
    }

    /// Whether the nodes must run with the fault shim preloaded.
    pub fn needs_shim(self) -> bool {
        matches!(self, FaultKind::SyncError | FaultKind::SlowDisk)
    }

    /// The family the fault belongs to.
    pub fn group(self) -> FaultGroup {
        use FaultKind::*;
        match self {
            Kill | KillLeader | Pause | PauseLeader | RollingRestart => FaultGroup::Process,
            IsolateLeader | Halves | Bridge | OneWay | Loss | Delay | SlowLink | Disconnect => {
                FaultGroup::Network
            }
            Membership | Snapshot => FaultGroup::Membership,
            ClockSkew | ClockJump => FaultGroup::Clock,
            DiskDamage | DiskFull | SyncError | SlowDisk => FaultGroup::Disk,
            ReadFlood => FaultGroup::Overload,
        }
    }

    /// Whether the fault changes a node's wall clock (the nodes then run under libfaketime).
    pub fn is_clock(self) -> bool {
        self.group() == FaultGroup::Clock
    }

    /// The name on the command line (`kill-leader`).
    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }

    pub fn all() -> Vec<FaultKind> {
        <Self as clap::ValueEnum>::value_variants().to_vec()
    }

    /// The faults a mode can inject.
    pub fn defaults(mode: Mode) -> Vec<FaultKind> {
        Self::all()
            .into_iter()
            .filter(|f| f.supported(mode) && !f.opt_in())
            .collect()
    }
}

/// One injected fault, for the report.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub kind: FaultKind,
    pub at_ms: u64,
    pub healed_ms: Option<u64>,
    pub what: String,
    /// Problems while injecting or healing (not violations: the drill goes on).
    pub trouble: Vec<String>,
}

/// Timing of the nemesis.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub quiet_ms: (u64, u64),
    pub hold_ms: (u64, u64),
}

pub struct Nemesis<'a> {
    pub cluster: &'a mut DrillCluster,
    pub rng: Rng,
    pub faults: Vec<FaultKind>,
    pub timing: Timing,
    pub started: Instant,
    pub records: Vec<FaultRecord>,
    /// What each read flood saw, for the checkers.
    pub floods: Vec<FloodFacts>,
    /// What disk faults observed, for `checkers::disk`.
    pub disk: crate::checkers::disk::DiskFacts,
    pub(super) admin: Client,
}

impl std::fmt::Debug for Nemesis<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nemesis")
            .field("faults", &self.faults)
            .finish()
    }
}

/// A restarted container must pass its health check within this.
const ROLLING_HEALTHY_WAIT: Duration = Duration::from_secs(60);

fn ms_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl<'a> Nemesis<'a> {
    pub fn new(
        cluster: &'a mut DrillCluster,
        rng: Rng,
        faults: Vec<FaultKind>,
        timing: Timing,
        started: Instant,
    ) -> anyhow::Result<Self> {
        let admin = super::workload::write_client(&cluster.reach())?;
        Ok(Self {
            cluster,
            rng,
            faults,
            timing,
            started,
            records: Vec::new(),
            floods: Vec::new(),
            disk: Default::default(),
            admin,
        })
    }

    /// Injects faults until `until` (measured from `started`).
    pub async fn run(&mut self, until: Duration) {
        let faults = self.faults.clone();
        // Bounded: every round sleeps at least the minimum quiet time.
        for _ in 0..100_000 {
            let quiet = Duration::from_millis(
                self.rng
                    .range(self.timing.quiet_ms.0, self.timing.quiet_ms.1),
            );
            if self.started.elapsed() + quiet >= until {
                break;
            }
            tokio::time::sleep(quiet).await;
            let Some(kind) = self.rng.pick(&faults).copied() else {
                break;
            };
            let remaining = until.saturating_sub(self.started.elapsed());
            let hold =
                Duration::from_millis(self.rng.range(self.timing.hold_ms.0, self.timing.hold_ms.1))
                    .min(remaining);
            self.inject(kind, hold).await;
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        ms_since(self.started)
    }

    /// Appends to a fault's description (what a disk fault found).
    pub(super) fn note(&mut self, index: usize, more: &str) {
        println!(
            "  [{:>6} ms]   {}",
            ms_since(self.started),
            more.trim_start_matches("; ")
        );
        if let Some(r) = self.records.get_mut(index) {
            r.what.push_str(more);
        }
    }

    pub(super) fn record(&mut self, kind: FaultKind, what: String) -> usize {
        println!(
            "  [{:>6} ms] fault {kind:?}: {what}",
            ms_since(self.started)
        );
        self.records.push(FaultRecord {
            kind,
            at_ms: ms_since(self.started),
            healed_ms: None,
            what,
            trouble: Vec::new(),
        });
        self.records.len() - 1
    }

    pub(super) fn healed(&mut self, index: usize) {
        if let Some(r) = self.records.get_mut(index) {
            r.healed_ms = Some(ms_since(self.started));
        }
    }

    pub(super) fn trouble(&mut self, index: usize, what: String) {
        println!("  [{:>6} ms] trouble: {what}", ms_since(self.started));
        if let Some(r) = self.records.get_mut(index) {
            r.trouble.push(what);
        }
    }

    pub(super) fn random_node(&mut self) -> u64 {
        let ids = self.cluster.ids();
        self.rng.pick(&ids).copied().unwrap_or(1)
    }

    pub(super) async fn leader_or_random(&mut self) -> u64 {
        match self.cluster.leader().await {
            Some(leader) => leader,
            None => self.random_node(),
        }
    }

    async fn inject(&mut self, kind: FaultKind, hold: Duration) {
        match kind {
            FaultKind::Kill | FaultKind::KillLeader => {
                let target = if kind == FaultKind::Kill {
                    self.random_node()
                } else {
                    self.leader_or_random().await
                };
                let i = self.record(
                    kind,
                    format!(
                        "kill -9 node {target}, restart after {} ms",
                        hold.as_millis()
                    ),
                );
                if let Err(e) = self.cluster.kill(target).await {
                    self.trouble(i, format!("kill: {e}"));
                }
                tokio::time::sleep(hold).await;
                if let Err(e) = self.cluster.restart(target).await {
                    self.trouble(i, format!("restart: {e}"));
                }
                self.healed(i);
            }
            FaultKind::Pause | FaultKind::PauseLeader => {
                let target = if kind == FaultKind::Pause {
                    self.random_node()
                } else {
                    self.leader_or_random().await
                };
                let how = if self.cluster.mode == Mode::Compose {
                    "docker pause"
                } else {
                    "SIGSTOP"
                };
                let i = self.record(
                    kind,
                    format!("{how} node {target} for {} ms", hold.as_millis()),
                );
                if let Err(e) = self.cluster.pause(target).await {
                    self.trouble(i, format!("pause: {e}"));
                }
                tokio::time::sleep(hold).await;
                if let Err(e) = self.cluster.resume(target).await {
                    self.trouble(i, format!("resume: {e}"));
                }
                self.healed(i);
            }
            FaultKind::IsolateLeader
            | FaultKind::Halves
            | FaultKind::Bridge
            | FaultKind::OneWay
            | FaultKind::Loss => {
                let (what, rules) = self.network_rules(kind).await;
                let i = self.record(kind, format!("{what} for {} ms", hold.as_millis()));
                self.net_fault(i, &rules, hold).await;
            }
            FaultKind::Delay => {
                let delay = self.rng.range(20, 250);
                let i = self.record(
                    kind,
                    format!(
                        "delay every peer link by {delay} ms for {} ms",
                        hold.as_millis()
                    ),
                );
                for node in self.cluster.nodes.values() {
                    if let Some(p) = &node.proxy {
                        p.shape.set(delay, 0);
                    }
                }
                tokio::time::sleep(hold).await;
                self.clear_shapes();
                self.healed(i);
            }
            FaultKind::SlowLink => {
                let target = self.random_node();
                let bps = self.rng.range(8, 64) * 1024;
                let i = self.record(
                    kind,
                    format!(
                        "slow link into node {target}: {} KiB/s, 30 ms, for {} ms",
                        bps / 1024,
                        hold.as_millis()
                    ),
                );
                if let Some(p) = self
                    .cluster
                    .nodes
                    .get(&target)
                    .and_then(|n| n.proxy.as_ref())
                {
                    p.shape.set(30, bps);
                }
                tokio::time::sleep(hold).await;
                self.clear_shapes();
                self.healed(i);
            }
            FaultKind::Membership => self.membership(hold).await,
            FaultKind::Snapshot => self.snapshot_restart(hold).await,
            FaultKind::Disconnect => {
                let target = if self.rng.chance(50) {
                    self.leader_or_random().await
                } else {
                    self.random_node()
                };
                let i = self.record(
                    kind,
                    format!(
                        "disconnect node {target}'s container from its networks for {} ms",
                        hold.as_millis()
                    ),
                );
                if let Err(e) = self.cluster.disconnect(target).await {
                    self.trouble(i, format!("disconnect: {e}"));
                }
                tokio::time::sleep(hold).await;
                if let Err(e) = self.cluster.reconnect(target).await {
                    self.trouble(i, format!("reconnect: {e}"));
                }
                self.healed(i);
            }
            FaultKind::RollingRestart => self.rolling_restart().await,
            FaultKind::ReadFlood => self.read_flood(hold).await,
            FaultKind::DiskDamage
            | FaultKind::DiskFull
            | FaultKind::SyncError
            | FaultKind::SlowDisk => self.disk_fault(kind, hold).await,
            FaultKind::ClockSkew => self.clock_skew(hold).await,
            FaultKind::ClockJump => self.clock_jump(hold).await,
        }
    }

    /// Restarts every node in turn (SIGTERM, start), each healthy before the next; the leader
    /// goes last, as an operator's upgrade would do it.
    async fn rolling_restart(&mut self) {
        let leader = self.cluster.leader().await;
        let mut order: Vec<u64> = self
            .cluster
            .ids()
            .into_iter()
            .filter(|id| Some(*id) != leader)
            .collect();
        order.extend(leader);
        let i = self.record(
            FaultKind::RollingRestart,
            format!("restart every container in turn: {order:?}"),
        );
        for id in order {
            if let Err(e) = self
                .cluster
                .restart_gracefully(id, ROLLING_HEALTHY_WAIT)
                .await
            {
                self.trouble(i, format!("node {id}: {e}"));
            }
        }
        self.healed(i);
    }

    fn clear_shapes(&self) {
        for node in self.cluster.nodes.values() {
            if let Some(p) = &node.proxy {
                p.shape.clear();
            }
        }
    }

    async fn network_rules(&mut self, kind: FaultKind) -> (String, Vec<Rule>) {
        let mut ids = self.cluster.ids();
        // Seeded shuffle.
        for i in (1..ids.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            ids.swap(i, j);
        }
        match kind {
            FaultKind::IsolateLeader => {
                let leader = self.leader_or_random().await;
                let others: Vec<u64> = ids.iter().copied().filter(|id| *id != leader).collect();
                (
                    format!("isolate leader {leader} from {others:?}"),
                    cut(&[leader], &others),
                )
            }
            FaultKind::Halves => {
                let minority = (ids.len() - 1) / 2;
                let (a, b) = ids.split_at(minority.max(1));
                (format!("partition {a:?} | {b:?}"), cut(a, b))
            }
            FaultKind::Bridge => {
                let bridge = ids[0];
                let rest = &ids[1..];
                let (a, b) = rest.split_at(rest.len() / 2);
                (
                    format!("bridge partition {a:?} | {b:?}, node {bridge} sees both"),
                    cut(a, b),
                )
            }
            FaultKind::OneWay => {
                let from = if self.rng.chance(50) {
                    self.leader_or_random().await
                } else {
                    ids[0]
                };
                let rules = ids
                    .iter()
                    .filter(|id| **id != from)
                    .map(|at| Rule::DropRequestsFrom { at: *at, from })
                    .collect();
                (
                    format!("one-way: node {from} cannot call the others, they can call it"),
                    rules,
                )
            }
            _ => {
                let percent = self.rng.range(5, 35);
                let mut rules = Vec::new();
                for at in &ids {
                    for from in &ids {
                        if at != from {
                            rules.push(Rule::LoseFrom {
                                at: *at,
                                from: *from,
                                percent,
                            });
                        }
                    }
                }
                (
                    format!("{percent}% random packet loss on every peer link"),
                    rules,
                )
            }
        }
    }

    async fn net_fault(&mut self, i: usize, rules: &[Rule], hold: Duration) {
        let Some(net) = self.cluster.net.as_ref() else {
            self.trouble(i, "network faults need --mode netns".into());
            return;
        };
        let applied = net.apply(rules);
        if let Err(e) = applied {
            self.trouble(i, format!("nft: {e}"));
        }
        tokio::time::sleep(hold).await;
        let healed = self.cluster.net.as_ref().map(|n| n.heal());
        if let Some(Err(e)) = healed {
            self.trouble(i, format!("heal: {e}"));
        }
        self.healed(i);
    }

    async fn follower(&mut self) -> Option<(u64, u64)> {
        let leader = self.cluster.leader().await?;
        let followers: Vec<u64> = self
            .cluster
            .ids()
            .into_iter()
            .filter(|id| *id != leader)
            .collect();
        let follower = *self.rng.pick(&followers)?;
        Some((leader, follower))
    }

    /// Remove a follower, wipe it, start it fresh, add it as a learner, promote it.
    async fn membership(&mut self, hold: Duration) {
        let Some((leader, target)) = self.follower().await else {
            let i = self.record(FaultKind::Membership, "skipped: no leader".into());
            self.healed(i);
            return;
        };
        let i = self.record(
            FaultKind::Membership,
            format!("remove node {target} (leader {leader}), wipe it, re-add as learner, promote"),
        );
        if let Err(e) = self
            .admin
            .remove(v1::RemoveRequest {
                node_ids: vec![target],
            })
            .await
        {
            self.trouble(i, format!("remove: {e}"));
            self.healed(i);
            return;
        }
        if let Err(e) = self.cluster.wipe_and_start_fresh(target).await {
            self.trouble(i, format!("wipe and restart: {e}"));
        }
        tokio::time::sleep(hold).await;
        if let Err(e) = readd(self.cluster, &self.admin, target).await {
            self.trouble(i, format!("re-add: {e}"));
        }
        self.healed(i);
    }

    /// Kill a follower, make the leader snapshot and purge, restart the follower.
    async fn snapshot_restart(&mut self, hold: Duration) {
        let Some((leader, target)) = self.follower().await else {
            let i = self.record(FaultKind::Snapshot, "skipped: no leader".into());
            self.healed(i);
            return;
        };
        let i = self.record(
            FaultKind::Snapshot,
            format!(
                "kill node {target}, snapshot on leader {leader}, restart {target} after {} ms",
                hold.as_millis()
            ),
        );
        if let Err(e) = self.cluster.kill(target).await {
            self.trouble(i, format!("kill: {e}"));
        }
        tokio::time::sleep(hold).await;
        let mut leader_snapshot = 0;
        if let Some(client) = self.cluster.client_of(leader) {
            match client.trigger_snapshot(v1::TriggerSnapshotRequest {}).await {
                Ok(r) => leader_snapshot = r.snapshot_index,
                Err(e) => self.trouble(i, format!("trigger snapshot: {e}")),
            }
        }
        if let Err(e) = self.cluster.restart(target).await {
            self.trouble(i, format!("restart: {e}"));
        }
        // Note whether it caught up by installing the leader's snapshot (bounded wait).
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = 0;
        while Instant::now() < deadline && leader_snapshot > 0 {
            if let Ok(status) = self.cluster.status(target).await {
                seen = status.snapshot_index;
                if seen >= leader_snapshot {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let outcome = if leader_snapshot > 0 && seen >= leader_snapshot {
            format!(
                "; leader snapshot at {leader_snapshot}, node {target} now has snapshot {seen} (installed)"
            )
        } else {
            format!(
                "; leader snapshot at {leader_snapshot}, node {target} has snapshot {seen} (caught up from the log)"
            )
        };
        if let Some(rec) = self.records.get_mut(i) {
            rec.what.push_str(&outcome);
        }
        self.healed(i);
    }
}

/// Adds `target` back as a learner and promotes it (bounded waits).
pub async fn readd(cluster: &DrillCluster, admin: &Client, target: u64) -> anyhow::Result<()> {
    let addr = cluster
        .nodes
        .get(&target)
        .map(|n| n.advertise.clone())
        .ok_or_else(|| anyhow::anyhow!("no node {target}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        match admin
            .add_learner(v1::AddLearnerRequest {
                node_id: target,
                addr: addr.clone(),
                region: String::new(),
            })
            .await
        {
            Ok(_) => break,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    while Instant::now() < deadline {
        match admin
            .promote(v1::PromoteRequest {
                node_ids: vec![target],
            })
            .await
        {
            Ok(r) if r.members.iter().any(|m| m.node_id == target && m.voter) => return Ok(()),
            Ok(_) => last = "not a voter after promote".into(),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("node {target} not promoted within 20 s: {last}")
}
