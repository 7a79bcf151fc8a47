//! `WatchEvents`: the event log pushed to watchers as it is applied, by any node, from its own
//! applied state.
//!
//! How it is built (after etcd's watchable store, with its synced and unsynced watchers):
//! - The apply path does nothing for watchers beyond what it did before: it publishes the applied
//!   index on a `watch` channel. One *tail* task per node wakes on that, reads the new events
//!   from RocksDB once, and broadcasts them in batches on a bounded ring
//!   ([`TAIL_BATCHES_RETAINED`]), each event also converted to its wire form once.
//! - A watcher that is behind the tail (it started from an old position, or fell off the ring)
//!   catches up from storage, a bounded page at a time, off the runtime. Once it has reached the
//!   tail's head it takes the tail's batches. Either way it delivers positions in order, each
//!   once, from the position it was asked for.
//! - Memory per watcher is bounded by its send buffer ([`WATCH_BUFFER_MESSAGES`] messages, each
//!   at most one page). A consumer that stops reading while the log moves on more than
//!   `--watch-lag-max` events past what it was sent is ended with `RESOURCE_EXHAUSTED` and the
//!   position to resume from (`x-switchboard-resume-from`), instead of being buffered for.
//! - A node cut off from the leader cannot know what it is missing: once it has heard from no
//!   leader for `--watch-contact-max`, its watches end with `UNAVAILABLE` and the position to
//!   resume from, so a client resumes on a node that still follows the log.
//! - Every message carries `resume_from`: all matching events before it were delivered on this
//!   stream. Progress messages (no events) keep coming when nothing matches, so a consumer of a
//!   sparse filter can still checkpoint.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use domain::{Event, EventFilter};
use futures::Stream;
use openraft::async_runtime::WatchReceiver;
use openraft::{Instant as _, ServerState};
use proto::v1;
use raft_store::{EventScan, Reader};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::Raft;
use crate::convert;
use crate::observe::names;
use crate::status::ApiError;
use crate::transport::LeaderContact;

/// Messages buffered towards one watcher's consumer.
pub const WATCH_BUFFER_MESSAGES: usize = 16;
/// Batches the tail keeps for watchers that are a little behind; further behind, a watcher
/// reads storage.
pub const TAIL_BATCHES_RETAINED: usize = 1024;
/// Default of `--watchers-max`: watches one node serves at once.
pub const WATCHERS_MAX: usize = 4096;
/// Default of `--watch-lag-max`: how far (in positions) the log may move past what a stalled
/// consumer was sent before its watch is ended.
pub const WATCH_LAG_MAX: u64 = 10_000;
/// Default of `--watch-contact-max` (ms): how long a node serves watches without hearing from
/// a leader.
pub const WATCH_CONTACT_MAX_MS: u64 = 3_000;
/// Progress interval when the request names none, and its bounds.
pub const PROGRESS_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
pub const PROGRESS_INTERVAL_MIN: Duration = Duration::from_millis(100);
pub const PROGRESS_INTERVAL_MAX: Duration = Duration::from_secs(60);
/// Events one storage read of a watcher or of the tail looks at (and returns) at most.
const PAGE_EVENTS: u32 = domain::limits::PAGE_SIZE_MAX;
/// How long a consumer may take no message before its watcher looks at how far the log has moved
/// (then every [`LAG_CHECK_EVERY`]): a consumer that reads, however far behind, is not ended.
const STALL_MIN: Duration = Duration::from_secs(1);
const LAG_CHECK_EVERY: Duration = Duration::from_millis(100);
/// How often leader contact is looked at.
const CONTACT_CHECK_EVERY: Duration = Duration::from_millis(250);

/// The header of a status that ends a watch: the position to resume from.
pub use client::RESUME_FROM_HEADER;

/// Bounds of the watches one node serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchConfig {
    pub watchers_max: usize,
    pub lag_max: u64,
    pub contact_max: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            watchers_max: WATCHERS_MAX,
            lag_max: WATCH_LAG_MAX,
            contact_max: Duration::from_millis(WATCH_CONTACT_MAX_MS),
        }
    }
}

