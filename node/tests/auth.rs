//! Authentication, roles and tenant isolation on the whole public API, against real nodes that
//! require bearer tokens.
//!
//! The RPCs are enumerated from the compiled service descriptors, not from a list kept here: a
//! new RPC without a case below fails `every_rpc_refuses_no_token_a_stranger_a_weaker_role_and_another_tenant`
//! until someone says what it may reveal to whom.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use client::{Client, ClientConfig};
use harness::ProcessCluster;
use prost::Message as _;
use proto::v1;
use tonic::Code;

const LEADER_WAIT: Duration = Duration::from_secs(30);

/// The text written into tenant acme's call; no answer to another tenant may contain it.
const SECRET: &str = "acme-secret-4716";

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_switchboard"))
}

fn client(cluster: &ProcessCluster, token: &str) -> Client {
    Client::new(cluster.client_config_with_token(token)).expect("client config")
}

/// Waits until a leader answers `Status` to an admin token; returns its gRPC address.
async fn leader_addr(cluster: &ProcessCluster, admin: &Client) -> String {
    let started = Instant::now();
    loop {
        if let Ok(status) = admin.status(v1::StatusRequest {}).await
            && status.leader_id.is_some()
            && !status.leader_addr.is_empty()
        {
            return status.leader_addr;
        }
        assert!(
            started.elapsed() < LEADER_WAIT,
            "no leader within {LEADER_WAIT:?} (cluster {})",
            cluster.root().display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// A codec that sends encoded requests as they are and hands back the response's bytes, so one
// loop can call every RPC by its path.
#[derive(Debug, Clone, Default)]
struct Raw;
#[derive(Debug, Clone, Default)]
struct RawEncoder;
#[derive(Debug, Clone, Default)]
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        buf.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf as _;
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

async fn call_raw(
    channel: &tonic::transport::Channel,
    path: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(body);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii token"),
        );
    }
    let streaming = proto::WATCH_RPC_PATHS.contains(&path);
    let path = http::uri::PathAndQuery::try_from(path).expect("rpc path");
    if !streaming {
        return grpc
            .unary(request, path, Raw)
            .await
            .map(tonic::Response::into_inner);
    }
    // A stream answers with messages until the caller leaves: what arrives in a second is the
    // answer (a refusal is the stream's status, before any message).
    let mut stream = grpc
        .server_streaming(request, path, Raw)
        .await?
        .into_inner();
    let mut body = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(message) = tokio::time::timeout_at(until, stream.message()).await {
        match message? {
            Some(bytes) => body.extend(bytes),
            None => break,
        }
    }
    Ok(body)
}

/// What an RPC needs and whom it concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Read,
    Write,
    Admin,
}

/// Builds an RPC's encoded request for a body tenant.
type RequestFor = Box<dyn Fn(&str) -> Vec<u8>>;

/// One RPC's case: what it needs, whether its body names a tenant and a call, and its request
/// for a body tenant.
struct Case {
    needs: Needs,
    names_tenant: bool,
    names_call: bool,
    request: RequestFor,
}

fn case(
    needs: Needs,
    names_tenant: bool,
    names_call: bool,
    request: impl Fn(&str) -> Vec<u8> + 'static,
) -> Case {
    Case {
        needs,
        names_tenant,
        names_call,
        request: Box::new(request),
    }
}

fn linearizable() -> Option<v1::ReadOptions> {
    Some(v1::ReadOptions {
        consistency: v1::Consistency::Linearizable.into(),
        min_index: 0,
    })
}

