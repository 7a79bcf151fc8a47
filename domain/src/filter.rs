//! Which events a reader wants: the filter of a watch (and of queries to come), checked against
//! its bounds once and then matched against each event of the log.

use crate::activity::Severity;
use crate::limits::{
    self, AGENT_TYPE_BYTES_MAX, EVENT_TYPE_BYTES_MAX, Field, Invalid, METADATA_BOUNDS,
    PROJECT_ID_BYTES_MAX, Problem, TASK_ID_BYTES_MAX, TENANT_ID_BYTES_MAX, WATCH_TYPE_PREFIXES_MAX,
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
    /// Only agent activity of at least this severity (call events have none, so they never
    /// match a minimum).
    pub min_severity: Option<Severity>,
    /// Only agent activity of this project.
    pub project_id: Option<String>,
    /// Only agent activity of this task.
    pub task_id: Option<String>,
    /// Only agent activity of this agent type.
    pub agent_type: Option<String>,
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
        if let Some(project) = &self.project_id {
            limits::check_required(Field::ProjectId, project, PROJECT_ID_BYTES_MAX)?;
        }
        if let Some(task) = &self.task_id {
            limits::check_required(Field::TaskId, task, TASK_ID_BYTES_MAX)?;
        }
        if let Some(agent) = &self.agent_type {
            limits::check_required(Field::AgentType, agent, AGENT_TYPE_BYTES_MAX)?;
        }
        limits::check_map(METADATA_BOUNDS, self.metadata.iter())
    }

    /// Whether only agent activity can match.
    pub fn activity_only(&self) -> bool {
        self.min_severity.is_some()
            || self.project_id.is_some()
            || self.task_id.is_some()
            || self.agent_type.is_some()
    }

    fn matches_activity(&self, event: &Event) -> bool {
        if !self.activity_only() {
            return true;
        }
        let Some(activity) = &event.activity else {
            return false;
        };
        self.min_severity.is_none_or(|min| activity.severity >= min)
            && self
                .project_id
                .as_deref()
                .is_none_or(|p| activity.project_id == p)
            && self
                .task_id
                .as_deref()
                .is_none_or(|t| activity.task_id == t)
            && self
                .agent_type
                .as_deref()
                .is_none_or(|a| activity.agent_type == a)
    }

    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &Event) -> bool {
        self.tenant_id
            .as_deref()
            .is_none_or(|tenant| event.tenant_id == tenant)
            && self.call_id.is_none_or(|call| event.call_id == Some(call))
            && (self.type_prefixes.is_empty()
                || self
                    .type_prefixes
                    .iter()
                    .any(|prefix| event.event_type.starts_with(prefix.as_str())))
            && self
                .metadata
                .iter()
                .all(|(key, value)| event.metadata.get(key) == Some(value))
            && self.matches_activity(event)
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
            call_id: Some(CallId::from_u128(call)),
            tenant_id: tenant.to_owned(),
            trace_id: String::new(),
            sequence_number: 1,
            at_ms: 0,
            payload: Payload::Json(String::new()),
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            activity: None,
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
            ..EventFilter::default()
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
    fn activity_parts_match_only_activity() {
        use crate::activity::{Activity, ActivityStatus};
        let call_event = event("acme", 7, "call.started", &[]);
        let mut record = event("acme", 7, "agent.error", &[]);
        record.activity = Some(Box::new(Activity {
            agent_type: "agent-api".into(),
            agent_name: "API".into(),
            project_id: "P".into(),
            task_id: "T".into(),
            task_description: String::new(),
            severity: Severity::Error,
            status: ActivityStatus::Failed,
            message: String::new(),
        }));
        let min = |s| EventFilter {
            min_severity: Some(s),
            ..EventFilter::default()
        };
        assert!(min(Severity::Warning).matches(&record));
        assert!(min(Severity::Error).matches(&record));
        assert!(!min(Severity::Critical).matches(&record));
        assert!(!min(Severity::Debug).matches(&call_event));
        let project = EventFilter {
            project_id: Some("P".into()),
            task_id: Some("T".into()),
            agent_type: Some("agent-api".into()),
            ..EventFilter::default()
        };
        assert!(project.matches(&record));
        assert!(!project.matches(&call_event));
        assert!(
            !EventFilter {
                task_id: Some("U".into()),
                ..project
            }
            .matches(&record)
        );
        assert!(EventFilter::default().matches(&record));
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
