//! Domain scenarios (DESIGN §2): commands in, states and events out, through the pure core only.
//!
//! No RocksDB here. The [`Scenario`] harness drives the same entry point as the store:
//! [`decide`] reads what a request needs from a [`Memory`] state and returns a [`Step`], which
//! `Memory::write` interprets the way the store interprets it in RocksDB. Every request is one
//! log entry, so the harness counts log indexes, and it plays the leader too: it stamps each
//! request with its wall clock and mints call and trace ids for `CreateCall`.

use std::collections::BTreeMap;
use std::ops::Deref;

use domain::limits::{
    CALL_EVENTS_MAX, CALL_TURNS_MAX, ENTITIES_MAX, Field, HANDOFF_TURNS_MAX, IDEMPOTENCY_WINDOW_MS,
    Invalid, METADATA_ENTRIES_MAX, Problem, TENANT_ID_BYTES_MAX, TURN_TEXT_BYTES_MAX,
};
use domain::memory::Memory;
use domain::redact::{REDACTIONS_METADATA_KEY, Redactor};
use domain::{
    Call, CallId, CallLimit, CallReceipt, CallState, Change, Channel, Command, CommandKind,
    Decision, Event, Handoff, Head, Labels, Lifecycle, Outcome, Payload, Receipt, Rejection,
    Request, Stamp, Turn, Urgency, View, apply, decide, event_id, event_type,
};
use uuid::Uuid;

// ------------------------------------------------------------------------------------------------
// Harness
// ------------------------------------------------------------------------------------------------

const ACME: &str = "acme";
const GLOBEX: &str = "globex";
/// The leader's wall time when a scenario starts.
const T0_MS: u64 = 1_750_000_000_000;
/// Wall time that passes after each request unless a scenario sets the clock itself.
const TICK_MS: u64 = 10;
/// A call id nobody minted.
const GHOST: CallId = Uuid::from_u128(0xdead_beef);

/// The `n`-th call id the harness mints: UUIDv7-shaped and deterministic.
fn minted(n: u128) -> CallId {
    Uuid::from_u128(0x0197_0000_0000_7000_8000_0000_0000_0000 | n)
}

/// The `n`-th trace id the harness mints.
fn minted_trace(n: u128) -> Uuid {
    Uuid::from_u128(0x0197_0000_0000_7000_9000_0000_0000_0000 | n)
}

/// What the storage layer holds, without the idempotency records.
#[derive(Debug, Clone, PartialEq)]
struct Stored {
    next_position: u64,
    calls: BTreeMap<CallId, Call>,
    turns: BTreeMap<(CallId, u64), Turn>,
    log: Vec<Event>,
}

#[derive(Debug, Clone)]
struct Scenario {
    state: Memory,
    last_index: u64,
    /// The leader's wall clock; it may go back (a new leader's clock may be behind).
    clock_ms: u64,
    minted: u128,
    request_ids: u64,
}

/// Scenarios read the state directly: `s.head`, `s.calls`, `s.log`.
impl Deref for Scenario {
    type Target = Memory;

    fn deref(&self) -> &Memory {
        &self.state
    }
}

impl Scenario {
    fn new() -> Self {
        Self {
            state: Memory::new(),
            last_index: 0,
            clock_ms: T0_MS,
            minted: 0,
            request_ids: 0,
        }
    }

    fn set_clock(&mut self, ms: u64) {
        self.clock_ms = ms;
    }

    fn fresh_request_id(&mut self) -> String {
        self.request_ids += 1;
        format!("req-{}", self.request_ids)
    }

    /// What the leader adds before proposing: its wall time, and fresh ids for `CreateCall`.
    fn stamp(&mut self, command: &Command) -> Stamp {
        if matches!(command, Command::CreateCall { .. }) {
            self.minted += 1;
            Stamp {
                at_ms: self.clock_ms,
                minted_call_id: Some(minted(self.minted)),
                minted_trace_id: Some(minted_trace(self.minted)),
            }
        } else {
            Stamp {
                at_ms: self.clock_ms,
                minted_call_id: None,
                minted_trace_id: None,
            }
        }
    }

    /// Stamps and decides one request as the next log entry; the wall clock then moves on.
    fn send(&mut self, tenant: &str, request_id: &str, command: Command) -> Decision {
        let stamp = self.stamp(&command);
        let decision = self.send_stamped(tenant, request_id, command, stamp);
        self.clock_ms += TICK_MS;
        decision
    }

    /// Decides one request with the given stamp as the next log entry, and writes its step.
    fn send_stamped(
        &mut self,
        tenant: &str,
        request_id: &str,
        command: Command,
        stamp: Stamp,
    ) -> Decision {
        let request = Request {
            tenant_id: tenant.to_owned(),
            request_id: request_id.to_owned(),
            command,
            stamp,
            redactions: Default::default(),
        };
        self.send_request(request)
    }

    /// Plays the leader's redaction step: redacts `command` under `redactor`, then stamps and
    /// decides it with the summary as the next log entry.
    fn send_redacted(
        &mut self,
        tenant: &str,
        request_id: &str,
        command: Command,
        redactor: Redactor<'_>,
    ) -> Decision {
        let (command, redactions) = redactor.command(command).expect("a redactable command");
        let request = Request {
            tenant_id: tenant.to_owned(),
            request_id: request_id.to_owned(),
            stamp: self.stamp(&command),
            command,
            redactions,
        };
        let decision = self.send_request(request);
        self.clock_ms += TICK_MS;
        decision
    }

    /// Decides one request as the next log entry, and writes its step.
    fn send_request(&mut self, request: Request) -> Decision {
        self.last_index += 1;
        let step = decide(&self.state, &request, self.last_index)
            .expect("the scenario's state holds every turn it counts");
        self.state.write(&request, &step);
        step.decision
    }

    fn stored(&self) -> Stored {
        Stored {
            next_position: self.head.next_position,
            calls: self.calls.clone(),
            turns: self.turns.clone(),
            log: self.log.clone(),
        }
    }

    /// Sends `command` under a fresh request id and expects it applied.
    #[track_caller]
    fn ok(&mut self, tenant: &str, command: Command) -> Change {
        let request_id = self.fresh_request_id();
        match self.send(tenant, &request_id, command) {
            Decision::Applied { change, .. } => *change,
            other => panic!("expected the command to be applied, got {other:?}"),
        }
    }

    /// Sends `command` under a fresh request id and expects a remembered rejection.
    #[track_caller]
    fn rejected(&mut self, tenant: &str, command: Command) -> Rejection {
        let request_id = self.fresh_request_id();
        rejection_of(self.send(tenant, &request_id, command))
    }

