//! Column families and the typed key encoders that make RocksDB order the logical order.
//!
//! Every key starts with a one-byte prefix naming its table; integers are big-endian so that
//! byte order is numeric order; variable-length strings are length-prefixed so that a prefix
//! scan for one tenant never runs into another tenant whose name extends it.

use domain::{CallId, CallState};

/// Raft log entries, keyed by index.
pub const CF_LOG: &str = "raft_log";
/// Raft metadata: vote, committed, last purged.
pub const CF_META: &str = "raft_meta";
/// The state machine: every table below, plus `last_applied` and membership.
pub const CF_SM: &str = "state_machine";
pub const COLUMN_FAMILIES: [&str; 3] = [CF_LOG, CF_META, CF_SM];

pub const META_VOTE: &[u8] = b"vote";
pub const META_COMMITTED: &[u8] = b"committed";
pub const META_LAST_PURGED: &[u8] = b"last_purged";

/// State-machine tables (first byte of every key in `CF_SM`).
pub mod table {
    pub const SM_META: u8 = 0x00;
    pub const CALL: u8 = 0x01;
    pub const TURN: u8 = 0x02;
    pub const CALL_EVENT: u8 = 0x03;
    pub const EVENT: u8 = 0x04;
    pub const TENANT_STATE_CALL: u8 = 0x05;
    pub const TENANT_CALL: u8 = 0x06;
    pub const IDEMPOTENCY: u8 = 0x07;
    pub const IDEMPOTENCY_EXPIRY: u8 = 0x08;
    /// `tenant | position`: a tenant's events in position order (derived, [`crate::indexes`]).
    pub const TENANT_EVENT: u8 = 0x09;
    /// `tenant | dimension | value | position`: a tenant's events by one field (derived).
    pub const EVENT_INDEX: u8 = 0x0A;
    /// `tenant | scope | dimension | value` → count (derived).
    pub const COUNTER: u8 = 0x0B;
    /// `tenant` → the tenant's activity retention.
    pub const RETENTION: u8 = 0x0C;
    /// The first and last tables of derived data, which a rebuild replaces.
    pub const DERIVED_FIRST: u8 = TENANT_EVENT;
    pub const DERIVED_LAST: u8 = COUNTER;
}

pub const SM_LAST_APPLIED: &[u8] = &[table::SM_META, b'a'];
pub const SM_MEMBERSHIP: &[u8] = &[table::SM_META, b'm'];
pub const SM_HEAD: &[u8] = &[table::SM_META, b'h'];
/// Calls per lifecycle state, `[created, active, handed_off, ended]`.
pub const SM_CALL_COUNTS: &[u8] = &[table::SM_META, b'c'];
/// The version of the derived tables (`indexes::INDEX_VERSION`) the state machine holds.
pub const SM_INDEX_VERSION: &[u8] = &[table::SM_META, b'i'];

/// The stable one-byte code of a lifecycle state in storage keys and the call-counts record.
/// Storage owns it: the domain's enum order is not an encoding.
pub fn state_code(state: CallState) -> u8 {
    match state {
        CallState::Created => 1,
        CallState::Active => 2,
        CallState::HandedOff => 3,
        CallState::Ended => 4,
    }
}

pub fn log_index(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

fn key(table: u8, capacity: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + capacity);
    key.push(table);
    key
}

fn push_str(key: &mut Vec<u8>, value: &str) {
    // Bounded by TENANT_ID_BYTES_MAX / REQUEST_ID_BYTES_MAX (both < 256), validated before apply.
    let len = u8::try_from(value.len()).expect("key strings are validated to under 256 bytes");
    key.push(len);
    key.extend_from_slice(value.as_bytes());
}

pub fn call(call_id: &CallId) -> Vec<u8> {
    let mut key = key(table::CALL, 16);
    key.extend_from_slice(call_id.as_bytes());
    key
}

