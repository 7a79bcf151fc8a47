//! Property test: random command sequences through the RocksDB state machine, checked against a
//! naive model written independently of the domain core, with snapshot → install on a fresh
//! store → continue and close → reopen steps mixed in. Invariants are checked after every step,
//! and a second store fed the same log in different apply batches must end with the same digest.
//!
//! A failure prints the shrunk op sequence; proptest records its seed under
//! `proptest-regressions/` so the next run replays it first.

use std::collections::{BTreeMap, BTreeSet};

use domain::limits::IDEMPOTENCY_WINDOW_MS;
use domain::memory::Memory;
use domain::{
    Activity, ActivityInput, ActivityStatus, ActivityType, CallId, CallState, Channel, Command,
    ERASED_PAYLOAD, Event, EventFilter, Payload, Receipt, Rejection, Request, Retention, Severity,
    Stamp, Urgency, event_id, event_type,
};
use openraft::storage::{IOFlushed, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::type_config::TypeConfigExt;
use proptest::prelude::*;
use raft_store::EventQuery;
use raft_store::{Entry, LogStore, Response, StateMachine, TypeConfig};
use tempfile::TempDir;

mod support;

const TENANTS: [&str; 2] = ["acme", "globex"];

#[derive(Debug, Clone)]
enum CallRef {
    Known(usize),
    Unknown,
}

#[derive(Debug, Clone)]
enum Cmd {
    Create,
    Start(CallRef),
    Turn(CallRef, u8),
    Event(CallRef),
    Context(CallRef, u8),
    Handoff(CallRef),
    End(CallRef),
    Erase(CallRef),
    /// `n` activity records (1..=3), of severity and project chosen by `seed`, about a call
    /// or not.
    Activity(u8, u8, Option<CallRef>),
    /// A retention: at most this many records, or (0) one minute of age.
    Retention(u8),
    Compact,
}

#[derive(Debug, Clone)]
enum Op {
    Send { tenant: usize, rid: u8, cmd: Cmd },
    Tick { ms: u64 },
    Snapshot,
    Reopen,
}

fn call_ref() -> impl Strategy<Value = CallRef> {
    prop_oneof![9 => (0usize..6).prop_map(CallRef::Known), 1 => Just(CallRef::Unknown)]
}

fn cmd() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        3 => Just(Cmd::Create),
        3 => call_ref().prop_map(Cmd::Start),
        4 => (call_ref(), 0u8..4).prop_map(|(c, t)| Cmd::Turn(c, t)),
        2 => call_ref().prop_map(Cmd::Event),
        2 => (call_ref(), 0u8..6).prop_map(|(c, e)| Cmd::Context(c, e)),
        3 => call_ref().prop_map(Cmd::Handoff),
        2 => call_ref().prop_map(Cmd::End),
        1 => call_ref().prop_map(Cmd::Erase),
        4 => (1u8..4, any::<u8>(), proptest::option::of(call_ref()))
            .prop_map(|(n, seed, call)| Cmd::Activity(n, seed, call)),
        1 => (0u8..6).prop_map(Cmd::Retention),
        1 => Just(Cmd::Compact),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        40 => (0usize..2, 0u8..48, cmd()).prop_map(|(tenant, rid, cmd)| Op::Send { tenant, rid, cmd }),
        3 => prop_oneof![9 => 1u64..5_000, 1 => Just(IDEMPOTENCY_WINDOW_MS + 1)].prop_map(|ms| Op::Tick { ms }),
        1 => Just(Op::Snapshot),
        1 => Just(Op::Reopen),
    ]
}

// ---------------------------------------------------------------------------------------------
// The naive model: a direct reading of DESIGN §2, sharing no code with the domain core.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Applied(CallState),
    /// An activity command: records appended, records removed.
    Recorded(u64, u64),
    UnknownCall,
    IllegalTransition,
    AlreadyHandedOff,
    CallEnded,
    CallErased,
    RequestIdReused,
}

#[derive(Debug, Clone)]
struct ModelCall {
    tenant: String,
    state: CallState,
    turns: u64,
    events: u64,
    handoffs: u64,
    erased: bool,
}

