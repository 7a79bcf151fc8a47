//! Transport security against real `switchboard serve` processes: TLS on both ports, the Raft
//! service answering only member nodes of the cluster, certificates reloaded on SIGHUP, and
//! `serve` refusing to start without TLS or `--insecure`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{Client, TlsConfig, TlsIdentity};
use harness::ProcessCluster;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use openraft::entry::RaftEntry;
use openraft::impls::leader_id_adv::LeaderId;
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use proto::raft_v1::RaftPayload;
use proto::raft_v1::raft_service_client::RaftServiceClient;
use proto::v1;
use raft_store::{LogId, TypeConfig, Vote};
use rustls_pki_types::ServerName;
use tonic::Code;

const LEADER_WAIT: Duration = Duration::from_secs(30);
/// Bound on every other wait of these tests.
const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);
/// The node id no cluster of these tests has.
const STRANGER: u64 = 9;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_switchboard"))
}

fn certs_dir(cluster: &ProcessCluster) -> PathBuf {
    cluster
        .certs_dir()
        .expect("harness clusters run TLS")
        .to_path_buf()
}

/// Runs `switchboard certs ARGS... --dir DIR`.
fn certs(args: &[&str], dir: &Path) {
    let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    all.push(OsStr::new("--dir"));
    all.push(dir.as_os_str());
    harness::run_certs(binary(), &all).expect("switchboard certs");
}