pub fn turn(call_id: &CallId, index: u64) -> Vec<u8> {
    let mut key = key(table::TURN, 24);
    key.extend_from_slice(call_id.as_bytes());
    key.extend_from_slice(&index.to_be_bytes());
    key
}

pub fn call_event(call_id: &CallId, sequence_number: u64) -> Vec<u8> {
    let mut key = key(table::CALL_EVENT, 24);
    key.extend_from_slice(call_id.as_bytes());
    key.extend_from_slice(&sequence_number.to_be_bytes());
    key
}

pub fn event(position: u64) -> Vec<u8> {
    let mut key = key(table::EVENT, 8);
    key.extend_from_slice(&position.to_be_bytes());
    key
}

/// `tenant | state | call_id`: a tenant's calls in one state, in call-id (creation) order.
pub fn tenant_state_call(tenant: &str, state: CallState, call_id: &CallId) -> Vec<u8> {
    let mut key = tenant_state_prefix(tenant, state);
    key.extend_from_slice(call_id.as_bytes());
    key
}

pub fn tenant_state_prefix(tenant: &str, state: CallState) -> Vec<u8> {
    let mut key = key(table::TENANT_STATE_CALL, 2 + tenant.len() + 16);
    push_str(&mut key, tenant);
    key.push(state_code(state));
    key
}

/// `tenant | call_id`: all of a tenant's calls in call-id (creation) order.
pub fn tenant_call(tenant: &str, call_id: &CallId) -> Vec<u8> {
    let mut key = tenant_prefix(tenant);
    key.extend_from_slice(call_id.as_bytes());
    key
}

pub fn tenant_prefix(tenant: &str) -> Vec<u8> {
    let mut key = key(table::TENANT_CALL, 1 + tenant.len() + 16);
    push_str(&mut key, tenant);
    key
}

/// The call id at the end of a `tenant_call` or `tenant_state_call` key.
pub fn trailing_call_id(key: &[u8]) -> Option<CallId> {
    let start = key.len().checked_sub(16)?;
    CallId::from_slice(&key[start..]).ok()
}

pub fn idempotency(tenant: &str, request_id: &str) -> Vec<u8> {
    let mut key = key(table::IDEMPOTENCY, 2 + tenant.len() + request_id.len());
    push_str(&mut key, tenant);
    key.extend_from_slice(request_id.as_bytes());
    key
}

/// `at_ms | idempotency key`: records in the order they expire.
pub fn idempotency_expiry(at_ms: u64, tenant: &str, request_id: &str) -> Vec<u8> {
    let mut key = key(
        table::IDEMPOTENCY_EXPIRY,
        8 + 2 + tenant.len() + request_id.len(),
    );
    key.extend_from_slice(&at_ms.to_be_bytes());
    key.extend_from_slice(&idempotency(tenant, request_id));
    key
}

/// Splits an expiry key into its time, tenant and request id.
pub fn split_idempotency_expiry(key: &[u8]) -> Option<(u64, String, String)> {
    let rest = key.strip_prefix(&[table::IDEMPOTENCY_EXPIRY])?;
    let at_ms = decode_u64(rest)?;
    let record = rest.get(8..)?.strip_prefix(&[table::IDEMPOTENCY])?;
    let (&tenant_len, record) = record.split_first()?;
    let (tenant, request_id) = record.split_at_checked(usize::from(tenant_len))?;
    Some((
        at_ms,
        String::from_utf8(tenant.to_vec()).ok()?,
        String::from_utf8(request_id.to_vec()).ok()?,
    ))
}

pub fn tenant_event(tenant: &str, position: u64) -> Vec<u8> {
    let mut key = tenant_event_prefix(tenant);
    key.extend_from_slice(&position.to_be_bytes());
    key
}

pub fn tenant_event_prefix(tenant: &str) -> Vec<u8> {
    let mut key = key(table::TENANT_EVENT, 1 + tenant.len() + 8);
    push_str(&mut key, tenant);
    key
}

