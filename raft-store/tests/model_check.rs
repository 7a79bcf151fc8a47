//! Property test: random command sequences through the RocksDB state machine, checked against a
//! naive model written independently of the domain core, with snapshot → install on a fresh
//! store → continue and close → reopen steps mixed in. Invariants are checked after every step,
//! and a second store fed the same log in different apply batches must end with the same digest.
//!
//! A failure prints the shrunk op sequence; proptest records its seed under
//! `proptest-regressions/` so the next run replays it first.

use std::collections::BTreeMap;

use domain::limits::IDEMPOTENCY_WINDOW_MS;
use domain::memory::Memory;
use domain::{
    CallId, CallState, Channel, Command, ERASED_PAYLOAD, Payload, Rejection, Request, Stamp,
    Urgency, event_id, event_type,
};
use openraft::storage::{IOFlushed, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::type_config::TypeConfigExt;
use proptest::prelude::*;
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
        let (expect, call_id) = self.transition(request, minted);
        let record = Remembered {
            command: request.command.clone(),
            at_ms: clock_ms,
            expect,
            call_id,
        };
        self.remembered.insert(key, record);
        (expect, false, call_id)
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
    }
}

fn actual(response: &Response) -> Expect {
    let outcome = response
        .outcome
        .as_ref()
        .expect("a request entry has an outcome");
    match &outcome.result {
        Ok(receipt) => Expect::Applied(receipt.state),
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
    // The event log: positions gap-free from 1, ids derived from positions, calls exist.
    let mut position = 1;
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
            assert_eq!(event.position, position, "event positions are gap-free");
            assert_eq!(event.event_id, event_id(position));
            assert!(
                !ended.get(&event.call_id).copied().unwrap_or(false)
                    || event.event_type == event_type::CALL_ERASED,
                "no event after call.ended but call.erased"
            );
            // The store and the domain's memory model interpret every step alike, erasure
            // included.
            assert_eq!(
                Some(event),
                memory.log.get((position - 1) as usize),
                "event {position} as the memory model holds it"
            );
            let erased = model.calls.get(&event.call_id).is_some_and(|c| c.erased);
            if erased && event.event_type != event_type::CALL_ERASED {
                assert_eq!(
                    event.payload,
                    Payload::Json(ERASED_PAYLOAD.into()),
                    "an erased call's events are tombstones"
                );
            }
            let seq = per_call.entry(event.call_id).or_insert(0);
            *seq += 1;
            assert_eq!(
                event.sequence_number, *seq,
                "per-call sequence numbers are gap-free"
            );
            if event.event_type == event_type::CALL_HANDED_OFF {
                *handoffs.entry(event.call_id).or_insert(0) += 1;
            }
            if event.event_type == event_type::CALL_ENDED {
                ended.insert(event.call_id, true);
            }
            reader
                .get_call(&event.tenant_id, &event.call_id)
                .expect("no event without its call");
            position += 1;
        }
        match page.next {
            Some(next) => from = next,
            None => break,
        }
    }
    assert_eq!(position - 1, model.events, "event count matches the model");
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

    for op in ops {
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
                if let (Some(expected_call), Some(Ok(receipt))) =
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
