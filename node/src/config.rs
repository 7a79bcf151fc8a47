//! Node configuration: flags, then environment, then an optional JSON file, then defaults.
//! [`NodeConfig::validate`] runs before any port is bound; its errors name the bad value.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use domain::limits::TENANT_ID_BYTES_MAX;
use domain::redact::{HASH_KEY_BYTES_MAX, HashKey, Policy};
use serde::Deserialize;

use crate::admission::{self, AdmissionConfig, ClassLimits};
use crate::edge::{self, EdgeConfig};
use crate::pii::PiiConfig;
use crate::tls::{Security, TlsFiles};
use crate::watch::{self, WatchConfig};

/// `switchboard serve` options. Every option is optional here so that a config file can fill
/// what the command line leaves out; [`ServeArgs::resolve`] applies the defaults.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeArgs {
    /// JSON file with any of these options (kebab-case keys); flags and env win over it.
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long, env = "SWITCHBOARD_NODE_ID")]
    pub node_id: Option<u64>,
    /// StatefulSet pod name (`name-<ordinal>`): without --node-id, the id is ordinal + 1.
    #[arg(long, env = "SWITCHBOARD_POD_NAME")]
    pub pod_name: Option<String>,
    /// gRPC listen address (public API and Raft).
    #[arg(long, env = "SWITCHBOARD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address other nodes and clients use to reach this node (default: --listen).
    #[arg(long, env = "SWITCHBOARD_ADVERTISE")]
    pub advertise: Option<String>,
    /// HTTP listen address for /metrics, /healthz, /readyz (default: gRPC port + 1000).
    #[arg(long, env = "SWITCHBOARD_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Data directory (created on first start).
    #[arg(long, env = "SWITCHBOARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Initial voters, `1=host:port,2=host:port,3=host:port`: bootstraps a fresh cluster.
    #[arg(long, env = "SWITCHBOARD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Cluster id recorded in the data directory; nodes refuse peers of another cluster.
    #[arg(long, env = "SWITCHBOARD_CLUSTER_ID")]
    pub cluster_id: Option<String>,
    /// Region label reported in cluster status.
    #[arg(long, env = "SWITCHBOARD_REGION")]
    pub region: Option<String>,
    /// Raft heartbeat interval [default: 100]. openraft also bounds every AppendEntries RPC
    /// by it, so it must exceed the slowest peer round trip plus a follower's fsync (raise it
    /// across regions).
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Lower bound of the randomized election timeout [default: 250]. A follower's lease on
    /// its leader lasts the upper bound, so a failover takes about twice a sampled timeout;
    /// raise both bounds across regions (several inter-region round trips).
    #[arg(long, env = "SWITCHBOARD_ELECTION_TIMEOUT_MIN_MS")]
    pub election_timeout_min_ms: Option<u64>,
    /// Upper bound of the randomized election timeout [default: 500].
    #[arg(long, env = "SWITCHBOARD_ELECTION_TIMEOUT_MAX_MS")]
    pub election_timeout_max_ms: Option<u64>,
    /// Build a snapshot after this many log entries since the last one [default: 100000].
    #[arg(long, env = "SWITCHBOARD_SNAPSHOT_LOGS_SINCE_LAST")]
    pub snapshot_logs_since_last: Option<u64>,
    /// Log entries kept behind a snapshot (for slow followers) before purging.
    #[arg(long, env = "SWITCHBOARD_LOGS_KEPT_BEHIND_SNAPSHOT")]
    pub logs_kept_behind_snapshot: Option<u64>,
    /// How long a write may wait for commit and apply.
    #[arg(long, env = "SWITCHBOARD_WRITE_TIMEOUT_MS")]
    pub write_timeout_ms: Option<u64>,
    /// How long a read may wait for the read index or `min_index`.
    #[arg(long, env = "SWITCHBOARD_READ_WAIT_MS_MAX")]
    pub read_wait_ms_max: Option<u64>,
    /// Largest gRPC message accepted or sent by the call and event services; a larger
    /// request is refused with RESOURCE_EXHAUSTED [default: 4194304].
    #[arg(long, env = "SWITCHBOARD_GRPC_MESSAGE_BYTES_MAX")]
    pub grpc_message_bytes_max: Option<usize>,
    /// Largest request message of the cluster service; a larger one is refused with
    /// RESOURCE_EXHAUSTED [default: 65536].
    #[arg(long, env = "SWITCHBOARD_CLUSTER_MESSAGE_BYTES_MAX")]
    pub cluster_message_bytes_max: Option<usize>,
    /// gRPC requests in flight per connection; more are refused with RESOURCE_EXHAUSTED, not
    /// queued [default: 256].
    #[arg(long, env = "SWITCHBOARD_GRPC_CONCURRENCY_MAX")]
    pub grpc_concurrency_max: Option<usize>,
    /// gRPC requests in flight per client address over all its connections (the Raft service
    /// is not counted); more are refused with RESOURCE_EXHAUSTED [default: 1024].
    #[arg(long, env = "SWITCHBOARD_REQUESTS_IN_FLIGHT_PER_CLIENT_MAX")]
    pub requests_in_flight_per_client_max: Option<usize>,
    /// HTTP/2 streams a connection may open at once (SETTINGS_MAX_CONCURRENT_STREAMS)
    /// [default: 512].
    #[arg(long, env = "SWITCHBOARD_HTTP2_STREAMS_PER_CONNECTION_MAX")]
    pub http2_streams_per_connection_max: Option<u32>,
    /// Connections the gRPC port holds at once; more are closed when accepted [default: 16384].
    #[arg(long, env = "SWITCHBOARD_CONNECTIONS_MAX")]
    pub connections_max: Option<usize>,
    /// Connections from one client address; more are closed when accepted [default: 1024].
    #[arg(long, env = "SWITCHBOARD_CONNECTIONS_PER_CLIENT_MAX")]
    pub connections_per_client_max: Option<usize>,
    /// Interval of HTTP/2 keepalive pings [default: 10000].
    #[arg(long, env = "SWITCHBOARD_HTTP2_KEEPALIVE_INTERVAL_MS")]
    pub http2_keepalive_interval_ms: Option<u64>,
    /// Wait for a keepalive ping's answer before closing the connection [default: 20000].
    #[arg(long, env = "SWITCHBOARD_HTTP2_KEEPALIVE_TIMEOUT_MS")]
    pub http2_keepalive_timeout_ms: Option<u64>,
    /// Longest time from accepting a connection to its first request (handshakes included);
    /// then it is closed [default: 10000].
    #[arg(long, env = "SWITCHBOARD_HANDSHAKE_TIMEOUT_MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// Longest time of a client read or write; then it is answered DEADLINE_EXCEEDED
    /// [default: 30000].
    #[arg(long, env = "SWITCHBOARD_REQUEST_TIME_MS_MAX")]
    pub request_time_ms_max: Option<u64>,
    /// Client reads (the `read` RPCs) served at once; more wait in the read queue
    /// [default: 4, two per core of a 2-core machine: raise it with the cores].
    #[arg(long, env = "SWITCHBOARD_READS_IN_FLIGHT_MAX")]
    pub reads_in_flight_max: Option<usize>,
    /// Client reads waiting for a slot; more are refused with RESOURCE_EXHAUSTED [default: 64].
    #[arg(long, env = "SWITCHBOARD_READ_QUEUE_MAX")]
    pub read_queue_max: Option<usize>,
    /// Client writes served at once; more wait in the write queue [default: 512].
    #[arg(long, env = "SWITCHBOARD_WRITES_IN_FLIGHT_MAX")]
    pub writes_in_flight_max: Option<usize>,
    /// Client writes waiting for a slot; more are refused with RESOURCE_EXHAUSTED
    /// [default: 1024].
    #[arg(long, env = "SWITCHBOARD_WRITE_QUEUE_MAX")]
    pub write_queue_max: Option<usize>,
    /// Longest wait of a queued read or write; past it the request is refused with
    /// RESOURCE_EXHAUSTED [default: 1000].
    #[arg(long, env = "SWITCHBOARD_ADMISSION_QUEUE_WAIT_MS_MAX")]
    pub admission_queue_wait_ms_max: Option<u64>,
    /// Watches (`WatchEvents`) this node serves at once; more are refused with
    /// RESOURCE_EXHAUSTED [default: 4096].
    #[arg(long, env = "SWITCHBOARD_WATCHERS_MAX")]
    pub watchers_max: Option<usize>,
    /// How far (events) the log may move past what a watch's consumer was sent while it reads
    /// nothing; then the watch ends with RESOURCE_EXHAUSTED and the position to resume from
    /// [default: 10000].
    #[arg(long, env = "SWITCHBOARD_WATCH_LAG_MAX")]
    pub watch_lag_max: Option<u64>,
    /// Batches the node holds for one watcher of one call that has not taken them yet; past
    /// that, the watcher reads them from storage instead [default: 256].
    #[arg(long, env = "SWITCHBOARD_WATCH_HANDOVER_MAX")]
    pub watch_handover_max: Option<usize>,
    /// How long this node serves watches without hearing from a leader; then they end with
    /// UNAVAILABLE and the position to resume from, so that clients resume on a node that
    /// follows the log [default: 3000, at least 3 election timeouts].
    #[arg(long, env = "SWITCHBOARD_WATCH_CONTACT_MS_MAX")]
    pub watch_contact_ms_max: Option<u64>,
    /// Public keys that verify clients' bearer tokens: a JWKS file (`switchboard token keygen`
    /// writes one), re-read on SIGHUP. Required unless --insecure.
    #[arg(long, env = "SWITCHBOARD_TOKEN_KEYS")]
    pub token_keys: Option<PathBuf>,
    /// PII policy of every tenant without an override: `mask` (typed placeholders such as
    /// `[EMAIL]`), `hash` (placeholders with a keyed hash, `[EMAIL:3f9a1c2e4b5d]`) or `keep`
    /// [default: mask]. Every node of a cluster must use the same PII settings.
    #[arg(long, env = "SWITCHBOARD_PII_POLICY")]
    pub pii_policy: Option<Policy>,
    /// File holding the cluster-wide secret key of `hash` placeholders (32 to 1024 bytes; a
    /// trailing newline is not part of it). Required when any policy is `hash`; every node
    /// must use the same key.
    #[arg(long, env = "SWITCHBOARD_PII_HASH_KEY_FILE")]
    pub pii_hash_key_file: Option<PathBuf>,
    /// Per-tenant PII policies, `{"tenant": "keep"}` (config file only).
    #[arg(skip)]
    pub pii_tenant_policies: Option<BTreeMap<String, Policy>>,
    /// This node's certificate chain (PEM), leaf first; needs --tls-key and --tls-ca.
    #[arg(long, env = "SWITCHBOARD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "SWITCHBOARD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA certificate (PEM): peers and client certificates must chain to it.
    #[arg(long, env = "SWITCHBOARD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Directory written by `switchboard certs init`: ca.pem, node-N.pem, node-N-key.pem
    /// (--tls-cert, --tls-key and --tls-ca win over it).
    #[arg(long, env = "SWITCHBOARD_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Serve plaintext and accept any peer, with no TLS at all: only for tests and local
    /// experiments. Logs a warning at start.
    #[arg(long, env = "SWITCHBOARD_INSECURE")]
    #[serde(default)]
    pub insecure: bool,
    /// Stop when the parent process goes away (used by `switchboard dev`).
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub exit_with_parent: bool,
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: u64,
    pub listen: SocketAddr,
    pub advertise: String,
    pub http_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub initial_cluster: BTreeMap<u64, String>,
    pub cluster_id: String,
    pub region: String,
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    pub snapshot_logs_since_last: u64,
    pub logs_kept_behind_snapshot: u64,
    pub write_timeout: Duration,
    pub read_wait_max: Duration,
    pub grpc_message_bytes_max: usize,
    pub cluster_message_bytes_max: usize,
    pub edge: EdgeConfig,
    pub admission: AdmissionConfig,
    pub watch: WatchConfig,
    /// The token key set (JWKS); `None` only with `insecure`.
    pub token_keys: Option<PathBuf>,
    pub pii: PiiConfig,
    /// TLS files, or `--insecure`.
    pub security: Security,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{0} is required")]
    Missing(&'static str),
    #[error(
        "--token-keys is required: the JWKS file of `switchboard token keygen`, or --insecure to serve without authentication"
    )]
    NoTokenKeys,
    #[error("--{option} {value:?} is invalid: {reason}")]
    Invalid {
        option: &'static str,
        value: String,
        reason: String,
    },
    #[error("failed to read config file {path}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {reason}")]
    FileFormat { path: PathBuf, reason: String },
    #[error(
        "no TLS material: give --tls-dir DIR (written by `switchboard certs init`) or \
         --tls-cert, --tls-key and --tls-ca; or --insecure to serve plaintext (tests only)"
    )]
    NoTls,
    #[error("--insecure and --{0} exclude each other")]
    InsecureWithTls(&'static str),
}

