//! The fuzz targets' seed corpora (`fuzz/seeds/<target>/`): generated here from the real
//! encoders, checked against the committed files, and run through the `request` target's driver.
//!
//! `SWITCHBOARD_FUZZ_SEEDS_WRITE=1 cargo nextest run --workspace -E 'binary(fuzz_seeds)'`
//! rewrites them (after an encoding changes, say); otherwise a seed that differs from what the
//! encoders produce fails here, so the seeds never drift from the formats they exercise.

#[allow(dead_code)]
#[path = "../../fuzz/src/frame.rs"]
mod frame;
#[allow(dead_code)]
#[path = "../../fuzz/src/request.rs"]
mod request;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use domain::{CallState, Decision};
use prost::Message;
use proto::v1;
use raft_store::codec::encode;
use raft_store::{Proposal, SnapshotMeta};
use sha2::{Digest, Sha256};

const WRITE_ENV: &str = "SWITCHBOARD_FUZZ_SEEDS_WRITE";

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds")
}

const TENANT: &str = "acme";

fn call_id(index: u64) -> String {
    request::minted_call_id(index).to_string()
}

fn create(request_id: &str) -> (usize, u8, Vec<u8>) {
    let message = v1::CreateCallRequest {
        tenant_id: TENANT.into(),
        request_id: request_id.into(),
        source: "pstn:+61255501234".into(),
        channel: v1::Channel::Voice.into(),
        metadata: [("campaign".to_owned(), "renewals".to_owned())].into(),
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
    };
    (0, 0, message.encode_to_vec())
}

fn start(request_id: &str, call: u64) -> (usize, u8, Vec<u8>) {
    let message = v1::StartCallRequest {
        tenant_id: TENANT.into(),
        request_id: request_id.into(),
        call_id: call_id(call),
    };
    (1, 0, message.encode_to_vec())
}

fn turn(request_id: &str, call: u64, text: &str) -> (usize, u8, Vec<u8>) {
    let message = v1::AppendTurnRequest {
        tenant_id: TENANT.into(),
        request_id: request_id.into(),
        call_id: call_id(call),
        speaker: "caller".into(),
        text: text.into(),
        confidence: 0.93,
        language: "en-AU".into(),
        spoken_at_ms: 1_750_000_000_500,
    };
    (2, 0, message.encode_to_vec())
}

fn event(request_id: &str, call: u64) -> (usize, u8, Vec<u8>) {
    let message = v1::LogEventRequest {
        tenant_id: TENANT.into(),
        request_id: request_id.into(),
        call_id: call_id(call),
        event_type: "intent.detected".into(),
        payload: Some(v1::log_event_request::Payload::PayloadJson(
            r#"{"intent":"cancel","score":0.8}"#.into(),
        )),
        metadata: [("model".to_owned(), "v3".to_owned())].into(),
    };
    (3, 0, message.encode_to_vec())
}

fn context(request_id: &str, call: u64) -> (usize, u8, Vec<u8>) {
    let message = v1::UpdateContextRequest {
        tenant_id: TENANT.into(),
        request_id: request_id.into(),
        call_id: call_id(call),
        summary: Some("wants to cancel the plan".into()),
        // One entry: prost's maps are hash maps, whose encoding order would vary.
        entities: [("plan".to_owned(), "gold".to_owned())].into(),
    };
    (4, 0, message.encode_to_vec())
}

fn handoff(request_id: &str, call: u64) -> (usize, u8, Vec<u8>) {
    let message = v1::RequestHandoffRequest {
        tenant_id: TENANT.into(),
        request_id: request_id.into(),
        call_id: call_id(call),
        reason: "asked for a person".into(),
        urgency: v1::Urgency::High.into(),
        target: Some("queue:retention".into()),
    };
    (5, 0, message.encode_to_vec())
}

fn end(request_id: &str, call: u64) -> (usize, u8, Vec<u8>) {
    let message = v1::EndCallRequest {
        tenant_id: TENANT.into(),
        request_id: request_id.into(),
        call_id: call_id(call),
        reason: "completed".into(),
        resolution: "retained".into(),
    };
    (6, 0, message.encode_to_vec())
}

