//! Bytes → a snapshot file → the snapshot reader and verifier (`raft_store::snapshot`), and the
//! state-machine records it yields → their stored-record decoders.
//!
//! The first input byte chooses whether the file is the rest of the input as is, or the rest
//! followed by its SHA-256: the second form passes the checksum whenever the framing is right,
//! so the fuzzer reaches what happens after a verified end as well as every framing error.
//!
//! Promises checked: reading never panics; a length prefix is never allocated before the file
//! is known to hold it (libFuzzer's `-malloc_limit_mb`, set by `scripts/fuzz`, turns a large
//! allocation into a crash); a file that verifies reads the same records again.

#![no_main]

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use domain::{Call, Event, Head, Remembered, Turn};
use libfuzzer_sys::fuzz_target;
use raft_store::codec::decode;
use raft_store::keys::{SM_CALL_COUNTS, SM_HEAD, SM_LAST_APPLIED, SM_MEMBERSHIP, table};
use raft_store::snapshot::{Records, verify};
use raft_store::{LogId, StoredMembership};
use sha2::{Digest, Sha256};

/// One file per fuzzing process, rewritten for every input; in memory (`/dev/shm`) where there
/// is one, for speed.
fn path() -> &'static PathBuf {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = DIR.get_or_init(|| {
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("a temporary directory");
        let path = dir.path().join("fuzz.snap");
        (dir, path)
    });
    path
}

/// Decodes a state-machine value by its key's table, as the reader would.
fn decode_value(key: &[u8], value: &[u8]) {
    let _ = match key {
        SM_LAST_APPLIED => decode::<LogId>("last applied", key, value).map(drop),
        SM_MEMBERSHIP => decode::<StoredMembership>("membership", key, value).map(drop),
        SM_HEAD => decode::<Head>("head", key, value).map(drop),
        SM_CALL_COUNTS => decode::<[u64; 4]>("call counts", key, value).map(drop),
        [table::CALL, ..] => decode::<Call>("call", key, value).map(drop),
        [table::TURN, ..] => decode::<Turn>("turn", key, value).map(drop),
        [table::EVENT, ..] => decode::<Event>("event", key, value).map(drop),
        [table::IDEMPOTENCY, ..] => decode::<Remembered>("remembered", key, value).map(drop),
        _ => Ok(()),
    };
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let path = path();
    {
        let mut file = std::fs::File::create(path).expect("create the snapshot file");
        file.write_all(body).expect("write the snapshot file");
        if mode & 1 == 1 {
            let digest: [u8; 32] = Sha256::digest(body).into();
            file.write_all(&digest).expect("write the checksum");
        }
    }
    let Ok((_, mut records)) = Records::open(path) else {
        return;
    };
    let mut read = Vec::new();
    loop {
        match records.next_record() {
            Ok(Some((key, value))) => {
                decode_value(&key, &value);
                read.push((key, value));
            }
            Ok(None) => break,
            Err(_) => return,
        }
    }
    // Verified: the verifier agrees, and a second read yields the same records.
    verify(path).expect("a file read to its verified end verifies");
    let (_, mut again) = Records::open(path).expect("a verified file opens");
    for expected in &read {
        let found = again.next_record().expect("a verified file reads");
        assert_eq!(found.as_ref(), Some(expected));
    }
    assert!(again.next_record().expect("verified end").is_none());
});