fn invalid(
    option: &'static str,
    value: impl std::fmt::Display,
    reason: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        option,
        value: value.to_string(),
        reason: reason.into(),
    }
}

pub const CONFIG_FILE_BYTES_MAX: u64 = 1 << 20;
/// Most tenants with a PII policy of their own.
pub const PII_TENANT_POLICIES_MAX: usize = 10_000;
/// Largest accepted connection or per-client in-flight bound.
pub const EDGE_COUNT_LIMIT: usize = 1_000_000;

// Bounds of a cluster member's record. They live with the node's configuration rather than in
// `domain::limits` because a member is Raft membership, which the domain never sees; the API
// checks them on `AddLearner` and `Initialize` (see `convert::member`) and `validate` checks this
// node's own --advertise and --region, which bootstrap records as a member too.
/// Most bytes of a member's gRPC address (`host:port`): a DNS name is at most 253 bytes.
pub const MEMBER_ADDR_BYTES_MAX: usize = 256;
/// Most bytes of a member's region label, e.g. `eu-west-1`.
pub const REGION_BYTES_MAX: usize = 64;

// Timing defaults, chosen with `chaos-tests failover` and the drills on a 2-core machine:
// openraft's follower lease equals the election timeout's upper bound, so a first candidate is
// refused and the second try wins: a failover takes about twice a sampled timeout (median
// 842 ms over 20 runs with these values; 1415 ms with 100 / 400..800). The heartbeat stays at
// 100 ms because openraft uses it as the AppendEntries timeout too.
/// Default Raft heartbeat interval (ms); also the timeout of one AppendEntries RPC.
pub const DEFAULT_HEARTBEAT_MS: u64 = 100;
/// Default lower bound of the election timeout (ms).
pub const DEFAULT_ELECTION_TIMEOUT_MIN_MS: u64 = 250;
/// Default upper bound of the election timeout (ms); also the follower's leader lease.
pub const DEFAULT_ELECTION_TIMEOUT_MAX_MS: u64 = 500;
/// Default snapshot interval in log entries: etcd's `--snapshot-count` default too. 10,000
/// cost about 7% of the leader's CPU under saturation; 100,000 gave 8% more throughput.
pub const DEFAULT_SNAPSHOT_LOGS_SINCE_LAST: u64 = 100_000;

