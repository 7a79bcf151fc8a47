//! The transition function: one `match (state, command)` decides every command.
//!
//! `apply` is deterministic: its only inputs are the call as stored, the cluster head, the
//! request and the leader's stamp. It reads no clock, does no I/O and draws no randomness.

use serde_json::json;

use super::command::{CallLimit, Command, Rejection, Request};
use super::decide::advance_clock;
use super::model::{
    Call, CallState, ContextSnapshot, Erasure, Event, Handoff, Head, Labels, Lifecycle, Payload,
    Turn, event_id, event_type,
};
use crate::limits::{CALL_EVENTS_MAX, CALL_TURNS_MAX, ENTITIES_MAX, HANDOFF_TURNS_MAX};
use crate::redact::REDACTIONS_METADATA_KEY;

/// What `apply` may look at besides the request.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// The addressed call (for `CreateCall`: the call stored under the minted id, if any).
    pub call: Option<&'a Call>,
    /// The call's latest turns, oldest first; only `RequestHandoff` reads them, and
    /// [`crate::decide`] loads them only for it (see [`Command::needs_recent_turns`]).
    pub recent_turns: &'a [Turn],
}

/// The effect of an accepted command.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Change {
    pub head: Head,
    /// The call's state before the command; `None` when the command created it.
    pub previous_state: Option<CallState>,
    /// The call after the command.
    pub call: Call,
    /// A turn to store, for `AppendTurn`.
    pub turn: Option<Turn>,
    /// Events appended, in position order; empty only for a repeated erase, which changes
    /// nothing.
    pub events: Vec<Event>,
    /// Set by an erase: the call's turns `1..=turns` and its events of sequence numbers
    /// `1..=events` are to be replaced by their tombstones ([`Turn::erased`],
    /// [`Event::erased`]), wherever they are stored.
    pub erase: Option<Erasure>,
}

impl Command {
    pub fn needs_recent_turns(&self) -> bool {
        matches!(self, Command::RequestHandoff { .. })
    }
}

