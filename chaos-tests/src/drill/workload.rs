//! The workload: K concurrent clients drive calls through random lifecycles, race each other on
//! the same call (several handoffs or ends at once), retry writes whose outcome is unknown with
//! the same request id, and read at every consistency level from random nodes. Every operation
//! is recorded in the [`History`]. Each client draws its decisions from its own stream of the
//! drill's seed.
//!
//! Every write carries its request id in the event it produces (source, turn text, summary,
//! handoff and end reason, event metadata) so the checkers can find it in the healed log.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use client::{Client, ClientConfig, ClientError};
use proto::v1;
use tonic::Code;

use super::cluster::Reach;
use crate::history::{CallTimes, History, Op, OpKind, Outcome, ReadLevel, SeenEvent, State};
use crate::rng::Rng;

/// Calls a client picks from (the most recent ones).
const RECENT_CALLS: usize = 12;
/// Calls remembered in all.
const CALLS_KEPT_MAX: usize = 256;
/// Retries of a write whose outcome is unknown, with the same request id.
const UNKNOWN_RETRIES_MAX: u32 = 2;
/// Operations per client, whatever the duration.
pub const OPS_PER_CLIENT_MAX: u64 = 200_000;
/// Events a `ListCallEvents` read asks for (one page).
const EVENTS_PAGE: u32 = 1000;
/// A deliberate retry of an acknowledged write waits this long at least, and at most
/// [`DELAYED_RETRY_MS_MAX`], so that it can cross a clock fault yet stays far inside the
/// one-hour idempotency window (clock faults move a leader by minutes at most).
const DELAYED_RETRY_MS_MIN: u64 = 2_000;
const DELAYED_RETRY_MS_MAX: u64 = 9_000;
/// Deliberate retries a client keeps waiting at once (more are not scheduled).
const DELAYED_RETRIES_PENDING_MAX: usize = 8;

pub const TENANT: &str = "drill";

#[derive(Debug, Clone)]
struct KnownCall {
    call_id: String,
    /// Highest write index acknowledged for it (min_index reads use it).
    index: u64,
}

/// What the clients share.
#[derive(Debug)]
pub struct Shared {
    pub history: History,
    pub stop: AtomicBool,
    calls: Mutex<Vec<KnownCall>>,
    seq: AtomicU64,
    seed: u64,
    reach: Reach,
    /// One client per node, for reads aimed at that node.
    nodes: Vec<(u64, Client)>,
}

impl Shared {
    pub fn new(history: History, seed: u64, reach: Reach, nodes: Vec<(u64, Client)>) -> Arc<Self> {
        Arc::new(Self {
            history,
            stop: AtomicBool::new(false),
            calls: Mutex::new(Vec::new()),
            seq: AtomicU64::new(0),
            seed,
            reach,
            nodes,
        })
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, Vec<KnownCall>> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn reach(&self) -> &Reach {
        &self.reach
    }

    pub fn known_call_ids(&self) -> Vec<String> {
        self.calls().iter().map(|c| c.call_id.clone()).collect()
    }

    fn request_id(&self, client: u32) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{:x}-{client}-{n}", self.seed)
    }

    fn remember(&self, call_id: &str, index: u64) {
        let mut calls = self.calls();
        if let Some(known) = calls.iter_mut().find(|c| c.call_id == call_id) {
            known.index = known.index.max(index);
            return;
        }
        calls.push(KnownCall {
            call_id: call_id.to_owned(),
            index,
        });
        if calls.len() > CALLS_KEPT_MAX {
            calls.remove(0);
        }
    }

    fn pick_call(&self, rng: &mut Rng) -> Option<KnownCall> {
        let calls = self.calls();
        let recent = &calls[calls.len().saturating_sub(RECENT_CALLS)..];
        rng.pick(recent).cloned()
    }

    fn open_calls(&self) -> usize {
        self.calls().len()
    }
}