impl ServeArgs {
    fn load_file(path: &Path) -> Result<ServeArgs, ConfigError> {
        let file_error = |source| ConfigError::File {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(file_error)?.len();
        if len > CONFIG_FILE_BYTES_MAX {
            return Err(ConfigError::FileFormat {
                path: path.to_path_buf(),
                reason: format!("{len} bytes, over the bound of {CONFIG_FILE_BYTES_MAX}"),
            });
        }
        let bytes = std::fs::read(path).map_err(file_error)?;
        Self::parse_file(path, &bytes)
    }

    /// Parses the bytes of a config file read from `path` (named in errors).
    pub fn parse_file(path: &Path, bytes: &[u8]) -> Result<ServeArgs, ConfigError> {
        serde_json::from_slice(bytes).map_err(|e| ConfigError::FileFormat {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Merges flags/env over the optional file over defaults, then validates.
    pub fn resolve(self) -> Result<NodeConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => Self::load_file(path)?,
            None => ServeArgs::default(),
        };
        self.resolve_with_file(file)
    }

    /// Merges these flags/env over `file` (a parsed config file) over defaults, then
    /// validates.
    pub fn resolve_with_file(self, file: ServeArgs) -> Result<NodeConfig, ConfigError> {
        macro_rules! pick {
            ($field:ident) => {
                self.$field.clone().or(file.$field.clone())
            };
        }
        let node_id = match (pick!(node_id), pick!(pod_name)) {
            (Some(id), _) => id,
            (None, Some(pod)) => node_id_from_pod_name(&pod)?,
            (None, None) => return Err(ConfigError::Missing("node-id")),
        };
        let listen = pick!(listen).ok_or(ConfigError::Missing("listen"))?;
        let data_dir = pick!(data_dir).ok_or(ConfigError::Missing("data-dir"))?;
        let http_listen = match pick!(http_listen) {
            Some(addr) => addr,
            None => {
                let port = listen.port().checked_add(1000).ok_or_else(|| {
                    invalid(
                        "listen",
                        listen,
                        "port + 1000 (the default HTTP port) overflows; set --http-listen",
                    )
                })?;
                SocketAddr::new(listen.ip(), port)
            }
        };
        let initial_cluster = match pick!(initial_cluster) {
            Some(text) => parse_initial_cluster(&text)?,
            None => BTreeMap::new(),
        };
        let advertise = pick!(advertise)
            .or_else(|| initial_cluster.get(&node_id).cloned())
            .unwrap_or_else(|| listen.to_string());
        let security = {
            let insecure = self.insecure || file.insecure;
            let dir = pick!(tls_dir);
            let given = [
                ("tls-cert", pick!(tls_cert)),
                ("tls-key", pick!(tls_key)),
                ("tls-ca", pick!(tls_ca)),
            ];
            if insecure {
                if dir.is_some() {
                    return Err(ConfigError::InsecureWithTls("tls-dir"));
                }
                if let Some((option, _)) = given.iter().find(|(_, path)| path.is_some()) {
                    return Err(ConfigError::InsecureWithTls(option));
                }
                Security::Insecure
            } else {
                let from_dir = dir.as_ref().map(|dir| TlsFiles::in_dir(dir, node_id));
                if from_dir.is_none() && given.iter().all(|(_, path)| path.is_none()) {
                    return Err(ConfigError::NoTls);
                }
                let [(_, cert), (_, key), (_, ca)] = given;
                let pick_file = |option, given: Option<PathBuf>, from_dir: Option<PathBuf>| {
                    given.or(from_dir).ok_or(ConfigError::Missing(option))
                };
                Security::Tls(TlsFiles {
                    cert: pick_file("tls-cert", cert, from_dir.as_ref().map(|f| f.cert.clone()))?,
                    key: pick_file("tls-key", key, from_dir.as_ref().map(|f| f.key.clone()))?,
                    ca: pick_file("tls-ca", ca, from_dir.as_ref().map(|f| f.ca.clone()))?,
                })
            }
        };
        let config = NodeConfig {
            node_id,
            listen,
            advertise,
            http_listen,
            data_dir,
            initial_cluster,
            cluster_id: pick!(cluster_id).unwrap_or_else(|| "switchboard".to_owned()),
            region: pick!(region).unwrap_or_default(),
            heartbeat: Duration::from_millis(pick!(heartbeat_ms).unwrap_or(DEFAULT_HEARTBEAT_MS)),
            election_timeout_min: Duration::from_millis(
                pick!(election_timeout_min_ms).unwrap_or(DEFAULT_ELECTION_TIMEOUT_MIN_MS),
            ),
            election_timeout_max: Duration::from_millis(
                pick!(election_timeout_max_ms).unwrap_or(DEFAULT_ELECTION_TIMEOUT_MAX_MS),
            ),
            snapshot_logs_since_last: pick!(snapshot_logs_since_last)
                .unwrap_or(DEFAULT_SNAPSHOT_LOGS_SINCE_LAST),
            logs_kept_behind_snapshot: pick!(logs_kept_behind_snapshot).unwrap_or(1_000),
            write_timeout: Duration::from_millis(pick!(write_timeout_ms).unwrap_or(5_000)),
            read_wait_max: Duration::from_millis(pick!(read_wait_ms_max).unwrap_or(5_000)),
            grpc_message_bytes_max: pick!(grpc_message_bytes_max).unwrap_or(4 << 20),
            cluster_message_bytes_max: pick!(cluster_message_bytes_max)
                .unwrap_or(edge::CLUSTER_MESSAGE_BYTES_MAX),
            edge: EdgeConfig {
                connections_max: pick!(connections_max).unwrap_or(edge::CONNECTIONS_MAX),
                connections_per_client_max: pick!(connections_per_client_max)
                    .unwrap_or(edge::CONNECTIONS_PER_CLIENT_MAX),
                requests_in_flight_per_connection_max: pick!(grpc_concurrency_max)
                    .unwrap_or(edge::REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX),
                requests_in_flight_per_client_max: pick!(requests_in_flight_per_client_max)
                    .unwrap_or(edge::REQUESTS_IN_FLIGHT_PER_CLIENT_MAX),
                http2_streams_per_connection_max: pick!(http2_streams_per_connection_max)
                    .unwrap_or(edge::HTTP2_STREAMS_PER_CONNECTION_MAX),
                http2_keepalive_interval: Duration::from_millis(
                    pick!(http2_keepalive_interval_ms).unwrap_or(edge::HTTP2_KEEPALIVE_INTERVAL_MS),
                ),
                http2_keepalive_timeout: Duration::from_millis(
                    pick!(http2_keepalive_timeout_ms).unwrap_or(edge::HTTP2_KEEPALIVE_TIMEOUT_MS),
                ),
                handshake_timeout: Duration::from_millis(
                    pick!(handshake_timeout_ms).unwrap_or(edge::HANDSHAKE_TIMEOUT_MS),
                ),
                request_time_max: Duration::from_millis(
                    pick!(request_time_ms_max).unwrap_or(edge::REQUEST_TIME_MS_MAX),
                ),
            },
            admission: AdmissionConfig {
                reads: ClassLimits {
                    in_flight_max: pick!(reads_in_flight_max)
                        .unwrap_or(admission::READS_IN_FLIGHT_MAX),
                    queue_max: pick!(read_queue_max).unwrap_or(admission::READ_QUEUE_MAX),
                },
                writes: ClassLimits {
                    in_flight_max: pick!(writes_in_flight_max)
                        .unwrap_or(admission::WRITES_IN_FLIGHT_MAX),
                    queue_max: pick!(write_queue_max).unwrap_or(admission::WRITE_QUEUE_MAX),
                },
                queue_wait_max: Duration::from_millis(
                    pick!(admission_queue_wait_ms_max)
                        .unwrap_or(admission::ADMISSION_QUEUE_WAIT_MS_MAX),
                ),
            },
            watch: WatchConfig {
                watchers_max: pick!(watchers_max).unwrap_or(watch::WATCHERS_MAX),
                lag_max: pick!(watch_lag_max).unwrap_or(watch::WATCH_LAG_MAX),
                handover_max: pick!(watch_handover_max).unwrap_or(watch::WATCH_HANDOVER_MAX),
                contact_max: Duration::from_millis(
                    pick!(watch_contact_ms_max).unwrap_or(
                        watch::WATCH_CONTACT_MAX_MS.max(
                            3 * pick!(election_timeout_max_ms)
                                .unwrap_or(DEFAULT_ELECTION_TIMEOUT_MAX_MS),
                        ),
                    ),
                ),
            },
            token_keys: pick!(token_keys),
            pii: Self::pii(
                pick!(pii_policy),
                pick!(pii_tenant_policies),
                pick!(pii_hash_key_file).as_deref(),
            )?,
            security,
        };
        config.validate()?;
        Ok(config)
    }

    /// The PII settings: policies, and the hash key read from its file.
    fn pii(
        policy: Option<Policy>,
        tenant_policies: Option<BTreeMap<String, Policy>>,
        hash_key_file: Option<&Path>,
    ) -> Result<PiiConfig, ConfigError> {
        let tenant_policies = tenant_policies.unwrap_or_default();
        if tenant_policies.len() > PII_TENANT_POLICIES_MAX {
            return Err(invalid(
                "pii-tenant-policies",
                format!("{} tenants", tenant_policies.len()),
                format!("at most {PII_TENANT_POLICIES_MAX} tenants may have their own policy"),
            ));
        }
        if let Some(tenant) = tenant_policies
            .keys()
            .find(|t| t.is_empty() || t.len() > TENANT_ID_BYTES_MAX)
        {
            return Err(invalid(
                "pii-tenant-policies",
                tenant,
                format!("a tenant id is 1 to {TENANT_ID_BYTES_MAX} bytes"),
            ));
        }
        let hash_key = hash_key_file.map(read_hash_key).transpose()?;
        PiiConfig::new(policy.unwrap_or_default(), tenant_policies, hash_key)
            .map_err(|e| invalid("pii-policy", policy.unwrap_or_default(), e.to_string()))
    }
}

/// Reads the hash key: the file's bytes without a trailing newline, within the key's bounds.
fn read_hash_key(path: &Path) -> Result<HashKey, ConfigError> {
    let file_error = |source| ConfigError::File {
        path: path.to_path_buf(),
        source,
    };
    // Bounded before reading: the bound plus a line ending.
    let len = std::fs::metadata(path).map_err(file_error)?.len();
    let bytes_max = HASH_KEY_BYTES_MAX as u64 + 2;
    if len > bytes_max {
        return Err(invalid(
            "pii-hash-key-file",
            path.display(),
            format!("{len} bytes, over the bound of {HASH_KEY_BYTES_MAX} bytes of key"),
        ));
    }
    let mut bytes = std::fs::read(path).map_err(file_error)?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    // The error names the file and the size, never the key.
    HashKey::new(bytes).map_err(|e| invalid("pii-hash-key-file", path.display(), e.to_string()))
}

/// The node id of a StatefulSet pod: its trailing ordinal plus one (`switchboard-0` is node 1).
pub fn node_id_from_pod_name(pod: &str) -> Result<u64, ConfigError> {
    pod.rsplit_once('-')
        .and_then(|(_, ordinal)| ordinal.parse::<u64>().ok())
        .and_then(|ordinal| ordinal.checked_add(1))
        .ok_or_else(|| invalid("pod-name", pod, "expected NAME-ORDINAL, e.g. switchboard-0"))
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_initial_cluster(text: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut members = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| invalid("initial-cluster", part, "expected ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| invalid("initial-cluster", part, "node id is not a positive integer"))?;
        let addr = addr.trim();
        if addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(invalid("initial-cluster", part, "address is not HOST:PORT"));
        }
        if members.insert(id, addr.to_owned()).is_some() {
            return Err(invalid(
                "initial-cluster",
                text,
                format!("node {id} is listed twice"),
            ));
        }
    }
    Ok(members)
}

impl NodeConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.token_keys.is_none() && !matches!(self.security, Security::Insecure) {
            return Err(ConfigError::NoTokenKeys);
        }
        if self.node_id == 0 {
            return Err(invalid(
                "node-id",
                self.node_id,
                "must be a positive integer",
            ));
        }
        if !self.initial_cluster.is_empty() && !self.initial_cluster.contains_key(&self.node_id) {
            return Err(invalid(
                "initial-cluster",
                format!("{:?}", self.initial_cluster),
                format!("does not list this node ({})", self.node_id),
            ));
        }
        if self.cluster_id.is_empty() || self.cluster_id.len() > 128 {
            return Err(invalid(
                "cluster-id",
                &self.cluster_id,
                "must be 1 to 128 bytes",
            ));
        }
        if self.advertise.is_empty() || self.advertise.len() > MEMBER_ADDR_BYTES_MAX {
            return Err(invalid(
                "advertise",
                &self.advertise,
                format!("must be 1 to {MEMBER_ADDR_BYTES_MAX} bytes"),
            ));
        }
        if self.region.len() > REGION_BYTES_MAX {
            return Err(invalid(
                "region",
                &self.region,
                format!("is over the bound of {REGION_BYTES_MAX} bytes"),
            ));
        }
        if self.heartbeat.is_zero() {
            return Err(invalid("heartbeat-ms", 0, "must be positive"));
        }
        if self.election_timeout_min <= self.heartbeat * 2 {
            return Err(invalid(
                "election-timeout-min-ms",
                self.election_timeout_min.as_millis(),
                format!(
                    "must exceed twice the heartbeat ({} ms)",
                    self.heartbeat.as_millis()
                ),
            ));
        }
        if self.election_timeout_max <= self.election_timeout_min {
            return Err(invalid(
                "election-timeout-max-ms",
                self.election_timeout_max.as_millis(),
                "must exceed --election-timeout-min-ms",
            ));
        }
        if self.snapshot_logs_since_last == 0 {
            return Err(invalid("snapshot-logs-since-last", 0, "must be positive"));
        }
        if self.write_timeout.is_zero() || self.read_wait_max.is_zero() {
            return Err(invalid("write-timeout-ms", 0, "timeouts must be positive"));
        }
        if !(64 << 10..=256 << 20).contains(&self.grpc_message_bytes_max) {
            return Err(invalid(
                "grpc-message-bytes-max",
                self.grpc_message_bytes_max,
                "must be from 64 KiB to 256 MiB",
            ));
        }
        if !(4 << 10..=256 << 20).contains(&self.cluster_message_bytes_max) {
            return Err(invalid(
                "cluster-message-bytes-max",
                self.cluster_message_bytes_max,
                "must be from 4 KiB to 256 MiB",
            ));
        }
        self.validate_edge()?;
        self.validate_watch()?;
        self.validate_admission()
    }