/// Why a watch ended before its consumer left.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchEnd {
    #[error(
        "the consumer stopped reading and the log moved {lag} events past what it was sent (bound {lag_max})"
    )]
    Behind { lag: u64, lag_max: u64 },
    #[error(
        "node {node_id} has heard from no leader for {since_ms} ms and may be cut off from the log; resume on another node"
    )]
    ContactLost { node_id: u64, since_ms: u64 },
    #[error("node is shutting down")]
    ShuttingDown,
    #[error("a read of the event log failed; the node logged the cause")]
    Storage,
}

impl WatchEnd {
    fn reason(&self) -> &'static str {
        match self {
            WatchEnd::Behind { .. } => "behind",
            WatchEnd::ContactLost { .. } => "contact_lost",
            WatchEnd::ShuttingDown => "shutting_down",
            WatchEnd::Storage => "storage",
        }
    }

    /// The status that ends the stream, naming where to resume.
    fn status(&self, resume_from: u64) -> Status {
        let message = format!("{self}; resume from position {resume_from}");
        let mut status = match self {
            WatchEnd::Behind { .. } => Status::resource_exhausted(message),
            WatchEnd::ContactLost { .. } | WatchEnd::ShuttingDown => Status::unavailable(message),
            WatchEnd::Storage => Status::internal(message),
        };
        if let Ok(value) = MetadataValue::try_from(resume_from.to_string()) {
            status.metadata_mut().insert(RESUME_FROM_HEADER, value);
        }
        status
    }
}

/// One event as the tail read it: the domain form to filter on, the wire form to send.
#[derive(Debug)]
struct Tailed {
    event: Event,
    wire: v1::Event,
}

/// Events `[first, next)` as applied, in position order (positions retention removed are
/// absent).
#[derive(Debug)]
struct Batch {
    first: u64,
    next: u64,
    applied_index: u64,
    events: Vec<Tailed>,
}

/// The watches of one node; clones share them.
#[derive(Clone)]
pub struct Watches {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: u64,
    reader: Reader,
    config: WatchConfig,
    /// The tail's batches.
    tail: broadcast::Sender<Arc<Batch>>,
    /// The position after the last one the tail has broadcast.
    head: watch::Receiver<u64>,
    /// Whether this node hears from a leader (else its watches end).
    contact: watch::Receiver<Result<(), WatchEnd>>,
    open: AtomicUsize,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Watches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watches")
            .field("config", &self.inner.config)
            .field("open", &self.inner.open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Watches {
    /// Starts the tail and the leader-contact monitor (both end at `shutdown`).
    pub fn start(
        node_id: u64,
        raft: Raft,
        reader: Reader,
        contact: LeaderContact,
        config: WatchConfig,
        shutdown: CancellationToken,
    ) -> Result<Self, ApiError> {
        let start = reader.event_head().map_err(raft_store::ReadError::from)?;
        let (head_tx, head) = watch::channel(start);
        let (tail, _) = broadcast::channel(TAIL_BATCHES_RETAINED);
        let (contact_tx, contact_rx) = watch::channel(Ok(()));
        tokio::spawn(run_tail(
            reader.clone(),
            tail.clone(),
            head_tx,
            start,
            shutdown.clone(),
        ));
        tokio::spawn(monitor_contact(
            node_id,
            raft,
            contact,
            config.contact_max,
            contact_tx,
            shutdown.clone(),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                node_id,
                reader,
                config,
                tail,
                head,
                contact: contact_rx,
                open: AtomicUsize::new(0),
                shutdown,
            }),
        })
    }

