//! The Switchboard client library: one cheap-to-clone [`Client`] for every RPC of
//! `switchboard.v1` (calls, events, cluster operations).
//!
//! It owns the client half of the redirect contract (DESIGN §4): writes go to the cached leader
//! first; a follower's `UNAVAILABLE` carrying `x-switchboard-leader-*` metadata is followed at
//! once (an address not in the list is learned); `UNAVAILABLE` without a hint, connection errors
//! and timeouts move to the next endpoint with capped, jittered exponential backoff; every retry
//! carries the same `request_id`, which the server answers with the original outcome. A node
//! that sheds load (`RESOURCE_EXHAUSTED` with `x-switchboard-overloaded`) is always backed off
//! from before the next attempt (reads any node may serve move to the next node; writes stay
//! with the leader), and [`ClientError::is_overloaded`] says when that is why a call gave up.
//! Errors the
//! caller must fix (`INVALID_ARGUMENT`, `NOT_FOUND`, `FAILED_PRECONDITION`, ...) are never
//! retried. Everything is bounded by `retries_max` and the whole-call deadline.
//!
//! The RPC methods are generated from the RPC table of the wire contract
//! ([`proto::switchboard_rpcs!`]): its row for an RPC says how the first attempt is routed,
//! whether the request carries an idempotency key, and how a response names the leader.
//!
//! [`Client::watch_events`] streams the event log as it commits and resumes on another node,
//! from the last position delivered, when its node fails ([`EventWatch`]).
//!
//! It must not interpret domain rules or rewrite requests beyond minting a missing
//! `request_id`: the server is the only judge of what is valid.

use std::{
    collections::hash_map::RandomState,
    fmt,
    future::Future,
    hash::{BuildHasher, Hasher},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use proto::v1::{self, Consistency, ReadOptions, WriteMeta};
use tokio::time::Instant;
use tonic::{
    Code, Request, Response, Status,
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};
use tracing::debug;

mod activity;
mod watch;

pub use activity::{ACTIVITY_BATCH_MAX, ActivityEmitter, EmitterConfig, EmitterStats};
pub use watch::EventWatch;

/// gRPC metadata carrying the bearer token (`Bearer <JWT>`).
pub const AUTHORIZATION_HEADER: &str = "authorization";

/// gRPC metadata naming the leader on a redirect (DESIGN §4).
pub const LEADER_ID_HEADER: &str = "x-switchboard-leader-id";
/// gRPC metadata with the leader's address on a redirect (DESIGN §4).
pub const LEADER_ADDR_HEADER: &str = "x-switchboard-leader-addr";
/// gRPC metadata naming the rejection kind of a refused write ([`RejectionKind::wire_name`]).
pub const REJECTION_HEADER: &str = "x-switchboard-rejection";

/// gRPC metadata on a `RESOURCE_EXHAUSTED` that a node sent because it is overloaded: the
/// class it shed (`read` or `write`). Nothing of the request was done, so retrying after a
/// backoff (a write with the same `request_id`) is safe. Without it, `RESOURCE_EXHAUSTED` means
/// a message over a size bound, which no retry changes.
pub const OVERLOADED_HEADER: &str = "x-switchboard-overloaded";

/// gRPC metadata on the status that ends a watch (`WatchEvents`): the position to resume from.
pub const RESUME_FROM_HEADER: &str = "x-switchboard-resume-from";

/// The position a status that ended a watch names to resume from ([`RESUME_FROM_HEADER`]).
pub fn resume_from_of(status: &Status) -> Option<u64> {
    status
        .metadata()
        .get(RESUME_FROM_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
}

/// The local dev cluster started by `switchboard dev`: the default endpoints.
pub const DEV_ENDPOINTS: &[&str] = &["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"];

/// Most endpoints a configuration may list.
pub const ENDPOINTS_MAX: usize = 64;

/// Most endpoints learned from redirects kept besides the configured ones; the oldest learned
/// one is forgotten first.
pub const LEARNED_ENDPOINTS_MAX: usize = 16;

/// Upper bound accepted for [`ClientConfig::retries_max`].
pub const RETRIES_MAX_LIMIT: u32 = 1_000;

/// Largest response message the client decodes.
pub const RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Redirects followed back to back without backing off; past this the redirects are chasing a
/// leader that moves (or two nodes that disagree), so the client backs off as for any failure.
const REDIRECTS_IMMEDIATE_MAX: u32 = 4;

/// How the client behaves; check it with [`ClientConfig::validate`] (done by [`Client::new`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// gRPC addresses of cluster nodes, `host:port` (an `http://` prefix is accepted).
    pub endpoints: Vec<String>,
    /// Timeout to establish a TCP/HTTP2 connection to one endpoint.
    pub connect_timeout: Duration,
    /// Timeout of one attempt; an attempt that runs out is retried elsewhere.
    pub request_timeout: Duration,
    /// Deadline of a whole call, retries and backoff included.
    pub call_deadline: Duration,
    /// Attempts after the first, redirects included.
    pub retries_max: u32,
    /// First backoff delay; it doubles per failed attempt.
    pub backoff_initial: Duration,
    /// Cap of the backoff delay.
    pub backoff_max: Duration,
    /// Where to connect for an address the cluster names: `(advertised, reachable)` pairs, both
    /// `host:port`. A node advertises the address its peers use (`node2:7101` inside a container
    /// network); a client elsewhere reaches it at another (`127.0.0.1:7102`). Applied to the
    /// configured endpoints and to every leader address a redirect names, like curl's
    /// `--resolve`. Addresses not listed are connected to as they are.
    pub resolve: Vec<(String, String)>,
    /// The bearer token sent with every request (`authorization: Bearer <token>`): a JWT from
    /// `switchboard token issue`. `None` only against a node started with `--insecure`.
    pub token: Option<BearerToken>,
    /// TLS towards the nodes (`https://`); `None` speaks plaintext, which only a node started
    /// with `--insecure` answers.
    pub tls: Option<TlsConfig>,
}

/// Longest bearer token the client sends, in bytes (the node's bound too).
pub const TOKEN_BYTES_MAX: usize = 4096;

/// A bearer token: a secret, so its `Debug` form never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    /// The token as given; [`ClientConfig::validate`] checks it.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into().trim().to_owned())
    }

    /// The token itself (to hand on, e.g. to a child process); never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The `authorization` metadata value, `Bearer <token>`; `None` when the token is not a
    /// header value. Every client of the wire (this library, raw test channels) sends this.
    pub fn header_value(&self) -> Option<MetadataValue<Ascii>> {
        format!("Bearer {}", self.0).parse().ok()
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

/// Largest PEM (CA, certificate or key) a [`TlsConfig`] holds, in bytes.
pub const TLS_PEM_BYTES_MAX: usize = 1 << 20;

/// How the client speaks TLS: which CA signed the nodes' certificates, and optionally a
/// client certificate to present (nodes check it against the same CA).
#[derive(Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The cluster CA certificate(s), PEM.
    pub ca_pem: Vec<u8>,
    /// A client certificate and key, PEM.
    pub identity: Option<TlsIdentity>,
    /// The name checked against a node's certificate instead of the host dialled (useful
    /// when dialling an address the certificate does not list).
    pub server_name: Option<String>,
}

