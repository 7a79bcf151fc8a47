//! Filtered queries and statistics over a tenant's event log, served from the derived tables
//! ([`crate::indexes`]).
//!
//! A query is planned, then run with bounded work:
//! - **Range.** A time range becomes a position range by binary search over the event table
//!   (the state machine's clock never goes back, so `at_ms` never decreases along positions).
//!   A page token narrows it further.
//! - **Lists.** Each indexed part of the filter is a list of positions: a list of exact types
//!   (one index per type, merged by position), a minimum severity (one per severity at or above
//!   it), a project, task, agent type or call. With none of those, all activity or else all of
//!   the tenant's events. Their lengths are read from the counters.
//! - **Walk.** The positions in every list, found by a leapfrog join (as in worst-case optimal
//!   joins): the shortest list leads, and each other list seeks to the candidate or past it,
//!   so disjoint long lists cost seeks, not reads. Only those positions' events are read, and
//!   the rest of the filter (type prefixes, metadata) checked on them; the walk stops when the
//!   page is full, [`QUERY_EXAMINED_MAX`] events were read or [`WALK_STEPS_MAX`] seeks made,
//!   and the page token says where to go on. A page may be short, or empty, and still have a
//!   next one.
//! - **Total.** From the counters when the filter is exactly one indexed value (or nothing), or
//!   a project and one of types, minimum severity or agent type (the project's own counters),
//!   and no time range; else counted by the same walk, reading events only when the filter has
//!   parts no index holds (up to [`COUNT_EXAMINED_MAX`] of them), and marked inexact (a lower
//!   bound) when a bound ends the count.

use domain::limits::{self, Field, Invalid, Problem, QUERY_VALUES_MAX};
use domain::{Event, EventFilter, Severity};
use rocksdb::{DB, DBRawIteratorWithThreadMode};

use crate::codec::decode;
use crate::error::Error;
use crate::indexes::{hour_ms, severity_code, severity_of_code};
use crate::keys::{self, Dim};
use crate::reader::{At, ReadError, Reader, View};

/// Events one query page looks at, at most.
pub const QUERY_EXAMINED_MAX: usize = 10_000;
/// Events a total reads, at most, before it is reported as a lower bound.
pub const COUNT_EXAMINED_MAX: usize = 10_000;
/// Index seeks and rows one page or one total walks, at most.
pub const WALK_STEPS_MAX: usize = 50_000;
/// Rows a list steps over towards a candidate before it seeks to it instead.
const STEPS_BEFORE_SEEK: usize = 4;
/// Time buckets one statistics answer holds, at most.
pub const STATS_BUCKETS_MAX: usize = 1_000;
/// Hour counters one statistics answer reads, at most.
const STATS_HOURS_MAX: usize = 100_000;
const HOUR_MS: u64 = 60 * 60 * 1000;

