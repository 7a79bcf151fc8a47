//! The Raft transport end to end: in-process nodes on loopback gRPC elect a leader, replicate
//! and apply writes, catch a new node up by streaming a snapshot after the log was purged, and
//! refuse what another cluster, another node or a broken snapshot stream sends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use domain::{Channel, Command, Request, Stamp};
use node::Raft;
use node::transport::{NetworkFactory, TransportConfig, raft_service};
use openraft::errors::RPCError;
use openraft::network::RPCOption;
use openraft::network::v2::RaftNetworkV2;
use openraft::raft::VoteRequest;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::{RaftNetworkFactory, SnapshotPolicy};
use proto::raft_v1::raft_service_client::RaftServiceClient;
use proto::raft_v1::snapshot_chunk::Kind;
use proto::raft_v1::{RaftPayload, SnapshotChunk, SnapshotHeader, SnapshotTrailer};
use raft_store::snapshot::SnapshotDir;
use raft_store::{Identity, Member, Reader, SnapshotMeta, TypeConfig, Vote};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use uuid::Uuid;

const CLUSTER: &str = "transport-test";
/// Bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(20);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn raft_config() -> Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: CLUSTER.to_owned(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        install_snapshot_timeout: 2_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(50),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        enable_pre_vote: Some(true),
        ..Default::default()
    };
    Arc::new(config.validate().expect("test raft config is valid"))
}

fn transport_config(node_id: u64) -> TransportConfig {
    let config = TransportConfig {
        cluster_id: CLUSTER.to_owned(),
        node_id,
        rpc_timeout: Duration::from_secs(1),
        snapshot_timeout: Duration::from_secs(30),
        // The smallest chunk, so that even a small snapshot travels in many messages.
        snapshot_chunk_bytes: node::transport::SNAPSHOT_CHUNK_BYTES_MIN,
        connect_timeout: Duration::from_millis(500),
        // In-process plaintext nodes: nothing to authenticate with.
        authenticate_peers: false,
        initial_members: Default::default(),
    };
    config.validate().expect("test transport config is valid");
    config
}

/// One node: its store, its Raft and its gRPC server on a loopback port.
struct TestNode {
    id: u64,
    addr: String,
    raft: Raft,
    reader: Reader,
    snapshots: SnapshotDir,
    stop: CancellationToken,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    _dir: TempDir,
}

impl TestNode {
    async fn start(id: u64) -> TestNode {
        let dir = tempfile::tempdir().expect("create temp dir");
        let store = raft_store::open(dir.path(), &Identity::new(CLUSTER, id)).expect("open store");
        let reader = store.state_machine.reader();
        let snapshots = store.state_machine.snapshot_dir().clone();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound address").to_string();
        let config = transport_config(id);
        let raft = Raft::new(
            id,
            raft_config(),
            NetworkFactory::new(config.clone()),
            store.log,
            store.state_machine,
        )
        .await
        .expect("start raft");
        let service = raft_service(
            raft.clone(),
            config,
            snapshots.clone(),
            node::transport::LeaderContact::new(),
        );
        let stop = CancellationToken::new();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(listener),
                    stop.clone().cancelled_owned(),
                ),
        );
        TestNode {
            id,
            addr,
            raft,
            reader,
            snapshots,
            stop,
            server,
            _dir: dir,
        }
    }

    fn member(&self) -> Member {
        Member::new(self.addr.clone(), "test")
    }

    async fn client(&self) -> RaftServiceClient<tonic::transport::Channel> {
        RaftServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect to test node")
    }

    async fn stop(self) {
        self.raft.shutdown().await.expect("raft shuts down");
        self.stop.cancel();
        self.server
            .await
            .expect("server task joins")
            .expect("server stops cleanly");
    }
}

async fn stop_all(nodes: Vec<TestNode>) {
    for node in nodes {
        node.stop().await;
    }
}

/// Starts nodes 1..=n and initializes the cluster from node 1; returns them with the leader id.
async fn start_cluster(n: u64) -> (Vec<TestNode>, u64) {
    let mut nodes = Vec::new();
    for id in 1..=n {
        nodes.push(TestNode::start(id).await);
    }
    let members: BTreeMap<u64, Member> = nodes.iter().map(|n| (n.id, n.member())).collect();
    nodes[0]
        .raft
        .initialize(members)
        .await
        .expect("initialize the cluster");
    let leader = wait_for_leader(&nodes).await;
    (nodes, leader)
}