    /// Opens a watch of `filter` from `from` (`None`: from the next event to commit).
    pub fn open(
        &self,
        filter: EventFilter,
        from: Option<u64>,
        progress_every: Duration,
    ) -> Result<WatchStream, ApiError> {
        let inner = &self.inner;
        if let Err(end) = &*inner.contact.borrow() {
            return Err(ApiError::WatchRefused(end.clone()));
        }
        let slot = Slot::take(inner.clone()).ok_or(ApiError::WatchersFull {
            watchers_max: inner.config.watchers_max,
        })?;
        // Subscribed before the head is read: whatever the tail broadcasts after that instant
        // reaches this watcher or is in storage below the head it reads.
        let batches = inner.tail.subscribe();
        let next = from.unwrap_or_else(|| *inner.head.borrow()).max(1);
        let (messages_tx, messages) = mpsc::channel(WATCH_BUFFER_MESSAGES);
        let (end_tx, end) = oneshot::channel();
        let watcher = Watcher {
            inner: inner.clone(),
            filter,
            next,
            batches,
            head: inner.head.clone(),
            contact: inner.contact.clone(),
            messages: messages_tx,
            progress_every,
        };
        tokio::spawn(async move {
            let ended = watcher.run().await;
            metrics::counter!(names::WATCH_ENDED, "reason" => ended.as_ref().map_or("consumer_left", WatchEnd::reason))
                .increment(1);
            if let Some(end) = ended {
                let _ = end_tx.send(end);
            }
            drop(slot);
        });
        Ok(WatchStream {
            messages,
            end,
            resume_from: next,
            done: false,
        })
    }
}

/// A watcher's claim on one of `--watchers-max` places, given back when dropped.
struct Slot(Arc<Inner>);

impl Slot {
    fn take(inner: Arc<Inner>) -> Option<Self> {
        let max = inner.config.watchers_max;
        inner
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()?;
        metrics::gauge!(names::WATCHERS).increment(1.0);
        Some(Self(inner))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(names::WATCHERS).decrement(1.0);
    }
}

/// The response stream of one watch: the watcher's messages, then (if it ended on its own) the
/// status that says why and where to resume.
#[derive(Debug)]
pub struct WatchStream {
    messages: mpsc::Receiver<v1::WatchEventsResponse>,
    end: oneshot::Receiver<WatchEnd>,
    /// `resume_from` of the last message handed to the transport.
    resume_from: u64,
    done: bool,
}

impl WatchStream {
    /// The position this stream resumes from: where it starts until a message moves it.
    pub fn resume_from(&self) -> u64 {
        self.resume_from
    }
}

impl Stream for WatchStream {
    type Item = Result<v1::WatchEventsResponse, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        // An end first: the messages still buffered are dropped, and the status names the
        // position after the last message that left, which is where the consumer resumes.
        if let Poll::Ready(ended) = Pin::new(&mut self.end).poll(cx) {
            self.done = true;
            return Poll::Ready(match ended {
                Ok(end) => Some(Err(end.status(self.resume_from))),
                // The watcher stopped because the consumer left: nothing more to say.
                Err(_) => None,
            });
        }
        match self.messages.poll_recv(cx) {
            Poll::Ready(Some(message)) => {
                self.resume_from = message.resume_from;
                Poll::Ready(Some(Ok(message)))
            }
            // The watcher is gone; its end (if any) arrives on `end` right after.
            Poll::Ready(None) => match Pin::new(&mut self.end).poll(cx) {
                Poll::Ready(Ok(end)) => {
                    self.done = true;
                    Poll::Ready(Some(Err(end.status(self.resume_from))))
                }
                Poll::Ready(Err(_)) => {
                    self.done = true;
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            },
            Poll::Pending => Poll::Pending,
        }
    }
}

/// One watch being served.
struct Watcher {
    inner: Arc<Inner>,
    filter: EventFilter,
    /// The next position to deliver (or to pass over).
    next: u64,
    batches: broadcast::Receiver<Arc<Batch>>,
    head: watch::Receiver<u64>,
    contact: watch::Receiver<Result<(), WatchEnd>>,
    messages: mpsc::Sender<v1::WatchEventsResponse>,
    progress_every: Duration,
}