/// A client certificate chain and its private key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("identity", &self.identity)
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl fmt::Debug for TlsIdentity {
    // Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("cert_pem_bytes", &self.cert_pem.len())
            .finish_non_exhaustive()
    }
}

/// Reads a PEM file of at most [`TLS_PEM_BYTES_MAX`] bytes.
fn read_pem(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let len = std::fs::metadata(path)?.len();
    if len > TLS_PEM_BYTES_MAX as u64 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} is {len} bytes, over the bound of {TLS_PEM_BYTES_MAX}",
                path.display()
            ),
        ));
    }
    std::fs::read(path)
}

impl TlsConfig {
    /// Trusts the CA(s) in `ca_pem`; no client certificate.
    pub fn new(ca_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            ca_pem: ca_pem.into(),
            identity: None,
            server_name: None,
        }
    }

    /// Trusts the CA(s) in the PEM file at `path`.
    pub fn from_ca_file(path: impl AsRef<std::path::Path>) -> std::io::Result<Self> {
        Ok(Self::new(read_pem(path.as_ref())?))
    }

    /// Presents the client certificate and key in these PEM files.
    pub fn with_identity_files(
        mut self,
        cert: impl AsRef<std::path::Path>,
        key: impl AsRef<std::path::Path>,
    ) -> std::io::Result<Self> {
        self.identity = Some(TlsIdentity {
            cert_pem: read_pem(cert.as_ref())?,
            key_pem: read_pem(key.as_ref())?,
        });
        Ok(self)
    }

    /// tonic's form of this configuration.
    pub fn to_tonic(&self) -> tonic::transport::ClientTlsConfig {
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem));
        if let Some(identity) = &self.identity {
            config = config.identity(tonic::transport::Identity::from_pem(
                &identity.cert_pem,
                &identity.key_pem,
            ));
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        config
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let sizes = [
            ("ca_pem", self.ca_pem.len()),
            (
                "identity.cert_pem",
                self.identity.as_ref().map_or(0, |i| i.cert_pem.len()),
            ),
            (
                "identity.key_pem",
                self.identity.as_ref().map_or(0, |i| i.key_pem.len()),
            ),
        ];
        for (field, len) in sizes {
            if len > TLS_PEM_BYTES_MAX {
                return Err(ConfigError::Tls {
                    reason: format!(
                        "{field} is {len} bytes, over the bound of {TLS_PEM_BYTES_MAX}"
                    ),
                });
            }
        }
        if self.ca_pem.is_empty() {
            return Err(ConfigError::Tls {
                reason: "ca_pem is empty".to_owned(),
            });
        }
        // Parses the PEMs now, so that a bad file is a configuration error, not a failure of
        // every call.
        Endpoint::from_static("https://localhost:1")
            .tls_config(self.to_tonic())
            .map_err(|e| ConfigError::Tls {
                reason: error_chain(&e),
            })?;
        Ok(())
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(next) = source {
        out.push_str(": ");
        out.push_str(&next.to_string());
        source = next.source();
    }
    out
}

/// A tonic endpoint for `addr` (`host:port`): `https://` with `tls`, `http://` without.
pub fn endpoint(addr: &str, tls: Option<&TlsConfig>) -> Result<Endpoint, tonic::transport::Error> {
    match tls {
        None => Endpoint::from_shared(format!("http://{addr}")),
        Some(tls) => Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls.to_tonic()),
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            endpoints: DEV_ENDPOINTS.iter().map(|e| (*e).to_owned()).collect(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(3),
            call_deadline: Duration::from_secs(10),
            retries_max: 16,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            resolve: Vec::new(),
            token: None,
            tls: None,
        }
    }
}

