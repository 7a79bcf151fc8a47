//! The whole step of one log entry: what to load, idempotency, the clock, tenancy, the
//! transition and its events, decided in one place.
//!
//! [`decide`] reads state only through a [`StateReader`] and returns a [`Step`]: data that says
//! what the entry answers and what it writes. The store interprets a step in RocksDB, tests
//! interpret it in memory ([`crate::memory`]); neither holds a domain rule.

use serde::{Deserialize, Serialize};

use crate::activity::{self, ActivityChange, Retention};
use crate::apply::{self, View};
use crate::command::{Rejection, Request};
use crate::idempotency::{CallReceipt, Decision, Outcome, Receipt, Remembered, expiry_cutoff_ms};
use crate::limits::{HANDOFF_TURNS_MAX, IDEMPOTENCY_PRUNE_PER_ENTRY_MAX};
use crate::model::{Call, CallId, Event, Head, Turn};

/// Read access to the applied state that [`decide`] may ask for; what it does not ask for it
/// does not need. Implemented by the store (over its write overlay) and by [`crate::memory`].
pub trait StateReader {
    type Error;

    /// The cluster head as of the previous entry.
    fn head(&self) -> Head;
    /// A call by id, whatever its tenant.
    fn call(&self, call_id: &CallId) -> Result<Option<Call>, Self::Error>;
    /// One turn of a call, by its index. Turn indexes are gap-free from 1 up to the call's
    /// `turn_count`, so a missing one is a damaged store: the reader reports it as its error.
    fn turn(&self, call_id: &CallId, index: u64) -> Result<Turn, Self::Error>;
    /// The remembered outcome of `(tenant_id, request_id)`, expired or not.
    fn remembered(
        &self,
        tenant_id: &str,
        request_id: &str,
    ) -> Result<Option<Remembered>, Self::Error>;
    /// Up to `limit` remembered requests stamped before `before_ms`, oldest first, from the
    /// expiry index (one row per remembered outcome ever written, until pruned).
    fn remembered_before(
        &self,
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<RequestKey>, Self::Error>;
    /// The tenant's activity retention, if one was set.
    fn retention(&self, tenant_id: &str) -> Result<Option<Retention>, Self::Error>;
    /// How many activity records the tenant holds.
    fn activity_held(&self, tenant_id: &str) -> Result<u64, Self::Error>;
    /// The tenant's oldest `limit` activity records, oldest first.
    fn oldest_activity(&self, tenant_id: &str, limit: usize) -> Result<Vec<Event>, Self::Error>;
}

/// A row of the expiry index: when a `(tenant, request_id)` outcome was remembered.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestKey {
    pub at_ms: u64,
    pub tenant_id: String,
    pub request_id: String,
}

/// An expiry-index row that leaves the idempotency window at this entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub key: RequestKey,
    /// The record is still the one this row indexes (a request id reused after expiring has a
    /// newer record, which stays).
    pub drop_record: bool,
}

/// Everything one log entry does.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The head after the entry: its clock never goes back.
    pub head: Head,
    /// Idempotency records that expire at this entry; written before the decision's writes.
    pub expired: Vec<Expired>,
    /// The answer and, for `Applied` and `Rejected`, the writes it implies.
    pub decision: Decision,
}

/// The state machine's clock after an entry stamped `stamp_ms`: the latest stamp seen, so a new
/// leader whose wall clock is behind the old one's never moves it back.
pub fn advance_clock(clock_ms: u64, stamp_ms: u64) -> u64 {
    clock_ms.max(stamp_ms)
}

/// Decides the request carried by the log entry at `index`.
///
/// In order: the clock advances to the stamp; idempotency records that left the window are
/// pruned (at most [`IDEMPOTENCY_PRUNE_PER_ENTRY_MAX`]); an unusable envelope is refused; a
/// remembered `(tenant, request_id)` is replayed (or refused when the command differs); else the
/// addressed call (and for a handoff its recent turns) is loaded and the transition decided.
pub fn decide<R: StateReader>(state: &R, request: &Request, index: u64) -> Result<Step, R::Error> {
    let before = state.head();
    let clock_ms = advance_clock(before.clock_ms, request.stamp.at_ms);
    let head = Head { clock_ms, ..before };
    let expired = expire(state, clock_ms)?;
    let (head, decision) = decide_request(state, request, index, head)?;
    Ok(Step {
        head,
        expired,
        decision,
    })
}