/// The client for writes: every endpoint, redirects, retries with the same request id.
pub fn write_client(reach: &Reach) -> anyhow::Result<Client> {
    Ok(Client::new(ClientConfig {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(1500),
        call_deadline: Duration::from_millis(4000),
        retries_max: 8,
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..reach.client_config()
    })?)
}

/// A write to send (and, after an unknown outcome, to send again unchanged).
#[derive(Debug, Clone)]
pub enum Write {
    Create(v1::CreateCallRequest),
    Start(v1::StartCallRequest),
    Turn(v1::AppendTurnRequest),
    Event(v1::LogEventRequest),
    Context(v1::UpdateContextRequest),
    Handoff(v1::RequestHandoffRequest),
    End(v1::EndCallRequest),
}

impl Write {
    /// A create whose request id is `name` (liveness probes).
    pub fn probe(name: &str) -> Self {
        Write::new(OpKind::Create, "", name)
    }

    fn kind(&self) -> OpKind {
        match self {
            Write::Create(_) => OpKind::Create,
            Write::Start(_) => OpKind::Start,
            Write::Turn(_) => OpKind::Turn,
            Write::Event(_) => OpKind::Event,
            Write::Context(_) => OpKind::Context,
            Write::Handoff(_) => OpKind::Handoff,
            Write::End(_) => OpKind::End,
        }
    }

    fn new(kind: OpKind, call_id: &str, rid: &str) -> Self {
        let tenant_id = TENANT.to_owned();
        let request_id = rid.to_owned();
        let call_id = call_id.to_owned();
        match kind {
            OpKind::Start => Write::Start(v1::StartCallRequest {
                tenant_id,
                request_id,
                call_id,
            }),
            OpKind::Turn => Write::Turn(v1::AppendTurnRequest {
                tenant_id,
                request_id,
                call_id,
                speaker: "caller".into(),
                text: rid.to_owned(),
                confidence: 0.5,
                language: "en-US".into(),
                spoken_at_ms: 0,
            }),
            OpKind::Event => Write::Event(v1::LogEventRequest {
                tenant_id,
                request_id,
                call_id,
                event_type: "drill.note".into(),
                payload: Some(v1::log_event_request::Payload::PayloadJson(format!(
                    "{{\"rid\":\"{rid}\"}}"
                ))),
                metadata: [("rid".to_owned(), rid.to_owned())].into_iter().collect(),
            }),
            OpKind::Context => Write::Context(v1::UpdateContextRequest {
                tenant_id,
                request_id,
                call_id,
                summary: Some(rid.to_owned()),
                entities: HashMap::new(),
            }),
            OpKind::Handoff => Write::Handoff(v1::RequestHandoffRequest {
                tenant_id,
                request_id,
                call_id,
                reason: rid.to_owned(),
                urgency: v1::Urgency::Normal.into(),
                target: None,
            }),
            OpKind::End => Write::End(v1::EndCallRequest {
                tenant_id,
                request_id,
                call_id,
                reason: rid.to_owned(),
                resolution: "drill".into(),
            }),
            _ => Write::Create(v1::CreateCallRequest {
                tenant_id,
                request_id,
                source: rid.to_owned(),
                channel: v1::Channel::Voice.into(),
                ..Default::default()
            }),
        }
    }

    fn call_id(&self) -> &str {
        match self {
            Write::Create(_) => "",
            Write::Start(r) => &r.call_id,
            Write::Turn(r) => &r.call_id,
            Write::Event(r) => &r.call_id,
            Write::Context(r) => &r.call_id,
            Write::Handoff(r) => &r.call_id,
            Write::End(r) => &r.call_id,
        }
    }

    fn request_id(&self) -> &str {
        match self {
            Write::Create(r) => &r.request_id,
            Write::Start(r) => &r.request_id,
            Write::Turn(r) => &r.request_id,
            Write::Event(r) => &r.request_id,
            Write::Context(r) => &r.request_id,
            Write::Handoff(r) => &r.request_id,
            Write::End(r) => &r.request_id,
        }
    }
}

