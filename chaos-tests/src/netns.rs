//! Hosts in network namespaces joined by a bridge, and network faults made with nftables rules
//! inside them (MACHINE-NOTES: no netem on this kernel; delay lives in [`crate::proxy`]).
//!
//! Host `i` is namespace `sbc<pid>h<i>` with `eth0` = `10.77.0.<i>/24`, its veth peer on bridge
//! `sbc<pid>b` = `10.77.0.254`, where the drill itself runs. Every namespace gets table
//! `inet chaos` with an input chain; faults add rules to it and healing flushes it.
//! Only one namespace drill runs at a time (a lock file), so every `sbc*` namespace or link
//! found at start is a leftover of an interrupted run and is removed. [`Net`] removes what it
//! created when dropped, also on panic; the nodes die with the drill (`--exit-with-parent`).

use std::fs::File;
use std::process::{Command, Stdio};

use anyhow::Context as _;

/// Names of everything this module creates start with this.
pub const NAME_PREFIX: &str = "sbc";
/// The first three octets of the hosts' subnet.
pub const SUBNET: &str = "10.77.0";
/// The bridge's address: where the drill's clients and proxies connect from.
pub const BRIDGE_IP: &str = "10.77.0.254";
/// Held while a namespace drill runs.
pub const LOCK_FILE: &str = "/run/switchboard-chaos.lock";
/// How long a namespace drill waits for another one to finish.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(15 * 60);
const LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(250);
/// Hosts allowed (addresses `.1` to `.HOSTS_MAX`).
pub const HOSTS_MAX: u64 = 32;
/// Ports on which peers reach a node (gRPC and its delay proxy): one-way partitions drop new
/// requests to them and let answers through.
pub const SERVER_PORTS: &str = "{ 7100, 7200 }";

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if stdin.is_some() {
        command.stdin(Stdio::piped());
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("failed to run {program} (install iproute2 and nftables)"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write as _;
        pipe.write_all(text.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        anyhow::bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether this machine can run namespace drills; the error says what is missing.
pub fn preflight() -> anyhow::Result<()> {
    if run("id", &["-u"], None)
        .map(|s| s.trim() != "0")
        .unwrap_or(true)
    {
        anyhow::bail!("namespace mode needs root (use --mode loopback for process faults only)");
    }
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        if run(tool, &["-V"], None).is_err() {
            anyhow::bail!(
                "{tool} is missing: run `scripts/ensure-system-deps iproute2 nftables` (or apt-get install -y {package})"
            );
        }
    }
    Ok(())
}

/// A network fault, as nftables rules in one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Host `at` drops every packet from host `from`.
    DropFrom { at: u64, from: u64 },
    /// Host `at` drops `from`'s packets to its server ports: `from` cannot call `at`, while
    /// `at` can still call `from` and get answers (a one-way partition).
    DropRequestsFrom { at: u64, from: u64 },
    /// Host `at` drops `percent`% of the packets from host `from`, at random.
    LoseFrom { at: u64, from: u64, percent: u64 },
}

impl Rule {
    fn host(self) -> u64 {
        match self {
            Rule::DropFrom { at, .. }
            | Rule::DropRequestsFrom { at, .. }
            | Rule::LoseFrom { at, .. } => at,
        }
    }

    fn nft(self) -> String {
        match self {
            Rule::DropFrom { from, .. } => format!("ip saddr {SUBNET}.{from} drop"),
            Rule::DropRequestsFrom { from, .. } => {
                format!("ip saddr {SUBNET}.{from} tcp dport {SERVER_PORTS} drop")
            }
            Rule::LoseFrom { from, percent, .. } => {
                format!("ip saddr {SUBNET}.{from} numgen random mod 100 < {percent} drop")
            }
        }
    }
}

/// The rules that cut `a` from `b` both ways.
pub fn cut(a: &[u64], b: &[u64]) -> Vec<Rule> {
    let mut rules = Vec::new();
    for x in a {
        for y in b {
            rules.push(Rule::DropFrom { at: *x, from: *y });
            rules.push(Rule::DropFrom { at: *y, from: *x });
        }
    }
    rules
}

/// The bridge and the hosts of one drill.
#[derive(Debug)]
pub struct Net {
    prefix: String,
    hosts: Vec<u64>,
    bridge_up: bool,
    _lock: File,
}

impl Net {
    /// Takes the lock, removes leftovers, creates the bridge and hosts `ids`.
    pub fn create(ids: &[u64]) -> anyhow::Result<Self> {
        preflight()?;
        let lock =
            File::create(LOCK_FILE).with_context(|| format!("failed to open {LOCK_FILE}"))?;
        // Namespace drills share the host's addresses and names: one at a time. Another one
        // (a soak, CI) is waited for, up to a bound, rather than failed.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let mut said = false;
        while lock.try_lock().is_err() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "another namespace drill has held {LOCK_FILE} for {LOCK_WAIT:?}; run one at a time"
            );
            if !said {
                println!("   waiting for another namespace drill to release {LOCK_FILE}");
                said = true;
            }
            std::thread::sleep(LOCK_POLL);
        }
        sweep_leftovers();
        let mut net = Self {
            prefix: format!("{NAME_PREFIX}{}", std::process::id()),
            hosts: Vec::new(),
            bridge_up: false,
            _lock: lock,
        };
        let bridge = net.bridge();
        run("ip", &["link", "add", &bridge, "type", "bridge"], None)?;
        net.bridge_up = true;
        run(
            "ip",
            &["addr", "add", &format!("{BRIDGE_IP}/24"), "dev", &bridge],
            None,
        )?;
        run("ip", &["link", "set", &bridge, "up"], None)?;
        allow_bridge_forwarding(&bridge);
        for id in ids {
            net.add_host(*id)?;
        }
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("{}b", self.prefix)
    }

    /// The namespace of host `id`.
    pub fn ns(&self, id: u64) -> String {
        format!("{}h{id}", self.prefix)
    }

    /// The address of host `id`.
    pub fn ip(id: u64) -> String {
        format!("{SUBNET}.{id}")
    }

    /// Path of host `id`'s namespace handle, for `setns`.
    pub fn ns_path(&self, id: u64) -> String {
        format!("/var/run/netns/{}", self.ns(id))
    }

    /// Creates host `id`: namespace, veth on the bridge, address, loopback, nftables table.
    pub fn add_host(&mut self, id: u64) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=HOSTS_MAX).contains(&id),
            "host id {id} out of 1..={HOSTS_MAX}"
        );
        if self.hosts.contains(&id) {
            return Ok(());
        }
        let ns = self.ns(id);
        let veth = format!("{}v{id}", self.prefix);
        run("ip", &["netns", "add", &ns], None)?;
        self.hosts.push(id);
        run(
            "ip",
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
            None,
        )?;
        run(
            "ip",
            &["link", "set", &veth, "master", &self.bridge(), "up"],
            None,
        )?;
        let ip = format!("{}/24", Self::ip(id));
        run("ip", &["-n", &ns, "addr", "add", &ip, "dev", "eth0"], None)?;
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"], None)?;
        run("ip", &["-n", &ns, "link", "set", "lo", "up"], None)?;
        run(
            "ip",
            &["netns", "exec", &ns, "nft", "-f", "-"],
            Some(
                "table inet chaos {\n  chain in { type filter hook input priority 0; policy accept; }\n}\n",
            ),
        )?;
        Ok(())
    }

    /// A command that runs `program` inside host `id`.
    pub fn command(&self, id: u64, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns(id)]).arg(program);
        command
    }

    /// Adds `rules` (one nft batch per host).
    pub fn apply(&self, rules: &[Rule]) -> anyhow::Result<()> {
        for host in &self.hosts {
            let script: String = rules
                .iter()
                .filter(|r| r.host() == *host)
                .map(|r| format!("add rule inet chaos in {}\n", r.nft()))
                .collect();
            if !script.is_empty() {
                run(
                    "ip",
                    &["netns", "exec", &self.ns(*host), "nft", "-f", "-"],
                    Some(&script),
                )?;
            }
        }
        Ok(())
    }

    /// Removes every fault rule from every host.
    pub fn heal(&self) -> anyhow::Result<()> {
        for host in &self.hosts {
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.ns(*host),
                    "nft",
                    "flush",
                    "chain",
                    "inet",
                    "chaos",
                    "in",
                ],
                None,
            )?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for host in &self.hosts {
            let ns = self.ns(*host);
            kill_pids_in(&ns);
            let _ = run("ip", &["netns", "del", &ns], None);
        }
        if self.bridge_up {
            forget_bridge_forwarding(&self.bridge());
            let _ = run("ip", &["link", "del", &self.bridge()], None);
        }
    }
}

