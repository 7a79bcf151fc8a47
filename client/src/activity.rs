//! [`ActivityEmitter`]: fire-and-forget agent activity logging.
//!
//! An agent that reports what it does must never wait on, or fail because of, its reporting.
//! [`ActivityEmitter::emit`] puts a record into a bounded buffer and returns at once; a
//! background task sends the buffer as one `RecordActivity` every [`EmitterConfig::flush_every`]
//! or as soon as [`EmitterConfig::batch_max`] records wait. When the buffer is full (the cluster
//! is slower than the agent, or unreachable) a record is dropped, never queued without bound:
//! drops are counted in [`EmitterStats`] and reported with a warning (at most once per second).
//! Each batch is sent under its own request id, so the client's retries (redirects, leader
//! changes) never record it twice; a batch the client gives up on is counted as failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proto::v1;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::Client;

/// Records one `RecordActivity` carries at most (the store's bound).
pub const ACTIVITY_BATCH_MAX: usize = 100;

/// How an emitter buffers and flushes.
#[derive(Debug, Clone)]
pub struct EmitterConfig {
    /// Tenant of the records (empty: the token's).
    pub tenant_id: String,
    /// A batch is sent at least this often while records wait.
    pub flush_every: Duration,
    /// A batch is sent as soon as this many records wait (at most [`ACTIVITY_BATCH_MAX`]).
    pub batch_max: usize,
    /// Records buffered at most; past it, `emit` drops.
    pub buffer_max: usize,
}

impl Default for EmitterConfig {
    fn default() -> Self {
        Self {
            tenant_id: String::new(),
            flush_every: Duration::from_millis(100),
            batch_max: ACTIVITY_BATCH_MAX,
            buffer_max: 10_000,
        }
    }
}

/// What an emitter did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmitterStats {
    /// Records the cluster acknowledged.
    pub sent: u64,
    /// Records dropped because the buffer was full (or the emitter closed).
    pub dropped: u64,
    /// Records of batches the client gave up on (the error is logged).
    pub failed: u64,
    /// Batches sent.
    pub batches: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    batches: AtomicU64,
}

enum Message {
    Record(Box<v1::ActivityEntry>),
    Flush(oneshot::Sender<()>),
}

/// A non-blocking, buffered activity logger; see the [module docs](self). Made by
/// [`Client::activity_emitter`] inside a Tokio runtime.
#[derive(Debug)]
pub struct ActivityEmitter {
    sender: mpsc::Sender<Message>,
    counters: Arc<Counters>,
    task: Option<JoinHandle<()>>,
    last_warning: std::sync::Mutex<Option<Instant>>,
}

impl Client {
    /// An emitter sending through this client; starts its flushing task on the current Tokio
    /// runtime.
    pub fn activity_emitter(&self, config: EmitterConfig) -> ActivityEmitter {
        let batch_max = config.batch_max.clamp(1, ACTIVITY_BATCH_MAX);
        let (sender, receiver) = mpsc::channel(config.buffer_max.max(1));
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(flush_loop(
            self.clone(),
            config.tenant_id,
            config.flush_every,
            batch_max,
            receiver,
            counters.clone(),
        ));
        ActivityEmitter {
            sender,
            counters,
            task: Some(task),
            last_warning: std::sync::Mutex::new(None),
        }
    }
}

impl ActivityEmitter {
    /// Buffers `entry` for the next batch; never waits. `false`: the buffer was full and the
    /// record was dropped (counted).
    pub fn emit(&self, entry: v1::ActivityEntry) -> bool {
        match self.sender.try_send(Message::Record(Box::new(entry))) {
            Ok(()) => true,
            Err(_) => {
                let dropped = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                let mut last = self
                    .last_warning
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                    *last = Some(Instant::now());
                    tracing::warn!(dropped, "activity buffer full: records dropped");
                }
                false
            }
        }
    }

    /// Sends everything buffered so far and waits until it was answered (sent or failed).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.sender.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    pub fn stats(&self) -> EmitterStats {
        EmitterStats {
            sent: self.counters.sent.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
        }
    }

    /// Flushes, stops the task, and returns the final counts.
    pub async fn close(mut self) -> EmitterStats {
        self.flush().await;
        let task = self.task.take();
        let stats = self.stats();
        drop(self);
        if let Some(task) = task {
            let _ = task.await;
        }
        stats
    }
}

async fn flush_loop(
    client: Client,
    tenant_id: String,
    flush_every: Duration,
    batch_max: usize,
    mut receiver: mpsc::Receiver<Message>,
    counters: Arc<Counters>,
) {
    let mut batch: Vec<v1::ActivityEntry> = Vec::with_capacity(batch_max);
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let mut ticker = tokio::time::interval(flush_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let closed = tokio::select! {
            message = receiver.recv() => match message {
                Some(Message::Record(entry)) => {
                    batch.push(*entry);
                    if batch.len() < batch_max {
                        continue;
                    }
                    false
                }
                Some(Message::Flush(done)) => {
                    waiting.push(done);
                    false
                }
                None => true,
            },
            _ = ticker.tick() => false,
        };
        if !batch.is_empty() {
            send(&client, &tenant_id, std::mem::take(&mut batch), &counters).await;
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
        if closed {
            return;
        }
    }
}

async fn send(
    client: &Client,
    tenant_id: &str,
    entries: Vec<v1::ActivityEntry>,
    counters: &Counters,
) {
    let records = entries.len() as u64;
    counters.batches.fetch_add(1, Ordering::Relaxed);
    let result = client
        .record_activity(v1::RecordActivityRequest {
            tenant_id: tenant_id.to_owned(),
            // One fresh id per batch, kept across the client's retries of it.
            request_id: uuid::Uuid::now_v7().to_string(),
            entries,
        })
        .await;
    match result {
        Ok(_) => {
            counters.sent.fetch_add(records, Ordering::Relaxed);
        }
        Err(error) => {
            counters.failed.fetch_add(records, Ordering::Relaxed);
            tracing::warn!(records, %error, "activity batch not recorded");
        }
    }
}
