//! `WatchEvents` against real node processes: filters, tenancy, positions, resuming on another
//! node when the serving one dies, a node cut off from the leader ending its watches, and a
//! consumer that stops reading being ended with the position to resume from.

use std::time::{Duration, Instant};

use client::{Client, ClientConfig, EventWatch};
use futures::StreamExt as _;
use harness::ProcessCluster;
use proto::v1;
use tonic::Code;

const LEADER_WAIT: Duration = Duration::from_secs(30);
const TENANT: &str = "acme";
/// Bound of every wait for a watch message in these tests.
const MESSAGE_WAIT: Duration = Duration::from_secs(20);
/// Bound of every wait for a number of events.
const EVENTS_WAIT: Duration = Duration::from_secs(60);

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_switchboard"))
}

fn linearizable() -> Option<v1::ReadOptions> {
    Some(v1::ReadOptions {
        consistency: v1::Consistency::Linearizable.into(),
        min_index: 0,
    })
}

/// A client of `token` that talks to `endpoints` only.
fn client_on(cluster: &ProcessCluster, token: &str, endpoints: Vec<String>) -> Client {
    Client::new(ClientConfig {
        endpoints,
        ..cluster.client_config_with_token(token)
    })
    .expect("client config")
}

/// The cluster with an agreed leader; returns the id of a follower.
async fn follower_of(cluster: &mut ProcessCluster) -> u64 {
    let leader = cluster
        .wait_for_leader(LEADER_WAIT)
        .await
        .expect("a leader");
    (1..=3).find(|id| *id != leader).expect("a follower")
}

/// The next message of `watch`, bounded.
async fn next(watch: &mut EventWatch) -> v1::WatchEventsResponse {
    tokio::time::timeout(MESSAGE_WAIT, watch.next())
        .await
        .expect("a watch message in time")
        .expect("the watch goes on")
}

/// Events from `watch` until `count` of them arrived, within [`EVENTS_WAIT`] in all (progress
/// messages keep a stream alive, so a missing event must not wait forever).
async fn take_events(watch: &mut EventWatch, count: usize) -> Vec<v1::Event> {
    let started = Instant::now();
    let mut events = Vec::new();
    while events.len() < count {
        events.extend(next(watch).await.events);
        assert!(
            started.elapsed() < EVENTS_WAIT,
            "{} of {count} events arrived",
            events.len()
        );
    }
    events
}

/// Creates and starts a call of `tenant` (which an agent's token names; an admin's does not).
async fn create_call(client: &Client, tenant: &str, source: &str) -> String {
    let call = client
        .create_call(v1::CreateCallRequest {
            tenant_id: tenant.to_owned(),
            source: source.to_owned(),
            channel: v1::Channel::Voice.into(),
            ..Default::default()
        })
        .await
        .expect("create call")
        .call
        .expect("call");
    client
        .start_call(v1::StartCallRequest {
            tenant_id: tenant.to_owned(),
            call_id: call.call_id.clone(),
            ..Default::default()
        })
        .await
        .expect("start call");
    call.call_id
}

async fn log_event(client: &Client, call_id: &str, event_type: &str, lane: &str) {
    client
        .log_event(v1::LogEventRequest {
            call_id: call_id.to_owned(),
            event_type: event_type.to_owned(),
            metadata: [("lane".to_owned(), lane.to_owned())].into(),
            payload: Some(v1::log_event_request::Payload::PayloadJson(
                r#"{"n":1}"#.to_owned(),
            )),
            ..Default::default()
        })
        .await
        .expect("log event");
}

