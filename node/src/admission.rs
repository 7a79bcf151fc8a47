//! Admission control: how many client reads and client writes a node serves at once, how many
//! may wait for a turn, and what happens to the rest (shed with `RESOURCE_EXHAUSTED`).
//!
//! Why: a node's Raft core (elections, heartbeats, appends) shares the machine with client
//! requests. 200 concurrent `ListEvents(limit=1000)` over 64 KiB events cost a 3-node cluster on
//! 2 cores two leader changes and 2.8 s writes: every read built a 1 MiB page on the async
//! runtime that also drives openraft, so heartbeats queued behind page builds. Two measures
//! together keep Raft's messages moving whatever clients send:
//! - each class has a bounded number of requests in flight and a bounded queue; a request over
//!   the queue bound, or one that waited longer than the queue wait bound, is refused at once
//!   with `RESOURCE_EXHAUSTED` and the `x-switchboard-overloaded` header naming the class, so
//!   the client backs off (the client library does) instead of piling up memory and work;
//! - admitted reads build their pages on the blocking pool (`Api::serve_read`), never on the
//!   runtime's worker threads, so the tasks that send and answer heartbeats are never stuck
//!   behind RocksDB scans (ARCHITECTURE.md, "Overload isolation", says why this and not a
//!   second runtime).
//!
//! Only the public API's `read` and `write` RPCs are admitted (the RPC table's kinds): status,
//! membership, read index and the internal Raft service are never shed, because refusing them
//! under load is how an overloaded cluster would lose its leader.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::observe::names;

/// Default client reads served at once by one node: two per core of the 2-core reference
/// machine (raise it with the cores). Each may hold a page of up to `PAGE_BYTES_MAX` (1 MiB)
/// twice (stored and wire form) while it is built, so 4 bound that to about 8 MiB. Measured with
/// `node/tests/overload.rs` (200 readers of 1 MiB pages on the leader, a write every 50 ms) on a
/// loaded 2-core machine: 4 gave write p50 32-53 ms, p99 125-332 ms; 8 and 16 served more pages
/// but gave write p99 0.4-1.8 s, because their blocking threads outnumber the cores that Raft's
/// threads need; unbounded (every read on the blocking pool) lost the leader.
pub const READS_IN_FLIGHT_MAX: usize = 4;
/// Default client reads waiting for a turn; more are shed at once.
pub const READ_QUEUE_MAX: usize = 64;
/// Default client writes in flight at once. Writes are cheap to admit (Raft batches them into
/// one append and one fsync), and the benchmark's 256 concurrent clients must never be shed.
pub const WRITES_IN_FLIGHT_MAX: usize = 512;
/// Default client writes waiting for a turn; more are shed at once.
pub const WRITE_QUEUE_MAX: usize = 1024;
/// Default longest wait in a queue: a request still waiting after it is shed, since its client
/// is better served trying again later (or elsewhere) than by an answer that comes too late.
pub const ADMISSION_QUEUE_WAIT_MS_MAX: u64 = 1_000;
/// Largest accepted in-flight bound of either class.
pub const IN_FLIGHT_LIMIT: usize = 65_536;
/// Largest accepted queue bound of either class.
pub const QUEUE_LIMIT: usize = 1_000_000;

/// The classes of client requests, each admitted separately so that a read flood never sheds
/// writes and a write flood never sheds reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Read,
    Write,
}

impl Class {
    /// The class's name in metrics labels and in the `x-switchboard-overloaded` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Write => "write",
        }
    }

    /// The flags that raise this class's bounds, for refusal messages.
    fn flags(self) -> &'static str {
        match self {
            Class::Read => "--reads-in-flight-max / --read-queue-max",
            Class::Write => "--writes-in-flight-max / --write-queue-max",
        }
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The bounds of one class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassLimits {
    /// Requests served at once.
    pub in_flight_max: usize,
    /// Requests waiting for a turn; 0 sheds whatever finds every slot taken.
    pub queue_max: usize,
}

/// Admission bounds of a node (validated in `NodeConfig::validate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    pub reads: ClassLimits,
    pub writes: ClassLimits,
    pub queue_wait_max: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            reads: ClassLimits {
                in_flight_max: READS_IN_FLIGHT_MAX,
                queue_max: READ_QUEUE_MAX,
            },
            writes: ClassLimits {
                in_flight_max: WRITES_IN_FLIGHT_MAX,
                queue_max: WRITE_QUEUE_MAX,
            },
            queue_wait_max: Duration::from_millis(ADMISSION_QUEUE_WAIT_MS_MAX),
        }
    }
}

