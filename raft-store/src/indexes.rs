//! Derived data over the event log: secondary indexes and counters, for queries, statistics
//! and retention.
//!
//! Every row here is a function of the events stored in the `EVENT` table and nothing else, so
//! it can be rebuilt from them at any time ([`rebuild`]) and checked against them ([`verify`]).
//! The apply path writes it in the same `WriteBatch` as the events it derives from ([`add`],
//! [`remove`]), and snapshots carry it like every other state-machine record.
//!
//! - `TENANT_EVENT` `tenant | position`: a tenant's events in order.
//! - `EVENT_INDEX` `tenant | dim | value | position`: by type, call, and for agent activity by
//!   severity, project, task, agent type, and all activity.
//! - `COUNTER` `tenant | scope | dim | value` → count: per tenant (scope empty) and per project
//!   (scope the project id): events, by type, by hour; activity by severity and agent type,
//!   and each agent type's completed and error records. A counter that falls to zero is deleted.

use std::collections::BTreeMap;

use domain::{ActivityType, Event, Severity};
use rocksdb::{DB, Direction, IteratorMode, WriteBatch};

use crate::codec::{decode, encode};
use crate::error::Error;
use crate::keys::{self, CF_SM, Dim, SM_INDEX_VERSION, table};
use crate::txn::Txn;

/// Version of the derived tables' layout. A store holding another version (or none, as one
/// written before they existed, or installed from such a snapshot) rebuilds them at open.
pub const INDEX_VERSION: u64 = 1;
/// Bytes of rows per `WriteBatch` while rebuilding.
const REBUILD_BATCH_BYTES_MAX: usize = 4 << 20;
const HOUR_MS: u64 = 60 * 60 * 1000;

/// The one-byte code of a severity in index keys and counters, in severity order.
pub fn severity_code(severity: Severity) -> u8 {
    match severity {
        Severity::Debug => 1,
        Severity::Info => 2,
        Severity::Warning => 3,
        Severity::Error => 4,
        Severity::Critical => 5,
    }
}

pub fn severity_of_code(code: u8) -> Option<Severity> {
    Severity::ALL
        .into_iter()
        .find(|s| severity_code(*s) == code)
}

/// The hour `at_ms` falls in, as counter value bytes.
pub fn hour_value(at_ms: u64) -> [u8; 8] {
    (at_ms / HOUR_MS).to_be_bytes()
}

pub fn hour_ms(value: &[u8]) -> Option<u64> {
    keys::decode_u64(value).and_then(|hour| hour.checked_mul(HOUR_MS))
}

/// The index rows of one event.
pub fn rows(event: &Event) -> Vec<Vec<u8>> {
    let tenant = event.tenant_id.as_str();
    let position = event.position;
    let mut rows = vec![
        keys::tenant_event(tenant, position),
        keys::index_row(tenant, Dim::Type, event.event_type.as_bytes(), position),
    ];
    if let Some(call_id) = &event.call_id {
        rows.push(keys::index_row(
            tenant,
            Dim::Call,
            call_id.as_bytes(),
            position,
        ));
    }
    if let Some(activity) = &event.activity {
        rows.push(keys::index_row(tenant, Dim::Activity, b"", position));
        rows.push(keys::index_row(
            tenant,
            Dim::Severity,
            &[severity_code(activity.severity)],
            position,
        ));
        if !activity.project_id.is_empty() {
            rows.push(keys::index_row(
                tenant,
                Dim::Project,
                activity.project_id.as_bytes(),
                position,
            ));
        }
        rows.push(keys::index_row(
            tenant,
            Dim::Task,
            activity.task_id.as_bytes(),
            position,
        ));
        rows.push(keys::index_row(
            tenant,
            Dim::Agent,
            activity.agent_type.as_bytes(),
            position,
        ));
    }
    rows
}

/// The counters one event adds one to.
pub fn counters(event: &Event) -> Vec<Vec<u8>> {
    let tenant = event.tenant_id.as_str();
    let project = event
        .activity
        .as_ref()
        .map(|a| a.project_id.as_str())
        .filter(|p| !p.is_empty());
    let mut out = Vec::with_capacity(16);
    for scope in std::iter::once("").chain(project) {
        out.push(keys::counter(tenant, scope, Dim::Total, b""));
        out.push(keys::counter(
            tenant,
            scope,
            Dim::Type,
            event.event_type.as_bytes(),
        ));
        out.push(keys::counter(
            tenant,
            scope,
            Dim::Hour,
            &hour_value(event.at_ms),
        ));
        let Some(activity) = &event.activity else {
            continue;
        };
        let agent = activity.agent_type.as_bytes();
        out.push(keys::counter(tenant, scope, Dim::Activity, b""));
        out.push(keys::counter(
            tenant,
            scope,
            Dim::Severity,
            &[severity_code(activity.severity)],
        ));
        out.push(keys::counter(tenant, scope, Dim::Agent, agent));
        match ActivityType::from_event_type(&event.event_type) {
            Some(ActivityType::Completed) => {
                out.push(keys::counter(tenant, scope, Dim::AgentCompleted, agent));
            }
            Some(ActivityType::Error) => {
                out.push(keys::counter(tenant, scope, Dim::AgentError, agent));
            }
            _ => {}
        }
        if scope.is_empty() {
            if let Some(project) = project {
                out.push(keys::counter(
                    tenant,
                    scope,
                    Dim::Project,
                    project.as_bytes(),
                ));
            }
            out.push(keys::counter(
                tenant,
                scope,
                Dim::Task,
                activity.task_id.as_bytes(),
            ));
        }
    }
    out
}

