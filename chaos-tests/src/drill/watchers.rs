//! Watchers in a drill: `WatchEvents` streams (through the client, which resumes on another node
//! when its node fails) that run through the faults, then drain to the end of the healed log. What
//! each delivered is judged by [`crate::checkers::watch_streams`] against the final log.

use std::time::Duration;

use client::{Client, ClientConfig};
use proto::v1;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::cluster::Reach;
use super::workload::seen_event;
use crate::checkers::watch_streams::WatchRecord;

/// The watches a drill runs: every event from the start, the lifecycle events only, and turns
/// only from a later position (so a watch that starts mid-log is judged too).
pub fn specs() -> Vec<(String, Vec<String>, u64)> {
    vec![
        ("all".to_owned(), Vec::new(), 1),
        ("lifecycle".to_owned(), vec!["call.".to_owned()], 1),
        ("turns-from-5".to_owned(), vec!["turn.".to_owned()], 5),
    ]
}

/// How the drill's watchers are ended: `Some(head)` once the healed log's end is known; each
/// stops when its checkpoint reaches it (or at the drain bound).
pub type Drain = watch::Sender<Option<u64>>;

/// Starts the watchers; they run until [`Drain`] names the head and they reach it.
pub fn start(reach: &Reach, drain_wait: Duration) -> anyhow::Result<(Drain, JoinSet<WatchRecord>)> {
    let (drain, drained) = watch::channel(None);
    let mut tasks = JoinSet::new();
    for (name, type_prefixes, from) in specs() {
        // Faults last seconds: a watch gives up on them only after 1000 failures in a row (some
        // minutes of backoff); the drill bounds it with the drain instead.
        let client = Client::new(ClientConfig {
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_millis(1500),
            retries_max: 1_000,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            ..reach.client_config()
        })?;
        let request = v1::WatchEventsRequest {
            from_position: Some(from),
            event_type_prefixes: type_prefixes.clone(),
            progress_interval_ms: 200,
            ..Default::default()
        };
        let mut record = WatchRecord {
            name,
            type_prefixes,
            from,
            resume_from: from,
            ..WatchRecord::default()
        };
        let mut drained = drained.clone();
        tasks.spawn(async move {
            let mut watch = client.watch_events(request);
            let mut drain_deadline = None;
            loop {
                if let Some(head) = *drained.borrow_and_update() {
                    if record.resume_from >= head {
                        break;
                    }
                    let deadline = *drain_deadline
                        .get_or_insert_with(|| tokio::time::Instant::now() + drain_wait);
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                }
                tokio::select! {
                    next = watch.next() => match next {
                        Ok(message) => {
                            record.events.extend(message.events.iter().map(seen_event));
                            record.resume_from = message.resume_from;
                        }
                        Err(error) => {
                            record.error = Some(error.to_string());
                            break;
                        }
                    },
                    // Wakes the loop to look at the drain (and its deadline).
                    _ = drained.changed() => {}
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            record.resumed = watch.resumed();
            record
        });
    }
    Ok((drain, tasks))
}