fn activity(request_id: &str, call: Option<u64>, severity: v1::Severity) -> (usize, u8, Vec<u8>) {
    let message = v1::RecordActivityRequest {
        tenant_id: TENANT.into(),
        request_id: request_id.into(),
        entries: vec![v1::ActivityEntry {
            activity_type: v1::ActivityType::Error.into(),
            activity: Some(v1::Activity {
                agent_type: "agent-api".into(),
                agent_name: "API Agent".into(),
                project_id: "P-1".into(),
                task_id: "T-1".into(),
                task_description: "call jane@example.com back".into(),
                severity: severity.into(),
                status: v1::ActivityStatus::Failed.into(),
                message: "upstream 500".into(),
            }),
            call_id: call.map(call_id).unwrap_or_default(),
            payload_json: r#"{"retry":true}"#.into(),
            metadata: [("lane".to_owned(), "a".to_owned())].into(),
        }],
    };
    (7, 0, message.encode_to_vec())
}

fn later(mut frame: (usize, u8, Vec<u8>), advance: u8) -> (usize, u8, Vec<u8>) {
    frame.1 = advance;
    frame
}

/// The `request` seeds: a whole lifecycle, retries, an expired window, rule breaks.
fn request_seeds() -> BTreeMap<&'static str, Vec<u8>> {
    let lifecycle = frame::encode(&[
        create("c1"),
        start("s1", 1),
        turn("t1", 1, "I'd like to cancel"),
        event("e1", 1),
        context("x1", 1),
        turn("t2", 1, "yes, the gold plan"),
        handoff("h1", 1),
        end("end1", 1),
    ]);
    let retries = frame::encode(&[
        create("c1"),
        create("c1"),
        start("s1", 1),
        start("s1", 1),
        // The same request id for another command: refused as reused.
        start("c1", 1),
    ]);
    let expiry = frame::encode(&[create("c1"), later(create("c1"), 200), start("s1", 1)]);
    let rule_breaks = frame::encode(&[
        create("c1"),
        // Not started yet.
        turn("t1", 1, "too early"),
        end("end1", 1),
        start("s1", 1),
        handoff("h1", 1),
        handoff("h2", 1),
        // A call nobody minted.
        start("s2", 99),
    ]);
    let mut invalid = create("");
    invalid.2 = v1::CreateCallRequest {
        tenant_id: String::new(),
        request_id: "r".into(),
        source: "x".repeat(300),
        channel: v1::Channel::Chat.into(),
        ..Default::default()
    }
    .encode_to_vec();
    let invalid = frame::encode(&[invalid, create("c1"), turn("t1", 1, "")]);
    let activity = frame::encode(&[
        create("c1"),
        activity("a1", None, v1::Severity::Info),
        activity("a2", Some(1), v1::Severity::Error),
        // A call nobody minted; then an unset severity.
        activity("a3", Some(99), v1::Severity::Info),
        activity("a4", None, v1::Severity::Unspecified),
    ]);
    BTreeMap::from([
        ("activity", activity),
        ("lifecycle", lifecycle),
        ("retries", retries),
        ("expiry", expiry),
        ("rule-breaks", rule_breaks),
        ("invalid", invalid),
    ])
}

/// The `entry` seeds: log-entry envelopes and stored records as the store writes them.
fn entry_seeds() -> BTreeMap<&'static str, Vec<u8>> {
    let (state, _) = request::run(&request_seeds()["lifecycle"]);
    let mut seeds = BTreeMap::new();
    let created = domain::Request {
        tenant_id: TENANT.into(),
        request_id: "c1".into(),
        command: domain::Command::StartCall {
            call_id: request::minted_call_id(1),
        },
        stamp: domain::Stamp {
            at_ms: frame::START_MS,
            minted_call_id: None,
            minted_trace_id: None,
        },
        redactions: Default::default(),
    };
    seeds.insert("proposal", Proposal(created).to_bytes());
    let call = state
        .calls
        .values()
        .next()
        .expect("the lifecycle created a call");
    seeds.insert("call", encode(call));
    let turn = state
        .turns
        .values()
        .next()
        .expect("the lifecycle appended turns");
    seeds.insert("turn", encode(turn));
    seeds.insert("event", encode(&state.log[0]));
    seeds.insert("handoff-event", encode(&state.log[state.log.len() - 2]));
    let remembered = state.remembered.values().next().expect("remembered");
    seeds.insert("remembered", encode(remembered));
    seeds.insert("head", encode(&state.head));
    seeds.insert("call-counts", encode(&[0u64, 0, 0, 1]));
    seeds.insert(
        "membership",
        encode(&raft_store::StoredMembership::default()),
    );
    seeds
}