/// The model's idempotency record: the command, when, what it answered, which call.
#[derive(Debug, Clone)]
struct Remembered {
    command: Command,
    at_ms: u64,
    expect: Expect,
    call_id: Option<CallId>,
}

#[derive(Debug, Default)]
struct Model {
    calls: BTreeMap<CallId, ModelCall>,
    created: Vec<(String, CallId)>,
    remembered: BTreeMap<(String, String), Remembered>,
    events: u64,
    /// Activity records held, oldest first: (tenant, position, at_ms).
    activity: Vec<(String, u64, u64)>,
    /// Positions retention removed.
    compacted: BTreeSet<u64>,
    /// Per tenant: (most records, most age ms).
    retention: BTreeMap<String, (Option<u64>, Option<u64>)>,
}

impl Model {
    fn resolve(&self, tenant: &str, call: &CallRef) -> CallId {
        match call {
            CallRef::Known(i) if !self.created.is_empty() => {
                let (_, id) = &self.created[i % self.created.len()];
                *id
            }
            _ => CallId::from_u128(0xdead_0000 + tenant.len() as u128),
        }
    }

    /// Expected outcome and, for a replay, the call id the original request produced.
    fn step(
        &mut self,
        request: &Request,
        clock_ms: u64,
        minted: CallId,
    ) -> (Expect, bool, Option<CallId>) {
        let key = (request.tenant_id.clone(), request.request_id.clone());
        if let Some(record) = self.remembered.get(&key)
            && clock_ms <= record.at_ms + IDEMPOTENCY_WINDOW_MS
        {
            if record.command == request.command {
                return (record.expect, true, record.call_id);
            }
            return (Expect::RequestIdReused, false, None);
        }
        let (expect, call_id) = if request.command.is_activity() {
            (self.activity_step(request, clock_ms), None)
        } else {
            self.transition(request, minted)
        };
        let record = Remembered {
            command: request.command.clone(),
            at_ms: clock_ms,
            expect,
            call_id,
        };
        self.remembered.insert(key, record);
        (expect, false, call_id)
    }

    /// Activity as DESIGN §7 and the issue state it: records are appended at the next
    /// positions (a referenced call must be the tenant's); then, under the tenant's retention,
    /// its oldest records go while there are more than the bound or they are older than the age
    /// bound (measured on the state machine's clock).
    fn activity_step(&mut self, request: &Request, clock_ms: u64) -> Expect {
        let tenant = request.tenant_id.clone();
        let mut appended = 0;
        match &request.command {
            Command::RecordActivity { entries } => {
                for entry in entries {
                    if let Some(call) = entry.call_id
                        && self.calls.get(&call).is_none_or(|c| c.tenant != tenant)
                    {
                        return Expect::UnknownCall;
                    }
                }
                for _ in entries {
                    self.events += 1;
                    self.activity.push((tenant.clone(), self.events, clock_ms));
                    appended += 1;
                }
            }
            Command::SetRetention { retention } => {
                self.retention
                    .insert(tenant.clone(), (retention.records, retention.age_ms));
            }
            Command::CompactActivity => {}
            other => unreachable!("{other:?}"),
        }
        let (max, age) = self.retention.get(&tenant).copied().unwrap_or((None, None));
        let mut removed = 0;
        // Records appended by this entry are counted but not removed by it (a tenant may hold
        // one batch more than its bound until its next entry).
        let first_new = self.events + 1 - appended;
        loop {
            let held = self.activity.iter().filter(|a| a.0 == tenant).count() as u64;
            let Some(i) = self
                .activity
                .iter()
                .position(|a| a.0 == tenant && a.1 < first_new)
            else {
                break;
            };
            let (_, position, at_ms) = self.activity[i];
            let too_many = max.is_some_and(|m| held > m);
            let too_old = age.is_some_and(|a| at_ms < clock_ms.saturating_sub(a));
            if !(too_many || too_old)
                || removed == domain::limits::ACTIVITY_COMPACT_PER_ENTRY_MAX as u64
            {
                break;
            }
            self.activity.remove(i);
            self.compacted.insert(position);
            removed += 1;
        }
        Expect::Recorded(appended, removed)
    }