    /// Sends `command` and expects it rejected as invalid.
    #[track_caller]
    fn invalid(&mut self, tenant: &str, command: Command) -> Invalid {
        match self.rejected(tenant, command) {
            Rejection::Invalid(invalid) => invalid,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn create(&mut self, tenant: &str) -> CallId {
        self.ok(tenant, create_call()).call.call_id
    }

    fn active(&mut self, tenant: &str) -> CallId {
        let id = self.create(tenant);
        self.ok(tenant, start(id));
        id
    }

    fn handed_off(&mut self, tenant: &str) -> CallId {
        let id = self.active(tenant);
        self.ok(tenant, handoff(id));
        id
    }

    /// A call in `state`, reached along the lifecycle's arrows.
    fn call_in(&mut self, tenant: &str, state: CallState) -> CallId {
        match state {
            CallState::Created => self.create(tenant),
            CallState::Active => self.active(tenant),
            CallState::HandedOff => self.handed_off(tenant),
            CallState::Ended => {
                let id = self.active(tenant);
                self.ok(tenant, end(id));
                id
            }
        }
    }

    #[track_caller]
    fn call(&self, id: CallId) -> &Call {
        self.calls.get(&id).expect("the scenario created this call")
    }

    fn state(&self, id: CallId) -> CallState {
        self.call(id).state()
    }

    #[track_caller]
    fn handoff_of(&self, id: CallId) -> Handoff {
        self.call(id)
            .lifecycle
            .handoff()
            .cloned()
            .expect("the call was handed off")
    }

    /// The call's turns, oldest first.
    fn turns_of(&self, id: CallId) -> Vec<Turn> {
        self.turns
            .range((id, 0)..=(id, u64::MAX))
            .map(|(_, turn)| turn.clone())
            .collect()
    }

    fn events_of(&self, id: CallId) -> Vec<&Event> {
        self.log
            .iter()
            .filter(|event| event.call_id == Some(id))
            .collect()
    }

    fn event_types_of(&self, id: CallId) -> Vec<&str> {
        self.events_of(id)
            .into_iter()
            .map(|event| event.event_type.as_str())
            .collect()
    }
}

#[track_caller]
fn rejection_of(decision: Decision) -> Rejection {
    match decision {
        Decision::Rejected {
            outcome:
                Outcome {
                    result: Err(rejection),
                    ..
                },
            ..
        } => rejection,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[track_caller]
fn outcome_of_applied(decision: Decision) -> Outcome {
    match decision {
        Decision::Applied { outcome, .. } => outcome,
        other => panic!("expected the command to be applied, got {other:?}"),
    }
}

#[track_caller]
fn payload_json(event: &Event) -> serde_json::Value {
    match &event.payload {
        Payload::Json(text) => serde_json::from_str(text).expect("system events carry JSON"),
        Payload::Bytes(_) => panic!("expected a JSON payload on {}", event.event_type),
    }
}

/// Checks one event's envelope against the call it belongs to.
#[track_caller]
fn assert_event(
    event: &Event,
    call: &Call,
    event_type: &str,
    position: u64,
    sequence_number: u64,
    at_ms: u64,
) {
    assert_eq!(event.event_type, event_type);
    assert_eq!(event.position, position, "position of {event_type}");
    assert_eq!(event.event_id, event_id(position));
    assert_eq!(
        event.sequence_number, sequence_number,
        "sequence number of {event_type}"
    );
    assert_eq!(event.call_id, Some(call.call_id));
    assert_eq!(event.tenant_id, call.tenant_id);
    assert_eq!(event.trace_id, call.trace_id);
    assert_eq!(event.at_ms, at_ms, "at_ms of {event_type}");
}

fn labels(entries: &[(&str, &str)]) -> Labels {
    entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn create_call() -> Command {
    Command::CreateCall {
        source: "+15550100".into(),
        channel: Channel::Voice,
        metadata: labels(&[("campaign", "spring")]),
        trace_id: Some("trace-1".into()),
    }
}

fn start(call_id: CallId) -> Command {
    Command::StartCall { call_id }
}

fn turn(call_id: CallId, text: &str) -> Command {
    Command::AppendTurn {
        call_id,
        speaker: "caller".into(),
        text: text.into(),
        confidence: 0.5,
        language: "en-US".into(),
        spoken_at_ms: 1_000,
    }
}

fn semantic(call_id: CallId, event_type: &str) -> Command {
    Command::LogEvent {
        call_id,
        event_type: event_type.into(),
        payload: Payload::Json(r#"{"intent":"billing"}"#.into()),
        metadata: labels(&[("model", "nlu-3")]),
    }
}

fn context(call_id: CallId, summary: Option<&str>, entities: &[(&str, &str)]) -> Command {
    Command::UpdateContext {
        call_id,
        summary: summary.map(str::to_owned),
        entities: labels(entities),
    }
}

fn handoff(call_id: CallId) -> Command {
    Command::RequestHandoff {
        call_id,
        reason: "caller asked for a human".into(),
        urgency: Urgency::High,
        target: Some("billing-queue".into()),
    }
}

fn end(call_id: CallId) -> Command {
    Command::EndCall {
        call_id,
        reason: "caller hung up".into(),
        resolution: "resolved".into(),
    }
}

/// One command of every kind that addresses an existing call.
fn every_call_command(call_id: CallId) -> Vec<Command> {
    vec![
        start(call_id),
        turn(call_id, "hello?"),
        semantic(call_id, "intent.detected"),
        context(call_id, Some("late"), &[("k", "v")]),
        handoff(call_id),
        end(call_id),
    ]
}

// ------------------------------------------------------------------------------------------------
// Legal transitions
// ------------------------------------------------------------------------------------------------

mod lifecycle {
    use super::*;

    #[test]
    fn create_call_records_a_created_call_with_its_room_and_a_call_created_event() {
        let mut s = Scenario::new();
        let decision = s.send(ACME, "create-1", create_call());
        let Decision::Applied {
            change, outcome, ..
        } = decision
        else {
            panic!("expected CreateCall to be applied, got {decision:?}");
        };
        let id = minted(1);
        assert_eq!(
            outcome,
            Outcome {
                index: 1,
                result: Ok(Receipt::Call(CallReceipt {
                    call_id: id,
                    state: CallState::Created,
                    turn_index: None,
                    first_position: 1,
                    last_position: 1,
                })),
            }
        );
        let call = s.call(id);
        assert_eq!(call.lifecycle, Lifecycle::Created);
        assert_eq!(call.room_name, "call_01970000-0000-7000-8000-000000000001");
        assert_eq!(call.tenant_id, ACME);
        assert_eq!(call.source, "+15550100");
        assert_eq!(call.channel, Channel::Voice);
        assert_eq!(call.metadata, labels(&[("campaign", "spring")]));
        assert_eq!(call.trace_id, "trace-1");
        assert_eq!(call.created_at_ms, T0_MS);
        assert_eq!(
            (
                call.turn_count,
                call.last_sequence_number,
                call.last_position
            ),
            (0, 1, 1)
        );
        assert_eq!(change.events.len(), 1);
        assert_event(
            &change.events[0],
            call,
            event_type::CALL_CREATED,
            1,
            1,
            T0_MS,
        );
        assert_eq!(
            payload_json(&change.events[0]),
            serde_json::json!({
                "source": "+15550100",
                "channel": "VOICE",
                "room_name": "call_01970000-0000-7000-8000-000000000001",
            })
        );
        assert_eq!(
            s.head,
            Head {
                next_position: 2,
                clock_ms: T0_MS
            }
        );
    }

    #[test]
    fn create_call_without_a_trace_id_gets_the_trace_id_the_leader_minted() {
        let mut s = Scenario::new();
        let change = s.ok(
            ACME,
            Command::CreateCall {
                source: "web".into(),
                channel: Channel::Chat,
                metadata: Labels::new(),
                trace_id: None,
            },
        );
        // W3C trace-id form: 32 lowercase hex digits, from the stamp.
        assert_eq!(change.call.trace_id, minted_trace(1).simple().to_string());
        assert_eq!(change.call.trace_id.len(), 32);
        assert!(
            change
                .events
                .iter()
                .all(|e| e.trace_id == change.call.trace_id)
        );
        assert_eq!(change.call.channel, Channel::Chat);
        assert_eq!(payload_json(&change.events[0])["channel"], "CHAT");
    }

    #[test]
    fn start_moves_a_created_call_to_active() {
        let mut s = Scenario::new();
        let id = s.create(ACME);
        let at = s.clock_ms;
        let change = s.ok(ACME, start(id));
        assert_eq!(
            change.call.lifecycle,
            Lifecycle::Active { started_at_ms: at }
        );
        assert_eq!(s.state(id), CallState::Active);
        assert_eq!(change.events.len(), 1);
        assert_event(
            &change.events[0],
            s.call(id),
            event_type::CALL_STARTED,
            2,
            2,
            at,
        );
    }

    #[test]
    fn handoff_moves_an_active_call_to_handed_off() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        let started_at = s.call(id).lifecycle.started_at_ms().expect("started");
        let at = s.clock_ms;
        let change = s.ok(ACME, handoff(id));
        assert_eq!(s.state(id), CallState::HandedOff);
        assert_eq!(change.events.len(), 1);
        assert_event(
            &change.events[0],
            s.call(id),
            event_type::CALL_HANDED_OFF,
            3,
            3,
            at,
        );
        assert_eq!(
            payload_json(&change.events[0]),
            serde_json::json!({
                "reason": "caller asked for a human",
                "urgency": "HIGH",
                "target": "billing-queue",
            })
        );
        let Lifecycle::HandedOff {
            started_at_ms,
            handoff,
        } = &s.call(id).lifecycle
        else {
            panic!("expected HandedOff, got {:?}", s.call(id).lifecycle);
        };
        assert_eq!(*started_at_ms, started_at);
        assert_eq!(handoff.reason, "caller asked for a human");
        assert_eq!(handoff.urgency, Urgency::High);
        assert_eq!(handoff.target.as_deref(), Some("billing-queue"));
        assert_eq!(handoff.at_ms, at);
        assert_eq!(handoff.position, 3);
    }

    #[test]
    fn end_moves_a_handed_off_call_to_ended_and_keeps_its_handoff() {
        let mut s = Scenario::new();
        let id = s.handed_off(ACME);
        let started_at = s.call(id).lifecycle.started_at_ms();
        let handoff = s.handoff_of(id);
        let at = s.clock_ms;
        let change = s.ok(ACME, end(id));
        assert_eq!(
            s.call(id).lifecycle,
            Lifecycle::Ended {
                started_at_ms: started_at,
                handoff: Some(handoff),
                ended_at_ms: at,
                reason: "caller hung up".into(),
                resolution: "resolved".into(),
            }
        );
        assert_event(
            &change.events[0],
            s.call(id),
            event_type::CALL_ENDED,
            4,
            4,
            at,
        );
        assert_eq!(payload_json(&change.events[0])["from"], "HANDED_OFF");
    }

    #[test]
    fn end_moves_a_created_call_to_ended_without_a_start() {
        let mut s = Scenario::new();
        let id = s.create(ACME);
        let at = s.clock_ms;
        let change = s.ok(ACME, end(id));
        assert_eq!(
            s.call(id).lifecycle,
            Lifecycle::Ended {
                started_at_ms: None,
                handoff: None,
                ended_at_ms: at,
                reason: "caller hung up".into(),
                resolution: "resolved".into(),
            }
        );
        assert_event(
            &change.events[0],
            s.call(id),
            event_type::CALL_ENDED,
            2,
            2,
            at,
        );
        assert_eq!(
            payload_json(&change.events[0]),
            serde_json::json!({ "reason": "caller hung up", "resolution": "resolved", "from": "CREATED" })
        );
        assert_eq!(
            s.event_types_of(id),
            [event_type::CALL_CREATED, event_type::CALL_ENDED]
        );
    }

    #[test]
    fn end_moves_an_active_call_to_ended_without_a_handoff() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        let started_at = s.call(id).lifecycle.started_at_ms();
        let at = s.clock_ms;
        let change = s.ok(ACME, end(id));
        assert_eq!(
            s.call(id).lifecycle,
            Lifecycle::Ended {
                started_at_ms: started_at,
                handoff: None,
                ended_at_ms: at,
                reason: "caller hung up".into(),
                resolution: "resolved".into(),
            }
        );
        assert_event(
            &change.events[0],
            s.call(id),
            event_type::CALL_ENDED,
            3,
            3,
            at,
        );
        assert_eq!(payload_json(&change.events[0])["from"], "ACTIVE");
    }

    #[test]
    fn turns_and_semantic_events_are_appended_while_active_and_handed_off() {
        let mut s = Scenario::new();
        let id = s.active(ACME);

        let at = s.clock_ms;
        let first = s.ok(ACME, turn(id, "I have a billing question"));
        let expected_turn = Turn {
            index: 1,
            speaker: "caller".into(),
            text: "I have a billing question".into(),
            confidence: 0.5,
            language: "en-US".into(),
            spoken_at_ms: 1_000,
            appended_at_ms: at,
            position: 3,
        };
        assert_eq!(first.turn, Some(expected_turn.clone()));
        assert_event(
            &first.events[0],
            &first.call,
            event_type::TURN_APPENDED,
            3,
            3,
            at,
        );
        assert_eq!(
            payload_json(&first.events[0]),
            serde_json::json!({
                "index": 1,
                "speaker": "caller",
                "text": "I have a billing question",
                "confidence": 0.5,
                "language": "en-US",
                "spoken_at_ms": 1_000,
            })
        );

        let at = s.clock_ms;
        let logged = s.ok(ACME, semantic(id, "intent.detected"));
        assert_event(&logged.events[0], &logged.call, "intent.detected", 4, 4, at);
        assert_eq!(
            logged.events[0].payload,
            Payload::Json(r#"{"intent":"billing"}"#.into())
        );
        assert_eq!(logged.events[0].metadata, labels(&[("model", "nlu-3")]));
        assert_eq!(logged.turn, None);

        s.ok(ACME, handoff(id));

        let at = s.clock_ms;
        let second = s.ok(ACME, turn(id, "agent here"));
        assert_eq!(
            second.turn.as_ref().map(|t| (t.index, t.position)),
            Some((2, 6))
        );
        assert_event(
            &second.events[0],
            &second.call,
            event_type::TURN_APPENDED,
            6,
            6,
            at,
        );

        let at = s.clock_ms;
        let bytes = s.ok(
            ACME,
            Command::LogEvent {
                call_id: id,
                event_type: "agent.note".into(),
                payload: Payload::Bytes(vec![0x0a, 0x02, 0xff, 0x00]),
                metadata: Labels::new(),
            },
        );
        assert_event(&bytes.events[0], &bytes.call, "agent.note", 7, 7, at);
        assert_eq!(
            bytes.events[0].payload,
            Payload::Bytes(vec![0x0a, 0x02, 0xff, 0x00])
        );

        assert_eq!(s.state(id), CallState::HandedOff);
        assert_eq!(s.call(id).turn_count, 2);
        assert_eq!(
            s.turns_of(id).iter().map(|t| t.index).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(s.turns_of(id)[0], expected_turn);
        assert_eq!(
            s.event_types_of(id),
            [
                event_type::CALL_CREATED,
                event_type::CALL_STARTED,
                event_type::TURN_APPENDED,
                "intent.detected",
                event_type::CALL_HANDED_OFF,
                event_type::TURN_APPENDED,
                "agent.note",
            ]
        );
    }

    #[test]
    fn context_is_updated_in_created_active_and_handed_off() {
        let mut s = Scenario::new();
        let id = s.create(ACME);

        let at = s.clock_ms;
        let created = s.ok(ACME, context(id, Some("new caller"), &[("account", "42")]));
        assert_eq!(created.call.state(), CallState::Created);
        assert_eq!(created.call.summary, "new caller");
        assert_eq!(created.call.entities, labels(&[("account", "42")]));
        assert_event(
            &created.events[0],
            &created.call,
            event_type::CONTEXT_UPDATED,
            2,
            2,
            at,
        );
        assert_eq!(
            payload_json(&created.events[0]),
            serde_json::json!({ "summary": "new caller", "entities": { "account": "42" } })
        );

        s.ok(ACME, start(id));
        let at = s.clock_ms;
        // No summary leaves the summary as it was; entities merge.
        let active = s.ok(ACME, context(id, None, &[("plan", "gold")]));
        assert_eq!(active.call.state(), CallState::Active);
        assert_eq!(active.call.summary, "new caller");
        assert_eq!(
            active.call.entities,
            labels(&[("account", "42"), ("plan", "gold")])
        );
        assert_event(
            &active.events[0],
            &active.call,
            event_type::CONTEXT_UPDATED,
            4,
            4,
            at,
        );
        assert_eq!(
            payload_json(&active.events[0]),
            serde_json::json!({ "summary": null, "entities": { "plan": "gold" } })
        );

        s.ok(ACME, handoff(id));
        let at = s.clock_ms;
        let handed_off = s.ok(
            ACME,
            context(id, Some("escalated"), &[("plan", "platinum")]),
        );
        assert_eq!(handed_off.call.state(), CallState::HandedOff);
        assert_eq!(handed_off.call.summary, "escalated");
        assert_eq!(
            handed_off.call.entities,
            labels(&[("account", "42"), ("plan", "platinum")])
        );
        assert_event(
            &handed_off.events[0],
            &handed_off.call,
            event_type::CONTEXT_UPDATED,
            6,
            6,
            at,
        );
    }

    #[test]
    fn positions_are_cluster_wide_and_sequence_numbers_per_call_both_gap_free_from_one() {
        let mut s = Scenario::new();
        // Two calls of two tenants, interleaved.
        let a = s.create(ACME);
        let b = s.create(GLOBEX);
        let mut stamps: BTreeMap<u64, u64> = BTreeMap::from([(1, T0_MS), (2, T0_MS + TICK_MS)]);
        let script: [(&str, Command); 10] = [
            (ACME, start(a)),
            (GLOBEX, start(b)),
            (ACME, turn(a, "hello")),
            (GLOBEX, turn(b, "hi")),
            (ACME, semantic(a, "intent.detected")),
            (GLOBEX, context(b, Some("chat"), &[("order", "7")])),
            (ACME, handoff(a)),
            (GLOBEX, end(b)),
            (ACME, turn(a, "agent here")),
            (ACME, end(a)),
        ];
        for (tenant, command) in script {
            // A rejection in between takes no position and no sequence number.
            assert!(matches!(
                s.rejected(GLOBEX, semantic(a, "snoop")),
                Rejection::UnknownCall { call_id } if call_id == a
            ));
            let at = s.clock_ms;
            let change = s.ok(tenant, command);
            for event in &change.events {
                stamps.insert(event.position, at);
            }
        }

        let positions: Vec<u64> = s.log.iter().map(|e| e.position).collect();
        assert_eq!(positions, (1..=12).collect::<Vec<_>>());
        for event in &s.log {
            assert_eq!(event.event_id, event_id(event.position));
            assert_eq!(
                Some(&event.at_ms),
                stamps.get(&event.position),
                "event at {}",
                event.position
            );
        }
        assert_eq!(s.head.next_position, 13);

        let of = |id: CallId| -> Vec<(u64, u64)> {
            s.events_of(id)
                .iter()
                .map(|e| (e.position, e.sequence_number))
                .collect()
        };
        assert_eq!(
            of(a),
            [(1, 1), (3, 2), (5, 3), (7, 4), (9, 5), (11, 6), (12, 7)]
        );
        assert_eq!(of(b), [(2, 1), (4, 2), (6, 3), (8, 4), (10, 5)]);
        assert!(
            s.events_of(a)
                .iter()
                .all(|e| e.tenant_id == ACME && e.call_id == Some(a))
        );
        assert!(
            s.events_of(b)
                .iter()
                .all(|e| e.tenant_id == GLOBEX && e.call_id == Some(b))
        );
        assert_eq!(
            s.event_types_of(a),
            [
                event_type::CALL_CREATED,
                event_type::CALL_STARTED,
                event_type::TURN_APPENDED,
                "intent.detected",
                event_type::CALL_HANDED_OFF,
                event_type::TURN_APPENDED,
                event_type::CALL_ENDED,
            ]
        );
        assert_eq!(
            s.event_types_of(b),
            [
                event_type::CALL_CREATED,
                event_type::CALL_STARTED,
                event_type::TURN_APPENDED,
                event_type::CONTEXT_UPDATED,
                event_type::CALL_ENDED,
            ]
        );
        assert_eq!(
            s.call(a).room_name,
            "call_01970000-0000-7000-8000-000000000001"
        );
        assert_eq!(
            s.call(b).room_name,
            "call_01970000-0000-7000-8000-000000000002"
        );
        assert_eq!(
            (s.call(a).last_sequence_number, s.call(a).last_position),
            (7, 12)
        );
        assert_eq!(
            (s.call(b).last_sequence_number, s.call(b).last_position),
            (5, 10)
        );
    }

    #[test]
    fn receipts_name_the_call_state_turn_and_positions_at_the_log_index() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        s.ok(ACME, turn(id, "one"));
        let outcome = outcome_of_applied(s.send(ACME, "turn-2", turn(id, "two")));
        assert_eq!(
            outcome,
            Outcome {
                index: 4,
                result: Ok(Receipt::Call(CallReceipt {
                    call_id: id,
                    state: CallState::Active,
                    turn_index: Some(2),
                    first_position: 4,
                    last_position: 4,
                })),
            }
        );
        let outcome = outcome_of_applied(s.send(ACME, "end", end(id)));
        assert_eq!(
            outcome.result,
            Ok(Receipt::Call(CallReceipt {
                call_id: id,
                state: CallState::Ended,
                turn_index: None,
                first_position: 5,
                last_position: 5,
            }))
        );
        assert_eq!(outcome.index, 5);
    }
}

// ------------------------------------------------------------------------------------------------
// Illegal transitions
// ------------------------------------------------------------------------------------------------

mod illegal_transitions {
    use super::*;

    /// Sends `command` to a call in `from` and expects `IllegalTransition` and no change.
    #[track_caller]
    fn assert_illegal(from: CallState, command: fn(CallId) -> Command, kind: CommandKind) {
        let mut s = Scenario::new();
        let id = s.call_in(ACME, from);
        let before = s.stored();
        assert_eq!(
            s.rejected(ACME, command(id)),
            Rejection::IllegalTransition {
                call_id: id,
                from,
                command: kind,
            }
        );
        assert_eq!(s.stored(), before, "a rejection changes nothing");
    }

    #[test]
    fn start_twice_is_rejected_as_illegal_from_active() {
        assert_illegal(CallState::Active, start, CommandKind::StartCall);
    }

    #[test]
    fn start_after_handoff_is_rejected_as_illegal_from_handed_off() {
        assert_illegal(CallState::HandedOff, start, CommandKind::StartCall);
    }

    #[test]
    fn handoff_before_start_is_rejected_as_illegal_from_created() {
        assert_illegal(CallState::Created, handoff, CommandKind::RequestHandoff);
    }

    #[test]
    fn turn_before_start_is_rejected_as_illegal_from_created() {
        assert_illegal(
            CallState::Created,
            |id| turn(id, "too early"),
            CommandKind::AppendTurn,
        );
    }

    #[test]
    fn semantic_event_before_start_is_rejected_as_illegal_from_created() {
        assert_illegal(
            CallState::Created,
            |id| semantic(id, "intent.detected"),
            CommandKind::LogEvent,
        );
    }

    #[test]
    fn illegal_transition_message_names_state_and_command() {
        let mut s = Scenario::new();
        let id = s.create(ACME);
        let message = s.rejected(ACME, handoff(id)).to_string();
        assert_eq!(
            message,
            format!("call {id} is CREATED: RequestHandoff is not allowed in that state")
        );
    }

    #[test]
    fn handoff_twice_is_rejected_with_the_position_of_the_first_handoff() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        s.ok(ACME, turn(id, "one"));
        let first = s.ok(ACME, handoff(id));
        assert_eq!(first.events[0].event_type, event_type::CALL_HANDED_OFF);
        let first_position = first.events[0].position;
        assert_eq!(first_position, 4);
        s.ok(ACME, turn(id, "two"));
        let handoff_before = s.handoff_of(id);
        let before = s.stored();

        let again = Command::RequestHandoff {
            call_id: id,
            reason: "a second opinion".into(),
            urgency: Urgency::Critical,
            target: None,
        };
        assert_eq!(
            s.rejected(ACME, again),
            Rejection::AlreadyHandedOff {
                call_id: id,
                at_position: first_position,
            }
        );
        assert_eq!(s.stored(), before);
        assert_eq!(s.handoff_of(id), handoff_before);
        let handoffs = s
            .log
            .iter()
            .filter(|e| e.event_type == event_type::CALL_HANDED_OFF)
            .count();
        assert_eq!(handoffs, 1, "handoff at most once per call");
    }

    #[test]
    fn every_command_on_an_ended_call_is_rejected_as_call_ended_and_changes_nothing() {
        for ended_from in [CallState::Created, CallState::Active, CallState::HandedOff] {
            let mut s = Scenario::new();
            let id = s.call_in(ACME, ended_from);
            s.ok(ACME, end(id));
            assert_eq!(s.state(id), CallState::Ended);
            let before = s.stored();
            for command in every_call_command(id) {
                let kind = command.kind();
                assert_eq!(
                    s.rejected(ACME, command),
                    Rejection::CallEnded {
                        call_id: id,
                        command: kind
                    },
                    "{kind} on a call ended from {ended_from}"
                );
            }
            assert_eq!(
                s.stored(),
                before,
                "an ended call is immutable (ended from {ended_from})"
            );
        }
    }

    #[test]
    fn a_call_ended_from_handed_off_still_answers_call_ended_to_a_second_handoff() {
        let mut s = Scenario::new();
        let id = s.handed_off(ACME);
        s.ok(ACME, end(id));
        assert_eq!(
            s.rejected(ACME, handoff(id)),
            Rejection::CallEnded {
                call_id: id,
                command: CommandKind::RequestHandoff,
            }
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Unknown calls and tenants
// ------------------------------------------------------------------------------------------------

mod unknown_calls {
    use super::*;

    #[test]
    fn every_command_for_an_unknown_call_is_rejected_as_unknown_call() {
        let mut s = Scenario::new();
        let known = s.active(ACME);
        let before = s.stored();
        for command in every_call_command(GHOST) {
            let kind = command.kind();
            assert_eq!(
                s.rejected(ACME, command),
                Rejection::UnknownCall { call_id: GHOST },
                "{kind} for an unknown call"
            );
        }
        assert_eq!(s.stored(), before);
        assert!(
            !s.calls.contains_key(&GHOST),
            "turns and events never exist without their call"
        );
        assert!(s.log.iter().all(|e| e.call_id == Some(known)));
    }

    #[test]
    fn a_call_of_another_tenant_is_unknown_and_untouched() {
        for state in [
            CallState::Created,
            CallState::Active,
            CallState::HandedOff,
            CallState::Ended,
        ] {
            let mut s = Scenario::new();
            let id = s.call_in(ACME, state);
            let before = s.stored();
            for command in every_call_command(id) {
                let kind = command.kind();
                assert_eq!(
                    s.rejected(GLOBEX, command),
                    Rejection::UnknownCall { call_id: id },
                    "{kind} from another tenant on a {state} call"
                );
            }
            assert_eq!(s.stored(), before);
        }
    }

    #[test]
    fn create_call_on_a_minted_id_that_exists_is_rejected_as_call_exists() {
        let mut s = Scenario::new();
        let id = s.create(ACME);
        let before = s.stored();
        let stamp = Stamp {
            at_ms: s.clock_ms,
            minted_call_id: Some(id),
            minted_trace_id: None,
        };
        let rejection = rejection_of(s.send_stamped(ACME, "dup", create_call(), stamp));
        assert_eq!(rejection, Rejection::CallExists { call_id: id });
        assert_eq!(s.stored(), before);
    }

    #[test]
    fn create_call_without_a_minted_id_is_rejected_as_missing_stamp() {
        let mut s = Scenario::new();
        let stamp = Stamp {
            at_ms: s.clock_ms,
            minted_call_id: None,
            minted_trace_id: None,
        };
        let rejection = rejection_of(s.send_stamped(ACME, "unstamped", create_call(), stamp));
        assert_eq!(rejection, Rejection::MissingStamp);
        assert!(s.calls.is_empty());
        assert_eq!(s.head.next_position, 1);
    }
}

// ------------------------------------------------------------------------------------------------
// Handoff context snapshot
// ------------------------------------------------------------------------------------------------

mod handoff_snapshot {
    use super::*;

    /// An active call with context and `HANDOFF_TURNS_MAX + 5` turns.
    fn talkative(s: &mut Scenario) -> CallId {
        let id = s.active(ACME);
        s.ok(
            ACME,
            context(
                id,
                Some("billing dispute"),
                &[("account", "42"), ("plan", "gold")],
            ),
        );
        for n in 1..=HANDOFF_TURNS_MAX + 5 {
            s.ok(ACME, turn(id, &format!("utterance {n}")));
        }
        id
    }

    #[test]
    fn handoff_snapshot_holds_summary_entities_and_the_last_turns_oldest_first() {
        let mut s = Scenario::new();
        let id = talkative(&mut s);
        let change = s.ok(ACME, handoff(id));

        let handoff = s.handoff_of(id);
        assert_eq!(handoff.position, change.events[0].position);
        assert_eq!(handoff.snapshot.summary, "billing dispute");
        assert_eq!(
            handoff.snapshot.entities,
            labels(&[("account", "42"), ("plan", "gold")])
        );
        let indexes: Vec<u64> = handoff
            .snapshot
            .recent_turns
            .iter()
            .map(|t| t.index)
            .collect();
        assert_eq!(indexes, (6..=25).collect::<Vec<u64>>());
        assert_eq!(handoff.snapshot.recent_turns.len(), HANDOFF_TURNS_MAX);
        assert_eq!(handoff.snapshot.recent_turns, s.turns_of(id)[5..].to_vec());
        assert_eq!(handoff.snapshot.recent_turns[0].text, "utterance 6");
    }

    #[test]
    fn handoff_snapshot_keeps_only_the_last_turns_when_storage_loads_more() {
        let mut s = Scenario::new();
        let id = talkative(&mut s);
        let all_turns = s.turns_of(id);
        assert_eq!(all_turns.len(), HANDOFF_TURNS_MAX + 5);
        let request = Request {
            tenant_id: ACME.into(),
            request_id: "handoff".into(),
            command: handoff(id),
            stamp: Stamp {
                at_ms: s.clock_ms,
                minted_call_id: None,
                minted_trace_id: None,
            },
            redactions: Default::default(),
        };
        let view = View {
            call: Some(s.call(id)),
            recent_turns: &all_turns,
        };
        let change = apply(s.head, view, &request).expect("handoff from ACTIVE");
        let snapshot = &change
            .call
            .lifecycle
            .handoff()
            .expect("handed off")
            .snapshot;
        assert_eq!(snapshot.recent_turns, all_turns[5..].to_vec());
    }

    #[test]
    fn handoff_snapshot_holds_every_turn_when_there_are_few() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        s.ok(ACME, turn(id, "one"));
        s.ok(ACME, turn(id, "two"));
        s.ok(ACME, handoff(id));
        let snapshot = s.handoff_of(id).snapshot;
        assert_eq!(snapshot.recent_turns, s.turns_of(id));
        assert_eq!(snapshot.summary, "");
        assert!(snapshot.entities.is_empty());
    }

    #[test]
    fn handoff_snapshot_does_not_change_when_the_call_moves_on() {
        let mut s = Scenario::new();
        let id = talkative(&mut s);
        s.ok(ACME, handoff(id));
        let handoff = s.handoff_of(id);

        s.ok(
            ACME,
            context(
                id,
                Some("refund issued"),
                &[("plan", ""), ("refund", "20 EUR")],
            ),
        );
        s.ok(ACME, turn(id, "agent: refund issued"));
        assert_eq!(s.call(id).summary, "refund issued");
        assert_eq!(
            s.call(id).entities,
            labels(&[("account", "42"), ("refund", "20 EUR")])
        );
        assert_eq!(s.handoff_of(id), handoff, "the snapshot is immutable");

        s.ok(ACME, end(id));
        assert_eq!(
            s.handoff_of(id),
            handoff,
            "ending keeps the handoff as it was"
        );
        assert_eq!(handoff.snapshot.summary, "billing dispute");
    }
}

// ------------------------------------------------------------------------------------------------
// Idempotency
// ------------------------------------------------------------------------------------------------

mod idempotency {
    use super::*;

    #[test]
    fn a_retried_success_is_answered_with_the_original_outcome() {
        let mut s = Scenario::new();
        let id = s.create(ACME);
        let original = outcome_of_applied(s.send(ACME, "start-1", start(id)));
        assert_eq!(original.index, 2);
        let before = s.stored();
        assert_eq!(
            s.send(ACME, "start-1", start(id)),
            Decision::Replay(original.clone())
        );
        assert_eq!(
            s.send(ACME, "start-1", start(id)),
            Decision::Replay(original)
        );
        assert_eq!(s.stored(), before, "a replay changes nothing");
    }

    #[test]
    fn a_retried_rejection_is_answered_with_the_original_rejection_even_when_it_would_now_succeed()
    {
        let mut s = Scenario::new();
        let id = s.create(ACME);
        let Decision::Rejected { outcome, .. } = s.send(ACME, "turn-1", turn(id, "too early"))
        else {
            panic!("a turn before start is rejected");
        };
        let illegal = Rejection::IllegalTransition {
            call_id: id,
            from: CallState::Created,
            command: CommandKind::AppendTurn,
        };
        assert_eq!(
            outcome,
            Outcome {
                index: 2,
                result: Err(illegal)
            }
        );
        s.ok(ACME, start(id));
        let before = s.stored();
        assert_eq!(
            s.send(ACME, "turn-1", turn(id, "too early")),
            Decision::Replay(outcome)
        );
        assert_eq!(s.stored(), before);
        assert_eq!(s.call(id).turn_count, 0);
    }

    #[test]
    fn a_retry_after_the_call_ended_replays_the_original_success_not_call_ended() {
        let mut s = Scenario::new();
        let id = s.create(ACME);
        let started = outcome_of_applied(s.send(ACME, "start-1", start(id)));
        let handed_off = outcome_of_applied(s.send(ACME, "handoff-1", handoff(id)));
        s.ok(ACME, end(id));
        assert_eq!(s.state(id), CallState::Ended);

        let replay = s.send(ACME, "start-1", start(id));
        assert_eq!(replay, Decision::Replay(started));
        let Decision::Replay(Outcome {
            result: Ok(receipt),
            ..
        }) = replay
        else {
            panic!("expected a replayed success");
        };
        assert_eq!(
            receipt.call().map(|r| r.state),
            Some(CallState::Active),
            "the receipt is the original one"
        );
        // A handoff retried across a leader change: still exactly one handoff.
        assert_eq!(
            s.send(ACME, "handoff-1", handoff(id)),
            Decision::Replay(handed_off)
        );
        let handoffs = s
            .log
            .iter()
            .filter(|e| e.event_type == event_type::CALL_HANDED_OFF)
            .count();
        assert_eq!(handoffs, 1);
    }

    #[test]
    fn the_same_request_id_with_a_different_command_is_refused_and_forgets_nothing() {
        let mut s = Scenario::new();
        let id = s.create(ACME);
        let original = outcome_of_applied(s.send(ACME, "r-1", start(id)));
        let before = s.stored();
        let remembered = s.remembered.clone();

        assert_eq!(
            s.send(ACME, "r-1", end(id)),
            Decision::Refused(Outcome {
                index: 3,
                result: Err(Rejection::RequestIdReused {
                    request_id: "r-1".into(),
                }),
            })
        );
        // A different turn text is a different command too.
        let reused = s.send(ACME, "r-1", turn(id, "other"));
        assert!(matches!(
            reused,
            Decision::Refused(Outcome { index: 4, result: Err(Rejection::RequestIdReused { ref request_id }) })
                if request_id == "r-1"
        ));
        assert_eq!(s.stored(), before);
        assert_eq!(s.remembered, remembered, "a refusal is not remembered");
        assert_eq!(s.state(id), CallState::Active);
        assert_eq!(s.send(ACME, "r-1", start(id)), Decision::Replay(original));
    }

    #[test]
    fn the_same_request_id_under_another_tenant_is_independent() {
        let mut s = Scenario::new();
        let acme_create = outcome_of_applied(s.send(ACME, "shared", create_call()));
        let globex_create = outcome_of_applied(s.send(GLOBEX, "shared", create_call()));
        assert_ne!(acme_create, globex_create);
        let acme_call = minted(1);
        let globex_call = minted(2);
        assert_eq!(s.call(acme_call).tenant_id, ACME);
        assert_eq!(s.call(globex_call).tenant_id, GLOBEX);

        // A different command under an id another tenant used is not a reuse.
        let globex_start = outcome_of_applied(s.send(GLOBEX, "start", start(globex_call)));
        let acme_start = outcome_of_applied(s.send(ACME, "start", start(acme_call)));
        assert_ne!(globex_start, acme_start);

        assert_eq!(
            s.send(ACME, "shared", create_call()),
            Decision::Replay(acme_create)
        );
        assert_eq!(
            s.send(GLOBEX, "shared", create_call()),
            Decision::Replay(globex_create)
        );
        assert_eq!(s.calls.len(), 2);
    }

    #[test]
    fn a_record_expires_after_the_window_and_the_command_is_decided_afresh() {
        let mut s = Scenario::new();
        let id = s.create(ACME);
        let Decision::Rejected { outcome, remember } = s.send(ACME, "turn-1", turn(id, "early"))
        else {
            panic!("a turn before start is rejected");
        };
        assert_eq!(remember.at_ms, T0_MS + TICK_MS);
        s.ok(ACME, start(id));

        // The last moment of the window: still the original answer.
        s.set_clock(remember.at_ms + IDEMPOTENCY_WINDOW_MS);
        assert_eq!(
            s.send(ACME, "turn-1", turn(id, "early")),
            Decision::Replay(outcome)
        );

        // One millisecond later the record is gone: the turn is applied now.
        s.set_clock(remember.at_ms + IDEMPOTENCY_WINDOW_MS + 1);
        let fresh = outcome_of_applied(s.send(ACME, "turn-1", turn(id, "early")));
        assert_eq!(fresh.index, 5);
        assert_eq!(
            fresh
                .result
                .as_ref()
                .map(|r| r.call().and_then(|r| r.turn_index)),
            Ok(Some(1))
        );
        assert_eq!(s.call(id).turn_count, 1);
        // ... and the new outcome is what is remembered from now on.
        assert_eq!(
            s.send(ACME, "turn-1", turn(id, "early")),
            Decision::Replay(fresh)
        );
    }

    #[test]
    fn an_expired_request_id_may_carry_a_different_command() {
        let mut s = Scenario::new();
        let id = s.create(ACME);
        let started = outcome_of_applied(s.send(ACME, "r", start(id)));
        let Ok(receipt) = &started.result else {
            panic!("start succeeded");
        };
        assert_eq!(receipt.call().map(|r| r.state), Some(CallState::Active));
        let remembered_at = s.remembered[&(ACME.to_owned(), "r".to_owned())].at_ms;
        s.set_clock(remembered_at + IDEMPOTENCY_WINDOW_MS + 1);
        let ended = outcome_of_applied(s.send(ACME, "r", end(id)));
        assert_eq!(
            ended.result.map(|r| r.call().map(|r| r.state)),
            Ok(Some(CallState::Ended))
        );
    }

    #[test]
    fn a_retried_create_call_with_a_newly_minted_id_replays_the_original_call() {
        let mut s = Scenario::new();
        let original = outcome_of_applied(s.send(ACME, "create-1", create_call()));
        assert_eq!(
            original
                .result
                .as_ref()
                .map(|r| r.call().map(|r| r.call_id)),
            Ok(Some(minted(1)))
        );
        let before = s.stored();

        // The retry reaches a new leader, which mints another id.
        assert_eq!(
            s.send(ACME, "create-1", create_call()),
            Decision::Replay(original)
        );
        assert_eq!(s.minted, 2, "the retry was stamped with a new id");
        assert!(!s.calls.contains_key(&minted(2)), "no second call");
        assert_eq!(s.stored(), before);
    }

    #[test]
    fn the_window_counts_the_state_machine_clock_not_a_lagging_leader_clock() {
        let mut s = Scenario::new();
        let id = s.create(ACME);
        let started = outcome_of_applied(s.send(ACME, "start-1", start(id)));
        // Time moves past the window, then a leader with a clock far behind takes over.
        s.set_clock(T0_MS + IDEMPOTENCY_WINDOW_MS + 1_000);
        s.ok(ACME, turn(id, "late"));
        s.set_clock(T0_MS);
        let decision = s.send(ACME, "start-1", start(id));
        assert_ne!(
            decision,
            Decision::Replay(started),
            "the record expired by the state machine's clock"
        );
        assert_eq!(
            rejection_of(decision),
            Rejection::IllegalTransition {
                call_id: id,
                from: CallState::Active,
                command: CommandKind::StartCall,
            }
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Clock
// ------------------------------------------------------------------------------------------------

mod clock {
    use super::*;

    #[test]
    fn events_of_an_earlier_stamp_carry_the_later_time_already_seen() {
        let mut s = Scenario::new();
        s.set_clock(T0_MS + 60_000);
        let id = s.active(ACME);
        let high = s.head.clock_ms;
        assert_eq!(high, T0_MS + 60_000 + TICK_MS);

        // A new leader whose wall clock is a minute behind.
        s.set_clock(T0_MS);
        let change = s.ok(ACME, turn(id, "still here"));
        assert_eq!(change.events[0].at_ms, high);
        assert_eq!(change.turn.as_ref().map(|t| t.appended_at_ms), Some(high));
        assert_eq!(change.head.clock_ms, high);
        assert_eq!(s.head.clock_ms, high);

        let Decision::Rejected { remember, .. } = s.send(ACME, "again", start(id)) else {
            panic!("start twice is rejected");
        };
        assert_eq!(
            remember.at_ms, high,
            "records are stamped by the state machine's clock"
        );

        let created = s.ok(ACME, create_call());
        assert_eq!(created.call.created_at_ms, high);
        let ended = s.ok(ACME, end(id));
        let Lifecycle::Ended { ended_at_ms, .. } = ended.call.lifecycle else {
            panic!("ended");
        };
        assert_eq!(ended_at_ms, high);

        // Once the leader's clock passes the high mark, time moves on again.
        s.set_clock(high + 5);
        let later = s.ok(ACME, start(created.call.call_id));
        assert_eq!(later.events[0].at_ms, high + 5);
        assert_eq!(s.head.clock_ms, high + 5);
    }

    #[test]
    fn event_times_never_decrease_along_the_log() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        for (n, at) in [5_000u64, 1_000, 9_000, 2_000, 9_000, 12_000]
            .into_iter()
            .enumerate()
        {
            s.set_clock(T0_MS + at);
            s.ok(ACME, turn(id, &format!("turn {n}")));
        }
        let times: Vec<u64> = s.log.iter().map(|e| e.at_ms - T0_MS).collect();
        assert_eq!(times, [0, 10, 5_000, 5_000, 9_000, 9_000, 9_000, 12_000]);
    }
}

// ------------------------------------------------------------------------------------------------
// Input bounds
// ------------------------------------------------------------------------------------------------

mod input_bounds {
    use super::*;

    #[test]
    fn over_long_turn_text_is_invalid_and_the_message_names_the_field_and_the_bound() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        let before = s.stored();
        let too_long = "x".repeat(TURN_TEXT_BYTES_MAX + 1);
        let rejection = s.rejected(ACME, turn(id, &too_long));
        assert_eq!(
            rejection,
            Rejection::Invalid(Invalid {
                field: Field::Text,
                problem: Problem::BytesOver {
                    bytes_max: 16_384,
                    bytes: 16_385,
                },
            })
        );
        let message = rejection.to_string();
        assert!(message.contains("text"), "{message}");
        assert!(message.contains("16384"), "{message}");
        assert_eq!(
            message,
            "invalid argument: text is 16385 bytes, over the bound of 16384 bytes"
        );
        assert_eq!(s.stored(), before);

        // The bound counts bytes, not characters, and is inclusive.
        let wide = "é".repeat(TURN_TEXT_BYTES_MAX / 2 + 1);
        assert_eq!(
            s.invalid(ACME, turn(id, &wide)),
            Invalid {
                field: Field::Text,
                problem: Problem::BytesOver {
                    bytes_max: 16_384,
                    bytes: 16_386,
                },
            }
        );
        let at_bound = s.ok(ACME, turn(id, &"x".repeat(TURN_TEXT_BYTES_MAX)));
        assert_eq!(
            at_bound.turn.map(|t| t.text.len()),
            Some(TURN_TEXT_BYTES_MAX)
        );
    }

    #[test]
    fn an_empty_speaker_or_text_is_invalid() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        let no_speaker = Command::AppendTurn {
            call_id: id,
            speaker: String::new(),
            text: "hi".into(),
            confidence: 0.9,
            language: "en".into(),
            spoken_at_ms: 0,
        };
        let rejection = s.rejected(ACME, no_speaker);
        assert_eq!(
            rejection,
            Rejection::Invalid(Invalid {
                field: Field::Speaker,
                problem: Problem::Empty,
            })
        );
        assert_eq!(
            rejection.to_string(),
            "invalid argument: speaker must not be empty"
        );
        assert_eq!(
            s.invalid(ACME, turn(id, "")),
            Invalid {
                field: Field::Text,
                problem: Problem::Empty,
            }
        );
        assert_eq!(s.call(id).turn_count, 0);
    }

    #[test]
    fn confidence_outside_zero_to_one_or_nan_is_invalid() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        let with_confidence = |confidence: f32| Command::AppendTurn {
            call_id: id,
            speaker: "caller".into(),
            text: "hi".into(),
            confidence,
            language: "en".into(),
            spoken_at_ms: 0,
        };
        for confidence in [1.5, f32::NAN, -0.01, f32::INFINITY] {
            let rejection = s.rejected(ACME, with_confidence(confidence));
            assert_eq!(
                rejection,
                Rejection::Invalid(Invalid {
                    field: Field::Confidence,
                    problem: Problem::NotInUnitRange,
                }),
                "confidence {confidence}"
            );
            assert!(rejection.to_string().contains("confidence"));
        }
        assert_eq!(s.call(id).turn_count, 0);
        for confidence in [0.0, 1.0] {
            let change = s.ok(ACME, with_confidence(confidence));
            assert_eq!(change.turn.map(|t| t.confidence), Some(confidence));
        }
    }

    #[test]
    fn a_json_payload_that_is_not_json_is_invalid() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        for text in ["{not json", "", r#"{"a":1} trailing"#] {
            let bad = Command::LogEvent {
                call_id: id,
                event_type: "intent.detected".into(),
                payload: Payload::Json(text.into()),
                metadata: Labels::new(),
            };
            let rejection = s.rejected(ACME, bad);
            assert_eq!(
                rejection,
                Rejection::Invalid(Invalid {
                    field: Field::Payload,
                    problem: Problem::NotJson,
                }),
                "payload {text:?}"
            );
            assert!(rejection.to_string().contains("payload"));
        }
        assert_eq!(s.event_types_of(id).len(), 2, "nothing logged");
    }

    #[test]
    fn a_semantic_event_may_not_use_a_reserved_event_type() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        let before = s.stored();
        for reserved in event_type::RESERVED {
            let rejection = s.rejected(ACME, semantic(id, reserved));
            assert_eq!(
                rejection,
                Rejection::Invalid(Invalid {
                    field: Field::EventType,
                    problem: Problem::Reserved,
                }),
                "event type {reserved}"
            );
            assert!(rejection.to_string().contains("event_type"));
        }
        assert_eq!(
            s.invalid(ACME, semantic(id, "")),
            Invalid {
                field: Field::EventType,
                problem: Problem::Empty,
            }
        );
        assert_eq!(s.stored(), before);
    }

    #[test]
    fn too_many_metadata_entries_are_invalid_on_create_and_on_events() {
        let mut s = Scenario::new();
        let too_many: Labels = (0..=METADATA_ENTRIES_MAX)
            .map(|n| (format!("k{n}"), "v".to_owned()))
            .collect();
        let over = Invalid {
            field: Field::Metadata,
            problem: Problem::EntriesOver {
                entries_max: 32,
                entries: 33,
            },
        };
        let rejection = s.rejected(
            ACME,
            Command::CreateCall {
                source: "+15550100".into(),
                channel: Channel::Voice,
                metadata: too_many.clone(),
                trace_id: None,
            },
        );
        assert_eq!(rejection, Rejection::Invalid(over));
        let message = rejection.to_string();
        assert!(
            message.contains("metadata") && message.contains("32"),
            "{message}"
        );
        assert!(s.calls.is_empty());

        let id = s.active(ACME);
        let event = Command::LogEvent {
            call_id: id,
            event_type: "intent.detected".into(),
            payload: Payload::Json("{}".into()),
            metadata: too_many,
        };
        assert_eq!(s.invalid(ACME, event), over);

        let empty_key = Command::LogEvent {
            call_id: id,
            event_type: "intent.detected".into(),
            payload: Payload::Json("{}".into()),
            metadata: labels(&[("", "v")]),
        };
        assert_eq!(
            s.invalid(ACME, empty_key),
            Invalid {
                field: Field::MetadataKey,
                problem: Problem::Empty,
            }
        );
    }

    #[test]
    fn an_empty_or_over_long_tenant_or_request_id_is_refused_and_not_remembered() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        let before = s.stored();
        let remembered = s.remembered.clone();
        let refused = |s: &mut Scenario, tenant: &str, request_id: &str| -> Rejection {
            match s.send(tenant, request_id, start(id)) {
                Decision::Refused(Outcome {
                    result: Err(rejection),
                    ..
                }) => rejection,
                other => panic!("expected a refusal, got {other:?}"),
            }
        };
        let empty_tenant = refused(&mut s, "", "r");
        assert_eq!(
            empty_tenant,
            Rejection::Invalid(Invalid {
                field: Field::TenantId,
                problem: Problem::Empty,
            })
        );
        assert!(empty_tenant.to_string().contains("tenant_id"));
        assert_eq!(
            refused(&mut s, ACME, ""),
            Rejection::Invalid(Invalid {
                field: Field::RequestId,
                problem: Problem::Empty,
            })
        );
        let long_tenant = "t".repeat(TENANT_ID_BYTES_MAX + 1);
        assert_eq!(
            refused(&mut s, &long_tenant, "r"),
            Rejection::Invalid(Invalid {
                field: Field::TenantId,
                problem: Problem::BytesOver {
                    bytes_max: 128,
                    bytes: 129,
                },
            })
        );
        assert_eq!(s.stored(), before);
        assert_eq!(s.remembered, remembered);
    }

    #[test]
    fn an_invalid_command_is_remembered_like_any_rejection() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        let Decision::Rejected { outcome, .. } = s.send(ACME, "bad", turn(id, "")) else {
            panic!("an empty text is rejected");
        };
        assert_eq!(s.send(ACME, "bad", turn(id, "")), Decision::Replay(outcome));
    }

    #[test]
    fn other_fields_are_checked_against_their_bounds() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        let cases: [(Command, Field); 9] = [
            (
                Command::CreateCall {
                    source: "s".repeat(257),
                    channel: Channel::Voice,
                    metadata: Labels::new(),
                    trace_id: None,
                },
                Field::Source,
            ),
            (
                Command::CreateCall {
                    source: "s".into(),
                    channel: Channel::Voice,
                    metadata: Labels::new(),
                    trace_id: Some("t".repeat(129)),
                },
                Field::TraceId,
            ),
            (
                Command::AppendTurn {
                    call_id: id,
                    speaker: "caller".into(),
                    text: "hi".into(),
                    confidence: 0.5,
                    language: "l".repeat(36),
                    spoken_at_ms: 0,
                },
                Field::Language,
            ),
            (
                context(id, Some("s".repeat(16 * 1024 + 1).as_str()), &[]),
                Field::Summary,
            ),
            (context(id, None, &[("", "v")]), Field::EntityKey),
            (
                context(id, None, &[("k", "v".repeat(1025).as_str())]),
                Field::EntityValue,
            ),
            (
                Command::RequestHandoff {
                    call_id: id,
                    reason: String::new(),
                    urgency: Urgency::Low,
                    target: None,
                },
                Field::Reason,
            ),
            (
                Command::RequestHandoff {
                    call_id: id,
                    reason: "r".into(),
                    urgency: Urgency::Low,
                    target: Some("t".repeat(257)),
                },
                Field::Target,
            ),
            (
                Command::EndCall {
                    call_id: id,
                    reason: "r".into(),
                    resolution: "x".repeat(513),
                },
                Field::Resolution,
            ),
        ];
        let before = s.stored();
        for (command, field) in cases {
            let kind = command.kind();
            assert_eq!(s.invalid(ACME, command).field, field, "{kind}");
        }
        assert_eq!(s.stored(), before);
    }

