//! A real cluster: `switchboard serve` processes on loopback, driven over gRPC.

use std::time::{Duration, Instant};

use harness::{ProcessCluster, ServeCommand};
use proto::v1::call_service_client::CallServiceClient;
use proto::v1::cluster_service_client::ClusterServiceClient;
use proto::v1::{self, Consistency, ReadOptions};
use tonic::Code;

const LEADER_WAIT: Duration = Duration::from_secs(30);
const TENANT: &str = "acme";

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_switchboard"))
}

/// A connected channel to the node at `addr`, with the cluster's TLS.
async fn channel(cluster: &ProcessCluster, addr: &str) -> harness::AuthChannel {
    cluster.channel_to(addr).expect("endpoint")
}

async fn calls(cluster: &ProcessCluster, addr: &str) -> CallServiceClient<harness::AuthChannel> {
    CallServiceClient::new(channel(cluster, addr).await)
}

fn local(min_index: u64) -> Option<ReadOptions> {
    Some(ReadOptions {
        consistency: Consistency::Local.into(),
        min_index,
    })
}

fn create(request_id: &str) -> v1::CreateCallRequest {
    v1::CreateCallRequest {
        tenant_id: TENANT.into(),
        request_id: request_id.into(),
        source: "pstn:+15550100".into(),
        channel: v1::Channel::Voice.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_redirects_writes_to_the_leader() {
    let mut cluster = ProcessCluster::start(binary(), 3, &[]).expect("start cluster");
    let leader = cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    let follower = *cluster
        .nodes
        .keys()
        .find(|id| **id != leader)
        .expect("a follower");

    let status = calls(&cluster, &cluster.grpc(follower))
        .await
        .create_call(create("r-redirect"))
        .await
        .expect_err("a follower does not write");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status
            .metadata()
            .get(client::LEADER_ID_HEADER)
            .and_then(|v| v.to_str().ok()),
        Some(leader.to_string().as_str())
    );
    assert_eq!(
        status
            .metadata()
            .get(client::LEADER_ADDR_HEADER)
            .and_then(|v| v.to_str().ok()),
        Some(cluster.grpc(leader).as_str())
    );
    assert!(
        status.message().contains("not the leader"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_returns_the_same_call_at_a_given_index() {
    let mut cluster = ProcessCluster::start(binary(), 3, &[]).expect("start cluster");
    let leader = cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    let mut client = calls(&cluster, &cluster.grpc(leader)).await;
    let created = client
        .create_call(create("r-1"))
        .await
        .expect("create")
        .into_inner();
    let created = created.call.expect("call");
    // No trace id was given: the leader minted one, in W3C trace-id form.
    assert_eq!(created.trace_id.len(), 32, "{}", created.trace_id);
    assert!(
        created
            .trace_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{}",
        created.trace_id
    );
    assert_ne!(created.trace_id, "0".repeat(32));
    let call_id = created.call_id;
    let started = client
        .start_call(v1::StartCallRequest {
            tenant_id: TENANT.into(),
            request_id: "r-2".into(),
            call_id: call_id.clone(),
        })
        .await
        .expect("start")
        .into_inner();
    let index = started.meta.expect("meta").index;

    let mut seen = Vec::new();
    for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        // LOCAL with min_index on every node, followers included: read-your-writes.
        let response = calls(&cluster, &cluster.grpc(id))
            .await
            .get_call(v1::GetCallRequest {
                tenant_id: TENANT.into(),
                call_id: call_id.clone(),
                read: local(index),
            })
            .await
            .expect("local read with min_index")
            .into_inner();
        let meta = response.meta.expect("meta");
        assert!(
            meta.applied_index >= index,
            "node {id} served before applying {index}"
        );
        assert_eq!(meta.node_id, id);
        seen.push(response.call.expect("call"));
        // The default consistency (LINEARIZABLE) works on every node too.
        let linearizable = calls(&cluster, &cluster.grpc(id))
            .await
            .get_call(v1::GetCallRequest {
                tenant_id: TENANT.into(),
                call_id: call_id.clone(),
                read: None,
            })
            .await
            .expect("linearizable read")
            .into_inner();
        assert_eq!(
            linearizable.call.expect("call").state,
            v1::CallState::Active as i32
        );
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "nodes disagree: {seen:#?}"
    );
    assert_eq!(seen[0].state, v1::CallState::Active as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_naming_the_field_and_unknown_calls_are_not_found() {
    let mut cluster = ProcessCluster::start(binary(), 3, &[]).expect("start cluster");
    let leader = cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    let mut client = calls(&cluster, &cluster.grpc(leader)).await;

    let no_channel = v1::CreateCallRequest {
        channel: v1::Channel::Unspecified.into(),
        ..create("r-bad-1")
    };
    let status = client
        .create_call(no_channel)
        .await
        .expect_err("no channel");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("channel"), "{}", status.message());

    let created = client
        .create_call(create("r-ok"))
        .await
        .expect("create")
        .into_inner();
    let call_id = created.call.expect("call").call_id;
    client
        .start_call(v1::StartCallRequest {
            tenant_id: TENANT.into(),
            request_id: "r-start".into(),
            call_id: call_id.clone(),
        })
        .await
        .expect("start");
    let long_text = v1::AppendTurnRequest {
        tenant_id: TENANT.into(),
        request_id: "r-bad-2".into(),
        call_id: call_id.clone(),
        speaker: "caller".into(),
        text: "x".repeat(domain::limits::TURN_TEXT_BYTES_MAX + 1),
        confidence: 0.9,
        ..Default::default()
    };
    let status = client
        .append_turn(long_text)
        .await
        .expect_err("text too long");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("text"), "{}", status.message());
    assert!(
        status
            .message()
            .contains(&domain::limits::TURN_TEXT_BYTES_MAX.to_string()),
        "{}",
        status.message()
    );

    let status = client
        .start_call(v1::StartCallRequest {
            tenant_id: TENANT.into(),
            request_id: "r-bad-3".into(),
            call_id: "not-a-uuid".into(),
        })
        .await
        .expect_err("bad id");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("call_id"), "{}", status.message());

    let unknown = uuid::Uuid::now_v7().to_string();
    let status = client
        .start_call(v1::StartCallRequest {
            tenant_id: TENANT.into(),
            request_id: "r-bad-4".into(),
            call_id: unknown.clone(),
        })
        .await
        .expect_err("unknown call");
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains(&unknown));
    let status = client
        .get_call(v1::GetCallRequest {
            tenant_id: TENANT.into(),
            call_id: unknown,
            read: None,
        })
        .await
        .expect_err("unknown call read");
    assert_eq!(status.code(), Code::NotFound);

    // An illegal transition names the call, its state and the command.
    let status = client
        .start_call(v1::StartCallRequest {
            tenant_id: TENANT.into(),
            request_id: "r-bad-5".into(),
            call_id: call_id.clone(),
        })
        .await
        .expect_err("start twice");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains(&call_id) && status.message().contains("ACTIVE"));
}

