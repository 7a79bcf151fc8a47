//! The pure domain core: call lifecycle, turns, context, handoff, event log, idempotency.
//!
//! Owns every rule of DESIGN §2. Must not do I/O, read a clock, log, or draw randomness: time and
//! minted ids arrive in the leader's [`Stamp`], state arrives as a [`View`], and the result is
//! data ([`Decision`]) that the storage layer writes. This is what makes every replica that
//! applies the same log reach byte-identical state.

mod apply;
mod command;
mod idempotency;
mod model;

pub use apply::{Change, View, apply};
pub use command::{CallLimit, Command, CommandKind, Rejection, Request, Stamp};
pub use idempotency::{Decision, Outcome, Receipt, Remembered, decide};
pub use model::{
    Call, CallId, CallState, Channel, ContextSnapshot, Event, Handoff, Head, Labels, Lifecycle,
    Payload, Turn, Urgency, event_id, event_type,
};
