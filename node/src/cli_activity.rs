//! `switchboard activity ...` (record agent activity, retention) and `switchboard events
//! query|stats`: the command lines of the activity and query RPCs.

use std::io::BufRead as _;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use client::Client;
use proto::v1::{
    Activity, ActivityEntry, ActivityStatus, ActivityType, CompactActivityRequest,
    EventStatsRequest, EventStatsResponse, QueryEventsRequest, QueryEventsResponse,
    RecordActivityRequest, RecordActivityResponse, RetentionResponse, SetRetentionRequest,
    Severity,
};

use crate::cli_client::{
    CliError, ClientOpts, connect, emit, event_line, now_ms, parse_key_value, proto_value,
    read_meta_line, read_options, request_id, tenant, write_meta_suffix,
};

/// Records one RecordActivity carries at most (the domain's bound).
const BATCH_MAX: usize = domain::limits::ACTIVITY_BATCH_MAX;

#[derive(Debug, Clone, Args)]
pub struct ActivityArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub command: ActivityCommand,
}

/// Agent activity: typed records of what agents do, in the event log, not tied to a call.
#[derive(Debug, Clone, Subcommand)]
pub enum ActivityCommand {
    /// Record one activity record, or (--file) many, up to 100 per write.
    Record(Box<RecordArgs>),
    /// Set the tenant's activity retention (admin): older or surplus records are removed.
    Retention {
        /// Keep activity stamped within this long (e.g. 7d, 12h; at least 1m).
        #[arg(long, value_parser = parse_age)]
        max_age: Option<Duration>,
        /// Keep at most this many records (the newest).
        #[arg(long)]
        max_records: Option<u64>,
    },
    /// Remove the tenant's activity past its retention now (admin); repeats while more remain.
    Compact,
}

#[derive(Debug, Clone, Args)]
pub struct RecordArgs {
    /// What the agent reports.
    #[arg(long = "type", value_enum, required_unless_present = "file")]
    pub activity_type: Option<ActivityTypeArg>,
    /// Kind of agent, e.g. agent-security.
    #[arg(long, required_unless_present = "file")]
    pub agent_type: Option<String>,
    /// Human-readable agent name (default: the agent type).
    #[arg(long)]
    pub agent_name: Option<String>,
    /// Task the agent works on.
    #[arg(long, required_unless_present = "file")]
    pub task: Option<String>,
    /// What the task is.
    #[arg(long, default_value = "")]
    pub description: String,
    /// Project the activity belongs to.
    #[arg(long, default_value = "")]
    pub project: String,
    #[arg(long, value_enum, default_value_t = SeverityArg::Info)]
    pub severity: SeverityArg,
    /// Task status (default: the one the type implies: started, in-progress, completed,
    /// conflict, paused, failed).
    #[arg(long, value_enum)]
    pub status: Option<StatusArg>,
    #[arg(long, default_value = "")]
    pub message: String,
    /// A call the activity is about.
    #[arg(long = "call", value_name = "CALL_ID", default_value = "")]
    pub call_id: String,
    /// JSON payload.
    #[arg(long, default_value = "")]
    pub payload: String,
    /// Metadata pair (repeat).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub metadata: Vec<(String, String)>,
    /// Records to write, one proto3-JSON `ActivityEntry` per line (`-`: standard input), in
    /// writes of up to 100; a retry of the command with --request-id K retries write N as
    /// K-N.
    #[arg(long, conflicts_with_all = ["activity_type", "agent_type", "task"])]
    pub file: Option<String>,
}

/// `--type` values: the `agent.*` event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ActivityTypeArg {
    Started,
    Progress,
    Completed,
    ConflictDetected,
    Paused,
    Error,
}

/// `--severity` values, least first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SeverityArg {
    Debug,
    Info,
    Warning,
    Error,
    Critical,
}

/// `--status` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    Started,
    InProgress,
    Completed,
    Paused,
    Failed,
    Conflict,
}

impl ActivityTypeArg {
    fn implied_status(self) -> StatusArg {
        match self {
            ActivityTypeArg::Started => StatusArg::Started,
            ActivityTypeArg::Progress => StatusArg::InProgress,
            ActivityTypeArg::Completed => StatusArg::Completed,
            ActivityTypeArg::ConflictDetected => StatusArg::Conflict,
            ActivityTypeArg::Paused => StatusArg::Paused,
            ActivityTypeArg::Error => StatusArg::Failed,
        }
    }
}

