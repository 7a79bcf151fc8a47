//! `chaos-tests soak`: many seeded drills one after another, each a child process of this same
//! binary (`chaos-tests drill --seed S --faults ...`), so that one drill's leftovers (threads,
//! sockets, a wedged runtime) never leak into the next and each can be replayed alone.
//!
//! Runs rotate through the fault groups (`FaultKind::group`) of every kind the mode supports,
//! then one run with every kind at once, and start again; a new kind joins the rotation by
//! being in `FaultKind::all()`. Each drill reports through `--summary-json`; the soak writes a
//! Markdown table (`soak.md`) and JSON lines (`soak.jsonl`) to its output directory after every
//! run, prints totals, and fails when any drill failed, printing each failed seed's replay
//! command. It never touches anything but its output directory and its own children.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::drill::cluster::Mode;
use crate::drill::nemesis::{FaultGroup, FaultKind};
use crate::drill::{DrillSummary, clock, mode_name};

/// A drill may take this much longer than its safety phase (start, leader wait, stopping
/// clients, healing, liveness and convergence waits, reading every log) before the soak kills
/// it and counts it failed.
const DRILL_OVERHEAD_MAX: Duration = Duration::from_secs(8 * 60);
/// Most runs one soak does.
const RUNS_MAX: u32 = 100_000;

/// `chaos-tests soak` options.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Number of drills.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=i64::from(RUNS_MAX)))]
    pub runs: u32,
    /// Safety phase of each drill, e.g. 20s.
    #[arg(long, default_value = "20s", value_parser = harness::parse_duration)]
    pub duration: Duration,
    /// Seed of the first drill; the others follow one by one.
    #[arg(long, default_value_t = 1000)]
    pub first_seed: u64,
    /// Nodes per drill (3 or 5).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=5))]
    pub nodes: u64,
    /// Concurrent workload clients per drill.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub clients: u32,
    /// Where nodes run (loopback or netns); default: netns when root with ip and nft.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Output directory: soak.md, soak.jsonl, one log per drill (default
    /// <tmp>/switchboard-soak-<first seed>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One entry of the rotation.
#[derive(Debug, Clone)]
struct Plan {
    label: String,
    faults: Vec<FaultKind>,
}

/// Every kind the soak injects in `mode`: the defaults and the opt-in ones (disk faults).
fn soaked_kinds(mode: Mode) -> Vec<FaultKind> {
    FaultKind::all()
        .into_iter()
        .filter(|f| f.supported(mode))
        .collect()
}

/// The rotation: one entry per fault group the mode supports, then every kind at once.
fn rotation(mode: Mode) -> Vec<Plan> {
    let kinds = soaked_kinds(mode);
    let mut groups: BTreeMap<FaultGroup, Vec<FaultKind>> = BTreeMap::new();
    for kind in &kinds {
        groups.entry(kind.group()).or_default().push(*kind);
    }
    let mut plans: Vec<Plan> = groups
        .into_iter()
        .map(|(group, faults)| Plan {
            label: group.name().to_owned(),
            faults,
        })
        .collect();
    if plans.len() > 1 {
        plans.push(Plan {
            label: "all".to_owned(),
            faults: kinds,
        });
    }
    plans
}

/// One drill's line in the soak's results.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    pub seed: u64,
    pub group: String,
    pub faults: Vec<String>,
    pub pass: bool,
    /// Exit code of the drill (`None`: killed by a signal or by the soak's timeout).
    pub exit_code: Option<i32>,
    pub wall_ms: u64,
    /// Why the run failed without a summary (did not start, timed out, crashed).
    pub error: Option<String>,
    pub log: String,
    pub summary: Option<DrillSummary>,
}

impl RunRecord {
    fn replay(&self, args: &SoakArgs, mode: Mode) -> String {
        match &self.summary {
            Some(summary) => summary.replay.clone(),
            None => format!(
                "CHAOS_SEED={} cargo run -p chaos-tests --release -- drill --duration {}s --nodes {} --clients {} --mode {} --faults {}",
                self.seed,
                args.duration.as_secs(),
                args.nodes,
                args.clients,
                mode_name(mode),
                self.faults.join(",")
            ),
        }
    }
}

