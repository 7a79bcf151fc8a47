//! Erasure, proven on disk: three `switchboard serve` processes; a unique marker written into
//! every kind of call content is found in every node's data directory, then, after `EraseCall`
//! and within the erasure bound, in no file under any node's data directory, including a node
//! that was stopped while the erase committed and restarted afterwards.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::ProcessCluster;
use node::erasure::ERASURE_BOUND;
use proto::v1::call_service_client::CallServiceClient;
use proto::v1::cluster_service_client::ClusterServiceClient;
use proto::v1::event_service_client::EventServiceClient;
use proto::v1::{self, Consistency, ReadOptions};
use tonic::Code;
use tonic::transport::Channel;

const LEADER_WAIT: Duration = Duration::from_secs(30);
const CATCH_UP_WAIT: Duration = Duration::from_secs(30);
/// How often the data directories are walked while waiting.
const POLL: Duration = Duration::from_millis(500);
const TENANT: &str = "acme";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_switchboard"))
}

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("address")
        .connect()
        .await
        .expect("connect to node")
}

/// A marker no other byte sequence on disk shares: 40 hex digits from the random bits of two
/// fresh UUIDv7s (their time bits, shared with ids minted at the same moment, are left out),
/// so that compression stores it as a literal.
fn marker() -> String {
    let random = || uuid::Uuid::now_v7().simple().to_string()[12..].to_owned();
    format!("{}{}", &random()[..20], &random()[..20])
}

/// Every file under `dir`, recursively; files that vanish while walking are skipped.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(path),
                Ok(kind) if kind.is_file() => out.push(path),
                _ => {}
            }
        }
    }
    out
}

