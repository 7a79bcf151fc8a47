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
//! - A watcher of one call (a console) does not read the ring: the tail hands it the batches
//!   that hold its call (a map from call to its watchers) and wakes it, so a thousand consoles
//!   each following its own call cost the node a wake per event, not a thousand. The head moves
//!   under the same lock as the hand-over, so what such a watcher takes with the head is all of
//!   its call below that head.
//! - An event is encoded to protobuf once, by whoever read it (the tail, or a watcher's storage
//!   read). Watchers pass the encoded bytes on (shared, not copied) and [`WatchCodec`] writes
//!   them into the response as they are, with the message's own fields after them: the bytes on
//!   the wire are those prost would write for the same `WatchEventsResponse`. A watcher that
//!   finds several batches waiting, and a stream that finds several messages waiting, send them
//!   as one message (at most a page: [`PAGE_EVENTS`] events, [`PAGE_BYTES`] bytes), so a busy
//!   node sends fewer, larger messages instead of falling further behind.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use domain::{CallId, Event, EventFilter};
use futures::Stream;
use futures::future::BoxFuture;
use openraft::async_runtime::WatchReceiver;
use openraft::{Instant as _, ServerState};
use prost::encoding;
use proto::v1;
use raft_store::{EventScan, Reader};
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::codec::{Codec, EncodeBuf, Encoder};
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
/// Events one storage read of a watcher or of the tail looks at (and returns) at most, and
/// events one message holds at most when it joins several batches or messages.
const PAGE_EVENTS: u32 = domain::limits::PAGE_SIZE_MAX;
/// Encoded event bytes one message holds at most when it joins several batches or messages.
const PAGE_BYTES: usize = domain::limits::PAGE_BYTES_MAX;
/// Events the tail reads on the runtime, without the blocking pool, after an apply (at most
/// this many events and [`PAGE_BYTES`]): a usual apply adds fewer.
const TAIL_INLINE_EVENTS: u32 = 64;
/// How long a consumer may take no message before its watcher looks at how far the log has moved
/// (then every [`LAG_CHECK_EVERY`]): a consumer that reads, however far behind, is not ended.
const STALL_MIN: Duration = Duration::from_secs(1);
const LAG_CHECK_EVERY: Duration = Duration::from_millis(100);
/// Default of `--watch-handover-max`: batches handed to one watcher of one call and not yet
/// taken, at most; past that it reads storage instead.
pub const WATCH_HANDOVER_MAX: usize = 256;
/// Largest `--watch-handover-max` (each held batch is shared with the ring, not copied).
pub const WATCH_HANDOVER_LIMIT: usize = 65_536;
/// How often leader contact is looked at.
const CONTACT_CHECK_EVERY: Duration = Duration::from_millis(250);

/// The header of a status that ends a watch: the position to resume from.
pub use client::RESUME_FROM_HEADER;

/// Bounds of the watches one node serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchConfig {
    pub watchers_max: usize,
    pub lag_max: u64,
    pub handover_max: usize,
    pub contact_max: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            watchers_max: WATCHERS_MAX,
            lag_max: WATCH_LAG_MAX,
            handover_max: WATCH_HANDOVER_MAX,
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

/// Events `[first, next)` as applied, in position order (positions retention removed are
/// absent).
#[derive(Debug)]
struct Batch {
    first: u64,
    next: u64,
    applied_index: u64,
    events: Encoded,
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
    keyed: Arc<Keyed>,
    shutdown: CancellationToken,
}

/// Watchers of one call each: the tail hands each of them the batches that hold its call, so
/// they never read the ring and are woken only for their call.
///
/// One lock covers the hand-over and every move of the head: a watcher that takes its queue
/// under the lock, with the head as it is then, has every batch of its call below that head
/// (or knows its queue overflowed); every other position below the head holds none of its
/// events.
struct Keyed {
    state: std::sync::Mutex<KeyedState>,
    /// Batches held for one watcher, at most (`--watch-handover-max`).
    held_max: usize,
}

#[derive(Default)]
struct KeyedState {
    by_call: HashMap<CallId, Vec<u64>>,
    slots: HashMap<u64, KeyedSlot>,
    next_id: u64,
}

struct KeyedSlot {
    notify: Arc<Notify>,
    /// Batches holding the call, not yet taken (at most `--watch-handover-max`).
    queue: Vec<Arc<Batch>>,
    /// A batch was not queued: the watcher reads storage up to the head instead.
    overflowed: bool,
}

/// What a watcher of one call takes from [`Keyed`] at once.
struct Handed {
    /// The head when taken: every batch of the call below it is in `batches` (unless
    /// `overflowed`).
    head: u64,
    batches: Vec<Arc<Batch>>,
    overflowed: bool,
}