impl Watcher {
    /// Serves the watch until the consumer leaves (`None`) or it ends on its own.
    async fn run(mut self) -> Option<WatchEnd> {
        let mut progress = tokio::time::interval(self.progress_every);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is at once: a first message tells the consumer the watch is open.
        loop {
            // Behind the tail: catch up from storage.
            while self.next < *self.head.borrow() {
                let scan = match self.read_storage().await {
                    Ok(scan) => scan,
                    Err(end) => return Some(end),
                };
                let events = scan.value.items.iter().map(convert::wire_event).collect();
                self.next = scan.value.next.max(self.next);
                if scan.value.complete {
                    // Every position below the store's head was looked at.
                    self.next = self.next.max(scan.value.head);
                }
                if let Err(end) = self.send(events, scan.applied_index).await? {
                    return Some(end);
                }
                progress.reset();
            }
            let shutdown = self.inner.shutdown.clone();
            tokio::select! {
                () = shutdown.cancelled() => return Some(WatchEnd::ShuttingDown),
                () = self.messages.closed() => return None,
                changed = self.contact.changed() => {
                    if changed.is_err() {
                        return Some(WatchEnd::ShuttingDown);
                    }
                    let lost = self.contact.borrow_and_update().clone().err();
                    if let Some(end) = lost {
                        return Some(end);
                    }
                }
                _ = progress.tick() => {
                    let applied = self.inner.reader.watch_applied().borrow().index();
                    if let Err(end) = self.send(Vec::new(), applied).await? {
                        return Some(end);
                    }
                }
                batch = self.batches.recv() => match batch {
                    Ok(batch) => {
                        // Already past it, or a gap the loop above fills from storage (the
                        // head has moved past the batch before it was broadcast).
                        if batch.next <= self.next || batch.first > self.next {
                            continue;
                        }
                        let events: Vec<v1::Event> = batch
                            .events
                            .iter()
                            .filter(|t| t.event.position >= self.next && self.filter.matches(&t.event))
                            .map(|t| t.wire.clone())
                            .collect();
                        self.next = batch.next;
                        if !events.is_empty() {
                            if let Err(end) = self.send(events, batch.applied_index).await? {
                                return Some(end);
                            }
                            progress.reset();
                        }
                    }
                    // Fell off the ring: storage has what it missed.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return Some(WatchEnd::ShuttingDown),
                },
            }
        }
    }

    /// One page of matching events from `next`, read off the runtime.
    async fn read_storage(&self) -> Result<raft_store::At<EventScan>, WatchEnd> {
        let reader = self.inner.reader.clone();
        let (filter, from) = (self.filter.clone(), self.next);
        let read =
            tokio::task::spawn_blocking(move || reader.scan_events(&filter, from, PAGE_EVENTS))
                .await;
        match read {
            Ok(Ok(scan)) => Ok(scan),
            Ok(Err(error)) => {
                tracing::error!(%error, from, "a watcher's read of the event log failed");
                Err(WatchEnd::Storage)
            }
            Err(error) => {
                tracing::error!(%error, from, "a watcher's read of the event log did not complete");
                Err(WatchEnd::Storage)
            }
        }
    }

    /// Sends `events` (none: a progress message) with `resume_from` = `next`. Once the
    /// consumer's buffer has been full for [`STALL_MIN`], looks every [`LAG_CHECK_EVERY`] at how
    /// far the log moved on: past `--watch-lag-max`, the watch ends. `None`: the consumer left.
    async fn send(
        &mut self,
        events: Vec<v1::Event>,
        applied_index: u64,
    ) -> Option<Result<(), WatchEnd>> {
        let sent_events = events.len();
        let message = v1::WatchEventsResponse {
            events,
            resume_from: self.next,
            applied_index,
            node_id: self.inner.node_id,
        };
        let mut wait = STALL_MIN;
        let permit = loop {
            tokio::select! {
                permit = self.messages.reserve() => match permit {
                    Ok(permit) => break permit,
                    Err(_) => return None,
                },
                () = tokio::time::sleep(wait) => {
                    wait = LAG_CHECK_EVERY;
                    let lag = self.head.borrow().saturating_sub(self.next);
                    let lag_max = self.inner.config.lag_max;
                    if lag > lag_max {
                        return Some(Err(WatchEnd::Behind { lag, lag_max }));
                    }
                }
            }
        };
        permit.send(message);
        metrics::counter!(names::WATCH_EVENTS_SENT).increment(sent_events as u64);
        Some(Ok(()))
    }
}

