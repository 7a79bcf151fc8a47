//! The client half of the `switchboard` command line: `cluster`, `call` and `events`
//! (DESIGN §5). It parses arguments (clap derive), turns them into `switchboard.v1` requests,
//! sends them through [`client::Client`] (which follows redirects and retries with the
//! same `request_id`) and prints the response as short text or, with `-o json`, as the proto3
//! JSON of the response message (pbjson: `callId`, `state`, `index`, ...).
//!
//! It must stay a thin shell: no domain rules, no retry logic of its own. Results go to stdout,
//! errors to stderr, and the exit code tells scripts what kind of failure it was
//! ([`EXIT_USAGE`], [`EXIT_NOT_FOUND`], [`EXIT_FAILED_PRECONDITION`], [`EXIT_UNAVAILABLE`],
//! [`EXIT_OTHER`]).

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::Write as _,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use clap::{Args, Subcommand, ValueEnum};
use proto::v1::{
    AddLearnerRequest, AppendTurnRequest, AppendTurnResponse, Call, CallResponse, CallState,
    Channel, Consistency, CreateCallRequest, EndCallRequest, EraseCallRequest, EraseCallResponse,
    GetCallRequest, GetCallResponse, GetContextRequest, GetContextResponse, Handoff,
    ListCallEventsRequest, ListCallsRequest, ListCallsResponse, ListEventsRequest,
    ListEventsResponse, ListTurnsRequest, ListTurnsResponse, LogEventRequest, LogEventResponse,
    Member, MembershipResponse, PromoteRequest, ReadMeta, ReadOptions, RemoveRequest,
    RequestHandoffRequest, StartCallRequest, StatusRequest, StatusResponse, TriggerSnapshotRequest,
    TriggerSnapshotResponse, Turn, UpdateContextRequest, Urgency, WatchEventsRequest, WriteMeta,
    log_event_request,
};
use serde::Serialize;
use tonic::Code;

use client::{BearerToken, Client, ClientConfig, ClientError, ConfigError, GiveUp, TlsConfig};

/// Exit code for bad arguments or a request the server rejected as invalid (clap uses it too).
pub const EXIT_USAGE: u8 = 2;
/// Exit code when the call (or other entity) does not exist.
pub const EXIT_NOT_FOUND: u8 = 3;
/// Exit code when the state forbids the request (illegal transition, already handed off, ended).
pub const EXIT_FAILED_PRECONDITION: u8 = 4;
/// Exit code when no node could serve the request in time (no leader, nodes down, nodes
/// shedding load, timeout): trying again later may succeed.
pub const EXIT_UNAVAILABLE: u8 = 5;
/// Exit code when the cluster does not know the caller (no, bad or expired token) or its
/// token's role or tenant does not allow the request.
pub const EXIT_DENIED: u8 = 6;
/// Exit code for anything else.
pub const EXIT_OTHER: u8 = 1;

/// Default for `--endpoints`: the local dev cluster of `switchboard dev`.
pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103";

/// Longest `--timeout` accepted.
pub const TIMEOUT_MAX: Duration = Duration::from_secs(3600);

/// The client subcommands: cluster operations, calls and the event log. The binary mounts them
/// next to `serve` and `dev` with `#[command(flatten)]` on a variant holding this enum.
#[derive(Debug, Clone, Subcommand)]
pub enum ClientCommand {
    /// Inspect and change the cluster: status, membership, snapshots.
    Cluster(Box<ClusterArgs>),
    /// Drive and read calls.
    Call(Box<CallArgs>),
    /// Read the event log.
    Events(Box<EventsArgs>),
    /// Record agent activity; set its retention.
    Activity(Box<crate::cli_activity::ActivityArgs>),
}

/// Options shared by every client subcommand; they may be given before or after the
/// subcommand (`switchboard call get ID -o json`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Client options")]
pub struct ClientOpts {
    /// Node gRPC addresses, host:port, comma separated; any node will do, writes find the
    /// leader.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        env = "SWITCHBOARD_ENDPOINTS",
        default_value = DEFAULT_ENDPOINTS
    )]
    pub endpoints: Vec<String>,
    /// Connect to REACHABLE whenever the cluster names a node ADVERTISED (its `--advertise`),
    /// e.g. `node2:7101=127.0.0.1:7102` for a container cluster seen from the host; comma
    /// separated or repeated.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        env = "SWITCHBOARD_RESOLVE",
        value_name = "ADVERTISED=REACHABLE",
        value_parser = parse_resolve
    )]
    pub resolve: Vec<(String, String)>,
    /// Tenant that owns the calls (default: the token's tenant; only an admin token may name
    /// another).
    #[arg(long, global = true, env = "SWITCHBOARD_TENANT")]
    pub tenant: Option<String>,
    /// Bearer token (a JWT from `switchboard token issue`) sent with every request.
    #[arg(long, global = true, env = "SWITCHBOARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token (read when --token is not given). Without either, commands
    /// aimed at the dev cluster's default endpoints use `.switchboard-dev/tokens/admin.jwt` when
    /// it exists (written by `switchboard dev`).
    #[arg(long, global = true, env = "SWITCHBOARD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Idempotency key for a write; reuse one to retry a write safely (default: a fresh
    /// UUIDv7).
    #[arg(long, global = true)]
    pub request_id: Option<String>,
    /// Read consistency.
    #[arg(long, global = true, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
    /// For reads: wait until the serving node has applied at least this log index.
    #[arg(long, global = true, default_value_t = 0)]
    pub min_index: u64,
    /// Deadline for the whole command, retries included (e.g. 500ms, 5s, 1m).
    #[arg(long, global = true, value_parser = parse_timeout, default_value = "5s")]
    pub timeout: Duration,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value_t = OutputFormat::Text
    )]
    pub output: OutputFormat,
    /// The cluster CA certificate (PEM): speak TLS and trust nodes it signed.
    #[arg(long, global = true, env = "SWITCHBOARD_CA", value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM) to present, with --tls-key; nodes check it against their CA.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_CLIENT_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_CLIENT_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<std::path::PathBuf>,
    /// The name to check nodes' certificates against, instead of the host dialled.
    #[arg(long, global = true, env = "SWITCHBOARD_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
    /// Speak plaintext, to nodes started with `serve --insecure` (wins over --ca).
    #[arg(long, global = true, env = "SWITCHBOARD_INSECURE")]
    pub insecure: bool,
}

/// The proto enum value a CLI word names: `handed-off` is `CALL_STATE_HANDED_OFF`. The CLI's
/// value enums carry help text, so they are written out; they convert by name, and a test holds
/// each against its proto enum, so they cannot drift from the contract.
pub(crate) fn proto_value<A: ValueEnum, E>(
    arg: A,
    prefix: &str,
    from_name: fn(&str) -> Option<E>,
) -> E {
    let word = arg
        .to_possible_value()
        .expect("the CLI value enums skip no variant");
    let name = format!(
        "{prefix}{}",
        word.get_name().to_ascii_uppercase().replace('-', "_")
    );
    from_name(&name).expect("every CLI word names a proto value (cli_words_are_the_proto_enums)")
}