    #[test]
    fn validation_comes_before_the_call_is_looked_up() {
        let mut s = Scenario::new();
        assert_eq!(s.invalid(ACME, turn(GHOST, "")).field, Field::Text);
    }
}

// ------------------------------------------------------------------------------------------------
// Per-call limits
// ------------------------------------------------------------------------------------------------

mod call_limits {
    use super::*;

    fn entities(range: std::ops::Range<usize>) -> Vec<(String, String)> {
        range
            .map(|n| (format!("e{n:02}"), format!("v{n}")))
            .collect()
    }

    fn context_of(call_id: CallId, entries: &[(String, String)]) -> Command {
        Command::UpdateContext {
            call_id,
            summary: None,
            entities: entries.iter().cloned().collect(),
        }
    }

    #[test]
    fn too_many_entities_after_merging_reach_the_entity_limit() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        let full = s.ok(ACME, context_of(id, &entities(0..ENTITIES_MAX)));
        assert_eq!(full.call.entities.len(), ENTITIES_MAX);

        let before = s.stored();
        let rejection = s.rejected(ACME, context(id, Some("one too many"), &[("extra", "1")]));
        assert_eq!(
            rejection,
            Rejection::CallLimitReached {
                call_id: id,
                limit: CallLimit::Entities,
                max: 64,
            }
        );
        assert_eq!(
            rejection.to_string(),
            format!("call {id}: entities per call reached (64)")
        );
        assert_eq!(
            s.stored(),
            before,
            "neither the summary nor the entities changed"
        );
        assert_eq!(s.call(id).summary, "");

