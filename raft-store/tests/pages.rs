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

    let pages = all_pages(|from| reader.list_events(from, 0).expect("list events").value);
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
