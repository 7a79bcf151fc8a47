//! Bytes → a short sequence of write requests → conversion, validation and `domain::decide`
//! against the in-memory state, asserting what decide promises (`switchboard_fuzz::request`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    switchboard_fuzz::request::run(data);
});
