//! Pages are bounded in bytes as well as in count: a page holds what fits in
//! `PAGE_BYTES_MAX` (at least one item) and says where the next one starts, so that a call
//! with many large events can still be listed. Before this bound, 100 valid 64 KiB events on
//! one call made `ListCallEvents` and `ListEvents` with the default limit fail with
//! OUT_OF_RANGE ("encoded message length too large").

use domain::limits::{EVENT_PAYLOAD_BYTES_MAX, PAGE_BYTES_MAX, PAGE_SIZE_MAX};
use domain::{CallId, Channel, Command, Labels, Payload, Stamp};
use raft_store::Reader;

mod support;

const TENANT: &str = "acme";
const BIG_EVENTS: u64 = 100;

/// A store holding one call with `BIG_EVENTS` events of the largest payload allowed.
fn store_with_big_events(dir: &std::path::Path) -> (raft_store::Store, CallId) {
    let mut store = support::open(dir);
    let call_id = CallId::from_u128(42);
    let stamp = |at_ms, minted_call_id| Stamp {
        at_ms,
        minted_call_id,
        minted_trace_id: None,
    };
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
                    channel: Channel::Voice,
                    metadata: Labels::new(),
                    trace_id: None,
                },
                stamp(1, Some(call_id)),
            ),
        ),
        support::normal(
            1,
            2,
            support::request(
                TENANT,
                "start",
                Command::StartCall { call_id },
                stamp(2, None),
            ),
        ),
    ];
    // A JSON string filling the payload bound exactly.
    let payload = format!("\"{}\"", "x".repeat(EVENT_PAYLOAD_BYTES_MAX - 2));
    for n in 0..BIG_EVENTS {
        entries.push(support::normal(
            1,
            3 + n,
            support::request(
                TENANT,
                &format!("event-{n}"),
                Command::LogEvent {
                    call_id,
                    event_type: "agent.note".into(),
                    payload: Payload::Json(payload.clone()),
                    metadata: Labels::new(),
                },
                stamp(3 + n, None),
            ),
        ));
    }
    let responses = store
        .state_machine
        .apply_batch(entries)
        .expect("apply entries");
    for response in responses.iter().skip(1) {
        let outcome = response.outcome.as_ref().expect("request outcome");
        assert!(outcome.result.is_ok(), "{outcome:?}");
    }
    (store, call_id)
}

/// Every page of a listing, following `next` from the start.
fn all_pages<T>(mut read: impl FnMut(u64) -> raft_store::Page<T, u64>) -> Vec<Vec<T>> {
    let mut pages = Vec::new();
    let mut from = 0;
    loop {
        let page = read(from);
        let next = page.next;
        assert!(
            !page.items.is_empty(),
            "a page while items remain is never empty"
        );
        pages.push(page.items);
        match next {
            Some(next) => from = next,
            None => return pages,
        }
    }
}

fn page_bytes(events: &[domain::Event]) -> usize {
    events.iter().map(|e| e.payload.len_bytes()).sum()
}

#[test]
fn a_call_with_many_large_events_is_listed_in_pages_bounded_in_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, call_id) = store_with_big_events(dir.path());
    let reader: Reader = store.state_machine.reader();

    let pages = all_pages(|from| {
        reader
            .list_call_events(TENANT, &call_id, from, PAGE_SIZE_MAX)
            .expect("list call events")
            .value
    });
    assert!(pages.len() > 1, "100 events of 64 KiB do not fit one page");
    for page in &pages {
        assert!(
            page_bytes(page) <= PAGE_BYTES_MAX,
            "page over the byte bound"
        );
    }
    let sequences: Vec<u64> = pages.iter().flatten().map(|e| e.sequence_number).collect();
    assert_eq!(sequences, (1..=BIG_EVENTS + 2).collect::<Vec<_>>());

    let pages = all_pages(|from| {
        reader
            .list_events(None, from, 0)
            .expect("list events")
            .value
    });
    assert!(pages.len() > 1);
    for page in &pages {
        assert!(
            page_bytes(page) <= PAGE_BYTES_MAX,
            "page over the byte bound"
        );
    }
    let positions: Vec<u64> = pages.iter().flatten().map(|e| e.position).collect();
    assert_eq!(positions, (1..=BIG_EVENTS + 2).collect::<Vec<_>>());
}