    fn transition(&mut self, request: &Request, minted: CallId) -> (Expect, Option<CallId>) {
        use CallState::*;
        if let Command::CreateCall { .. } = request.command {
            self.calls.insert(
                minted,
                ModelCall {
                    tenant: request.tenant_id.clone(),
                    state: Created,
                    turns: 0,
                    events: 1,
                    handoffs: 0,
                    erased: false,
                },
            );
            self.created.push((request.tenant_id.clone(), minted));
            self.events += 1;
            return (Expect::Applied(Created), Some(minted));
        }
        let call_id = request.command.call_id().expect("addressed command");
        let Some(call) = self
            .calls
            .get_mut(&call_id)
            .filter(|c| c.tenant == request.tenant_id)
        else {
            return (Expect::UnknownCall, None);
        };
        // Erasure is allowed in every state, once; an erased call takes nothing else.
        match (&request.command, call.erased) {
            (Command::EraseCall { .. }, true) => {
                return (Expect::Applied(call.state), Some(call_id));
            }
            (_, true) => return (Expect::CallErased, None),
            (Command::EraseCall { .. }, false) => {
                call.erased = true;
                call.events += 1;
                self.events += 1;
                return (Expect::Applied(call.state), Some(call_id));
            }
            (_, false) => {}
        }
        let next = match (&request.command, call.state) {
            (_, Ended) => return (Expect::CallEnded, None),
            (Command::StartCall { .. }, Created) => Active,
            (Command::AppendTurn { .. }, Active | HandedOff) => {
                call.turns += 1;
                call.state
            }
            (Command::LogEvent { .. }, Active | HandedOff) => call.state,
            (Command::UpdateContext { .. }, _) => call.state,
            (Command::RequestHandoff { .. }, Active) => {
                call.handoffs += 1;
                HandedOff
            }
            (Command::RequestHandoff { .. }, HandedOff) => return (Expect::AlreadyHandedOff, None),
            (Command::EndCall { .. }, _) => Ended,
            _ => return (Expect::IllegalTransition, None),
        };
        call.state = next;
        call.events += 1;
        self.events += 1;
        (Expect::Applied(next), Some(call_id))
    }
}