/// A [`ClientConfig`] value that cannot work; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `endpoints` is empty.
    #[error("endpoints is empty: give at least one host:port")]
    NoEndpoints,
    /// `endpoints` lists more than [`ENDPOINTS_MAX`].
    #[error("endpoints lists {count} addresses, at most {max} are allowed")]
    TooManyEndpoints {
        /// Addresses given.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// One of `endpoints` is not a usable `host:port`.
    #[error("endpoints: invalid address {endpoint:?}: {reason}")]
    BadEndpoint {
        /// The address as given.
        endpoint: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A duration field is zero.
    #[error("{field} must be greater than zero")]
    ZeroDuration {
        /// Name of the field.
        field: &'static str,
    },
    /// `backoff_initial` exceeds `backoff_max`.
    #[error("backoff_initial ({initial_ms} ms) exceeds backoff_max ({max_ms} ms)")]
    BackoffInverted {
        /// `backoff_initial` in milliseconds.
        initial_ms: u128,
        /// `backoff_max` in milliseconds.
        max_ms: u128,
    },
    /// `resolve` lists more than [`ENDPOINTS_MAX`] pairs.
    #[error("resolve lists {count} pairs, at most {max} are allowed")]
    TooManyResolves {
        /// Pairs given.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// One address of a `resolve` pair is not a usable `host:port`.
    #[error("resolve: invalid address {addr:?}: {reason}")]
    BadResolve {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `token` is empty, too long or not a header value (visible ASCII, no spaces).
    #[error("token is not usable: {reason}")]
    BadToken {
        /// What is wrong with it (never the token itself).
        reason: &'static str,
    },
    /// The TLS settings cannot work.
    #[error("tls: {reason}")]
    Tls {
        /// What is wrong.
        reason: String,
    },
    /// An endpoint asks for `https://` but no TLS is configured.
    #[error("endpoints: {endpoint:?} is https:// but no TLS is configured (give the cluster CA)")]
    HttpsWithoutTls {
        /// The address as given.
        endpoint: String,
    },
    /// `retries_max` exceeds [`RETRIES_MAX_LIMIT`].
    #[error("retries_max {retries_max} exceeds {max}")]
    TooManyRetries {
        /// The value given.
        retries_max: u32,
        /// The bound.
        max: u32,
    },
}

impl ClientConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.endpoints.is_empty() {
            return Err(ConfigError::NoEndpoints);
        }
        if self.endpoints.len() > ENDPOINTS_MAX {
            return Err(ConfigError::TooManyEndpoints {
                count: self.endpoints.len(),
                max: ENDPOINTS_MAX,
            });
        }
        for endpoint in &self.endpoints {
            normalize_addr(endpoint).map_err(|reason| ConfigError::BadEndpoint {
                endpoint: endpoint.clone(),
                reason,
            })?;
            if self.tls.is_none() && endpoint.trim().starts_with("https://") {
                return Err(ConfigError::HttpsWithoutTls {
                    endpoint: endpoint.clone(),
                });
            }
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        if self.resolve.len() > ENDPOINTS_MAX {
            return Err(ConfigError::TooManyResolves {
                count: self.resolve.len(),
                max: ENDPOINTS_MAX,
            });
        }
        for addr in self.resolve.iter().flat_map(|(from, to)| [from, to]) {
            normalize_addr(addr).map_err(|reason| ConfigError::BadResolve {
                addr: addr.clone(),
                reason,
            })?;
        }
        for (field, value) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("call_deadline", self.call_deadline),
            ("backoff_initial", self.backoff_initial),
            ("backoff_max", self.backoff_max),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration { field });
            }
        }
        if self.backoff_initial > self.backoff_max {
            return Err(ConfigError::BackoffInverted {
                initial_ms: self.backoff_initial.as_millis(),
                max_ms: self.backoff_max.as_millis(),
            });
        }
        if let Some(token) = &self.token {
            let reason = if token.0.is_empty() {
                Some("it is empty")
            } else if token.0.len() > TOKEN_BYTES_MAX {
                Some("it is longer than 4096 bytes")
            } else if !token.0.bytes().all(|b| b.is_ascii_graphic()) {
                Some("it holds a space or a character that is not visible ASCII")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(ConfigError::BadToken { reason });
            }
        }
        if self.retries_max > RETRIES_MAX_LIMIT {
            return Err(ConfigError::TooManyRetries {
                retries_max: self.retries_max,
                max: RETRIES_MAX_LIMIT,
            });
        }
        Ok(())
    }
}

/// Turns `host:port`, `http://host:port` or `https://host:port` into `host:port`, or says
/// what is wrong with it. Whether TLS is spoken is [`ClientConfig::tls`]'s to say.
fn normalize_addr(raw: &str) -> Result<String, &'static str> {
    let trimmed = raw.trim();
    let addr = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .unwrap_or(trimmed);
    let addr = addr.strip_suffix('/').unwrap_or(addr);
    if addr.contains("://") {
        return Err("only host:port, http://host:port or https://host:port is supported");
    }
    if addr.contains('/') {
        return Err("expected host:port without a path");
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err("expected host:port");
    };
    if host.is_empty() {
        return Err("host is empty");
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err("port must be a number in 1..=65535"),
        Ok(_) => {}
    }
    Endpoint::from_shared(format!("http://{addr}")).map_err(|_| "not a valid URI authority")?;
    Ok(addr.to_owned())
}

/// Name of a gRPC code as written in the gRPC spec (`NOT_FOUND`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Why the client stopped trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// The server's answer is final (e.g. `NOT_FOUND`); retrying cannot change it.
    NotRetryable,
    /// The whole-call deadline passed.
    Deadline,
    /// `retries_max` retries were spent.
    RetriesExhausted,
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotRetryable => "failed",
            Self::Deadline => "gave up at the call deadline",
            Self::RetriesExhausted => "gave up after retries_max retries",
        })
    }
}

/// A call that did not succeed: the last gRPC status and what was tried.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{op} {reason}: {code}: {message} ({attempts} attempt(s) in {elapsed_ms} ms; tried {tried})",
    code = code_name(*.code),
    elapsed_ms = .elapsed.as_millis(),
    tried = .tried.join(", ")
)]
pub struct ClientError {
    /// The RPC, e.g. `create_call`.
    pub op: &'static str,
    /// Code of the last status received.
    pub code: Code,
    /// Message of the last status received.
    pub message: String,
    /// Attempts made, redirects included.
    pub attempts: u32,
    /// Time from the first attempt to giving up.
    pub elapsed: Duration,
    /// Endpoints tried, in the order first tried.
    pub tried: Vec<String>,
    /// Why the client stopped.
    pub reason: GiveUp,
    /// The `request_id` of a write (the same on every attempt); empty for reads.
    pub request_id: String,
    /// The `x-switchboard-rejection` metadata of the last status, when the server rejected the
    /// command: the outcome is then known and final.
    pub rejection: Option<RejectionName>,
    /// The last status was a node shedding load (`RESOURCE_EXHAUSTED` with
    /// [`OVERLOADED_HEADER`]): nothing was done; the cluster is busy, not broken.
    pub overloaded: bool,
}