/// A store where tenant `acme` logs `sparse` events after `foreign` events of tenant `globex`,
/// interleaved at the start with `mixed` events of each.
fn store_with_two_tenants(
    dir: &std::path::Path,
    mixed: u64,
    foreign: u64,
    sparse: u64,
) -> raft_store::Store {
    let mut store = support::open(dir);
    let stamp = |at_ms, minted_call_id| Stamp {
        at_ms,
        minted_call_id,
        minted_trace_id: None,
    };
    let calls = [
        ("acme", CallId::from_u128(1)),
        ("globex", CallId::from_u128(2)),
    ];
    let mut entries = vec![support::blank(1, 0)];
    let mut index = 0;
    let mut next = |entries: &mut Vec<_>, tenant: &str, id: String, command: Command, minted| {
        index += 1;
        entries.push(support::normal(
            1,
            index,
            support::request(tenant, &id, command, stamp(index, minted)),
        ));
    };
    for (tenant, call_id) in calls {
        next(
            &mut entries,
            tenant,
            format!("create-{tenant}"),
            Command::CreateCall {
                source: "web".into(),
                channel: Channel::Voice,
                metadata: Labels::new(),
                trace_id: None,
            },
            Some(call_id),
        );
    }
    for (tenant, call_id) in calls {
        next(
            &mut entries,
            tenant,
            format!("start-{tenant}"),
            Command::StartCall { call_id },
            None,
        );
    }
    let event = |call_id| Command::LogEvent {
        call_id,
        event_type: "agent.note".into(),
        payload: Payload::Json("{}".into()),
        metadata: Labels::new(),
    };
    for n in 0..mixed {
        for (tenant, call_id) in calls {
            next(
                &mut entries,
                tenant,
                format!("mixed-{tenant}-{n}"),
                event(call_id),
                None,
            );
        }
    }
    for n in 0..foreign {
        next(
            &mut entries,
            "globex",
            format!("foreign-{n}"),
            event(calls[1].1),
            None,
        );
    }
    for n in 0..sparse {
        next(
            &mut entries,
            "acme",
            format!("sparse-{n}"),
            event(calls[0].1),
            None,
        );
    }
    for chunk in entries.chunks(512) {
        let responses = store
            .state_machine
            .apply_batch(chunk.to_vec())
            .expect("apply entries");
        for response in &responses {
            if let Some(outcome) = &response.outcome {
                assert!(outcome.result.is_ok(), "{outcome:?}");
            }
        }
    }
    store
}

#[test]
fn one_tenants_events_are_listed_alone_and_completely_in_bounded_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let foreign = raft_store::EVENTS_SCANNED_MAX as u64 + 10;
    let store = store_with_two_tenants(dir.path(), 20, foreign, 5);
    let reader: Reader = store.state_machine.reader();
    let everything = |tenant: Option<&str>| {
        let mut events = Vec::new();
        let mut pages = 0;
        let mut from = 0;
        loop {
            let page = reader
                .list_events(tenant, from, 7)
                .expect("list events")
                .value;
            pages += 1;
            events.extend(page.items);
            match page.next {
                Some(next) => from = next,
                None => return (events, pages),
            }
        }
    };
    let (all, _) = everything(None);
    let (acme, pages) = everything(Some("acme"));
    let expected: Vec<u64> = all
        .iter()
        .filter(|e| e.tenant_id == "acme")
        .map(|e| e.position)
        .collect();
    assert_eq!(
        acme.iter().map(|e| e.position).collect::<Vec<_>>(),
        expected
    );
    assert!(acme.iter().all(|e| e.tenant_id == "acme"));
    assert_eq!(
        expected.len(),
        2 + 20 + 5,
        "created, started + mixed + sparse"
    );
    // The run of globex events between acme's takes more than one scan bound: a page that
    // looked at `EVENTS_SCANNED_MAX` events and found none of acme's says where to go on.
    let first_sparse = reader
        .list_events(Some("acme"), expected[21] + 1, 7)
        .expect("list events")
        .value;
    assert!(first_sparse.items.is_empty(), "{:?}", first_sparse.items);
    assert!(first_sparse.next.is_some());
    assert!(pages > (2 + 20 + 5) / 7 + 1, "an empty page in between");
    let (globex, _) = everything(Some("globex"));
    assert!(globex.iter().all(|e| e.tenant_id == "globex"));
    assert_eq!(globex.len() + acme.len(), all.len());
}

#[test]
fn a_filtered_scan_resumes_where_it_stopped_and_says_where_the_log_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let foreign = raft_store::EVENTS_SCANNED_MAX as u64 + 10;
    let store = store_with_two_tenants(dir.path(), 20, foreign, 5);
    let reader: Reader = store.state_machine.reader();
    let mut all = Vec::new();
    let mut next = Some(0);
    while let Some(from) = next {
        let page = reader
            .list_events(None, from, PAGE_SIZE_MAX)
            .expect("list events")
            .value;
        all.extend(page.items);
        next = page.next;
    }
    let filter = domain::EventFilter {
        tenant_id: Some("acme".to_owned()),
        type_prefixes: vec!["call.".to_owned()],
        ..domain::EventFilter::default()
    };
    let mut from = 1;
    let mut got = Vec::new();
    let mut scans = 0;
    let head = loop {
        let scan = reader.scan_events(&filter, from, 3).expect("scan").value;
        scans += 1;
        assert!(scan.next >= from, "a scan never goes back");
        assert!(
            scan.items
                .iter()
                .all(|e| e.position >= from && e.position < scan.next)
        );
        got.extend(scan.items);
        from = scan.next;
        if scan.complete {
            break scan.head;
        }
        assert!(scans < 1_000, "the scans never reached the end");
    };
    let expected: Vec<u64> = all
        .iter()
        .filter(|e| filter.matches(e))
        .map(|e| e.position)
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(got.iter().map(|e| e.position).collect::<Vec<_>>(), expected);
    // The log holds every position below the head, and the last scan looked at all of them.
    let end = reader
        .scan_events(&domain::EventFilter::default(), u64::MAX, 1)
        .expect("scan at the end")
        .value;
    assert_eq!(end.head, head);
    assert_eq!(all.last().map(|e| e.position + 1), Some(head));
    assert!(end.items.is_empty() && end.complete);
    assert_eq!(from, head, "the last scan stopped at the log's end");
}