fn listing(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("list") {
            let entry = entry.expect("entry");
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.push((entry.path(), meta.len()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_another_nodes_data_directory_and_leaves_it_untouched() {
    let mut cluster = ProcessCluster::start(binary(), 3, &[]).expect("start cluster");
    cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    cluster
        .stop(1, Duration::from_secs(10))
        .expect("stop node 1");
    let dir = cluster.nodes[&1].data_dir.clone();
    let before = listing(&dir);

    let port = || harness::free_port().expect("port");
    let certs = cluster.certs_dir().expect("tls").to_path_buf();
    let output = ServeCommand::new(2, format!("127.0.0.1:{}", port()), &dir)
        .http_listen(format!("127.0.0.1:{}", port()))
        .cluster_id(cluster.cluster_id())
        .extra_args([std::ffi::OsStr::new("--tls-dir"), certs.as_os_str()])
        .token_keys(
            cluster
                .token_dir()
                .expect("a secure cluster")
                .join("token-keys.json"),
        )
        .command(binary())
        .output()
        .expect("run serve");
    assert!(!output.status.success(), "serve must refuse the directory");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&dir.display().to_string()), "{stderr}");
    assert!(stderr.contains("belongs to node 1"), "{stderr}");
    assert_eq!(
        listing(&dir),
        before,
        "the refused directory must not change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_leader_is_killed_a_new_one_serves_writes_and_the_old_one_catches_up() {
    let mut cluster = ProcessCluster::start(binary(), 3, &[]).expect("start cluster");
    let old_leader = cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    let mut client = calls(&cluster, &cluster.grpc(old_leader)).await;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let response = client
            .create_call(create(&format!("before-{i}")))
            .await
            .expect("create");
        acknowledged.push(response.into_inner().call.expect("call").call_id);
    }

    cluster.kill(old_leader).expect("SIGKILL the leader");
    let killed_at = Instant::now();
    let new_leader = cluster
        .wait_for_leader(LEADER_WAIT)
        .await
        .expect("a new leader");
    assert_ne!(new_leader, old_leader);
    let mut client = calls(&cluster, &cluster.grpc(new_leader)).await;
    let response = client
        .create_call(create("after-kill"))
        .await
        .expect("write after failover");
    eprintln!(
        "leader SIGKILL to first successful write: {:?}",
        killed_at.elapsed()
    );
    let last_index = response.get_ref().meta.as_ref().expect("meta").index;
    acknowledged.push(response.into_inner().call.expect("call").call_id);

    // No acknowledged write is lost.
    for call_id in &acknowledged {
        client
            .get_call(v1::GetCallRequest {
                tenant_id: TENANT.into(),
                call_id: call_id.clone(),
                read: None,
            })
            .await
            .expect("acknowledged call survives failover");
    }

    cluster.restart(old_leader).expect("restart the old leader");
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        let read = async {
            let mut old = cluster
                .channel(old_leader)
                .map(CallServiceClient::new)
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            old.get_call(v1::GetCallRequest {
                tenant_id: TENANT.into(),
                call_id: acknowledged.last().expect("one call").clone(),
                read: local(last_index),
            })
            .await
        }
        .await;
        match read {
            Ok(_) => break,
            Err(status) if Instant::now() < deadline => {
                eprintln!("old leader not caught up yet: {}", status.message());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("old leader did not catch up: {status}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_added_after_a_purge_installs_a_snapshot_is_promoted_and_serves_reads() {
    let args = [
        "--snapshot-logs-since-last",
        "20",
        "--logs-kept-behind-snapshot",
        "0",
    ];
    let mut cluster = ProcessCluster::start(binary(), 3, &args).expect("start cluster");
    let leader = cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    let mut client = calls(&cluster, &cluster.grpc(leader)).await;
    let first = client
        .create_call(create("early"))
        .await
        .expect("create")
        .into_inner();
    let early_call = first.call.expect("call").call_id;
    for i in 0..60 {
        client
            .create_call(create(&format!("fill-{i}")))
            .await
            .expect("create");
    }
    let mut admin = ClusterServiceClient::new(channel(&cluster, &cluster.grpc(leader)).await);
    admin
        .trigger_snapshot(v1::TriggerSnapshotRequest {})
        .await
        .expect("snapshot");
    let deadline = Instant::now() + LEADER_WAIT;
    while cluster.status(leader).await.expect("status").purged_index == 0 {
        assert!(Instant::now() < deadline, "the leader never purged its log");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let learner = cluster
        .start_extra(4, &args)
        .expect("start node 4")
        .grpc
        .clone();
    admin
        .add_learner(v1::AddLearnerRequest {
            node_id: 4,
            addr: learner.clone(),
            region: "eu-west".into(),
        })
        .await
        .expect("add learner");
    admin
        .promote(v1::PromoteRequest { node_ids: vec![4] })
        .await
        .expect("promote");
    let status = cluster.status(leader).await.expect("status");
    assert!(
        status
            .members
            .iter()
            .any(|m| m.node_id == 4 && m.voter && m.region == "eu-west")
    );

    // The early call's log entry was purged: node 4 can only know it from the snapshot.
    let response = calls(&cluster, &learner)
        .await
        .get_call(v1::GetCallRequest {
            tenant_id: TENANT.into(),
            call_id: early_call.clone(),
            read: local(status.committed_index),
        })
        .await
        .expect("the new member serves reads")
        .into_inner();
    assert_eq!(response.call.expect("call").call_id, early_call);
    let learner_status = cluster.status(4).await.expect("node 4 status");
    assert!(
        learner_status.snapshot_index > 0,
        "node 4 caught up without a snapshot: {learner_status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_lifecycle_through_a_client_that_only_knows_a_follower() {
    use client::{Client, ClientConfig};
    let mut cluster = ProcessCluster::start(binary(), 3, &[]).expect("start cluster");
    let leader = cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    let follower = *cluster
        .nodes
        .keys()
        .find(|id| **id != leader)
        .expect("a follower");
    let client = Client::new(ClientConfig {
        endpoints: vec![cluster.grpc(follower)],
        ..cluster.client_config()
    })
    .expect("client");

    let created = client
        .create_call(create(""))
        .await
        .expect("create via follower");
    let call_id = created.call.expect("call").call_id;
    assert_eq!(
        client.leader().and_then(|l| l.id),
        Some(leader),
        "the redirect taught the leader"
    );
    let w = |request_id: &str| (TENANT.to_owned(), request_id.to_owned(), call_id.clone());
    let (tenant_id, request_id, id) = w("start");
    client
        .start_call(v1::StartCallRequest {
            tenant_id,
            request_id,
            call_id: id,
        })
        .await
        .expect("start");
    for (i, text) in ["my card was charged twice", "let me check that"]
        .iter()
        .enumerate()
    {
        let (tenant_id, request_id, call_id) = w(&format!("turn-{i}"));
        let turn = client
            .append_turn(v1::AppendTurnRequest {
                tenant_id,
                request_id,
                call_id,
                speaker: if i == 0 { "caller" } else { "agent" }.into(),
                text: (*text).into(),
                confidence: 0.9,
                language: "en-US".into(),
                spoken_at_ms: 1,
            })
            .await
            .expect("turn");
        assert_eq!(turn.turn.expect("turn").index, i as u64 + 1);
    }
    let (tenant_id, request_id, call_id) = w("handoff");
    let handoff = v1::RequestHandoffRequest {
        tenant_id,
        request_id,
        call_id,
        reason: "billing dispute".into(),
        urgency: v1::Urgency::High.into(),
        target: Some("billing".into()),
    };
    let handed = client
        .request_handoff(handoff.clone())
        .await
        .expect("handoff");
    let handoff_record = handed.call.expect("call").handoff.expect("handoff record");
    assert_eq!(
        handoff_record
            .snapshot
            .expect("snapshot")
            .recent_turns
            .len(),
        2
    );
    // The same request again is answered with the original outcome, not AlreadyHandedOff.
    let retried = client
        .request_handoff(handoff)
        .await
        .expect("retried handoff");
    let meta = retried.meta.expect("meta");
    assert!(meta.replayed);
    assert_eq!(meta.index, handed.meta.expect("meta").index);
    let (tenant_id, request_id, call_id) = w("end");
    let ended = client
        .end_call(v1::EndCallRequest {
            tenant_id,
            request_id,
            call_id: call_id.clone(),
            reason: "resolved".into(),
            resolution: "refund issued".into(),
        })
        .await
        .expect("end");
    assert_eq!(ended.call.expect("call").state, v1::CallState::Ended as i32);

    let events = client
        .list_call_events(v1::ListCallEventsRequest {
            tenant_id: TENANT.into(),
            call_id,
            ..Default::default()
        })
        .await
        .expect("events");
    let types: Vec<_> = events
        .events
        .iter()
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "call.created",
            "call.started",
            "turn.appended",
            "turn.appended",
            "call.handed_off",
            "call.ended"
        ]
    );
    let sequence: Vec<_> = events.events.iter().map(|e| e.sequence_number).collect();
    assert_eq!(sequence, [1, 2, 3, 4, 5, 6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served_on_the_grpc_port() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let mut cluster = ProcessCluster::start(binary(), 1, &[]).expect("start cluster");
    cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    let channel = channel(&cluster, &cluster.grpc(1)).await;
    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(HealthCheckRequest {
            service: "switchboard.v1.CallService".into(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(status.status, ServingStatus::Serving as i32);

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("stream")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for service in [
        "switchboard.v1.CallService",
        "switchboard.v1.EventService",
        "switchboard.v1.ClusterService",
    ] {
        assert!(names.contains(&service), "{service} missing from {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_min_index_the_node_never_reaches_fails_after_the_bounded_wait_saying_how_far_it_got() {
    let mut cluster =
        ProcessCluster::start(binary(), 1, &["--read-wait-ms-max", "300"]).expect("start cluster");
    cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    let mut client = calls(&cluster, &cluster.grpc(1)).await;
    let created = client
        .create_call(create("r-1"))
        .await
        .expect("create")
        .into_inner();
    let started = Instant::now();
    let status = client
        .get_call(v1::GetCallRequest {
            tenant_id: TENANT.into(),
            call_id: created.call.expect("call").call_id,
            read: local(1_000_000),
        })
        .await
        .expect_err("index 1000000 is never applied");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("1000000"), "{}", status.message());
    assert!(
        status.message().contains("has applied index"),
        "{}",
        status.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the wait is bounded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_raft_stops_on_a_storage_error_exits_and_recovers_on_restart() {
    let mut cluster = ProcessCluster::start(binary(), 3, &[]).expect("start cluster");
    let leader = cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    let victim = *cluster
        .nodes
        .keys()
        .find(|id| **id != leader)
        .expect("a follower");
    calls(&cluster, &cluster.grpc(leader))
        .await
        .create_call(create("fatal-before"))
        .await
        .expect("create");

    // Take the snapshot directory away: building a snapshot fails, which openraft treats as a
    // fatal storage error that stops Raft on that node.
    let snapshots = cluster.nodes[&victim].data_dir.join("snapshots");
    std::fs::remove_dir_all(&snapshots).expect("remove the snapshot directory");
    let mut admin = ClusterServiceClient::new(channel(&cluster, &cluster.grpc(victim)).await);
    let _ = admin.trigger_snapshot(v1::TriggerSnapshotRequest {}).await;

    let started = Instant::now();
    let status = loop {
        if let Some(status) = cluster.nodes.get_mut(&victim).and_then(|n| n.exit_status()) {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "node {victim} kept running with its Raft stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        status.code(),
        Some(1),
        "an error exit, not a signal: {status}"
    );

    // The others keep serving; the restarted node (as a supervisor would) catches up.
    let created = calls(&cluster, &cluster.grpc(leader))
        .await
        .create_call(create("fatal-after"))
        .await
        .expect("the cluster still takes writes")
        .into_inner();
    let index = created.meta.expect("meta").index;
    cluster.restart(victim).expect("restart");
    let started = Instant::now();
    loop {
        if let Ok(status) = cluster.status(victim).await
            && status.applied_index >= index
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "restarted node {victim} did not catch up to {index}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