        // Overwriting an existing entity at the limit is fine.
        let overwritten = s.ok(ACME, context(id, None, &[("e00", "changed")]));
        assert_eq!(overwritten.call.entities.len(), ENTITIES_MAX);
        assert_eq!(overwritten.call.entities["e00"], "changed");

        // A single request over the bound is invalid, not a call limit.
        let over = s.invalid(ACME, context_of(id, &entities(100..100 + ENTITIES_MAX + 1)));
        assert_eq!(
            over,
            Invalid {
                field: Field::Entities,
                problem: Problem::EntriesOver {
                    entries_max: 64,
                    entries: 65,
                },
            }
        );
    }

    #[test]
    fn an_empty_entity_value_removes_the_entity() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        s.ok(
            ACME,
            context(id, None, &[("account", "42"), ("plan", "gold")]),
        );
        let change = s.ok(ACME, context(id, None, &[("plan", ""), ("never-set", "")]));
        assert_eq!(change.call.entities, labels(&[("account", "42")]));
        assert_eq!(
            payload_json(&change.events[0]),
            serde_json::json!({ "summary": null, "entities": { "plan": "", "never-set": "" } })
        );

        // At the limit, removing one makes room for another in the same request.
        s.ok(ACME, context_of(id, &entities(0..ENTITIES_MAX - 1)));
        assert_eq!(s.call(id).entities.len(), ENTITIES_MAX);
        let swapped = s.ok(
            ACME,
            context(id, None, &[("account", ""), ("newcomer", "1")]),
        );
        assert_eq!(swapped.call.entities.len(), ENTITIES_MAX);
        assert!(!swapped.call.entities.contains_key("account"));
        assert_eq!(swapped.call.entities["newcomer"], "1");
    }

    #[test]
    fn the_turn_after_call_turns_max_is_rejected_and_the_call_can_still_end() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        for n in 1..=CALL_TURNS_MAX {
            s.ok(ACME, turn(id, &format!("t{n}")));
        }
        assert_eq!(s.call(id).turn_count, CALL_TURNS_MAX);
        let before = s.stored();
        assert_eq!(
            s.rejected(ACME, turn(id, "one more")),
            Rejection::CallLimitReached {
                call_id: id,
                limit: CallLimit::Turns,
                max: CALL_TURNS_MAX,
            }
        );
        assert_eq!(s.stored(), before);
        // Other commands still work.
        s.ok(ACME, semantic(id, "limit.noticed"));
        s.ok(ACME, end(id));
        assert_eq!(s.state(id), CallState::Ended);
        assert_eq!(s.call(id).last_sequence_number, CALL_TURNS_MAX + 4);
    }
    #[test]
    fn past_call_events_max_commands_that_append_events_are_rejected() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        while s.call(id).last_sequence_number < CALL_EVENTS_MAX {
            s.ok(ACME, semantic(id, "tick"));
        }
        assert_eq!(s.call(id).last_sequence_number, 100_000);
        assert_eq!(s.head.next_position, 100_001);
        let limit = Rejection::CallLimitReached {
            call_id: id,
            limit: CallLimit::Events,
            max: CALL_EVENTS_MAX,
        };
        let before = s.stored();
        for command in [
            turn(id, "one more"),
            semantic(id, "tick"),
            context(id, Some("full"), &[]),
            handoff(id),
        ] {
            let kind = command.kind();
            assert_eq!(s.rejected(ACME, command), limit, "{kind}");
        }
        assert_eq!(s.stored(), before);
        assert_eq!(s.state(id), CallState::Active);
        // Postmortem: EndCall used to be rejected here too, leaving a call at its event limit
        // stuck forever. `call.ended` is now exempt from the limit: the call can always end.
        s.ok(ACME, end(id));
        assert_eq!(s.state(id), CallState::Ended);
        assert_eq!(s.call(id).last_sequence_number, CALL_EVENTS_MAX + 1);
        // A call at its event limit, ended, can still be erased: `call.erased` is exempt too,
        // and the erase reaches every one of its events.
        let change = s.ok(
            ACME,
            Command::EraseCall {
                call_id: id,
                reason: "full".into(),
                actor: "ops".into(),
            },
        );
        assert_eq!(change.erase.map(|e| e.events), Some(CALL_EVENTS_MAX + 1));
        assert_eq!(s.call(id).last_sequence_number, CALL_EVENTS_MAX + 2);
        assert!(
            s.events_of(id)
                .iter()
                .rev()
                .skip(1)
                .all(|e| e.payload == Payload::Json(domain::ERASED_PAYLOAD.into()))
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Determinism
// ------------------------------------------------------------------------------------------------

mod determinism {
    use super::*;

    /// A script touching every rule: successes, rejections, replays, refusals, a lagging clock.
    fn script(s: &mut Scenario) -> Vec<Decision> {
        let mut decisions = Vec::new();
        let mut send = |s: &mut Scenario, tenant: &str, request_id: &str, command: Command| {
            decisions.push(s.send(tenant, request_id, command));
        };
        let a = minted(1);
        let b = minted(2);
        send(s, ACME, "c1", create_call());
        send(s, GLOBEX, "c1", create_call());
        send(s, ACME, "t0", turn(a, "too early"));
        send(s, ACME, "s1", start(a));
        send(s, GLOBEX, "s1", start(b));
        send(
            s,
            ACME,
            "x1",
            context(a, Some("billing"), &[("account", "42")]),
        );
        for n in 0..30 {
            send(
                s,
                ACME,
                &format!("t{}", n + 1),
                turn(a, &format!("utterance {n}")),
            );
            if n % 7 == 0 {
                send(s, GLOBEX, &format!("e{n}"), semantic(b, "intent.detected"));
            }
        }
        send(s, ACME, "s1", start(a));
        send(s, ACME, "s1", end(a));
        send(s, GLOBEX, "snoop", turn(a, "not yours"));
        s.set_clock(T0_MS);
        send(s, ACME, "h1", handoff(a));
        send(s, ACME, "h2", handoff(a));
        send(s, ACME, "h1", handoff(a));
        send(
            s,
            ACME,
            "x2",
            context(a, Some("refund"), &[("account", "")]),
        );
        send(s, GLOBEX, "bad", semantic(b, event_type::CALL_ENDED));
        send(s, GLOBEX, "end", end(b));
        send(s, GLOBEX, "late", turn(b, "hello?"));
        send(s, ACME, "", start(a));
        s.set_clock(T0_MS + IDEMPOTENCY_WINDOW_MS * 2);
        send(s, ACME, "s1", start(a));
        send(s, ACME, "end", end(a));
        decisions
    }

    #[test]
    fn the_same_script_yields_identical_decisions_and_state() {
        let mut first = Scenario::new();
        let mut second = Scenario::new();
        let first_decisions = script(&mut first);
        let second_decisions = script(&mut second);
        assert_eq!(first_decisions, second_decisions);
        assert_eq!(first.stored(), second.stored());
        assert_eq!(first.remembered, second.remembered);
        assert_eq!(first.head, second.head);

        // The script exercised every kind of decision.
        let count =
            |pred: fn(&Decision) -> bool| first_decisions.iter().filter(|d| pred(d)).count();
        assert!(count(|d| matches!(d, Decision::Applied { .. })) > 30);
        assert!(count(|d| matches!(d, Decision::Rejected { .. })) >= 4);
        assert_eq!(count(|d| matches!(d, Decision::Replay(_))), 2);
        assert_eq!(count(|d| matches!(d, Decision::Refused(_))), 2);
        assert_eq!(first.state(minted(1)), CallState::Ended);
        assert_eq!(first.state(minted(2)), CallState::Ended);
    }

    #[test]
    fn apply_is_a_pure_function_of_head_view_and_request() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        s.ok(ACME, turn(id, "hello"));
        let request = Request {
            tenant_id: ACME.into(),
            request_id: "h".into(),
            command: handoff(id),
            stamp: Stamp {
                at_ms: s.clock_ms,
                minted_call_id: None,
                minted_trace_id: None,
            },
            redactions: Default::default(),
        };
        let turns = s.turns_of(id);
        let view = View {
            call: Some(s.call(id)),
            recent_turns: &turns,
        };
        let first = apply(s.head, view, &request);
        let second = apply(s.head, view, &request);
        assert_eq!(first, second);
        let change = first.expect("handoff from ACTIVE");
        assert_eq!(change.state(), CallState::HandedOff);
        // The stored call is untouched: apply returns the change, the caller writes it.
        assert_eq!(s.state(id), CallState::Active);
    }
}