/// Every public RPC's case, by gRPC path, for a call of tenant acme.
fn cases(call_id: &str) -> BTreeMap<&'static str, Case> {
    let call = call_id.to_owned();
    let mut cases = BTreeMap::new();
    let id = move || call.clone();
    let rid = || uuid::Uuid::now_v7().to_string();
    cases.insert(
        "/switchboard.v1.CallService/CreateCall",
        case(Needs::Write, true, false, move |tenant| {
            v1::CreateCallRequest {
                tenant_id: tenant.to_owned(),
                request_id: rid(),
                source: "+15550100".to_owned(),
                channel: v1::Channel::Voice.into(),
                ..Default::default()
            }
            .encode_to_vec()
        }),
    );
    let c = id.clone();
    cases.insert(
        "/switchboard.v1.CallService/StartCall",
        case(Needs::Write, true, true, move |tenant| {
            v1::StartCallRequest {
                tenant_id: tenant.to_owned(),
                request_id: rid(),
                call_id: c(),
            }
            .encode_to_vec()
        }),
    );
    let c = id.clone();
    cases.insert(
        "/switchboard.v1.CallService/AppendTurn",
        case(Needs::Write, true, true, move |tenant| {
            v1::AppendTurnRequest {
                tenant_id: tenant.to_owned(),
                request_id: rid(),
                call_id: c(),
                speaker: "caller".to_owned(),
                text: "hello".to_owned(),
                ..Default::default()
            }
            .encode_to_vec()
        }),
    );
    let c = id.clone();
    cases.insert(
        "/switchboard.v1.CallService/LogEvent",
        case(Needs::Write, true, true, move |tenant| {
            v1::LogEventRequest {
                tenant_id: tenant.to_owned(),
                request_id: rid(),
                call_id: c(),
                event_type: "agent.note".to_owned(),
                ..Default::default()
            }
            .encode_to_vec()
        }),
    );
    let c = id.clone();
    cases.insert(
        "/switchboard.v1.CallService/UpdateContext",
        case(Needs::Write, true, true, move |tenant| {
            v1::UpdateContextRequest {
                tenant_id: tenant.to_owned(),
                request_id: rid(),
                call_id: c(),
                summary: Some("summary".to_owned()),
                ..Default::default()
            }
            .encode_to_vec()
        }),
    );
    let c = id.clone();
    cases.insert(
        "/switchboard.v1.CallService/RequestHandoff",
        case(Needs::Write, true, true, move |tenant| {
            v1::RequestHandoffRequest {
                tenant_id: tenant.to_owned(),
                request_id: rid(),
                call_id: c(),
                reason: "needs a human".to_owned(),
                urgency: v1::Urgency::High.into(),
                ..Default::default()
            }
            .encode_to_vec()
        }),
    );
    let c = id.clone();
    cases.insert(
        "/switchboard.v1.CallService/EndCall",
        case(Needs::Write, true, true, move |tenant| {
            v1::EndCallRequest {
                tenant_id: tenant.to_owned(),
                request_id: rid(),
                call_id: c(),
                reason: "done".to_owned(),
                ..Default::default()
            }
            .encode_to_vec()
        }),
    );
    let c = id.clone();
    cases.insert(
        "/switchboard.v1.CallService/EraseCall",
        case(Needs::Write, true, true, move |tenant| {
            v1::EraseCallRequest {
                tenant_id: tenant.to_owned(),
                request_id: rid(),
                call_id: c(),
                reason: "right to erasure".to_owned(),
            }
            .encode_to_vec()
        }),
    );
    let c = id.clone();
    cases.insert(
        "/switchboard.v1.CallService/GetCall",
        case(Needs::Read, true, true, move |tenant| {
            v1::GetCallRequest {
                tenant_id: tenant.to_owned(),
                call_id: c(),
                read: linearizable(),
            }
            .encode_to_vec()
        }),
    );
    let c = id.clone();
    cases.insert(
        "/switchboard.v1.CallService/GetContext",
        case(Needs::Read, true, true, move |tenant| {
            v1::GetContextRequest {
                tenant_id: tenant.to_owned(),
                call_id: c(),
                read: linearizable(),
                ..Default::default()
            }
            .encode_to_vec()
        }),
    );
    let c = id.clone();
    cases.insert(
        "/switchboard.v1.CallService/ListTurns",
        case(Needs::Read, true, true, move |tenant| {
            v1::ListTurnsRequest {
                tenant_id: tenant.to_owned(),
                call_id: c(),
                read: linearizable(),
                ..Default::default()
            }
            .encode_to_vec()
        }),
    );
    cases.insert(
        "/switchboard.v1.CallService/ListCalls",
        case(Needs::Read, true, false, |tenant| {
            v1::ListCallsRequest {
                tenant_id: tenant.to_owned(),
                read: linearizable(),
                ..Default::default()
            }
            .encode_to_vec()
        }),
    );
    let c = id.clone();
    cases.insert(
        "/switchboard.v1.EventService/ListCallEvents",
        case(Needs::Read, true, true, move |tenant| {
            v1::ListCallEventsRequest {
                tenant_id: tenant.to_owned(),
                call_id: c(),
                read: linearizable(),
                ..Default::default()
            }
            .encode_to_vec()
        }),
    );
    cases.insert(
        "/switchboard.v1.EventService/ListEvents",
        case(Needs::Read, false, false, |_| {
            v1::ListEventsRequest {
                read: linearizable(),
                ..Default::default()
            }
            .encode_to_vec()
        }),
    );
    let c = id.clone();
    cases.insert(
        "/switchboard.v1.EventService/QueryEvents",
        case(Needs::Read, true, true, move |tenant| {
            v1::QueryEventsRequest {
                tenant_id: tenant.to_owned(),
                call_id: c(),
                with_total: true,
                read: linearizable(),
                ..Default::default()
            }
            .encode_to_vec()
        }),
    );
    cases.insert(
        "/switchboard.v1.EventService/EventStats",
        case(Needs::Read, true, false, |tenant| {
            v1::EventStatsRequest {
                tenant_id: tenant.to_owned(),
                read: linearizable(),
                ..Default::default()
            }
            .encode_to_vec()
        }),
    );
    let c = id.clone();
    cases.insert(
        "/switchboard.v1.ActivityService/RecordActivity",
        case(Needs::Write, true, true, move |tenant| {
            v1::RecordActivityRequest {
                tenant_id: tenant.to_owned(),
                request_id: rid(),
                entries: vec![v1::ActivityEntry {
                    activity_type: v1::ActivityType::Progress.into(),
                    activity: Some(v1::Activity {
                        agent_type: "agent-api".to_owned(),
                        agent_name: "API".to_owned(),
                        task_id: "t".to_owned(),
                        severity: v1::Severity::Info.into(),
                        status: v1::ActivityStatus::InProgress.into(),
                        ..Default::default()
                    }),
                    call_id: c(),
                    ..Default::default()
                }],
            }
            .encode_to_vec()
        }),
    );
    cases.insert(
        "/switchboard.v1.ActivityService/SetRetention",
        case(Needs::Admin, true, false, move |tenant| {
            v1::SetRetentionRequest {
                tenant_id: tenant.to_owned(),
                request_id: rid(),
                max_records: 1_000_000,
                ..Default::default()
            }
            .encode_to_vec()
        }),
    );
    cases.insert(
        "/switchboard.v1.ActivityService/CompactActivity",
        case(Needs::Admin, true, false, move |tenant| {
            v1::CompactActivityRequest {
                tenant_id: tenant.to_owned(),
                request_id: rid(),
            }
            .encode_to_vec()
        }),
    );
    let c = id.clone();
    cases.insert(
        "/switchboard.v1.WatchService/WatchEvents",
        case(Needs::Read, true, true, move |tenant| {
            v1::WatchEventsRequest {
                tenant_id: tenant.to_owned(),
                call_id: c(),
                from_position: Some(1),
                progress_interval_ms: 100,
                ..Default::default()
            }
            .encode_to_vec()
        }),
    );
    cases.insert(
        "/switchboard.v1.ClusterService/Status",
        case(Needs::Read, false, false, |_| {
            v1::StatusRequest {}.encode_to_vec()
        }),
    );
    cases.insert(
        "/switchboard.v1.ClusterService/ReadIndex",
        case(Needs::Read, false, false, |_| {
            v1::ReadIndexRequest {}.encode_to_vec()
        }),
    );
    cases.insert(
        "/switchboard.v1.ClusterService/AddLearner",
        case(Needs::Admin, false, false, |_| {
            v1::AddLearnerRequest {
                node_id: 42,
                addr: "127.0.0.1:1".to_owned(),
                region: String::new(),
            }
            .encode_to_vec()
        }),
    );
    cases.insert(
        "/switchboard.v1.ClusterService/Promote",
        case(Needs::Admin, false, false, |_| {
            v1::PromoteRequest { node_ids: vec![42] }.encode_to_vec()
        }),
    );
    cases.insert(
        "/switchboard.v1.ClusterService/Remove",
        case(Needs::Admin, false, false, |_| {
            v1::RemoveRequest { node_ids: vec![2] }.encode_to_vec()
        }),
    );
    cases.insert(
        "/switchboard.v1.ClusterService/TriggerSnapshot",
        case(Needs::Admin, false, false, |_| {
            v1::TriggerSnapshotRequest {}.encode_to_vec()
        }),
    );
    cases.insert(
        "/switchboard.v1.ClusterService/Initialize",
        case(Needs::Admin, false, false, |_| {
            v1::InitializeRequest {
                members: vec![v1::Member {
                    node_id: 42,
                    addr: "127.0.0.1:1".to_owned(),
                    ..Default::default()
                }],
            }
            .encode_to_vec()
        }),
    );
    cases.insert(
        "/switchboard.v1.ClusterService/Digest",
        case(Needs::Admin, false, false, |_| {
            v1::DigestRequest {}.encode_to_vec()
        }),
    );
    cases
}

