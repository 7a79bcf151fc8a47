//! Finds where RocksDB's write-ahead log is damaged, for the operator.
//!
//! When RocksDB refuses to replay its write-ahead log it says only "Corruption: bad record
//! length" or "checksum mismatch". This scan reads the log files the way RocksDB's log reader
//! does (32 KiB blocks of records: masked CRC-32C, length, type, payload) and names the first
//! record that does not check out, with its file and offset. It only explains a refusal; it never
//! decides one.

use std::fs;
use std::path::{Path, PathBuf};

const BLOCK_BYTES: usize = 32 * 1024;
const HEADER_BYTES: usize = 7;
const RECYCLABLE_HEADER_BYTES: usize = 11;
const MASK_DELTA: u32 = 0xa282_ead8;

/// The first damaged record of the write-ahead logs in `rocks`, as "file at offset N: reason".
pub fn first_damage(rocks: &Path) -> Option<String> {
    let mut logs: Vec<(u64, PathBuf)> = fs::read_dir(rocks)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .filter_map(|p| {
            let number = p.file_stem()?.to_str()?.parse().ok()?;
            Some((number, p))
        })
        .collect();
    logs.sort();
    let newest = logs.len().checked_sub(1)?;
    logs.iter().enumerate().find_map(|(i, (_, path))| {
        let bytes = fs::read(path).ok()?;
        scan(&bytes, i == newest)
            .map(|(offset, reason)| format!("{} at offset {offset}: {reason}", path.display()))
    })
}

/// The offset and reason of the first bad record; an incomplete last record of the newest file
/// (a torn write) is not damage.
fn scan(bytes: &[u8], newest: bool) -> Option<(usize, String)> {
    let mut offset = 0;
    while offset < bytes.len() {
        let in_block = BLOCK_BYTES - offset % BLOCK_BYTES;
        if in_block < HEADER_BYTES {
            offset += in_block; // trailer padding
            continue;
        }
        let header = &bytes[offset..bytes.len().min(offset + HEADER_BYTES)];
        if header.len() < HEADER_BYTES {
            return (!newest).then(|| (offset, "truncated record header".to_owned()));
        }
        let stored = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let length = usize::from(u16::from_le_bytes(
            header[4..6].try_into().expect("2 bytes"),
        ));
        let kind = header[6];
        if kind == 0 && length == 0 && stored == 0 {
            // Preallocated, never written: the end of the log.
            return None;
        }
        let header_bytes = if (5..=8).contains(&kind) || kind == 11 {
            RECYCLABLE_HEADER_BYTES
        } else {
            HEADER_BYTES
        };
        let end = offset + header_bytes + length;
        if header_bytes + length > in_block {
            return Some((offset, format!("bad record length {length}")));
        }
        if end > bytes.len() {
            return (!newest).then(|| (offset, "truncated record".to_owned()));
        }
        // The checksum covers the type byte, the log number of a recyclable record, the payload.
        let mut crc = crc32c_extend(0, &[kind]);
        crc = crc32c_extend(crc, &bytes[offset + HEADER_BYTES..end]);
        if mask(crc) != stored {
            return Some((offset, "checksum mismatch".to_owned()));
        }
        offset = end;
    }
    None
}

fn mask(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

/// CRC-32C (Castagnoli), continuing from `crc` (0 to start).
fn crc32c_extend(crc: u32, data: &[u8]) -> u32 {
    const POLY: u32 = 0x82f6_3b78;
    let mut crc = !crc;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c_extend(0, b"123456789"), 0xe306_9283);
        assert_eq!(
            crc32c_extend(crc32c_extend(0, b"1234"), b"56789"),
            0xe306_9283
        );
    }

    fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
        let crc = mask(crc32c_extend(crc32c_extend(0, &[kind]), payload));
        let mut out = crc.to_le_bytes().to_vec();
        out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        out.push(kind);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn names_the_first_bad_record_and_forgives_only_a_torn_tail() {
        let mut log = record(1, b"first");
        log.extend(record(1, b"second"));
        assert_eq!(scan(&log, true), None);
        let second = record(1, b"first").len();
        let mut flipped = log.clone();
        flipped[second + HEADER_BYTES + 2] ^= 1;
        assert_eq!(
            scan(&flipped, true),
            Some((second, "checksum mismatch".to_owned()))
        );
        let torn = &log[..log.len() - 3];
        assert_eq!(scan(torn, true), None);
        assert_eq!(
            scan(torn, false),
            Some((second, "truncated record".to_owned()))
        );
    }
}
