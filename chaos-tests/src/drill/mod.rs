//! Chaos drills (being written).

/// `chaos-tests drill` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DrillArgs {}

/// Runs one drill; returns whether every checker passed.
pub async fn run(_args: DrillArgs) -> anyhow::Result<bool> {
    anyhow::bail!("drills are not written yet")
}