/// `switchboard events query` options.
#[derive(Debug, Clone, Args)]
pub struct QueryArgs {
    /// Exact event type (repeat: any of them).
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// Only activity of at least this severity.
    #[arg(long, value_enum)]
    pub min_severity: Option<SeverityArg>,
    #[arg(long)]
    pub project: Option<String>,
    #[arg(long)]
    pub task: Option<String>,
    /// Only activity of this agent type.
    #[arg(long)]
    pub agent: Option<String>,
    #[arg(long = "call", value_name = "CALL_ID")]
    pub call_id: Option<String>,
    /// Only events of the last DURATION (e.g. 15m, 2h).
    #[arg(long, value_parser = parse_age, conflicts_with = "from_ms")]
    pub last: Option<Duration>,
    /// Only events stamped at or after this time (Unix ms).
    #[arg(long)]
    pub from_ms: Option<u64>,
    /// Only events stamped before this time (Unix ms).
    #[arg(long)]
    pub to_ms: Option<u64>,
    /// Only events with this metadata pair (repeat: all of them).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub metadata: Vec<(String, String)>,
    /// Oldest first (default: newest first).
    #[arg(long)]
    pub oldest_first: bool,
    /// The page token a previous page printed.
    #[arg(long, default_value = "")]
    pub page_token: String,
    /// Most events to show (0: server default).
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
    /// Also count every match.
    #[arg(long)]
    pub total: bool,
}

/// `switchboard events stats` options.
#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    /// One project's activity only.
    #[arg(long)]
    pub project: Option<String>,
    /// Buckets of the last DURATION only (e.g. 24h).
    #[arg(long, value_parser = parse_age)]
    pub last: Option<Duration>,
    /// Bucket width: whole hours (e.g. 1h, 24h).
    #[arg(long, value_parser = parse_age, default_value = "1h")]
    pub bucket: Duration,
}

fn parse_age(raw: &str) -> Result<Duration, String> {
    harness::parse_duration_with_unit(raw).map_err(|e| e.to_string())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn severity(arg: SeverityArg) -> Severity {
    proto_value(arg, "SEVERITY_", Severity::from_str_name)
}

fn entry(args: RecordArgs) -> Result<ActivityEntry, CliError> {
    let missing = |flag: &str| CliError::Usage(format!("activity record needs {flag}"));
    let activity_type = args.activity_type.ok_or_else(|| missing("--type"))?;
    let agent_type = args.agent_type.ok_or_else(|| missing("--agent-type"))?;
    let status = args
        .status
        .unwrap_or_else(|| activity_type.implied_status());
    if !args.payload.is_empty() {
        serde_json::from_str::<serde_json::Value>(&args.payload)
            .map_err(|e| CliError::Usage(format!("--payload is not valid JSON: {e}")))?;
    }
    Ok(ActivityEntry {
        activity_type: proto_value(activity_type, "ACTIVITY_TYPE_", ActivityType::from_str_name)
            .into(),
        activity: Some(Activity {
            agent_name: args.agent_name.unwrap_or_else(|| agent_type.clone()),
            agent_type,
            project_id: args.project,
            task_id: args.task.ok_or_else(|| missing("--task"))?,
            task_description: args.description,
            severity: severity(args.severity).into(),
            status: proto_value(status, "ACTIVITY_STATUS_", ActivityStatus::from_str_name).into(),
            message: args.message,
        }),
        call_id: args.call_id,
        payload_json: args.payload,
        metadata: args.metadata.into_iter().collect(),
    })
}

/// Reads `ActivityEntry` lines (proto3 JSON) from a file or standard input.
fn read_entries(path: &str) -> Result<Vec<ActivityEntry>, CliError> {
    let reader: Box<dyn std::io::BufRead> = if path == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(path)
            .map_err(|e| CliError::Usage(format!("failed to open {path}: {e}")))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut entries = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| CliError::Usage(format!("failed to read {path}: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        entries.push(serde_json::from_str(&line).map_err(|e| {
            CliError::Usage(format!("{path} line {}: not an ActivityEntry: {e}", n + 1))
        })?);
    }
    Ok(entries)
}

pub async fn activity(opts: &ClientOpts, command: ActivityCommand) -> Result<(), CliError> {
    let client = connect(opts)?;
    match command {
        ActivityCommand::Record(args) => {
            let entries = match &args.file {
                Some(path) => read_entries(path)?,
                None => vec![entry(*args)?],
            };
            let writes = entries.chunks(BATCH_MAX).count();
            for (n, batch) in entries.chunks(BATCH_MAX).enumerate() {
                // One request id per write, derived from the given one so a rerun retries each.
                let request_id = match (request_id(opts), writes) {
                    (id, 1) => id,
                    (id, _) if id.is_empty() => id,
                    (id, _) => format!("{id}-{}", n + 1),
                };
                let response = client
                    .record_activity(RecordActivityRequest {
                        tenant_id: tenant(opts),
                        request_id,
                        entries: batch.to_vec(),
                    })
                    .await?;
                emit(opts.output, &response, record_text)?;
            }
            Ok(())
        }
        ActivityCommand::Retention {
            max_age,
            max_records,
        } => {
            if max_age.is_none() && max_records.is_none() {
                return Err(CliError::Usage(
                    "activity retention needs --max-age or --max-records".to_owned(),
                ));
            }
            let response = client
                .set_retention(SetRetentionRequest {
                    tenant_id: tenant(opts),
                    request_id: request_id(opts),
                    max_age_ms: max_age.map_or(0, millis),
                    max_records: max_records.unwrap_or(0),
                })
                .await?;
            emit(opts.output, &response, retention_text)
        }
        ActivityCommand::Compact => loop {
            let response = client
                .compact_activity(CompactActivityRequest {
                    tenant_id: tenant(opts),
                    request_id: String::new(),
                })
                .await?;
            emit(opts.output, &response, retention_text)?;
            if !response.more {
                return Ok(());
            }
        },
    }
}

