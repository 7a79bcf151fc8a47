//! Reads of the applied state, from any task, without going through Raft.
//!
//! Every read runs against one RocksDB point-in-time view and reports the applied log index of
//! that same view, so a result and its index always agree. Consistency levels (linearizable,
//! `min_index`) are the node's business: it decides when to read, this decides what is there.

use std::sync::Arc;

use rocksdb::{DB, Direction, IteratorMode, SnapshotWithThreadMode};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::codec::decode;
use crate::error::Error;
use crate::keys::{self, CF_SM, SM_LAST_APPLIED};
use crate::state_machine::Applied;
use crate::types::LogId;
use domain::limits::{self, CONTEXT_TURNS_MAX, Field, Invalid, Problem};
use domain::{Call, CallId, CallState, Event, EventFilter, Handoff, Head, Labels, Turn};

/// A value read at a known applied index.
#[derive(Debug, Clone, PartialEq)]
pub struct At<T> {
    pub value: T,
    pub applied_index: u64,
}

/// A page of results and where the next page starts (`None` when there is no more).
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T, C> {
    pub items: Vec<T>,
    pub next: Option<C>,
}

/// What one scan of the event log found.
#[derive(Debug, Clone, PartialEq)]
pub struct EventScan {
    /// The matching events, in position order.
    pub items: Vec<Event>,
    /// The first position not looked at: the next scan starts here.
    pub next: u64,
    /// Whether the scan reached the end of the log (else a bound ended it).
    pub complete: bool,
    /// The position the next event to commit will get, in the same view.
    pub head: u64,
}

/// A call's context as agents read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Context {
    pub summary: String,
    pub entities: Labels,
    pub recent_turns: Vec<Turn>,
    pub handoff: Option<Handoff>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    #[error("call {call_id} not found")]
    UnknownCall { call_id: CallId },
    #[error("invalid argument: {0}")]
    Invalid(Invalid),
    #[error("storage failure: {0}")]
    Storage(Arc<Error>),
}

impl From<Error> for ReadError {
    fn from(error: Error) -> Self {
        ReadError::Storage(Arc::new(error))
    }
}

impl From<Invalid> for ReadError {
    fn from(invalid: Invalid) -> Self {
        ReadError::Invalid(invalid)
    }
}

#[derive(Debug, Clone)]
pub struct Reader {
    db: Arc<DB>,
    applied: watch::Receiver<Applied>,
}

/// A raw key-value pair read from RocksDB.
type Row = (Box<[u8]>, Box<[u8]>);

/// What a page may still take: a count and [`limits::PAGE_BYTES_MAX`] stored bytes. The first
/// item is always taken, so a page is never empty while items remain.
/// Most events one page of a single tenant's events looks at in the cluster-wide log.
pub const EVENTS_SCANNED_MAX: usize = 4096;

struct PageBudget {
    items_left: usize,
    bytes_left: usize,
    taken: usize,
}

impl PageBudget {
    fn new(limit: u32) -> Self {
        Self {
            items_left: limit as usize,
            bytes_left: limits::PAGE_BYTES_MAX,
            taken: 0,
        }
    }

    /// Takes an item of `bytes` stored bytes if it fits; `false` ends the page.
    fn take(&mut self, bytes: usize) -> bool {
        if self.items_left == 0 || (self.taken > 0 && bytes > self.bytes_left) {
            return false;
        }
        self.items_left -= 1;
        self.bytes_left = self.bytes_left.saturating_sub(bytes);
        self.taken += 1;
        true
    }
}

pub(crate) struct View<'a> {
    pub(crate) db: &'a DB,
    pub(crate) snap: SnapshotWithThreadMode<'a, DB>,
}