impl Keyed {
    fn lock(&self) -> std::sync::MutexGuard<'_, KeyedState> {
        // Every critical section leaves the state whole: a panic elsewhere cannot tear it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a watcher of `call`; returns it with the head at that instant (batches from
    /// it on are handed over; positions below it are in storage).
    fn register(self: &Arc<Self>, call: CallId, head: &watch::Receiver<u64>) -> (KeyedWake, u64) {
        let notify = Arc::new(Notify::new());
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.slots.insert(
            id,
            KeyedSlot {
                notify: notify.clone(),
                queue: Vec::new(),
                overflowed: false,
            },
        );
        state.by_call.entry(call).or_default().push(id);
        let at = *head.borrow();
        drop(state);
        let wake = KeyedWake {
            keyed: self.clone(),
            call,
            id,
            notify,
        };
        (wake, at)
    }

    /// Hands `batch` to the watchers of the calls it holds, then moves the head (`move_head`),
    /// under the lock; wakes them.
    fn publish(&self, batch: &Arc<Batch>, move_head: impl FnOnce()) {
        let mut state = self.lock();
        if !state.slots.is_empty() {
            let mut calls: Vec<CallId> = batch
                .events
                .events
                .iter()
                .filter_map(|e| e.call_id)
                .collect();
            calls.sort_unstable();
            calls.dedup();
            let KeyedState { by_call, slots, .. } = &mut *state;
            for call in calls {
                for id in by_call.get(&call).into_iter().flatten() {
                    if let Some(slot) = slots.get_mut(id) {
                        if slot.queue.len() < self.held_max {
                            slot.queue.push(batch.clone());
                        } else {
                            slot.overflowed = true;
                        }
                        // A permit is kept if the watcher is not waiting yet: no wake is lost.
                        slot.notify.notify_one();
                    }
                }
            }
        }
        move_head();
    }

    /// Moves the head under the lock if no watcher of one call is registered; returns
    /// whether it did (else the tail must read and hand over the batches).
    fn move_head_if_unwatched(&self, move_head: impl FnOnce()) -> bool {
        let state = self.lock();
        if !state.slots.is_empty() {
            return false;
        }
        move_head();
        drop(state);
        true
    }
}

/// A watcher's place in [`Keyed`], removed when dropped.
struct KeyedWake {
    keyed: Arc<Keyed>,
    call: CallId,
    id: u64,
    notify: Arc<Notify>,
}

impl KeyedWake {
    /// The batches handed over so far, with the head.
    fn take(&self, head: &watch::Receiver<u64>) -> Handed {
        let mut state = self.keyed.lock();
        let at = *head.borrow();
        match state.slots.get_mut(&self.id) {
            Some(slot) => Handed {
                head: at,
                batches: std::mem::take(&mut slot.queue),
                overflowed: std::mem::take(&mut slot.overflowed),
            },
            None => Handed {
                head: at,
                batches: Vec::new(),
                overflowed: true,
            },
        }
    }
}

