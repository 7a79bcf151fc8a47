//! A write overlay over the state-machine column family for one apply batch.
//!
//! Entries in one batch must see each other's writes, and what an entry sees must not depend on
//! how openraft happened to split the log into batches: otherwise two replicas applying the same
//! log could diverge. Reads and ordered scans therefore merge the overlay with RocksDB, and the
//! whole overlay becomes one `WriteBatch` at the end.

use std::collections::BTreeMap;
use std::ops::Bound;

use rocksdb::{DB, Direction, IteratorMode, WriteBatch};

use crate::codec::{Record, decode, encode};
use crate::error::Error;
use crate::keys::CF_SM;

#[derive(Debug)]
pub struct Txn<'db> {
    db: &'db DB,
    /// `None` marks a deletion.
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'db> Txn<'db> {
    pub fn new(db: &'db DB) -> Self {
        Self {
            db,
            overlay: BTreeMap::new(),
        }
    }

    fn cf(&self) -> &'db rocksdb::ColumnFamily {
        self.db
            .cf_handle(CF_SM)
            .expect("column families are checked when the store opens")
    }

    pub fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        if let Some(value) = self.overlay.get(key) {
            return Ok(value.clone());
        }
        self.db
            .get_cf(self.cf(), key)
            .map_err(Error::rocks("read state machine"))
    }

    pub fn get<T: Record>(&self, what: &'static str, key: &[u8]) -> Result<Option<T>, Error> {
        self.get_raw(key)?
            .map(|bytes| decode(what, key, &bytes))
            .transpose()
    }

    pub fn put<T: Record>(&mut self, key: Vec<u8>, value: &T) {
        self.overlay.insert(key, Some(encode(value)));
    }

    pub fn put_raw(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.overlay.insert(key, Some(value));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.overlay.insert(key, None);
    }

    /// Up to `limit` live keys in `[start, end)`, in key order, as the merged view sees them.
    pub fn scan_keys(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, Error> {
        let mut out = Vec::with_capacity(limit.min(64));
        // The bound goes to RocksDB: without it an iterator that runs out of live keys in the
        // range walks on over every deleted key after it.
        let mut options = rocksdb::ReadOptions::default();
        options.set_iterate_upper_bound(end.to_vec());
        let mut stored = self
            .db
            .iterator_cf_opt(
                self.cf(),
                options,
                IteratorMode::From(start, Direction::Forward),
            )
            .map(|item| item.map(|(key, _)| key))
            .take_while(|item| item.as_ref().map_or(true, |key| key.as_ref() < end))
            .peekable();
        let mut pending = self
            .overlay
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
            .peekable();
        while out.len() < limit {
            let next_stored = match stored.peek() {
                Some(Ok(key)) => Some(key.clone()),
                Some(Err(_)) => {
                    let Some(Err(e)) = stored.next() else {
                        unreachable!("peeked an error")
                    };
                    return Err(Error::Rocks {
                        op: "scan state machine",
                        source: e,
                    });
                }
                None => None,
            };
            let next_pending = pending.peek().map(|(key, _)| key.as_slice());
            let take_pending = match (next_stored.as_deref(), next_pending) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(s), Some(p)) => p <= s,
            };
            if take_pending {
                let (key, value) = pending.next().expect("peeked an overlay key");
                if next_stored.as_deref() == Some(key.as_slice()) {
                    stored.next();
                }
                if value.is_some() {
                    out.push(key.clone());
                }
            } else {
                stored.next();
                out.push(next_stored.expect("peeked a stored key").into_vec());
            }
        }
        Ok(out)
    }

    pub fn into_batch(self) -> WriteBatch {
        let cf = self.cf();
        let mut batch = WriteBatch::default();
        for (key, value) in self.overlay {
            match value {
                Some(value) => batch.put_cf(cf, key, value),
                None => batch.delete_cf(cf, key),
            }
        }
        batch
    }
}