/// Runs the soak; returns whether every drill passed.
pub async fn run(args: SoakArgs) -> anyhow::Result<bool> {
    let mode = match args.mode {
        Some(Mode::Compose) => {
            anyhow::bail!("soak runs process clusters: use --mode loopback or --mode netns")
        }
        Some(mode) => mode,
        None if crate::netns::preflight().is_ok() => Mode::Netns,
        None => Mode::Loopback,
    };
    let plans = rotation(mode);
    if plans.iter().flat_map(|p| &p.faults).any(|f| f.is_clock())
        && clock::find_libfaketime().is_none()
    {
        anyhow::bail!("{}", clock::missing_libfaketime());
    }
    let out = args.out.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("switchboard-soak-{}", args.first_seed))
    });
    std::fs::create_dir_all(&out)
        .map_err(|e| anyhow::anyhow!("failed to create {}: {e}", out.display()))?;
    let exe = std::env::current_exe()?;
    println!(
        "== switchboard soak: {} drills of {:?}, seeds {}.., mode {}, {} nodes; results in {}",
        args.runs,
        args.duration,
        args.first_seed,
        mode_name(mode),
        args.nodes,
        out.display()
    );
    for plan in &plans {
        let names: Vec<String> = plan.faults.iter().map(|f| f.name()).collect();
        println!("   rotation {}: {}", plan.label, names.join(","));
    }
    let started = Instant::now();
    let mut records: Vec<RunRecord> = Vec::new();
    for n in 0..args.runs {
        let seed = args.first_seed + u64::from(n);
        let plan = &plans[n as usize % plans.len()];
        let record = tokio::select! {
            record = run_one(&exe, &args, mode, &out, seed, plan) => record,
            _ = tokio::signal::ctrl_c() => {
                println!("interrupted after {} drills", records.len());
                break;
            }
        };
        println!(
            "[{}/{}] seed {seed} {:<10} {} in {:.1} s{}",
            n + 1,
            args.runs,
            plan.label,
            if record.pass { "PASS" } else { "FAIL" },
            record.wall_ms as f64 / 1000.0,
            record
                .error
                .as_ref()
                .map_or_else(String::new, |e| format!(" ({e})"))
        );
        records.push(record);
        write_results(&out, &records)?;
    }
    let failed: Vec<&RunRecord> = records.iter().filter(|r| !r.pass).collect();
    let ops: [usize; 3] =
        records
            .iter()
            .filter_map(|r| r.summary.as_ref())
            .fold([0; 3], |acc, s| {
                [
                    acc[0] + s.ops_ok,
                    acc[1] + s.ops_fail,
                    acc[2] + s.ops_unknown,
                ]
            });
    println!();
    println!(
        "== soak: {} drills, {} passed, {} failed; operations ok {}, fail {}, unknown {}; {:.0} s",
        records.len(),
        records.len() - failed.len(),
        failed.len(),
        ops[0],
        ops[1],
        ops[2],
        started.elapsed().as_secs_f64()
    );
    println!(
        "table: {}  lines: {}",
        out.join("soak.md").display(),
        out.join("soak.jsonl").display()
    );
    for record in &failed {
        println!(
            "failed seed {} ({}): log {}",
            record.seed, record.group, record.log
        );
        println!("  replay: {}", record.replay(&args, mode));
    }
    Ok(failed.is_empty() && records.len() == args.runs as usize)
}

async fn run_one(
    exe: &Path,
    args: &SoakArgs,
    mode: Mode,
    out: &Path,
    seed: u64,
    plan: &Plan,
) -> RunRecord {
    let faults: Vec<String> = plan.faults.iter().map(|f| f.name()).collect();
    let summary_path = out.join(format!("drill-{seed}.json"));
    let history_path = out.join(format!("history-{seed}.jsonl"));
    let log_path = out.join(format!("drill-{seed}.log"));
    let _ = std::fs::remove_file(&summary_path);
    let mut record = RunRecord {
        seed,
        group: plan.label.clone(),
        faults: faults.clone(),
        pass: false,
        exit_code: None,
        wall_ms: 0,
        error: None,
        log: log_path.display().to_string(),
        summary: None,
    };
    let started = Instant::now();
    let log = match std::fs::File::create(&log_path).and_then(|f| Ok((f.try_clone()?, f))) {
        Ok(files) => files,
        Err(e) => {
            record.error = Some(format!("cannot create {}: {e}", log_path.display()));
            return record;
        }
    };
    let mut command = tokio::process::Command::new(exe);
    command
        .arg("drill")
        .args(["--seed", &seed.to_string()])
        .args(["--duration", &format!("{}s", args.duration.as_secs())])
        .args(["--nodes", &args.nodes.to_string()])
        .args(["--clients", &args.clients.to_string()])
        .args(["--mode", mode_name(mode)])
        .args(["--faults", &faults.join(",")])
        .arg("--summary-json")
        .arg(&summary_path)
        .arg("--history")
        .arg(&history_path)
        .env_remove("CHAOS_SEED")
        .stdin(Stdio::null())
        .stdout(log.0)
        .stderr(log.1)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            record.error = Some(format!("cannot start {}: {e}", exe.display()));
            return record;
        }
    };
    let bound = args.duration + DRILL_OVERHEAD_MAX;
    match tokio::time::timeout(bound, child.wait()).await {
        Ok(Ok(status)) => record.exit_code = status.code(),
        Ok(Err(e)) => record.error = Some(format!("waiting for the drill: {e}")),
        Err(_) => {
            // SIGKILL our own child; its nodes exit with it (--exit-with-parent).
            let _ = child.kill().await;
            record.error = Some(format!("no result within {bound:?}: killed"));
        }
    }
    record.wall_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match std::fs::read(&summary_path) {
        Ok(bytes) => match serde_json::from_slice::<DrillSummary>(&bytes) {
            Ok(summary) => record.summary = Some(summary),
            Err(e) => {
                record
                    .error
                    .get_or_insert_with(|| format!("unreadable summary: {e}"));
            }
        },
        Err(_) => {
            record.error.get_or_insert_with(|| {
                format!("no summary (exit code {:?}; see the log)", record.exit_code)
            });
        }
    }
    record.pass = record.exit_code == Some(0) && record.summary.as_ref().is_some_and(|s| s.pass);
    if record.pass {
        // A passing run's history only takes space; a failing run keeps it for the replay.
        let _ = std::fs::remove_file(&history_path);
    }
    record
}