/// The files under `dir` that hold `marker`.
fn files_holding(dir: &Path, marker: &str) -> Vec<PathBuf> {
    let needle = marker.as_bytes();
    files_under(dir)
        .into_iter()
        .filter(|path| {
            std::fs::read(path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

fn local(min_index: u64) -> Option<ReadOptions> {
    Some(ReadOptions {
        consistency: Consistency::Local.into(),
        min_index,
    })
}

/// The call as node `addr` holds it once it applied `index`; waits for a starting node.
async fn call_at(addr: &str, call_id: &str, index: u64) -> v1::Call {
    let deadline = Instant::now() + CATCH_UP_WAIT;
    loop {
        let read = match Channel::from_shared(format!("http://{addr}"))
            .expect("address")
            .connect()
            .await
        {
            Ok(channel) => CallServiceClient::new(channel)
                .get_call(v1::GetCallRequest {
                    tenant_id: TENANT.into(),
                    call_id: call_id.into(),
                    read: local(index),
                })
                .await
                .map_err(|status| status.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match read {
            Ok(response) => return response.into_inner().call.expect("call"),
            Err(_) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
            Err(error) => panic!("node {addr} did not apply index {index}: {error}"),
        }
    }
}

/// Writes the marker into a turn, the summary, an entity value, an event payload and its
/// metadata, and the handoff reason; returns the call id and the index of the last write.
async fn call_with_marker(calls: &mut CallServiceClient<Channel>, marker: &str) -> (String, u64) {
    let call_id = calls
        .create_call(v1::CreateCallRequest {
            tenant_id: TENANT.into(),
            request_id: "create".into(),
            source: "pstn:+15550100".into(),
            channel: v1::Channel::Voice.into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner()
        .call
        .expect("call")
        .call_id;
    calls
        .start_call(v1::StartCallRequest {
            tenant_id: TENANT.into(),
            request_id: "start".into(),
            call_id: call_id.clone(),
        })
        .await
        .expect("start");
    calls
        .append_turn(v1::AppendTurnRequest {
            tenant_id: TENANT.into(),
            request_id: "turn".into(),
            call_id: call_id.clone(),
            speaker: "caller".into(),
            text: format!("my account number is {marker}"),
            confidence: 0.9,
            language: "en-US".into(),
            spoken_at_ms: 1,
        })
        .await
        .expect("turn");
    calls
        .update_context(v1::UpdateContextRequest {
            tenant_id: TENANT.into(),
            request_id: "context".into(),
            call_id: call_id.clone(),
            summary: Some(format!("caller gave account {marker} twice")),
            entities: [("account".to_owned(), format!("acct-{marker}"))].into(),
        })
        .await
        .expect("context");
    calls
        .log_event(v1::LogEventRequest {
            tenant_id: TENANT.into(),
            request_id: "event".into(),
            call_id: call_id.clone(),
            event_type: "account.detected".into(),
            payload: Some(v1::log_event_request::Payload::PayloadJson(format!(
                r#"{{"account":"{marker}"}}"#
            ))),
            metadata: [("seen".to_owned(), format!("m-{marker}"))].into(),
        })
        .await
        .expect("event");
    let handed_off = calls
        .request_handoff(v1::RequestHandoffRequest {
            tenant_id: TENANT.into(),
            request_id: "handoff".into(),
            call_id: call_id.clone(),
            reason: format!("caller disputes account {marker}"),
            urgency: v1::Urgency::High.into(),
            target: Some("billing".into()),
        })
        .await
        .expect("handoff")
        .into_inner();
    (call_id, handed_off.meta.expect("meta").index)
}

fn erase(request_id: &str, call_id: &str) -> v1::EraseCallRequest {
    v1::EraseCallRequest {
        tenant_id: TENANT.into(),
        request_id: request_id.into(),
        call_id: call_id.into(),
        reason: "data subject request 7".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_calls_content_leaves_every_nodes_disk_within_the_bound() {
    let mut cluster = ProcessCluster::start(binary(), 3, &["--insecure"]).expect("start cluster");
    let leader = cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    let stopped = *ids.iter().find(|id| **id != leader).expect("a follower");
    let marker = marker();
    let mut calls = CallServiceClient::new(channel(&cluster.grpc(leader)).await);
    let (call_id, written_at) = call_with_marker(&mut calls, &marker).await;

    // Control: once every node applied the writes and built a snapshot, the marker is on
    // every node's disk, in its snapshot file and in RocksDB. A search that cannot find it
    // here proves nothing later.
    for id in &ids {
        let addr = cluster.grpc(*id);
        call_at(&addr, &call_id, written_at).await;
        ClusterServiceClient::new(channel(&addr).await)
            .trigger_snapshot(v1::TriggerSnapshotRequest {})
            .await
            .expect("snapshot");
        let dir = &cluster.nodes[id].data_dir;
        let holding = files_holding(dir, &marker);
        assert!(
            holding.iter().any(|p| p.starts_with(dir.join("snapshots"))),
            "node {id}: marker in a snapshot file before the erase: {holding:?}"
        );
        assert!(
            holding.iter().any(|p| p.starts_with(dir.join("rocksdb"))),
            "node {id}: marker in RocksDB before the erase: {holding:?}"
        );
    }

    // A follower is down while the erase commits.
    cluster
        .stop(stopped, Duration::from_secs(10))
        .expect("stop a follower");
    let erased = calls
        .erase_call(erase("erase-1", &call_id))
        .await
        .expect("erase")
        .into_inner();
    let erased_at = Instant::now();
    assert_eq!(
        (
            erased.turns_erased,
            erased.events_erased,
            erased.entities_erased
        ),
        (1, 6, 1),
        "a turn, six events (created, started, turn, context, event, handoff), an entity"
    );
    let erase_index = erased.meta.expect("meta").index;

    // Reads show the tombstones and the lifecycle skeleton.
    let call = erased.call.expect("call");
    assert_eq!(call.state(), v1::CallState::HandedOff);
    assert_eq!(call.turn_count, 1);
    assert_eq!(call.summary, "");
    assert!(call.entities.is_empty());
    assert!(call.started_at_ms.is_some());
    let handoff = call.handoff.expect("the handoff record stays");
    assert_eq!(handoff.reason, "");
    assert_eq!(handoff.urgency(), v1::Urgency::High);
    let snapshot = handoff.snapshot.expect("snapshot");
    assert_eq!(snapshot.summary, "");
    assert!(snapshot.recent_turns.iter().all(|t| t.text.is_empty()));
    let erasure = call.erasure.expect("the call is marked erased");
    assert_eq!(erasure.turns, 1);
    let turns = calls
        .list_turns(v1::ListTurnsRequest {
            tenant_id: TENANT.into(),
            call_id: call_id.clone(),
            from_index: 0,
            limit: 0,
            read: local(erase_index),
        })
        .await
        .expect("turns")
        .into_inner();
    assert_eq!(turns.turns.len(), 1);
    assert_eq!(turns.turns[0].text, "");
    let events = EventServiceClient::new(channel(&cluster.grpc(leader)).await)
        .list_call_events(v1::ListCallEventsRequest {
            tenant_id: TENANT.into(),
            call_id: call_id.clone(),
            from_sequence: 0,
            limit: 0,
            read: local(erase_index),
        })
        .await
        .expect("events")
        .into_inner()
        .events;
    assert_eq!(events.len(), 7);
    for event in &events[..6] {
        assert_eq!(
            event.payload,
            Some(v1::event::Payload::PayloadJson(r#"{"erased":true}"#.into())),
            "{} is a tombstone",
            event.event_type
        );
        assert!(event.metadata.is_empty());
    }
    assert_eq!(events[2].event_type, "turn.appended", "types stay");
    let audit = &events[6];
    assert_eq!(audit.event_type, "call.erased");
    let Some(v1::event::Payload::PayloadJson(audit_payload)) = &audit.payload else {
        panic!("call.erased carries JSON");
    };
    let audit_payload: serde_json::Value = serde_json::from_str(audit_payload).expect("json");
    assert_eq!(audit_payload["actor"], "anonymous");
    assert_eq!(audit_payload["reason"], "data subject request 7");
    assert_eq!(audit_payload["turns"], 1);

    // Content writes to the erased call are refused, typed.
    let refused = calls
        .append_turn(v1::AppendTurnRequest {
            tenant_id: TENANT.into(),
            request_id: "after-erase".into(),
            call_id: call_id.clone(),
            speaker: "caller".into(),
            text: "hello again".into(),
            confidence: 1.0,
            language: String::new(),
            spoken_at_ms: 2,
        })
        .await
        .expect_err("an erased call takes no turn");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(
        refused
            .metadata()
            .get("x-switchboard-rejection")
            .and_then(|v| v.to_str().ok()),
        Some("CallErased")
    );
    // A second erase, through the CLI, answers like the first.
    let output = std::process::Command::new(binary())
        .args([
            "call",
            "erase",
            &call_id,
            "--reason",
            "asked twice",
            "-o",
            "json",
        ])
        .args([
            "--tenant",
            TENANT,
            "--endpoints",
            &cluster.grpc(leader),
            "--insecure",
        ])
        .output()
        .expect("run switchboard call erase");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let again: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json output");
    assert_eq!(
        again["eventsErased"], "6",
        "uint64 is a JSON string: {again}"
    );
    assert_eq!(
        again["call"]["erasure"]["position"],
        erasure.position.to_string()
    );

    // The running nodes clear their disks within the bound of the erase, the leader while a
    // follower is down (a purge must not wait for a node that is away).
    let running: Vec<u64> = ids.iter().copied().filter(|id| *id != stopped).collect();
    let remaining = wait_until_clear(&cluster, &running, &marker, erased_at + ERASURE_BOUND).await;
    assert!(
        remaining.is_empty(),
        "the erased marker is still on the running nodes' disks {} ms after the erase: \
         {remaining:?}",
        erased_at.elapsed().as_millis()
    );
    let running_clear_ms = erased_at.elapsed().as_millis();
    assert!(
        !files_holding(&cluster.nodes[&stopped].data_dir, &marker).is_empty(),
        "the stopped node still holds the marker: its own pass is what the rest proves"
    );

    // The stopped follower comes back after the erase committed and the leader purged its log
    // past it: it catches up (from a snapshot) and clears its own disk within the bound of
    // applying the erase.
    cluster.restart(stopped).expect("restart the follower");
    call_at(&cluster.grpc(stopped), &call_id, erase_index).await;
    let applied_at = Instant::now();
    let remaining = wait_until_clear(&cluster, &ids, &marker, applied_at + ERASURE_BOUND).await;
    assert!(
        remaining.is_empty(),
        "the erased marker is still on disk {} ms after the restarted node applied the erase: \
         {remaining:?}",
        applied_at.elapsed().as_millis()
    );
    eprintln!(
        "erased bytes left the running nodes' disks {running_clear_ms} ms after the erase, and \
         the restarted node's {} ms after it applied the erase",
        applied_at.elapsed().as_millis()
    );
}

/// Walks the data directories of `ids` until none holds `marker` or `deadline` passes; returns
/// the files still holding it.
async fn wait_until_clear(
    cluster: &ProcessCluster,
    ids: &[u64],
    marker: &str,
    deadline: Instant,
) -> Vec<PathBuf> {
    loop {
        let remaining: Vec<PathBuf> = ids
            .iter()
            .flat_map(|id| files_holding(&cluster.nodes[id].data_dir, marker))
            .collect();
        if remaining.is_empty() || Instant::now() >= deadline {
            return remaining;
        }
        tokio::time::sleep(POLL).await;
    }
}