fn command_of(model: &Model, tenant: &str, cmd: &Cmd) -> Command {
    let id = |c: &CallRef| model.resolve(tenant, c);
    match cmd {
        Cmd::Create => Command::CreateCall {
            source: "pstn:+15550100".into(),
            channel: Channel::Voice,
            metadata: BTreeMap::new(),
            trace_id: None,
        },
        Cmd::Start(c) => Command::StartCall { call_id: id(c) },
        Cmd::Turn(c, t) => Command::AppendTurn {
            call_id: id(c),
            speaker: if t % 2 == 0 { "caller" } else { "agent" }.into(),
            text: format!("utterance {t}"),
            confidence: 0.5,
            language: "en-US".into(),
            spoken_at_ms: u64::from(*t),
        },
        Cmd::Event(c) => Command::LogEvent {
            call_id: id(c),
            event_type: "intent.detected".into(),
            payload: Payload::Json(r#"{"intent":"billing"}"#.into()),
            metadata: BTreeMap::new(),
        },
        Cmd::Context(c, e) => Command::UpdateContext {
            call_id: id(c),
            summary: Some(format!("summary {e}")),
            entities: BTreeMap::from([(format!("k{e}"), format!("v{e}"))]),
        },
        Cmd::Handoff(c) => Command::RequestHandoff {
            call_id: id(c),
            reason: "caller asked for a human".into(),
            urgency: Urgency::High,
            target: None,
        },
        Cmd::End(c) => Command::EndCall {
            call_id: id(c),
            reason: "hangup".into(),
            resolution: "resolved".into(),
        },
        Cmd::Erase(c) => Command::EraseCall {
            call_id: id(c),
            reason: "data subject request".into(),
            actor: "ops".into(),
        },
        Cmd::Activity(n, seed, call) => Command::RecordActivity {
            entries: (0..*n)
                .map(|k| {
                    let seed = seed.wrapping_add(k);
                    ActivityInput {
                        activity_type: ActivityType::ALL[usize::from(seed) % 6],
                        activity: Activity {
                            agent_type: format!("agent-{}", seed % 3),
                            agent_name: "Agent".into(),
                            project_id: ["", "p0", "p1"][usize::from(seed / 3) % 3].into(),
                            task_id: format!("t{}", seed % 4),
                            task_description: String::new(),
                            severity: Severity::ALL[usize::from(seed / 7) % 5],
                            status: ActivityStatus::InProgress,
                            message: String::new(),
                        },
                        call_id: call.as_ref().map(id),
                        payload: String::new(),
                        metadata: BTreeMap::from([("lane".to_owned(), format!("{}", seed % 2))]),
                    }
                })
                .collect(),
        },
        Cmd::Retention(0) => Command::SetRetention {
            retention: Retention {
                age_ms: Some(domain::limits::RETENTION_AGE_MS_MIN),
                records: None,
            },
        },
        Cmd::Retention(n) => Command::SetRetention {
            retention: Retention {
                age_ms: None,
                records: Some(u64::from(*n)),
            },
        },
        Cmd::Compact => Command::CompactActivity,
    }
}

fn actual(response: &Response) -> Expect {
    let outcome = response
        .outcome
        .as_ref()
        .expect("a request entry has an outcome");
    match &outcome.result {
        Ok(Receipt::Call(receipt)) => Expect::Applied(receipt.state),
        Ok(Receipt::Activity(receipt)) => Expect::Recorded(
            match receipt.first_position {
                0 => 0,
                first => receipt.last_position - first + 1,
            },
            receipt.compacted,
        ),
        Err(Rejection::UnknownCall { .. }) => Expect::UnknownCall,
        Err(Rejection::IllegalTransition { .. }) => Expect::IllegalTransition,
        Err(Rejection::AlreadyHandedOff { .. }) => Expect::AlreadyHandedOff,
        Err(Rejection::CallEnded { .. }) => Expect::CallEnded,
        Err(Rejection::CallErased { .. }) => Expect::CallErased,
        Err(Rejection::RequestIdReused { .. }) => Expect::RequestIdReused,
        Err(other) => panic!("unexpected rejection {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Invariants, read back from the store.

fn check_invariants(sm: &StateMachine, model: &Model, memory: &Memory) {
    let reader = sm.reader();
    // The event log: positions increasing from 1 with no gap but what retention removed, ids
    // derived from positions, call events' calls exist.
    let mut position = 1;
    let mut seen = 0;
    let mut from = 0;
    let mut per_call: BTreeMap<CallId, u64> = BTreeMap::new();
    let mut handoffs: BTreeMap<CallId, u64> = BTreeMap::new();
    let mut ended: BTreeMap<CallId, bool> = BTreeMap::new();
    loop {
        let page = reader
            .list_events(None, from, 7)
            .expect("list events")
            .value;
        for event in &page.items {
            while model.compacted.contains(&position) {
                position += 1;
            }
            assert_eq!(
                event.position, position,
                "positions are gap-free but for compacted activity"
            );
            assert_eq!(event.event_id, event_id(position));
            // The store and the domain's memory model interpret every step alike, erasure
            // and compaction included.
            assert_eq!(
                Some(event),
                memory_event(memory, position),
                "event {position} as the memory model holds it"
            );
            position += 1;
            seen += 1;
            if event.activity.is_some() {
                let held = model.activity.iter().any(|a| a.1 == event.position);
                assert!(held, "activity {} is held by the model", event.position);
                if let Some(call_id) = event.call_id {
                    reader
                        .get_call(&event.tenant_id, &call_id)
                        .expect("activity names a call of its tenant");
                }
                continue;
            }
            let call_id = event.call_id.expect("a call event has its call");
            assert!(
                !ended.get(&call_id).copied().unwrap_or(false)
                    || event.event_type == event_type::CALL_ERASED,
                "no event after call.ended but call.erased"
            );
            let erased = model.calls.get(&call_id).is_some_and(|c| c.erased);
            if erased && event.event_type != event_type::CALL_ERASED {
                assert_eq!(
                    event.payload,
                    Payload::Json(ERASED_PAYLOAD.into()),
                    "an erased call's events are tombstones"
                );
            }
            let seq = per_call.entry(call_id).or_insert(0);
            *seq += 1;
            assert_eq!(
                event.sequence_number, *seq,
                "per-call sequence numbers are gap-free"
            );
            if event.event_type == event_type::CALL_HANDED_OFF {
                *handoffs.entry(call_id).or_insert(0) += 1;
            }
            if event.event_type == event_type::CALL_ENDED {
                ended.insert(call_id, true);
            }
            reader
                .get_call(&event.tenant_id, &call_id)
                .expect("no event without its call");
        }
        match page.next {
            Some(next) => from = next,
            None => break,
        }
    }
    assert_eq!(
        seen,
        model.events - model.compacted.len() as u64,
        "event count matches the model"
    );
    assert!(
        handoffs.values().all(|n| *n <= 1),
        "handoff at most once per call"
    );

    let counts = reader.call_counts().expect("call counts").value;
    for (state, count) in counts {
        let expected = model.calls.values().filter(|c| c.state == state).count() as u64;
        assert_eq!(count, expected, "calls counted in state {state}");
    }

    for (call_id, expected) in &model.calls {
        let call = reader
            .get_call(&expected.tenant, call_id)
            .expect("modelled call exists")
            .value;
        assert_eq!(call.state(), expected.state, "state of {call_id}");
        assert_eq!(call.turn_count, expected.turns, "turns of {call_id}");
        assert_eq!(
            call.last_sequence_number, expected.events,
            "events of {call_id}"
        );
        assert_eq!(call.lifecycle.handoff().is_some(), expected.handoffs == 1);
        assert_eq!(
            call.erased.is_some(),
            expected.erased,
            "erased mark of {call_id}"
        );
        assert_eq!(
            Some(&call),
            memory.calls.get(call_id),
            "call as memory holds it"
        );
        let turns = reader
            .list_turns(&expected.tenant, call_id, 0, 1000)
            .expect("list turns")
            .value;
        assert_eq!(turns.items.len() as u64, expected.turns);
        for turn in &turns.items {
            assert_eq!(Some(turn), memory.turns.get(&(*call_id, turn.index)));
            if expected.erased {
                assert_eq!(turn.text, "", "an erased call's turns are tombstones");
            }
        }
        if expected.erased {
            assert_eq!(call.summary, "");
            assert!(call.entities.is_empty());
        }
        // Listing by tenant and state finds the call exactly under its current state.
        let listed = reader
            .list_calls(&expected.tenant, Some(expected.state), None, 1000)
            .expect("list calls")
            .value;
        assert!(listed.items.iter().any(|c| c.call_id == *call_id));
    }
}

fn memory_event(memory: &Memory, position: u64) -> Option<&Event> {
    memory
        .log
        .binary_search_by_key(&position, |e| e.position)
        .ok()
        .map(|i| &memory.log[i])
}

/// The derived tables agree with the events, and queries and statistics read from them give
/// what filtering the memory model's log gives.
fn check_queries(sm: &StateMachine, memory: &Memory) {
    let differences = sm.verify_indexes(8).expect("verify indexes");
    assert!(
        differences.is_empty(),
        "derived tables differ from the events: {differences:#?}"
    );
    let reader = sm.reader();
    for tenant in TENANTS {
        let base = EventFilter {
            tenant_id: Some(tenant.to_owned()),
            ..EventFilter::default()
        };
        let queries = [
            EventQuery {
                filter: base.clone(),
                ..EventQuery::default()
            },
            EventQuery {
                filter: EventFilter {
                    min_severity: Some(Severity::Warning),
                    ..base.clone()
                },
                newest_first: true,
                ..EventQuery::default()
            },
            EventQuery {
                filter: EventFilter {
                    project_id: Some("p0".into()),
                    metadata: BTreeMap::from([("lane".to_owned(), "1".to_owned())]),
                    ..base.clone()
                },
                ..EventQuery::default()
            },
            EventQuery {
                filter: EventFilter {
                    agent_type: Some("agent-1".into()),
                    task_id: Some("t1".into()),
                    ..base.clone()
                },
                newest_first: true,
                ..EventQuery::default()
            },
            EventQuery {
                filter: base.clone(),
                types: vec!["agent.error".into(), event_type::CALL_CREATED.into()],
                ..EventQuery::default()
            },
            // Joins of several indexes: an agent type and a minimum severity; exact types, a
            // minimum severity and a task, newest first.
            EventQuery {
                filter: EventFilter {
                    agent_type: Some("agent-2".into()),
                    min_severity: Some(Severity::Warning),
                    ..base.clone()
                },
                ..EventQuery::default()
            },
            EventQuery {
                filter: EventFilter {
                    task_id: Some("t2".into()),
                    min_severity: Some(Severity::Info),
                    ..base.clone()
                },
                types: vec!["agent.progress".into(), "agent.error".into()],
                newest_first: true,
                ..EventQuery::default()
            },
            // Totals from a project's own counters.
            EventQuery {
                filter: EventFilter {
                    project_id: Some("p1".into()),
                    min_severity: Some(Severity::Info),
                    ..base.clone()
                },
                ..EventQuery::default()
            },
            EventQuery {
                filter: EventFilter {
                    project_id: Some("p0".into()),
                    ..base.clone()
                },
                types: vec!["agent.error".into(), "agent.paused".into()],
                newest_first: true,
                ..EventQuery::default()
            },
        ];
        for mut query in queries {
            let mut expected: Vec<&Event> = memory
                .log
                .iter()
                .filter(|e| {
                    query.filter.matches(e)
                        && (query.types.is_empty() || query.types.contains(&e.event_type))
                })
                .collect();
            if query.newest_first {
                expected.reverse();
            }
            query.limit = 3;
            query.with_total = true;
            let mut found = Vec::new();
            let mut first = true;
            loop {
                let page = reader.query_events(&query).expect("query").value;
                if first {
                    let total = page.total.expect("asked for the total");
                    assert!(total.exact, "few events: the count is exact");
                    assert_eq!(total.count, expected.len() as u64, "total of {query:?}");
                    first = false;
                }
                found.extend(page.items);
                match page.next {
                    Some(next) => query.after = Some(next),
                    None => break,
                }
            }
            let found: Vec<u64> = found.iter().map(|e| e.position).collect();
            let expected: Vec<u64> = expected.iter().map(|e| e.position).collect();
            assert_eq!(found, expected, "pages of {query:?}");
        }
        let stats = reader
            .event_stats(tenant, None, None, None, 0)
            .expect("stats")
            .value;
        let held: Vec<&Event> = memory
            .log
            .iter()
            .filter(|e| e.tenant_id == tenant)
            .collect();
        assert_eq!(stats.total, held.len() as u64);
        let activity: Vec<&&Event> = held.iter().filter(|e| e.activity.is_some()).collect();
        assert_eq!(stats.activity, activity.len() as u64);
        for (severity, n) in &stats.by_severity {
            let expected = activity
                .iter()
                .filter(|e| e.activity.as_ref().is_some_and(|a| a.severity == *severity))
                .count() as u64;
            assert_eq!(*n, expected, "activity of severity {severity:?}");
        }
        let bucketed: u64 = stats.buckets.iter().map(|(_, n)| n).sum();
        assert_eq!(bucketed, stats.total, "every event is in one hour bucket");
    }
}

// ---------------------------------------------------------------------------------------------
// Driving the store.

struct Node {
    dir: TempDir,
    sm: StateMachine,
    log: LogStore,
    /// Entries applied but not yet appended to the log: appended in one batch before a reopen
    /// (one sync instead of one per entry), so that the reopened store holds what it applied.
    unlogged: Vec<Entry>,
}

impl Node {
    fn fresh() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = support::open(dir.path());
        Self {
            dir,
            sm: store.state_machine,
            log: store.log,
            unlogged: Vec::new(),
        }
    }

    fn apply(&mut self, entry: Entry) -> Vec<Response> {
        self.unlogged.push(entry.clone());
        self.sm.apply_batch(vec![entry]).expect("apply")
    }

    /// Appends the applied entries to the log and waits until they are durable: a store never
    /// holds applied entries its log lost, and reopening checks that.
    async fn log_applied(&mut self) {
        let entries = std::mem::take(&mut self.unlogged);
        if entries.is_empty() {
            return;
        }
        let (tx, rx) = TypeConfig::oneshot();
        self.log
            .append(entries, IOFlushed::signal(tx))
            .await
            .expect("append");
        rx.await.expect("ack").expect("durable");
    }
}

fn digest(sm: &StateMachine) -> [u8; 32] {
    sm.reader().digest().expect("digest").value
}

async fn run(ops: Vec<Op>, splits: Vec<usize>) {
    let mut node = Node::fresh();
    let mut model = Model::default();
    let mut memory = Memory::new();
    // The log starts at index 0, as openraft's does (its initial membership entry).
    let mut log: Vec<Entry> = vec![support::blank(1, 0)];
    node.apply(support::blank(1, 0));
    let mut clock_ms = 1_000u64;

    let steps = ops.len();
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Send { tenant, rid, cmd } => {
                let tenant = TENANTS[tenant];
                let index = log.len() as u64;
                let minted = CallId::from_u128(u128::from(index));
                let command = command_of(&model, tenant, &cmd);
                let stamp = Stamp {
                    at_ms: clock_ms,
                    minted_call_id: matches!(cmd, Cmd::Create).then_some(minted),
                    minted_trace_id: None,
                };
                let request = support::request(tenant, &format!("rid-{rid}"), command, stamp);
                let (expected, replay, expected_call) = model.step(&request, clock_ms, minted);
                let step =
                    domain::decide(&memory, &request, index).expect("memory holds its turns");
                memory.write(&request, &step);
                let entry = support::normal(1, index, request);
                log.push(entry.clone());
                let responses = node.apply(entry);
                let response = &responses[0];
                assert_eq!(actual(response), expected, "outcome of entry {index}");
                assert_eq!(response.replayed, replay, "replay flag of entry {index}");
                if let (Some(expected_call), Some(Ok(Receipt::Call(receipt)))) =
                    (expected_call, response.outcome.as_ref().map(|o| &o.result))
                {
                    assert_eq!(receipt.call_id, expected_call);
                }
            }
            Op::Tick { ms } => clock_ms += ms,
            Op::Snapshot => {
                let mut builder = node.sm.get_snapshot_builder().await;
                let snapshot = builder.build_snapshot().await.expect("build snapshot");
                let before = digest(&node.sm);
                let mut fresh = Node::fresh();
                fresh
                    .sm
                    .install_snapshot(&snapshot.meta, snapshot.snapshot)
                    .await
                    .expect("install snapshot");
                assert_eq!(
                    digest(&fresh.sm),
                    before,
                    "installed snapshot equals the source"
                );
                assert_eq!(fresh.sm.applied().log_id, node.sm.applied().log_id);
                node = fresh;
            }
            Op::Reopen => {
                let before = digest(&node.sm);
                let applied = node.sm.applied().clone();
                node.log_applied().await;
                let Node { dir, sm, log, .. } = node;
                drop((sm, log));
                let store = support::open(dir.path());
                let (sm, log) = (store.state_machine, store.log);
                assert_eq!(
                    sm.applied(),
                    &applied,
                    "reopen restores last_applied and membership"
                );
                assert_eq!(digest(&sm), before, "reopen restores the state");
                node = Node {
                    dir,
                    sm,
                    log,
                    unlogged: Vec::new(),
                };
            }
        }
        check_invariants(&node.sm, &model, &memory);
        // Queries read every index and page through every filter: every fourth step and the
        // last are enough to meet each state, at a quarter of the cost.
        if step % 4 == 3 || step + 1 == steps {
            check_queries(&node.sm, &memory);
        }
    }

    // The same log applied in other batch boundaries reaches byte-identical state.
    let other = Node::fresh();
    let mut other_sm = other.sm;
    let mut rest = log.as_slice();
    let mut splits = splits.into_iter().cycle();
    while !rest.is_empty() {
        let n = splits.next().unwrap_or(1).clamp(1, rest.len());
        other_sm
            .apply_batch(rest[..n].to_vec())
            .expect("apply batch");
        rest = &rest[n..];
    }
    assert_eq!(
        digest(&other_sm),
        digest(&node.sm),
        "replicas agree whatever the batching"
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        // 256 by default (CI runs the default); PROPTEST_CASES=<n> runs more or fewer.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_matches_the_naive_model(
        ops in proptest::collection::vec(op(), 1..80),
        splits in proptest::collection::vec(1usize..12, 1..6),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(run(ops, splits));
    }
}