/// Rewrites `soak.md` and `soak.jsonl` with every run so far.
fn write_results(out: &Path, records: &[RunRecord]) -> anyhow::Result<()> {
    let mut lines = String::new();
    for record in records {
        lines.push_str(&serde_json::to_string(record)?);
        lines.push('\n');
    }
    std::fs::write(out.join("soak.jsonl"), lines)?;
    std::fs::write(out.join("soak.md"), markdown(records))?;
    Ok(())
}

/// The Markdown table of the runs, with a totals line.
pub fn markdown(records: &[RunRecord]) -> String {
    let mut md = String::new();
    let passed = records.iter().filter(|r| r.pass).count();
    let _ = writeln!(
        md,
        "# Soak: {} drills, {passed} passed, {} failed\n",
        records.len(),
        records.len() - passed
    );
    md.push_str("| seed | group | faults | ops ok / fail / unknown | faults injected | verdicts | result | wall s |\n");
    md.push_str("|---:|---|---|---:|---:|---|---|---:|\n");
    for r in records {
        let (ops, injected, verdicts) = match &r.summary {
            Some(s) => {
                let failing: Vec<&str> = s
                    .verdicts
                    .iter()
                    .filter(|v| !v.pass)
                    .map(|v| v.name.as_str())
                    .collect();
                let passing = s.verdicts.len() - failing.len();
                let verdicts = if failing.is_empty() {
                    format!("{passing}/{} pass", s.verdicts.len())
                } else {
                    format!(
                        "{passing}/{} pass; FAIL: {}",
                        s.verdicts.len(),
                        failing.join(", ")
                    )
                };
                (
                    format!("{} / {} / {}", s.ops_ok, s.ops_fail, s.ops_unknown),
                    s.faults_injected.to_string(),
                    verdicts,
                )
            }
            None => (
                "-".to_owned(),
                "-".to_owned(),
                r.error.clone().unwrap_or_default(),
            ),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {ops} | {injected} | {verdicts} | {} | {:.1} |",
            r.seed,
            r.group,
            r.faults.join(", "),
            if r.pass { "pass" } else { "**FAIL**" },
            r.wall_ms as f64 / 1000.0
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rotation_covers_every_kind_a_mode_supports() {
        for mode in [Mode::Loopback, Mode::Netns] {
            let plans = rotation(mode);
            for kind in soaked_kinds(mode) {
                let groups = plans
                    .iter()
                    .filter(|p| p.label != "all" && p.faults.contains(&kind))
                    .count();
                assert_eq!(groups, 1, "{kind:?} in {groups} groups for {mode:?}");
                assert!(plans.last().is_some_and(|p| p.faults.contains(&kind)));
            }
        }
    }

    #[test]
    fn a_failed_run_is_marked_in_the_table() {
        let record = |seed, pass| RunRecord {
            seed,
            group: "clock".into(),
            faults: vec!["clock-skew".into(), "clock-jump".into()],
            pass,
            exit_code: Some(if pass { 0 } else { 1 }),
            wall_ms: 21_500,
            error: (!pass).then(|| "no summary (exit code Some(1); see the log)".into()),
            log: String::new(),
            summary: None,
        };
        let md = markdown(&[record(7, true), record(8, false)]);
        assert!(
            md.starts_with("# Soak: 2 drills, 1 passed, 1 failed"),
            "{md}"
        );
        assert!(
            md.contains("| 8 | clock | clock-skew, clock-jump |"),
            "{md}"
        );
        assert!(md.contains("**FAIL**"), "{md}");
    }
}
