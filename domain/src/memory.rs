//! The applied state in memory, interpreting [`Step`]s the way the store does in RocksDB.
//!
//! For tests and tools that need the domain without storage: the domain scenarios drive
//! [`decide`](crate::decide) through it. It holds no rule of its own; what a step writes is
//! written, nothing more.

use std::collections::{BTreeMap, BTreeSet};

use crate::activity::Retention;
use crate::command::Request;
use crate::decide::{RequestKey, StateReader, Step};
use crate::idempotency::{Decision, Remembered};
use crate::model::{Call, CallId, Event, Head, Turn};

/// A store in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Memory {
    pub head: Head,
    pub calls: BTreeMap<CallId, Call>,
    pub turns: BTreeMap<(CallId, u64), Turn>,
    pub remembered: BTreeMap<(String, String), Remembered>,
    pub expiry: BTreeSet<RequestKey>,
    /// Every event appended and not compacted, in position order.
    pub log: Vec<Event>,
    /// Tenants' activity retention.
    pub retention: BTreeMap<String, Retention>,
}

/// A read the step needed found nothing where the state promises something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("missing {what} in memory state")]
pub struct Missing {
    pub what: &'static str,
}

impl Default for Memory {
    fn default() -> Self {
        Self::new()
    }
}

impl Memory {
    pub fn new() -> Self {
        Self {
            head: Head::new(),
            calls: BTreeMap::new(),
            turns: BTreeMap::new(),
            remembered: BTreeMap::new(),
            expiry: BTreeSet::new(),
            log: Vec::new(),
            retention: BTreeMap::new(),
        }
    }

    /// Writes what `step`, decided for `request`, says to write.
    pub fn write(&mut self, request: &Request, step: &Step) {
        for expired in &step.expired {
            if expired.drop_record {
                self.remembered.remove(&(
                    expired.key.tenant_id.clone(),
                    expired.key.request_id.clone(),
                ));
            }
            self.expiry.remove(&expired.key);
        }
        let remember = match &step.decision {
            Decision::Replay(_) | Decision::Refused(_) => None,
            Decision::Rejected { remember, .. } => Some(remember),
            Decision::Applied {
                change, remember, ..
            } => {
                self.calls.insert(change.call.call_id, change.call.clone());
                if let Some(turn) = &change.turn {
                    self.turns
                        .insert((change.call.call_id, turn.index), turn.clone());
                }
                if let Some(erasure) = &change.erase {
                    let call_id = change.call.call_id;
                    for index in 1..=erasure.turns {
                        if let Some(turn) = self.turns.get_mut(&(call_id, index)) {
                            *turn = turn.erased();
                        }
                    }
                    for event in &mut self.log {
                        if event.activity.is_none()
                            && event.call_id == Some(call_id)
                            && event.sequence_number <= erasure.events
                        {
                            *event = event.erased();
                        }
                    }
                }
                self.log.extend(change.events.iter().cloned());
                Some(remember)
            }
            Decision::Recorded {
                change, remember, ..
            } => {
                if let Some(retention) = change.retention {
                    self.retention.insert(change.tenant_id.clone(), retention);
                }
                let gone: BTreeSet<u64> = change.compacted.iter().map(|e| e.position).collect();
                self.log.retain(|e| !gone.contains(&e.position));
                self.log.extend(change.events.iter().cloned());
                Some(remember)
            }
        };
        if let Some(remember) = remember {
            let key = (request.tenant_id.clone(), request.request_id.clone());
            self.expiry.insert(RequestKey {
                at_ms: remember.at_ms,
                tenant_id: key.0.clone(),
                request_id: key.1.clone(),
            });
            self.remembered.insert(key, remember.clone());
        }
        self.head = step.head;
    }
}

impl Memory {
    /// The tenant's activity records, oldest first.
    pub fn activity_of<'a>(&'a self, tenant_id: &'a str) -> impl Iterator<Item = &'a Event> + 'a {
        self.log
            .iter()
            .filter(move |e| e.activity.is_some() && e.tenant_id == tenant_id)
    }
}

impl StateReader for Memory {
    type Error = Missing;

    fn head(&self) -> Head {
        self.head
    }

    fn call(&self, call_id: &CallId) -> Result<Option<Call>, Missing> {
        Ok(self.calls.get(call_id).cloned())
    }

    fn turn(&self, call_id: &CallId, index: u64) -> Result<Turn, Missing> {
        self.turns
            .get(&(*call_id, index))
            .cloned()
            .ok_or(Missing { what: "turn" })
    }

    fn remembered(&self, tenant_id: &str, request_id: &str) -> Result<Option<Remembered>, Missing> {
        Ok(self
            .remembered
            .get(&(tenant_id.to_owned(), request_id.to_owned()))
            .cloned())
    }

    fn retention(&self, tenant_id: &str) -> Result<Option<Retention>, Missing> {
        Ok(self.retention.get(tenant_id).copied())
    }

    fn activity_held(&self, tenant_id: &str) -> Result<u64, Missing> {
        Ok(self.activity_of(tenant_id).count() as u64)
    }

    fn oldest_activity(&self, tenant_id: &str, limit: usize) -> Result<Vec<Event>, Missing> {
        Ok(self.activity_of(tenant_id).take(limit).cloned().collect())
    }

    fn remembered_before(&self, before_ms: u64, limit: usize) -> Result<Vec<RequestKey>, Missing> {
        Ok(self
            .expiry
            .iter()
            .take_while(|key| key.at_ms < before_ms)
            .take(limit)
            .cloned()
            .collect())
    }
}