/// Every RPC of the public services, from the compiled descriptors.
fn public_rpc_paths() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set decodes");
    let mut paths = Vec::new();
    for file in set.file {
        let package = file.package().to_owned();
        if package != "switchboard.v1" {
            continue;
        }
        for service in &file.service {
            for method in &service.method {
                paths.push(format!("/{package}.{}/{}", service.name(), method.name()));
            }
        }
    }
    paths.sort();
    paths
}

/// A response body that must not carry tenant acme's data.
fn assert_no_secret(path: &str, who: &str, body: &[u8]) {
    let text = String::from_utf8_lossy(body);
    assert!(
        !text.contains(SECRET),
        "{path} answered {who} with tenant acme's data"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_no_token_a_stranger_a_weaker_role_and_another_tenant() {
    let cluster = ProcessCluster::start(binary(), 3, &[]).expect("start cluster");
    let token = |subject: &str, tenant: &str, role: &str| {
        cluster.token(subject, tenant, role).expect("issue token")
    };
    let admin = token("ops", "*", "admin");
    let acme_agent = token("acme-worker", "acme", "agent");
    let acme_viewer = token("acme-console", "acme", "viewer");
    let globex_agent = token("globex-worker", "globex", "agent");
    let globex_viewer = token("globex-console", "globex", "viewer");
    // A token signed by a key this cluster never published.
    let stranger_dir = tempfile::tempdir().expect("temp dir");
    let keygen = std::process::Command::new(binary())
        .args(["token", "keygen", "--dir"])
        .arg(stranger_dir.path())
        .output()
        .expect("run keygen");
    assert!(keygen.status.success(), "{keygen:?}");
    let issued = std::process::Command::new(binary())
        .args([
            "token", "issue", "--tenant", "acme", "--role", "admin", "--key",
        ])
        .arg(stranger_dir.path().join("token-signing-k1.pem"))
        .output()
        .expect("run issue");
    assert!(issued.status.success(), "{issued:?}");
    let stranger = String::from_utf8_lossy(&issued.stdout).trim().to_owned();

    let admin_client = client(&cluster, &admin);
    let leader = leader_addr(&cluster, &admin_client).await;
    let acme = client(&cluster, &acme_agent);
    let call = acme
        .create_call(v1::CreateCallRequest {
            source: SECRET.to_owned(),
            channel: v1::Channel::Voice.into(),
            ..Default::default()
        })
        .await
        .expect("acme creates a call")
        .call
        .expect("call");
    assert_eq!(call.tenant_id, "acme", "the tenant comes from the token");
    acme.start_call(v1::StartCallRequest {
        call_id: call.call_id.clone(),
        ..Default::default()
    })
    .await
    .expect("acme starts its call");
    acme.append_turn(v1::AppendTurnRequest {
        call_id: call.call_id.clone(),
        speaker: "caller".to_owned(),
        text: format!("my code is {SECRET}"),
        ..Default::default()
    })
    .await
    .expect("acme appends a turn");

    let channel = client::endpoint(&leader, cluster.tls())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the leader");
    let cases = cases(&call.call_id);
    let paths = public_rpc_paths();
    assert!(paths.len() >= 20, "descriptors list {paths:?}");
    let missing: Vec<&String> = paths
        .iter()
        .filter(|p| !cases.contains_key(p.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "no case for {missing:?}: say what each may reveal to whom in tests/auth.rs"
    );

    for path in &paths {
        let case = &cases[path.as_str()];
        let body = || (case.request)("");
        let code = |result: &Result<Vec<u8>, tonic::Status>| match result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };

        // Nobody, a made-up token and a token of another key set: not known.
        for (who, token) in [
            ("no token", None),
            ("a malformed token", Some("not.a.jwt")),
            ("a token of another key set", Some(stranger.as_str())),
        ] {
            let result = call_raw(&channel, path, body(), token).await;
            assert_eq!(
                code(&result),
                Code::Unauthenticated,
                "{path} with {who}: {result:?}"
            );
        }

        // A weaker role than the RPC needs.
        let weaker = match case.needs {
            Needs::Read => None,
            Needs::Write => Some(("a viewer", &acme_viewer)),
            Needs::Admin => Some(("an agent", &acme_agent)),
        };
        if let Some((who, token)) = weaker {
            let result = call_raw(&channel, path, (case.request)("acme"), Some(token)).await;
            assert_eq!(
                code(&result),
                Code::PermissionDenied,
                "{path} as {who}: {result:?}"
            );
            if let Err(status) = &result {
                assert!(
                    status.message().contains("may not call"),
                    "{path}: {status:?}"
                );
            }
        }

        // Another tenant: naming acme is refused, and with its own tenant acme's call does not
        // exist and no answer carries acme's data.
        let foreign = if case.needs == Needs::Read {
            &globex_viewer
        } else {
            &globex_agent
        };
        if case.names_tenant {
            let result = call_raw(&channel, path, (case.request)("acme"), Some(foreign)).await;
            assert_eq!(
                code(&result),
                Code::PermissionDenied,
                "{path} naming tenant acme with a globex token: {result:?}"
            );
        }
        if case.needs != Needs::Admin {
            let result = call_raw(&channel, path, (case.request)(""), Some(foreign)).await;
            if case.names_call {
                assert_eq!(
                    code(&result),
                    Code::NotFound,
                    "{path} on acme's call with a globex token: {result:?}"
                );
            }
            if let Ok(bytes) = &result {
                assert_no_secret(path, "tenant globex", bytes);
            }
        }

        // The owner reads its own call: the cases above can tell a refusal from an answer.
        if case.needs == Needs::Read {
            let result = call_raw(&channel, path, (case.request)(""), Some(&acme_viewer)).await;
            assert_eq!(
                code(&result),
                Code::Ok,
                "{path} as acme's viewer: {result:?}"
            );
        }
    }

    // The cluster-wide log: the admin sees acme's events, globex sees none of them.
    let all = admin_client
        .list_events(v1::ListEventsRequest {
            read: linearizable(),
            ..Default::default()
        })
        .await
        .expect("admin lists events");
    assert!(all.events.iter().any(|e| e.tenant_id == "acme"));
    let scoped = client(&cluster, &globex_viewer)
        .list_events(v1::ListEventsRequest {
            read: linearizable(),
            ..Default::default()
        })
        .await
        .expect("globex lists events");
    assert!(
        scoped.events.iter().all(|e| e.tenant_id == "globex"),
        "globex saw {:?}",
        scoped.events
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_signing_key_is_accepted_after_sighup_without_a_restart() {
    let cluster = ProcessCluster::start(binary(), 3, &[]).expect("start cluster");
    let admin = client(
        &cluster,
        &cluster.token("ops", "*", "admin").expect("admin token"),
    );
    leader_addr(&cluster, &admin).await;
    let dir = cluster.token_dir().expect("token dir").to_owned();
    let keygen = std::process::Command::new(binary())
        .args(["token", "keygen", "--kid", "k2", "--dir"])
        .arg(&dir)
        .output()
        .expect("run keygen");
    assert!(keygen.status.success(), "{keygen:?}");
    let issued = std::process::Command::new(binary())
        .args([
            "token", "issue", "--tenant", "acme", "--role", "agent", "--key",
        ])
        .arg(dir.join("token-signing-k2.pem"))
        .output()
        .expect("run issue");
    assert!(issued.status.success(), "{issued:?}");
    let new_token = String::from_utf8_lossy(&issued.stdout).trim().to_owned();
    let new_client = client(&cluster, &new_token);

    let status = new_client
        .status(v1::StatusRequest {})
        .await
        .expect_err("a key the nodes have not loaded");
    assert_eq!(status.code, Code::Unauthenticated, "{status:?}");

    for node in cluster.nodes.values() {
        let pid = node.pid().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits")),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("send SIGHUP");
    }
    let started = Instant::now();
    loop {
        match new_client.status(v1::StatusRequest {}).await {
            Ok(_) => break,
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(10),
                "the new key is still refused after SIGHUP: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The old key still works during the rotation, and the nodes kept serving.
    admin
        .status(v1::StatusRequest {})
        .await
        .expect("the old key still verifies");
    let created = new_client
        .create_call(v1::CreateCallRequest {
            source: "+15550100".to_owned(),
            channel: v1::Channel::Voice.into(),
            ..Default::default()
        })
        .await
        .expect("a write with the new key");
    assert_eq!(created.call.expect("call").tenant_id, "acme");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_are_audit_events_with_their_actor_and_nobody_writes_the_trail() {
    let mut cluster = ProcessCluster::start(binary(), 3, &[]).expect("start cluster");
    let admin = client(
        &cluster,
        &cluster
            .token("ops@example", "*", "admin")
            .expect("admin token"),
    );

    // Refused admin actions are recorded too, with their outcome.
    let bad = admin
        .add_learner(v1::AddLearnerRequest {
            node_id: 9,
            addr: "not an address".to_owned(),
            region: String::new(),
        })
        .await
        .expect_err("an unparseable address");
    assert_eq!(bad.code, Code::InvalidArgument, "{bad:?}");
    let not_member = admin
        .remove(v1::RemoveRequest { node_ids: vec![77] })
        .await
        .expect_err("node 77 is not a member");
    assert_eq!(not_member.code, Code::InvalidArgument, "{not_member:?}");
    assert!(not_member.message.contains("77"), "{not_member:?}");
    // A snapshot asked of the leader itself: only the leader writes the trail (a follower logs
    // it), so it is asked again if leadership moved between finding the leader and the call.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let leader = cluster
            .wait_for_leader(LEADER_WAIT)
            .await
            .expect("the nodes agree on a leader");
        let leader_only = Client::new(ClientConfig {
            endpoints: vec![cluster.grpc(leader)],
            ..admin.config().clone()
        })
        .expect("client config");
        leader_only
            .trigger_snapshot(v1::TriggerSnapshotRequest {})
            .await
            .expect("snapshot");
        let still = cluster.status(leader).await.expect("status of the leader");
        if still.leader_id == Some(leader) {
            break;
        }
        assert!(attempts < 5, "leadership kept moving");
    }

    let events = admin
        .list_events(v1::ListEventsRequest {
            read: linearizable(),
            ..Default::default()
        })
        .await
        .expect("admin lists events")
        .events;
    let audit: Vec<(String, String, String)> = events
        .iter()
        .filter(|e| e.event_type.starts_with("admin."))
        .map(|e| {
            assert_eq!(e.tenant_id, "_cluster");
            (
                e.event_type.clone(),
                e.metadata.get("actor").cloned().unwrap_or_default(),
                e.metadata.get("outcome").cloned().unwrap_or_default(),
            )
        })
        .collect();
    let expect =
        |t: &str, outcome: &str| (t.to_owned(), "ops@example".to_owned(), outcome.to_owned());
    assert_eq!(
        audit,
        vec![
            expect("admin.add_learner", "error"),
            expect("admin.remove", "error"),
            expect("admin.trigger_snapshot", "ok"),
        ]
    );

    // The trail's tenant takes no client writes, not even an admin's.
    let forged = admin
        .create_call(v1::CreateCallRequest {
            tenant_id: "_cluster".to_owned(),
            source: "forged".to_owned(),
            channel: v1::Channel::Chat.into(),
            ..Default::default()
        })
        .await
        .expect_err("the reserved tenant");
    assert_eq!(forged.code, Code::PermissionDenied, "{forged:?}");
    // Tenants do not see the trail.
    let agent = client(
        &cluster,
        &cluster.token("w", "acme", "agent").expect("agent token"),
    );
    let seen = agent
        .list_events(v1::ListEventsRequest {
            read: linearizable(),
            ..Default::default()
        })
        .await
        .expect("agent lists events")
        .events;
    assert!(seen.iter().all(|e| e.tenant_id == "acme"), "{seen:?}");
}