// ------------------------------------------------------------------------------------------------
// Erasure
// ------------------------------------------------------------------------------------------------

mod erasure {
    use super::*;
    use domain::ERASED_PAYLOAD;

    const ACTOR: &str = "ops@acme";

    fn erase(call_id: CallId) -> Command {
        Command::EraseCall {
            call_id,
            reason: "data subject request 42".into(),
            actor: ACTOR.into(),
        }
    }

    /// A handed-off call holding content everywhere it can: turns, summary, entities, a semantic
    /// event with metadata, the handoff's reason, target and snapshot.
    fn call_with_content(s: &mut Scenario) -> CallId {
        let id = s.active(ACME);
        s.ok(ACME, turn(id, "my card is 4111 1111 1111 1111"));
        s.ok(ACME, turn(id, "and my phone is 0412 345 678"));
        s.ok(
            ACME,
            context(id, Some("caller disputes a charge"), &[("card", "4111")]),
        );
        s.ok(ACME, semantic(id, "intent.detected"));
        s.ok(ACME, handoff(id));
        id
    }

    #[test]
    fn erase_replaces_turns_context_handoff_and_event_payloads_with_tombstones() {
        let mut s = Scenario::new();
        let id = call_with_content(&mut s);
        let before = s.call(id).clone();
        let events_before: Vec<Event> = s.events_of(id).into_iter().cloned().collect();

        let change = s.ok(ACME, erase(id));

        let call = s.call(id);
        assert_eq!(call.summary, "");
        assert!(call.entities.is_empty());
        assert!(call.metadata.is_empty());
        assert_eq!(call.source, "", "the source may be the caller's number");
        let handoff = s.handoff_of(id);
        assert_eq!(handoff.reason, "");
        assert_eq!(handoff.target, None);
        assert_eq!(handoff.snapshot.summary, "");
        assert!(handoff.snapshot.entities.is_empty());
        assert_eq!(handoff.snapshot.recent_turns.len(), 2);
        for turn in handoff.snapshot.recent_turns.iter().chain(&s.turns_of(id)) {
            assert_eq!(turn.text, "");
            assert_eq!(turn.speaker, "");
            assert_eq!(turn.language, "");
        }
        let events = s.events_of(id);
        assert_eq!(events.len(), events_before.len() + 1);
        for (erased, original) in events.iter().zip(&events_before) {
            assert_eq!(erased.payload, Payload::Json(ERASED_PAYLOAD.into()));
            assert!(erased.metadata.is_empty());
            assert_eq!(erased.position, original.position);
            assert_eq!(erased.event_id, original.event_id);
            assert_eq!(erased.event_type, original.event_type);
            assert_eq!(erased.sequence_number, original.sequence_number);
            assert_eq!(erased.at_ms, original.at_ms);
        }
        let erasure = call.erased.expect("the call is marked erased");
        assert_eq!(change.erase, Some(erasure));
        assert_eq!(erasure.turns, 2);
        assert_eq!(erasure.events, before.last_sequence_number);
        assert_eq!(erasure.entities, 1);
        assert_eq!(erasure.position, change.events[0].position);
        assert!(
            format!("{:?}", s.stored()).find("4111").is_none(),
            "no trace of the content is left in the state"
        );
    }