/// A snapshot file as `raft_store::snapshot` writes it, with the given records.
fn snapshot_file(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let meta = serde_json::to_vec(&SnapshotMeta::default()).expect("meta serializes");
    let mut out = b"SWBSNAP2".to_vec();
    out.extend_from_slice(&u32::try_from(meta.len()).expect("small").to_be_bytes());
    out.extend_from_slice(&meta);
    for (key, value) in records {
        out.push(0x01);
        out.extend_from_slice(&u32::try_from(key.len()).expect("small").to_be_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&u32::try_from(value.len()).expect("small").to_be_bytes());
        out.extend_from_slice(value);
    }
    out.push(0x02);
    out.extend_from_slice(&(records.len() as u64).to_be_bytes());
    out
}

/// The `snapshot` seeds. The first byte is the target's mode: 0 = the file as is, 1 = the
/// target appends the SHA-256 itself.
fn snapshot_seeds() -> BTreeMap<&'static str, Vec<u8>> {
    let (state, _) = request::run(&request_seeds()["lifecycle"]);
    let call = state.calls.values().next().expect("a call");
    let records = vec![
        (raft_store::keys::SM_HEAD.to_vec(), encode(&state.head)),
        (raft_store::keys::call(&call.call_id), encode(call)),
        (
            raft_store::keys::turn(&call.call_id, 1),
            encode(&state.turns[&(call.call_id, 1)]),
        ),
    ];
    let body = snapshot_file(&records);
    let digest: [u8; 32] = Sha256::digest(&body).into();
    let mut whole = vec![0u8];
    whole.extend_from_slice(&body);
    whole.extend_from_slice(&digest);
    let mut unsummed = vec![1u8];
    unsummed.extend_from_slice(&body);
    let mut empty = vec![1u8];
    empty.extend_from_slice(&snapshot_file(&[]));
    BTreeMap::from([("whole", whole), ("unsummed", unsummed), ("empty", empty)])
}

/// The `config` seeds: config files, and option texts the parsers take.
fn config_seeds() -> BTreeMap<&'static str, Vec<u8>> {
    let full = serde_json::json!({
        "node-id": 2,
        "listen": "127.0.0.1:7102",
        "advertise": "node2:7102",
        "http-listen": "127.0.0.1:8102",
        "data-dir": "/var/lib/switchboard",
        "initial-cluster": "1=node1:7101,2=node2:7102,3=node3:7103",
        "cluster-id": "switchboard",
        "region": "ap-southeast-2",
        "heartbeat-ms": 100,
        "election-timeout-min-ms": 250,
        "election-timeout-max-ms": 500,
        "snapshot-logs-since-last": 100000,
        "logs-kept-behind-snapshot": 1000,
        "write-timeout-ms": 5000,
        "read-wait-ms-max": 5000,
        "grpc-message-bytes-max": 4194304,
        "cluster-message-bytes-max": 65536,
        "grpc-concurrency-max": 256,
        "requests-in-flight-per-client-max": 1024,
        "http2-streams-per-connection-max": 512,
        "connections-max": 16384,
        "connections-per-client-max": 1024,
        "http2-keepalive-interval-ms": 10000,
        "http2-keepalive-timeout-ms": 20000,
        "handshake-timeout-ms": 10000,
        "request-time-ms-max": 30000,
        "reads-in-flight-max": 4,
        "read-queue-max": 64,
        "writes-in-flight-max": 512,
        "write-queue-max": 1024,
        "admission-queue-wait-ms-max": 1000,
        "tls-dir": "/etc/switchboard/certs",
        "token-keys": "/etc/switchboard/tokens/token-keys.json",
        "pii-policy": "mask"
    });
    BTreeMap::from([
        ("full.json", serde_json::to_vec_pretty(&full).expect("json")),
        (
            "pod.json",
            br#"{"pod-name": "switchboard-2", "region": "eu-west"}"#.to_vec(),
        ),
        (
            "initial-cluster",
            b"1=a:7101, 2=[::1]:7102,3=b:7103".to_vec(),
        ),
    ])
}