/// Why a request was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// Every slot was taken and the queue was full.
    QueueFull,
    /// It waited the whole queue wait bound without a slot freeing up.
    QueueWait { waited_ms: u64 },
}

impl Shed {
    /// Metrics label; bounded.
    pub fn as_str(self) -> &'static str {
        match self {
            Shed::QueueFull => "queue_full",
            Shed::QueueWait { .. } => "queue_wait",
        }
    }
}

/// A request refused because its class is at its bounds; nothing of it was done, so a retry
/// (for a write, with the same `request_id`) is always safe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", overloaded_message(self))]
pub struct Overloaded {
    pub node_id: u64,
    pub class: Class,
    pub limits: ClassLimits,
    pub shed: Shed,
}

fn overloaded_message(o: &Overloaded) -> String {
    let Overloaded {
        node_id,
        class,
        limits,
        shed,
    } = o;
    let why = match shed {
        Shed::QueueFull => format!(
            "{} {class}s in flight and {} queued, its bounds",
            limits.in_flight_max, limits.queue_max
        ),
        Shed::QueueWait { waited_ms } => format!(
            "waited {waited_ms} ms in the queue (--admission-queue-wait-ms-max) behind {} {class}s \
             in flight",
            limits.in_flight_max
        ),
    };
    let advice = match class {
        Class::Read => "retry with backoff, or send LOCAL reads to other nodes",
        Class::Write => "retry with backoff and the same request_id",
    };
    format!(
        "node {node_id} is overloaded and shed this {class}: {why}; {advice} (operators: {})",
        class.flags()
    )
}

/// A slot of a class, held while the request is served; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    class: Class,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Permit {
    fn drop(&mut self) {
        metrics::gauge!(names::ADMISSION_IN_FLIGHT, "class" => self.class.as_str()).decrement(1.0);
    }
}

/// One class's slots and queue.
#[derive(Debug)]
struct Gate {
    class: Class,
    limits: ClassLimits,
    slots: Arc<Semaphore>,
    /// Requests waiting for a slot; counted separately because the semaphore does not bound
    /// its waiters.
    queued: AtomicUsize,
}

/// Decrements the queue count however the wait ends, a dropped handler included.
struct Queued<'a>(&'a Gate);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(names::ADMISSION_QUEUED, "class" => self.0.class.as_str()).decrement(1.0);
    }
}

impl Gate {
    fn new(class: Class, limits: ClassLimits) -> Self {
        Self {
            class,
            limits,
            slots: Arc::new(Semaphore::new(limits.in_flight_max)),
            queued: AtomicUsize::new(0),
        }
    }

    fn admitted(&self, slot: OwnedSemaphorePermit) -> Permit {
        let class = self.class.as_str();
        metrics::counter!(names::ADMISSION_ADMITTED, "class" => class).increment(1);
        metrics::gauge!(names::ADMISSION_IN_FLIGHT, "class" => class).increment(1.0);
        Permit {
            class: self.class,
            _slot: slot,
        }
    }

    fn shed(&self, node_id: u64, shed: Shed) -> Overloaded {
        metrics::counter!(
            names::ADMISSION_SHED,
            "class" => self.class.as_str(),
            "reason" => shed.as_str()
        )
        .increment(1);
        tracing::debug!(class = %self.class, reason = shed.as_str(), "shed a request");
        Overloaded {
            node_id,
            class: self.class,
            limits: self.limits,
            shed,
        }
    }

    async fn admit(&self, node_id: u64, wait_max: Duration) -> Result<Permit, Overloaded> {
        // Tokio's semaphore is fair: a free slot exists only when nobody is queued, so this
        // never overtakes a waiter.
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Ok(self.admitted(slot));
        }
        let before = self.queued.fetch_add(1, Ordering::AcqRel);
        let queued = Queued(self);
        metrics::gauge!(names::ADMISSION_QUEUED, "class" => self.class.as_str()).increment(1.0);
        if before >= self.limits.queue_max {
            drop(queued);
            return Err(self.shed(node_id, Shed::QueueFull));
        }
        let started = Instant::now();
        let waited = tokio::time::timeout(wait_max, self.slots.clone().acquire_owned()).await;
        drop(queued);
        match waited {
            Ok(Ok(slot)) => Ok(self.admitted(slot)),
            // The semaphore is never closed; a closed one sheds like a full queue.
            Ok(Err(_closed)) => Err(self.shed(node_id, Shed::QueueFull)),
            Err(_elapsed) => {
                let waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                Err(self.shed(node_id, Shed::QueueWait { waited_ms }))
            }
        }
    }
}

