//! The benchmark's pure parts: the lifecycle workload, latency statistics, `/proc` parsing and
//! the report's comparisons. No processes, no timing assertions.

use std::time::Duration;

use chaos_tests::bench::procstat::{parse_cpu_seconds, parse_status_kib};
use chaos_tests::bench::report::{LoadRow, compare, peak};
use chaos_tests::bench::stats::{OpStats, Summary, median, ratio};
use chaos_tests::bench::workload::{
    Op, State, TURN_TEXT_BYTES, TURNS_PER_CALL, hands_off, lifecycle, transition,
    transitions_per_lifecycle_mean, turn_text,
};

#[test]
fn every_lifecycle_is_create_start_six_turns_optional_handoff_end() {
    for seq in 0..10 {
        let ops = lifecycle(seq);
        assert_eq!(ops[0], Op::Create);
        assert_eq!(ops[1], Op::Start);
        assert_eq!(
            ops.iter().filter(|o| **o == Op::Turn).count(),
            TURNS_PER_CALL
        );
        assert_eq!(ops.last(), Some(&Op::End));
        let handoffs = ops.iter().filter(|o| **o == Op::Handoff).count();
        assert_eq!(handoffs, usize::from(hands_off(seq)));
    }
}

#[test]
fn half_the_calls_are_handed_off_and_the_mean_matches() {
    let total: usize = (0..1000).map(|seq| lifecycle(seq).len()).sum();
    assert_eq!(total as f64 / 1000.0, transitions_per_lifecycle_mean());
    assert_eq!((0..1000).filter(|s| hands_off(*s)).count(), 500);
}

#[test]
fn the_etcd_compare_chain_follows_every_lifecycle_to_ended() {
    for seq in 0..4 {
        let mut state = None;
        for op in lifecycle(seq) {
            let (expected, next) = transition(state, op).expect("workload ops are legal");
            assert_eq!(expected, state);
            state = Some(next);
        }
        assert_eq!(state, Some(State::Ended));
    }
}

#[test]
fn illegal_transitions_have_no_compare() {
    assert_eq!(transition(None, Op::Start), None);
    assert_eq!(transition(Some(State::Created), Op::Turn), None);
    assert_eq!(transition(Some(State::HandedOff), Op::Handoff), None);
    assert_eq!(transition(Some(State::Ended), Op::End), None);
}

#[test]
fn turn_texts_have_a_fixed_size() {
    for (seq, turn) in [(0, 1), (123_456_789_012, 6), (u64::MAX, 3)] {
        assert_eq!(turn_text(seq, turn).len(), TURN_TEXT_BYTES);
    }
}

#[test]
fn percentiles_come_from_the_recorded_latencies() {
    let mut stats = OpStats::default();
    for ms in 1..=1000u64 {
        stats.record(Op::Turn, Duration::from_millis(ms));
    }
    stats.record(Op::End, Duration::from_millis(5));
    stats.record_error(Op::End, || "boom".into());
    let summaries = stats.summaries();
    let (op, turn) = summaries[0];
    assert_eq!(op, Op::Turn);
    assert_eq!(turn.count, 1000);
    // HdrHistogram keeps 3 significant digits: compare within 0.1 %.
    assert!((turn.p50_ms - 500.0).abs() <= 0.5, "{turn:?}");
    assert!((turn.p99_ms - 990.0).abs() <= 1.0, "{turn:?}");
    assert!((turn.p999_ms - 999.0).abs() <= 1.0, "{turn:?}");
    assert!((turn.max_ms - 1000.0).abs() <= 1.0, "{turn:?}");
    assert_eq!(summaries[1].1.errors, 1);
    assert_eq!(stats.count(), 1001);
    assert_eq!(stats.errors(), 1);
    assert_eq!(stats.error_samples, vec!["boom".to_owned()]);
}

#[test]
fn merged_stats_equal_stats_recorded_in_one_place() {
    let mut one = OpStats::default();
    let mut a = OpStats::default();
    let mut b = OpStats::default();
    for us in [10u64, 200, 3_000, 40_000, 500_000] {
        one.record(Op::Create, Duration::from_micros(us));
        one.record(Op::Turn, Duration::from_micros(us * 2));
        a.record(Op::Create, Duration::from_micros(us));
        b.record(Op::Turn, Duration::from_micros(us * 2));
    }
    a.merge(&b);
    assert_eq!(a.summaries(), one.summaries());
    assert_eq!(Summary::of(&a.combined()), Summary::of(&one.combined()));
}