/// Waits until every node knows the same leader, one of `nodes`; returns its id.
async fn wait_for_leader(nodes: &[TestNode]) -> u64 {
    let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
    let metrics = nodes[0]
        .raft
        .wait(Some(WAIT))
        .metrics(
            |m| m.current_leader.is_some_and(|l| ids.contains(&l)),
            "one of the nodes is elected leader",
        )
        .await
        .expect("a leader is elected in time");
    let leader = metrics.current_leader.expect("checked by the wait");
    for node in nodes {
        node.raft
            .wait(Some(WAIT))
            .metrics(
                |m| m.current_leader == Some(leader),
                format!("node {} knows leader {leader}", node.id),
            )
            .await
            .expect("every node learns the leader in time");
    }
    node(nodes, leader)
        .raft
        .wait(Some(WAIT))
        .leader_with_quorum_acked(None, format!("leader {leader} hears from a quorum"))
        .await
        .expect("the leader confirms its lease in time");
    leader
}

fn node(nodes: &[TestNode], id: u64) -> &TestNode {
    nodes
        .iter()
        .find(|n| n.id == id)
        .expect("the node is part of the test")
}

fn create_call(n: u64) -> Request {
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64;
    Request {
        tenant_id: "tenant-a".to_owned(),
        request_id: format!("req-{n}"),
        command: Command::CreateCall {
            source: format!("+1555{n:07}"),
            channel: Channel::Voice,
            metadata: BTreeMap::new(),
            trace_id: None,
        },
        stamp: Stamp {
            at_ms,
            minted_call_id: Some(Uuid::now_v7()),
            minted_trace_id: None,
        },
        redactions: Default::default(),
    }
}

/// Proposes `count` CreateCalls through whichever node leads; returns the log index of the last
/// one. A refused write (leader lease not yet confirmed, leadership moving) is retried with the
/// same request id, as the client library does, so a retry is answered, never applied twice.
async fn write_calls(nodes: &[&TestNode], first: u64, count: u64) -> u64 {
    let mut last = 0;
    for n in first..first + count {
        let request = create_call(n);
        let deadline = Instant::now() + WAIT;
        let response = loop {
            let leader = nodes
                .iter()
                .find(|node| node.raft.metrics().borrow_watched().current_leader == Some(node.id));
            if let Some(leader) = leader {
                match leader
                    .raft
                    .client_write(raft_store::Proposal(request.clone()))
                    .await
                {
                    Ok(response) => break response,
                    Err(error) if error.forward_to_leader().is_some() => {}
                    Err(error) => panic!("write {n} failed: {error}"),
                }
            }
            assert!(
                Instant::now() < deadline,
                "write {n} found no writable leader in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let outcome = response.data.outcome.expect("a request has an outcome");
        assert!(outcome.result.is_ok(), "call {n} was rejected: {outcome:?}");
        last = response.log_id.index;
    }
    last
}

/// Waits until every node has applied at least `index` and all state digests are equal.
async fn wait_converged(nodes: &[&TestNode], index: u64) {
    for node in nodes {
        node.raft
            .wait(Some(WAIT))
            .applied_index_at_least(Some(index), format!("node {} applies {index}", node.id))
            .await
            .expect("every node applies the writes in time");
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let digests: Vec<_> = nodes
            .iter()
            .map(|n| (n.id, n.reader.digest().expect("read the state digest")))
            .collect();
        let (_, first) = &digests[0];
        if digests
            .iter()
            .all(|(_, d)| d.applied_index == first.applied_index && d.value == first.value)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "state machines did not converge on one digest: {:?}",
            digests
                .iter()
                .map(|(id, d)| (id, d.applied_index))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("list directory")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect()
}

fn incoming_dir(snapshots: &SnapshotDir) -> PathBuf {
    snapshots
        .incoming_path("probe")
        .parent()
        .expect("incoming path has a parent")
        .to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_replicate_and_apply_writes() {
    init_tracing();
    let (nodes, _) = start_cluster(3).await;
    let all: Vec<&TestNode> = nodes.iter().collect();
    let last = write_calls(&all, 0, 20).await;
    wait_converged(&all, last).await;
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_node_catches_up_from_a_streamed_snapshot_after_purge() {
    init_tracing();
    let (nodes, leader_id) = start_cluster(3).await;
    let leader = node(&nodes, leader_id);
    let voters: Vec<&TestNode> = nodes.iter().collect();
    let last = write_calls(&voters, 0, 120).await;
    wait_converged(&voters, last).await;

    leader
        .raft
        .trigger()
        .snapshot()
        .await
        .expect("trigger a snapshot");
    let metrics = leader
        .raft
        .wait(Some(WAIT))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= last),
            "the leader snapshots every write",
        )
        .await
        .expect("the leader builds a snapshot in time");
    let snapshot_index = metrics.snapshot.expect("checked by the wait").index;
    let metrics = leader
        .raft
        .wait(Some(WAIT))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index >= snapshot_index),
            "the leader purges its log behind the snapshot",
        )
        .await
        .expect("the leader purges in time");
    let purged_index = metrics.purged.expect("checked by the wait").index;

    let learner = TestNode::start(4).await;
    leader
        .raft
        .add_learner(4, learner.member(), true)
        .await
        .expect("add node 4 as a learner");
    let learner_metrics = learner
        .raft
        .wait(Some(WAIT))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= snapshot_index),
            "node 4 installs the leader's snapshot",
        )
        .await
        .expect("node 4 installs a snapshot in time");
    let learner_purged = learner_metrics
        .purged
        .expect("installing a snapshot purges the log behind it");
    assert!(
        learner_purged.index >= purged_index,
        "node 4's log starts at {} but the leader purged up to {purged_index}",
        learner_purged.index + 1,
    );

    let mut all: Vec<&TestNode> = nodes.iter().collect();
    all.push(&learner);
    wait_converged(&all, last).await;

    // Writes after the snapshot reach the learner through the log.
    let last = write_calls(&voters, 1_000, 5).await;
    wait_converged(&all, last).await;

    assert_eq!(
        files_in(&incoming_dir(&learner.snapshots)),
        Vec::<PathBuf>::new(),
        "a received snapshot leaves nothing in incoming/"
    );
    assert_eq!(
        files_in(learner.snapshots.path()).len(),
        1,
        "the received snapshot is kept as the learner's own"
    );

    learner.stop().await;
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn survivors_elect_a_new_leader_when_the_leader_stops() {
    init_tracing();
    let (mut nodes, old_leader) = start_cluster(3).await;
    let all: Vec<&TestNode> = nodes.iter().collect();
    let last = write_calls(&all, 0, 10).await;
    wait_converged(&all, last).await;

    let position = nodes
        .iter()
        .position(|n| n.id == old_leader)
        .expect("the leader is one of the nodes");
    nodes.remove(position).stop().await;
    // Pre-vote and vote now travel between the survivors, while every RPC to the stopped node
    // fails as unreachable.
    let new_leader = wait_for_leader(&nodes).await;
    assert_ne!(new_leader, old_leader);

    let survivors: Vec<&TestNode> = nodes.iter().collect();
    let last = write_calls(&survivors, 100, 10).await;
    wait_converged(&survivors, last).await;
    stop_all(nodes).await;
}

