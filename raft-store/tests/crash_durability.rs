//! Crash durability: a child process appends entries and saves votes, printing each one the
//! store acknowledges; it is killed with SIGKILL at a seeded random moment, and the reopened
//! store must hold every acknowledged entry, without holes, and at least the last printed vote.
//!
//! Replay a failing round with `CRASH_SEED=<seed> cargo test -p raft-store --test crash_durability`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use openraft::storage::{RaftLogReader, RaftLogStorage};
use raft_store::Identity;

const ROUNDS: u64 = 5;
const ROUND_DEADLINE: Duration = Duration::from_secs(60);

struct Observed {
    acked_index_max: u64,
    vote_term_max: u64,
}

fn run_child_until_killed(dir: &std::path::Path, seed: u64) -> Observed {
    let kill_after_acks = 5 + seed % 200;
    let mut child = Command::new(env!("CARGO_BIN_EXE_raft-store-crash-writer"))
        .arg(dir)
        .arg(seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn crash writer");
    let stdout = child.stdout.take().expect("piped stdout");
    let started = Instant::now();
    let mut observed = Observed {
        acked_index_max: 0,
        vote_term_max: 0,
    };
    let mut acks = 0u64;
    let mut killed = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child output");
        let (what, number) = line.split_once(' ').expect("`what number` line");
        let number: u64 = number.parse().expect("number");
        match what {
            "ack" => {
                acks += 1;
                observed.acked_index_max = observed.acked_index_max.max(number);
            }
            "vote" => observed.vote_term_max = observed.vote_term_max.max(number),
            other => panic!("unexpected line from child: {other}"),
        }
        // Lines already printed keep arriving after the kill: they were acknowledged, so they
        // count. Reading stops at end of file, when the dead child's pipe closes.
        if !killed && (acks >= kill_after_acks || started.elapsed() > ROUND_DEADLINE) {
            child.kill().expect("SIGKILL the child");
            killed = true;
        }
    }
    if !killed {
        child.kill().expect("SIGKILL the child");
    }
    let status = child.wait().expect("reap child");
    assert!(
        !status.success(),
        "seed {seed}: the child must die by the signal, not exit: {status:?}"
    );
    assert!(
        acks >= kill_after_acks,
        "seed {seed}: child produced only {acks} acks in {:?}",
        started.elapsed()
    );
    observed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_entries_and_the_last_vote_survive_sigkill() {
    let base_seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .map(|s| s.parse().expect("CRASH_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_millis() as u64
        });
    let rounds = if std::env::var("CRASH_SEED").is_ok() {
        1
    } else {
        ROUNDS
    };
    for round in 0..rounds {
        let seed = base_seed.wrapping_add(round);
        eprintln!("crash durability round {round}: CRASH_SEED={seed}");
        let tmp = tempfile::tempdir().expect("tempdir");
        let observed = tokio::task::block_in_place(|| run_child_until_killed(tmp.path(), seed));

        let store = raft_store::open(tmp.path(), &Identity::new("crash-test", 1))
            .expect("reopen after SIGKILL");
        let mut log = store.log;
        let vote = log
            .read_vote()
            .await
            .expect("read vote")
            .expect("a vote was saved");
        assert!(
            vote.leader_id.term >= observed.vote_term_max,
            "seed {seed}: vote went back from term {} to {vote:?}",
            observed.vote_term_max
        );
        let state = log.get_log_state().await.expect("log state");
        let last = state.last_log_id.map_or(0, |id| id.index);
        assert!(
            last >= observed.acked_index_max,
            "seed {seed}: acknowledged up to {} but the log ends at {last}",
            observed.acked_index_max
        );
        let entries = log.try_get_log_entries(1..=last).await.expect("read log");
        assert_eq!(entries.len() as u64, last, "seed {seed}: the log has holes");
        for (expected_index, entry) in (1..).zip(&entries) {
            assert_eq!(entry.log_id.index, expected_index, "seed {seed}");
            let openraft::EntryPayload::Normal(raft_store::Proposal(request)) = &entry.payload
            else {
                panic!("seed {seed}: entry {expected_index} is not the one written");
            };
            assert_eq!(
                request.request_id,
                format!("r{expected_index}"),
                "seed {seed}"
            );
        }
        eprintln!(
            "round {round}: acked {} entries, vote term {}, log holds {last}",
            observed.acked_index_max, observed.vote_term_max
        );
    }
}
