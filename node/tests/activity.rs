//! Agent activity against real node processes: recording (single, batch, the buffered
//! emitter), queries and statistics from any node, watches filtered by activity fields,
//! retention, and the CLI.

use std::process::Command;
use std::time::Duration;

use client::{Client, ClientConfig, EmitterConfig};
use harness::ProcessCluster;
use proto::v1;
use tonic::Code;

const LEADER_WAIT: Duration = Duration::from_secs(30);
const MESSAGE_WAIT: Duration = Duration::from_secs(20);

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_switchboard"))
}

fn linearizable() -> Option<v1::ReadOptions> {
    Some(v1::ReadOptions {
        consistency: v1::Consistency::Linearizable.into(),
        min_index: 0,
    })
}

fn client_on(cluster: &ProcessCluster, token: &str, endpoints: Vec<String>) -> Client {
    Client::new(ClientConfig {
        endpoints,
        ..cluster.client_config_with_token(token)
    })
    .expect("client config")
}

fn entry(
    activity_type: v1::ActivityType,
    agent: &str,
    project: &str,
    task: &str,
    severity: v1::Severity,
) -> v1::ActivityEntry {
    v1::ActivityEntry {
        activity_type: activity_type.into(),
        activity: Some(v1::Activity {
            agent_type: agent.to_owned(),
            agent_name: format!("{agent} (test)"),
            project_id: project.to_owned(),
            task_id: task.to_owned(),
            task_description: "build the endpoint".to_owned(),
            severity: severity.into(),
            status: v1::ActivityStatus::InProgress.into(),
            message: String::new(),
        }),
        payload_json: r#"{"step":1}"#.to_owned(),
        ..Default::default()
    }
}

async fn record(client: &Client, entries: Vec<v1::ActivityEntry>) -> v1::RecordActivityResponse {
    client
        .record_activity(v1::RecordActivityRequest {
            entries,
            ..Default::default()
        })
        .await
        .expect("record activity")
}