/// Reads what each apply added to the event log, once for all watchers, and broadcasts it.
async fn run_tail(
    reader: Reader,
    tail: broadcast::Sender<Arc<Batch>>,
    head: watch::Sender<u64>,
    mut next: u64,
    shutdown: CancellationToken,
) {
    let mut applied = reader.watch_applied();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = applied.changed() => if changed.is_err() { return },
        }
        // Nobody to hand events to: only the head moves (a watcher that comes reads storage up
        // to it).
        if tail.receiver_count() == 0 {
            match reader.event_head() {
                Ok(at) => {
                    next = next.max(at);
                    head.send_replace(next);
                }
                Err(error) => {
                    tracing::error!(%error, "the watch tail could not read the log's end")
                }
            }
            continue;
        }
        // Everything applied so far, a page at a time; a snapshot install may have added many.
        loop {
            let from = next;
            let reader = reader.clone();
            let read = tokio::task::spawn_blocking(move || {
                reader.scan_events(&EventFilter::default(), from, PAGE_EVENTS)
            })
            .await;
            let scan = match read {
                Ok(Ok(scan)) => scan,
                Ok(Err(error)) => {
                    tracing::error!(%error, from, "the watch tail's read of the event log failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(error) => {
                    tracing::error!(%error, "the watch tail's read did not complete; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if scan.value.next <= next {
                break;
            }
            let batch = Batch {
                first: next,
                next: scan.value.next,
                applied_index: scan.applied_index,
                events: scan
                    .value
                    .items
                    .into_iter()
                    .map(|event| Tailed {
                        wire: convert::wire_event(&event),
                        event,
                    })
                    .collect(),
            };
            next = batch.next;
            // The head moves first: a watcher that sees this batch start past its position
            // finds the gap below the head, in storage.
            head.send_replace(next);
            // No receiver is fine: nobody watches.
            let _ = tail.send(Arc::new(batch));
            if scan.value.complete {
                break;
            }
        }
    }
}

/// Publishes whether this node hears from a leader: a leader by its quorum's acknowledgements,
/// anyone else by the leader's `AppendEntries`.
async fn monitor_contact(
    node_id: u64,
    raft: Raft,
    contact: LeaderContact,
    contact_max: Duration,
    publish: watch::Sender<Result<(), WatchEnd>>,
    shutdown: CancellationToken,
) {
    let started = std::time::Instant::now();
    let mut every = tokio::time::interval(CONTACT_CHECK_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let since = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow_watched();
            let voters = metrics.membership_config.membership().voter_ids().count();
            if metrics.state == ServerState::Leader && voters <= 1 {
                // Its own quorum: in contact by definition.
                Some(Duration::ZERO)
            } else if metrics.state == ServerState::Leader {
                metrics
                    .last_quorum_acked
                    .as_ref()
                    .map(|acked| acked.elapsed())
            } else {
                contact.since()
            }
        }
        .unwrap_or_else(|| started.elapsed());
        let now = if since > contact_max {
            Err(WatchEnd::ContactLost {
                node_id,
                since_ms: u64::try_from(since.as_millis()).unwrap_or(u64::MAX),
            })
        } else {
            Ok(())
        };
        // Only a change wakes the watchers.
        publish.send_if_modified(|current| {
            let changed = current.is_ok() != now.is_ok();
            if changed {
                *current = now;
            }
            changed
        });
    }
}
