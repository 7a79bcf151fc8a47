//! Bytes → the log entry's request envelope (`Proposal`) and every stored record type through
//! `raft_store::codec::decode` (`RECORD_FORMAT` byte + postcard), as read back from RocksDB or
//! received from a peer.
//!
//! Promises checked: decoding never panics and never allocates what the bytes do not hold; what
//! decodes re-encodes to bytes that decode to the same encoding (a stable round trip).

#![no_main]

use domain::{Call, Event, Head, Remembered, Turn};
use libfuzzer_sys::fuzz_target;
use raft_store::codec::{Record, decode, encode};
use raft_store::marks::MarkValue;
use raft_store::{Entry, LogId, Proposal, StoredMembership, Vote};

const KEY: &[u8] = b"fuzz";

/// Decodes `bytes` as a `T`; when it decodes, checks that encoding is stable from there on.
fn record<T: Record>(what: &'static str, bytes: &[u8]) {
    let Ok(value) = decode::<T>(what, KEY, bytes) else {
        return;
    };
    let once = encode(&value);
    let again: T = decode(what, KEY, &once).expect("an encoded record decodes");
    assert_eq!(encode(&again), once, "{what} re-encodes differently");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(proposal) = Proposal::from_bytes(data) {
        let _ = proposal.to_string();
        let once = proposal.to_bytes();
        let again = Proposal::from_bytes(&once).expect("an encoded proposal decodes");
        assert_eq!(again.to_bytes(), once, "a proposal re-encodes differently");
    }
    record::<Entry>("raft log entry", data);
    record::<Vote>("vote", data);
    record::<LogId>("log id", data);
    record::<StoredMembership>("membership", data);
    record::<MarkValue>("raft marks", data);
    record::<Head>("head", data);
    record::<[u64; 4]>("call counts", data);
    record::<Call>("call", data);
    record::<Turn>("turn", data);
    record::<Event>("event", data);
    record::<Remembered>("remembered outcome", data);
});