    #[test]
    fn erase_keeps_the_lifecycle_skeleton() {
        let mut s = Scenario::new();
        let id = call_with_content(&mut s);
        s.ok(ACME, end(id));
        let before = s.call(id).clone();
        s.ok(ACME, erase(id));
        let call = s.call(id);
        assert_eq!(call.call_id, before.call_id);
        assert_eq!(call.tenant_id, before.tenant_id);
        assert_eq!(call.state(), CallState::Ended);
        assert_eq!(call.channel, before.channel);
        assert_eq!(call.trace_id, before.trace_id);
        assert_eq!(call.room_name, before.room_name);
        assert_eq!(call.created_at_ms, before.created_at_ms);
        assert_eq!(
            call.lifecycle.started_at_ms(),
            before.lifecycle.started_at_ms()
        );
        assert_eq!(call.turn_count, before.turn_count);
        assert_eq!(call.last_sequence_number, before.last_sequence_number + 1);
        let Lifecycle::Ended {
            ended_at_ms,
            reason,
            resolution,
            handoff,
            ..
        } = &call.lifecycle
        else {
            panic!("still ended");
        };
        let Lifecycle::Ended {
            ended_at_ms: ended_before,
            handoff: handoff_before,
            ..
        } = &before.lifecycle
        else {
            panic!("was ended");
        };
        assert_eq!(ended_at_ms, ended_before);
        assert_eq!((reason.as_str(), resolution.as_str()), ("", ""));
        let (handoff, handoff_before) = (handoff.as_ref(), handoff_before.as_ref());
        assert_eq!(
            handoff.map(|h| (h.at_ms, h.position, h.urgency)),
            handoff_before.map(|h| (h.at_ms, h.position, h.urgency))
        );
        assert_eq!(
            s.turns_of(id)
                .iter()
                .map(|t| (t.index, t.position, t.appended_at_ms))
                .collect::<Vec<_>>(),
            vec![(1, 3, T0_MS + 2 * TICK_MS), (2, 4, T0_MS + 3 * TICK_MS)]
        );
    }