fn payload(cluster_id: &str, from: u64, to: u64, data: Vec<u8>) -> RaftPayload {
    RaftPayload {
        data,
        cluster_id: cluster_id.to_owned(),
        from_node_id: from,
        to_node_id: to,
    }
}

fn vote_request_bytes() -> Vec<u8> {
    let request = VoteRequest::<TypeConfig>::new(Vote::new(1, 9), None);
    postcard::to_stdvec(&request).expect("a vote request encodes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_from_another_cluster_is_refused() {
    init_tracing();
    let target = TestNode::start(1).await;
    let mut client = target.client().await;

    let status = client
        .vote(payload("other-cluster", 9, 1, vote_request_bytes()))
        .await
        .expect_err("another cluster's vote is refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        !status.message().contains(CLUSTER) && status.message().contains("other-cluster"),
        "the refusal names the caller's cluster id, never the node's own: {status:?}"
    );

    let status = client
        .append_entries(payload("other-cluster", 9, 1, Vec::new()))
        .await
        .expect_err("another cluster's append entries is refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    let status = client
        .vote(payload(CLUSTER, 9, 2, vote_request_bytes()))
        .await
        .expect_err("a vote meant for another node is refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    let status = client
        .pre_vote(payload(CLUSTER, 9, 1, vec![0xff, 0xff]))
        .await
        .expect_err("an undecodable pre-vote is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // The same vote from this cluster, for this node, is answered.
    let reply = client
        .vote(payload(CLUSTER, 9, 1, vote_request_bytes()))
        .await
        .expect("a vote from this cluster is answered")
        .into_inner();
    assert_eq!(reply.from_node_id, 1);
    assert_eq!(reply.cluster_id, CLUSTER);

    target.stop().await;
}

fn header(cluster_id: &str, size_bytes: u64) -> SnapshotChunk {
    let meta = SnapshotMeta {
        last_log_id: Some(raft_store::LogId::new(
            openraft::impls::leader_id_adv::LeaderId {
                term: 1,
                node_id: 9,
            },
            10,
        )),
        last_membership: Default::default(),
    };
    SnapshotChunk {
        kind: Some(Kind::Header(SnapshotHeader {
            vote: postcard::to_stdvec(&Vote::new(1, 9)).expect("a vote encodes"),
            meta: postcard::to_stdvec(&meta).expect("snapshot meta encodes"),
            size_bytes,
            cluster_id: cluster_id.to_owned(),
            from_node_id: 9,
            to_node_id: 1,
        })),
    }
}

fn data(bytes: &[u8]) -> SnapshotChunk {
    SnapshotChunk {
        kind: Some(Kind::Data(bytes.to_vec())),
    }
}

fn trailer(bytes: &[u8]) -> SnapshotChunk {
    SnapshotChunk {
        kind: Some(Kind::Trailer(SnapshotTrailer {
            size_bytes: bytes.len() as u64,
            sha256: Sha256::digest(bytes).to_vec(),
        })),
    }
}

async fn send_snapshot(target: &TestNode, chunks: Vec<SnapshotChunk>) -> tonic::Status {
    target
        .client()
        .await
        .install_snapshot(tokio_stream::iter(chunks))
        .await
        .expect_err("the snapshot stream is refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_snapshot_streams_are_refused_and_leave_no_file() {
    init_tracing();
    let target = TestNode::start(1).await;
    let body = b"not a snapshot at all".repeat(100);

    let status = send_snapshot(&target, vec![header("other-cluster", 0)]).await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("other-cluster"), "{status:?}");

    let status = send_snapshot(&target, vec![data(&body), trailer(&body)]).await;
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "no header first: {status:?}"
    );

    let status = send_snapshot(&target, vec![]).await;
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "empty stream: {status:?}"
    );

    let size = body.len() as u64;
    let status = send_snapshot(&target, vec![header(CLUSTER, size), data(&body[..100])]).await;
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "no trailer: {status:?}"
    );

    let status = send_snapshot(
        &target,
        vec![header(CLUSTER, 10), data(&body), trailer(&body)],
    )
    .await;
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "more than announced: {status:?}"
    );

    let mut corrupt = body.clone();
    corrupt[0] ^= 1;
    let status = send_snapshot(
        &target,
        vec![header(CLUSTER, size), data(&corrupt), trailer(&body)],
    )
    .await;
    assert_eq!(status.code(), Code::DataLoss, "digest mismatch: {status:?}");

    let status = send_snapshot(
        &target,
        vec![
            header(CLUSTER, node::transport::SNAPSHOT_BYTES_MAX + 1),
            data(&body),
        ],
    )
    .await;
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "too large: {status:?}"
    );

    // Intact in transit but not a snapshot: refused before the state machine sees it, which
    // would otherwise stop the node on a storage error.
    let status = send_snapshot(
        &target,
        vec![header(CLUSTER, size), data(&body), trailer(&body)],
    )
    .await;
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "not a snapshot: {status:?}"
    );

    // A sender that goes away mid-stream leaves nothing behind either.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut client = target.client().await;
    let call = tokio::spawn(async move {
        client
            .install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tx.send(header(CLUSTER, size)).await.expect("send header");
    tx.send(data(&body[..100])).await.expect("send data");
    let incoming = incoming_dir(&target.snapshots);
    let deadline = Instant::now() + WAIT;
    while files_in(&incoming).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the receiver never created its partial file"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    call.abort();
    drop(tx);
    let deadline = Instant::now() + WAIT;
    while !files_in(&incoming).is_empty() {
        assert!(
            Instant::now() < deadline,
            "partial snapshot left behind: {:?}",
            files_in(&incoming)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    assert_eq!(files_in(&incoming), Vec::<PathBuf>::new());
    target
        .raft
        .wait(Some(WAIT))
        .metrics(|m| m.running_state.is_ok(), "the node still runs")
        .await
        .expect("no refused snapshot stopped the node");
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_peer_is_reported_unreachable_at_once() {
    init_tracing();
    // A port that was just free: nothing listens on it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("bound address").to_string();
    drop(listener);

    let mut factory = NetworkFactory::new(transport_config(1));
    let mut network = factory.new_client(2, &Member::new(addr, "test")).await;
    let started = Instant::now();
    let error = network
        .vote(
            VoteRequest::new(Vote::new(1, 1), None),
            RPCOption::new(Duration::from_secs(5)),
        )
        .await
        .expect_err("nothing listens there");
    assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );

    let mut network = factory
        .new_client(3, &Member::new("not an address", "test"))
        .await;
    let error = network
        .append_entries(
            openraft::raft::AppendEntriesRequest {
                vote: Vote::new(1, 1),
                prev_log_id: None,
                entries: Vec::new(),
                leader_commit: None,
            },
            RPCOption::new(Duration::from_secs(1)),
        )
        .await
        .expect_err("the address does not parse");
    assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");
}