fn kill_pids_in(ns: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", ns], None) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// With `br_netfilter` loaded, bridged frames cross the host's iptables FORWARD chain, whose
/// policy is DROP where Docker runs: host-to-host traffic on our bridge would vanish. One
/// ACCEPT rule for frames that stay on our bridge fixes that, and is removed with the bridge.
fn allow_bridge_forwarding(bridge: &str) {
    if run("iptables", &["-S", "FORWARD"], None).is_ok() {
        let _ = run(
            "iptables",
            &[
                "-I", "FORWARD", "1", "-i", bridge, "-o", bridge, "-j", "ACCEPT",
            ],
            None,
        );
    }
}

fn forget_bridge_forwarding(bridge: &str) {
    // Bounded: one rule was added per bridge; a few more attempts cover repeats.
    for _ in 0..4 {
        if run(
            "iptables",
            &["-D", "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"],
            None,
        )
        .is_err()
        {
            break;
        }
    }
}

/// Removes namespaces and links named `sbc*` left by an interrupted drill. Called with the lock
/// held, so none of them belongs to a running drill.
pub fn sweep_leftovers() {
    if let Ok(list) = run("ip", &["netns", "list"], None) {
        for name in list
            .split_whitespace()
            .filter(|n| n.starts_with(NAME_PREFIX))
        {
            kill_pids_in(name);
            let _ = run("ip", &["netns", "del", name], None);
        }
    }
    if let Ok(links) = run("ip", &["-o", "link", "show"], None) {
        for line in links.lines() {
            let Some(name) = line.split(": ").nth(1) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            if name.starts_with(NAME_PREFIX) {
                forget_bridge_forwarding(name);
                let _ = run("ip", &["link", "del", name], None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_render_as_nft() {
        assert_eq!(
            Rule::DropFrom { at: 1, from: 2 }.nft(),
            "ip saddr 10.77.0.2 drop"
        );
        assert_eq!(
            Rule::LoseFrom {
                at: 1,
                from: 3,
                percent: 20
            }
            .nft(),
            "ip saddr 10.77.0.3 numgen random mod 100 < 20 drop"
        );
        assert!(
            Rule::DropRequestsFrom { at: 1, from: 2 }
                .nft()
                .contains("tcp dport")
        );
        assert_eq!(cut(&[1], &[2, 3]).len(), 4);
    }
}
