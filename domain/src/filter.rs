//! Which events a reader wants: the filter of a watch (and of queries to come), checked against
//! its bounds once and then matched against each event of the log.

use crate::limits::{
    self, EVENT_TYPE_BYTES_MAX, Field, Invalid, METADATA_BOUNDS, Problem, TENANT_ID_BYTES_MAX,
    WATCH_TYPE_PREFIXES_MAX,
};
use crate::{CallId, Event, Labels};

/// Events matching every part that is given (AND); a list matches when any item does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only this tenant's events; `None` is every tenant (an admin's scope).
    pub tenant_id: Option<String>,
    /// Only this call's events.
    pub call_id: Option<CallId>,
    /// Only types starting with one of these; empty is every type.
    pub type_prefixes: Vec<String>,
    /// Only events whose metadata holds each of these pairs.
    pub metadata: Labels,
}

impl EventFilter {
    /// Checks the filter's bounds: a tenant within its size, at most
    /// [`WATCH_TYPE_PREFIXES_MAX`] non-empty prefixes of at most [`EVENT_TYPE_BYTES_MAX`], and
    /// metadata within the bounds events themselves have.
    pub fn check(&self) -> Result<(), Invalid> {
        if let Some(tenant) = &self.tenant_id {
            limits::check_required(Field::TenantId, tenant, TENANT_ID_BYTES_MAX)?;
        }
        if self.type_prefixes.len() > WATCH_TYPE_PREFIXES_MAX {
            return Err(Invalid::new(
                Field::EventTypePrefixes,
                Problem::EntriesOver {
                    entries_max: WATCH_TYPE_PREFIXES_MAX as u64,
                    entries: self.type_prefixes.len() as u64,
                },
            ));
        }
        for prefix in &self.type_prefixes {
            limits::check_required(Field::EventTypePrefixes, prefix, EVENT_TYPE_BYTES_MAX)?;
        }
        limits::check_map(METADATA_BOUNDS, self.metadata.iter())
    }

    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &Event) -> bool {
        self.tenant_id
            .as_deref()
            .is_none_or(|tenant| event.tenant_id == tenant)
            && self.call_id.is_none_or(|call| event.call_id == call)
            && (self.type_prefixes.is_empty()
                || self
                    .type_prefixes
                    .iter()
                    .any(|prefix| event.event_type.starts_with(prefix.as_str())))
            && self
                .metadata
                .iter()
                .all(|(key, value)| event.metadata.get(key) == Some(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Payload, event_id};

    fn event(tenant: &str, call: u128, event_type: &str, metadata: &[(&str, &str)]) -> Event {
        Event {
            position: 1,
            event_id: event_id(1),
            event_type: event_type.to_owned(),
            call_id: CallId::from_u128(call),
            tenant_id: tenant.to_owned(),
            trace_id: String::new(),
            sequence_number: 1,
            at_ms: 0,
            payload: Payload::Json(String::new()),
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn every_given_part_must_match() {
        let e = event("acme", 7, "call.started", &[("agent", "a1"), ("lane", "x")]);
        assert!(EventFilter::default().matches(&e));
        let tenant = |t: &str| EventFilter {
            tenant_id: Some(t.to_owned()),
            ..EventFilter::default()
        };
        assert!(tenant("acme").matches(&e));
        assert!(!tenant("acm").matches(&e));
        let call = |c: u128| EventFilter {
            call_id: Some(CallId::from_u128(c)),
            ..EventFilter::default()
        };
        assert!(call(7).matches(&e));
        assert!(!call(8).matches(&e));
        let types = |p: &[&str]| EventFilter {
            type_prefixes: p.iter().map(|s| (*s).to_owned()).collect(),
            ..EventFilter::default()
        };
        assert!(types(&["turn.", "call."]).matches(&e));
        assert!(types(&["call.started"]).matches(&e));
        assert!(!types(&["call.ended", "turn."]).matches(&e));
        let metadata = |m: &[(&str, &str)]| EventFilter {
            metadata: m
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..EventFilter::default()
        };
        assert!(metadata(&[("agent", "a1")]).matches(&e));
        assert!(metadata(&[("agent", "a1"), ("lane", "x")]).matches(&e));
        assert!(!metadata(&[("agent", "a1"), ("lane", "y")]).matches(&e));
        assert!(!metadata(&[("missing", "")]).matches(&e));
        let all = EventFilter {
            tenant_id: Some("acme".to_owned()),
            call_id: Some(CallId::from_u128(7)),
            type_prefixes: vec!["call.".to_owned()],
            metadata: metadata(&[("lane", "x")]).metadata,
        };
        assert!(all.matches(&e));
        assert!(
            !EventFilter {
                tenant_id: Some("globex".to_owned()),
                ..all
            }
            .matches(&e)
        );
    }

    #[test]
    fn bounds_are_checked_naming_the_field() {
        let too_many = EventFilter {
            type_prefixes: vec!["a".to_owned(); WATCH_TYPE_PREFIXES_MAX + 1],
            ..EventFilter::default()
        };
        assert_eq!(
            too_many.check().expect_err("too many").to_string(),
            format!(
                "event_type_prefixes has {} entries, over the bound of {WATCH_TYPE_PREFIXES_MAX}",
                WATCH_TYPE_PREFIXES_MAX + 1
            )
        );
        let empty = EventFilter {
            type_prefixes: vec![String::new()],
            ..EventFilter::default()
        };
        assert_eq!(
            empty.check().expect_err("empty").field,
            Field::EventTypePrefixes
        );
        let long = EventFilter {
            type_prefixes: vec!["x".repeat(EVENT_TYPE_BYTES_MAX + 1)],
            ..EventFilter::default()
        };
        assert!(long.check().is_err());
        assert!(
            EventFilter {
                type_prefixes: vec!["call.".to_owned()],
                tenant_id: Some("acme".to_owned()),
                ..EventFilter::default()
            }
            .check()
            .is_ok()
        );
    }
}