/// `--consistency` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    /// Read-index through the leader (default).
    Linearizable,
    /// Served at once by the node reached; may be stale.
    Local,
}

/// `-o` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Short human-readable text.
    Text,
    /// The response message as proto3 JSON.
    Json,
}

/// `--channel` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChannelArg {
    /// Voice call.
    Voice,
    /// Text chat.
    Chat,
}

/// `--urgency` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UrgencyArg {
    /// Can wait.
    Low,
    /// Ordinary handoff.
    Normal,
    /// Should be picked up soon.
    High,
    /// Needs a human now.
    Critical,
}

/// `--state` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    /// Created, not yet started.
    Created,
    /// Started.
    Active,
    /// Handed off.
    HandedOff,
    /// Ended.
    Ended,
}

/// `switchboard cluster ...`
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Client options.
    #[command(flatten)]
    pub opts: ClientOpts,
    /// What to do.
    #[command(subcommand)]
    pub command: ClusterCommand,
}

/// Cluster operations.
#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// Show a node's view of the cluster (the leader's when it can be reached).
    Status,
    /// Add a node as a non-voting learner.
    AddLearner {
        /// Raft node id of the new node.
        #[arg(long)]
        node_id: u64,
        /// gRPC address of the new node, host:port.
        #[arg(long)]
        addr: String,
        /// Region label of the new node.
        #[arg(long, default_value = "")]
        region: String,
    },
    /// Promote learners to voters.
    Promote {
        /// Node ids to promote.
        #[arg(required = true)]
        node_ids: Vec<u64>,
    },
    /// Remove nodes from the cluster.
    Remove {
        /// Node ids to remove.
        #[arg(required = true)]
        node_ids: Vec<u64>,
    },
    /// Ask the first node of --endpoints to build a snapshot now.
    Snapshot,
}

/// `switchboard call ...`
#[derive(Debug, Clone, Args)]
pub struct CallArgs {
    /// Client options.
    #[command(flatten)]
    pub opts: ClientOpts,
    /// What to do.
    #[command(subcommand)]
    pub command: CallCommand,
}

/// Call lifecycle writes and reads.
#[derive(Debug, Clone, Subcommand)]
pub enum CallCommand {
    /// Create a call (state CREATED).
    Create {
        /// Where the call came from, e.g. a phone number or a widget id.
        #[arg(long, default_value = "")]
        source: String,
        /// Medium of the call.
        #[arg(long, value_enum, default_value_t = ChannelArg::Voice)]
        channel: ChannelArg,
        /// Metadata entry, key=value (repeatable).
        #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        meta: Vec<(String, String)>,
        /// Trace id to use (default: minted by the leader).
        #[arg(long)]
        trace_id: Option<String>,
    },
    /// Start a CREATED call.
    Start {
        /// Call id.
        call_id: String,
    },
    /// Show a call.
    Get {
        /// Call id.
        call_id: String,
    },
    /// Show a call's context: summary, entities, recent turns, handoff.
    Context {
        /// Call id.
        call_id: String,
        /// How many recent turns to show (0: server default).
        #[arg(long, default_value_t = 0)]
        last_turns: u32,
    },
    /// List a call's turns.
    Turns {
        /// Call id.
        call_id: String,
        /// First turn index to show.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Most turns to show (0: server default).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Append a turn to an ACTIVE or HANDED_OFF call.
    Turn {
        /// Call id.
        call_id: String,
        /// Who spoke, e.g. caller or agent.
        #[arg(long)]
        speaker: String,
        /// What was said.
        #[arg(long)]
        text: String,
        /// Recognition confidence in 0..1.
        #[arg(long, default_value_t = 1.0)]
        confidence: f32,
        /// Language tag, e.g. en-US.
        #[arg(long, default_value = "")]
        language: String,
        /// When the turn was spoken, Unix ms (default: now).
        #[arg(long)]
        spoken_at_ms: Option<u64>,
    },
    /// Log a semantic event on an ACTIVE or HANDED_OFF call.
    Event {
        /// Call id.
        call_id: String,
        /// Event type.
        #[arg(long = "type")]
        event_type: String,
        /// Event body as JSON text.
        #[arg(long)]
        json: Option<String>,
        /// Metadata entry, key=value (repeatable).
        #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        meta: Vec<(String, String)>,
    },
    /// Update a call's summary and entities.
    Update {
        /// Call id.
        call_id: String,
        /// New summary.
        #[arg(long)]
        summary: Option<String>,
        /// Entity to upsert, key=value (repeatable).
        #[arg(long = "entity", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        entities: Vec<(String, String)>,
    },
    /// Hand an ACTIVE call off (at most once).
    Handoff {
        /// Call id.
        call_id: String,
        /// Why the call is handed off.
        #[arg(long)]
        reason: String,
        /// How urgently the handoff must be picked up.
        #[arg(long, value_enum, default_value_t = UrgencyArg::Normal)]
        urgency: UrgencyArg,
        /// Requested destination: queue, team or agent.
        #[arg(long)]
        target: Option<String>,
    },
    /// End a call.
    End {
        /// Call id.
        call_id: String,
        /// Why the call ended.
        #[arg(long)]
        reason: String,
        /// How the call was resolved.
        #[arg(long, default_value = "")]
        resolution: String,
    },
    /// Erase a call's content (right to erasure), keeping its lifecycle skeleton; every node
    /// then removes the erased bytes from its disk.
    Erase {
        /// Call id.
        call_id: String,
        /// Why the call is erased (kept in the call.erased audit event).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// List the tenant's calls.
    List {
        /// Only calls in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Token from a previous page.
        #[arg(long, default_value = "")]
        page_token: String,
        /// Most calls per page (0: server default).
        #[arg(long, default_value_t = 0)]
        page_size: u32,
    },
}

/// `switchboard events ...`
#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// Client options.
    #[command(flatten)]
    pub opts: ClientOpts,
    /// What to do.
    #[command(subcommand)]
    pub command: EventsCommand,
}

/// Event log reads.
#[derive(Debug, Clone, Subcommand)]
pub enum EventsCommand {
    /// List one call's events (--call) or the cluster-wide log (--from-position).
    List {
        /// Call whose events to list; without it, the cluster-wide log is listed.
        #[arg(long = "call", value_name = "CALL_ID")]
        call_id: Option<String>,
        /// First sequence number of the call's events.
        #[arg(long, requires = "call_id")]
        from: Option<u64>,
        /// First position of the cluster-wide log.
        #[arg(long, conflicts_with = "call_id")]
        from_position: Option<u64>,
        /// Most events to show (0: server default).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Follow the event log as it commits, one line per event (`-o json`: one JSON object per
    /// line), resuming on another node from the last event shown if the node fails. Runs until
    /// interrupted, or until --count events were shown.
    Watch {
        /// Only this call's events.
        #[arg(long = "call", value_name = "CALL_ID")]
        call_id: Option<String>,
        /// Only event types starting with PREFIX (repeat: any of them).
        #[arg(long = "type", value_name = "PREFIX")]
        type_prefixes: Vec<String>,
        /// Only events with this metadata pair (repeat: all of them).
        #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        metadata: Vec<(String, String)>,
        /// First position to show; without it, from the next event to commit.
        #[arg(long)]
        from: Option<u64>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Only activity of at least this severity.
        #[arg(long, value_enum)]
        min_severity: Option<crate::cli_activity::SeverityArg>,
        /// Only activity of this project.
        #[arg(long)]
        project: Option<String>,
        /// Only activity of this task.
        #[arg(long)]
        task: Option<String>,
        /// Only activity of this agent type.
        #[arg(long)]
        agent: Option<String>,
    },
    /// Find a tenant's events by filters, newest first, a page at a time (secondary indexes).
    Query(Box<crate::cli_activity::QueryArgs>),
    /// Totals of a tenant's events: by type, severity, agent (with success rate), hour.
    Stats(Box<crate::cli_activity::StatsArgs>),
}

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Arguments that clap could not check.
    #[error("{0}")]
    Usage(String),
    /// The options make an invalid client configuration.
    #[error("invalid client options: {0}")]
    Config(#[from] ConfigError),
    /// The request failed.
    #[error("{0}")]
    Rpc(#[from] ClientError),
    /// The response could not be encoded as JSON.
    #[error("failed to encode the response as json: {0}")]
    Json(#[from] serde_json::Error),
    /// Stdout could not be written.
    #[error("failed to write to stdout: {0}")]
    Stdout(#[from] std::io::Error),
    /// The TLS options do not work.
    #[error("{0}")]
    Tls(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Config(_) | Self::Tls(_) => EXIT_USAGE,
            Self::Rpc(err) => exit_code_for(err.code),
            Self::Json(_) | Self::Stdout(_) => EXIT_OTHER,
        }
    }
}

/// The exit code for a final gRPC status code.
pub fn exit_code_for(code: Code) -> u8 {
    match code {
        Code::InvalidArgument | Code::OutOfRange => EXIT_USAGE,
        Code::NotFound => EXIT_NOT_FOUND,
        Code::FailedPrecondition | Code::AlreadyExists => EXIT_FAILED_PRECONDITION,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::ResourceExhausted => {
            EXIT_UNAVAILABLE
        }
        Code::Unauthenticated | Code::PermissionDenied => EXIT_DENIED,
        _ => EXIT_OTHER,
    }
}

/// Runs one client subcommand: prints the result to stdout or the error to stderr and
/// returns the exit code.
pub async fn run(command: ClientCommand) -> ExitCode {
    match execute(command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report(&err);
            ExitCode::from(err.exit_code())
        }
    }
}

/// [`run`] on a runtime of its own, for a `main` that is not async.
pub fn run_blocking(command: ClientCommand) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(command)),
        Err(err) => {
            eprintln!("switchboard: failed to start the async runtime: {err}");
            ExitCode::from(EXIT_OTHER)
        }
    }
}