/// What to find in one tenant's event log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventQuery {
    /// Must name the tenant.
    pub filter: EventFilter,
    /// Exact event types, any of; empty is every type.
    pub types: Vec<String>,
    /// `[from_ms, to_ms)` in leader-stamped time.
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    pub newest_first: bool,
    /// Continue after this position (the previous page's token), in the query's direction.
    pub after: Option<u64>,
    pub limit: u32,
    pub with_total: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Total {
    pub count: u64,
    /// `false`: the count stopped at its bound and is a lower bound.
    pub exact: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueryPage {
    pub items: Vec<Event>,
    /// The token of the next page: the last position looked at. `None`: nothing more matches.
    pub next: Option<u64>,
    pub total: Option<Total>,
    /// Events looked at for this page.
    pub examined: u64,
}

/// Statistics of a tenant (or of one project of it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventStats {
    /// Events held (activity and, for a whole tenant, call events).
    pub total: u64,
    pub activity: u64,
    pub by_type: Vec<(String, u64)>,
    pub by_severity: Vec<(Severity, u64)>,
    pub agents: Vec<AgentStats>,
    /// `(bucket start ms, events)`, oldest first, only buckets with events.
    pub buckets: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentStats {
    pub agent_type: String,
    pub records: u64,
    pub completed: u64,
    pub errors: u64,
}

impl AgentStats {
    /// completed / (completed + error); `None` before either happened.
    pub fn success_rate(&self) -> Option<f64> {
        let done = self.completed + self.errors;
        (done > 0).then(|| self.completed as f64 / done as f64)
    }
}

/// The position lists a query joins, shortest first.
struct Plan {
    lists: Vec<List>,
    /// The filter parts the lists together guarantee, beyond the tenant.
    covers: Covers,
}

/// One position list: the rows of one or more index prefixes, merged by position.
struct List {
    prefixes: Vec<Vec<u8>>,
    covers: Covers,
    /// Its length as the counters tell; `None` for a call's rows, which are few by bound.
    cost: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Covers {
    types: bool,
    severity: bool,
    project: bool,
    task: bool,
    agent: bool,
    call: bool,
}

impl EventQuery {
    fn check(&self) -> Result<&str, Invalid> {
        let tenant = self
            .filter
            .tenant_id
            .as_deref()
            .ok_or(Invalid::new(Field::TenantId, Problem::Empty))?;
        self.filter.check()?;
        if self.types.len() > QUERY_VALUES_MAX {
            return Err(Invalid::new(
                Field::EventType,
                Problem::EntriesOver {
                    entries_max: QUERY_VALUES_MAX as u64,
                    entries: self.types.len() as u64,
                },
            ));
        }
        for t in &self.types {
            limits::check_required(Field::EventType, t, limits::EVENT_TYPE_BYTES_MAX)?;
        }
        if let (Some(from), Some(to)) = (self.from_ms, self.to_ms)
            && from > to
        {
            return Err(Invalid::new(Field::TimeRange, Problem::Inverted));
        }
        Ok(tenant)
    }

    /// Whether `event` passes everything but the position range.
    fn matches(&self, event: &Event) -> bool {
        self.filter.matches(event)
            && (self.types.is_empty() || self.types.contains(&event.event_type))
    }

    /// Whether the filter asks for more than `covers` and the tenant.
    fn beyond(&self, covers: Covers) -> bool {
        let f = &self.filter;
        (!self.types.is_empty() && !covers.types)
            || (f.min_severity.is_some() && !covers.severity)
            || (f.project_id.is_some() && !covers.project)
            || (f.task_id.is_some() && !covers.task)
            || (f.agent_type.is_some() && !covers.agent)
            || (f.call_id.is_some() && !covers.call)
            || !f.type_prefixes.is_empty()
            || !f.metadata.is_empty()
    }
}

impl Reader {
    /// One page of a tenant's events matching `query`.
    pub fn query_events(&self, query: &EventQuery) -> Result<At<QueryPage>, ReadError> {
        let tenant = query.check()?;
        let limit = limits::page_size(query.limit)?;
        let view = self.view();
        let head = head_of(&view)?;
        let (lo, hi) = position_range(&view, query.from_ms, query.to_ms, head)?;
        let plan = plan(&view, tenant, query)?;
        let timed = query.from_ms.is_some() || query.to_ms.is_some();

        let total = if query.with_total {
            Some(count(&view, query, &plan, lo, hi, timed)?)
        } else {
            None
        };

        let (lo, hi) = match query.after {
            Some(after) if query.newest_first => (lo, hi.min(after)),
            Some(after) => (lo.max(after.saturating_add(1)), hi),
            None => (lo, hi),
        };
        let mut items = Vec::new();
        let mut bytes_left = limits::PAGE_BYTES_MAX;
        let mut examined = 0u64;
        let mut next = None;
        let mut walk = Join::new(&view, &plan, lo, hi, query.newest_first);
        loop {
            let position = match walk.next()? {
                Step::Match(position) => position,
                Step::End => break,
                Step::OutOfSteps(at) => {
                    // Every position before `at` (in walk order) was decided.
                    next = Some(walk.token_before(at));
                    break;
                }
            };
            if examined as usize == QUERY_EXAMINED_MAX {
                // Out of budget: the next page starts after the last position looked at.
                next = Some(walk.token_before(position));
                break;
            }
            examined += 1;
            let key = keys::event(position);
            let bytes = view
                .snap
                .get_cf(view.cf(), &key)
                .map_err(Error::rocks("read state machine"))?
                .ok_or_else(|| Error::Missing {
                    what: "event of an index row",
                    key: crate::codec::hex(&key),
                })?;
            let event: Event = decode("event", &key, &bytes)?;
            if !query.matches(&event) {
                continue;
            }
            let size = key.len() + bytes.len();
            if items.len() == limit as usize || (!items.is_empty() && size > bytes_left) {
                next = Some(walk.token_before(position));
                break;
            }
            bytes_left = bytes_left.saturating_sub(size);
            items.push(event);
        }
        Reader::at(
            &view,
            QueryPage {
                items,
                next,
                total,
                examined,
            },
        )
    }

    /// Totals by type and severity, per agent type, and per time bucket, of a tenant or of one
    /// of its projects. Totals cover every event held (retention may have removed older
    /// activity); `[from_ms, to_ms)` narrows the buckets, of `bucket_ms` (a whole number of
    /// hours; 0 is one hour).
    pub fn event_stats(
        &self,
        tenant_id: &str,
        project_id: Option<&str>,
        from_ms: Option<u64>,
        to_ms: Option<u64>,
        bucket_ms: u64,
    ) -> Result<At<EventStats>, ReadError> {
        limits::check_required(Field::TenantId, tenant_id, limits::TENANT_ID_BYTES_MAX)?;
        if let Some(project) = project_id {
            limits::check_required(Field::ProjectId, project, limits::PROJECT_ID_BYTES_MAX)?;
        }
        let bucket_ms = if bucket_ms == 0 { HOUR_MS } else { bucket_ms };
        if bucket_ms % HOUR_MS != 0 {
            return Err(Invalid::new(Field::TimeRange, Problem::Malformed).into());
        }
        if let (Some(from), Some(to)) = (from_ms, to_ms)
            && from > to
        {
            return Err(Invalid::new(Field::TimeRange, Problem::Inverted).into());
        }
        let scope = project_id.unwrap_or("");
        let view = self.view();
        let counters = |dim: Dim, max: usize| counters_of(&view, tenant_id, scope, dim, max);
        let mut stats = EventStats {
            total: counters(Dim::Total, 1)?.first().map_or(0, |(_, n)| *n),
            activity: counters(Dim::Activity, 1)?.first().map_or(0, |(_, n)| *n),
            ..EventStats::default()
        };
        // Types and agent types are open sets: a tenant with more than a page of them gets the
        // first page (in name order).
        let names_max = limits::PAGE_SIZE_MAX as usize;
        stats.by_type = counters(Dim::Type, names_max)?
            .into_iter()
            .map(|(v, n)| (String::from_utf8_lossy(&v).into_owned(), n))
            .collect();
        stats.by_severity = counters(Dim::Severity, Severity::ALL.len())?
            .into_iter()
            .filter_map(|(v, n)| Some((severity_of_code(*v.first()?)?, n)))
            .collect();
        let completed = counters(Dim::AgentCompleted, names_max)?;
        let errors = counters(Dim::AgentError, names_max)?;
        let find = |list: &[(Vec<u8>, u64)], key: &[u8]| {
            list.iter().find(|(v, _)| v == key).map_or(0, |(_, n)| *n)
        };
        stats.agents = counters(Dim::Agent, names_max)?
            .into_iter()
            .map(|(v, n)| AgentStats {
                completed: find(&completed, &v),
                errors: find(&errors, &v),
                agent_type: String::from_utf8_lossy(&v).into_owned(),
                records: n,
            })
            .collect();
        // Hour counters are keyed by the hour's number, big-endian: key order is time order.
        let prefix = keys::counter_prefix(tenant_id, scope, Dim::Hour);
        let mut start = prefix.clone();
        start.push(8);
        start.extend_from_slice(&from_ms.unwrap_or(0).div_euclid(HOUR_MS).to_be_bytes());
        let mut end = prefix.clone();
        end.push(8);
        end.extend_from_slice(
            &to_ms
                .map_or(u64::MAX, |t| t.div_ceil(HOUR_MS))
                .to_be_bytes(),
        );
        let mut buckets: Vec<(u64, u64)> = Vec::new();
        for (read, item) in view.range(&start, &end).enumerate() {
            if read == STATS_HOURS_MAX {
                break;
            }
            let (key, value) = item.map_err(Error::rocks("scan counters"))?;
            let Some(hour) = keys::counter_value(&key, &prefix).and_then(hour_ms) else {
                continue;
            };
            if from_ms.is_some_and(|f| hour + HOUR_MS <= f) || to_ms.is_some_and(|t| hour >= t) {
                continue;
            }
            let n: u64 = decode("counter", &key, &value)?;
            let bucket = hour - hour % bucket_ms;
            let full = buckets.len() == STATS_BUCKETS_MAX;
            match buckets.last_mut() {
                Some((start, count)) if *start == bucket => *count += n,
                _ if full => break,
                _ => buckets.push((bucket, n)),
            }
        }
        stats.buckets = buckets;
        Reader::at(&view, stats)
    }
}

fn head_of(view: &View<'_>) -> Result<u64, Error> {
    let head: Option<domain::Head> = view.get("head", keys::SM_HEAD)?;
    Ok(head.map_or(1, |h| h.next_position))
}

/// The counters of one dimension in a scope: `(value, count)` in value order, at most `max`.
fn counters_of(
    view: &View<'_>,
    tenant: &str,
    scope: &str,
    dim: Dim,
    max: usize,
) -> Result<Vec<(Vec<u8>, u64)>, Error> {
    let prefix = keys::counter_prefix(tenant, scope, dim);
    let end = keys::prefix_end(&prefix).expect("a counter prefix has an end");
    let mut out = Vec::new();
    for item in view.range(&prefix, &end) {
        if out.len() == max {
            break;
        }
        let (key, value) = item.map_err(Error::rocks("scan counters"))?;
        if let Some(v) = keys::counter_value(&key, &prefix) {
            out.push((v.to_vec(), decode("counter", &key, &value)?));
        }
    }
    Ok(out)
}

fn counter(view: &View<'_>, tenant: &str, dim: Dim, value: &[u8]) -> Result<u64, Error> {
    Ok(view
        .get("counter", &keys::counter(tenant, "", dim, value))?
        .unwrap_or(0))
}

/// The position range `[lo, hi)` of events stamped in `[from_ms, to_ms)`.
fn position_range(
    view: &View<'_>,
    from_ms: Option<u64>,
    to_ms: Option<u64>,
    head: u64,
) -> Result<(u64, u64), Error> {
    let lo = match from_ms {
        Some(ms) => first_at_or_after(view, ms, head)?,
        None => 1,
    };
    let hi = match to_ms {
        Some(ms) => first_at_or_after(view, ms, head)?,
        None => head,
    };
    Ok((lo, hi.max(lo)))
}

/// The smallest position whose next stored event is stamped at or after `ms` (`head` if none):
/// a binary search, since stamps never decrease along positions.
fn first_at_or_after(view: &View<'_>, ms: u64, head: u64) -> Result<u64, Error> {
    let (mut lo, mut hi) = (1u64, head);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let stamped = match next_stored(view, mid, head)? {
            Some(event) => event.at_ms >= ms,
            None => true,
        };
        if stamped {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(lo)
}

/// The first stored event at or after `position` (compaction leaves holes).
fn next_stored(view: &View<'_>, position: u64, head: u64) -> Result<Option<Event>, Error> {
    let end = keys::event(head);
    match view.range(&keys::event(position), &end).next() {
        Some(item) => {
            let (key, value) = item.map_err(Error::rocks("scan events"))?;
            Ok(Some(decode("event", &key, &value)?))
        }
        None => Ok(None),
    }
}

/// The position lists of `query`'s indexed parts, shortest first.
fn plan(view: &View<'_>, tenant: &str, query: &EventQuery) -> Result<Plan, Error> {
    let f = &query.filter;
    let mut lists: Vec<List> = Vec::new();
    let single = |dim: Dim, value: &[u8], covers: Covers| -> Result<List, Error> {
        Ok(List {
            prefixes: vec![keys::index_prefix(tenant, dim, value)],
            cost: Some(counter(view, tenant, dim, value)?),
            covers,
        })
    };
    if let Some(call) = &f.call_id {
        lists.push(List {
            prefixes: vec![keys::index_prefix(tenant, Dim::Call, call.as_bytes())],
            cost: None,
            covers: Covers {
                call: true,
                ..Covers::default()
            },
        });
    }
    if !query.types.is_empty() {
        let mut cost = 0;
        let mut prefixes = Vec::new();
        for t in &query.types {
            cost += counter(view, tenant, Dim::Type, t.as_bytes())?;
            prefixes.push(keys::index_prefix(tenant, Dim::Type, t.as_bytes()));
        }
        lists.push(List {
            prefixes,
            cost: Some(cost),
            covers: Covers {
                types: true,
                ..Covers::default()
            },
        });
    }
    if let Some(min) = f.min_severity {
        let mut cost = 0;
        let mut prefixes = Vec::new();
        for s in Severity::ALL.into_iter().filter(|s| *s >= min) {
            let code = [severity_code(s)];
            cost += counter(view, tenant, Dim::Severity, &code)?;
            prefixes.push(keys::index_prefix(tenant, Dim::Severity, &code));
        }
        lists.push(List {
            prefixes,
            cost: Some(cost),
            covers: Covers {
                severity: true,
                ..Covers::default()
            },
        });
    }
    if let Some(project) = &f.project_id {
        lists.push(single(
            Dim::Project,
            project.as_bytes(),
            Covers {
                project: true,
                ..Covers::default()
            },
        )?);
    }
    if let Some(task) = &f.task_id {
        lists.push(single(
            Dim::Task,
            task.as_bytes(),
            Covers {
                task: true,
                ..Covers::default()
            },
        )?);
    }
    if let Some(agent) = &f.agent_type {
        lists.push(single(
            Dim::Agent,
            agent.as_bytes(),
            Covers {
                agent: true,
                ..Covers::default()
            },
        )?);
    }
    // Nothing indexed asked for: all activity, or all of the tenant's events.
    if lists.is_empty() {
        lists.push(if f.activity_only() {
            single(Dim::Activity, b"", Covers::default())?
        } else {
            List {
                prefixes: vec![keys::tenant_event_prefix(tenant)],
                cost: Some(counter(view, tenant, Dim::Total, b"")?),
                covers: Covers::default(),
            }
        });
    }
    // A call's rows are bounded by its limits: they lead; else the shortest list.
    lists.sort_by_key(|l| l.cost.unwrap_or(0));
    let covers = lists.iter().fold(Covers::default(), |a, l| Covers {
        types: a.types || l.covers.types,
        severity: a.severity || l.covers.severity,
        project: a.project || l.covers.project,
        task: a.task || l.covers.task,
        agent: a.agent || l.covers.agent,
        call: a.call || l.covers.call,
    });
    Ok(Plan { lists, covers })
}

/// The total of `query` over `[lo, hi)`, from counters when they answer it exactly.
fn count(
    view: &View<'_>,
    query: &EventQuery,
    plan: &Plan,
    lo: u64,
    hi: u64,
    timed: bool,
) -> Result<Total, Error> {
    let fetch = query.beyond(plan.covers);
    if let ([list], false, false) = (plan.lists.as_slice(), fetch, timed)
        && let Some(cost) = list.cost
    {
        return Ok(Total {
            count: cost,
            exact: true,
        });
    }
    if !timed && let Some(count) = project_count(view, query)? {
        return Ok(Total { count, exact: true });
    }
    let mut walk = Join::new(view, plan, lo, hi, false);
    let mut count = 0;
    let mut examined = 0;
    loop {
        let position = match walk.next()? {
            Step::Match(position) => position,
            Step::End => break,
            Step::OutOfSteps(_) => {
                return Ok(Total {
                    count,
                    exact: false,
                });
            }
        };
        if !fetch {
            count += 1;
            continue;
        }
        if examined == COUNT_EXAMINED_MAX {
            return Ok(Total {
                count,
                exact: false,
            });
        }
        examined += 1;
        let key = keys::event(position);
        let event: Option<Event> = view.get("event", &key)?;
        if event.is_some_and(|e| query.matches(&e)) {
            count += 1;
        }
    }
    Ok(Total { count, exact: true })
}

/// The total of a filter that is a project and at most one of exact types, a minimum severity
/// or an agent type, from the project's own counters (`None`: the filter is not of that form).
fn project_count(view: &View<'_>, query: &EventQuery) -> Result<Option<u64>, Error> {
    let f = &query.filter;
    let Some(project) = f.project_id.as_deref() else {
        return Ok(None);
    };
    let others = [
        !query.types.is_empty(),
        f.min_severity.is_some(),
        f.agent_type.is_some(),
    ];
    if others.iter().filter(|o| **o).count() > 1
        || f.call_id.is_some()
        || f.task_id.is_some()
        || !f.type_prefixes.is_empty()
        || !f.metadata.is_empty()
    {
        return Ok(None);
    }
    let tenant = f.tenant_id.as_deref().unwrap_or_default();
    let count = |dim: Dim, value: &[u8]| -> Result<u64, Error> {
        Ok(view
            .get("counter", &keys::counter(tenant, project, dim, value))?
            .unwrap_or(0))
    };
    let mut total = 0;
    if !query.types.is_empty() {
        for t in &query.types {
            total += count(Dim::Type, t.as_bytes())?;
        }
    } else if let Some(min) = f.min_severity {
        for s in Severity::ALL.into_iter().filter(|s| *s >= min) {
            total += count(Dim::Severity, &[severity_code(s)])?;
        }
    } else if let Some(agent) = &f.agent_type {
        total = count(Dim::Agent, agent.as_bytes())?;
    } else {
        total = count(Dim::Activity, b"")?;
    }
    Ok(Some(total))
}

/// Rows of several index prefixes (each ending in a position), limited to positions in
/// `[lo, hi)`, merged into one position order.
struct Merge<'a> {
    iters: Vec<(Vec<u8>, DBRawIteratorWithThreadMode<'a, DB>)>,
    newest_first: bool,
}

impl<'a> Merge<'a> {
    fn new(view: &'a View<'_>, prefixes: &[Vec<u8>], lo: u64, hi: u64, newest_first: bool) -> Self {
        let iters = prefixes
            .iter()
            .map(|prefix| {
                let mut start = prefix.clone();
                start.extend_from_slice(&lo.to_be_bytes());
                let mut end = prefix.clone();
                end.extend_from_slice(&hi.to_be_bytes());
                let mut options = rocksdb::ReadOptions::default();
                options.set_iterate_lower_bound(start);
                options.set_iterate_upper_bound(end);
                let mut it = view.snap.raw_iterator_cf_opt(view.cf(), options);
                if newest_first {
                    it.seek_to_last();
                } else {
                    it.seek_to_first();
                }
                (prefix.clone(), it)
            })
            .collect();
        Self {
            iters,
            newest_first,
        }
    }

    /// The next position (which of the prefixes holds it), not taken.
    fn peek(&self) -> Result<Option<(usize, u64)>, Error> {
        let mut best: Option<(usize, u64)> = None;
        for (i, (_, it)) in self.iters.iter().enumerate() {
            it.status().map_err(Error::rocks("walk index"))?;
            let Some(position) = it.key().and_then(keys::trailing_position) else {
                continue;
            };
            if best.is_none_or(|(_, b)| before(self.newest_first, position, b)) {
                best = Some((i, position));
            }
        }
        Ok(best)
    }

    /// Takes the next position.
    fn next(&mut self) -> Result<Option<u64>, Error> {
        let Some((i, position)) = self.peek()? else {
            return Ok(None);
        };
        let it = &mut self.iters[i].1;
        if self.newest_first {
            it.prev();
        } else {
            it.next();
        }
        Ok(Some(position))
    }

    /// Passes over every position before `target` (in walk order): a few steps first (dense
    /// lists interleave closely, and a step is cheaper than a seek), then a seek.
    fn seek(&mut self, target: u64) {
        let newest_first = self.newest_first;
        for (prefix, it) in &mut self.iters {
            let mut stepped = 0;
            while let Some(p) = it.key().and_then(keys::trailing_position) {
                if !before(newest_first, p, target) {
                    break;
                }
                if stepped == STEPS_BEFORE_SEEK {
                    let mut key = prefix.clone();
                    key.extend_from_slice(&target.to_be_bytes());
                    if newest_first {
                        it.seek_for_prev(&key);
                    } else {
                        it.seek(&key);
                    }
                    break;
                }
                if newest_first {
                    it.prev();
                } else {
                    it.next();
                }
                stepped += 1;
            }
        }
    }
}

/// Whether position `a` comes before `b` in a walk (newest first: the higher one).
fn before(newest_first: bool, a: u64, b: u64) -> bool {
    if newest_first { a > b } else { a < b }
}

/// One step of a [`Join`].
enum Step {
    /// A position in every list.
    Match(u64),
    /// No more.
    End,
    /// Out of steps: every position before this one (in walk order) was decided.
    OutOfSteps(u64),
}

/// The positions in every list of a plan, in walk order: a leapfrog join, bounded by
/// [`WALK_STEPS_MAX`] seeks and rows.
struct Join<'a> {
    lists: Vec<Merge<'a>>,
    newest_first: bool,
    steps: usize,
}

impl<'a> Join<'a> {
    fn new(view: &'a View<'_>, plan: &Plan, lo: u64, hi: u64, newest_first: bool) -> Self {
        Self {
            lists: plan
                .lists
                .iter()
                .map(|l| Merge::new(view, &l.prefixes, lo, hi, newest_first))
                .collect(),
            newest_first,
            steps: 0,
        }
    }

    fn next(&mut self) -> Result<Step, Error> {
        let Some((_, mut target)) = self.lists[0].peek()? else {
            return Ok(Step::End);
        };
        // Lists known to hold `target`, counting round from the one that proposed it.
        let mut agreed = 1;
        let mut i = 0;
        while agreed < self.lists.len() {
            if self.steps >= WALK_STEPS_MAX {
                return Ok(Step::OutOfSteps(target));
            }
            self.steps += 1;
            i = (i + 1) % self.lists.len();
            self.lists[i].seek(target);
            match self.lists[i].peek()? {
                None => return Ok(Step::End),
                Some((_, p)) if p == target => agreed += 1,
                // Past `target`: the new candidate, which this list holds.
                Some((_, p)) => {
                    target = p;
                    agreed = 1;
                }
            }
        }
        if self.steps >= WALK_STEPS_MAX {
            return Ok(Step::OutOfSteps(target));
        }
        self.steps += 1;
        for list in &mut self.lists {
            list.next()?;
        }
        Ok(Step::Match(target))
    }

    /// The page token that makes the next page start at `position` (not yet taken).
    fn token_before(&self, position: u64) -> u64 {
        if self.newest_first {
            position.saturating_add(1)
        } else {
            position.saturating_sub(1)
        }
    }
}

impl Reader {
    /// Tenants with a retention whose oldest activity record is past it at `now_ms`, at most
    /// `limit` of them (in tenant order): the leader proposes `CompactActivity` for them, so
    /// that a tenant that stopped writing is compacted too.
    pub fn retention_due(&self, now_ms: u64, limit: usize) -> Result<Vec<String>, Error> {
        let view = self.view();
        let start = [keys::table::RETENTION];
        let end = [keys::table::RETENTION + 1];
        let mut due = Vec::new();
        for item in view.range(&start, &end) {
            if due.len() == limit {
                break;
            }
            let (key, value) = item.map_err(Error::rocks("scan retention"))?;
            let Some(tenant) = key
                .get(2..)
                .and_then(|name| String::from_utf8(name.to_vec()).ok())
            else {
                continue;
            };
            let retention: domain::Retention = decode("retention", &key, &value)?;
            let held = counter(&view, &tenant, Dim::Activity, b"")?;
            let prefix = keys::index_prefix(&tenant, Dim::Activity, b"");
            let end = keys::prefix_end(&prefix).expect("an index prefix has an end");
            let oldest = match view.range(&prefix, &end).next() {
                Some(item) => {
                    let (row, _) = item.map_err(Error::rocks("scan activity"))?;
                    match keys::trailing_position(&row) {
                        Some(position) => view.get::<Event>("event", &keys::event(position))?,
                        None => None,
                    }
                }
                None => None,
            };
            if oldest.is_some_and(|e| retention.drops(e.at_ms, held, now_ms)) {
                due.push(tenant);
            }
        }
        Ok(due)
    }
}