impl Drop for KeyedWake {
    fn drop(&mut self) {
        let mut state = self.keyed.lock();
        state.slots.remove(&self.id);
        if let Some(ids) = state.by_call.get_mut(&self.call) {
            ids.retain(|id| *id != self.id);
            if ids.is_empty() {
                state.by_call.remove(&self.call);
            }
        }
    }
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
        let keyed = Arc::new(Keyed {
            state: std::sync::Mutex::default(),
            held_max: config.handover_max,
        });
        tokio::spawn(run_tail(
            reader.clone(),
            tail.clone(),
            keyed.clone(),
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
                keyed,
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
        // A watcher of one call registers for the tail's hand-over, with the head under the
        // same lock; any other subscribes to the ring before it reads the head. Either way,
        // whatever the tail publishes after that instant reaches the watcher, and the rest is
        // in storage below the head it read.
        let (feed, head) = match filter.call_id {
            Some(call) => {
                let (wake, head) = inner.keyed.register(call, &inner.head);
                let feed = Feed::Keyed {
                    wake,
                    storage_below: head,
                };
                (feed, head)
            }
            None => {
                let batches = inner.tail.subscribe();
                (Feed::Ring(batches), *inner.head.borrow())
            }
        };
        let next = from.unwrap_or(head).max(1);
        let (messages_tx, messages) = mpsc::channel(WATCH_BUFFER_MESSAGES);
        let (end_tx, end) = oneshot::channel();
        let watcher = Watcher {
            inner: inner.clone(),
            filter,
            next,
            feed: Some(feed),
            carry: None,
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
            carry: None,
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
    messages: mpsc::Receiver<WatchMessage>,
    end: oneshot::Receiver<WatchEnd>,
    /// `resume_from` of the last message handed to the transport.
    resume_from: u64,
    /// A message taken off the buffer that did not fit in the one handed out before it.
    carry: Option<WatchMessage>,
    done: bool,
}

impl WatchStream {
    /// The position this stream resumes from: where it starts until a message moves it.
    pub fn resume_from(&self) -> u64 {
        self.resume_from
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchMessage, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
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
        let mut message = match self.carry.take() {
            Some(message) => message,
            None => match self.messages.poll_recv(cx) {
                Poll::Ready(Some(message)) => message,
                // The watcher is gone; its end (if any) arrives on `end` right after.
                Poll::Ready(None) => {
                    return match Pin::new(&mut self.end).poll(cx) {
                        Poll::Ready(Ok(end)) => {
                            self.done = true;
                            Poll::Ready(Some(Err(end.status(self.resume_from))))
                        }
                        Poll::Ready(Err(_)) => {
                            self.done = true;
                            Poll::Ready(None)
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
                Poll::Pending => return Poll::Pending,
            },
        };
        // The messages already waiting leave with it, as one: a consumer that fell behind
        // catches up in fewer, larger messages.
        while let Ok(later) = self.messages.try_recv() {
            if !message.fits(later.event_count, later.event_bytes) {
                self.carry = Some(later);
                break;
            }
            message.join(later);
        }
        self.resume_from = message.resume_from;
        Poll::Ready(Some(Ok(message)))
    }
}

/// Where a watcher's batches come from.
enum Feed {
    /// The tail's ring (any filter but one call).
    Ring(broadcast::Receiver<Arc<Batch>>),
    /// Handed over by the tail (a filter of one call); positions below `storage_below` are read
    /// from storage.
    Keyed { wake: KeyedWake, storage_below: u64 },
}

/// One watch being served.
struct Watcher {
    inner: Arc<Inner>,
    filter: EventFilter,
    /// The next position to deliver (or to pass over).
    next: u64,
    /// Where its batches come from (taken when it runs).
    feed: Option<Feed>,
    /// A batch taken off the ring that did not fit in the message before it.
    carry: Option<Arc<Batch>>,
    head: watch::Receiver<u64>,
    contact: watch::Receiver<Result<(), WatchEnd>>,
    messages: mpsc::Sender<WatchMessage>,
    progress_every: Duration,
}

impl Watcher {
    /// Serves the watch until the consumer leaves (`None`) or it ends on its own.
    async fn run(mut self) -> Option<WatchEnd> {
        match self.feed.take() {
            Some(Feed::Ring(batches)) => self.run_ring(batches).await,
            Some(Feed::Keyed {
                wake,
                storage_below,
            }) => self.run_keyed(wake, storage_below).await,
            None => Some(WatchEnd::ShuttingDown),
        }
    }

    /// A watcher of the ring (any filter but one call).
    async fn run_ring(mut self, mut batches: broadcast::Receiver<Arc<Batch>>) -> Option<WatchEnd> {
        let mut progress = tokio::time::interval(self.progress_every);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is at once: a first message tells the consumer the watch is open.
        loop {
            // The next batch, if the ring holds one: it tells whether the ring continues from
            // `next` (it does not if this watcher started behind the head or fell off the ring).
            if self.carry.is_none() {
                match batches.try_recv() {
                    Ok(batch) => self.carry = Some(batch),
                    Err(broadcast::error::TryRecvError::Closed) => {
                        return Some(WatchEnd::ShuttingDown);
                    }
                    // Nothing yet, or fell off the ring (storage has what it missed).
                    Err(_) => {}
                }
            }
            // Behind the tail, and the ring does not continue from here: catch up from storage.
            while self.next < *self.head.borrow()
                && self.carry.as_ref().is_none_or(|b| b.first > self.next)
            {
                if let Err(end) = self.catch_up_page().await? {
                    return Some(end);
                }
                progress.reset();
            }
            let batch = match self.carry.take() {
                Some(batch) => batch,
                None => {
                    tokio::select! {
                        waited = self.wait() => match waited? {
                            Ok(()) => continue,
                            Err(end) => return Some(end),
                        },
                        _ = progress.tick() => {
                            if let Err(end) = self.send_progress().await? {
                                return Some(end);
                            }
                            continue;
                        }
                        batch = batches.recv() => match batch {
                            Ok(batch) => batch,
                            // Fell off the ring: storage has what it missed.
                            Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(broadcast::error::RecvError::Closed) => {
                                return Some(WatchEnd::ShuttingDown);
                            }
                        },
                    }
                }
            };
            // A gap: the tail moved the head past it before it broadcast this batch, so storage
            // has it; the loop reads it, then takes this batch.
            if batch.first > self.next {
                self.carry = Some(batch);
                continue;
            }
            // This batch and those broadcast since, as one message.
            let mut message = WatchMessage::default();
            self.take(&batch, &mut message);
            // Until the ring is empty (or lagged, or closed: the loop sees to those).
            while let Ok(batch) = batches.try_recv() {
                let (events, bytes) = (batch.events.events.len(), batch.events.wire.len());
                if batch.first > self.next || !message.fits(events, bytes) {
                    self.carry = Some(batch);
                    break;
                }
                self.take(&batch, &mut message);
            }
            if message.event_count > 0 {
                if let Err(end) = self.send(message).await? {
                    return Some(end);
                }
                progress.reset();
            }
        }
    }

    /// A watcher of one call: storage below `storage_below`, then the batches the tail hands
    /// over. Positions between them hold none of the call's events.
    async fn run_keyed(mut self, wake: KeyedWake, mut storage_below: u64) -> Option<WatchEnd> {
        let mut progress = tokio::time::interval(self.progress_every);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is at once: a first message tells the consumer the watch is open.
        let mut progress_due = false;
        loop {
            let handed = wake.take(&self.head);
            let mut batches = handed.batches;
            if handed.overflowed {
                // Some batch of the call was not queued: storage has it, below this head.
                storage_below = storage_below.max(handed.head);
                batches.clear();
            }
            let mut sent = false;
            while self.next < storage_below {
                if let Err(end) = self.catch_up_page().await? {
                    return Some(end);
                }
                sent = true;
            }
            let mut message = WatchMessage::default();
            for batch in batches {
                if batch.next <= self.next {
                    continue;
                }
                let (events, bytes) = (batch.events.events.len(), batch.events.wire.len());
                if message.event_count > 0 && !message.fits(events, bytes) {
                    if let Err(end) = self.send(std::mem::take(&mut message)).await? {
                        return Some(end);
                    }
                    sent = true;
                }
                // No batch between: nothing of the call there.
                self.next = self.next.max(batch.first);
                self.take(&batch, &mut message);
            }
            // Every position below the head is delivered or holds none of the call's events.
            self.next = self.next.max(handed.head);
            if message.event_count > 0 {
                if let Err(end) = self.send(message).await? {
                    return Some(end);
                }
                sent = true;
            }
            if sent {
                progress.reset();
            } else if progress_due && let Err(end) = self.send_progress().await? {
                return Some(end);
            }
            progress_due = false;
            tokio::select! {
                waited = self.wait() => match waited? {
                    Ok(()) => {}
                    Err(end) => return Some(end),
                },
                _ = progress.tick() => progress_due = true,
                () = wake.notify.notified() => {}
            }
        }
    }

    /// One page of storage from `next`, sent (as a progress message if nothing matched).
    async fn catch_up_page(&mut self) -> Option<Result<(), WatchEnd>> {
        let scan = match self.read_storage().await {
            Ok(scan) => scan,
            Err(end) => return Some(Err(end)),
        };
        let mut message = WatchMessage {
            applied_index: scan.applied_index,
            ..WatchMessage::default()
        };
        // The scan applied the filter: every event it returned is sent.
        Encoded::new(scan.value.items).append_matching(0, None, &mut message);
        self.next = scan.value.next.max(self.next);
        if scan.value.complete {
            // Every position below the store's head was looked at.
            self.next = self.next.max(scan.value.head);
        }
        self.send(message).await
    }

    /// Waits for shutdown, the consumer leaving (`None`), or a change of leader contact:
    /// `Ok(())` if the watch goes on.
    async fn wait(&mut self) -> Option<Result<(), WatchEnd>> {
        let shutdown = self.inner.shutdown.clone();
        tokio::select! {
            () = shutdown.cancelled() => Some(Err(WatchEnd::ShuttingDown)),
            () = self.messages.closed() => None,
            changed = self.contact.changed() => {
                if changed.is_err() {
                    return Some(Err(WatchEnd::ShuttingDown));
                }
                let lost = self.contact.borrow_and_update().clone().err();
                Some(lost.map_or(Ok(()), Err))
            }
        }
    }

    /// A progress message: no events, the node's applied index.
    async fn send_progress(&mut self) -> Option<Result<(), WatchEnd>> {
        let applied = self.inner.reader.watch_applied().borrow().index();
        let message = WatchMessage {
            applied_index: applied,
            ..WatchMessage::default()
        };
        self.send(message).await
    }

    /// Adds to `message` the events of `batch` (which starts at or before `next`) from `next`
    /// that match, and moves `next` past the batch.
    fn take(&mut self, batch: &Batch, message: &mut WatchMessage) {
        debug_assert!(batch.first <= self.next, "a batch past a gap is not taken");
        // Already past it.
        if batch.next <= self.next {
            return;
        }
        batch
            .events
            .append_matching(self.next, Some(&self.filter), message);
        message.applied_index = batch.applied_index;
        self.next = batch.next;
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

    /// Sends `message` (no events: a progress message) with `resume_from` = `next`. Once the
    /// consumer's buffer has been full for [`STALL_MIN`], looks every [`LAG_CHECK_EVERY`] at how
    /// far the log moved on: past `--watch-lag-max`, the watch ends. `None`: the consumer left.
    async fn send(&mut self, mut message: WatchMessage) -> Option<Result<(), WatchEnd>> {
        let sent_events = message.event_count;
        message.resume_from = self.next;
        message.node_id = self.inner.node_id;
        // Room in the buffer (the usual case): no timer to arm.
        let permit = match self.messages.try_reserve() {
            Ok(permit) => Some(permit),
            Err(mpsc::error::TrySendError::Closed(())) => return None,
            Err(mpsc::error::TrySendError::Full(())) => None,
        };
        let mut wait = STALL_MIN;
        let permit = if let Some(permit) = permit {
            permit
        } else {
            loop {
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
    keyed: Arc<Keyed>,
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
                    let moved = keyed.move_head_if_unwatched(|| {
                        next = next.max(at);
                        head.send_replace(next);
                    });
                    if moved {
                        continue;
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "the watch tail could not read the log's end");
                    continue;
                }
            }
        }
        // Everything applied so far, a page at a time; a snapshot install may have added many.
        // The first page of a wake is short and read here: what one apply added is in the
        // memtable, and reading it costs less than a hand-off to the blocking pool and back.
        // Whatever is left after it (a long stretch) is read on the blocking pool.
        let mut first_page = true;
        loop {
            let from = next;
            let read = if std::mem::take(&mut first_page) {
                Ok(reader.scan_events(&EventFilter::default(), from, TAIL_INLINE_EVENTS))
            } else {
                let reader = reader.clone();
                tokio::task::spawn_blocking(move || {
                    reader.scan_events(&EventFilter::default(), from, PAGE_EVENTS)
                })
                .await
            };
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
                events: Encoded::new(scan.value.items),
            };
            next = batch.next;
            let batch = Arc::new(batch);
            // Handed to the watchers of its calls, and the head moved, under one lock. The head
            // moves before the ring has the batch: a watcher that sees this batch start past its
            // position finds the gap below the head, in storage.
            keyed.publish(&batch, || {
                head.send_replace(next);
            });
            // No receiver is fine: nobody watches.
            let _ = tail.send(batch);
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

/// `WatchEventsResponse` field numbers (`events.proto`); the encoding test holds them to prost's.
const FIELD_EVENTS: u32 = 1;
const FIELD_RESUME_FROM: u32 = 2;
const FIELD_APPLIED_INDEX: u32 = 3;
const FIELD_NODE_ID: u32 = 4;

/// Events with their wire form, encoded once for every watcher: each event as an `events` entry
/// of a `WatchEventsResponse` (key, length, `v1::Event`), back to back in one buffer.
#[derive(Debug)]
struct Encoded {
    /// The domain form, to filter on.
    events: Vec<Event>,
    wire: Bytes,
    /// `ends[i]`: where event `i`'s entry ends in `wire`.
    ends: Vec<usize>,
}

impl Encoded {
    fn new(events: Vec<Event>) -> Self {
        let wire: Vec<v1::Event> = events.iter().map(convert::wire_event).collect();
        let (wire, ends) = encode_entries(&wire);
        Self { events, wire, ends }
    }

    /// Appends to `message` the events at or past position `from` that `filter` matches (none:
    /// all), as slices of the shared buffer, one per run of consecutive matches.
    fn append_matching(&self, from: u64, filter: Option<&EventFilter>, message: &mut WatchMessage) {
        let mut run: Option<usize> = None;
        for (i, event) in self.events.iter().enumerate() {
            let keep = event.position >= from && filter.is_none_or(|f| f.matches(event));
            match (keep, run) {
                (true, None) => run = Some(i),
                (false, Some(start)) => {
                    message.push(self.entries(start, i), i - start);
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(start) = run {
            message.push(
                self.entries(start, self.events.len()),
                self.events.len() - start,
            );
        }
    }

    /// The entries of events `[start, end)`.
    fn entries(&self, start: usize, end: usize) -> Bytes {
        let from = start.checked_sub(1).map_or(0, |i| self.ends[i]);
        self.wire.slice(from..self.ends[end - 1])
    }
}

/// Encodes `events` as `events` entries of a `WatchEventsResponse`, as prost does, and says
/// where each ends.
fn encode_entries(events: &[v1::Event]) -> (Bytes, Vec<usize>) {
    let len = events
        .iter()
        .map(|e| encoding::message::encoded_len(FIELD_EVENTS, e))
        .sum();
    let mut wire = BytesMut::with_capacity(len);
    let mut ends = Vec::with_capacity(events.len());
    for event in events {
        encoding::message::encode(FIELD_EVENTS, event, &mut wire);
        ends.push(wire.len());
    }
    (wire.freeze(), ends)
}

/// One `WatchEventsResponse`, its events already encoded (shared with every watcher that sends
/// them). [`WatchCodec`] writes it; a client reads a `v1::WatchEventsResponse`.
#[derive(Debug, Clone, Default)]
pub struct WatchMessage {
    /// Runs of encoded `events` entries, in position order.
    events: Vec<Bytes>,
    event_count: usize,
    /// Bytes of `events`.
    event_bytes: usize,
    resume_from: u64,
    applied_index: u64,
    node_id: u64,
}

impl WatchMessage {
    fn push(&mut self, entries: Bytes, count: usize) {
        self.event_bytes += entries.len();
        self.event_count += count;
        self.events.push(entries);
    }

    /// Whether `events` more events of `bytes` encoded bytes may join this message: a message
    /// that joins others holds at most a page (alone, it holds what it holds).
    fn fits(&self, events: usize, bytes: usize) -> bool {
        self.event_count + events <= PAGE_EVENTS as usize && self.event_bytes + bytes <= PAGE_BYTES
    }

    /// Appends the next message of the same stream: its events follow, its positions win.
    fn join(&mut self, later: WatchMessage) {
        self.event_bytes += later.event_bytes;
        self.event_count += later.event_count;
        self.events.extend(later.events);
        self.resume_from = later.resume_from;
        self.applied_index = later.applied_index;
        self.node_id = later.node_id;
    }

    /// The message as the client sees it, decoded from the bytes it is sent as: for a consumer
    /// inside the node that needs the fields (a copy and a decode, so not for the gRPC path).
    pub fn to_response(&self) -> Result<v1::WatchEventsResponse, prost::DecodeError> {
        let mut bytes = Vec::with_capacity(self.encoded_len());
        self.encode(&mut bytes);
        prost::Message::decode(bytes.as_slice())
    }

    /// The encoded length, as `prost::Message::encoded_len` of the same `WatchEventsResponse`.
    fn encoded_len(&self) -> usize {
        let field = |tag, value: u64| {
            if value == 0 {
                0
            } else {
                encoding::uint64::encoded_len(tag, &value)
            }
        };
        self.event_bytes
            + field(FIELD_RESUME_FROM, self.resume_from)
            + field(FIELD_APPLIED_INDEX, self.applied_index)
            + field(FIELD_NODE_ID, self.node_id)
    }

    /// Writes the message as prost writes the same `WatchEventsResponse`: fields in number order,
    /// proto3 scalars at zero left out.
    fn encode(&self, buf: &mut impl BufMut) {
        for entries in &self.events {
            buf.put_slice(entries);
        }
        for (tag, value) in [
            (FIELD_RESUME_FROM, self.resume_from),
            (FIELD_APPLIED_INDEX, self.applied_index),
            (FIELD_NODE_ID, self.node_id),
        ] {
            if value != 0 {
                encoding::uint64::encode(tag, &value, buf);
            }
        }
    }
}

/// The codec of `WatchEvents`: requests decoded as every other RPC's (a malformed one is
/// INVALID_ARGUMENT), responses written from their encoded events ([`WatchMessage`]).
#[derive(Debug, Default)]
pub struct WatchCodec(
    proto::codec::InvalidArgumentCodec<v1::WatchEventsResponse, v1::WatchEventsRequest>,
);

impl Codec for WatchCodec {
    type Encode = WatchMessage;
    type Decode = v1::WatchEventsRequest;
    type Encoder = WatchEncoder;
    type Decoder = proto::codec::InvalidArgumentDecoder<v1::WatchEventsRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        WatchEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        self.0.decoder()
    }
}

/// Writes a [`WatchMessage`]: a copy of bytes encoded once, not an encoding per watcher.
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchEncoder;

impl Encoder for WatchEncoder {
    type Item = WatchMessage;
    type Error = Status;

    fn encode(&mut self, item: WatchMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.encode(dst);
        Ok(())
    }
}

/// What answers `WatchEvents` (the API: it authenticates, checks the request and opens the
/// watch); [`WatchServiceServer`] serves it.
#[tonic::async_trait]
pub trait WatchHandler: Send + Sync + 'static {
    async fn watch_events(
        &self,
        request: tonic::Request<v1::WatchEventsRequest>,
    ) -> Result<tonic::Response<WatchStream>, Status>;
}

/// The gRPC path of `WatchEvents`.
const WATCH_EVENTS_PATH: &str = "/switchboard.v1.WatchService/WatchEvents";

/// `switchboard.v1.WatchService`, as tonic would generate it but with [`WatchCodec`]: the
/// generated server encodes every message with prost, once per watcher. No compression (the
/// node enables none for any service).
#[derive(Debug)]
pub struct WatchServiceServer<T> {
    inner: Arc<T>,
    max_decoding_message_size: Option<usize>,
    max_encoding_message_size: Option<usize>,
}

impl<T> WatchServiceServer<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner: Arc::new(inner),
            max_decoding_message_size: None,
            max_encoding_message_size: None,
        }
    }

    /// Largest request accepted (tonic's default: 4 MiB).
    #[must_use]
    pub fn max_decoding_message_size(mut self, limit: usize) -> Self {
        self.max_decoding_message_size = Some(limit);
        self
    }

    /// Largest message sent (tonic's default: unbounded).
    #[must_use]
    pub fn max_encoding_message_size(mut self, limit: usize) -> Self {
        self.max_encoding_message_size = Some(limit);
        self
    }
}

impl<T> Clone for WatchServiceServer<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            max_decoding_message_size: self.max_decoding_message_size,
            max_encoding_message_size: self.max_encoding_message_size,
        }
    }
}

impl<T> tonic::server::NamedService for WatchServiceServer<T> {
    const NAME: &'static str = v1::watch_service_server::SERVICE_NAME;
}

impl<T, B> tower::Service<http::Request<B>> for WatchServiceServer<T>
where
    T: WatchHandler,
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != WATCH_EVENTS_PATH {
            return Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(
                    Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            });
        }
        let method = WatchEventsMethod(self.inner.clone());
        let mut grpc = tonic::server::Grpc::new(WatchCodec::default())
            .apply_max_message_size_config(
                self.max_decoding_message_size,
                self.max_encoding_message_size,
            );
        Box::pin(async move { Ok(grpc.server_streaming(method, request).await) })
    }
}

