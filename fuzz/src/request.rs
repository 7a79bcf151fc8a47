//! The `request` target's driver: bytes → write request messages (prost, `proto::v1`) → the
//! node's wire→domain conversion → `Request::validate` → `domain::decide` against the in-memory
//! state, a short sequence at a time so that state-dependent rules (lifecycle, handoff, limits,
//! idempotency) are reached.
//!
//! What `decide` promises, asserted on every step: it never panics; an invalid request is never
//! applied; the clock never goes back; an applied change continues the event positions; a
//! rejected or refused request changes no call; a remembered request replays its outcome; the
//! log-entry envelope round-trips the request.
//!
//! Also compiled into `node/tests/fuzz_seeds.rs`, which runs the committed seeds through it.

use domain::memory::Memory;
use domain::{Command, Decision, Request, Stamp};
use node::convert::{self, WriteRequest};
use prost::Message;
use proto::v1;
use raft_store::Proposal;

use crate::frame::{self, ADVANCE_MS, START_MS};

fn write_request(kind: usize, message: &[u8]) -> Option<WriteRequest> {
    let converted = match kind {
        0 => convert::create_call(v1::CreateCallRequest::decode(message).ok()?),
        1 => convert::start_call(v1::StartCallRequest::decode(message).ok()?),
        2 => convert::append_turn(v1::AppendTurnRequest::decode(message).ok()?),
        3 => convert::log_event(v1::LogEventRequest::decode(message).ok()?),
        4 => convert::update_context(v1::UpdateContextRequest::decode(message).ok()?),
        5 => convert::request_handoff(v1::RequestHandoffRequest::decode(message).ok()?),
        6 => convert::end_call(v1::EndCallRequest::decode(message).ok()?),
        _ => convert::record_activity(v1::RecordActivityRequest::decode(message).ok()?),
    };
    converted.ok()
}

/// The call a `CreateCall` at log index `index` mints: seeds name these so that later requests
/// can address the calls earlier ones created.
pub fn minted_call_id(index: u64) -> uuid::Uuid {
    uuid::Uuid::from_u128(u128::from(index))
}

/// The leader's stamp, deterministic (see [`minted_call_id`]).
fn stamp(command: &Command, at_ms: u64, index: u64) -> Stamp {
    let creates = matches!(command, Command::CreateCall { .. });
    Stamp {
        at_ms,
        minted_call_id: creates.then(|| minted_call_id(index)),
        minted_trace_id: creates.then(|| uuid::Uuid::from_u128(u128::from(index) << 64 | 1)),
    }
}

/// Runs the requests framed in `data`; returns the state after them and each step's decision.
pub fn run(data: &[u8]) -> (Memory, Vec<Decision>) {
    let mut state = Memory::new();
    let mut decisions = Vec::new();
    let mut at_ms = START_MS;
    let mut index = 0u64;
    for frame in frame::frames(data) {
        at_ms += u64::from(frame.advance) * ADVANCE_MS;
        let Some(write) = write_request(frame.kind, frame.message) else {
            continue;
        };
        // The leader's redaction step (policy `mask`): what it refuses is never proposed.
        let Ok((command, redactions)) = domain::redact::Redactor::Mask.command(write.command)
        else {
            continue;
        };
        index += 1;
        let request = Request {
            stamp: stamp(&command, at_ms, index),
            tenant_id: write.tenant_id,
            request_id: write.request_id,
            command,
            redactions,
        };
        decisions.push(step(&mut state, &request, index));
    }
    (state, decisions)
}

/// Decides `request` at `index`, checks what decide promises, writes the step and returns its
/// decision.
fn step(state: &mut Memory, request: &Request, index: u64) -> Decision {
    let valid = request.validate().is_ok();

    let envelope = Proposal(request.clone()).to_bytes();
    let decoded = Proposal::from_bytes(&envelope).expect("an encoded request decodes");
    // Bytes, not values: a NaN confidence is not equal to itself.
    assert_eq!(
        decoded.to_bytes(),
        envelope,
        "the log-entry envelope round-trips"
    );

    let before = state.clone();
    let step = domain::decide(&*state, request, index).expect("memory reads never fail");
    assert!(
        step.head.clock_ms >= before.head.clock_ms,
        "clock went back"
    );
    assert!(
        step.head.clock_ms >= request.stamp.at_ms,
        "clock is behind the stamp"
    );
    state.write(request, &step);
    match &step.decision {
        Decision::Applied { change, .. } => {
            assert!(valid, "an invalid request was applied: {request:?}");
            let added = state.log.len() - before.log.len();
            assert_eq!(added, change.events.len());
            assert_eq!(
                state.head.next_position,
                before.head.next_position + added as u64
            );
            // The answers built from what was applied convert to the wire.
            let _ = convert::wire_call(&change.call);
            for event in &change.events {
                let _ = convert::wire_event(event);
            }
            if let Some(turn) = &change.turn {
                let _ = convert::wire_turn(turn);
            }
        }
        Decision::Recorded { change, .. } => {
            assert!(valid, "an invalid request was recorded: {request:?}");
            assert_eq!(
                state.head.next_position,
                before.head.next_position + change.events.len() as u64
            );
            assert_eq!(
                state.log.len() + change.compacted.len(),
                before.log.len() + change.events.len()
            );
            for event in &change.events {
                let _ = convert::wire_event(event);
            }
        }
        Decision::Rejected { outcome, .. }
        | Decision::Refused(outcome)
        | Decision::Replay(outcome) => {
            assert_eq!(
                state.calls, before.calls,
                "a non-applied request changed a call"
            );
            assert_eq!(state.log.len(), before.log.len());
            if let Err(rejection) = &outcome.result {
                let _ = convert::wire_rejection(rejection);
            }
        }
    }
    // A retry of what was just remembered, at the next index, replays the outcome.
    if let Decision::Applied { outcome, .. }
    | Decision::Recorded { outcome, .. }
    | Decision::Rejected { outcome, .. } = &step.decision
    {
        let again = domain::decide(&*state, request, index + 1).expect("memory reads");
        assert_eq!(
            again.decision,
            Decision::Replay(outcome.clone()),
            "a remembered request did not replay"
        );
    }
    step.decision
}