/// The position a status that ended a watch says to resume from.
fn positions(events: &[v1::Event]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_streams_the_matching_events_in_order_from_a_position_and_from_now() {
    let mut cluster = ProcessCluster::start(binary(), 3, &[]).expect("start cluster");
    let follower = follower_of(&mut cluster).await;
    let token = cluster.token("w", "acme", "agent").expect("token");
    let writer = client_on(&cluster, &token, cluster.endpoints());
    let on_follower = client_on(&cluster, &token, vec![cluster.grpc(follower)]);

    let first = create_call(&writer, TENANT, "first").await;
    let second = create_call(&writer, TENANT, "second").await;
    log_event(&writer, &first, "agent.note", "x").await;
    log_event(&writer, &second, "agent.note", "x").await;
    log_event(&writer, &second, "agent.note", "y").await;
    log_event(&writer, &second, "billing.charged", "x").await;

    // One call's events from the start: exactly what ListCallEvents says, in order.
    let expected = writer
        .list_call_events(v1::ListCallEventsRequest {
            call_id: second.clone(),
            read: linearizable(),
            ..Default::default()
        })
        .await
        .expect("list the call's events")
        .events;
    assert_eq!(
        expected.len(),
        5,
        "created, started, three logged: {expected:?}"
    );
    let mut watch = on_follower.watch_events(v1::WatchEventsRequest {
        from_position: Some(1),
        call_id: second.clone(),
        ..Default::default()
    });
    let got = take_events(&mut watch, expected.len()).await;
    assert_eq!(got, expected);

    // Type prefixes and metadata, together.
    let mut filtered = on_follower.watch_events(v1::WatchEventsRequest {
        from_position: Some(1),
        event_type_prefixes: vec!["agent.".to_owned(), "billing.".to_owned()],
        metadata: [("lane".to_owned(), "x".to_owned())].into(),
        ..Default::default()
    });
    let got = take_events(&mut filtered, 3).await;
    let kinds: Vec<(&str, &str)> = got
        .iter()
        .map(|e| (e.call_id.as_str(), e.event_type.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (first.as_str(), "agent.note"),
            (second.as_str(), "agent.note"),
            (second.as_str(), "billing.charged"),
        ]
    );

    // From now: the first message (a progress message) opens the watch at the log's end; what
    // commits after it arrives, and nothing before.
    let mut live = on_follower.watch_events(v1::WatchEventsRequest {
        progress_interval_ms: 200,
        ..Default::default()
    });
    let opened = next(&mut live).await;
    assert!(opened.events.is_empty(), "{opened:?}");
    assert_eq!(opened.node_id, follower);
    let third = create_call(&writer, TENANT, "third").await;
    let got = take_events(&mut live, 2).await;
    assert_eq!(
        got.iter()
            .map(|e| (e.call_id.as_str(), e.event_type.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (third.as_str(), "call.created"),
            (third.as_str(), "call.started")
        ]
    );
    assert!(got[0].position >= opened.resume_from, "{got:?} {opened:?}");

    // Progress keeps coming on a filter nothing matches, with a checkpoint that moves on.
    let mut sparse = on_follower.watch_events(v1::WatchEventsRequest {
        from_position: Some(1),
        event_type_prefixes: vec!["nothing.matches.".to_owned()],
        progress_interval_ms: 100,
        ..Default::default()
    });
    let head = got.last().expect("events").position;
    let started = Instant::now();
    loop {
        let message = next(&mut sparse).await;
        assert!(message.events.is_empty(), "{message:?}");
        if message.resume_from > head {
            assert!(message.applied_index > 0);
            break;
        }
        assert!(
            started.elapsed() < MESSAGE_WAIT,
            "the checkpoint never passed {head}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_watches_only_its_own_events_and_bad_filters_are_refused_by_name() {
    let mut cluster = ProcessCluster::start(binary(), 3, &[]).expect("start cluster");
    follower_of(&mut cluster).await;
    let acme = Client::new(
        cluster.client_config_with_token(&cluster.token("a", "acme", "agent").expect("token")),
    )
    .expect("client");
    let globex_token = cluster.token("g", "globex", "viewer").expect("token");
    let globex = Client::new(cluster.client_config_with_token(&globex_token)).expect("client");
    let globex_agent = Client::new(
        cluster.client_config_with_token(&cluster.token("g2", "globex", "agent").expect("token")),
    )
    .expect("client");
    let acme_call = create_call(&acme, TENANT, "acme-secret").await;
    let globex_call = create_call(&globex_agent, "globex", "globex").await;

    let mut watch = globex.watch_events(v1::WatchEventsRequest {
        from_position: Some(1),
        ..Default::default()
    });
    let got = take_events(&mut watch, 2).await;
    assert!(
        got.iter()
            .all(|e| e.tenant_id == "globex" && e.call_id == globex_call),
        "{got:?}"
    );
    // The admin sees both tenants.
    let admin = Client::new(cluster.client_config()).expect("client");
    let mut all = admin.watch_events(v1::WatchEventsRequest {
        from_position: Some(1),
        ..Default::default()
    });
    let got = take_events(&mut all, 4).await;
    assert!(got.iter().any(|e| e.tenant_id == "acme"), "{got:?}");
    assert!(got.iter().any(|e| e.tenant_id == "globex"), "{got:?}");

    let refused = |request: v1::WatchEventsRequest| {
        let globex = globex.clone();
        async move {
            let mut watch = globex.watch_events(request);
            tokio::time::timeout(MESSAGE_WAIT, watch.next())
                .await
                .expect("an answer in time")
                .expect_err("refused")
        }
    };
    let other_call = refused(v1::WatchEventsRequest {
        call_id: acme_call.clone(),
        ..Default::default()
    })
    .await;
    assert_eq!(other_call.code, Code::NotFound, "{other_call:?}");
    // Final only once every node said so: a node that has not applied a new call yet says the
    // same, and the next one may have.
    assert_eq!(other_call.attempts, 3, "{other_call:?}");
    let other_tenant = refused(v1::WatchEventsRequest {
        tenant_id: "acme".to_owned(),
        ..Default::default()
    })
    .await;
    assert_eq!(
        other_tenant.code,
        Code::PermissionDenied,
        "{other_tenant:?}"
    );
    let too_many = refused(v1::WatchEventsRequest {
        event_type_prefixes: vec!["a".to_owned(); 17],
        ..Default::default()
    })
    .await;
    assert_eq!(too_many.code, Code::InvalidArgument, "{too_many:?}");
    assert!(
        too_many.message.contains("event_type_prefixes"),
        "{too_many:?}"
    );
    let malformed = refused(v1::WatchEventsRequest {
        call_id: "not-a-uuid".to_owned(),
        ..Default::default()
    })
    .await;
    assert_eq!(malformed.code, Code::InvalidArgument, "{malformed:?}");
    // No token at all.
    let anonymous = Client::new(ClientConfig {
        token: None,
        ..cluster.client_config()
    })
    .expect("client");
    let mut watch = anonymous.watch_events(v1::WatchEventsRequest::default());
    let error = tokio::time::timeout(MESSAGE_WAIT, watch.next())
        .await
        .expect("an answer in time")
        .expect_err("no token");
    assert_eq!(error.code, Code::Unauthenticated, "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_on_another_node_when_its_node_dies_and_sees_each_event_once() {
    const CALLS: usize = 60;
    let mut cluster = ProcessCluster::start(binary(), 3, &[]).expect("start cluster");
    follower_of(&mut cluster).await;
    let admin = Client::new(cluster.client_config()).expect("client");
    let mut watch = admin.watch_events(v1::WatchEventsRequest {
        from_position: Some(1),
        progress_interval_ms: 200,
        ..Default::default()
    });
    let writer = admin.clone();
    let writes = tokio::spawn(async move {
        for n in 0..CALLS {
            // Each call: created and started, two events. A write cut by the kill is retried
            // by the client on the new leader with the same request id.
            create_call(&writer, TENANT, &format!("call-{n}")).await;
        }
    });

    let mut events = Vec::new();
    let mut killed = None;
    let started = Instant::now();
    while events.len() < 2 * CALLS {
        let message = next(&mut watch).await;
        events.extend(message.events);
        if killed.is_none() && events.len() >= CALLS / 2 {
            cluster
                .kill(message.node_id)
                .expect("kill the serving node");
            killed = Some(message.node_id);
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "only {} events arrived",
            events.len()
        );
    }
    writes.await.expect("writer");
    assert!(watch.resumed() >= 1, "the watch moved off the killed node");
    // The admin's unfiltered watch is the whole log: positions 1, 2, 3, ... each once.
    let expected: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(positions(&events), expected);
    let listed = admin
        .list_events(v1::ListEventsRequest {
            read: linearizable(),
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("list events")
        .events;
    assert_eq!(events, listed[..events.len()].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_leader_ends_its_watches_with_the_position_to_resume_from() {
    let mut cluster = ProcessCluster::start(binary(), 3, &[]).expect("start cluster");
    let follower = follower_of(&mut cluster).await;
    let admin = client_on(
        &cluster,
        cluster.admin_token().expect("admin token"),
        cluster.endpoints(),
    );
    create_call(&admin, TENANT, "before").await;
    let mut raw = v1::watch_service_client::WatchServiceClient::new(
        cluster.channel(follower).expect("channel"),
    );
    let mut stream = raw
        .watch_events(v1::WatchEventsRequest {
            from_position: Some(1),
            progress_interval_ms: 200,
            ..Default::default()
        })
        .await
        .expect("open the watch")
        .into_inner();
    let mut resume_from = 0;
    while resume_from < 3 {
        let message = tokio::time::timeout(MESSAGE_WAIT, stream.message())
            .await
            .expect("in time")
            .expect("a message")
            .expect("not ended");
        resume_from = message.resume_from;
    }
    for id in (1..=3).filter(|id| *id != follower) {
        cluster.kill(id).expect("kill");
    }
    let cut = Instant::now();
    let status = loop {
        match tokio::time::timeout(MESSAGE_WAIT, stream.message())
            .await
            .expect("the watch ends in time")
        {
            Ok(Some(message)) => resume_from = message.resume_from,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("heard from no leader"),
        "{status:?}"
    );
    assert_eq!(
        client::resume_from_of(&status),
        Some(resume_from),
        "{status:?}"
    );
    assert!(
        cut.elapsed() >= Duration::from_millis(2_500),
        "ended after {:?}, before the contact bound",
        cut.elapsed()
    );
    // And a new watch there is refused while it stays cut off.
    let refused = raw
        .watch_events(v1::WatchEventsRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_is_ended_with_the_position_to_resume_from() {
    const LAG_MAX: u64 = 100;
    const CALLS: usize = 600;
    let cluster = ProcessCluster::start(binary(), 1, &["--watch-lag-max", &LAG_MAX.to_string()])
        .expect("start cluster");
    let admin = Client::new(cluster.client_config()).expect("client");
    create_call(&admin, TENANT, "first").await;
    let mut raw =
        v1::watch_service_client::WatchServiceClient::new(cluster.channel(1).expect("channel"));
    let mut stream = raw
        .watch_events(v1::WatchEventsRequest {
            from_position: Some(1),
            ..Default::default()
        })
        .await
        .expect("open the watch")
        .into_inner();
    // Large events, so that the transport's buffers (the HTTP/2 stream window of 2 MiB, the
    // server's send buffer) fill while nobody reads: 600 of 32 KiB are about 19 MiB.
    let call_id = create_call(&admin, TENANT, "second").await;
    let payload = format!(r#"{{"blob":"{}"}}"#, "x".repeat(32 << 10));
    let writes = (0..CALLS).map(|n| {
        let (admin, call_id, payload) = (admin.clone(), call_id.clone(), payload.clone());
        async move {
            admin
                .log_event(v1::LogEventRequest {
                    tenant_id: TENANT.to_owned(),
                    call_id,
                    event_type: format!("bulk.{n}"),
                    payload: Some(v1::log_event_request::Payload::PayloadJson(payload)),
                    ..Default::default()
                })
                .await
                .expect("log event");
        }
    });
    futures::stream::iter(writes)
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    // The watcher looks at the lag once its buffer has been full for a second.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut delivered = Vec::new();
    let mut resume_from = 1;
    let reading = Instant::now();
    let status = loop {
        assert!(
            reading.elapsed() < Duration::from_secs(60),
            "the watch was never ended; it delivered up to {resume_from}"
        );
        match tokio::time::timeout(MESSAGE_WAIT, stream.message())
            .await
            .expect("in time")
        {
            Ok(Some(message)) => {
                delivered.extend(message.events);
                resume_from = message.resume_from;
            }
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("stopped reading"), "{status:?}");
    assert_eq!(
        client::resume_from_of(&status),
        Some(resume_from),
        "{status:?}"
    );
    let total = 4 + CALLS as u64;
    assert!(resume_from <= total, "{resume_from}");
    // Resuming there delivers the rest: together, every position once.
    let mut rest = admin.watch_events(v1::WatchEventsRequest {
        from_position: Some(resume_from),
        ..Default::default()
    });
    let remaining = (total + 1 - resume_from) as usize;
    delivered.extend(take_events(&mut rest, remaining).await);
    let expected: Vec<u64> = (1..=total).collect();
    assert_eq!(positions(&delivered), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_of_one_call_hear_only_it_and_checkpoint_past_more_batches_than_the_ring_holds() {
    // More applies than the tail's ring keeps, between two events of the watched call: the
    // watchers of that call, woken only for it, must still deliver it once and move their
    // checkpoint past the others.
    const OTHERS: usize = node::watch::TAIL_BATCHES_RETAINED + 200;
    const WRITERS: usize = 8;
    // Few batches may wait for a watcher of one call; past them it reads storage.
    let mut cluster =
        ProcessCluster::start(binary(), 1, &["--watch-handover-max", "4"]).expect("start cluster");
    cluster
        .wait_for_leader(LEADER_WAIT)
        .await
        .expect("a leader");
    let token = cluster.token("w", TENANT, "agent").expect("token");
    let client = client_on(&cluster, &token, cluster.endpoints());
    let quiet = create_call(&client, TENANT, "quiet").await;
    let busy = create_call(&client, TENANT, "busy").await;
    let watch_of = |call: &str| {
        client.watch_events(v1::WatchEventsRequest {
            call_id: call.to_owned(),
            progress_interval_ms: 100,
            ..Default::default()
        })
    };
    let mut quiet_watches = [watch_of(&quiet), watch_of(&quiet)];
    let mut busy_watch = watch_of(&busy);
    // Not read until every write is done: the events are large, so the transport's window and
    // then its buffer fill, the batches handed to it pass their bound, and it must read the
    // rest from storage.
    let mut busy_late = watch_of(&busy);
    for watch in quiet_watches
        .iter_mut()
        .chain([&mut busy_watch, &mut busy_late])
    {
        let opened = next(watch).await;
        assert!(opened.events.is_empty(), "{opened:?}");
    }

    log_event(&client, &quiet, "agent.note", "before").await;
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (client, busy) = (client.clone(), busy.clone());
        writers.spawn(async move {
            for _ in (w..OTHERS).step_by(WRITERS) {
                client
                    .log_event(v1::LogEventRequest {
                        call_id: busy.clone(),
                        event_type: "agent.note".to_owned(),
                        metadata: [("lane".to_owned(), "busy".to_owned())].into(),
                        payload: Some(v1::log_event_request::Payload::PayloadJson(format!(
                            r#"{{"pad":"{}"}}"#,
                            "x".repeat(8 * 1024)
                        ))),
                        ..Default::default()
                    })
                    .await
                    .expect("log event");
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.expect("writer");
    }
    log_event(&client, &quiet, "agent.note", "after").await;

    let busy_events = take_events(&mut busy_watch, OTHERS).await;
    let busy_positions = positions(&busy_events);
    assert!(
        busy_positions.windows(2).all(|w| w[0] < w[1]),
        "in order, once"
    );
    assert!(busy_events.iter().all(|e| e.call_id == busy));
    let late = take_events(&mut busy_late, OTHERS).await;
    assert_eq!(
        positions(&late),
        busy_positions,
        "the late reader sees the same"
    );
    let last_busy = *busy_positions.last().expect("events");
    for watch in &mut quiet_watches {
        let got = take_events(watch, 2).await;
        let lanes: Vec<&str> = got.iter().map(|e| e.metadata["lane"].as_str()).collect();
        assert_eq!(lanes, ["before", "after"], "{got:?}");
        assert!(got[0].position < busy_positions[0] && got[1].position > last_busy);
        // Then only checkpoints, past the last event.
        let started = Instant::now();
        loop {
            let message = next(watch).await;
            assert!(message.events.is_empty(), "{message:?}");
            if message.resume_from > got[1].position {
                break;
            }
            assert!(started.elapsed() < MESSAGE_WAIT, "the checkpoint stayed");
        }
    }
}