/// Writes an appended event's rows and counts into the batch's overlay.
pub fn add(txn: &mut Txn<'_>, event: &Event) -> Result<(), Error> {
    for row in rows(event) {
        txn.put_raw(row, Vec::new());
    }
    for key in counters(event) {
        let count: u64 = txn.get("counter", &key)?.unwrap_or(0);
        txn.put(key, &(count + 1));
    }
    Ok(())
}

/// Removes a compacted event's rows and counts. A count that would fall below zero is a
/// damaged store.
pub fn remove(txn: &mut Txn<'_>, event: &Event) -> Result<(), Error> {
    for row in rows(event) {
        txn.delete(row);
    }
    for key in counters(event) {
        let count: u64 = txn.get("counter", &key)?.unwrap_or(0);
        match count.checked_sub(1) {
            Some(0) => txn.delete(key),
            Some(left) => txn.put(key, &left),
            None => {
                return Err(Error::Missing {
                    what: "counter of a compacted event",
                    key: crate::codec::hex(&key),
                });
            }
        }
    }
    Ok(())
}

fn cf(db: &DB) -> &rocksdb::ColumnFamily {
    db.cf_handle(CF_SM)
        .expect("column families are checked when the store opens")
}

/// Rebuilds the derived tables when the store holds another version of them. Blocking.
pub fn ensure(db: &DB) -> Result<(), Error> {
    let version: Option<u64> = db
        .get_cf(cf(db), SM_INDEX_VERSION)
        .map_err(Error::rocks("read index version"))?
        .map(|bytes| decode("index version", SM_INDEX_VERSION, &bytes))
        .transpose()?;
    if version == Some(INDEX_VERSION) {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let events = rebuild(db)?;
    tracing::info!(
        events,
        from_version = ?version,
        version = INDEX_VERSION,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "rebuilt the event indexes"
    );
    Ok(())
}

/// Replaces every derived row with what the stored events imply, then records the version.
/// Safe to interrupt: the version is written last, so an interrupted rebuild runs again.
/// Returns the number of events read.
pub fn rebuild(db: &DB) -> Result<u64, Error> {
    let cf = cf(db);
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(cf, [table::DERIVED_FIRST], [table::DERIVED_LAST + 1]);
    batch.delete_cf(cf, SM_INDEX_VERSION);
    db.write(std::mem::take(&mut batch))
        .map_err(Error::rocks("clear derived tables"))?;
    let mut counts = BTreeMap::<Vec<u8>, u64>::new();
    let mut batch_bytes = 0;
    let mut events = 0;
    for_each_event(db, |event| {
        events += 1;
        for row in rows(&event) {
            batch_bytes += row.len();
            batch.put_cf(cf, row, []);
        }
        for key in counters(&event) {
            *counts.entry(key).or_insert(0) += 1;
        }
        if batch_bytes >= REBUILD_BATCH_BYTES_MAX {
            db.write(std::mem::take(&mut batch))
                .map_err(Error::rocks("rebuild event indexes"))?;
            batch_bytes = 0;
        }
        Ok(())
    })?;
    for (key, count) in counts {
        batch.put_cf(cf, key, encode(&count));
    }
    batch.put_cf(cf, SM_INDEX_VERSION, encode(&INDEX_VERSION));
    db.write(batch)
        .map_err(Error::rocks("rebuild event indexes"))?;
    Ok(events)
}

fn for_each_event(db: &DB, mut each: impl FnMut(Event) -> Result<(), Error>) -> Result<(), Error> {
    let mut options = rocksdb::ReadOptions::default();
    options.set_iterate_upper_bound(vec![table::EVENT + 1]);
    let start = [table::EVENT];
    for item in db.iterator_cf_opt(
        cf(db),
        options,
        IteratorMode::From(&start, Direction::Forward),
    ) {
        let (key, value) = item.map_err(Error::rocks("scan events"))?;
        each(decode("event", &key, &value)?)?;
    }
    Ok(())
}

/// Compares the stored derived tables with what the stored events imply; returns the
/// differences (at most `max`), each naming the key. Empty: they agree.
pub fn verify(db: &DB, max: usize) -> Result<Vec<String>, Error> {
    let mut expected = BTreeMap::<Vec<u8>, Vec<u8>>::new();
    let mut counts = BTreeMap::<Vec<u8>, u64>::new();
    for_each_event(db, |event| {
        for row in rows(&event) {
            expected.insert(row, Vec::new());
        }
        for key in counters(&event) {
            *counts.entry(key).or_insert(0) += 1;
        }
        Ok(())
    })?;
    expected.extend(counts.into_iter().map(|(key, count)| (key, encode(&count))));
    let mut stored = BTreeMap::<Vec<u8>, Vec<u8>>::new();
    let mut options = rocksdb::ReadOptions::default();
    options.set_iterate_upper_bound(vec![table::DERIVED_LAST + 1]);
    let start = [table::DERIVED_FIRST];
    for item in db.iterator_cf_opt(
        cf(db),
        options,
        IteratorMode::From(&start, Direction::Forward),
    ) {
        let (key, value) = item.map_err(Error::rocks("scan derived tables"))?;
        stored.insert(key.into_vec(), value.into_vec());
    }
    let mut differences = Vec::new();
    for (key, value) in &expected {
        if stored.get(key) != Some(value) {
            differences.push(format!(
                "{} expected {} stored {:?}",
                crate::codec::hex(key),
                crate::codec::hex(value),
                stored.get(key).map(|v| crate::codec::hex(v))
            ));
        }
    }
    for key in stored.keys().filter(|k| !expected.contains_key(*k)) {
        differences.push(format!("{} stored but not implied", crate::codec::hex(key)));
    }
    differences.truncate(max);
    Ok(differences)
}
