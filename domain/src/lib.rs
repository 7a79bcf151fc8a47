//! The pure domain core: every aggregate's model, commands, events, rejections, limits, and
//! [`decide`], the whole step of one log entry.
//!
//! Owns every rule of DESIGN §2: the call lifecycle, turns, context, handoff, the event log,
//! idempotency, the state machine's clock, tenancy, and what state a command needs. Must not do
//! I/O, read a clock, log, or draw randomness (Cargo keeps rocksdb, tokio and openraft out of
//! reach): time and minted ids arrive in the leader's [`Stamp`], state is read through a
//! [`StateReader`], and the result is data ([`Step`]) that the store writes. This is what makes
//! every replica that applies the same log reach byte-identical state.

pub mod activity;
mod apply;
mod command;
mod decide;
mod filter;
mod idempotency;
pub mod limits;
pub mod memory;
mod model;
pub mod redact;

pub use activity::{
    Activity, ActivityChange, ActivityInput, ActivityStatus, ActivityType, Retention, Severity,
};
pub use apply::{Change, View, apply};
pub use command::{CallLimit, Command, CommandKind, Rejection, Request, Stamp};
pub use decide::{Expired, RequestKey, StateReader, Step, decide};
pub use filter::EventFilter;
pub use idempotency::{ActivityReceipt, CallReceipt, Decision, Outcome, Receipt, Remembered};
pub use model::{
    Call, CallId, CallState, Channel, ContextSnapshot, ERASED_PAYLOAD, Erasure, Event, Handoff,
    Head, Labels, Lifecycle, Payload, Turn, Urgency, event_id, event_type,
};
pub use redact::Redactions;