/// What a successful write told about the call.
struct Answer {
    call: Option<v1::Call>,
    meta: Option<v1::WriteMeta>,
    sequence: u64,
}

async fn send(client: &Client, write: Write) -> Result<Answer, ClientError> {
    let from_call = |r: v1::CallResponse| Answer {
        sequence: r.call.as_ref().map_or(0, |c| c.last_sequence_number),
        call: r.call,
        meta: r.meta,
    };
    match write {
        Write::Create(r) => client.create_call(r).await.map(from_call),
        Write::Start(r) => client.start_call(r).await.map(from_call),
        Write::Context(r) => client.update_context(r).await.map(from_call),
        Write::Handoff(r) => client.request_handoff(r).await.map(from_call),
        Write::End(r) => client.end_call(r).await.map(from_call),
        Write::Turn(r) => client.append_turn(r).await.map(|r| Answer {
            sequence: r.call.as_ref().map_or(0, |c| c.last_sequence_number),
            call: r.call,
            meta: r.meta,
        }),
        Write::Event(r) => client.log_event(r).await.map(|r| Answer {
            sequence: r.event.as_ref().map_or(0, |e| e.sequence_number),
            call: None,
            meta: r.meta,
        }),
    }
}

/// Whether an error is a definite "not applied".
fn definite_failure(error: &ClientError) -> bool {
    error.rejection.is_some() || error.code == Code::InvalidArgument
}

/// Sends `write` once as one recorded operation; returns its outcome.
pub async fn write_once(shared: &Shared, client: &Client, who: u32, write: Write) -> Op {
    write_attempt(shared, client, who, write, false).await
}

/// Sends `write` once, recorded as a deliberate delayed retry when `delayed_retry`.
async fn write_attempt(
    shared: &Shared,
    client: &Client,
    who: u32,
    write: Write,
    delayed_retry: bool,
) -> Op {
    let mut op = Op::new(0, who, write.kind(), write.call_id(), write.request_id());
    op.delayed_retry = delayed_retry;
    let mut op = shared.history.invoke(op);
    op.node = client
        .leader()
        .map_or_else(|| "cluster".to_owned(), |l| format!("via {}", l.addr));
    match send(client, write).await {
        Ok(answer) => {
            op.outcome = Outcome::Ok;
            if let Some(meta) = &answer.meta {
                op.index = meta.index;
                op.replayed = meta.replayed;
                op.node = format!("n{}", meta.leader_id);
            }
            if let Some(call) = &answer.call {
                op.state = State::from_wire(call.state);
                op.times = Some(CallTimes::from_wire(call));
                if op.kind == OpKind::Create {
                    op.call_id = call.call_id.clone();
                }
            }
            op.last_sequence = answer.sequence;
            if !op.call_id.is_empty() {
                shared.remember(&op.call_id, op.index);
            }
        }
        Err(error) => {
            op.outcome = if definite_failure(&error) {
                Outcome::Fail
            } else {
                Outcome::Unknown
            };
            op.rejection = error.rejection.map(|r| r.as_str().to_owned());
            op.error = format!("{:?}: {}", error.code, error.message);
        }
    }
    shared.history.complete(op.clone());
    op
}

/// Sends `write`; after an unknown outcome, sometimes sends it again with the same request id.
async fn write_with_retries(
    shared: &Shared,
    client: &Client,
    who: u32,
    rng: &mut Rng,
    write: Write,
) -> Op {
    let mut op = write_once(shared, client, who, write.clone()).await;
    let mut retries = 0;
    while op.outcome == Outcome::Unknown
        && retries < UNKNOWN_RETRIES_MAX
        && rng.chance(70)
        && !shared.stop.load(Ordering::Relaxed)
    {
        retries += 1;
        op = write_once(shared, client, who, write.clone()).await;
    }
    op
}

