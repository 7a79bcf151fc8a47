//! The framing of the `request` fuzz target's input: a short sequence of encoded write requests.
//!
//! Each frame is `kind: u8 | advance: u8 | len: u16 (little-endian) | message: [u8; len]`.
//! `kind` selects the write RPC whose request message follows (modulo [`KINDS`]); `advance`
//! moves the leader's clock forward by `advance * ADVANCE_MS` before the request is stamped, so
//! that the idempotency window can be crossed. A truncated last frame ends the sequence.

/// Most requests decided per input: enough to create, start, fill, hand off and end a call and
/// retry some of it, few enough to keep an execution fast.
pub const STEPS_MAX: usize = 24;
/// Clock step per unit of a frame's `advance` (30 s): 120 units cross the 1-hour window.
pub const ADVANCE_MS: u64 = 30_000;
/// The leader's clock at the first request.
pub const START_MS: u64 = 1_750_000_000_000;

/// The write RPCs, by the frame's `kind` (modulo their number).
pub const KINDS: [&str; 8] = [
    "CreateCall",
    "StartCall",
    "AppendTurn",
    "LogEvent",
    "UpdateContext",
    "RequestHandoff",
    "EndCall",
    "RecordActivity",
];

/// One frame of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Index into [`KINDS`].
    pub kind: usize,
    pub advance: u8,
    pub message: &'a [u8],
}

const HEADER_BYTES: usize = 4;

/// The frames of `data`, at most [`STEPS_MAX`].
pub fn frames(mut data: &[u8]) -> Vec<Frame<'_>> {
    let mut out = Vec::new();
    while out.len() < STEPS_MAX && data.len() >= HEADER_BYTES {
        let kind = usize::from(data[0]) % KINDS.len();
        let advance = data[1];
        let len = usize::from(u16::from_le_bytes([data[2], data[3]]));
        let Some(message) = data.get(HEADER_BYTES..HEADER_BYTES + len) else {
            break;
        };
        out.push(Frame {
            kind,
            advance,
            message,
        });
        data = &data[HEADER_BYTES + len..];
    }
    out
}

/// Encodes frames; messages longer than `u16::MAX` bytes are cut to it.
pub fn encode(frames: &[(usize, u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, advance, message) in frames {
        let len = message.len().min(usize::from(u16::MAX));
        out.push(u8::try_from(*kind).unwrap_or(u8::MAX));
        out.push(*advance);
        out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_le_bytes());
        out.extend_from_slice(&message[..len]);
    }
    out
}
