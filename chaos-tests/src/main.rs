//! `chaos-tests`: measurements and drills against real `switchboard` processes.

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "chaos-tests",
    about = "Drills and measurements against real switchboard processes"
)]
enum Cli {
    /// SIGKILL the leader of a 3-node cluster and time the first successful write, N times.
    Failover {
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Extra flags for every `switchboard serve`, e.g. `--node-arg=--heartbeat-ms=50`.
        #[arg(long = "node-arg", allow_hyphen_values = true)]
        node_args: Vec<String>,
    },
    /// Benchmark Switchboard against etcd side by side on this machine.
    Bench(chaos_tests::bench::BenchArgs),
    /// Measure WatchEvents: write throughput and commit-to-delivery latency with N watchers.
    WatchBench(chaos_tests::watch_bench::WatchBenchArgs),
    /// Measure QueryEvents and EventStats latency over a large activity log (default 1M).
    QueryBench(chaos_tests::query_bench::QueryBenchArgs),
    /// Measure the node's memory while SSE clients follow the live page's feed (default 50, 5 min).
    SseBench(chaos_tests::sse_bench::SseBenchArgs),
    /// Run a chaos drill: real processes, real faults, invariant checkers.
    Drill(chaos_tests::drill::DrillArgs),
    /// Run many seeded drills in turn, rotating fault groups; table in <out>/soak.md.
    Soak(chaos_tests::soak::SoakArgs),
    /// Forward TCP routes with an added delay (the inter-region relay of the regions compose file).
    Relay(chaos_tests::relay::RelayArgs),
    /// Measure local vs linearizable reads in every region of the 5-node, 3-region compose file.
    Regions(chaos_tests::regions::RegionsArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse() {
        Cli::Failover { runs, node_args } => {
            chaos_tests::failover::measure(runs, &node_args).await?;
        }
        Cli::Bench(args) => chaos_tests::bench::run(args).await?,
        Cli::WatchBench(args) => chaos_tests::watch_bench::run(args).await?,
        Cli::QueryBench(args) => chaos_tests::query_bench::run(args).await?,
        Cli::SseBench(args) => chaos_tests::sse_bench::run(args).await?,
        Cli::Drill(args) => {
            if !chaos_tests::drill::run(args).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cli::Soak(args) => {
            if !chaos_tests::soak::run(args).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cli::Relay(args) => chaos_tests::relay::run(args).await?,
        Cli::Regions(args) => chaos_tests::regions::run(args).await?,
    }
    Ok(ExitCode::SUCCESS)
}