/// One read of `call_id` on node `node` at `level`, recorded.
pub async fn read_call(
    shared: &Shared,
    who: u32,
    node: &(u64, Client),
    call_id: &str,
    level: ReadLevel,
    events: bool,
) -> Op {
    let kind = if events {
        OpKind::ListEvents
    } else {
        OpKind::GetCall
    };
    let mut op = Op::new(0, who, kind, call_id, "");
    op.read = Some(level);
    op.node = format!("n{}", node.0);
    let mut op = shared.history.invoke(op);
    let read = Some(match level {
        ReadLevel::Linearizable => v1::ReadOptions {
            consistency: v1::Consistency::Linearizable.into(),
            min_index: 0,
        },
        ReadLevel::Local => v1::ReadOptions {
            consistency: v1::Consistency::Local.into(),
            min_index: 0,
        },
        ReadLevel::MinIndex(index) => v1::ReadOptions {
            consistency: v1::Consistency::Local.into(),
            min_index: index,
        },
    });
    let result = if events {
        node.1
            .list_call_events(v1::ListCallEventsRequest {
                tenant_id: TENANT.into(),
                call_id: call_id.into(),
                from_sequence: 0,
                limit: EVENTS_PAGE,
                read,
            })
            .await
            .map(|r| {
                op.index = r.meta.map_or(0, |m| m.applied_index);
                op.events = r.events.iter().map(seen_event).collect();
                op.last_sequence = op.events.last().map_or(0, |e| e.sequence);
            })
    } else {
        node.1
            .get_call(v1::GetCallRequest {
                tenant_id: TENANT.into(),
                call_id: call_id.into(),
                read,
            })
            .await
            .map(|r| {
                op.index = r.meta.map_or(0, |m| m.applied_index);
                if let Some(call) = r.call {
                    op.state = State::from_wire(call.state);
                    op.times = Some(CallTimes::from_wire(&call));
                    op.last_sequence = call.last_sequence_number;
                }
            })
    };
    match result {
        Ok(()) => op.outcome = Outcome::Ok,
        Err(error) => {
            op.outcome = if error.code == Code::NotFound {
                Outcome::Fail
            } else {
                Outcome::Unknown
            };
            op.error = format!("{:?}: {}", error.code, error.message);
        }
    }
    shared.history.complete(op.clone());
    op
}