/// Applies one request to the state it addresses.
pub fn apply(head: Head, view: View<'_>, request: &Request) -> Result<Change, Rejection> {
    request.validate().map_err(Rejection::Invalid)?;
    let at_ms = advance_clock(head.clock_ms, request.stamp.at_ms);
    let head = Head {
        clock_ms: at_ms,
        ..head
    };

    let call = match (&request.command, view.call) {
        (Command::CreateCall { .. }, Some(existing)) => {
            return Err(Rejection::CallExists {
                call_id: existing.call_id,
            });
        }
        (
            Command::CreateCall {
                source,
                channel,
                metadata,
                trace_id,
            },
            None,
        ) => {
            let call_id = request
                .stamp
                .minted_call_id
                .ok_or(Rejection::MissingStamp)?;
            let call = Call {
                call_id,
                tenant_id: request.tenant_id.clone(),
                source: source.clone(),
                channel: *channel,
                metadata: metadata.clone(),
                // The client's trace id, else the one the leader minted, in W3C trace-id form.
                trace_id: trace_id
                    .clone()
                    .filter(|id| !id.is_empty())
                    .or_else(|| {
                        request
                            .stamp
                            .minted_trace_id
                            .map(|id| id.simple().to_string())
                    })
                    .unwrap_or_default(),
                room_name: Call::room_name_for(&call_id),
                created_at_ms: at_ms,
                lifecycle: Lifecycle::Created,
                turn_count: 0,
                last_sequence_number: 0,
                last_position: 0,
                summary: String::new(),
                entities: Labels::new(),
                erased: None,
            };
            let payload = json!({
                "source": call.source,
                "channel": call.channel.as_str(),
                "room_name": call.room_name,
            });
            let mut change = Change {
                head,
                previous_state: None,
                call,
                turn: None,
                events: Vec::new(),
                erase: None,
            };
            change.emit(
                event_type::CALL_CREATED,
                Payload::Json(payload.to_string()),
                Labels::new(),
            )?;
            change.record_redactions(request);
            return Ok(change);
        }
        (command, None) => {
            let call_id = command.call_id().expect("only CreateCall has no call id");
            return Err(Rejection::UnknownCall { call_id });
        }
        // A call of another tenant does not exist for this one.
        (_, Some(call)) if !call.visible_to(&request.tenant_id) => {
            return Err(Rejection::UnknownCall {
                call_id: call.call_id,
            });
        }
        (_, Some(call)) => call,
    };

    let mut change = Change {
        head,
        previous_state: Some(call.state()),
        call: call.clone(),
        turn: None,
        events: Vec::new(),
        erase: None,
    };
    let call_id = call.call_id;
    // Erasure comes before the lifecycle: it is allowed in every state, and an erased call
    // takes no write but a repeated erase, which answers as the first did and changes nothing.
    match (&call.erased, &request.command) {
        (Some(_), Command::EraseCall { .. }) => return Ok(change),
        (Some(_), command) => {
            return Err(Rejection::CallErased {
                call_id,
                command: command.kind(),
            });
        }
        (None, Command::EraseCall { reason, actor, .. }) => {
            change.erase_content(reason, actor);
            return Ok(change);
        }
        (None, _) => {}
    }
    match (&call.lifecycle, &request.command) {
        (Lifecycle::Ended { .. }, command) => {
            return Err(Rejection::CallEnded {
                call_id,
                command: command.kind(),
            });
        }
        (Lifecycle::Created, Command::StartCall { .. }) => {
            change.call.lifecycle = Lifecycle::Active {
                started_at_ms: at_ms,
            };
            change.emit(
                event_type::CALL_STARTED,
                Payload::Json("{}".into()),
                Labels::new(),
            )?;
        }
        (
            Lifecycle::Active { .. } | Lifecycle::HandedOff { .. },
            Command::AppendTurn {
                speaker,
                text,
                confidence,
                language,
                spoken_at_ms,
                ..
            },
        ) => {
            if call.turn_count >= CALL_TURNS_MAX {
                return Err(Rejection::CallLimitReached {
                    call_id,
                    limit: CallLimit::Turns,
                    max: CALL_TURNS_MAX,
                });
            }
            let index = call.turn_count + 1;
            let payload = json!({
                "index": index,
                "speaker": speaker,
                "text": text,
                // Via its shortest decimal form, so 0.93f32 reads 0.93 and not 0.9300000071525574.
                "confidence": confidence.to_string().parse::<f64>().expect("a float formats as a parsable float"),
                "language": language,
                "spoken_at_ms": spoken_at_ms,
            });
            let position = change.emit(
                event_type::TURN_APPENDED,
                Payload::Json(payload.to_string()),
                Labels::new(),
            )?;
            change.call.turn_count = index;
            change.turn = Some(Turn {
                index,
                speaker: speaker.clone(),
                text: text.clone(),
                confidence: *confidence,
                language: language.clone(),
                spoken_at_ms: *spoken_at_ms,
                appended_at_ms: at_ms,
                position,
            });
        }
        (
            Lifecycle::Active { .. } | Lifecycle::HandedOff { .. },
            Command::LogEvent {
                event_type,
                payload,
                metadata,
                ..
            },
        ) => {
            change.emit(event_type, payload.clone(), metadata.clone())?;
        }
        (
            Lifecycle::Created | Lifecycle::Active { .. } | Lifecycle::HandedOff { .. },
            Command::UpdateContext {
                summary, entities, ..
            },
        ) => {
            if let Some(summary) = summary {
                change.call.summary = summary.clone();
            }
            // An empty value removes the entity.
            for (key, value) in entities {
                if value.is_empty() {
                    change.call.entities.remove(key);
                } else {
                    change.call.entities.insert(key.clone(), value.clone());
                }
            }
            if change.call.entities.len() > ENTITIES_MAX {
                return Err(Rejection::CallLimitReached {
                    call_id,
                    limit: CallLimit::Entities,
                    max: ENTITIES_MAX as u64,
                });
            }
            let payload = json!({ "summary": summary, "entities": entities });
            change.emit(
                event_type::CONTEXT_UPDATED,
                Payload::Json(payload.to_string()),
                Labels::new(),
            )?;
        }
        (
            Lifecycle::Active { started_at_ms },
            Command::RequestHandoff {
                reason,
                urgency,
                target,
                ..
            },
        ) => {
            let payload = json!({
                "reason": reason,
                "urgency": urgency.as_str(),
                "target": target,
            });
            let position = change.emit(
                event_type::CALL_HANDED_OFF,
                Payload::Json(payload.to_string()),
                Labels::new(),
            )?;
            let skip = view.recent_turns.len().saturating_sub(HANDOFF_TURNS_MAX);
            change.call.lifecycle = Lifecycle::HandedOff {
                started_at_ms: *started_at_ms,
                handoff: Handoff {
                    reason: reason.clone(),
                    urgency: *urgency,
                    target: target.clone(),
                    at_ms,
                    position,
                    snapshot: ContextSnapshot {
                        summary: call.summary.clone(),
                        entities: call.entities.clone(),
                        recent_turns: view.recent_turns[skip..].to_vec(),
                    },
                },
            };
        }
        (Lifecycle::HandedOff { handoff, .. }, Command::RequestHandoff { .. }) => {
            return Err(Rejection::AlreadyHandedOff {
                call_id,
                at_position: handoff.position,
            });
        }
        (
            lifecycle,
            Command::EndCall {
                reason, resolution, ..
            },
        ) => {
            let from = lifecycle.state();
            let payload =
                json!({ "reason": reason, "resolution": resolution, "from": from.as_str() });
            change.emit(
                event_type::CALL_ENDED,
                Payload::Json(payload.to_string()),
                Labels::new(),
            )?;
            change.call.lifecycle = Lifecycle::Ended {
                started_at_ms: lifecycle.started_at_ms(),
                handoff: lifecycle.handoff().cloned(),
                ended_at_ms: at_ms,
                reason: reason.clone(),
                resolution: resolution.clone(),
            };
        }
        (lifecycle, command) => {
            return Err(Rejection::IllegalTransition {
                call_id,
                from: lifecycle.state(),
                command: command.kind(),
            });
        }
    }
    change.record_redactions(request);
    Ok(change)
}