#[test]
fn huge_latencies_are_clamped_not_lost() {
    let mut stats = OpStats::default();
    stats.record(Op::Create, Duration::from_secs(100_000));
    stats.record(Op::Create, Duration::ZERO);
    assert_eq!(stats.count(), 2);
}

#[test]
fn median_and_ratio_handle_edges() {
    assert_eq!(median(&[]), None);
    let d = |ms| Duration::from_millis(ms);
    assert_eq!(median(&[d(3), d(1), d(2)]), Some(d(2)));
    assert_eq!(ratio(4.0, 2.0), Some(2.0));
    assert_eq!(ratio(1.0, 0.0), None);
}

#[test]
fn proc_stat_cpu_time_survives_odd_command_names() {
    // Fields 14 and 15 (utime 250, stime 50 ticks) after a command name with spaces and ')'.
    let stat =
        "1234 (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 100 0 0";
    assert_eq!(parse_cpu_seconds(stat), Some(3.0));
    assert_eq!(parse_cpu_seconds("garbage"), None);
}

#[test]
fn proc_status_values_are_read_in_kib() {
    let status = "Name:\tetcd\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
    assert_eq!(parse_status_kib(status, "VmRSS:"), Some(1024));
    assert_eq!(parse_status_kib(status, "VmHWM:"), Some(2048));
    assert_eq!(parse_status_kib(status, "VmSwap:"), None);
}

fn row(system: &str, client: &str, k: usize, lifecycles_per_s: f64, p99_ms: f64) -> LoadRow {
    LoadRow {
        system: system.into(),
        client: client.into(),
        mode: "closed".into(),
        concurrency: k,
        connections: k.min(16),
        offered_lifecycles_per_s: None,
        window_s: 10.0,
        transitions: 0,
        lifecycles: 0,
        errors: 0,
        dropped: 0,
        transitions_per_s: lifecycles_per_s * 9.5,
        lifecycles_per_s,
        all: Summary {
            p99_ms,
            ..Summary::default()
        },
        ops: Default::default(),
        nodes: Vec::new(),
        generator_cpu_s: 0.0,
        error_samples: Vec::new(),
    }
}

#[test]
fn comparisons_pair_rows_of_the_same_concurrency() {
    let rows = vec![
        row("switchboard", "raw", 1, 50.0, 4.0),
        row("etcd", "etcd-client", 1, 25.0, 8.0),
        row("switchboard", "raw", 16, 400.0, 10.0),
        row("etcd", "etcd-client", 16, 100.0, 5.0),
    ];
    let cmp = compare(&rows);
    assert_eq!(cmp.len(), 2);
    assert_eq!(cmp[0].throughput_ratio, Some(2.0));
    assert_eq!(cmp[0].p99_ratio, Some(0.5));
    assert_eq!(cmp[1].throughput_ratio, Some(4.0));
    assert_eq!(cmp[1].p99_ratio, Some(2.0));
    assert_eq!(
        peak(&rows, "switchboard", "raw").map(|r| r.concurrency),
        Some(16)
    );
}

#[test]
fn open_loop_rows_pair_by_offered_rate() {
    let open = |system: &str, client: &str, rate: f64, lifecycles_per_s: f64| LoadRow {
        mode: "open".into(),
        offered_lifecycles_per_s: Some(rate),
        ..row(system, client, 4096, lifecycles_per_s, 1.0)
    };
    let rows = vec![
        open("switchboard", "raw", 100.0, 100.0),
        open("switchboard", "raw", 300.0, 300.0),
        open("etcd", "etcd-client", 100.0, 100.0),
        open("etcd", "etcd-client", 300.0, 250.0),
    ];
    let cmp = compare(&rows);
    assert_eq!(cmp.len(), 2);
    assert_eq!(cmp[0].throughput_ratio, Some(1.0));
    assert_eq!(cmp[1].throughput_ratio, Some(1.2));
}