/// The request id the workload wrote into an event, if any.
pub fn tag_of(event: &v1::Event) -> Option<String> {
    let json = match &event.payload {
        Some(v1::event::Payload::PayloadJson(text)) => {
            serde_json::from_str::<serde_json::Value>(text).ok()
        }
        _ => None,
    };
    let field = |name: &str| {
        json.as_ref()
            .and_then(|j| j.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    match event.event_type.as_str() {
        "call.created" => field("source"),
        "turn.appended" => field("text"),
        "context.updated" => field("summary"),
        "call.handed_off" | "call.ended" => field("reason"),
        "call.started" => None,
        _ => event.metadata.get("rid").cloned(),
    }
}

pub fn seen_event(event: &v1::Event) -> SeenEvent {
    SeenEvent {
        position: event.position,
        sequence: event.sequence_number,
        event_type: event.event_type.clone(),
        call_id: event.call_id.clone(),
        tag: tag_of(event),
        at_ms: event.at_ms,
        activity: event.activity.is_some(),
    }
}

/// One client's loop until `stop` (bounded by [`OPS_PER_CLIENT_MAX`]).
pub async fn run_client(shared: Arc<Shared>, who: u32) -> anyhow::Result<()> {
    let mut rng = Rng::fork(shared.seed, 1000 + u64::from(who));
    let client = write_client(&shared.reach)?;
    // Racers use their own clients, as separate agents would.
    let racers = [
        write_client(&shared.reach)?,
        write_client(&shared.reach)?,
        write_client(&shared.reach)?,
    ];
    // Acknowledged writes to send again, unchanged, once due (history time, µs).
    let mut delayed: VecDeque<(u64, Write)> = VecDeque::new();
    for _ in 0..OPS_PER_CLIENT_MAX {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let now_us = shared.history.now_us();
        if let Some(due) = delayed.iter().position(|(due_us, _)| *due_us <= now_us)
            && let Some((_, write)) = delayed.remove(due)
        {
            write_attempt(&shared, &client, who, write, true).await;
            continue;
        }
        let roll = rng.below(100);
        let call = shared.pick_call(&mut rng);
        let Some(call) = call.filter(|_| roll >= 12 && shared.open_calls() >= 2) else {
            let rid = shared.request_id(who);
            write_with_retries(
                &shared,
                &client,
                who,
                &mut rng,
                Write::new(OpKind::Create, "", &rid),
            )
            .await;
            continue;
        };
        let id = call.call_id.as_str();
        match roll {
            12..=21 => single(&shared, &client, who, &mut rng, OpKind::Start, id).await,
            22..=36 => single(&shared, &client, who, &mut rng, OpKind::Turn, id).await,
            37..=43 => single(&shared, &client, who, &mut rng, OpKind::Event, id).await,
            44..=47 => single(&shared, &client, who, &mut rng, OpKind::Context, id).await,
            48..=52 => single(&shared, &client, who, &mut rng, OpKind::Handoff, id).await,
            53..=56 => single(&shared, &client, who, &mut rng, OpKind::End, id).await,
            57..=63 => {
                // Several agents hand the same call off at once (after starting it).
                let start = Write::new(OpKind::Start, id, &shared.request_id(who));
                write_once(&shared, &client, who, start).await;
                let racing = 2 + rng.below(2) as usize;
                let writes: Vec<Write> = (0..racing)
                    .map(|_| Write::new(OpKind::Handoff, id, &shared.request_id(who)))
                    .collect();
                race(&shared, &racers, who, writes).await;
            }
            64..=69 => {
                // Several agents end the call while another appends a turn.
                let mut writes: Vec<Write> = (0..2)
                    .map(|_| Write::new(OpKind::End, id, &shared.request_id(who)))
                    .collect();
                writes.push(Write::new(OpKind::Turn, id, &shared.request_id(who)));
                race(&shared, &racers, who, writes).await;
            }
            70..=74 if delayed.len() < DELAYED_RETRIES_PENDING_MAX => {
                // A write acknowledged now is sent again seconds later with the same request
                // id, as an agent that lost the answer would: the retry must get the original
                // outcome (same index, same call) and write nothing, whatever the leaders'
                // clocks did in between.
                let kind = match rng.below(3) {
                    0 => OpKind::Create,
                    1 => OpKind::Turn,
                    _ => OpKind::Event,
                };
                let write = Write::new(kind, id, &shared.request_id(who));
                let op = write_once(&shared, &client, who, write.clone()).await;
                if op.is_ok() {
                    let delay_us = rng.range(DELAYED_RETRY_MS_MIN, DELAYED_RETRY_MS_MAX) * 1000;
                    delayed.push_back((shared.history.now_us() + delay_us, write));
                }
            }
            _ => {
                let Some(node) = rng.pick(&shared.nodes).cloned() else {
                    continue;
                };
                let level = match rng.below(3) {
                    0 => ReadLevel::Linearizable,
                    1 => ReadLevel::Local,
                    _ => ReadLevel::MinIndex(call.index),
                };
                let events = rng.chance(30);
                read_call(&shared, who, &node, id, level, events).await;
            }
        }
    }
    Ok(())
}

async fn single(shared: &Shared, client: &Client, who: u32, rng: &mut Rng, kind: OpKind, id: &str) {
    let rid = shared.request_id(who);
    write_with_retries(shared, client, who, rng, Write::new(kind, id, &rid)).await;
}

async fn race(shared: &Shared, racers: &[Client], who: u32, writes: Vec<Write>) {
    let sends = writes.into_iter().enumerate().map(|(i, write)| {
        let client = &racers[i % racers.len()];
        write_once(shared, client, who, write)
    });
    futures::future::join_all(sends).await;
}