/// Rejection kinds the server names in `x-switchboard-rejection` (the proto contract owns them).
pub use proto::v1::RejectionKind;

/// A rejection kind named by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RejectionName(RejectionKind);

impl RejectionName {
    /// The kind for a header value, `None` when it is not a known name.
    pub fn parse(value: &str) -> Option<Self> {
        RejectionKind::from_wire_name(value).map(Self)
    }

    /// The kind's name, e.g. `AlreadyHandedOff`.
    pub fn as_str(self) -> &'static str {
        self.0.wire_name()
    }

    /// The kind as the proto contract declares it.
    pub fn kind(self) -> RejectionKind {
        self.0
    }
}

impl ClientError {
    /// Code of the last status received.
    pub fn code(&self) -> Code {
        self.code
    }

    /// Whether the client gave up on nodes that were shedding load; trying again later (a
    /// write with the same `request_id`) is safe.
    pub fn is_overloaded(&self) -> bool {
        self.overloaded
    }
}

/// The leader as last learned by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// Raft node id, when the server said it.
    pub id: Option<u64>,
    /// gRPC address, `host:port`.
    pub addr: String,
}

/// Client for one Switchboard cluster; clones share channels and the leader cache.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    /// `authorization` metadata of every request, made once from `config.token`.
    authorization: Option<MetadataValue<Ascii>>,
    peers: Mutex<Peers>,
    /// Round-robin cursor for reads any node may serve.
    next_any: AtomicUsize,
    /// Varies the jitter between calls made at the same instant.
    jitter_seq: AtomicU64,
}

#[derive(Debug)]
struct Peers {
    /// Configured endpoints first, then learned ones (at most [`LEARNED_ENDPOINTS_MAX`]).
    list: Vec<Peer>,
    configured: usize,
    leader: Option<LeaderInfo>,
}

#[derive(Debug)]
struct Peer {
    addr: String,
    endpoint: Endpoint,
    /// Created on first use so that [`Client::new`] needs no runtime.
    channel: Option<Channel>,
}

/// Where the first attempt of a call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The cached leader, else the configured endpoints in order: writes, linearizable reads.
    Leader,
    /// Round robin: reads any node may serve.
    Any,
    /// Always the first configured endpoint: operations aimed at one node.
    Pinned,
}

/// What to do after a failed attempt.
#[derive(Debug)]
enum Next {
    Stop,
    Redirect(LeaderInfo),
    Retry,
    /// The node is shedding load: back off before the next attempt, always. A write stays with
    /// the leader (another node would only redirect back); a read any node may serve moves on.
    Overloaded,
}

/// Whether a status is a node shedding load rather than a message over a size bound.
fn is_overloaded(status: &Status) -> bool {
    status.code() == Code::ResourceExhausted && status.metadata().get(OVERLOADED_HEADER).is_some()
}

/// Sets a fresh UUIDv7 `request_id` (the idempotency key of a write) when the caller gave none;
/// returns the one in use.
fn ensure_request_id(request_id: &mut String) -> String {
    if request_id.is_empty() {
        *request_id = uuid::Uuid::now_v7().to_string();
    }
    request_id.clone()
}

fn read_route(read: Option<&ReadOptions>) -> Route {
    match read.map(ReadOptions::consistency) {
        Some(Consistency::Local) => Route::Any,
        Some(Consistency::Linearizable) | None => Route::Leader,
    }
}

/// The node that accepted a write is the leader. A replayed outcome may name the leader of the
/// original attempt, so its id is not trusted for the serving node.
fn leader_from_write(meta: Option<&WriteMeta>, served_by: &str) -> Option<LeaderInfo> {
    meta.map(|meta| LeaderInfo {
        id: (meta.leader_id != 0 && !meta.replayed).then_some(meta.leader_id),
        addr: served_by.to_owned(),
    })
}

fn no_leader_evidence<T>(_: &T, _: &str) -> Option<LeaderInfo> {
    None
}

/// Only the leader answers this RPC (others redirect), so the node that answered is the leader.
fn leader_is_responder<T>(_: &T, served_by: &str) -> Option<LeaderInfo> {
    Some(LeaderInfo {
        id: None,
        addr: served_by.to_owned(),
    })
}

/// A node that reports itself as the leader is the leader.
fn leader_from_status(response: &v1::StatusResponse, served_by: &str) -> Option<LeaderInfo> {
    (response.leader_id == Some(response.node_id)).then(|| LeaderInfo {
        id: Some(response.node_id),
        addr: served_by.to_owned(),
    })
}

/// A read index is confirmed by the leader, which names itself.
fn leader_from_read_index(response: &v1::ReadIndexResponse, served_by: &str) -> Option<LeaderInfo> {
    Some(LeaderInfo {
        id: (response.leader_id != 0).then_some(response.leader_id),
        addr: served_by.to_owned(),
    })
}