impl View<'_> {
    pub(crate) fn cf(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(CF_SM)
            .expect("column families are checked when the store opens")
    }

    pub(crate) fn get<T: crate::codec::Record>(
        &self,
        what: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, Error> {
        self.snap
            .get_cf(self.cf(), key)
            .map_err(Error::rocks("read state machine"))?
            .map(|bytes| decode(what, key, &bytes))
            .transpose()
    }

    /// The record an index row points at, if the page has room for it (`None`: the page is
    /// full). The row promises the record: its absence is a damaged store.
    fn take_indexed<T: crate::codec::Record>(
        &self,
        what: &'static str,
        key: &[u8],
        budget: &mut PageBudget,
    ) -> Result<Option<T>, Error> {
        let bytes = self
            .snap
            .get_cf(self.cf(), key)
            .map_err(Error::rocks("read state machine"))?
            .ok_or_else(|| Error::Missing {
                what,
                key: crate::codec::hex(key),
            })?;
        if !budget.take(key.len() + bytes.len()) {
            return Ok(None);
        }
        decode(what, key, &bytes).map(Some)
    }

    pub(crate) fn applied_index(&self) -> Result<u64, Error> {
        let log_id: Option<LogId> = self.get("last applied log id", SM_LAST_APPLIED)?;
        Ok(log_id.map_or(0, |id| id.index))
    }

    /// An iterator over keys in `[start, end)`. The bound is given to RocksDB, not only
    /// checked here: without it, an iterator that runs out of live keys in the range walks on
    /// over every deleted key after it (the state index's tombstones follow the event table),
    /// which made each read of the log's end cost as many steps as calls had changed state.
    pub(crate) fn range(
        &self,
        start: &[u8],
        end: &[u8],
    ) -> rocksdb::DBIteratorWithThreadMode<'_, DB> {
        let mut options = rocksdb::ReadOptions::default();
        options.set_iterate_upper_bound(end.to_vec());
        self.snap.iterator_cf_opt(
            self.cf(),
            options,
            IteratorMode::From(start, Direction::Forward),
        )
    }

    /// Up to `limit` entries with keys in `[start, end)`.
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Row>, Error> {
        let mut out = Vec::new();
        for item in self.range(start, end) {
            let (key, value) = item.map_err(Error::rocks("scan state machine"))?;
            if out.len() >= limit || key.as_ref() >= end {
                break;
            }
            out.push((key, value));
        }
        Ok(out)
    }

    fn call_of(&self, tenant_id: &str, call_id: &CallId) -> Result<Call, ReadError> {
        match self.get::<Call>("call", &keys::call(call_id))? {
            Some(call) if call.visible_to(tenant_id) => Ok(call),
            _ => Err(ReadError::UnknownCall { call_id: *call_id }),
        }
    }
}

impl Reader {
    pub(crate) fn new(db: Arc<DB>, applied: watch::Receiver<Applied>) -> Self {
        Self { db, applied }
    }

    /// What has been applied, as last published by the state machine.
    pub fn applied(&self) -> Applied {
        self.applied.borrow().clone()
    }

    /// A receiver that changes whenever the applied index moves.
    pub fn watch_applied(&self) -> watch::Receiver<Applied> {
        self.applied.clone()
    }

