//! A short loopback drill with two seeds (process faults: kill -9, SIGSTOP, delay, membership,
//! snapshot restart; clock skew and jumps when libfaketime is installed) must pass every
//! checker. Loopback mode needs no root, so this runs
//! anywhere the workspace builds; the bounds are generous for a loaded 2-core machine.
//! Needs the `switchboard` binary next to the test's target directory (`cargo build -p node`)
//! or `SWITCHBOARD_BIN`.

use std::time::Duration;

use chaos_tests::drill::{self, DrillArgs, cluster::Mode};

fn args(seed: u64) -> DrillArgs {
    DrillArgs {
        seed: Some(seed),
        duration: Duration::from_secs(10),
        nodes: 3,
        clients: 3,
        mode: Some(Mode::Loopback),
        compose_file: std::path::PathBuf::new(),
        image: None,
        faults: Vec::new(),
        no_faults: false,
        quiet_ms_max: 1500,
        hold_ms_max: 2500,
        liveness_bound: Duration::from_secs(45),
        history: Some(std::env::temp_dir().join(format!("switchboard-drill-smoke-{seed}.jsonl"))),
        node_args: Vec::new(),
        summary_json: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_loopback_drills_pass_every_checker() {
    let binary = chaos_tests::switchboard_binary();
    assert!(
        binary.is_ok(),
        "build the node first (cargo build -p node) or set SWITCHBOARD_BIN: {binary:?}"
    );
    for seed in [11, 12] {
        let passed = drill::run(args(seed)).await.expect("drill runs");
        assert!(
            passed,
            "drill with seed {seed} found violations (replay: CHAOS_SEED={seed})"
        );
    }
}