/// The redirect hint of a status, if it names a usable address.
fn leader_hint(status: &Status) -> Option<LeaderInfo> {
    let metadata = status.metadata();
    let addr = metadata.get(LEADER_ADDR_HEADER)?.to_str().ok()?;
    if addr.is_empty() {
        return None;
    }
    let addr = normalize_addr(addr).ok()?;
    let id = metadata
        .get(LEADER_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    Some(LeaderInfo { id, addr })
}

fn classify(status: &Status, served_by: &str) -> Next {
    match status.code() {
        Code::Unavailable => match leader_hint(status) {
            // A node naming itself as leader while refusing is stepping down: back off.
            Some(leader) if leader.addr != served_by => Next::Redirect(leader),
            _ => Next::Retry,
        },
        Code::ResourceExhausted if is_overloaded(status) => Next::Overloaded,
        // Cancelled is what tonic reports when the channel's own timeout fires.
        Code::DeadlineExceeded | Code::Cancelled => Next::Retry,
        // Transport failures (connection reset mid-call) surface as UNKNOWN with a source.
        Code::Unknown if std::error::Error::source(status).is_some() => Next::Retry,
        _ => Next::Stop,
    }
}

/// Mutable state of one call across its attempts.
#[derive(Debug)]
struct Attempts {
    op: &'static str,
    request_id: String,
    started: Instant,
    deadline: Instant,
    count: u32,
    tried: Vec<String>,
    backoffs: u32,
    redirects_in_a_row: u32,
}

impl Attempts {
    fn give_up(&self, reason: GiveUp, status: &Status) -> ClientError {
        ClientError {
            op: self.op,
            code: status.code(),
            message: status.message().to_owned(),
            attempts: self.count,
            elapsed: self.started.elapsed(),
            tried: self.tried.clone(),
            reason,
            request_id: self.request_id.clone(),
            rejection: status
                .metadata()
                .get(REJECTION_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(RejectionName::parse),
            overloaded: is_overloaded(status),
        }
    }
}

impl Client {
    /// Validates `config` and builds a client; connections open lazily on first use.
    pub fn new(mut config: ClientConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        for (from, to) in &mut config.resolve {
            // Validated above: both normalize.
            *from = normalize_addr(from).unwrap_or_else(|_| from.clone());
            *to = normalize_addr(to).unwrap_or_else(|_| to.clone());
        }
        let mut list: Vec<Peer> = Vec::with_capacity(config.endpoints.len());
        for raw in &config.endpoints {
            let addr = normalize_addr(raw).map_err(|reason| ConfigError::BadEndpoint {
                endpoint: raw.clone(),
                reason,
            })?;
            if list.iter().any(|peer| peer.addr == addr) {
                continue;
            }
            let endpoint = make_endpoint(&addr, &config).map_err(|_| ConfigError::BadEndpoint {
                endpoint: raw.clone(),
                reason: "not a valid URI authority",
            })?;
            list.push(Peer {
                addr,
                endpoint,
                channel: None,
            });
        }
        let configured = list.len();
        let authorization = match &config.token {
            Some(token) => Some(token.header_value().ok_or(ConfigError::BadToken {
                reason: "it is not a header value",
            })?),
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                authorization,
                config,
                peers: Mutex::new(Peers {
                    list,
                    configured,
                    leader: None,
                }),
                next_any: AtomicUsize::new(0),
                jitter_seq: AtomicU64::new(0),
            }),
        })
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The leader as currently cached, if any.
    pub fn leader(&self) -> Option<LeaderInfo> {
        self.peers().leader.clone()
    }

    /// Every endpoint known: the configured ones, then those learned from redirects.
    pub fn endpoints(&self) -> Vec<String> {
        self.peers().list.iter().map(|p| p.addr.clone()).collect()
    }

    fn peers(&self) -> MutexGuard<'_, Peers> {
        // The guarded data stays consistent at every await-free step, so a poisoned lock
        // (a panic elsewhere while holding it) leaves nothing half-updated.
        self.inner
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Index of the endpoint the first attempt of a call goes to.
    fn first_target(&self, route: Route) -> usize {
        match route {
            Route::Pinned => 0,
            Route::Any => self.inner.next_any.fetch_add(1, Ordering::Relaxed),
            Route::Leader => {
                let peers = self.peers();
                peers
                    .leader
                    .as_ref()
                    .and_then(|leader| peers.list.iter().position(|p| p.addr == leader.addr))
                    .unwrap_or(0)
            }
        }
    }

    /// The endpoint at `index` (modulo the list), its channel created on first use.
    fn peer_at(&self, index: usize) -> (usize, String, Channel) {
        let mut peers = self.peers();
        // The list is never empty: validate() requires an endpoint and none is ever removed
        // without a replacement.
        let index = index % peers.list.len().max(1);
        let peer = &mut peers.list[index];
        let channel = peer
            .channel
            .get_or_insert_with(|| peer.endpoint.connect_lazy())
            .clone();
        (index, peer.addr.clone(), channel)
    }

    /// Caches `leader`, learning its address if new; returns its index in the list. A known
    /// peer that `resolve` maps to the same place is the same peer, and the cache names the
    /// leader by that peer's address.
    fn remember_leader(&self, mut leader: LeaderInfo) -> Option<usize> {
        let config = &self.inner.config;
        let target = resolved(&leader.addr, config);
        let mut peers = self.peers();
        let known = peers
            .list
            .iter()
            .position(|p| resolved(&p.addr, config) == target);
        if let Some(index) = known {
            leader.addr.clone_from(&peers.list[index].addr);
        }
        let index = match known {
            Some(index) => index,
            None => {
                let endpoint = make_endpoint(&leader.addr, &self.inner.config).ok()?;
                if peers.list.len() - peers.configured >= LEARNED_ENDPOINTS_MAX {
                    let oldest_learned = peers.configured;
                    peers.list.remove(oldest_learned);
                }
                debug!(leader_addr = %leader.addr, "learned leader address from redirect");
                peers.list.push(Peer {
                    addr: leader.addr.clone(),
                    endpoint,
                    channel: None,
                });
                peers.list.len() - 1
            }
        };
        if peers.leader.as_ref() != Some(&leader) {
            debug!(leader_id = ?leader.id, leader_addr = %leader.addr, "cached leader");
        }
        peers.leader = Some(leader);
        Some(index)
    }

    /// Drops the cached leader if it is `addr`, which just failed.
    fn forget_leader(&self, addr: &str) {
        let mut peers = self.peers();
        if peers.leader.as_ref().is_some_and(|l| l.addr == addr) {
            debug!(leader_addr = %addr, "forgot cached leader");
            peers.leader = None;
        }
    }

    /// Where to go after `failed_index` failed: the cached leader if another task learned one
    /// meanwhile, else the next endpoint in the list.
    fn next_target(&self, route: Route, failed_index: usize, failed_addr: &str) -> usize {
        if route == Route::Pinned {
            return failed_index;
        }
        let peers = self.peers();
        if route == Route::Leader
            && let Some(index) = peers
                .leader
                .as_ref()
                .filter(|l| l.addr != failed_addr)
                .and_then(|l| peers.list.iter().position(|p| p.addr == l.addr))
        {
            return index;
        }
        (failed_index + 1) % peers.list.len().max(1)
    }

    fn is_tried(&self, index: usize, tried: &[String]) -> bool {
        let peers = self.peers();
        peers
            .list
            .get(index % peers.list.len().max(1))
            .is_some_and(|p| tried.contains(&p.addr))
    }

    /// Exponential backoff for the `n`th retry, capped, with equal jitter (half fixed, half
    /// random) so that clients that failed together do not retry together.
    fn backoff(&self, n: u32) -> Duration {
        let config = &self.inner.config;
        let exp = config
            .backoff_initial
            .saturating_mul(2u32.saturating_pow(n.min(31)))
            .min(config.backoff_max);
        let half = exp / 2;
        let half_ns = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(self.inner.jitter_seq.fetch_add(1, Ordering::Relaxed));
        let random_ns = hasher.finish() % half_ns.saturating_add(1);
        half + Duration::from_nanos(random_ns)
    }

    /// Runs one RPC with redirects, failover, backoff and the call deadline.
    async fn execute<Req, Resp, S, Fut>(
        &self,
        op: &'static str,
        route: Route,
        request_id: String,
        request: Req,
        send: S,
        leader_evidence: fn(&Resp, &str) -> Option<LeaderInfo>,
    ) -> Result<Resp, ClientError>
    where
        Req: Clone,
        S: Fn(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let config = &self.inner.config;
        let started = Instant::now();
        let mut state = Attempts {
            op,
            request_id,
            started,
            deadline: started + config.call_deadline,
            count: 0,
            tried: Vec::new(),
            backoffs: 0,
            redirects_in_a_row: 0,
        };
        let mut target = self.first_target(route);
        loop {
            let (index, addr, channel) = self.peer_at(target);
            state.count += 1;
            if !state.tried.contains(&addr) {
                state.tried.push(addr.clone());
            }
            let remaining = state.deadline.saturating_duration_since(Instant::now());
            let attempt_timeout = config.request_timeout.min(remaining);
            let mut request = Request::new(request.clone());
            request.set_timeout(attempt_timeout);
            if let Some(authorization) = &self.inner.authorization {
                request
                    .metadata_mut()
                    .insert(AUTHORIZATION_HEADER, authorization.clone());
            }
            debug!(
                op,
                attempt = state.count,
                endpoint = %addr,
                request_id = %state.request_id,
                timeout_ms = attempt_timeout.as_millis(),
                "sending request"
            );
            let status = match tokio::time::timeout(attempt_timeout, send(channel, request)).await {
                Ok(Ok(response)) => {
                    let response = response.into_inner();
                    if let Some(leader) = leader_evidence(&response, &addr) {
                        self.remember_leader(leader);
                    }
                    return Ok(response);
                }
                Ok(Err(status)) => status,
                Err(_elapsed) => Status::deadline_exceeded(format!(
                    "attempt timed out after {} ms",
                    attempt_timeout.as_millis()
                )),
            };
            debug!(
                op,
                attempt = state.count,
                endpoint = %addr,
                code = code_name(status.code()),
                message = status.message(),
                "attempt failed"
            );
            let delay = match classify(&status, &addr) {
                Next::Stop => return Err(state.give_up(GiveUp::NotRetryable, &status)),
                Next::Redirect(leader) => {
                    debug!(
                        op,
                        leader_id = ?leader.id,
                        leader_addr = %leader.addr,
                        "following redirect"
                    );
                    state.redirects_in_a_row += 1;
                    match self.remember_leader(leader) {
                        Some(leader_index) => target = leader_index,
                        None => target = self.next_target(route, index, &addr),
                    }
                    if state.redirects_in_a_row <= REDIRECTS_IMMEDIATE_MAX {
                        Duration::ZERO
                    } else {
                        state.backoffs += 1;
                        self.backoff(state.backoffs - 1)
                    }
                }
                Next::Overloaded => {
                    state.redirects_in_a_row = 0;
                    if route == Route::Any {
                        target = self.next_target(route, index, &addr);
                    }
                    state.backoffs += 1;
                    self.backoff(state.backoffs - 1)
                }
                Next::Retry => {
                    state.redirects_in_a_row = 0;
                    self.forget_leader(&addr);
                    target = self.next_target(route, index, &addr);
                    // A fresh endpoint is worth trying at once; cycling back to one that
                    // already failed is what backs off.
                    if self.is_tried(target, &state.tried) {
                        state.backoffs += 1;
                        self.backoff(state.backoffs - 1)
                    } else {
                        Duration::ZERO
                    }
                }
            };
            if state.count > config.retries_max {
                return Err(state.give_up(GiveUp::RetriesExhausted, &status));
            }
            let remaining = state.deadline.saturating_duration_since(Instant::now());
            if !delay.is_zero() {
                tokio::time::sleep(delay.min(remaining)).await;
            }
            if Instant::now() >= state.deadline {
                return Err(state.give_up(GiveUp::Deadline, &status));
            }
        }
    }
}

