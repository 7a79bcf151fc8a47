//! Drills against real node processes (workload, nemesis, invariant checkers), the load
//! generator and the etcd baseline, and the benches of failover, watches, queries and the live
//! page's event stream.

pub mod bench;
pub mod checkers;
pub mod compose;
pub mod drill;
pub mod failover;
pub mod history;
pub mod netns;
pub mod proxy;
pub mod query_bench;
pub mod regions;
pub mod relay;
pub mod rng;
pub mod soak;
pub mod sse_bench;
pub mod watch_bench;

use std::path::PathBuf;

/// The `switchboard` binary: `$SWITCHBOARD_BIN`, or the one built next to this program.
pub fn switchboard_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SWITCHBOARD_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no directory for {}", exe.display()))?;
    for candidate in [dir.join("switchboard"), dir.join("../switchboard")] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "no switchboard binary next to {}: build it (cargo build --release -p node) or set SWITCHBOARD_BIN",
        exe.display()
    )
}