async fn query(client: &Client, request: v1::QueryEventsRequest) -> v1::QueryEventsResponse {
    client
        .query_events(v1::QueryEventsRequest {
            read: linearizable(),
            ..request
        })
        .await
        .expect("query events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_is_recorded_queried_counted_and_watched_from_any_node() {
    let mut cluster = ProcessCluster::start(binary(), 3, &[]).expect("start cluster");
    let leader = cluster
        .wait_for_leader(LEADER_WAIT)
        .await
        .expect("a leader");
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let token = cluster.token("agent-1", "acme", "agent").expect("token");
    let writer = client_on(&cluster, &token, cluster.endpoints());
    let on_follower = client_on(&cluster, &token, vec![cluster.grpc(follower)]);

    // A watch of warnings and worse, from now, on a follower.
    let mut watch = on_follower.watch_events(v1::WatchEventsRequest {
        min_severity: v1::Severity::Warning.into(),
        progress_interval_ms: 100,
        ..Default::default()
    });
    tokio::time::timeout(MESSAGE_WAIT, watch.next())
        .await
        .expect("a first message")
        .expect("the watch opens");

    use v1::ActivityType as T;
    use v1::Severity as S;
    let batch = vec![
        entry(T::Started, "agent-api", "P-1", "T-1", S::Info),
        entry(T::Progress, "agent-api", "P-1", "T-1", S::Debug),
        entry(T::Error, "agent-api", "P-1", "T-1", S::Error),
        entry(T::Started, "agent-qa", "P-2", "T-2", S::Info),
        entry(T::Completed, "agent-qa", "P-2", "T-2", S::Info),
        entry(T::ConflictDetected, "agent-sec", "P-1", "T-3", S::Critical),
    ];
    let recorded = record(&writer, batch).await;
    assert_eq!(recorded.last_position - recorded.first_position + 1, 6);

    // Severity at least warning: the error and the conflict, in order, on the follower.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let message = tokio::time::timeout(MESSAGE_WAIT, watch.next())
            .await
            .expect("a watch message in time")
            .expect("the watch goes on");
        seen.extend(message.events);
    }
    let types: Vec<&str> = seen.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["agent.error", "agent.conflict_detected"]);
    assert!(
        seen.iter()
            .all(|e| e.activity.is_some() && e.call_id.is_empty())
    );

    // Queries, newest first by default, served by the follower.
    let project = query(
        &on_follower,
        v1::QueryEventsRequest {
            project_id: "P-1".to_owned(),
            newest_first: true,
            with_total: true,
            ..Default::default()
        },
    )
    .await;
    let types: Vec<&str> = project
        .events
        .iter()
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "agent.conflict_detected",
            "agent.error",
            "agent.progress",
            "agent.started"
        ]
    );
    assert_eq!((project.total, project.total_exact), (4, true));

    // Pages: one event at a time, oldest first, following the token.
    let mut token_of_page = String::new();
    let mut paged = Vec::new();
    loop {
        let page = query(
            &on_follower,
            v1::QueryEventsRequest {
                agent_type: "agent-api".to_owned(),
                limit: 1,
                page_token: token_of_page.clone(),
                ..Default::default()
            },
        )
        .await;
        paged.extend(page.events.into_iter().map(|e| e.position));
        if page.next_page_token.is_empty() {
            break;
        }
        token_of_page = page.next_page_token;
    }
    let first = recorded.first_position;
    assert_eq!(paged, [first, first + 1, first + 2]);

    // A combined filter counts by walking, exactly when it is small.
    let combined = query(
        &on_follower,
        v1::QueryEventsRequest {
            project_id: "P-1".to_owned(),
            min_severity: S::Error.into(),
            with_total: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!((combined.total, combined.total_exact), (2, true));

    // Statistics: by type, by severity, per agent with its success rate.
    let stats = on_follower
        .event_stats(v1::EventStatsRequest {
            read: linearizable(),
            ..Default::default()
        })
        .await
        .expect("stats");
    assert_eq!(stats.activity, 6);
    assert_eq!(stats.by_severity.get("info"), Some(&3));
    assert_eq!(stats.by_type.get("agent.started"), Some(&2));
    let api = stats
        .agents
        .iter()
        .find(|a| a.agent_type == "agent-api")
        .expect("agent-api");
    assert_eq!((api.records, api.completed, api.errors), (3, 0, 1));
    assert_eq!(api.success_rate, Some(0.0));
    let qa = stats
        .agents
        .iter()
        .find(|a| a.agent_type == "agent-qa")
        .expect("agent-qa");
    assert_eq!(qa.success_rate, Some(1.0));
    assert_eq!(
        stats.buckets.iter().map(|b| b.events).sum::<u64>(),
        stats.total
    );

    // Another tenant sees none of it.
    let globex = cluster.token("g", "globex", "viewer").expect("token");
    let globex = client_on(&cluster, &globex, cluster.endpoints());
    let theirs = query(
        &globex,
        v1::QueryEventsRequest {
            with_total: true,
            ..Default::default()
        },
    )
    .await;
    assert!(theirs.events.is_empty());
    assert_eq!(theirs.total, 0);

    // A record about a call of another tenant: that call does not exist.
    let globex_agent = cluster.token("ga", "globex", "agent").expect("token");
    let globex_agent = client_on(&cluster, &globex_agent, cluster.endpoints());
    let call = globex_agent
        .create_call(v1::CreateCallRequest {
            source: "web".to_owned(),
            channel: v1::Channel::Chat.into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .call
        .expect("call");
    let mut about = entry(T::Progress, "agent-api", "", "T-9", S::Info);
    about.call_id = call.call_id.clone();
    let refused = writer
        .record_activity(v1::RecordActivityRequest {
            entries: vec![about.clone()],
            ..Default::default()
        })
        .await
        .expect_err("another tenant's call");
    assert_eq!(refused.code(), Code::NotFound, "{refused}");
    // ... and its own call is fine, and the record is found by the call.
    let recorded = record(&globex_agent, vec![about]).await;
    let by_call = query(
        &globex_agent,
        v1::QueryEventsRequest {
            call_id: call.call_id.clone(),
            event_types: vec!["agent.progress".to_owned()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        by_call
            .events
            .iter()
            .map(|e| e.position)
            .collect::<Vec<_>>(),
        [recorded.first_position]
    );

    // Out of bounds: named field.
    let invalid = writer
        .record_activity(v1::RecordActivityRequest {
            entries: vec![entry(T::Started, "", "P", "T", S::Info)],
            ..Default::default()
        })
        .await
        .expect_err("no agent type");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert!(invalid.to_string().contains("agent_type"), "{invalid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_the_oldest_activity_and_never_call_events() {
    let mut cluster = ProcessCluster::start(binary(), 1, &[]).expect("start cluster");
    cluster
        .wait_for_leader(LEADER_WAIT)
        .await
        .expect("a leader");
    let agent = cluster.token("a", "acme", "agent").expect("token");
    let agent = client_on(&cluster, &agent, cluster.endpoints());
    let admin = cluster.token("ops", "*", "admin").expect("token");
    let admin = client_on(&cluster, &admin, cluster.endpoints());
    agent
        .create_call(v1::CreateCallRequest {
            source: "web".to_owned(),
            channel: v1::Channel::Chat.into(),
            ..Default::default()
        })
        .await
        .expect("create");
    for n in 0..3 {
        let batch = (0..10)
            .map(|k| {
                entry(
                    v1::ActivityType::Progress,
                    "agent-api",
                    "P",
                    &format!("T-{n}-{k}"),
                    v1::Severity::Info,
                )
            })
            .collect();
        record(&agent, batch).await;
    }
    // An agent may not set retention.
    let refused = agent
        .set_retention(v1::SetRetentionRequest {
            max_records: 5,
            ..Default::default()
        })
        .await
        .expect_err("agents do not set retention");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let set = admin
        .set_retention(v1::SetRetentionRequest {
            tenant_id: "acme".to_owned(),
            max_records: 5,
            ..Default::default()
        })
        .await
        .expect("set retention");
    assert_eq!((set.compacted, set.more), (25, false));
    let left = query(
        &agent,
        v1::QueryEventsRequest {
            with_total: true,
            ..Default::default()
        },
    )
    .await;
    // The five newest records and the call's one event.
    assert_eq!(left.total, 6);
    let tasks: Vec<String> = left
        .events
        .iter()
        .filter_map(|e| e.activity.as_ref().map(|a| a.task_id.clone()))
        .collect();
    assert_eq!(tasks, ["T-2-5", "T-2-6", "T-2-7", "T-2-8", "T-2-9"]);
    assert!(left.events.iter().any(|e| e.event_type == "call.created"));
    // Past the bound, a new record compacts in the same write.
    let recorded = record(
        &agent,
        vec![entry(
            v1::ActivityType::Completed,
            "agent-api",
            "P",
            "T-last",
            v1::Severity::Info,
        )],
    )
    .await;
    assert_eq!(recorded.compacted, 1);
    let compacted = admin
        .compact_activity(v1::CompactActivityRequest {
            tenant_id: "acme".to_owned(),
            ..Default::default()
        })
        .await
        .expect("compact");
    assert_eq!(compacted.compacted, 0);
    let stats = agent
        .event_stats(v1::EventStatsRequest::default())
        .await
        .expect("stats");
    assert_eq!((stats.activity, stats.total), (5, 6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emitter_batches_without_blocking_and_counts_what_it_drops() {
    let mut cluster = ProcessCluster::start(binary(), 1, &[]).expect("start cluster");
    cluster
        .wait_for_leader(LEADER_WAIT)
        .await
        .expect("a leader");
    let token = cluster.token("a", "acme", "agent").expect("token");
    let agent = client_on(&cluster, &token, cluster.endpoints());
    let emitter = agent.activity_emitter(EmitterConfig::default());
    for n in 0..250 {
        assert!(emitter.emit(entry(
            v1::ActivityType::Progress,
            "agent-api",
            "P",
            &format!("T-{n}"),
            v1::Severity::Info,
        )));
    }
    let stats = emitter.close().await;
    assert_eq!((stats.sent, stats.dropped, stats.failed), (250, 0, 0));
    assert!(stats.batches >= 3, "{stats:?}");
    let all = query(
        &agent,
        v1::QueryEventsRequest {
            with_total: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(all.total, 250);

    // A cluster that does not answer: the buffer fills, emit returns at once, drops count.
    cluster.kill(1).expect("kill the node");
    let unreachable = client_on(&cluster, &token, cluster.endpoints());
    let emitter = unreachable.activity_emitter(EmitterConfig {
        buffer_max: 10,
        batch_max: 5,
        ..EmitterConfig::default()
    });
    let started = std::time::Instant::now();
    let accepted = (0..1_000)
        .filter(|n| {
            emitter.emit(entry(
                v1::ActivityType::Progress,
                "agent-api",
                "P",
                &format!("U-{n}"),
                v1::Severity::Info,
            ))
        })
        .count();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "emit never waits"
    );
    let stats = emitter.stats();
    assert_eq!(stats.dropped as usize, 1_000 - accepted);
    assert!(stats.dropped >= 900, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_records_queries_and_counts_activity() {
    let mut cluster = ProcessCluster::start(binary(), 1, &[]).expect("start cluster");
    cluster
        .wait_for_leader(LEADER_WAIT)
        .await
        .expect("a leader");
    let token = cluster.token("a", "acme", "agent").expect("token");
    let cli = |args: &[&str]| {
        let mut command = Command::new(binary());
        command
            .args(args)
            .args(["--endpoints", &cluster.endpoints().join(",")])
            .args(["--token", &token]);
        match cluster.certs_dir() {
            Some(certs) => command.arg("--ca").arg(certs.join("ca.pem")),
            None => command.arg("--insecure"),
        };
        let output = command.output().expect("run the CLI");
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    };
    cli(&[
        "activity",
        "record",
        "--type",
        "error",
        "--agent-type",
        "agent-api",
        "--task",
        "T-1",
        "--severity",
        "error",
        "--message",
        "upstream 500",
        "--project",
        "P-1",
    ]);
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let line = r#"{"activityType":"ACTIVITY_TYPE_COMPLETED","activity":{"agentType":"agent-api","agentName":"API","taskId":"T-2","severity":"SEVERITY_INFO","status":"ACTIVITY_STATUS_COMPLETED"}}"#;
    std::fs::write(file.path(), format!("{line}\n").repeat(150)).expect("write lines");
    let out = cli(&[
        "activity",
        "record",
        "--file",
        file.path().to_str().expect("utf-8 path"),
    ]);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("recorded")).count(),
        2,
        "{out}"
    );

    let out = cli(&[
        "events",
        "query",
        "--min-severity",
        "error",
        "--total",
        "-o",
        "json",
    ]);
    let response: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(response["total"], "1", "{out}");
    assert_eq!(response["events"][0]["activity"]["message"], "upstream 500");
    let out = cli(&["events", "stats"]);
    assert!(
        out.contains("agent agent-api: 151 records, 150 completed, 1 errors, success 99.3%"),
        "{out}"
    );
}
