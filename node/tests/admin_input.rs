//! Cluster administration input over gRPC: a member that cannot be one is refused with
//! INVALID_ARGUMENT naming the field and its bound, and nothing is proposed for it.

use std::time::Duration;

use harness::ProcessCluster;
use node::config::{MEMBER_ADDR_BYTES_MAX, REGION_BYTES_MAX};
use proto::v1::{self, cluster_service_client::ClusterServiceClient};
use tonic::Code;

const LEADER_WAIT: Duration = Duration::from_secs(30);

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_switchboard"))
}

fn learner(node_id: u64, addr: &str, region: &str) -> v1::AddLearnerRequest {
    v1::AddLearnerRequest {
        node_id,
        addr: addr.to_owned(),
        region: region.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_learner_is_invalid_argument_naming_the_field_and_nothing_is_proposed() {
    let mut cluster = ProcessCluster::start(binary(), 1, &[]).expect("start cluster");
    let leader = cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    let before = cluster.status(leader).await.expect("status");
    let mut client = ClusterServiceClient::new(cluster.channel(leader).expect("channel"));

    let long_addr = format!("{}:7101", "h".repeat(MEMBER_ADDR_BYTES_MAX));
    let long_region = "r".repeat(REGION_BYTES_MAX + 1);
    let cases = [
        (learner(0, "127.0.0.1:7104", ""), "node_id", None),
        (learner(4, "", ""), "addr", None),
        (
            learner(4, "127.0.0.1", ""),
            "addr",
            Some("65535".to_owned()),
        ),
        (
            learner(4, "127.0.0.1:0", ""),
            "addr",
            Some("65535".to_owned()),
        ),
        (learner(4, ":7104", ""), "addr", Some("host".to_owned())),
        (
            learner(4, &long_addr, ""),
            "addr",
            Some(MEMBER_ADDR_BYTES_MAX.to_string()),
        ),
        (
            learner(4, "127.0.0.1:7104", &long_region),
            "region",
            Some(REGION_BYTES_MAX.to_string()),
        ),
    ];
    let cases_len = cases.len();
    for (request, field, bound) in cases {
        let status = client
            .add_learner(request.clone())
            .await
            .expect_err("a bad learner is refused");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{request:?}: {status:?}"
        );
        assert!(
            status.message().contains(field),
            "{request:?}: {}",
            status.message()
        );
        if let Some(bound) = bound {
            assert!(
                status.message().contains(&bound),
                "{request:?}: {}",
                status.message()
            );
        }
    }

    let after = cluster.status(leader).await.expect("status");
    let members = |status: &v1::StatusResponse| {
        status
            .members
            .iter()
            .map(|m| (m.node_id, m.addr.clone(), m.region.clone(), m.voter))
            .collect::<Vec<_>>()
    };
    assert_eq!(members(&after), members(&before), "no member was added");
    // Nothing was proposed but the audit trail's record of each refusal (and the audit call
    // that holds them): no membership entry.
    let mut events = v1::event_service_client::EventServiceClient::new(
        cluster.channel(leader).expect("channel"),
    );
    let listed = events
        .list_events(v1::ListEventsRequest::default())
        .await
        .expect("list events")
        .into_inner()
        .events;
    let refusals: Vec<&v1::Event> = listed
        .iter()
        .filter(|e| e.event_type == "admin.add_learner")
        .collect();
    assert_eq!(refusals.len(), cases_len, "one audit event per refusal");
    assert!(
        refusals
            .iter()
            .all(|e| e.metadata.get("outcome").map(String::as_str) == Some("error")),
        "{refusals:?}"
    );
    assert!(
        listed.iter().all(|e| e.tenant_id == "_cluster"),
        "only the audit trail was written: {listed:?}"
    );
}

/// Sends raw bytes as the request message of `path`.
#[derive(Debug, Clone, Default)]
struct RawRequest;

#[derive(Debug, Clone, Default)]
struct RawEncoder;

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

impl tonic::codec::Codec for RawRequest {
    type Encode = Vec<u8>;
    type Decode = v1::CallResponse;
    type Encoder = RawEncoder;
    type Decoder =
        <tonic_prost::ProstCodec<Vec<u8>, v1::CallResponse> as tonic::codec::Codec>::Decoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_and_non_utf8_strings_are_invalid_argument() {
    let mut cluster = ProcessCluster::start(binary(), 1, &[]).expect("start cluster");
    let leader = cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    let channel = cluster.channel(leader).expect("channel to the leader");
    // Field 1 (tenant_id, a string) holding bytes that are not UTF-8; then a truncated varint.
    let not_utf8 = vec![0x0a, 0x02, 0xff, 0xfe];
    let truncated = vec![0x0a, 0x05, b'a'];
    for (what, bytes) in [("not utf-8", not_utf8), ("truncated", truncated)] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.expect("channel ready");
        let status = grpc
            .unary(
                tonic::Request::new(bytes),
                http::uri::PathAndQuery::from_static("/switchboard.v1.CallService/CreateCall"),
                RawRequest,
            )
            .await
            .expect_err("a malformed request is refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().contains("malformed"), "{what}: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_that_never_replicated_is_not_promoted_and_a_non_member_is_not_removed() {
    let mut cluster = ProcessCluster::start(binary(), 1, &[]).expect("start cluster");
    let leader = cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    let mut client = ClusterServiceClient::new(cluster.channel(leader).expect("channel"));
    // Nothing listens there: the learner is added to the membership but never catches up (the
    // request waits for it; its answer does not matter here).
    let dead = format!("127.0.0.1:{}", harness::free_port().expect("port"));
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        client.add_learner(learner(2, &dead, "")),
    )
    .await;
    let status = cluster.status(leader).await.expect("status");
    assert!(
        status.members.iter().any(|m| m.node_id == 2 && !m.voter),
        "{status:?}"
    );

    let refused = client
        .promote(v1::PromoteRequest { node_ids: vec![2] })
        .await
        .expect_err("a learner that never replicated");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("node 2"), "{refused:?}");
    let status = cluster.status(leader).await.expect("status");
    assert!(
        status.members.iter().any(|m| m.node_id == 2 && !m.voter),
        "node 2 is still a learner: {status:?}"
    );

    let refused = client
        .remove(v1::RemoveRequest { node_ids: vec![9] })
        .await
        .expect_err("node 9 is not a member");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("node 9"), "{refused:?}");
}