pub async fn query(opts: &ClientOpts, client: &Client, args: QueryArgs) -> Result<(), CliError> {
    let from_ms = match (args.last, args.from_ms) {
        (Some(last), _) => now_ms().saturating_sub(millis(last)),
        (None, from) => from.unwrap_or(0),
    };
    let response = client
        .query_events(QueryEventsRequest {
            tenant_id: tenant(opts),
            event_types: args.types,
            min_severity: args.min_severity.map_or(Severity::Unspecified, severity) as i32,
            project_id: args.project.unwrap_or_default(),
            task_id: args.task.unwrap_or_default(),
            agent_type: args.agent.unwrap_or_default(),
            call_id: args.call_id.unwrap_or_default(),
            from_ms,
            to_ms: args.to_ms.unwrap_or(0),
            metadata: args.metadata.into_iter().collect(),
            newest_first: !args.oldest_first,
            page_token: args.page_token,
            limit: args.limit,
            with_total: args.total,
            read: read_options(opts),
        })
        .await?;
    emit(opts.output, &response, |r| query_text(r, args.total))
}

pub async fn stats(opts: &ClientOpts, client: &Client, args: StatsArgs) -> Result<(), CliError> {
    let response = client
        .event_stats(EventStatsRequest {
            tenant_id: tenant(opts),
            project_id: args.project.unwrap_or_default(),
            from_ms: args
                .last
                .map_or(0, |last| now_ms().saturating_sub(millis(last))),
            to_ms: 0,
            bucket_ms: millis(args.bucket),
            read: read_options(opts),
        })
        .await?;
    emit(opts.output, &response, stats_text)
}

fn record_text(r: &RecordActivityResponse) -> String {
    let mut text = format!(
        "recorded positions {}..={}",
        r.first_position, r.last_position
    );
    if r.compacted > 0 {
        text.push_str(&format!(" (retention removed {} old records)", r.compacted));
    }
    format!("{text}{}", write_meta_suffix(r.meta.as_ref()))
}

fn retention_text(r: &RetentionResponse) -> String {
    format!(
        "removed {} records{}{}",
        r.compacted,
        if r.more { " (more remain)" } else { "" },
        write_meta_suffix(r.meta.as_ref())
    )
}

fn query_text(r: &QueryEventsResponse, with_total: bool) -> String {
    let mut lines: Vec<String> = r.events.iter().map(event_line).collect();
    if lines.is_empty() {
        lines.push("no events".to_owned());
    }
    if with_total {
        let bound = if r.total_exact { "" } else { "at least " };
        lines.push(format!("total: {bound}{}", r.total));
    }
    if !r.next_page_token.is_empty() {
        lines.push(format!("next page: --page-token {}", r.next_page_token));
    }
    lines.push(read_meta_line(r.meta.as_ref()));
    lines.join("\n")
}

fn stats_text(r: &EventStatsResponse) -> String {
    let mut lines = vec![format!("events {}  activity {}", r.total, r.activity)];
    let mut types: Vec<_> = r.by_type.iter().collect();
    types.sort();
    for (t, n) in types {
        lines.push(format!("  type {t}: {n}"));
    }
    for s in ["debug", "info", "warning", "error", "critical"] {
        if let Some(n) = r.by_severity.get(s) {
            lines.push(format!("  severity {s}: {n}"));
        }
    }
    for a in &r.agents {
        let rate = a
            .success_rate
            .map_or("-".to_owned(), |rate| format!("{:.1}%", rate * 100.0));
        lines.push(format!(
            "  agent {}: {} records, {} completed, {} errors, success {rate}",
            a.agent_type, a.records, a.completed, a.errors
        ));
    }
    for b in &r.buckets {
        lines.push(format!("  bucket {}: {}", b.start_ms, b.events));
    }
    lines.push(read_meta_line(r.meta.as_ref()));
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_line_is_proto3_json() {
        let line = r#"{"activityType":"ACTIVITY_TYPE_ERROR","activity":{"agentType":"a","agentName":"A","taskId":"t","severity":"SEVERITY_ERROR","status":"ACTIVITY_STATUS_FAILED"},"payloadJson":"{}"}"#;
        let entry: ActivityEntry = serde_json::from_str(line).expect("parses");
        assert_eq!(entry.activity_type, ActivityType::Error as i32);
        assert_eq!(
            entry.activity.map(|a| a.severity),
            Some(Severity::Error as i32)
        );
    }
}