/// The fields events are indexed and counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Dim {
    /// Every event (counters only; the index is `TENANT_EVENT`).
    Total = 0,
    Type = 1,
    Severity = 2,
    Project = 3,
    Task = 4,
    Agent = 5,
    /// The call an event belongs to or is about (index only: a call's count is bounded).
    Call = 6,
    /// Every activity record.
    Activity = 7,
    /// `agent.completed` records, by agent type (counters only).
    AgentCompleted = 8,
    /// `agent.error` records, by agent type (counters only).
    AgentError = 9,
    /// Events per hour of `at_ms`, value the hour's number (counters only).
    Hour = 10,
}

/// `tenant | dim | value`: the prefix of one index's rows.
pub fn index_prefix(tenant: &str, dim: Dim, value: &[u8]) -> Vec<u8> {
    let mut key = key(table::EVENT_INDEX, 3 + tenant.len() + value.len() + 8);
    push_str(&mut key, tenant);
    key.push(dim as u8);
    push_bytes(&mut key, value);
    key
}

pub fn index_row(tenant: &str, dim: Dim, value: &[u8], position: u64) -> Vec<u8> {
    let mut key = index_prefix(tenant, dim, value);
    key.extend_from_slice(&position.to_be_bytes());
    key
}

/// `tenant | scope | dim | value`: a counter. Scope is empty for the whole tenant, else a
/// project id.
pub fn counter(tenant: &str, scope: &str, dim: Dim, value: &[u8]) -> Vec<u8> {
    let mut key = counter_prefix(tenant, scope, dim);
    push_bytes(&mut key, value);
    key
}

pub fn counter_prefix(tenant: &str, scope: &str, dim: Dim) -> Vec<u8> {
    let mut key = key(table::COUNTER, 3 + tenant.len() + scope.len() + 16);
    push_str(&mut key, tenant);
    push_str(&mut key, scope);
    key.push(dim as u8);
    key
}

/// The value of a counter key after its `counter_prefix`.
pub fn counter_value<'k>(key: &'k [u8], prefix: &[u8]) -> Option<&'k [u8]> {
    let (&len, value) = key.strip_prefix(prefix)?.split_first()?;
    (value.len() == usize::from(len)).then_some(value)
}

pub fn retention(tenant: &str) -> Vec<u8> {
    let mut key = key(table::RETENTION, 1 + tenant.len());
    push_str(&mut key, tenant);
    key
}

fn push_bytes(key: &mut Vec<u8>, value: &[u8]) {
    // Index values are bounded by their fields' limits (all under 256 bytes), validated first.
    let len = u8::try_from(value.len()).expect("indexed values are validated to under 256 bytes");
    key.push(len);
    key.extend_from_slice(value);
}

/// The position at the end of a `tenant_event` or `index_row` key.
pub fn trailing_position(key: &[u8]) -> Option<u64> {
    decode_u64(key.get(key.len().checked_sub(8)?..)?)
}

/// The smallest key strictly greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_keys_sort_numerically() {
        assert!(event(255) < event(256));
        assert!(log_index(1) < log_index(1 << 40));
        let id = CallId::from_u128(7);
        assert!(turn(&id, 9) < turn(&id, 10));
    }

    #[test]
    fn a_tenant_prefix_does_not_cover_a_longer_tenant_name() {
        let id = CallId::from_u128(1);
        let prefix = tenant_prefix("acme");
        assert!(tenant_call("acme", &id).starts_with(&prefix));
        assert!(!tenant_call("acme2", &id).starts_with(&prefix));
    }

    #[test]
    fn an_expiry_key_splits_into_its_parts() {
        let key = idempotency_expiry(42, "acme", "req-1");
        assert_eq!(
            split_idempotency_expiry(&key),
            Some((42, "acme".to_owned(), "req-1".to_owned()))
        );
        assert_eq!(split_idempotency_expiry(&key[..key.len() - 9]), None);
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 255]), Some(vec![2]));
        assert_eq!(prefix_end(&[255]), None);
    }
}