/// The route of a request's first attempt, by the kind its table row gives.
macro_rules! route {
    (write, $req:ident) => {
        Route::Leader
    };
    (read, $req:ident) => {
        read_route($req.read.as_ref())
    };
    (leader, $req:ident) => {
        Route::Leader
    };
    (pinned, $req:ident) => {
        Route::Pinned
    };
}

/// The request with its idempotency key and the key: a write gets one minted when it has none
/// (the same on every retry); other kinds carry none.
macro_rules! with_request_id {
    (write, $req:ident) => {{
        let mut request = $req;
        (ensure_request_id(&mut request.request_id), request)
    }};
    ($other:ident, $req:ident) => {
        (String::new(), $req)
    };
}

/// How a successful response names the leader, by the `leader_from` its table row gives.
macro_rules! leader_from {
    (write_meta, $resp:ty) => {
        |response: &$resp, served_by: &str| leader_from_write(response.meta.as_ref(), served_by)
    };
    (self_reported, $resp:ty) => {
        leader_from_status
    };
    (leader_id, $resp:ty) => {
        leader_from_read_index
    };
    (responder, $resp:ty) => {
        leader_is_responder::<$resp>
    };
    (no, $resp:ty) => {
        no_leader_evidence::<$resp>
    };
}

/// One public method per row of [`proto::switchboard_rpcs!`], named after the RPC.
macro_rules! client_methods {
    (package $_package:literal ($_module:ident); $(service $_service:ident (
        $($_server:ident)::+, $client_module:ident :: $client_type:ident
    ) {
        $($(#[doc = $doc:literal])* $_rpc:ident $method:ident ($req:ident) -> $resp:ident
            [$kind:ident, leader_from: $leader_from:ident, access: $_access:ident])*
    })*) => {
        impl Client {
            $($(
                $(#[doc = $doc])*
                pub async fn $method(&self, req: v1::$req) -> Result<v1::$resp, ClientError> {
                    let route = route!($kind, req);
                    let (request_id, req) = with_request_id!($kind, req);
                    self.execute(
                        stringify!($method),
                        route,
                        request_id,
                        req,
                        |channel, request| async move {
                            v1::$client_module::$client_type::new(channel)
                                .max_decoding_message_size(RESPONSE_BYTES_MAX)
                                .$method(request)
                                .await
                        },
                        leader_from!($leader_from, v1::$resp),
                    )
                    .await
                }
            )*)*
        }
    };
}

proto::switchboard_rpcs!(client_methods);

/// Where to connect for `addr`: its `resolve` entry, else itself.
fn resolved<'a>(addr: &'a str, config: &'a ClientConfig) -> &'a str {
    config
        .resolve
        .iter()
        .find(|(from, _)| from == addr)
        .map_or(addr, |(_, to)| to.as_str())
}

fn make_endpoint(addr: &str, config: &ClientConfig) -> Result<Endpoint, tonic::transport::Error> {
    let addr = resolved(addr, config);
    Ok(endpoint(addr, config.tls.as_ref())?
        .connect_timeout(config.connect_timeout)
        .timeout(config.request_timeout)
        .tcp_nodelay(true))
}

#[cfg(test)]
mod tests {
    use proto::v1::{CreateCallRequest, EndCallRequest, GetCallRequest, StatusRequest};

    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert_eq!(ClientConfig::default().validate(), Ok(()));
    }

    #[test]
    fn tls_settings_are_checked_when_the_client_is_built() {
        let https = ClientConfig {
            endpoints: vec!["https://127.0.0.1:7101".to_owned()],
            ..ClientConfig::default()
        };
        assert!(matches!(
            https.validate(),
            Err(ConfigError::HttpsWithoutTls { .. })
        ));
        let empty_ca = ClientConfig {
            tls: Some(TlsConfig::new(Vec::new())),
            ..ClientConfig::default()
        };
        assert!(matches!(empty_ca.validate(), Err(ConfigError::Tls { .. })));
        let garbage = ClientConfig {
            tls: Some(TlsConfig::new(
                b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".to_vec(),
            )),
            ..ClientConfig::default()
        };
        assert!(matches!(garbage.validate(), Err(ConfigError::Tls { .. })));
        let huge = ClientConfig {
            tls: Some(TlsConfig::new(vec![b'a'; TLS_PEM_BYTES_MAX + 1])),
            ..ClientConfig::default()
        };
        assert!(matches!(huge.validate(), Err(ConfigError::Tls { .. })));
    }

    #[test]
    fn a_tls_config_never_prints_its_key() {
        let tls = TlsConfig {
            identity: Some(TlsIdentity {
                cert_pem: b"cert".to_vec(),
                key_pem: b"SECRET KEY".to_vec(),
            }),
            ..TlsConfig::new(b"ca".to_vec())
        };
        assert!(!format!("{tls:?}").contains("SECRET"));
    }

    #[test]
    fn validate_names_the_bad_field() {
        let bad = ClientConfig {
            endpoints: vec![],
            ..ClientConfig::default()
        };
        assert_eq!(bad.validate(), Err(ConfigError::NoEndpoints));

        let bad = ClientConfig {
            endpoints: vec!["127.0.0.1".to_owned()],
            ..ClientConfig::default()
        };
        let err = bad.validate().expect_err("no port");
        assert!(err.to_string().contains("\"127.0.0.1\""), "{err}");

        let bad = ClientConfig {
            request_timeout: Duration::ZERO,
            ..ClientConfig::default()
        };
        let err = bad.validate().expect_err("zero timeout");
        assert!(err.to_string().contains("request_timeout"), "{err}");

        let bad = ClientConfig {
            backoff_initial: Duration::from_secs(5),
            ..ClientConfig::default()
        };
        let err = bad.validate().expect_err("inverted backoff");
        assert!(err.to_string().contains("backoff_initial"), "{err}");

        let bad = ClientConfig {
            retries_max: RETRIES_MAX_LIMIT + 1,
            ..ClientConfig::default()
        };
        assert!(bad.validate().is_err());

        let bad = ClientConfig {
            resolve: vec![("node2:7101".to_owned(), "127.0.0.1".to_owned())],
            ..ClientConfig::default()
        };
        let err = bad.validate().expect_err("resolve target without a port");
        assert!(err.to_string().starts_with("resolve:"), "{err}");
    }

    #[test]
    fn resolve_maps_advertised_addresses_only() {
        let config = ClientConfig {
            resolve: vec![("node2:7101".to_owned(), "127.0.0.1:7102".to_owned())],
            ..ClientConfig::default()
        };
        assert_eq!(resolved("node2:7101", &config), "127.0.0.1:7102");
        assert_eq!(resolved("node3:7101", &config), "node3:7101");
    }

    #[test]
    fn addresses_are_normalized() {
        assert_eq!(
            normalize_addr("127.0.0.1:7101"),
            Ok("127.0.0.1:7101".to_owned())
        );
        assert_eq!(
            normalize_addr("http://node-1:7101/"),
            Ok("node-1:7101".to_owned())
        );
        assert_eq!(normalize_addr("[::1]:7101"), Ok("[::1]:7101".to_owned()));
        assert_eq!(
            normalize_addr("https://node-1:7101"),
            Ok("node-1:7101".to_owned())
        );
        assert!(normalize_addr("ftp://node-1:7101").is_err());
        assert!(normalize_addr("node-1:0").is_err());
        assert!(normalize_addr(":7101").is_err());
        assert!(normalize_addr("node-1:7101/x").is_err());
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let client = Client::new(ClientConfig {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(800),
            ..ClientConfig::default()
        })
        .expect("valid config");
        for n in 0..40 {
            let exp =
                (Duration::from_millis(100) * 2u32.pow(n.min(3))).min(Duration::from_millis(800));
            let delay = client.backoff(n);
            assert!(
                delay >= exp / 2 && delay <= exp,
                "n={n} delay={delay:?} exp={exp:?}"
            );
        }
    }

    #[test]
    fn missing_request_id_gets_a_uuid_v7_and_given_one_is_kept() {
        let req = CreateCallRequest::default();
        let (id, req) = with_request_id!(write, req);
        let parsed = uuid::Uuid::parse_str(&id).expect("minted id is a uuid");
        assert_eq!(parsed.get_version_num(), 7);
        assert_eq!(req.request_id, id);

        let req = EndCallRequest {
            request_id: "mine".to_owned(),
            ..Default::default()
        };
        let (id, req) = with_request_id!(write, req);
        assert_eq!((id.as_str(), req.request_id.as_str()), ("mine", "mine"));
    }

    #[test]
    fn redirect_needs_an_address_other_than_the_refusing_node() {
        let mut status = Status::unavailable("not the leader");
        status
            .metadata_mut()
            .insert(LEADER_ID_HEADER, MetadataValue::from_static("2"));
        status.metadata_mut().insert(
            LEADER_ADDR_HEADER,
            MetadataValue::from_static("10.0.0.2:7101"),
        );
        match classify(&status, "10.0.0.1:7101") {
            Next::Redirect(leader) => {
                assert_eq!(leader.id, Some(2));
                assert_eq!(leader.addr, "10.0.0.2:7101");
            }
            other => panic!("expected redirect, got {other:?}"),
        }
        assert!(matches!(classify(&status, "10.0.0.2:7101"), Next::Retry));

        let mut empty = Status::unavailable("no leader known");
        empty
            .metadata_mut()
            .insert(LEADER_ADDR_HEADER, MetadataValue::from_static(""));
        assert!(matches!(classify(&empty, "10.0.0.1:7101"), Next::Retry));
    }

    #[test]
    fn caller_errors_are_final() {
        for status in [
            Status::invalid_argument("x"),
            Status::not_found("x"),
            Status::failed_precondition("x"),
            Status::internal("x"),
            // Without the overload header: a message over a size bound, final.
            Status::resource_exhausted("message too large"),
        ] {
            assert!(matches!(classify(&status, "a:1"), Next::Stop), "{status:?}");
        }
        for status in [
            Status::unavailable("x"),
            Status::deadline_exceeded("x"),
            Status::cancelled("Timeout expired"),
        ] {
            assert!(
                matches!(classify(&status, "a:1"), Next::Retry),
                "{status:?}"
            );
        }
    }

    #[test]
    fn a_node_shedding_load_is_retried_after_a_backoff() {
        let mut status = Status::resource_exhausted("node 1 is overloaded");
        status
            .metadata_mut()
            .insert(OVERLOADED_HEADER, MetadataValue::from_static("read"));
        assert!(matches!(classify(&status, "a:1"), Next::Overloaded));
        assert!(is_overloaded(&status));
    }

    #[test]
    fn reads_route_by_consistency() {
        assert_eq!(read_route(None), Route::Leader);
        let local = ReadOptions {
            consistency: Consistency::Local.into(),
            min_index: 0,
        };
        assert_eq!(read_route(Some(&local)), Route::Any);
        assert_eq!(read_route(Some(&ReadOptions::default())), Route::Leader);
    }

    #[test]
    fn client_and_its_futures_can_cross_threads() {
        fn assert_send_sync<T: Send + Sync>(_: &T) {}
        fn assert_send<T: Send>(_: &T) {}
        let client = Client::new(ClientConfig::default()).expect("valid config");
        assert_send_sync(&client);
        assert_send(&client.create_call(CreateCallRequest::default()));
        assert_send(&client.get_call(GetCallRequest::default()));
        assert_send(&client.status(StatusRequest {}));
    }

    #[test]
    fn learned_addresses_are_bounded() {
        let client = Client::new(ClientConfig {
            endpoints: vec!["127.0.0.1:1".to_owned()],
            ..ClientConfig::default()
        })
        .expect("valid config");
        for port in 2..(2 + 3 * LEARNED_ENDPOINTS_MAX as u16) {
            client.remember_leader(LeaderInfo {
                id: None,
                addr: format!("127.0.0.1:{port}"),
            });
        }
        let endpoints = client.endpoints();
        assert_eq!(endpoints.len(), 1 + LEARNED_ENDPOINTS_MAX);
        assert_eq!(endpoints[0], "127.0.0.1:1");
        let leader = client.leader().expect("leader cached");
        assert_eq!(endpoints.last(), Some(&leader.addr));
    }
}