    #[test]
    fn erase_records_a_call_erased_event_with_the_actor_reason_and_counts() {
        let mut s = Scenario::new();
        let id = call_with_content(&mut s);
        let change = s.ok(ACME, erase(id));
        let call = s.call(id).clone();
        let event = s.log.last().expect("an event").clone();
        assert_eq!(change.events, vec![event.clone()]);
        assert_event(
            &event,
            &call,
            event_type::CALL_ERASED,
            call.last_position,
            call.last_sequence_number,
            event.at_ms,
        );
        assert_eq!(
            payload_json(&event),
            serde_json::json!({
                "actor": ACTOR,
                "reason": "data subject request 42",
                "turns": 2,
                "events": 7,
                "entities": 1,
            })
        );
    }

    #[test]
    fn erase_is_allowed_in_every_state_and_keeps_the_state() {
        for state in CallState::ALL {
            let mut s = Scenario::new();
            let id = s.call_in(ACME, state);
            s.ok(ACME, erase(id));
            assert_eq!(s.state(id), state, "erase from {state}");
            assert!(s.call(id).erased.is_some());
        }
    }

    #[test]
    fn every_other_command_on_an_erased_call_is_rejected_as_call_erased() {
        for state in CallState::ALL {
            let mut s = Scenario::new();
            let id = s.call_in(ACME, state);
            s.ok(ACME, erase(id));
            let before = s.stored();
            for command in every_call_command(id) {
                let kind = command.kind();
                assert_eq!(
                    s.rejected(ACME, command),
                    Rejection::CallErased {
                        call_id: id,
                        command: kind
                    },
                    "{kind} on a call erased in {state}"
                );
            }
            assert_eq!(s.stored(), before, "an erased call takes no content");
        }
    }

    #[test]
    fn a_second_erase_answers_like_the_first_and_changes_nothing() {
        let mut s = Scenario::new();
        let id = call_with_content(&mut s);
        let first = outcome_of_applied(s.send(ACME, "erase-1", erase(id)));
        let before = s.stored();
        let second = s.send(ACME, "erase-2", erase(id));
        let Decision::Applied {
            change, outcome, ..
        } = second
        else {
            panic!("a second erase is applied, got {second:?}");
        };
        assert!(change.events.is_empty(), "no second call.erased event");
        assert_eq!(change.erase, None, "nothing left to erase");
        assert_eq!(outcome.result, first.result, "same receipt");
        assert_eq!(s.stored(), before);
        // The same request id is a replay of the first outcome.
        assert_eq!(s.send(ACME, "erase-1", erase(id)), Decision::Replay(first));
    }

    #[test]
    fn erase_leaves_other_calls_untouched() {
        let mut s = Scenario::new();
        let other = call_with_content(&mut s);
        let id = call_with_content(&mut s);
        let other_call = s.call(other).clone();
        let other_turns = s.turns_of(other);
        let other_events: Vec<Event> = s.events_of(other).into_iter().cloned().collect();
        s.ok(ACME, erase(id));
        assert_eq!(s.call(other), &other_call);
        assert_eq!(s.turns_of(other), other_turns);
        assert_eq!(
            s.events_of(other).into_iter().cloned().collect::<Vec<_>>(),
            other_events
        );
    }

    #[test]
    fn erase_of_another_tenants_call_is_unknown_and_erases_nothing() {
        let mut s = Scenario::new();
        let id = call_with_content(&mut s);
        let before = s.stored();
        assert_eq!(
            s.rejected(GLOBEX, erase(id)),
            Rejection::UnknownCall { call_id: id }
        );
        assert_eq!(s.stored(), before);
    }

