//! The derived tables (indexes and counters over the events) are rebuilt at open when a store
//! does not hold their current version, as one written by a release before them does, and the
//! rebuilt tables are those the apply path writes.

use domain::{
    Activity, ActivityInput, ActivityStatus, ActivityType, CallId, Channel, Command, EventFilter,
    Labels, Severity,
};
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use raft_store::keys::{self, CF_SM, COLUMN_FAMILIES, table};
use raft_store::{EventQuery, TypeConfig};

mod support;

const TENANT: &str = "acme";

use support::stamp;

fn record(task: &str, severity: Severity) -> ActivityInput {
    ActivityInput {
        activity_type: ActivityType::Progress,
        activity: Activity {
            agent_type: "agent-api".into(),
            agent_name: "API".into(),
            project_id: "P".into(),
            task_id: task.into(),
            task_description: String::new(),
            severity,
            status: ActivityStatus::InProgress,
            message: String::new(),
        },
        call_id: None,
        payload: String::new(),
        metadata: Labels::new(),
    }
}

#[test]
fn derived_tables_missing_from_a_store_are_rebuilt_at_open_as_the_apply_path_writes_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let call_id = CallId::from_u128(9);
    {
        let mut store = support::open(dir.path());
        let mut entries = vec![
            support::blank(1, 0),
            support::normal(
                1,
                1,
                support::request(
                    TENANT,
                    "create",
                    Command::CreateCall {
                        source: "web".into(),
                        channel: Channel::Chat,
                        metadata: Labels::new(),
                        trace_id: None,
                    },
                    stamp(1_000, Some(call_id)),
                ),
            ),
        ];
        for n in 0..20u64 {
            let severity = if n % 5 == 0 {
                Severity::Error
            } else {
                Severity::Info
            };
            entries.push(support::normal(
                1,
                2 + n,
                support::request(
                    TENANT,
                    &format!("a{n}"),
                    Command::RecordActivity {
                        entries: vec![record(&format!("T-{}", n % 3), severity)],
                    },
                    stamp(2_000 + n * 60_000, None),
                ),
            ));
        }
        store
            .state_machine
            .apply_batch(entries.clone())
            .expect("apply the entries");
        // The log holds what was applied, as a node's does (a reopened store checks it).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let (tx, rx) = TypeConfig::oneshot();
            store
                .log
                .append(entries, IOFlushed::signal(tx))
                .await
                .expect("append");
            rx.await.expect("ack").expect("durable");
        });
        assert_eq!(
            store.state_machine.verify_indexes(8).expect("verify"),
            Vec::<String>::new()
        );
    }
    let before = {
        let store = support::open(dir.path());
        store.state_machine.reader().digest().expect("digest").value
    };

    // What a store of the release before the derived tables holds: none of them.
    {
        let path = dir.path().join("rocksdb");
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, COLUMN_FAMILIES)
            .expect("open the store's RocksDB");
        let cf = db.cf_handle(CF_SM).expect("state machine column family");
        db.delete_range_cf(cf, [table::DERIVED_FIRST], [table::DERIVED_LAST + 1])
            .expect("drop the derived tables");
        db.delete_cf(cf, keys::SM_INDEX_VERSION)
            .expect("drop the version");
        db.flush_cf(cf).expect("flush");
    }

    let store = support::open(dir.path());
    assert_eq!(
        store.state_machine.verify_indexes(8).expect("verify"),
        Vec::<String>::new(),
        "the tables are rebuilt at open"
    );
    let reader = store.state_machine.reader();
    assert_eq!(
        reader.digest().expect("digest").value,
        before,
        "byte for byte what the apply path wrote"
    );
    let errors = reader
        .query_events(&EventQuery {
            filter: EventFilter {
                tenant_id: Some(TENANT.into()),
                min_severity: Some(Severity::Error),
                ..EventFilter::default()
            },
            with_total: true,
            ..EventQuery::default()
        })
        .expect("query")
        .value;
    assert_eq!(errors.items.len(), 4);
    assert_eq!(errors.total.map(|t| (t.count, t.exact)), Some((4, true)));
    // A time window: the records stamped in the last five minutes of the twenty.
    let recent = reader
        .query_events(&EventQuery {
            filter: EventFilter {
                tenant_id: Some(TENANT.into()),
                ..EventFilter::default()
            },
            from_ms: Some(2_000 + 15 * 60_000),
            ..EventQuery::default()
        })
        .expect("query")
        .value;
    assert_eq!(recent.items.len(), 5);
    let stats = reader
        .event_stats(TENANT, Some("P"), None, None, 0)
        .expect("stats")
        .value;
    assert_eq!((stats.total, stats.activity), (20, 20));
}