/// A CA and node certificates of the same cluster id, from another CA, in a new directory.
fn other_ca(cluster: &ProcessCluster) -> PathBuf {
    let dir = cluster.root().join("other-ca");
    certs(
        &[
            "init",
            "--nodes",
            "1,2,3",
            "--cluster-id",
            cluster.cluster_id(),
        ],
        &dir,
    );
    dir
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// TLS trusting the cluster's CA, presenting node `id`'s certificate from `dir`.
fn tls_as_node(cluster: &ProcessCluster, dir: &Path, id: u64) -> TlsConfig {
    let mut tls = cluster.tls().expect("tls").clone();
    tls.identity = Some(TlsIdentity {
        cert_pem: read(&dir.join(format!("node-{id}.pem"))),
        key_pem: read(&dir.join(format!("node-{id}-key.pem"))),
    });
    tls
}

fn raft_client(
    addr: &str,
    tls: Option<&TlsConfig>,
) -> RaftServiceClient<tonic::transport::Channel> {
    let channel = client::endpoint(addr, tls)
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    RaftServiceClient::new(channel)
}

async fn status_with(
    addr: &str,
    tls: Option<&TlsConfig>,
    token: Option<&str>,
) -> Result<v1::StatusResponse, String> {
    let channel = client::endpoint(addr, tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut request = tonic::Request::new(v1::StatusRequest {});
    if let Some(value) = token.and_then(|t| format!("Bearer {t}").parse().ok()) {
        request.metadata_mut().insert("authorization", value);
    }
    v1::cluster_service_client::ClusterServiceClient::new(channel)
        .status(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("{s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_is_refused_on_a_tls_node_on_both_ports() {
    let mut cluster = ProcessCluster::start(binary(), 1, &[]).expect("start cluster");
    cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    let addr = cluster.grpc(1);
    status_with(&addr, cluster.tls(), cluster.admin_token())
        .await
        .expect("a client trusting the CA is served");
    let refused = status_with(&addr, None, cluster.admin_token()).await;
    assert!(refused.is_err(), "plaintext gRPC was served: {refused:?}");

    let http = cluster.nodes[&1].http.clone();
    let ca = certs_dir(&cluster).join("ca.pem");
    let answer = node::probe::get(&format!("https://{http}/healthz"), Some(&ca), 4096)
        .await
        .expect("https is served");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let plain = node::probe::get(&format!("http://{http}/healthz"), None, 4096).await;
    assert!(
        !plain
            .as_deref()
            .unwrap_or_default()
            .starts_with("HTTP/1.1 200"),
        "plaintext HTTP was served: {plain:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trusting_another_ca_is_refused() {
    let mut cluster = ProcessCluster::start(binary(), 1, &[]).expect("start cluster");
    cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    let other = other_ca(&cluster);
    let stranger = TlsConfig::from_ca_file(other.join("ca.pem")).expect("other CA");
    let refused = status_with(&cluster.grpc(1), Some(&stranger), cluster.admin_token()).await;
    assert!(
        refused.is_err(),
        "a node the client does not trust answered: {refused:?}"
    );

    // The same through the client library: the call fails, it is not served.
    let client = Client::new(client::ClientConfig {
        tls: Some(stranger),
        call_deadline: Duration::from_secs(2),
        retries_max: 1,
        ..cluster.client_config()
    })
    .expect("client");
    let error = client
        .status(v1::StatusRequest {})
        .await
        .expect_err("refused");
    assert_ne!(error.code, Code::Ok);
}

/// What must not change when forged Raft messages arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    term: u64,
    leader: Option<u64>,
    last_log_index: u64,
    committed_index: u64,
}

async fn seen(cluster: &ProcessCluster) -> BTreeMap<u64, Seen> {
    let mut all = BTreeMap::new();
    for id in cluster.nodes.keys() {
        let s = cluster.status(*id).await.expect("status");
        all.insert(
            *id,
            Seen {
                term: s.term,
                leader: s.leader_id,
                last_log_index: s.last_log_index,
                committed_index: s.committed_index,
            },
        );
    }
    all
}

/// Waits until every node has applied what the leader committed, so that the cluster is idle.
async fn settled(cluster: &ProcessCluster) -> BTreeMap<u64, Seen> {
    let deadline = Instant::now() + WAIT;
    loop {
        let all = seen(cluster).await;
        let values: Vec<&Seen> = all.values().collect();
        if values.windows(2).all(|w| w[0] == w[1]) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not settle: {all:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

fn forged_entry(term: u64, index: u64) -> raft_store::Entry {
    let log_id = LogId::new(LeaderId { term, node_id: 42 }, index);
    let request = domain::Request {
        tenant_id: "injected-tenant".to_owned(),
        request_id: "forged".to_owned(),
        command: domain::Command::CreateCall {
            source: "+15550100".to_owned(),
            channel: domain::Channel::Voice,
            metadata: BTreeMap::new(),
            trace_id: None,
        },
        stamp: domain::Stamp {
            at_ms: 1,
            minted_call_id: Some(uuid::Uuid::now_v7()),
            minted_trace_id: None,
        },
        redactions: Default::default(),
    };
    raft_store::Entry::new_normal(log_id, raft_store::Proposal(request))
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("encodes")
}

/// Sends a forged AppendEntries (leader "42"), Vote (transfer flag, term + 100), Pre-Vote and
/// TransferLeader to node `to`, claiming to come from `from`; returns each RPC's outcome.
async fn forge(
    client: &mut RaftServiceClient<tonic::transport::Channel>,
    cluster_id: &str,
    from: u64,
    to: u64,
    before: &Seen,
) -> Vec<(&'static str, Result<(), tonic::Status>)> {
    let term = before.term + 100;
    let payload = |data: Vec<u8>| RaftPayload {
        data,
        cluster_id: cluster_id.to_owned(),
        from_node_id: from,
        to_node_id: to,
    };
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(term, 42),
        prev_log_id: None,
        entries: vec![forged_entry(term, before.last_log_index + 1)],
        leader_commit: None,
    };
    let mut vote = VoteRequest::<TypeConfig>::new(Vote::new(term, from), None);
    vote.leadership_transfer = true;
    let transfer =
        TransferLeaderRequest::<TypeConfig>::new(Vote::new_committed(term, from), to, None);
    let mut outcomes = Vec::new();
    outcomes.push((
        "append entries",
        client
            .append_entries(payload(encode(&append)))
            .await
            .map(drop),
    ));
    outcomes.push(("vote", client.vote(payload(encode(&vote))).await.map(drop)));
    outcomes.push((
        "pre-vote",
        client.pre_vote(payload(encode(&vote))).await.map(drop),
    ));
    outcomes.push((
        "transfer leader",
        client
            .transfer_leader(payload(encode(&transfer)))
            .await
            .map(drop),
    ));
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_raft_messages_from_non_members_are_refused_and_change_nothing() {
    let mut cluster = ProcessCluster::start(binary(), 3, &[]).expect("start cluster");
    let leader = cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    let dir = certs_dir(&cluster);
    let other = other_ca(&cluster);
    // A valid certificate of a node that is not a member.
    certs(
        &[
            "node",
            "--node-id",
            &STRANGER.to_string(),
            "--cluster-id",
            cluster.cluster_id(),
        ],
        &dir,
    );
    let before = settled(&cluster).await;
    let cluster_id = cluster.cluster_id().to_owned();

    let callers: Vec<(&str, TlsConfig, Option<Code>)> = vec![
        (
            "no client certificate",
            cluster.tls().expect("tls").clone(),
            Some(Code::Unauthenticated),
        ),
        // Refused in the handshake: no status of the service's own.
        (
            "a certificate of another CA",
            tls_as_node(&cluster, &other, 2),
            None,
        ),
        (
            "a valid certificate of a non-member",
            tls_as_node(&cluster, &dir, STRANGER),
            Some(Code::PermissionDenied),
        ),
    ];
    for to in cluster.nodes.keys().copied() {
        let addr = cluster.grpc(to);
        for (who, tls, code) in &callers {
            let from = if *who == "a valid certificate of a non-member" {
                STRANGER
            } else {
                2
            };
            let mut client = raft_client(&addr, Some(tls));
            for (rpc, outcome) in forge(&mut client, &cluster_id, from, to, &before[&to]).await {
                let status = outcome
                    .err()
                    .unwrap_or_else(|| panic!("{rpc} with {who} to node {to} was accepted"));
                if let Some(code) = code {
                    assert_eq!(
                        status.code(),
                        *code,
                        "{rpc} with {who} to node {to}: {status:?}"
                    );
                }
            }
        }
        // A member's certificate claiming to be another node is refused too.
        let member = if to == 1 { 2 } else { 1 };
        let mut client = raft_client(&addr, Some(&tls_as_node(&cluster, &dir, member)));
        for (rpc, outcome) in forge(&mut client, &cluster_id, 42, to, &before[&to]).await {
            let status = outcome.expect_err("impersonation accepted");
            assert_eq!(status.code(), Code::PermissionDenied, "{rpc}: {status:?}");
        }
    }

    let after = seen(&cluster).await;
    assert_eq!(after, before, "forged messages changed the cluster");
    assert_eq!(
        cluster.wait_for_leader(LEADER_WAIT).await.expect("leader"),
        leader
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_cluster_id_is_refused_without_naming_the_real_one() {
    let mut cluster = ProcessCluster::start(binary(), 3, &[]).expect("start cluster");
    let leader = cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    let follower = *cluster
        .nodes
        .keys()
        .find(|id| **id != leader)
        .expect("follower");
    let dir = certs_dir(&cluster);
    let mut client = raft_client(
        &cluster.grpc(follower),
        Some(&tls_as_node(&cluster, &dir, leader)),
    );
    let vote = VoteRequest::<TypeConfig>::new(Vote::new(1, leader), None);
    let status = client
        .vote(RaftPayload {
            data: encode(&vote),
            cluster_id: "guess".to_owned(),
            from_node_id: leader,
            to_node_id: follower,
        })
        .await
        .expect_err("another cluster id");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        !status.message().contains(cluster.cluster_id()),
        "the refusal echoes the real cluster id: {status:?}"
    );
}

/// The serial of the certificate the node at `addr` presents in a new handshake.
async fn served_serial(addr: &str, ca: &Path, alpn: &[u8]) -> String {
    let roots = node::tls::roots_from_pem(ca, &read(ca)).expect("roots");
    let mut config = rustls::ClientConfig::builder_with_provider(node::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake");
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a certificate")
        .clone();
    node::tls::serial_and_not_after(&leaf).expect("parses").0
}

fn hangup(cluster: &ProcessCluster, id: u64) {
    let pid = cluster.nodes[&id].pid().expect("running");
    kill(
        Pid::from_raw(i32::try_from(pid).expect("pid fits")),
        Signal::SIGHUP,
    )
    .expect("SIGHUP");
}

/// Waits until `stderr` holds a line containing `needle`; returns it.
fn wait_for_line(stderr: &Path, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(stderr).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{text}"
        );
        std::thread::sleep(POLL);
    }
}

/// Node 1 restarted with its stderr in a file and INFO logging.
async fn cluster_with_logged_node() -> (ProcessCluster, PathBuf) {
    let mut cluster = ProcessCluster::start(binary(), 3, &[]).expect("start cluster");
    cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    let stderr = cluster.capture_stderr(1).expect("capture");
    cluster
        .set_env(1, "RUST_LOG", "info,openraft=error")
        .expect("env");
    cluster.kill(1).expect("kill");
    cluster.restart(1).expect("restart");
    cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    (cluster, stderr)
}

async fn write_one(cluster: &ProcessCluster, n: u32) -> u64 {
    let client = Client::new(cluster.client_config()).expect("client");
    client
        .create_call(v1::CreateCallRequest {
            tenant_id: "acme".into(),
            request_id: format!("tls-{n}"),
            source: "pstn:+15550100".into(),
            channel: v1::Channel::Voice.into(),
            ..Default::default()
        })
        .await
        .expect("write")
        .meta
        .map_or(0, |m| m.index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_rotated_certs_serves_the_new_certificate_and_the_cluster_keeps_committing() {
    let (cluster, stderr) = cluster_with_logged_node().await;
    let ca = certs_dir(&cluster).join("ca.pem");
    let grpc = cluster.grpc(1);
    let http = cluster.nodes[&1].http.clone();
    let old = served_serial(&grpc, &ca, b"h2").await;
    assert_eq!(served_serial(&http, &ca, b"http/1.1").await, old);

    cluster
        .issue_cert(1, true)
        .expect("rotate node 1's certificate");
    hangup(&cluster, 1);
    let deadline = Instant::now() + WAIT;
    let new = loop {
        let serial = served_serial(&grpc, &ca, b"h2").await;
        if serial != old {
            break serial;
        }
        assert!(Instant::now() < deadline, "node 1 still serves {old}");
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(served_serial(&http, &ca, b"http/1.1").await, new);
    let line = wait_for_line(&stderr, "reloaded the tls certificate");
    assert!(line.contains("not_after"), "{line}");
    assert!(line.contains(&new), "{line}");

    // Peers dial node 1 anew and node 1 dials them with its new certificate: restarting the
    // others makes every connection between them new.
    let mut cluster = cluster;
    for id in [2, 3] {
        cluster.kill(id).expect("kill");
        cluster.restart(id).expect("restart");
    }
    cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    let index = write_one(&cluster, 1).await;
    let deadline = Instant::now() + WAIT;
    while cluster.status(1).await.map_or(0, |s| s.applied_index) < index {
        assert!(Instant::now() < deadline, "node 1 did not apply {index}");
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_file_keeps_serving_the_old_certificate() {
    let (cluster, stderr) = cluster_with_logged_node().await;
    let dir = certs_dir(&cluster);
    let ca = dir.join("ca.pem");
    let grpc = cluster.grpc(1);
    let old = served_serial(&grpc, &ca, b"h2").await;

    let cert = dir.join("node-1.pem");
    std::fs::write(&cert, b"-----BEGIN CERTIFICATE-----\nnot base64\n").expect("break");
    hangup(&cluster, 1);
    let line = wait_for_line(&stderr, "failed to reload tls material");
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains("node-1.pem"),
        "the error names the file: {line}"
    );
    assert_eq!(served_serial(&grpc, &ca, b"h2").await, old);
    write_one(&cluster, 2).await;
    status_with(&grpc, cluster.tls(), cluster.admin_token())
        .await
        .expect("node 1 still serves clients");
}

#[test]
fn serve_without_tls_or_insecure_refuses_to_start_naming_the_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(binary())
        .args([
            "serve",
            "--node-id",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env_remove("SWITCHBOARD_INSECURE")
        .env_remove("SWITCHBOARD_TLS_DIR")
        .env_remove("SWITCHBOARD_TLS_CERT")
        .env_remove("SWITCHBOARD_TLS_KEY")
        .env_remove("SWITCHBOARD_TLS_CA")
        .stdin(Stdio::null())
        .output()
        .expect("run serve");
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for flag in ["--tls-dir", "--tls-cert", "--insecure"] {
        assert!(stderr.contains(flag), "{stderr}");
    }
    assert!(
        !dir.path().join("data").exists(),
        "the node opened its data directory before refusing"
    );
}

#[test]
fn insecure_logs_a_warning_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = harness::free_port().expect("port");
    let http = harness::free_port().expect("port");
    let mut child = Command::new(binary())
        .args(["serve", "--node-id", "1", "--insecure", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--http-listen")
        .arg(format!("127.0.0.1:{http}"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    let mut warned = None;
    while warned.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("WARN") && line.contains("--insecure") => warned = Some(line),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(rx);
    let _ = reader.join();
    assert!(warned.is_some(), "no warning about --insecure");
}