/// The decision on the request itself, and the head after it.
fn decide_request<R: StateReader>(
    state: &R,
    request: &Request,
    index: u64,
    head: Head,
) -> Result<(Head, Decision), R::Error> {
    let refused = |rejection| {
        Decision::Refused(Outcome {
            index,
            result: Err(rejection),
        })
    };
    if let Err(invalid) = request.validate_envelope() {
        return Ok((head, refused(Rejection::Invalid(invalid))));
    }
    let fingerprint = request.command.fingerprint();
    let remembered = state.remembered(&request.tenant_id, &request.request_id)?;
    if let Some(record) = remembered.filter(|r| !r.expired_at(head.clock_ms)) {
        let decision = if record.fingerprint == fingerprint {
            Decision::Replay(record.outcome)
        } else {
            refused(Rejection::RequestIdReused {
                request_id: request.request_id.clone(),
            })
        };
        return Ok((head, decision));
    }

    let remember = |outcome: &Outcome| Remembered {
        fingerprint,
        at_ms: head.clock_ms,
        outcome: outcome.clone(),
    };
    // A rejection is remembered like a success, so a retry gets the same answer.
    let rejected = |rejection| {
        let outcome = Outcome {
            index,
            result: Err(rejection),
        };
        (
            head,
            Decision::Rejected {
                remember: remember(&outcome),
                outcome,
            },
        )
    };
    if request.command.is_activity() {
        return Ok(match activity::decide(state, request, head)? {
            Ok(change) => {
                check_activity_continues(&head, &change);
                let outcome = Outcome {
                    index,
                    result: Ok(Receipt::Activity(change.receipt())),
                };
                (
                    change.head,
                    Decision::Recorded {
                        remember: remember(&outcome),
                        change: Box::new(change),
                        outcome,
                    },
                )
            }
            Err(rejection) => rejected(rejection),
        });
    }

    let call_id = request.command.call_id().or(request.stamp.minted_call_id);
    let call = match &call_id {
        Some(id) => state.call(id)?,
        None => None,
    };
    let recent_turns = match &call {
        Some(call) if request.command.needs_recent_turns() => {
            recent_turns(state, call, HANDOFF_TURNS_MAX)?
        }
        _ => Vec::new(),
    };
    let view = View {
        call: call.as_ref(),
        recent_turns: &recent_turns,
    };
    Ok(match apply::apply(head, view, request) {
        Ok(change) => {
            check_continues(&head, call.as_ref(), &change);
            let outcome = Outcome {
                index,
                result: Ok(Receipt::Call(CallReceipt {
                    call_id: change.call.call_id,
                    state: change.call.state(),
                    turn_index: change.turn.as_ref().map(|turn| turn.index),
                    first_position: change.positions().0,
                    last_position: change.positions().1,
                })),
            };
            (
                change.head,
                Decision::Applied {
                    remember: remember(&outcome),
                    change: Box::new(change),
                    outcome,
                },
            )
        }
        Err(rejection) => rejected(rejection),
    })
}

/// The expiry-index rows that leave the window at `clock_ms`, oldest first, bounded per entry so
/// that the work per entry is bounded and equal on every replica however batches are split.
fn expire<R: StateReader>(state: &R, clock_ms: u64) -> Result<Vec<Expired>, R::Error> {
    let Some(cutoff_ms) = expiry_cutoff_ms(clock_ms) else {
        return Ok(Vec::new());
    };
    let mut expired = Vec::new();
    for key in state.remembered_before(cutoff_ms, IDEMPOTENCY_PRUNE_PER_ENTRY_MAX)? {
        let record = state.remembered(&key.tenant_id, &key.request_id)?;
        expired.push(Expired {
            drop_record: record.is_some_and(|r| r.at_ms == key.at_ms),
            key,
        });
    }
    Ok(expired)
}

/// The call's last `max` turns, oldest first, by point reads.
fn recent_turns<R: StateReader>(state: &R, call: &Call, max: usize) -> Result<Vec<Turn>, R::Error> {
    let first = call.turn_count.saturating_sub(max as u64) + 1;
    let mut turns = Vec::with_capacity(max.min(usize::try_from(call.turn_count).unwrap_or(max)));
    for index in first..=call.turn_count {
        turns.push(state.turn(&call.call_id, index)?);
    }
    Ok(turns)
}

/// Postcondition of every activity change: its records continue the cluster's positions
/// without a gap and are the tenant's; what it removes is the tenant's activity, oldest first.
fn check_activity_continues(before: &Head, change: &ActivityChange) {
    for (offset, event) in (0u64..).zip(&change.events) {
        assert_eq!(
            event.position,
            before.next_position + offset,
            "event positions are gap-free"
        );
        assert!(event.activity.is_some() && event.tenant_id == change.tenant_id);
    }
    assert_eq!(
        change.head.next_position,
        before.next_position + change.events.len() as u64
    );
    assert!(
        change
            .compacted
            .iter()
            .all(|e| e.activity.is_some() && e.tenant_id == change.tenant_id),
        "compaction removes only the tenant's activity"
    );
    assert!(
        change
            .compacted
            .windows(2)
            .all(|w| w[0].position < w[1].position)
    );
}

/// Postcondition of every applied change: its events continue the cluster's positions and the
/// call's sequence numbers without a gap, and the head and the call point past them. A breach is
/// a bug that would make replicas' logs disagree with their numbering: stop rather than write.
fn check_continues(before: &Head, call_before: Option<&Call>, change: &apply::Change) {
    if change.events.is_empty() {
        // Only a repeated erase emits nothing, and it changes nothing.
        assert!(
            change.call.erased.is_some(),
            "an applied command emits events"
        );
        assert_eq!(
            call_before,
            Some(&change.call),
            "a repeated erase changes nothing"
        );
        assert_eq!(change.head.next_position, before.next_position);
        assert!(change.erase.is_none(), "a repeated erase erases nothing");
        return;
    }
    let last_sequence = call_before.map_or(0, |call| call.last_sequence_number);
    for (offset, event) in (0u64..).zip(&change.events) {
        assert_eq!(
            event.position,
            before.next_position + offset,
            "event positions are gap-free"
        );
        assert_eq!(
            event.sequence_number,
            last_sequence + offset + 1,
            "sequence numbers are gap-free per call"
        );
    }
    let last = change.events.last().expect("checked non-empty");
    assert_eq!(change.head.next_position, last.position + 1);
    assert_eq!(change.call.last_position, last.position);
    assert_eq!(change.call.last_sequence_number, last.sequence_number);
    assert!(
        change.head.clock_ms >= before.clock_ms,
        "the clock never goes back"
    );
}