fn report(err: &CliError) {
    eprintln!("switchboard: {err}");
    if let CliError::Rpc(rpc) = err
        && !rpc.request_id.is_empty()
        && rpc.reason != GiveUp::NotRetryable
    {
        eprintln!(
            "switchboard: the write may or may not have applied; rerun with --request-id {} \
             to retry it safely",
            rpc.request_id
        );
    }
}

/// Runs one client subcommand and prints its result; the caller reports the error.
pub async fn execute(command: ClientCommand) -> Result<(), CliError> {
    match command {
        ClientCommand::Cluster(args) => {
            let ClusterArgs { opts, command } = *args;
            cluster(&opts, command).await
        }
        ClientCommand::Call(args) => {
            let CallArgs { opts, command } = *args;
            call(&opts, command).await
        }
        ClientCommand::Events(args) => {
            let EventsArgs { opts, command } = *args;
            events(&opts, command).await
        }
        ClientCommand::Activity(args) => {
            let crate::cli_activity::ActivityArgs { opts, command } = *args;
            crate::cli_activity::activity(&opts, command).await
        }
    }
}

/// Parses one `--resolve` pair, `ADVERTISED=REACHABLE`.
fn parse_resolve(text: &str) -> Result<(String, String), String> {
    match text.trim().split_once('=') {
        Some((from, to)) if !from.trim().is_empty() && !to.trim().is_empty() => {
            Ok((from.trim().to_owned(), to.trim().to_owned()))
        }
        _ => Err(format!(
            "{text:?}: expected ADVERTISED=REACHABLE, e.g. node2:7101=127.0.0.1:7102"
        )),
    }
}

/// Longest token file read, in bytes.
pub const TOKEN_FILE_BYTES_MAX: u64 = 8 * 1024;

/// The bearer token the options name: `--token`, else the contents of `--token-file`.
fn token(opts: &ClientOpts) -> Result<Option<BearerToken>, CliError> {
    if let Some(token) = &opts.token {
        return Ok(Some(BearerToken::new(token.as_str())));
    }
    let dev_token = std::path::Path::new(crate::dev::DEV_DATA_DIR)
        .join(crate::dev::DEV_TOKEN_DIR)
        .join(crate::dev::DEV_ADMIN_TOKEN);
    let path = match &opts.token_file {
        Some(path) => path,
        // The dev cluster's own admin token, for commands aimed at the dev cluster from the
        // directory `switchboard dev` runs in (README "Tour").
        None if opts.endpoints.join(",") == DEFAULT_ENDPOINTS && dev_token.exists() => &dev_token,
        None => return Ok(None),
    };
    let read = || -> std::io::Result<String> {
        let len = std::fs::metadata(path)?.len();
        if len > TOKEN_FILE_BYTES_MAX {
            return Err(std::io::Error::other(format!(
                "{len} bytes, over the bound of {TOKEN_FILE_BYTES_MAX}"
            )));
        }
        std::fs::read_to_string(path)
    };
    let text = read().map_err(|e| {
        CliError::Usage(format!(
            "failed to read the token file {}: {e}",
            path.display()
        ))
    })?;
    Ok(Some(BearerToken::new(text)))
}