impl Change {
    /// Replaces the call's content with tombstones and records the `call.erased` event; the
    /// turns and earlier events are named in `erase` for the store to replace.
    fn erase_content(&mut self, reason: &str, actor: &str) {
        let call = &mut self.call;
        let turns = call.turn_count;
        let events = call.last_sequence_number;
        let entities = call.entities.len() as u64;
        call.summary.clear();
        call.entities.clear();
        call.metadata.clear();
        // The source may be the caller's phone number.
        call.source.clear();
        call.lifecycle = call.lifecycle.erased();
        let payload = json!({
            "actor": actor,
            "reason": reason,
            "turns": turns,
            "events": events,
            "entities": entities,
        });
        let position = self
            .emit(
                event_type::CALL_ERASED,
                Payload::Json(payload.to_string()),
                Labels::new(),
            )
            .expect("call.erased is exempt from the per-call event limit");
        let erasure = Erasure {
            at_ms: self.head.clock_ms,
            position,
            turns,
            events,
            entities,
        };
        self.call.erased = Some(erasure);
        self.erase = Some(erasure);
    }

    /// The positions of the events the change appended, or for a repeated erase those of the
    /// first erase's event: `(first, last)`.
    pub fn positions(&self) -> (u64, u64) {
        match (self.events.first(), self.events.last(), &self.call.erased) {
            (Some(first), Some(last), _) => (first.position, last.position),
            (_, _, Some(erasure)) => (erasure.position, erasure.position),
            _ => (0, 0),
        }
    }

    /// Appends the call's next event at the cluster's next position; returns the position.
    fn emit(
        &mut self,
        event_type: &str,
        payload: Payload,
        metadata: Labels,
    ) -> Result<u64, Rejection> {
        // `call.ended` and `call.erased` are exempt so that a call at its event limit can still
        // be ended and erased.
        if self.call.last_sequence_number >= CALL_EVENTS_MAX
            && event_type != event_type::CALL_ENDED
            && event_type != event_type::CALL_ERASED
        {
            return Err(Rejection::CallLimitReached {
                call_id: self.call.call_id,
                limit: CallLimit::Events,
                max: CALL_EVENTS_MAX,
            });
        }
        let position = self.head.next_position;
        let sequence_number = self.call.last_sequence_number + 1;
        self.events.push(Event {
            position,
            event_id: event_id(position),
            event_type: event_type.to_owned(),
            call_id: Some(self.call.call_id),
            tenant_id: self.call.tenant_id.clone(),
            trace_id: self.call.trace_id.clone(),
            sequence_number,
            at_ms: self.head.clock_ms,
            payload,
            metadata,
            activity: None,
        });
        self.head.next_position = position + 1;
        self.call.last_sequence_number = sequence_number;
        self.call.last_position = position;
        Ok(position)
    }

    pub fn state(&self) -> CallState {
        self.call.state()
    }

    /// Records in every event of the change what the leader redacted from the request, under
    /// [`REDACTIONS_METADATA_KEY`]. Nothing for a request without redactions, so every entry of
    /// log-entry format 1 applies exactly as before.
    fn record_redactions(&mut self, request: &Request) {
        if request.redactions.is_empty() {
            return;
        }
        let summary = request.redactions.to_json();
        for event in &mut self.events {
            event
                .metadata
                .insert(REDACTIONS_METADATA_KEY.to_owned(), summary.clone());
        }
    }
}
