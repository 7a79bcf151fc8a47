//! Value encoding for everything stored in RocksDB: postcard over serde.
//!
//! Decoding never panics: corrupt bytes become [`Error::Corrupt`] naming what was being read
//! and under which key.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Every stored type is plain data with serde derives: encoding into memory cannot fail.
    postcard::to_stdvec(value).expect("stored values serialize to memory")
}

pub fn decode<T: DeserializeOwned>(
    what: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, Error> {
    postcard::from_bytes(bytes).map_err(|source| Error::Corrupt {
        what,
        key: hex(key),
        source,
    })
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}