/// The TLS settings the options describe: `None` under --insecure.
fn tls_config(opts: &ClientOpts) -> Result<Option<TlsConfig>, CliError> {
    if opts.insecure {
        return Ok(None);
    }
    let dev_ca = std::path::Path::new(crate::dev::DEV_DATA_DIR)
        .join("certs")
        .join(crate::tls::CA_FILE);
    let ca = match &opts.ca {
        Some(ca) => Some(ca),
        // The dev cluster's own CA, for commands aimed at the dev cluster from the directory
        // `switchboard dev` runs in (README "Tour"), like its admin token.
        None if opts.endpoints.join(",") == DEFAULT_ENDPOINTS && dev_ca.exists() => Some(&dev_ca),
        None => None,
    };
    let Some(ca) = ca else {
        return Err(CliError::Tls(
            "nodes speak TLS: give the cluster CA with --ca FILE (or SWITCHBOARD_CA), \
             e.g. the ca.pem of `switchboard certs init`; --insecure for a node started with \
             --insecure"
                .to_owned(),
        ));
    };
    let read_error = |path: &std::path::Path, e: std::io::Error| {
        CliError::Tls(format!("failed to read {}: {e}", path.display()))
    };
    let mut tls = TlsConfig::from_ca_file(ca).map_err(|e| read_error(ca, e))?;
    if let (Some(cert), Some(key)) = (&opts.tls_cert, &opts.tls_key) {
        tls = tls
            .with_identity_files(cert, key)
            .map_err(|e| read_error(cert, e))?;
    }
    tls.server_name = opts.tls_server_name.clone();
    Ok(Some(tls))
}

/// The client configuration the options describe.
pub fn client_config(opts: &ClientOpts) -> Result<ClientConfig, CliError> {
    let defaults = ClientConfig::default();
    Ok(ClientConfig {
        endpoints: opts
            .endpoints
            .iter()
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .collect(),
        resolve: opts.resolve.clone(),
        request_timeout: defaults.request_timeout.min(opts.timeout),
        call_deadline: opts.timeout,
        token: token(opts)?,
        tls: tls_config(opts)?,
        ..defaults
    })
}

pub(crate) fn connect(opts: &ClientOpts) -> Result<Client, CliError> {
    Ok(Client::new(client_config(opts)?)?)
}

/// The tenant a request names: `--tenant`, or empty for the token's own.
pub(crate) fn tenant(opts: &ClientOpts) -> String {
    opts.tenant.clone().unwrap_or_default()
}

pub(crate) fn read_options(opts: &ClientOpts) -> Option<ReadOptions> {
    let consistency = proto_value(opts.consistency, "CONSISTENCY_", Consistency::from_str_name);
    Some(ReadOptions {
        consistency: consistency.into(),
        min_index: opts.min_index,
    })
}

pub(crate) fn request_id(opts: &ClientOpts) -> String {
    // Empty lets the client library mint a UUIDv7.
    opts.request_id.clone().unwrap_or_default()
}

async fn cluster(opts: &ClientOpts, command: ClusterCommand) -> Result<(), CliError> {
    let client = connect(opts)?;
    match command {
        ClusterCommand::Status => {
            let response = client.status(StatusRequest {}).await?;
            emit(opts.output, &response, status_text)
        }
        ClusterCommand::AddLearner {
            node_id,
            addr,
            region,
        } => {
            let response = client
                .add_learner(AddLearnerRequest {
                    node_id,
                    addr,
                    region,
                })
                .await?;
            emit(opts.output, &response, membership_text)
        }
        ClusterCommand::Promote { node_ids } => {
            let response = client.promote(PromoteRequest { node_ids }).await?;
            emit(opts.output, &response, membership_text)
        }
        ClusterCommand::Remove { node_ids } => {
            let response = client.remove(RemoveRequest { node_ids }).await?;
            emit(opts.output, &response, membership_text)
        }
        ClusterCommand::Snapshot => {
            let response = client.trigger_snapshot(TriggerSnapshotRequest {}).await?;
            emit(opts.output, &response, |r: &TriggerSnapshotResponse| {
                format!("snapshot at index {}", r.snapshot_index)
            })
        }
    }
}

async fn call(opts: &ClientOpts, command: CallCommand) -> Result<(), CliError> {
    let tenant_id = tenant(opts);
    let client = connect(opts)?;
    match command {
        CallCommand::Create {
            source,
            channel,
            meta,
            trace_id,
        } => {
            let channel = proto_value(channel, "CHANNEL_", Channel::from_str_name);
            let response = client
                .create_call(CreateCallRequest {
                    tenant_id,
                    request_id: request_id(opts),
                    source,
                    channel: channel.into(),
                    metadata: meta.into_iter().collect(),
                    trace_id,
                })
                .await?;
            emit(opts.output, &response, call_response_text)
        }
        CallCommand::Start { call_id } => {
            let response = client
                .start_call(StartCallRequest {
                    tenant_id,
                    request_id: request_id(opts),
                    call_id,
                })
                .await?;
            emit(opts.output, &response, call_response_text)
        }
        CallCommand::Get { call_id } => {
            let response = client
                .get_call(GetCallRequest {
                    tenant_id,
                    call_id,
                    read: read_options(opts),
                })
                .await?;
            emit(opts.output, &response, get_call_text)
        }
        CallCommand::Context {
            call_id,
            last_turns,
        } => {
            let response = client
                .get_context(GetContextRequest {
                    tenant_id,
                    call_id,
                    last_turns,
                    read: read_options(opts),
                })
                .await?;
            emit(opts.output, &response, context_text)
        }
        CallCommand::Turns {
            call_id,
            from,
            limit,
        } => {
            let response = client
                .list_turns(ListTurnsRequest {
                    tenant_id,
                    call_id,
                    from_index: from,
                    limit,
                    read: read_options(opts),
                })
                .await?;
            emit(opts.output, &response, turns_text)
        }
        CallCommand::Turn {
            call_id,
            speaker,
            text,
            confidence,
            language,
            spoken_at_ms,
        } => {
            let response = client
                .append_turn(AppendTurnRequest {
                    tenant_id,
                    request_id: request_id(opts),
                    call_id,
                    speaker,
                    text,
                    confidence,
                    language,
                    spoken_at_ms: spoken_at_ms.unwrap_or_else(now_ms),
                })
                .await?;
            emit(opts.output, &response, append_turn_text)
        }
        CallCommand::Event {
            call_id,
            event_type,
            json,
            meta,
        } => {
            if let Some(json) = &json {
                serde_json::from_str::<serde_json::Value>(json)
                    .map_err(|e| CliError::Usage(format!("--json is not valid JSON: {e}")))?;
            }
            let response = client
                .log_event(LogEventRequest {
                    tenant_id,
                    request_id: request_id(opts),
                    call_id,
                    event_type,
                    payload: json.map(log_event_request::Payload::PayloadJson),
                    metadata: meta.into_iter().collect(),
                })
                .await?;
            emit(opts.output, &response, log_event_text)
        }
        CallCommand::Update {
            call_id,
            summary,
            entities,
        } => {
            if summary.is_none() && entities.is_empty() {
                return Err(CliError::Usage(
                    "call update needs --summary or at least one --entity".to_owned(),
                ));
            }
            let response = client
                .update_context(UpdateContextRequest {
                    tenant_id,
                    request_id: request_id(opts),
                    call_id,
                    summary,
                    entities: entities.into_iter().collect(),
                })
                .await?;
            emit(opts.output, &response, call_response_text)
        }
        CallCommand::Handoff {
            call_id,
            reason,
            urgency,
            target,
        } => {
            let urgency = proto_value(urgency, "URGENCY_", Urgency::from_str_name);
            let response = client
                .request_handoff(RequestHandoffRequest {
                    tenant_id,
                    request_id: request_id(opts),
                    call_id,
                    reason,
                    urgency: urgency.into(),
                    target,
                })
                .await?;
            emit(opts.output, &response, call_response_text)
        }
        CallCommand::End {
            call_id,
            reason,
            resolution,
        } => {
            let response = client
                .end_call(EndCallRequest {
                    tenant_id,
                    request_id: request_id(opts),
                    call_id,
                    reason,
                    resolution,
                })
                .await?;
            emit(opts.output, &response, call_response_text)
        }
        CallCommand::Erase { call_id, reason } => {
            let response = client
                .erase_call(EraseCallRequest {
                    tenant_id,
                    request_id: request_id(opts),
                    call_id,
                    reason,
                })
                .await?;
            emit(opts.output, &response, erase_call_text)
        }
        CallCommand::List {
            state,
            page_token,
            page_size,
        } => {
            let state = state.map_or(CallState::Unspecified, |state| {
                proto_value(state, "CALL_STATE_", CallState::from_str_name)
            });
            let response = client
                .list_calls(ListCallsRequest {
                    tenant_id,
                    state: state.into(),
                    page_token,
                    page_size,
                    read: read_options(opts),
                })
                .await?;
            emit(opts.output, &response, list_calls_text)
        }
    }
}