    #[test]
    fn erase_needs_an_actor_and_bounds_the_reason() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        let invalid = s.invalid(
            ACME,
            Command::EraseCall {
                call_id: id,
                reason: String::new(),
                actor: String::new(),
            },
        );
        assert_eq!(invalid, Invalid::new(Field::Actor, Problem::Empty));
        let invalid = s.invalid(
            ACME,
            Command::EraseCall {
                call_id: id,
                reason: "x".repeat(domain::limits::REASON_BYTES_MAX + 1),
                actor: ACTOR.into(),
            },
        );
        assert_eq!(invalid.field, Field::Reason);
        assert!(s.call(id).erased.is_none());
    }

    #[test]
    fn clients_may_not_log_a_call_erased_event() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        let invalid = s.invalid(ACME, semantic(id, event_type::CALL_ERASED));
        assert_eq!(invalid, Invalid::new(Field::EventType, Problem::Reserved));
    }
}

// ------------------------------------------------------------------------------------------------
// PII redaction: the leader redacts before proposing; the events record what it redacted
// ------------------------------------------------------------------------------------------------

mod redaction {
    use super::*;

    #[track_caller]
    fn applied(decision: Decision) -> Change {
        match decision {
            Decision::Applied { change, .. } => *change,
            other => panic!("expected the command to be applied, got {other:?}"),
        }
    }

    #[test]
    fn a_redacted_turn_is_stored_masked_and_its_event_records_kinds_and_counts() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        let change = applied(s.send_redacted(
            ACME,
            "turn-1",
            turn(
                id,
                "card 4111 1111 1111 1111, mail jo@example.com or jo@example.org",
            ),
            Redactor::Mask,
        ));
        let stored = &s.turns_of(id)[0];
        assert_eq!(stored.text, "card [CARD], mail [EMAIL] or [EMAIL]");
        let event = s.events_of(id).last().copied().expect("turn.appended");
        assert_eq!(event, &change.events[0]);
        assert_eq!(event.event_type, event_type::TURN_APPENDED);
        assert_eq!(payload_json(event)["text"], stored.text.as_str());
        assert_eq!(
            event
                .metadata
                .get(REDACTIONS_METADATA_KEY)
                .map(String::as_str),
            Some(r#"{"card":1,"email":2}"#)
        );
    }

    #[test]
    fn a_request_without_pii_records_no_redactions() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        applied(s.send_redacted(ACME, "turn-1", turn(id, "hello there"), Redactor::Mask));
        for event in s.events_of(id) {
            assert!(
                !event.metadata.contains_key(REDACTIONS_METADATA_KEY),
                "{event:?}"
            );
        }
    }

    #[test]
    fn redacted_context_reaches_the_call_and_the_handoff_snapshot_masked() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        applied(s.send_redacted(
            ACME,
            "ctx",
            context(
                id,
                Some("caller lives at 12 Smith St, Ryde NSW 2112"),
                &[("phone", "0412 345 678"), ("plan", "gold")],
            ),
            Redactor::Mask,
        ));
        let event = s.events_of(id).last().copied().expect("context.updated");
        assert_eq!(
            event
                .metadata
                .get(REDACTIONS_METADATA_KEY)
                .map(String::as_str),
            Some(r#"{"address":1,"phone":1}"#)
        );
        applied(s.send_redacted(ACME, "handoff", handoff(id), Redactor::Mask));
        let snapshot = s.handoff_of(id).snapshot;
        assert_eq!(snapshot.summary, "caller lives at [ADDRESS]");
        assert_eq!(
            snapshot.entities,
            labels(&[("phone", "[PHONE]"), ("plan", "gold")])
        );
        assert_eq!(s.call(id).entities, snapshot.entities);
    }

    #[test]
    fn a_retried_redacted_request_is_replayed_not_refused() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        let raw = || turn(id, "my card is 4111111111111111");
        let first = outcome_of_applied(s.send_redacted(ACME, "t", raw(), Redactor::Mask));
        match s.send_redacted(ACME, "t", raw(), Redactor::Mask) {
            Decision::Replay(outcome) => assert_eq!(outcome, first),
            other => panic!("expected a replay, got {other:?}"),
        }
        assert_eq!(s.turns_of(id).len(), 1);
    }
}

// ------------------------------------------------------------------------------------------------
// Agent activity
// ------------------------------------------------------------------------------------------------

mod activity {
    use domain::limits::{ACTIVITY_COMPACT_PER_ENTRY_MAX, RETENTION_AGE_MS_MIN};
    use domain::{
        Activity, ActivityChange, ActivityInput, ActivityReceipt, ActivityStatus, ActivityType,
        Retention, Severity,
    };

    use super::*;

    fn entry(task: &str, call_id: Option<CallId>) -> ActivityInput {
        ActivityInput {
            activity_type: ActivityType::Progress,
            activity: Activity {
                agent_type: "agent-api".into(),
                agent_name: "API Agent".into(),
                project_id: "P-1".into(),
                task_id: task.into(),
                task_description: "build the endpoint".into(),
                severity: Severity::Info,
                status: ActivityStatus::InProgress,
                message: "halfway".into(),
            },
            call_id,
            payload: r#"{"percent":50}"#.into(),
            metadata: Labels::new(),
        }
    }

    fn record(entries: Vec<ActivityInput>) -> Command {
        Command::RecordActivity { entries }
    }

    impl Scenario {
        #[track_caller]
        fn recorded(&mut self, tenant: &str, command: Command) -> ActivityChange {
            let request_id = self.fresh_request_id();
            match self.send(tenant, &request_id, command) {
                Decision::Recorded { change, .. } => *change,
                other => panic!("expected the activity command to apply, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_batch_takes_consecutive_positions_between_call_events() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        let change = s.recorded(
            ACME,
            record(vec![entry("T-1", None), entry("T-2", Some(id))]),
        );
        assert_eq!(
            change.receipt(),
            ActivityReceipt {
                first_position: 3,
                last_position: 4,
                compacted: 0,
                more: false
            }
        );
        let records: Vec<&Event> = s.log.iter().filter(|e| e.activity.is_some()).collect();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].event_type, "agent.progress");
        assert_eq!(records[0].call_id, None);
        assert_eq!(records[0].sequence_number, 1);
        assert_eq!(records[0].trace_id, "");
        // A record about a call carries the call's id and trace, and leaves its sequence alone.
        assert_eq!(records[1].call_id, Some(id));
        assert_eq!(records[1].trace_id, s.call(id).trace_id);
        assert_eq!(s.call(id).last_sequence_number, 2);
        assert_eq!(s.ok(ACME, turn(id, "next")).events[0].position, 5);
    }

    #[test]
    fn a_record_about_an_unknown_or_foreign_call_rejects_the_whole_batch() {
        let mut s = Scenario::new();
        let theirs = s.create(GLOBEX);
        let before = s.stored();
        for call in [GHOST, theirs] {
            assert_eq!(
                s.rejected(
                    ACME,
                    record(vec![entry("T-1", None), entry("T-2", Some(call))])
                ),
                Rejection::UnknownCall { call_id: call }
            );
        }
        assert_eq!(s.stored(), before, "nothing of a rejected batch is written");
    }

    #[test]
    fn invalid_entries_are_rejected_naming_the_field() {
        let mut s = Scenario::new();
        let mut long = entry("T", None);
        long.activity.agent_type = "x".repeat(101);
        assert_eq!(s.invalid(ACME, record(vec![long])).field, Field::AgentType);
        assert_eq!(s.invalid(ACME, record(vec![])).field, Field::Entries);
        let mut not_json = entry("T", None);
        not_json.payload = "{".into();
        assert_eq!(
            s.invalid(ACME, record(vec![not_json])).field,
            Field::Payload
        );
    }

    #[test]
    fn a_retried_batch_is_answered_once() {
        let mut s = Scenario::new();
        let first = s.send(ACME, "batch-1", record(vec![entry("T", None)]));
        let Decision::Recorded { outcome, .. } = first else {
            panic!("recorded");
        };
        assert_eq!(
            s.send(ACME, "batch-1", record(vec![entry("T", None)])),
            Decision::Replay(outcome)
        );
        assert_eq!(s.activity_of(ACME).count(), 1);
    }

    #[test]
    fn retention_by_count_keeps_the_newest_and_never_touches_calls() {
        let mut s = Scenario::new();
        let id = s.active(ACME);
        for n in 0..5 {
            s.recorded(ACME, record(vec![entry(&format!("T-{n}"), Some(id))]));
        }
        s.recorded(GLOBEX, record(vec![entry("G", None)]));
        let set = s.recorded(
            ACME,
            Command::SetRetention {
                retention: Retention {
                    age_ms: None,
                    records: Some(2),
                },
            },
        );
        assert_eq!(set.compacted.len(), 3);
        let kept: Vec<&str> = s
            .activity_of(ACME)
            .map(|e| e.activity.as_ref().map_or("", |a| a.task_id.as_str()))
            .collect();
        assert_eq!(kept, ["T-3", "T-4"]);
        // Recording past the bound compacts in the same entry.
        let change = s.recorded(ACME, record(vec![entry("T-5", None)]));
        assert_eq!(change.compacted.len(), 1);
        assert_eq!(s.activity_of(ACME).count(), 2);
        assert_eq!(s.activity_of(GLOBEX).count(), 1, "another tenant's stays");
        assert_eq!(
            s.log.iter().filter(|e| e.activity.is_none()).count(),
            2,
            "call events are never compacted"
        );
    }

    #[test]
    fn retention_by_age_uses_the_leaders_clock_and_a_bounded_number_per_entry() {
        let mut s = Scenario::new();
        let n = ACTIVITY_COMPACT_PER_ENTRY_MAX + 50;
        for chunk in 0..n.div_ceil(100) {
            let size = (n - chunk * 100).min(100);
            s.recorded(ACME, record(vec![entry("old", None); size]));
        }
        s.recorded(
            ACME,
            Command::SetRetention {
                retention: Retention {
                    age_ms: Some(RETENTION_AGE_MS_MIN),
                    records: None,
                },
            },
        );
        assert_eq!(s.activity_of(ACME).count(), n, "nothing is old yet");
        s.set_clock(s.clock_ms + RETENTION_AGE_MS_MIN + 1_000);
        s.recorded(ACME, record(vec![entry("new", None)]));
        let compacted = s.recorded(ACME, Command::CompactActivity);
        assert_eq!(compacted.receipt().compacted, 50);
        assert!(!compacted.more);
        let tasks: Vec<&str> = s
            .activity_of(ACME)
            .map(|e| e.activity.as_ref().map_or("", |a| a.task_id.as_str()))
            .collect();
        assert_eq!(tasks, ["new"]);
    }

    #[test]
    fn retention_is_validated() {
        let mut s = Scenario::new();
        let invalid = s.invalid(
            ACME,
            Command::SetRetention {
                retention: Retention {
                    age_ms: Some(1),
                    records: None,
                },
            },
        );
        assert_eq!(invalid.field, Field::Retention);
    }

    #[test]
    fn activity_text_is_redacted_before_it_is_proposed() {
        let mut s = Scenario::new();
        let mut e = entry("T", None);
        e.activity.message = "call me at jane@example.com".into();
        e.payload = r#"{"email":"jane@example.com"}"#.into();
        let decision = s.send_redacted(ACME, "r", record(vec![e]), Redactor::Mask);
        assert!(
            matches!(decision, Decision::Recorded { .. }),
            "{decision:?}"
        );
        let stored = s.activity_of(ACME).next().expect("recorded");
        let activity = stored.activity.as_ref().expect("typed");
        assert!(!activity.message.contains("jane@"), "{}", activity.message);
        assert!(!format!("{:?}", stored.payload).contains("jane@"));
        assert!(stored.metadata.contains_key(REDACTIONS_METADATA_KEY));
    }
}
