//! The client library against fake `CallService` servers on loopback: redirects followed and
//! cached, retries that keep their `request_id`, final errors not retried, backoff bounded by
//! the call deadline, dead endpoints skipped. The only sleeps are inside the fake servers.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use client::{
    Client, ClientConfig, GiveUp, LEADER_ADDR_HEADER, LEADER_ID_HEADER, OVERLOADED_HEADER,
};
use proto::v1::{
    AppendTurnRequest, AppendTurnResponse, Call, CallResponse, CallState, Consistency,
    CreateCallRequest, EndCallRequest, GetCallRequest, GetCallResponse, GetContextRequest,
    GetContextResponse, ListCallsRequest, ListCallsResponse, ListTurnsRequest, ListTurnsResponse,
    LogEventRequest, LogEventResponse, ReadMeta, ReadOptions, RequestHandoffRequest,
    StartCallRequest, UpdateContextRequest, WriteMeta,
    call_service_server::{CallService, CallServiceServer},
};
use tokio::{net::TcpListener, task::JoinSet, time::Instant};
use tonic::{
    Code, Request, Response, Status,
    metadata::MetadataValue,
    transport::{Server, server::TcpIncoming},
};

/// Upper bound for any one test; nothing here should come close.
const TEST_TIMEOUT: Duration = Duration::from_secs(20);

/// How a fake node answers.
#[derive(Debug, Clone)]
enum Role {
    /// Serves writes and reads.
    Leader { id: u64 },
    /// Redirects writes and linearizable reads to the leader; serves local reads.
    Follower {
        leader_id: String,
        leader_addr: String,
    },
    /// Answers every request with this code and no leader metadata.
    Fail(Code),
    /// Like a leader, but the first write hangs for `delay` before answering.
    SlowFirst { id: u64, delay: Duration },
    /// Like a leader, but sheds the first `shed_first` writes as an overloaded node does.
    Shedding { id: u64, shed_first: usize },
}

/// What a fake node saw.
#[derive(Debug, Clone, Default)]
struct Seen {
    /// `request_id` of every write received, in order.
    write_request_ids: Arc<Mutex<Vec<String>>>,
    /// Reads received.
    reads: Arc<AtomicUsize>,
}

impl Seen {
    fn writes(&self) -> Vec<String> {
        self.write_request_ids
            .lock()
            .expect("test lock not poisoned")
            .clone()
    }

    fn write_count(&self) -> usize {
        self.writes().len()
    }