async fn events(opts: &ClientOpts, command: EventsCommand) -> Result<(), CliError> {
    let client = connect(opts)?;
    match command {
        EventsCommand::List {
            call_id: Some(call_id),
            from,
            from_position: _,
            limit,
        } => {
            let response = client
                .list_call_events(ListCallEventsRequest {
                    tenant_id: tenant(opts),
                    call_id,
                    from_sequence: from.unwrap_or(0),
                    limit,
                    read: read_options(opts),
                })
                .await?;
            emit(opts.output, &response, |r| events_text(r, "--from"))
        }
        EventsCommand::List {
            call_id: None,
            from: _,
            from_position,
            limit,
        } => {
            let response = client
                .list_events(ListEventsRequest {
                    from_position: from_position.unwrap_or(0),
                    limit,
                    read: read_options(opts),
                })
                .await?;
            emit(opts.output, &response, |r| {
                events_text(r, "--from-position")
            })
        }
        EventsCommand::Watch {
            call_id,
            type_prefixes,
            metadata,
            from,
            count,
            min_severity,
            project,
            task,
            agent,
        } => {
            let mut watch = client.watch_events(WatchEventsRequest {
                from_position: from,
                tenant_id: tenant(opts),
                call_id: call_id.unwrap_or_default(),
                event_type_prefixes: type_prefixes,
                metadata: metadata.into_iter().collect(),
                progress_interval_ms: 0,
                min_severity: min_severity.map_or(
                    proto::v1::Severity::Unspecified,
                    crate::cli_activity::severity,
                ) as i32,
                project_id: project.unwrap_or_default(),
                task_id: task.unwrap_or_default(),
                agent_type: agent.unwrap_or_default(),
            });
            let mut shown = 0u64;
            while count.is_none_or(|count| shown < count) {
                let message = watch.next().await?;
                for event in &message.events {
                    if count.is_some_and(|count| shown >= count) {
                        break;
                    }
                    let line = match opts.output {
                        OutputFormat::Json => serde_json::to_string(event)?,
                        OutputFormat::Text => event_line(event),
                    };
                    let mut stdout = std::io::stdout().lock();
                    match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
                        // A reader that went away (`| head`) ends the watch, not in failure.
                        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                        other => other?,
                    }
                    shown += 1;
                }
            }
            Ok(())
        }
        EventsCommand::Query(args) => crate::cli_activity::query(opts, &client, *args).await,
        EventsCommand::Stats(args) => crate::cli_activity::stats(opts, &client, *args).await,
    }
}

/// Prints `value` as proto3 JSON or as the text `text` makes of it.
pub(crate) fn emit<T: Serialize>(
    output: OutputFormat,
    value: &T,
    text: impl FnOnce(&T) -> String,
) -> Result<(), CliError> {
    let rendered = match output {
        OutputFormat::Json => serde_json::to_string_pretty(value)?,
        OutputFormat::Text => text(value),
    };
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{}", rendered.trim_end()).and_then(|()| stdout.flush()) {
        // A reader that went away (`| head`) is not a failure of the command.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

// ---- argument parsing ----------------------------------------------------------------------

/// Parses `key=value`; the key must not be empty, the value may be.
pub fn parse_key_value(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {raw:?}")),
    }
}

/// `--timeout`: a duration of the command lines' one grammar, with its unit
/// ([`harness::parse_duration_with_unit`]), non-zero and at most [`TIMEOUT_MAX`].
pub fn parse_timeout(raw: &str) -> Result<Duration, String> {
    let duration = harness::parse_duration_with_unit(raw).map_err(|e| e.to_string())?;
    if duration.is_zero() {
        return Err(format!("{:?} must be greater than zero", raw.trim()));
    }
    if duration > TIMEOUT_MAX {
        return Err(format!(
            "{:?} exceeds the maximum of {} s",
            raw.trim(),
            TIMEOUT_MAX.as_secs()
        ));
    }
    Ok(duration)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

// ---- text output ---------------------------------------------------------------------------

fn state_name(state: i32) -> String {
    CallState::try_from(state).map_or_else(
        |_| format!("UNKNOWN({state})"),
        |s| s.as_str_name().trim_start_matches("CALL_STATE_").to_owned(),
    )
}

fn channel_name(channel: i32) -> String {
    Channel::try_from(channel).map_or_else(
        |_| format!("UNKNOWN({channel})"),
        |c| c.as_str_name().trim_start_matches("CHANNEL_").to_owned(),
    )
}

fn urgency_name(urgency: i32) -> String {
    Urgency::try_from(urgency).map_or_else(
        |_| format!("UNKNOWN({urgency})"),
        |u| u.as_str_name().trim_start_matches("URGENCY_").to_owned(),
    )
}

/// Unix milliseconds as RFC 3339 UTC, `2024-04-05T12:34:56.789Z`.
fn format_ms(ms: u64) -> String {
    let days = ms / 86_400_000;
    let ms_of_day = ms % 86_400_000;
    // Civil-from-days (H. Hinnant), valid for every date after 1970.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000
    )
}

pub(crate) fn write_meta_suffix(meta: Option<&WriteMeta>) -> String {
    match meta {
        Some(meta) if meta.replayed => format!(" (index {}, replayed)", meta.index),
        Some(meta) => format!(" (index {})", meta.index),
        None => String::new(),
    }
}