/// Admission for one node's public API; shared by every handler.
#[derive(Debug)]
pub struct Admission {
    node_id: u64,
    reads: Gate,
    writes: Gate,
    queue_wait_max: Duration,
}

impl Admission {
    pub fn new(node_id: u64, config: AdmissionConfig) -> Self {
        Self {
            node_id,
            reads: Gate::new(Class::Read, config.reads),
            writes: Gate::new(Class::Write, config.writes),
            queue_wait_max: config.queue_wait_max,
        }
    }

    /// A slot of `class`, after waiting in its queue if every slot is taken (at most the queue
    /// wait bound); `Overloaded` when the queue is full or the wait ran out.
    pub async fn admit(&self, class: Class) -> Result<Permit, Overloaded> {
        let gate = match class {
            Class::Read => &self.reads,
            Class::Write => &self.writes,
        };
        gate.admit(self.node_id, self.queue_wait_max).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(in_flight_max: usize, queue_max: usize, wait_ms: u64) -> Arc<Admission> {
        let limits = ClassLimits {
            in_flight_max,
            queue_max,
        };
        Arc::new(Admission::new(
            7,
            AdmissionConfig {
                reads: limits,
                writes: limits,
                queue_wait_max: Duration::from_millis(wait_ms),
            },
        ))
    }

    #[tokio::test]
    async fn over_the_queue_bound_a_read_is_shed_naming_the_bounds_and_flags() {
        let admission = admission(1, 1, 60_000);
        let held = admission.admit(Class::Read).await.expect("a free slot");
        let waiter = tokio::spawn({
            let admission = admission.clone();
            async move { admission.admit(Class::Read).await.map(drop) }
        });
        // Wait (bounded) until the waiter is queued.
        let deadline = Instant::now() + Duration::from_secs(5);
        while admission.reads.queued.load(Ordering::Acquire) == 0 {
            assert!(Instant::now() < deadline, "the waiter never queued");
            tokio::task::yield_now().await;
        }
        let shed = admission
            .admit(Class::Read)
            .await
            .expect_err("queue is full");
        assert_eq!(shed.shed, Shed::QueueFull);
        assert_eq!(shed.class, Class::Read);
        let message = shed.to_string();
        for part in [
            "node 7",
            "1 reads in flight",
            "1 queued",
            "--read-queue-max",
        ] {
            assert!(message.contains(part), "{message}");
        }
        // Writes are admitted separately: a read flood does not shed them.
        drop(
            admission
                .admit(Class::Write)
                .await
                .expect("writes have their own slots"),
        );
        drop(held);
        waiter
            .await
            .expect("waiter task")
            .expect("the queued read gets the freed slot");
        assert_eq!(admission.reads.queued.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_request_that_waits_past_the_bound_is_shed_and_leaves_the_queue() {
        let admission = admission(1, 8, 20);
        let _held = admission.admit(Class::Write).await.expect("a free slot");
        let shed = admission
            .admit(Class::Write)
            .await
            .expect_err("the slot never frees");
        assert!(
            matches!(shed.shed, Shed::QueueWait { waited_ms } if waited_ms >= 20),
            "{shed:?}"
        );
        assert!(shed.to_string().contains("same request_id"), "{shed}");
        assert_eq!(admission.writes.queued.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_dropped_waiter_frees_its_queue_place() {
        let admission = admission(1, 1, 60_000);
        let _held = admission.admit(Class::Read).await.expect("a free slot");
        let waiting = admission.admit(Class::Read);
        // Polled once (it queues), then dropped as tonic drops a cancelled handler.
        let polled = tokio::time::timeout(Duration::from_millis(10), waiting).await;
        assert!(polled.is_err(), "no slot should be free");
        assert_eq!(admission.reads.queued.load(Ordering::Acquire), 0);
    }
}