    fn validate_watch(&self) -> Result<(), ConfigError> {
        let watch = &self.watch;
        if !(1..=EDGE_COUNT_LIMIT).contains(&watch.watchers_max) {
            return Err(invalid(
                "watchers-max",
                watch.watchers_max,
                format!("must be from 1 to {EDGE_COUNT_LIMIT}"),
            ));
        }
        if watch.lag_max == 0 {
            return Err(invalid("watch-lag-max", 0, "must be positive"));
        }
        if !(1..=watch::WATCH_HANDOVER_LIMIT).contains(&watch.handover_max) {
            return Err(invalid(
                "watch-handover-max",
                watch.handover_max,
                format!("must be from 1 to {}", watch::WATCH_HANDOVER_LIMIT),
            ));
        }
        // A follower hears from the leader every heartbeat; an election takes up to the
        // election timeout. Less than that would end watches of a healthy node.
        if watch.contact_max < self.election_timeout_max {
            return Err(invalid(
                "watch-contact-ms-max",
                watch.contact_max.as_millis(),
                format!(
                    "must be at least --election-timeout-max-ms ({} ms)",
                    self.election_timeout_max.as_millis()
                ),
            ));
        }
        Ok(())
    }

    fn validate_edge(&self) -> Result<(), ConfigError> {
        let edge = &self.edge;
        for (option, value, limit) in [
            ("connections-max", edge.connections_max, EDGE_COUNT_LIMIT),
            (
                "connections-per-client-max",
                edge.connections_per_client_max,
                edge.connections_max,
            ),
            (
                "grpc-concurrency-max",
                edge.requests_in_flight_per_connection_max,
                65_536,
            ),
            (
                "requests-in-flight-per-client-max",
                edge.requests_in_flight_per_client_max,
                EDGE_COUNT_LIMIT,
            ),
            (
                "http2-streams-per-connection-max",
                usize::try_from(edge.http2_streams_per_connection_max).unwrap_or(usize::MAX),
                65_536,
            ),
        ] {
            if !(1..=limit).contains(&value) {
                return Err(invalid(option, value, format!("must be from 1 to {limit}")));
            }
        }
        for (option, value) in [
            ("http2-keepalive-interval-ms", edge.http2_keepalive_interval),
            ("http2-keepalive-timeout-ms", edge.http2_keepalive_timeout),
            ("handshake-timeout-ms", edge.handshake_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(option, 0, "must be positive"));
            }
        }
        // The edge's bound is the last resort: the write timeout and the read wait answer
        // first, with their own errors.
        let floor = self.write_timeout.max(self.read_wait_max);
        if edge.request_time_max < floor {
            return Err(invalid(
                "request-time-ms-max",
                edge.request_time_max.as_millis(),
                format!(
                    "must be at least --write-timeout-ms and --read-wait-ms-max ({} ms)",
                    floor.as_millis()
                ),
            ));
        }
        Ok(())
    }

    fn validate_admission(&self) -> Result<(), ConfigError> {
        let AdmissionConfig {
            reads,
            writes,
            queue_wait_max,
        } = self.admission;
        let in_flight_limit = admission::IN_FLIGHT_LIMIT;
        let queue_limit = admission::QUEUE_LIMIT;
        for (option, value) in [
            ("reads-in-flight-max", reads.in_flight_max),
            ("writes-in-flight-max", writes.in_flight_max),
        ] {
            if !(1..=in_flight_limit).contains(&value) {
                return Err(invalid(
                    option,
                    value,
                    format!("must be from 1 to {in_flight_limit}"),
                ));
            }
        }
        for (option, value) in [
            ("read-queue-max", reads.queue_max),
            ("write-queue-max", writes.queue_max),
        ] {
            if value > queue_limit {
                return Err(invalid(
                    option,
                    value,
                    format!("must be from 0 to {queue_limit}"),
                ));
            }
        }
        if queue_wait_max.is_zero() {
            return Err(invalid(
                "admission-queue-wait-ms-max",
                0,
                "must be positive",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs {
            node_id: Some(1),
            listen: Some("127.0.0.1:7101".parse().expect("addr")),
            data_dir: Some("/tmp/x".into()),
            token_keys: Some("/tmp/x/token-keys.json".into()),
            insecure: true,
            ..ServeArgs::default()
        }
    }

    #[test]
    fn the_watch_hand_over_bound_defaults_and_is_refused_out_of_range_by_name() {
        let config = args().resolve().expect("defaults");
        assert_eq!(config.watch.handover_max, watch::WATCH_HANDOVER_MAX);
        for bad in [0, watch::WATCH_HANDOVER_LIMIT + 1] {
            let err = ServeArgs {
                watch_handover_max: Some(bad),
                ..args()
            }
            .resolve()
            .expect_err("out of range");
            assert!(err.to_string().contains("watch-handover-max"), "{err}");
        }
        let config = ServeArgs {
            watch_handover_max: Some(4),
            ..args()
        }
        .resolve()
        .expect("in range");
        assert_eq!(config.watch.handover_max, 4);
    }

    #[test]
    fn serving_without_token_keys_needs_insecure() {
        let err = ServeArgs {
            token_keys: None,
            insecure: false,
            tls_dir: Some("/tmp/x/certs".into()),
            ..args()
        }
        .resolve()
        .expect_err("no token keys");
        assert!(err.to_string().contains("--token-keys"), "{err}");
        assert!(err.to_string().contains("--insecure"), "{err}");
        let config = ServeArgs {
            token_keys: None,
            insecure: true,
            ..args()
        }
        .resolve()
        .expect("insecure");
        assert!(matches!(config.security, Security::Insecure));
    }

    #[test]
    fn serve_refuses_to_start_without_tls_or_insecure_and_names_the_flags() {
        let err = ServeArgs {
            insecure: false,
            ..args()
        }
        .resolve()
        .expect_err("no tls");
        let text = err.to_string();
        for flag in [
            "--tls-dir",
            "--tls-cert",
            "--tls-key",
            "--tls-ca",
            "--insecure",
        ] {
            assert!(text.contains(flag), "{text}");
        }
        let err = ServeArgs {
            tls_dir: Some("/certs".into()),
            ..args()
        }
        .resolve()
        .expect_err("both");
        assert!(err.to_string().contains("--tls-dir"), "{err}");
    }

    #[test]
    fn a_tls_dir_names_this_nodes_files_and_single_flags_win() {
        let config = ServeArgs {
            insecure: false,
            node_id: Some(3),
            tls_dir: Some("/certs".into()),
            tls_ca: Some("/other/ca.pem".into()),
            ..args()
        }
        .resolve()
        .expect("valid");
        let Security::Tls(files) = config.security else {
            panic!("tls expected, got {:?}", config.security);
        };
        assert_eq!(files.cert, PathBuf::from("/certs/node-3.pem"));
        assert_eq!(files.key, PathBuf::from("/certs/node-3-key.pem"));
        assert_eq!(files.ca, PathBuf::from("/other/ca.pem"));
        let err = ServeArgs {
            insecure: false,
            tls_cert: Some("/c.pem".into()),
            ..args()
        }
        .resolve()
        .expect_err("no key");
        assert!(err.to_string().contains("--tls-key"), "{err}");
    }

    #[test]
    fn defaults_fill_what_flags_leave_out() {
        let config = args().resolve().expect("valid");
        assert_eq!(config.http_listen.port(), 8101);
        assert_eq!(config.advertise, "127.0.0.1:7101");
    }

    #[test]
    fn errors_name_the_offending_option() {
        let err = ServeArgs {
            initial_cluster: Some("1=a:1,1=b:2".into()),
            ..args()
        }
        .resolve()
        .expect_err("duplicate");
        assert!(err.to_string().contains("initial-cluster"), "{err}");
        let err = ServeArgs {
            heartbeat_ms: Some(100),
            election_timeout_min_ms: Some(150),
            ..args()
        }
        .resolve()
        .expect_err("too short");
        assert!(err.to_string().contains("election-timeout-min-ms"), "{err}");
        let err = ServeArgs {
            initial_cluster: Some("2=a:1".into()),
            ..args()
        }
        .resolve()
        .expect_err("not a member");
        assert!(err.to_string().contains("does not list this node"), "{err}");
    }

    #[test]
    fn admission_bounds_default_and_are_validated() {
        let config = args().resolve().expect("valid");
        assert_eq!(config.admission, AdmissionConfig::default());
        let config = ServeArgs {
            reads_in_flight_max: Some(4),
            read_queue_max: Some(0),
            ..args()
        }
        .resolve()
        .expect("valid");
        assert_eq!(config.admission.reads.in_flight_max, 4);
        assert_eq!(config.admission.reads.queue_max, 0);
        let err = ServeArgs {
            writes_in_flight_max: Some(0),
            ..args()
        }
        .resolve()
        .expect_err("no write slot");
        assert!(err.to_string().contains("writes-in-flight-max"), "{err}");
        let err = ServeArgs {
            read_queue_max: Some(admission::QUEUE_LIMIT + 1),
            ..args()
        }
        .resolve()
        .expect_err("queue over the limit");
        assert!(err.to_string().contains("read-queue-max"), "{err}");
    }

    #[test]
    fn edge_limits_default_and_are_validated() {
        let config = args().resolve().expect("valid");
        assert_eq!(config.edge, EdgeConfig::default());
        assert_eq!(
            config.cluster_message_bytes_max,
            edge::CLUSTER_MESSAGE_BYTES_MAX
        );
        let config = ServeArgs {
            grpc_concurrency_max: Some(8),
            connections_per_client_max: Some(2),
            handshake_timeout_ms: Some(250),
            ..args()
        }
        .resolve()
        .expect("valid");
        assert_eq!(config.edge.requests_in_flight_per_connection_max, 8);
        assert_eq!(config.edge.connections_per_client_max, 2);
        assert_eq!(config.edge.handshake_timeout, Duration::from_millis(250));
        for (bad, option) in [
            (
                ServeArgs {
                    connections_max: Some(10),
                    connections_per_client_max: Some(11),
                    ..args()
                },
                "connections-per-client-max",
            ),
            (
                ServeArgs {
                    http2_streams_per_connection_max: Some(0),
                    ..args()
                },
                "http2-streams-per-connection-max",
            ),
            (
                ServeArgs {
                    handshake_timeout_ms: Some(0),
                    ..args()
                },
                "handshake-timeout-ms",
            ),
            (
                ServeArgs {
                    request_time_ms_max: Some(4_000),
                    ..args()
                },
                "request-time-ms-max",
            ),
            (
                ServeArgs {
                    cluster_message_bytes_max: Some(1 << 30),
                    ..args()
                },
                "cluster-message-bytes-max",
            ),
        ] {
            let err = bad.resolve().expect_err(option);
            assert!(err.to_string().contains(option), "{option}: {err}");
        }
    }

    #[test]
    fn a_statefulset_pod_name_gives_the_node_id() {
        let config = ServeArgs {
            node_id: None,
            pod_name: Some("switchboard-2".into()),
            ..args()
        }
        .resolve()
        .expect("valid");
        assert_eq!(config.node_id, 3);
        assert!(node_id_from_pod_name("switchboard").is_err());
    }

    #[test]
    fn pii_policy_defaults_to_mask_and_tenants_override_it_from_the_file() {
        let config = args().resolve().expect("valid");
        assert_eq!(config.pii.policy_for("acme"), Policy::Mask);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.json");
        std::fs::write(
            &path,
            br#"{"pii-policy": "keep", "pii-tenant-policies": {"acme": "mask"}}"#,
        )
        .expect("write");
        let config = ServeArgs {
            config: Some(path),
            ..args()
        }
        .resolve()
        .expect("valid");
        assert_eq!(config.pii.policy_for("acme"), Policy::Mask);
        assert_eq!(config.pii.policy_for("globex"), Policy::Keep);
    }

    #[test]
    fn a_hash_policy_needs_a_valid_key_file() {
        let err = ServeArgs {
            pii_policy: Some(Policy::Hash),
            ..args()
        }
        .resolve()
        .expect_err("no key");
        assert!(err.to_string().contains("pii-hash-key-file"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let short = dir.path().join("short.key");
        std::fs::write(&short, b"0123456789abcdef0123456789abcde\n").expect("write");
        let err = ServeArgs {
            pii_policy: Some(Policy::Hash),
            pii_hash_key_file: Some(short),
            ..args()
        }
        .resolve()
        .expect_err("31 bytes of key");
        assert!(err.to_string().contains("under the minimum of 32"), "{err}");
        assert!(!err.to_string().contains("0123456789"), "{err}");
        let key = dir.path().join("good.key");
        std::fs::write(&key, b"0123456789abcdef0123456789abcdef\n").expect("write");
        let config = ServeArgs {
            pii_policy: Some(Policy::Hash),
            pii_hash_key_file: Some(key),
            ..args()
        }
        .resolve()
        .expect("valid");
        assert_eq!(config.pii.policy_for("acme"), Policy::Hash);
        assert!(!format!("{config:?}").contains("0123456789"));
    }

    #[test]
    fn the_file_fills_in_and_flags_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.json");
        std::fs::write(&path, br#"{"region": "eu-west", "node-id": 7}"#).expect("write");
        let config = ServeArgs {
            config: Some(path),
            ..args()
        }
        .resolve()
        .expect("valid");
        assert_eq!(config.region, "eu-west");
        assert_eq!(config.node_id, 1);
    }
}