pub(crate) fn read_meta_line(meta: Option<&ReadMeta>) -> String {
    meta.map(|m| {
        format!(
            "(read at applied index {} on node {})",
            m.applied_index, m.node_id
        )
    })
    .unwrap_or_default()
}

fn pairs(map: &HashMap<String, String>) -> String {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort();
    entries
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn handoff_line(handoff: &Handoff) -> String {
    let mut line = format!(
        "{} at {}: {}",
        urgency_name(handoff.urgency),
        format_ms(handoff.at_ms),
        handoff.reason
    );
    if !handoff.target.is_empty() {
        let _ = write!(line, " -> {}", handoff.target);
    }
    line
}

fn turn_line(turn: &Turn) -> String {
    format!("#{} {}: {}", turn.index, turn.speaker, turn.text)
}

fn call_line(call: Option<&Call>) -> String {
    match call {
        Some(call) => format!("call {} {}", call.call_id, state_name(call.state)),
        None => "call (none)".to_owned(),
    }
}

fn call_response_text(response: &CallResponse) -> String {
    format!(
        "{}{}",
        call_line(response.call.as_ref()),
        write_meta_suffix(response.meta.as_ref())
    )
}

fn erase_call_text(response: &EraseCallResponse) -> String {
    let call_id = response.call.as_ref().map_or("", |c| c.call_id.as_str());
    format!(
        "erased call {call_id}: {} turns, {} events, {} entities{}",
        response.turns_erased,
        response.events_erased,
        response.entities_erased,
        write_meta_suffix(response.meta.as_ref())
    )
}

fn append_turn_text(response: &AppendTurnResponse) -> String {
    let call_id = response.call.as_ref().map_or("", |c| c.call_id.as_str());
    let index = response.turn.as_ref().map_or(0, |t| t.index);
    format!(
        "turn {index} on call {call_id}{}",
        write_meta_suffix(response.meta.as_ref())
    )
}

fn log_event_text(response: &LogEventResponse) -> String {
    match &response.event {
        Some(event) => format!(
            "event {} {} on call {} seq {}{}",
            event.position,
            event.event_type,
            event.call_id,
            event.sequence_number,
            write_meta_suffix(response.meta.as_ref())
        ),
        None => format!("event{}", write_meta_suffix(response.meta.as_ref())),
    }
}

fn get_call_text(response: &GetCallResponse) -> String {
    let mut out = call_line(response.call.as_ref());
    if let Some(call) = &response.call {
        let mut field = |name: &str, value: String| {
            if !value.is_empty() {
                let _ = write!(out, "\n  {name:<10} {value}");
            }
        };
        field("tenant", call.tenant_id.clone());
        field("source", call.source.clone());
        field("channel", channel_name(call.channel));
        field("trace", call.trace_id.clone());
        field("room", call.room_name.clone());
        field("created", format_ms(call.created_at_ms));
        field(
            "started",
            call.started_at_ms.map(format_ms).unwrap_or_default(),
        );
        field("ended", call.ended_at_ms.map(format_ms).unwrap_or_default());
        field("reason", call.end_reason.clone());
        field("resolution", call.resolution.clone());
        field("turns", call.turn_count.to_string());
        field("summary", call.summary.clone());
        field("entities", pairs(&call.entities));
        field(
            "handoff",
            call.handoff.as_ref().map(handoff_line).unwrap_or_default(),
        );
        field("metadata", pairs(&call.metadata));
        field("position", call.last_position.to_string());
    }
    let _ = write!(out, "\n{}", read_meta_line(response.meta.as_ref()));
    out
}

fn context_text(response: &GetContextResponse) -> String {
    let mut out = format!("summary: {}", response.summary);
    let _ = write!(out, "\nentities: {}", pairs(&response.entities));
    if let Some(handoff) = &response.handoff {
        let _ = write!(out, "\nhandoff: {}", handoff_line(handoff));
    }
    if response.recent_turns.is_empty() {
        out.push_str("\nno turns");
    }
    for turn in &response.recent_turns {
        let _ = write!(out, "\n  {}", turn_line(turn));
    }
    let _ = write!(out, "\n{}", read_meta_line(response.meta.as_ref()));
    out
}

fn turns_text(response: &ListTurnsResponse) -> String {
    let mut lines: Vec<String> = response.turns.iter().map(turn_line).collect();
    if lines.is_empty() {
        lines.push("no turns".to_owned());
    }
    if response.next_index != 0 {
        lines.push(format!("next page: --from {}", response.next_index));
    }
    lines.push(read_meta_line(response.meta.as_ref()));
    lines.join("\n")
}

fn list_calls_text(response: &ListCallsResponse) -> String {
    let mut lines: Vec<String> = response
        .calls
        .iter()
        .map(|call| {
            format!(
                "{} {:<10} turns={} {}",
                call.call_id,
                state_name(call.state),
                call.turn_count,
                call.source
            )
        })
        .collect();
    if lines.is_empty() {
        lines.push("no calls".to_owned());
    }
    if !response.next_page_token.is_empty() {
        lines.push(format!(
            "next page: --page-token {}",
            response.next_page_token
        ));
    }
    lines.push(read_meta_line(response.meta.as_ref()));
    lines.join("\n")
}

/// One event as a line: position, call, sequence number, type, payload.
pub(crate) fn event_line(event: &proto::v1::Event) -> String {
    use proto::v1::event::Payload;
    let payload = match &event.payload {
        Some(Payload::PayloadJson(json)) => json.clone(),
        Some(Payload::PayloadBytes(bytes)) => format!("<{} bytes>", bytes.len()),
        None => String::new(),
    };
    if let Some(a) = &event.activity {
        let severity = proto::v1::Severity::try_from(a.severity)
            .map_or("?", |s| s.as_str_name().trim_start_matches("SEVERITY_"));
        let about = if event.call_id.is_empty() {
            String::new()
        } else {
            format!(" call={}", event.call_id)
        };
        return format!(
            "{} {} [{severity}] {}/{} task={}{about} {} {payload}",
            event.position, event.event_type, a.agent_type, a.agent_name, a.task_id, a.message
        );
    }
    format!(
        "{} {} seq={} {} {}",
        event.position, event.call_id, event.sequence_number, event.event_type, payload
    )
}

fn events_text(response: &ListEventsResponse, next_flag: &str) -> String {
    let mut lines: Vec<String> = response.events.iter().map(event_line).collect();
    if lines.is_empty() {
        lines.push("no events".to_owned());
    }
    if response.next != 0 {
        lines.push(format!("next page: {next_flag} {}", response.next));
    }
    lines.push(read_meta_line(response.meta.as_ref()));
    lines.join("\n")
}

fn member_line(member: &Member) -> String {
    let mut line = format!(
        "  {} {:<7} {}",
        member.node_id,
        if member.voter { "voter" } else { "learner" },
        member.addr
    );
    if !member.region.is_empty() {
        let _ = write!(line, " region={}", member.region);
    }
    if let Some(matched) = member.matched_index {
        let _ = write!(line, " matched={matched}");
    }
    line
}

fn status_text(response: &StatusResponse) -> String {
    let leader = match response.leader_id {
        Some(id) if response.leader_addr.is_empty() => format!("node {id}"),
        Some(id) => format!("node {id} at {}", response.leader_addr),
        None => "none known".to_owned(),
    };
    let mut out = format!(
        "cluster {} seen by node {}: term {}, leader {leader}",
        response.cluster_id, response.node_id, response.term
    );
    let _ = write!(
        out,
        "\nindexes: committed {} applied {} last-log {} snapshot {} purged {}",
        response.committed_index,
        response.applied_index,
        response.last_log_index,
        response.snapshot_index,
        response.purged_index
    );
    out.push_str("\nmembers:");
    for member in &response.members {
        let _ = write!(out, "\n{}", member_line(member));
    }
    out
}

fn membership_text(response: &MembershipResponse) -> String {
    let mut out = format!("membership changed at index {}\nmembers:", response.index);
    for member in &response.members {
        let _ = write!(out, "\n{}", member_line(member));
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser};

    use super::*;

    /// The words a CLI value enum accepts, and the proto enum's value names as CLI words.
    fn words_of<A: ValueEnum>() -> Vec<String> {
        A::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|v| v.get_name().to_owned())
            .collect()
    }

    fn proto_words<E: TryFrom<i32>>(prefix: &str, name: fn(&E) -> &'static str) -> Vec<String> {
        (0..)
            .map_while(|n| E::try_from(n).ok())
            .map(|value| name(&value))
            .filter(|name| !name.ends_with("_UNSPECIFIED"))
            .map(|name| {
                name.trim_start_matches(prefix)
                    .to_ascii_lowercase()
                    .replace('_', "-")
            })
            .collect()
    }

    #[test]
    fn cli_words_are_the_proto_enums() {
        assert_eq!(
            words_of::<ChannelArg>(),
            proto_words("CHANNEL_", Channel::as_str_name)
        );
        assert_eq!(
            words_of::<UrgencyArg>(),
            proto_words("URGENCY_", Urgency::as_str_name)
        );
        assert_eq!(
            words_of::<StateArg>(),
            proto_words("CALL_STATE_", CallState::as_str_name)
        );
        assert_eq!(
            words_of::<ConsistencyArg>(),
            proto_words("CONSISTENCY_", Consistency::as_str_name)
        );
        use crate::cli_activity::{ActivityTypeArg, SeverityArg, StatusArg};
        assert_eq!(
            words_of::<ActivityTypeArg>(),
            proto_words("ACTIVITY_TYPE_", proto::v1::ActivityType::as_str_name)
        );
        assert_eq!(
            words_of::<SeverityArg>(),
            proto_words("SEVERITY_", proto::v1::Severity::as_str_name)
        );
        assert_eq!(
            words_of::<StatusArg>(),
            proto_words("ACTIVITY_STATUS_", proto::v1::ActivityStatus::as_str_name)
        );
        assert_eq!(
            proto_value(StateArg::HandedOff, "CALL_STATE_", CallState::from_str_name),
            CallState::HandedOff
        );
    }

    /// Stand-in for the binary's top-level parser.
    #[derive(Debug, Parser)]
    #[command(name = "switchboard")]
    struct TestCli {
        #[command(subcommand)]
        command: ClientCommand,
    }

    fn parse(args: &[&str]) -> ClientCommand {
        let argv = std::iter::once("switchboard").chain(args.iter().copied());
        match TestCli::try_parse_from(argv) {
            Ok(cli) => cli.command,
            Err(err) => panic!("{args:?} should parse: {err}"),
        }
    }

    fn parse_err(args: &[&str]) -> clap::Error {
        let argv = std::iter::once("switchboard").chain(args.iter().copied());
        TestCli::try_parse_from(argv).expect_err("should be rejected")
    }

    #[test]
    fn clap_definition_is_consistent() {
        TestCli::command().debug_assert();
    }

    #[test]
    fn global_options_default_to_the_dev_cluster() {
        let ClientCommand::Call(args) = parse(&["call", "get", "c1"]) else {
            panic!("call expected");
        };
        // The environment may set these; compare only when it does not.
        if std::env::var_os("SWITCHBOARD_ENDPOINTS").is_none() {
            assert_eq!(
                args.opts.endpoints,
                vec!["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]
            );
        }
        if std::env::var_os("SWITCHBOARD_TENANT").is_none() {
            assert_eq!(args.opts.tenant, None);
        }
        assert_eq!(args.opts.timeout, Duration::from_secs(5));
        assert_eq!(args.opts.output, OutputFormat::Text);
        assert_eq!(args.opts.consistency, ConsistencyArg::Linearizable);
    }

    #[test]
    fn global_options_are_accepted_after_the_subcommand() {
        let ClientCommand::Call(args) = parse(&[
            "call",
            "create",
            "--tenant",
            "acme",
            "--source",
            "+1555",
            "--channel",
            "chat",
            "--meta",
            "a=1",
            "--meta",
            "b=x=y",
            "--endpoints",
            "10.0.0.1:7101,10.0.0.2:7101",
            "-o",
            "json",
            "--timeout",
            "750ms",
            "--request-id",
            "r1",
        ]) else {
            panic!("call expected");
        };
        assert_eq!(args.opts.tenant.as_deref(), Some("acme"));
        assert_eq!(args.opts.endpoints, vec!["10.0.0.1:7101", "10.0.0.2:7101"]);
        assert_eq!(args.opts.output, OutputFormat::Json);
        assert_eq!(args.opts.timeout, Duration::from_millis(750));
        assert_eq!(args.opts.request_id.as_deref(), Some("r1"));
        let CallCommand::Create {
            source,
            channel,
            meta,
            trace_id,
        } = args.command
        else {
            panic!("create expected");
        };
        assert_eq!(source, "+1555");
        assert_eq!(channel, ChannelArg::Chat);
        assert_eq!(
            meta,
            vec![
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), "x=y".to_owned())
            ]
        );
        assert_eq!(trace_id, None);
    }

    #[test]
    fn every_documented_subcommand_parses() {
        for args in [
            &["cluster", "status"][..],
            &[
                "cluster",
                "add-learner",
                "--node-id",
                "4",
                "--addr",
                "h:1",
                "--region",
                "eu",
            ],
            &["cluster", "promote", "4", "5"],
            &["cluster", "remove", "4"],
            &["cluster", "snapshot"],
            &["call", "start", "c1"],
            &[
                "call",
                "get",
                "c1",
                "--consistency",
                "local",
                "--min-index",
                "7",
            ],
            &["call", "context", "c1", "--last-turns", "5"],
            &["call", "turns", "c1", "--from", "2", "--limit", "10"],
            &[
                "call",
                "turn",
                "c1",
                "--speaker",
                "caller",
                "--text",
                "hi",
                "--confidence",
                "0.9",
                "--language",
                "en-US",
            ],
            &[
                "call",
                "event",
                "c1",
                "--type",
                "intent",
                "--json",
                "{\"a\":1}",
            ],
            &["call", "update", "c1", "--summary", "s", "--entity", "k=v"],
            &[
                "call",
                "handoff",
                "c1",
                "--reason",
                "angry",
                "--urgency",
                "critical",
                "--target",
                "tier2",
            ],
            &[
                "call",
                "end",
                "c1",
                "--reason",
                "done",
                "--resolution",
                "solved",
            ],
            &[
                "call",
                "list",
                "--state",
                "handed-off",
                "--page-token",
                "t",
                "--page-size",
                "5",
            ],
            &[
                "events", "list", "--call", "c1", "--from", "3", "--limit", "9",
            ],
            &["events", "list", "--from-position", "100"],
        ] {
            parse(args);
        }
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for args in [
            &["call", "handoff", "c1"][..],
            &["call", "create", "--meta", "novalue"],
            &["call", "create", "--channel", "fax"],
            &["call", "get", "c1", "--timeout", "5"],
            &["call", "get", "c1", "--timeout", "0s"],
            &["cluster", "promote"],
            &["events", "list", "--from", "3"],
            &["events", "list", "--call", "c1", "--from-position", "3"],
        ] {
            assert_eq!(
                parse_err(args).exit_code(),
                i32::from(EXIT_USAGE),
                "{args:?}"
            );
        }
    }

    #[test]
    fn timeouts_parse_with_units_and_are_bounded() {
        assert_eq!(parse_timeout("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_timeout("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_timeout("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_timeout("5").is_err());
        assert_eq!(parse_timeout("1h"), Ok(TIMEOUT_MAX));
        assert!(parse_timeout("5 s").is_err());
        assert!(parse_timeout("s").is_err());
        assert_eq!(
            parse_timeout("0ms"),
            Err("\"0ms\" must be greater than zero".to_owned())
        );
        assert_eq!(
            parse_timeout("2h"),
            Err("\"2h\" exceeds the maximum of 3600 s".to_owned())
        );
    }

    #[test]
    fn final_codes_map_to_distinct_exit_codes() {
        assert_eq!(exit_code_for(Code::InvalidArgument), EXIT_USAGE);
        assert_eq!(exit_code_for(Code::NotFound), EXIT_NOT_FOUND);
        assert_eq!(
            exit_code_for(Code::FailedPrecondition),
            EXIT_FAILED_PRECONDITION
        );
        assert_eq!(exit_code_for(Code::Unavailable), EXIT_UNAVAILABLE);
        assert_eq!(exit_code_for(Code::DeadlineExceeded), EXIT_UNAVAILABLE);
        // A node shedding load: busy, not broken; scripts retry later as for UNAVAILABLE.
        assert_eq!(exit_code_for(Code::ResourceExhausted), EXIT_UNAVAILABLE);
        assert_eq!(exit_code_for(Code::Internal), EXIT_OTHER);
    }

    #[test]
    fn text_output_is_one_short_line_for_writes() {
        let response = CallResponse {
            call: Some(Call {
                call_id: "0192".to_owned(),
                state: CallState::Active.into(),
                ..Default::default()
            }),
            meta: Some(WriteMeta {
                index: 42,
                replayed: false,
                leader_id: 1,
            }),
        };
        assert_eq!(call_response_text(&response), "call 0192 ACTIVE (index 42)");
        let replayed = CallResponse {
            meta: Some(WriteMeta {
                index: 42,
                replayed: true,
                leader_id: 1,
            }),
            ..response
        };
        assert_eq!(
            call_response_text(&replayed),
            "call 0192 ACTIVE (index 42, replayed)"
        );
        let erased = EraseCallResponse {
            call: Some(Call {
                call_id: "0192".to_owned(),
                ..Default::default()
            }),
            meta: Some(WriteMeta {
                index: 43,
                replayed: false,
                leader_id: 1,
            }),
            turns_erased: 2,
            events_erased: 7,
            entities_erased: 1,
        };
        assert_eq!(
            erase_call_text(&erased),
            "erased call 0192: 2 turns, 7 events, 1 entities (index 43)"
        );
    }

    #[test]
    fn json_output_uses_proto_json_names() {
        let response = CallResponse {
            call: Some(Call {
                call_id: "0192".to_owned(),
                state: CallState::HandedOff.into(),
                ..Default::default()
            }),
            meta: Some(WriteMeta {
                index: 42,
                replayed: false,
                leader_id: 1,
            }),
        };
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string_pretty(&response).expect("serializes"))
                .expect("valid json");
        assert_eq!(json["call"]["callId"], "0192");
        assert_eq!(json["call"]["state"], "CALL_STATE_HANDED_OFF");
        assert_eq!(json["meta"]["index"], "42");
        assert_eq!(json["meta"]["leaderId"], "1");
    }

    #[test]
    fn timestamps_print_as_rfc3339_utc() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(format_ms(1_712_320_496_789), "2024-04-05T12:34:56.789Z");
    }

    #[tokio::test]
    async fn unreachable_cluster_exits_unavailable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let dead = listener.local_addr().expect("bound address").to_string();
        drop(listener);
        let command = parse(&[
            "call",
            "get",
            "c1",
            "--insecure",
            "--endpoints",
            &dead,
            "--timeout",
            "300ms",
        ]);
        let err = execute(command).await.expect_err("nothing listens");
        assert_eq!(err.exit_code(), EXIT_UNAVAILABLE, "{err}");
        assert!(err.to_string().contains(&dead), "{err}");
    }

    #[tokio::test]
    async fn invalid_json_payload_is_a_usage_error() {
        let command = parse(&["call", "event", "c1", "--type", "t", "--json", "{nope"]);
        let err = execute(command).await.expect_err("invalid json");
        assert_eq!(err.exit_code(), EXIT_USAGE, "{err}");
    }

    #[tokio::test]
    async fn bad_endpoint_is_a_usage_error() {
        let command = parse(&["call", "get", "c1", "--insecure", "--endpoints", "no-port"]);
        let err = execute(command).await.expect_err("bad endpoint");
        assert_eq!(err.exit_code(), EXIT_USAGE, "{err}");
        assert!(err.to_string().contains("no-port"), "{err}");
    }

    #[tokio::test]
    async fn without_a_ca_or_insecure_the_cli_says_how_to_reach_a_tls_cluster() {
        let command = parse(&["call", "get", "c1"]);
        let err = execute(command).await.expect_err("no ca");
        assert_eq!(err.exit_code(), EXIT_USAGE, "{err}");
        let text = err.to_string();
        assert!(
            text.contains("--ca") && text.contains("--insecure"),
            "{text}"
        );
        let command = parse(&["call", "get", "c1", "--ca", "/nonexistent/ca.pem"]);
        let err = execute(command).await.expect_err("missing ca file");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
