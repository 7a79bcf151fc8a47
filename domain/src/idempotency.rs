//! Idempotency: a `(tenant, request_id)` is answered with its first outcome for a bounded window.
//!
//! The window is measured in leader-stamped time held by the state machine's clock, so every
//! replica expires the same records at the same log index.

use serde::{Deserialize, Serialize};

use super::apply::Change;
use super::command::Rejection;
use super::model::{CallId, CallState};
use crate::activity::ActivityChange;
use crate::limits::IDEMPOTENCY_WINDOW_MS;

/// Records stamped before this time have left the window at `clock_ms` (`None`: none has).
/// The one statement of the window rule: lookups and pruning both use it.
pub fn expiry_cutoff_ms(clock_ms: u64) -> Option<u64> {
    clock_ms.checked_sub(IDEMPOTENCY_WINDOW_MS)
}

/// What an accepted command did, in a form small enough to remember per request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Receipt {
    Call(CallReceipt),
    Activity(ActivityReceipt),
}

/// What a call command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallReceipt {
    pub call_id: CallId,
    pub state: CallState,
    pub turn_index: Option<u64>,
    pub first_position: u64,
    pub last_position: u64,
}

/// What an activity command did: the positions of the records it appended (both 0 when it
/// appended none) and how many old records it removed under the tenant's retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ActivityReceipt {
    pub first_position: u64,
    pub last_position: u64,
    pub compacted: u64,
    /// Whether records past the retention remain (another compaction would remove more).
    pub more: bool,
}

impl Receipt {
    pub fn call(&self) -> Option<&CallReceipt> {
        match self {
            Receipt::Call(receipt) => Some(receipt),
            Receipt::Activity(_) => None,
        }
    }

    pub fn activity(&self) -> Option<&ActivityReceipt> {
        match self {
            Receipt::Activity(receipt) => Some(receipt),
            Receipt::Call(_) => None,
        }
    }
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
        expiry_cutoff_ms(clock_ms).is_some_and(|cutoff_ms| self.at_ms < cutoff_ms)
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
    /// An activity command applied: store its records and removals, remember the outcome.
    Recorded {
        change: Box<ActivityChange>,
        outcome: Outcome,
        remember: Remembered,
    },
    /// Rejected by a domain rule: remember the rejection so a retry gets the same answer.
    Rejected {
        outcome: Outcome,
        remember: Remembered,
    },
}