    pub(crate) fn view(&self) -> View<'_> {
        View {
            db: &self.db,
            snap: self.db.snapshot(),
        }
    }

    pub(crate) fn at<T>(view: &View<'_>, value: T) -> Result<At<T>, ReadError> {
        Ok(At {
            value,
            applied_index: view.applied_index()?,
        })
    }

    pub fn get_call(&self, tenant_id: &str, call_id: &CallId) -> Result<At<Call>, ReadError> {
        let view = self.view();
        let call = view.call_of(tenant_id, call_id)?;
        Self::at(&view, call)
    }

    pub fn get_context(
        &self,
        tenant_id: &str,
        call_id: &CallId,
        last_turns: u32,
    ) -> Result<At<Context>, ReadError> {
        if last_turns > CONTEXT_TURNS_MAX {
            return Err(Invalid::new(
                Field::LastTurns,
                Problem::EntriesOver {
                    entries_max: u64::from(CONTEXT_TURNS_MAX),
                    entries: u64::from(last_turns),
                },
            )
            .into());
        }
        let view = self.view();
        let call = view.call_of(tenant_id, call_id)?;
        let first = call.turn_count.saturating_sub(u64::from(last_turns)) + 1;
        let turns = view.scan(
            &keys::turn(call_id, first),
            &keys::turn(call_id, call.turn_count + 1),
            last_turns as usize,
        )?;
        let recent_turns = turns
            .iter()
            .map(|(k, v)| decode("turn", k, v))
            .collect::<Result<Vec<Turn>, _>>()?;
        let handoff = call.lifecycle.handoff().cloned();
        Self::at(
            &view,
            Context {
                summary: call.summary,
                entities: call.entities,
                recent_turns,
                handoff,
            },
        )
    }

    /// Turns from index `from` (1-based; 0 means from the first).
    pub fn list_turns(
        &self,
        tenant_id: &str,
        call_id: &CallId,
        from: u64,
        limit: u32,
    ) -> Result<At<Page<Turn, u64>>, ReadError> {
        let limit = limits::page_size(limit)?;
        let view = self.view();
        let call = view.call_of(tenant_id, call_id)?;
        let from = from.max(1);
        let rows = view.scan(
            &keys::turn(call_id, from),
            &keys::turn(call_id, call.turn_count + 1),
            limit as usize,
        )?;
        let mut budget = PageBudget::new(limit);
        let items = rows
            .iter()
            .take_while(|(k, v)| budget.take(k.len() + v.len()))
            .map(|(k, v)| decode("turn", k, v))
            .collect::<Result<Vec<Turn>, _>>()?;
        let next = items
            .last()
            .map(|t| t.index + 1)
            .filter(|next| *next <= call.turn_count);
        Self::at(&view, Page { items, next })
    }

    /// A call's events in sequence order, from sequence number `from` (0 means from the first).
    pub fn list_call_events(
        &self,
        tenant_id: &str,
        call_id: &CallId,
        from: u64,
        limit: u32,
    ) -> Result<At<Page<Event, u64>>, ReadError> {
        let limit = limits::page_size(limit)?;
        let view = self.view();
        let call = view.call_of(tenant_id, call_id)?;
        let rows = view.scan(
            &keys::call_event(call_id, from.max(1)),
            &keys::call_event(call_id, call.last_sequence_number + 1),
            limit as usize,
        )?;
        let mut items = Vec::with_capacity(rows.len());
        let mut budget = PageBudget::new(limit);
        for (key, value) in &rows {
            let position = keys::decode_u64(value).ok_or_else(|| Error::Missing {
                what: "event position",
                key: crate::codec::hex(key),
            })?;
            match view.take_indexed::<Event>("event", &keys::event(position), &mut budget)? {
                Some(event) => items.push(event),
                None => break,
            }
        }
        let next = items
            .last()
            .map(|e| e.sequence_number + 1)
            .filter(|next| *next <= call.last_sequence_number);
        Self::at(&view, Page { items, next })
    }

    /// The cluster-wide event log from position `from` (0 means from the first).
    pub fn list_events(
        &self,
        tenant_id: Option<&str>,
        from: u64,
        limit: u32,
    ) -> Result<At<Page<Event, u64>>, ReadError> {
        let limit = limits::page_size(limit)?;
        let view = self.view();
        let Some(tenant_id) = tenant_id else {
            let rows = view.scan(
                &keys::event(from.max(1)),
                &[keys::table::EVENT + 1],
                limit as usize + 1,
            )?;
            let mut budget = PageBudget::new(limit);
            let items = rows
                .iter()
                .take_while(|(k, v)| budget.take(k.len() + v.len()))
                .map(|(k, v)| decode("event", k, v))
                .collect::<Result<Vec<Event>, _>>()?;
            // Positions are gap-free: the next page starts right after the last event taken.
            let next = (rows.len() > items.len())
                .then(|| items.last().map(|e| e.position + 1))
                .flatten();
            return Self::at(&view, Page { items, next });
        };
        // One tenant's events out of the cluster-wide log: a page costs bounded work however
        // sparse the tenant's events are, and may be empty and still have a next one.
        let filter = EventFilter {
            tenant_id: Some(tenant_id.to_owned()),
            ..EventFilter::default()
        };
        let scan = Self::scan_view(&view, &filter, from, limit)?;
        let next = (!scan.complete).then_some(scan.next);
        Self::at(
            &view,
            Page {
                items: scan.items,
                next,
            },
        )
    }

    /// The position the next event to commit will get: a point read, for a caller that only
    /// needs to know where the log ends.
    pub fn event_head(&self) -> Result<u64, Error> {
        let view = self.view();
        // A store that applied nothing has no head yet: the first event gets position 1.
        let head: Option<Head> = view.get("head", keys::SM_HEAD)?;
        Ok(head.map_or_else(|| Head::new().next_position, |h| h.next_position))
    }

    /// The events matching `filter` from position `from` (0 means from the first): at most
    /// `limit` of them and [`limits::PAGE_BYTES_MAX`] stored bytes, out of at most
    /// [`EVENTS_SCANNED_MAX`] events looked at, so one scan costs bounded work however sparse
    /// the matches are.
    pub fn scan_events(
        &self,
        filter: &EventFilter,
        from: u64,
        limit: u32,
    ) -> Result<At<EventScan>, ReadError> {
        let limit = limits::page_size(limit)?;
        let view = self.view();
        let scan = Self::scan_view(&view, filter, from, limit)?;
        Self::at(&view, scan)
    }

    fn scan_view(
        view: &View<'_>,
        filter: &EventFilter,
        from: u64,
        limit: u32,
    ) -> Result<EventScan, ReadError> {
        let head: Head = view.get("head", keys::SM_HEAD)?.unwrap_or_else(Head::new);
        let mut budget = PageBudget::new(limit);
        let mut items = Vec::new();
        let mut position = from.max(1);
        let mut complete = true;
        let rows = view.range(&keys::event(position), &[keys::table::EVENT + 1]);
        for (scanned, item) in rows.enumerate() {
            let (key, value) = item.map_err(Error::rocks("scan state machine"))?;
            if key.first() != Some(&keys::table::EVENT) {
                break;
            }
            if scanned == EVENTS_SCANNED_MAX {
                complete = false;
                break;
            }
            let event: Event = decode("event", &key, &value)?;
            let after = event.position + 1;
            if filter.matches(&event) {
                if !budget.take(key.len() + value.len()) {
                    position = event.position;
                    complete = false;
                    break;
                }
                items.push(event);
            }
            position = after;
        }
        Ok(EventScan {
            items,
            next: position,
            complete,
            head: head.next_position,
        })
    }

    /// A tenant's calls (in one state, or all), in call-id order, after `after`.
    pub fn list_calls(
        &self,
        tenant_id: &str,
        state: Option<CallState>,
        after: Option<CallId>,
        limit: u32,
    ) -> Result<At<Page<Call, CallId>>, ReadError> {
        limits::check_required(Field::TenantId, tenant_id, limits::TENANT_ID_BYTES_MAX)?;
        let limit = limits::page_size(limit)?;
        let view = self.view();
        let prefix = match state {
            Some(state) => keys::tenant_state_prefix(tenant_id, state),
            None => keys::tenant_prefix(tenant_id),
        };
        let start = match &after {
            Some(id) => {
                // Just past `after`: index keys end with the call id.
                let mut key = prefix.clone();
                key.extend_from_slice(id.as_bytes());
                key.push(0);
                key
            }
            None => prefix.clone(),
        };
        let end = keys::prefix_end(&prefix).unwrap_or_else(|| vec![u8::MAX; prefix.len() + 1]);
        let rows = view.scan(&start, &end, limit as usize + 1)?;
        let mut items = Vec::with_capacity(rows.len());
        let mut budget = PageBudget::new(limit);
        for (key, _) in &rows {
            let call_id = keys::trailing_call_id(key).ok_or_else(|| Error::Missing {
                what: "call id in index key",
                key: crate::codec::hex(key),
            })?;
            match view.take_indexed::<Call>("call", &keys::call(&call_id), &mut budget)? {
                Some(call) => items.push(call),
                None => break,
            }
        }
        let next = if rows.len() > items.len() {
            items.last().map(|c| c.call_id)
        } else {
            None
        };
        Self::at(&view, Page { items, next })
    }

    /// How many calls are in each lifecycle state.
    pub fn call_counts(&self) -> Result<At<Vec<(CallState, u64)>>, Error> {
        let view = self.view();
        let counts: crate::state_machine::CallCounts = view
            .get("call counts", keys::SM_CALL_COUNTS)?
            .unwrap_or_default();
        Ok(At {
            value: CallState::ALL
                .iter()
                .map(|s| (*s, counts[usize::from(keys::state_code(*s) - 1)]))
                .collect(),
            applied_index: view.applied_index()?,
        })
    }

    /// A digest of the entire state machine (every key and value, in order) with the applied
    /// index it covers: replicas that applied the same log have equal digests.
    pub fn digest(&self) -> Result<At<[u8; 32]>, Error> {
        let view = self.view();
        let mut hasher = Sha256::new();
        for item in view.snap.iterator_cf(view.cf(), IteratorMode::Start) {
            let (key, value) = item.map_err(Error::rocks("scan state machine"))?;
            hasher.update((key.len() as u64).to_be_bytes());
            hasher.update(&key);
            hasher.update((value.len() as u64).to_be_bytes());
            hasher.update(&value);
        }
        Ok(At {
            value: hasher.finalize().into(),
            applied_index: view.applied_index()?,
        })
    }
}