/// `WatchEvents` as tonic's server-streaming call.
struct WatchEventsMethod<T>(Arc<T>);

impl<T: WatchHandler> tonic::server::ServerStreamingService<v1::WatchEventsRequest>
    for WatchEventsMethod<T>
{
    type Response = WatchMessage;
    type ResponseStream = WatchStream;
    type Future = BoxFuture<'static, Result<tonic::Response<WatchStream>, Status>>;

    fn call(&mut self, request: tonic::Request<v1::WatchEventsRequest>) -> Self::Future {
        let handler = self.0.clone();
        Box::pin(async move { handler.watch_events(request).await })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn domain_event(position: u64, tenant: &str, event_type: &str) -> Event {
        Event {
            position,
            event_id: domain::event_id(position),
            event_type: event_type.to_owned(),
            call_id: Some(domain::CallId::from_u128(u128::from(position % 3))),
            tenant_id: tenant.to_owned(),
            trace_id: format!("trace-{position}"),
            sequence_number: position,
            at_ms: 1_700_000_000_000 + position,
            payload: if position.is_multiple_of(2) {
                domain::Payload::Json(format!(r#"{{"n":{position}}}"#))
            } else {
                domain::Payload::Bytes(vec![0, 1, 2, u8::try_from(position % 256).unwrap_or(0)])
            },
            metadata: [("k".to_owned(), format!("v{position}"))]
                .into_iter()
                .collect(),
            // Some events are agent activity, so that its field is encoded too.
            activity: position.is_multiple_of(5).then(|| {
                Box::new(domain::Activity {
                    agent_type: "agent-api".to_owned(),
                    agent_name: "API".to_owned(),
                    project_id: "P".to_owned(),
                    task_id: format!("T-{position}"),
                    task_description: String::new(),
                    severity: domain::Severity::Warning,
                    status: domain::ActivityStatus::InProgress,
                    message: "m".to_owned(),
                })
            }),
        }
    }

    fn encoded(message: &WatchMessage) -> Vec<u8> {
        let mut buf = Vec::new();
        message.encode(&mut buf);
        assert_eq!(buf.len(), message.encoded_len());
        buf
    }

    #[test]
    fn a_message_encodes_as_prost_encodes_the_same_response() {
        let wire: Vec<v1::Event> = (1..=5)
            .map(|p| {
                let mut event = convert::wire_event(&domain_event(p, "t", "bench.tick"));
                // Two metadata entries: the map is encoded in its iteration order, the same
                // for both encodings of this one value.
                event.metadata.insert("other".to_owned(), "x".to_owned());
                event
            })
            .collect();
        let (bytes, ends) = encode_entries(&wire);
        assert_eq!(ends.len(), wire.len());
        for (resume_from, applied_index, node_id) in [(6, 17, 2), (0, 0, 0), (1 << 40, 1, 0)] {
            let mut message = WatchMessage {
                resume_from,
                applied_index,
                node_id,
                ..WatchMessage::default()
            };
            // Split in two runs, as a watcher with a filter would send them.
            message.push(bytes.slice(..ends[1]), 2);
            message.push(bytes.slice(ends[1]..), 3);
            let expected = v1::WatchEventsResponse {
                events: wire.clone(),
                resume_from,
                applied_index,
                node_id,
            };
            assert_eq!(encoded(&message), expected.encode_to_vec());
            assert_eq!(message.to_response().ok(), Some(expected));
        }
    }

    #[test]
    fn a_progress_message_encodes_as_prost_encodes_it() {
        let message = WatchMessage {
            resume_from: 300,
            applied_index: 7,
            node_id: 1,
            ..WatchMessage::default()
        };
        let expected = v1::WatchEventsResponse {
            events: Vec::new(),
            resume_from: 300,
            applied_index: 7,
            node_id: 1,
        };
        assert_eq!(encoded(&message), expected.encode_to_vec());
    }

    #[test]
    fn a_watcher_sends_the_matching_events_past_its_position_in_order() {
        let events = Encoded::new(vec![
            domain_event(10, "a", "call.started"),
            domain_event(11, "b", "call.started"),
            domain_event(12, "a", "turn.appended"),
            domain_event(13, "a", "call.ended"),
            domain_event(14, "b", "call.ended"),
            domain_event(15, "a", "call.ended"),
        ]);
        let filter = EventFilter {
            tenant_id: Some("a".to_owned()),
            ..EventFilter::default()
        };
        let mut message = WatchMessage::default();
        events.append_matching(11, Some(&filter), &mut message);
        assert_eq!(message.event_count, 3);
        // 12 and 13 are one run of the shared buffer, 15 another.
        assert_eq!(message.events.len(), 2);
        let decoded = v1::WatchEventsResponse::decode(encoded(&message).as_slice())
            .map(|r| r.events.iter().map(|e| e.position).collect::<Vec<_>>())
            .ok();
        assert_eq!(decoded, Some(vec![12, 13, 15]));

        let mut all = WatchMessage::default();
        events.append_matching(0, None, &mut all);
        assert_eq!((all.event_count, all.events.len()), (6, 1));
        assert_eq!(all.event_bytes, events.wire.len());
    }

    #[test]
    fn joined_messages_keep_the_later_positions_and_every_event() {
        let events = Encoded::new((1..=4).map(|p| domain_event(p, "a", "x")).collect());
        let mut first = WatchMessage {
            resume_from: 3,
            applied_index: 5,
            node_id: 1,
            ..WatchMessage::default()
        };
        events.append_matching(1, None, &mut first);
        let progress = WatchMessage {
            resume_from: 9,
            applied_index: 12,
            node_id: 1,
            ..WatchMessage::default()
        };
        first.join(progress);
        let decoded = v1::WatchEventsResponse::decode(encoded(&first).as_slice()).ok();
        assert_eq!(
            decoded.map(|r| (r.events.len(), r.resume_from, r.applied_index)),
            Some((4, 9, 12))
        );
    }

    #[test]
    fn a_joined_message_stays_within_a_page() {
        let mut message = WatchMessage::default();
        assert!(message.fits(PAGE_EVENTS as usize, PAGE_BYTES));
        message.push(Bytes::from_static(b"xx"), 1);
        assert!(!message.fits(PAGE_EVENTS as usize, 0));
        assert!(!message.fits(0, PAGE_BYTES - 1));
        assert!(message.fits(PAGE_EVENTS as usize - 1, PAGE_BYTES - 2));
    }

    #[test]
    fn the_path_served_is_the_tables() {
        assert_eq!(proto::WATCH_RPC_PATHS, &[WATCH_EVENTS_PATH]);
    }
}