fn all_seeds() -> BTreeMap<&'static str, BTreeMap<&'static str, Vec<u8>>> {
    BTreeMap::from([
        ("request", request_seeds()),
        ("entry", entry_seeds()),
        ("snapshot", snapshot_seeds()),
        ("config", config_seeds()),
    ])
}

#[test]
fn committed_seeds_are_what_the_encoders_produce() {
    let write = std::env::var_os(WRITE_ENV).is_some();
    let mut stale = Vec::new();
    for (target, seeds) in all_seeds() {
        let dir = seeds_dir().join(target);
        if write {
            std::fs::create_dir_all(&dir).expect("create the seed directory");
        }
        for (name, bytes) in seeds {
            let path = dir.join(name);
            if write {
                std::fs::write(&path, &bytes).expect("write a seed");
            } else if std::fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "seeds differ from what the encoders produce (rewrite them with {WRITE_ENV}=1): {stale:?}"
    );
}

#[test]
fn the_lifecycle_seed_walks_a_call_to_its_end() {
    let (state, decisions) = request::run(&request_seeds()["lifecycle"]);
    assert_eq!(decisions.len(), 8);
    assert!(
        decisions
            .iter()
            .all(|d| matches!(d, Decision::Applied { .. })),
        "{decisions:#?}"
    );
    let call = &state.calls[&request::minted_call_id(1)];
    assert_eq!(call.state(), CallState::Ended);
}

#[test]
fn the_rule_seeds_reach_rejections_replays_and_refusals() {
    let seeds = request_seeds();
    let (_, retries) = request::run(&seeds["retries"]);
    assert!(matches!(retries[1], Decision::Replay(_)), "{retries:#?}");
    assert!(matches!(retries[4], Decision::Refused(_)), "{retries:#?}");
    let (state, expiry) = request::run(&seeds["expiry"]);
    assert!(
        matches!(expiry[1], Decision::Applied { .. }),
        "after the window the same request id is decided again: {expiry:#?}"
    );
    assert_eq!(state.calls.len(), 2, "a second call was created");
    let (_, breaks) = request::run(&seeds["rule-breaks"]);
    assert!(
        matches!(breaks[1], Decision::Rejected { .. }),
        "{breaks:#?}"
    );
    assert!(
        matches!(breaks[5], Decision::Rejected { .. }),
        "{breaks:#?}"
    );
    let (_, invalid) = request::run(&seeds["invalid"]);
    assert!(matches!(invalid[0], Decision::Refused(_)), "{invalid:#?}");
    let (state, activity) = request::run(&seeds["activity"]);
    assert!(
        matches!(activity[1], Decision::Recorded { .. })
            && matches!(activity[2], Decision::Recorded { .. }),
        "{activity:#?}"
    );
    assert!(
        matches!(activity[3], Decision::Rejected { .. }),
        "{activity:#?}"
    );
    assert_eq!(
        activity.len(),
        4,
        "the record without a severity is not converted"
    );
    let recorded = state.log.iter().filter(|e| e.activity.is_some());
    assert!(
        recorded
            .flat_map(|e| e.activity.as_ref())
            .all(|a| !a.task_description.contains("jane@")),
        "activity text is redacted before it is decided"
    );
}

#[test]
fn the_snapshot_seed_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("seed.snap");
    std::fs::write(&path, &snapshot_seeds()["whole"][1..]).expect("write");
    raft_store::snapshot::verify(&path).expect("the seed is a valid snapshot");
}

#[test]
fn the_config_seed_resolves() {
    let seeds = config_seeds();
    let file = node::config::ServeArgs::parse_file(Path::new("full.json"), &seeds["full.json"])
        .expect("parses");
    node::config::ServeArgs::default()
        .resolve_with_file(file)
        .expect("valid");
}