    fn read_count(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
struct Fake {
    role: Role,
    seen: Seen,
}

impl Fake {
    fn redirect(leader_id: &str, leader_addr: &str) -> Status {
        let mut status = Status::unavailable(format!(
            "not the leader; leader is node {leader_id} at {leader_addr}"
        ));
        let metadata = status.metadata_mut();
        metadata.insert(
            LEADER_ID_HEADER,
            MetadataValue::try_from(leader_id).expect("ascii id"),
        );
        metadata.insert(
            LEADER_ADDR_HEADER,
            MetadataValue::try_from(leader_addr).expect("ascii addr"),
        );
        status
    }

    async fn write(&self, request_id: &str) -> Result<Response<CallResponse>, Status> {
        let (id, delay) = {
            let mut ids = self
                .seen
                .write_request_ids
                .lock()
                .expect("test lock not poisoned");
            ids.push(request_id.to_owned());
            match &self.role {
                Role::Leader { id } => (*id, None),
                Role::SlowFirst { id, delay } => (*id, (ids.len() == 1).then_some(*delay)),
                Role::Shedding { shed_first, .. } if ids.len() <= *shed_first => {
                    let mut status = Status::resource_exhausted("fake node is overloaded");
                    status
                        .metadata_mut()
                        .insert(OVERLOADED_HEADER, MetadataValue::from_static("write"));
                    return Err(status);
                }
                Role::Shedding { id, .. } => (*id, None),
                Role::Follower {
                    leader_id,
                    leader_addr,
                } => return Err(Self::redirect(leader_id, leader_addr)),
                Role::Fail(code) => return Err(Status::new(*code, "fake failure")),
            }
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let index = u64::try_from(self.seen.write_count()).expect("small count");
        Ok(Response::new(CallResponse {
            call: Some(Call {
                call_id: format!("call-{index}"),
                state: CallState::Created.into(),
                ..Default::default()
            }),
            meta: Some(WriteMeta {
                index,
                replayed: false,
                leader_id: id,
            }),
        }))
    }

    fn read(&self, read: Option<&ReadOptions>) -> Result<Response<GetCallResponse>, Status> {
        self.seen.reads.fetch_add(1, Ordering::SeqCst);
        let local = read.map(ReadOptions::consistency) == Some(Consistency::Local);
        let node_id = match &self.role {
            Role::Leader { id } | Role::SlowFirst { id, .. } | Role::Shedding { id, .. } => *id,
            Role::Follower { .. } if local => 99,
            Role::Follower {
                leader_id,
                leader_addr,
            } => return Err(Self::redirect(leader_id, leader_addr)),
            Role::Fail(code) => return Err(Status::new(*code, "fake failure")),
        };
        Ok(Response::new(GetCallResponse {
            call: Some(Call::default()),
            meta: Some(ReadMeta {
                applied_index: 1,
                node_id,
            }),
        }))
    }
}

#[tonic::async_trait]
impl CallService for Fake {
    async fn create_call(
        &self,
        request: Request<CreateCallRequest>,
    ) -> Result<Response<CallResponse>, Status> {
        self.write(&request.into_inner().request_id).await
    }

    async fn start_call(
        &self,
        request: Request<StartCallRequest>,
    ) -> Result<Response<CallResponse>, Status> {
        self.write(&request.into_inner().request_id).await
    }

    async fn append_turn(
        &self,
        _request: Request<AppendTurnRequest>,
    ) -> Result<Response<AppendTurnResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn log_event(
        &self,
        _request: Request<LogEventRequest>,
    ) -> Result<Response<LogEventResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn update_context(
        &self,
        _request: Request<UpdateContextRequest>,
    ) -> Result<Response<CallResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn request_handoff(
        &self,
        _request: Request<RequestHandoffRequest>,
    ) -> Result<Response<CallResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn end_call(
        &self,
        request: Request<EndCallRequest>,
    ) -> Result<Response<CallResponse>, Status> {
        self.write(&request.into_inner().request_id).await
    }

    async fn get_call(
        &self,
        request: Request<GetCallRequest>,
    ) -> Result<Response<GetCallResponse>, Status> {
        self.read(request.get_ref().read.as_ref())
    }

    async fn get_context(
        &self,
        _request: Request<GetContextRequest>,
    ) -> Result<Response<GetContextResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_turns(
        &self,
        _request: Request<ListTurnsRequest>,
    ) -> Result<Response<ListTurnsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_calls(
        &self,
        _request: Request<ListCallsRequest>,
    ) -> Result<Response<ListCallsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn erase_call(
        &self,
        _request: Request<proto::v1::EraseCallRequest>,
    ) -> Result<Response<proto::v1::EraseCallResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Fake nodes of one test; dropping it aborts their servers.
#[derive(Debug, Default)]
struct Fakes {
    servers: JoinSet<()>,
}

impl Fakes {
    /// Starts a fake node on an ephemeral loopback port; returns its address and what it sees.
    async fn start(&mut self, role: Role) -> (String, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound address").to_string();
        let seen = Seen::default();
        let fake = Fake {
            role,
            seen: seen.clone(),
        };
        self.servers.spawn(async move {
            Server::builder()
                .add_service(CallServiceServer::new(fake))
                .serve_with_incoming(TcpIncoming::from(listener))
                .await
                .expect("fake server runs until aborted");
        });
        (addr, seen)
    }
}

/// An address with nothing listening: bound once to get a free port, then released.
async fn dead_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    listener.local_addr().expect("bound address").to_string()
}

fn config(endpoints: &[&str]) -> ClientConfig {
    ClientConfig {
        endpoints: endpoints.iter().map(|e| (*e).to_owned()).collect(),
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
        call_deadline: Duration::from_secs(5),
        retries_max: 10,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        resolve: Vec::new(),
        token: None,
        // Fake in-process servers speak plaintext.
        tls: None,
    }
}

fn create(tenant: &str) -> CreateCallRequest {
    CreateCallRequest {
        tenant_id: tenant.to_owned(),
        source: "+15550100".to_owned(),
        ..Default::default()
    }
}

async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test finished within its bound");
}

#[tokio::test]
async fn write_sent_to_a_follower_is_redirected_and_the_leader_cached() {
    bounded(async {
        let mut fakes = Fakes::default();
        let (leader_addr, leader) = fakes.start(Role::Leader { id: 1 }).await;
        let (follower_addr, follower) = fakes
            .start(Role::Follower {
                leader_id: "1".to_owned(),
                leader_addr: leader_addr.clone(),
            })
            .await;
        let client = Client::new(config(&[&follower_addr])).expect("valid config");

        let response = client
            .create_call(create("t"))
            .await
            .expect("redirect followed to the leader");
        assert_eq!(response.meta.map(|m| m.leader_id), Some(1));
        assert_eq!(follower.write_count(), 1);
        assert_eq!(leader.write_count(), 1);
        // The follower saw the same request_id the leader applied: one logical write.
        assert_eq!(follower.writes(), leader.writes());
        let leader_info = client.leader().expect("leader cached");
        assert_eq!(leader_info.id, Some(1));
        assert_eq!(leader_info.addr, leader_addr);
        assert_eq!(client.endpoints(), vec![follower_addr, leader_addr]);

        client
            .create_call(create("t"))
            .await
            .expect("second write succeeds");
        assert_eq!(
            follower.write_count(),
            1,
            "second write went straight to the leader"
        );
        assert_eq!(leader.write_count(), 2);
        let ids = leader.writes();
        assert_ne!(ids[0], ids[1], "each call gets its own request_id");
    })
    .await;
}

/// A name no resolver knows (RFC 6761): connecting to it as it is always fails.
const ADVERTISED_LEADER: &str = "node-2.invalid:7101";

#[tokio::test]
async fn redirect_to_an_advertised_name_connects_where_resolve_says() {
    bounded(async {
        let mut fakes = Fakes::default();
        let (leader_addr, leader) = fakes.start(Role::Leader { id: 2 }).await;
        let (follower_addr, follower) = fakes
            .start(Role::Follower {
                leader_id: "2".to_owned(),
                leader_addr: ADVERTISED_LEADER.to_owned(),
            })
            .await;
        // The leader is configured under its reachable address: the redirect finds that peer.
        let mut known = config(&[&follower_addr, &leader_addr]);
        known.resolve = vec![(ADVERTISED_LEADER.to_owned(), leader_addr.clone())];
        let client = Client::new(known).expect("valid config");
        client.create_call(create("t")).await.expect("redirected");
        assert_eq!(follower.write_count(), 1);
        assert_eq!(leader.write_count(), 1);
        let cached = client.leader().expect("leader cached");
        assert_eq!(cached.addr, leader_addr, "cached under the configured peer");
        assert_eq!(
            client.endpoints(),
            vec![follower_addr.clone(), leader_addr.clone()]
        );
        client.create_call(create("t")).await.expect("second write");
        assert_eq!(follower.write_count(), 1, "second write went to the leader");
        assert_eq!(leader.write_count(), 2);

        // Only the follower configured: the advertised name is learned, connected via resolve.
        let mut learned = config(&[&follower_addr]);
        learned.resolve = vec![(ADVERTISED_LEADER.to_owned(), leader_addr.clone())];
        let client = Client::new(learned).expect("valid config");
        client.create_call(create("t")).await.expect("redirected");
        assert_eq!(leader.write_count(), 3);
        assert_eq!(
            client.endpoints(),
            vec![follower_addr.clone(), ADVERTISED_LEADER.to_owned()]
        );

        // Without resolve the same redirect cannot be followed.
        let mut unresolved = config(&[&follower_addr]);
        unresolved.retries_max = 3;
        let client = Client::new(unresolved).expect("valid config");
        client
            .create_call(create("t"))
            .await
            .expect_err("the advertised name does not resolve here");
        assert_eq!(leader.write_count(), 3);
    })
    .await;
}

#[tokio::test]
async fn linearizable_read_is_redirected_and_local_read_is_served_by_any_node() {
    bounded(async {
        let mut fakes = Fakes::default();
        let (leader_addr, leader) = fakes.start(Role::Leader { id: 1 }).await;
        let (follower_addr, follower) = fakes
            .start(Role::Follower {
                leader_id: "1".to_owned(),
                leader_addr: leader_addr.clone(),
            })
            .await;
        let client = Client::new(config(&[&follower_addr, &leader_addr])).expect("valid config");

        let linearizable = client
            .get_call(GetCallRequest::default())
            .await
            .expect("linearizable read redirected to the leader");
        assert_eq!(linearizable.meta.map(|m| m.node_id), Some(1));
        assert_eq!((follower.read_count(), leader.read_count()), (1, 1));

        let local = ReadOptions {
            consistency: Consistency::Local.into(),
            min_index: 0,
        };
        for _ in 0..4 {
            client
                .get_call(GetCallRequest {
                    read: Some(local),
                    ..Default::default()
                })
                .await
                .expect("local read served");
        }
        assert_eq!(
            (follower.read_count(), leader.read_count()),
            (3, 3),
            "local reads are spread round robin"
        );
    })
    .await;
}

#[tokio::test]
async fn retry_after_a_timed_out_attempt_carries_the_same_request_id() {
    bounded(async {
        let mut fakes = Fakes::default();
        let (addr, node) = fakes
            .start(Role::SlowFirst {
                id: 1,
                delay: Duration::from_secs(5),
            })
            .await;
        let client = Client::new(ClientConfig {
            request_timeout: Duration::from_millis(200),
            ..config(&[&addr])
        })
        .expect("valid config");

        let response = client
            .create_call(create("t"))
            .await
            .expect("second attempt answered");
        assert!(response.call.is_some());
        let ids = node.writes();
        assert_eq!(ids.len(), 2, "one timed-out attempt and one retry");
        assert_eq!(ids[0], ids[1], "the retry reuses the request_id");
        assert!(!ids[0].is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_shed_write_is_retried_on_the_same_node_after_a_backoff_with_the_same_request_id() {
    bounded(async {
        let mut fakes = Fakes::default();
        let (busy, busy_seen) = fakes
            .start(Role::Shedding {
                id: 1,
                shed_first: 2,
            })
            .await;
        let (other, other_seen) = fakes.start(Role::Leader { id: 2 }).await;
        let client = Client::new(config(&[&busy, &other])).expect("valid config");
        let started = Instant::now();
        client
            .create_call(create("t"))
            .await
            .expect("the third attempt is served");
        let ids = busy_seen.writes();
        assert_eq!(ids.len(), 3, "two shed attempts, then the served one");
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        assert_eq!(
            other_seen.write_count(),
            0,
            "a shed write stays with its node"
        );
        // Backoffs of at least half of 10 ms and 20 ms (equal jitter).
        assert!(started.elapsed() >= Duration::from_millis(15));
    })
    .await;
}

#[tokio::test]
async fn a_node_that_keeps_shedding_gives_an_overloaded_error() {
    bounded(async {
        let mut fakes = Fakes::default();
        let (busy, busy_seen) = fakes
            .start(Role::Shedding {
                id: 1,
                shed_first: usize::MAX,
            })
            .await;
        let client = Client::new(ClientConfig {
            retries_max: 3,
            ..config(&[&busy])
        })
        .expect("valid config");
        let err = client
            .create_call(create("t"))
            .await
            .expect_err("every attempt is shed");
        assert!(err.is_overloaded(), "{err}");
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert_eq!(err.reason, GiveUp::RetriesExhausted);
        assert_eq!(busy_seen.write_count(), 4);
    })
    .await;
}

#[tokio::test]
async fn given_request_id_is_sent_unchanged() {
    bounded(async {
        let mut fakes = Fakes::default();
        let (addr, node) = fakes.start(Role::Leader { id: 1 }).await;
        let client = Client::new(config(&[&addr])).expect("valid config");
        client
            .create_call(CreateCallRequest {
                request_id: "caller-chosen".to_owned(),
                ..create("t")
            })
            .await
            .expect("write succeeds");
        assert_eq!(node.writes(), vec!["caller-chosen".to_owned()]);
    })
    .await;
}

#[tokio::test]
async fn caller_errors_are_not_retried() {
    bounded(async {
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::FailedPrecondition,
        ] {
            let mut fakes = Fakes::default();
            let (first, first_seen) = fakes.start(Role::Fail(code)).await;
            let (second, second_seen) = fakes.start(Role::Leader { id: 2 }).await;
            let client = Client::new(config(&[&first, &second])).expect("valid config");

            let err = client
                .end_call(EndCallRequest::default())
                .await
                .expect_err("final error surfaces");
            assert_eq!(err.code(), code);
            assert_eq!(err.attempts, 1);
            assert_eq!(err.reason, GiveUp::NotRetryable);
            assert_eq!(first_seen.write_count(), 1, "{code:?} sent exactly once");
            assert_eq!(second_seen.write_count(), 0, "{code:?} not tried elsewhere");
            assert!(err.to_string().contains("fake failure"), "{err}");
        }
    })
    .await;
}

#[tokio::test]
async fn no_leader_anywhere_gives_up_at_the_deadline_after_bounded_backoff() {
    bounded(async {
        let mut fakes = Fakes::default();
        let (a, a_seen) = fakes.start(Role::Fail(Code::Unavailable)).await;
        let (b, b_seen) = fakes.start(Role::Fail(Code::Unavailable)).await;
        let deadline = Duration::from_millis(800);
        let client = Client::new(ClientConfig {
            call_deadline: deadline,
            retries_max: 1_000,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(160),
            ..config(&[&a, &b])
        })
        .expect("valid config");

        let started = Instant::now();
        let err = client
            .create_call(create("t"))
            .await
            .expect_err("no leader is ever known");
        let elapsed = started.elapsed();

        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(err.reason, GiveUp::Deadline);
        assert!(elapsed >= deadline, "gave up early: {elapsed:?}");
        assert!(
            elapsed < deadline + Duration::from_millis(500),
            "gave up late: {elapsed:?}"
        );
        let seen = a_seen.write_count() + b_seen.write_count();
        assert_eq!(u32::try_from(seen).expect("small"), err.attempts);
        // Without backoff a loopback loop would make thousands of attempts in 800 ms; with
        // 20..160 ms capped backoff it makes about ten.
        assert!(
            (4..=20).contains(&err.attempts),
            "attempts not bounded by backoff: {}",
            err.attempts
        );
        assert!(a_seen.write_count() >= 2 && b_seen.write_count() >= 2);
        let ids: Vec<String> = a_seen.writes().into_iter().chain(b_seen.writes()).collect();
        assert!(
            ids.iter().all(|id| *id == ids[0]),
            "one request_id throughout"
        );
        let message = err.to_string();
        assert!(message.contains(&a) && message.contains(&b), "{message}");
        assert!(message.contains("UNAVAILABLE"), "{message}");
        assert!(message.contains("deadline"), "{message}");
    })
    .await;
}

#[tokio::test]
async fn retries_stop_at_retries_max() {
    bounded(async {
        let mut fakes = Fakes::default();
        let (addr, seen) = fakes.start(Role::Fail(Code::Unavailable)).await;
        let client = Client::new(ClientConfig {
            retries_max: 2,
            ..config(&[&addr])
        })
        .expect("valid config");
        let err = client
            .create_call(create("t"))
            .await
            .expect_err("never available");
        assert_eq!(err.reason, GiveUp::RetriesExhausted);
        assert_eq!(err.attempts, 3);
        assert_eq!(seen.write_count(), 3);
    })
    .await;
}

#[tokio::test]
async fn dead_endpoint_is_skipped_for_a_live_one() {
    bounded(async {
        let mut fakes = Fakes::default();
        let dead = dead_addr().await;
        let (live, live_seen) = fakes.start(Role::Leader { id: 3 }).await;
        let client = Client::new(config(&[&dead, &live])).expect("valid config");

        client
            .create_call(create("t"))
            .await
            .expect("write lands on the live node");
        assert_eq!(live_seen.write_count(), 1);
        assert_eq!(client.leader().map(|l| l.addr), Some(live.clone()));

        client
            .start_call(StartCallRequest::default())
            .await
            .expect("cached leader used");
        assert_eq!(live_seen.write_count(), 2);
    })
    .await;
}
