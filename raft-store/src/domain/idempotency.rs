//! Idempotency: a `(tenant, request_id)` is answered with its first outcome for a bounded window.
//!
//! The window is measured in leader-stamped time held by the state machine's clock, so every
//! replica expires the same records at the same log index.

use serde::{Deserialize, Serialize};

use super::apply::{self, Change, View};
use super::command::{Rejection, Request};
use super::model::{CallId, CallState, Head};
use crate::limits::IDEMPOTENCY_WINDOW_MS;

/// What an accepted command did, in a form small enough to remember per request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub call_id: CallId,
    pub state: CallState,
    pub turn_index: Option<u64>,
    pub first_position: u64,
    pub last_position: u64,
}

/// The outcome of a request: applied at a log index, or rejected there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub index: u64,
    pub result: Result<Receipt, Rejection>,
}

/// The remembered first outcome of a `(tenant, request_id)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    pub fingerprint: [u8; 32],
    pub at_ms: u64,
    pub outcome: Outcome,
}

impl Remembered {
    pub fn expired_at(&self, clock_ms: u64) -> bool {
        clock_ms > self.at_ms.saturating_add(IDEMPOTENCY_WINDOW_MS)
    }
}

/// What the state machine must do with one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A retry: answer with the original outcome, change nothing.
    Replay(Outcome),
    /// Not applied and not remembered (the idempotency key itself is unusable or reused).
    Refused(Outcome),
    /// Applied: store the change and remember the outcome.
    Applied {
        change: Box<Change>,
        outcome: Outcome,
        remember: Remembered,
    },
    /// Rejected by a domain rule: remember the rejection so a retry gets the same answer.
    Rejected {
        outcome: Outcome,
        remember: Remembered,
    },
}

/// Decides one request at log `index`: idempotency first, then the transition function.
///
/// `clock_ms` in the returned change (or the caller's head, for the other outcomes) never goes
/// back; see [`Head::clock_ms`].
pub fn decide(
    head: Head,
    remembered: Option<&Remembered>,
    view: View<'_>,
    request: &Request,
    index: u64,
) -> Decision {
    let clock_ms = head.clock_ms.max(request.stamp.at_ms);
    let refused = |rejection| {
        Decision::Refused(Outcome {
            index,
            result: Err(rejection),
        })
    };
    if let Err(invalid) = request.validate_envelope() {
        return refused(Rejection::Invalid(invalid));
    }

    let fingerprint = request.command.fingerprint();
    if let Some(record) = remembered.filter(|r| !r.expired_at(clock_ms)) {
        if record.fingerprint == fingerprint {
            return Decision::Replay(record.outcome.clone());
        }
        return refused(Rejection::RequestIdReused {
            request_id: request.request_id.clone(),
        });
    }

    match apply::apply(head, view, request) {
        Ok(change) => {
            let outcome = Outcome {
                index,
                result: Ok(Receipt {
                    call_id: change.call.call_id,
                    state: change.call.state(),
                    turn_index: change.turn.as_ref().map(|turn| turn.index),
                    first_position: change.events.first().map_or(0, |e| e.position),
                    last_position: change.events.last().map_or(0, |e| e.position),
                }),
            };
            Decision::Applied {
                remember: Remembered {
                    fingerprint,
                    at_ms: clock_ms,
                    outcome: outcome.clone(),
                },
                change: Box::new(change),
                outcome,
            }
        }
        Err(rejection) => {
            let outcome = Outcome {
                index,
                result: Err(rejection),
            };
            Decision::Rejected {
                remember: Remembered {
                    fingerprint,
                    at_ms: clock_ms,
                    outcome: outcome.clone(),
                },
                outcome,
            }
        }
    }
}
