//! The public gRPC API (`switchboard.v1`): calls, events and cluster administration.
//!
//! Writes: the leader stamps time and ids, proposes through Raft, waits for the entry to apply
//! and answers with the outcome and the log index; any other node answers with a redirect.
//! Reads: `LINEARIZABLE` waits for a read index confirmed by the leader (asked over
//! `ClusterService.ReadIndex` when this node is a follower), `LOCAL` reads at once, and
//! `min_index` waits (bounded) for the local node to apply that index. Handlers only validate,
//! propose or wait, and answer: a client that disconnects loses nothing but its answer.
//!
//! Every `read` and `write` RPC of the table is admitted first ([`crate::admission`]): bounded
//! in flight and in queue per class, the rest shed with `RESOURCE_EXHAUSTED`. An admitted read
//! builds its answer on the blocking pool ([`Api::serve_read`]), off the runtime threads that
//! drive openraft and the Raft transport.
//!
//! Each RPC has one inherent handler on [`Api`] named after it, returning `Result<_, ApiError>`;
//! the tonic service impls that call them are generated from the RPC table
//! ([`proto::switchboard_rpcs!`]), and errors become a `Status` in one place
//! ([`crate::status`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use domain::limits::{Field, Invalid, Problem};
use domain::{ActivityReceipt, Call, CallId, CallReceipt, Change, Receipt, Request, Stamp};
use openraft::async_runtime::WatchReceiver;
use openraft::{ChangeMembers, ReadPolicy};
use proto::v1;
use raft_store::{At, Member, ReadError, Reader, Response};
use tonic::transport::Channel;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};
use uuid::Uuid;

use crate::Raft;
use crate::admission::{Admission, AdmissionConfig, Class, Permit};
use crate::auth::{Access, Auth, AuthError, Caller};
use crate::convert::{self, WriteRequest};
use crate::observe::names;
use crate::pii::PiiConfig;
use crate::status::ApiError;

/// Most log entries a learner may be behind the leader and still be promoted.
pub const PROMOTE_LAG_ENTRIES_MAX: u64 = 10_000;

/// Longest wait of a `Promote` for its learners to catch up before it is refused.
pub const PROMOTE_CATCH_UP_WAIT: Duration = Duration::from_secs(5);

/// Turns returned by `GetContext` when the request asks for 0 (the server default).
const CONTEXT_TURNS_DEFAULT: u32 = 10;

/// What the API needs to know about its node.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub node_id: u64,
    pub cluster_id: String,
    pub write_timeout: Duration,
    pub read_wait_max: Duration,
    pub admission: AdmissionConfig,
    /// How callers are authenticated.
    pub auth: Auth,
    /// PII policies and hash key: every write is redacted before it is proposed.
    pub pii: PiiConfig,
    /// How to reach the leader for a read index (mutual TLS unless `--insecure`).
    pub dialer: crate::tls::Dialer,
    /// The watches this node serves (`WatchEvents`).
    pub watches: crate::watch::Watches,
}

/// The three public services share one `Api`; clones are cheap.
#[derive(Clone)]
pub struct Api {
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft,
    reader: Reader,
    config: ApiConfig,
    admission: Admission,
    /// One channel per leader address, for follower reads' `ReadIndex` calls.
    leader_channels: Mutex<HashMap<String, Channel>>,
    /// The call audit events go to, once known ([`crate::audit`]).
    audit_call: Mutex<Option<CallId>>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("config", &self.inner.config)
            .finish()
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// An accepted write, ready to be turned into a response.
pub(crate) struct Written {
    receipt: Receipt,
    change: Option<Box<Change>>,
    meta: v1::WriteMeta,
}

impl Written {
    /// The receipt of a call command (which the domain always answers with one).
    pub(crate) fn call(&self) -> &CallReceipt {
        self.receipt
            .call()
            .expect("a call command is answered with a call receipt")
    }

    /// The receipt of an activity command.
    pub(crate) fn activity(&self) -> ActivityReceipt {
        *self
            .receipt
            .activity()
            .expect("an activity command is answered with an activity receipt")
    }
}

/// The admission class of an RPC kind of the table: client reads and writes are admitted,
/// cluster administration is not (refusing it under load would not protect Raft, and a status
/// or read index must answer when the cluster is busiest).
macro_rules! admission_class {
    (read) => {
        Some(Class::Read)
    };
    (write) => {
        Some(Class::Write)
    };
    ($other:ident) => {
        None
    };
}

/// What the `access` column of an RPC table row needs ([`crate::auth`]).
macro_rules! access {
    (read) => {
        Access::Read
    };
    (write) => {
        Access::Write
    };
    (admin) => {
        Access::Admin
    };
}

/// One tonic service impl per service of the RPC table, each method authenticating the caller
/// and checking its role against the row's `access`, admitting the request by its
/// kind, handing it to the inherent handler of the same name, and its error to [`Api::reply`].
macro_rules! serve_rpcs {
    (package $_package:literal ($_module:ident); $(service $_service:ident (
        $server_module:ident :: $server_trait:ident, $($_client:tt)*
    ) {
        $($(#[$_doc:meta])* $_rpc:ident $method:ident ($req:ident) -> $resp:ident
            [$kind:ident, leader_from: $_leader_from:ident, access: $access:ident])*
    })*) => {
        $(
            #[tonic::async_trait]
            impl v1::$server_module::$server_trait for Api {
                $(
                    async fn $method(
                        &self,
                        request: GrpcRequest<v1::$req>,
                    ) -> Result<GrpcResponse<v1::$resp>, Status> {
                        // Who is calling comes first: an unauthenticated flood takes no slot.
                        let caller = self.authorize(
                            request.metadata(),
                            stringify!($method),
                            access!($access),
                        );
                        let result = match caller {
                            Ok(caller) => match self.admit(admission_class!($kind)).await {
                                // The slot is held until the handler's answer is ready.
                                // Inherent methods win over trait methods: this is the handler.
                                Ok(_slot) => {
                                    Api::$method(self, &caller, request.into_inner()).await
                                }
                                Err(error) => Err(error),
                            },
                            Err(error) => Err(error),
                        };
                        self.reply(result)
                    }
                )*
            }
        )*
    };
}

proto::switchboard_rpcs!(serve_rpcs);

/// The streaming service of [`proto::switchboard_watch_rpcs!`], by hand: its server
/// ([`crate::watch::WatchServiceServer`]) sends events encoded once for every watcher, so it is
/// not tonic's generated one. Authentication and the role check are those of the row
/// (`access: read`); a watch takes no admission slot (it would hold it for its whole life) but
/// one of `--watchers-max` places.
#[tonic::async_trait]
impl crate::watch::WatchHandler for Api {
    async fn watch_events(
        &self,
        request: GrpcRequest<v1::WatchEventsRequest>,
    ) -> Result<GrpcResponse<crate::watch::WatchStream>, Status> {
        let caller = self.authorize(request.metadata(), "watch_events", Access::Read);
        let result = match caller {
            Ok(caller) => Api::watch_events(self, &caller, request.into_inner()).await,
            Err(error) => Err(error),
        };
        self.reply(result)
    }
}

impl Api {
    pub fn new(raft: Raft, reader: Reader, config: ApiConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                raft,
                reader,
                admission: Admission::new(config.node_id, config.admission),
                config,
                leader_channels: Mutex::new(HashMap::new()),
                audit_call: Mutex::new(None),
            }),
        }
    }

    /// The caller of a request, if it may call `rpc` (which needs `access`).
    pub(crate) fn authorize(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        rpc: &'static str,
        access: Access,
    ) -> Result<Caller, ApiError> {
        let caller = self.inner.config.auth.authenticate(metadata)?;
        caller.allow(rpc, access)?;
        Ok(caller)
    }

    /// A slot of `class` ([`crate::admission`]); RPCs of no class need none.
    async fn admit(&self, class: Option<Class>) -> Result<Option<Permit>, ApiError> {
        match class {
            Some(class) => Ok(Some(self.inner.admission.admit(class).await?)),
            None => Ok(None),
        }
    }

    /// Waits (at most [`PROMOTE_CATCH_UP_WAIT`]) until learner `id` has acknowledged the log to
    /// within [`PROMOTE_LAG_ENTRIES_MAX`] of the leader's last entry. Why: a voter that is not
    /// there weakens every quorum from the moment it counts, and a membership change waiting
    /// for a dead voter never ends.
    async fn wait_caught_up(&self, id: u64) -> Result<(), ApiError> {
        let caught_up = |m: &openraft::RaftMetrics<raft_store::TypeConfig>| {
            let last = m.last_log_index.unwrap_or(0);
            m.replication
                .as_ref()
                .and_then(|r| r.get(&id))
                .and_then(|matched| matched.as_ref())
                .is_some_and(|matched| {
                    last.saturating_sub(matched.index) <= PROMOTE_LAG_ENTRIES_MAX
                })
        };
        let waited = self
            .raft()
            .wait(Some(PROMOTE_CATCH_UP_WAIT))
            .metrics(caught_up, "learner caught up")
            .await;
        match waited {
            Ok(_) => Ok(()),
            Err(_) => {
                let metrics = self.raft().metrics().borrow_watched().clone();
                let matched_index = metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id))
                    .and_then(|matched| matched.as_ref())
                    .map_or(0, |matched| matched.index);
                Err(ApiError::LearnerBehind {
                    node_id: id,
                    matched_index,
                    last_log_index: metrics.last_log_index.unwrap_or(0),
                })
            }
        }
    }

    /// A redirect to the leader unless this node leads.
    fn ensure_leader(&self) -> Result<(), ApiError> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(ApiError::NotLeader {
                leader_id: None,
                leader_addr: None,
            })
        }
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.raft().is_leader()
    }

    pub(crate) fn cached_audit_call(&self) -> Option<CallId> {
        *self
            .inner
            .audit_call
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn cache_audit_call(&self, call_id: CallId) {
        *self
            .inner
            .audit_call
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(call_id);
    }

    fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    fn reader(&self) -> &Reader {
        &self.inner.reader
    }

    fn node_id(&self) -> u64 {
        self.inner.config.node_id
    }

    /// The leader as this node knows it: id and address.
    pub fn leader(&self) -> (Option<u64>, Option<String>) {
        let metrics = self.raft().metrics().borrow_watched().clone();
        let addr = metrics.current_leader.and_then(|id| {
            metrics
                .membership_config
                .membership()
                .get_node(&id)
                .map(|m: &Member| m.addr.clone())
        });
        (metrics.current_leader, addr)
    }

    /// Fills in a redirect with what this node knows of the leader, where openraft's answer
    /// left it out. A node never redirects to its own address: it is stepping down, and the
    /// client should back off rather than come back.
    fn with_known_leader(&self, error: ApiError) -> ApiError {
        let (leader_id, leader_addr) = match error {
            ApiError::NotLeader {
                leader_id,
                leader_addr,
            } => (leader_id, leader_addr),
            other => return other,
        };
        let (known_id, known_addr) = self.leader();
        let leader_id = leader_id.or(known_id);
        let leader_addr = leader_addr
            .or(known_addr)
            .filter(|_| leader_id != Some(self.node_id()));
        ApiError::NotLeader {
            leader_id,
            leader_addr,
        }
    }

    /// A handler's result as tonic wants it.
    fn reply<T>(&self, result: Result<T, ApiError>) -> Result<GrpcResponse<T>, Status> {
        result
            .map(GrpcResponse::new)
            .map_err(|error| Status::from(self.with_known_leader(error)))
    }

    /// Stamps, proposes and waits for a write to apply. `write` acts for the caller's tenant
    /// ([`scoped`]).
    pub(crate) async fn write(&self, write: WriteRequest) -> Result<Written, ApiError> {
        // The leader mints what a create needs: the call id (UUIDv7) and, for a request that
        // carries no trace id, one in W3C trace-id form (a UUIDv7's 32 hex digits, never zero).
        let creates = matches!(write.command, domain::Command::CreateCall { .. });
        let stamp = Stamp {
            at_ms: now_ms(),
            minted_call_id: creates.then(Uuid::now_v7),
            minted_trace_id: creates.then(Uuid::now_v7),
        };
        // Bounds first, on what the client sent; then PII is redacted here, before proposing,
        // so no raw value reaches the log, a snapshot or a follower (DESIGN §8). A placeholder
        // can be longer than what it replaces: the redacted request is validated again.
        write.command.validate()?;
        let (command, redactions) = self
            .inner
            .config
            .pii
            .redact(&write.tenant_id, write.command)?;
        let request = Request {
            tenant_id: write.tenant_id,
            request_id: write.request_id,
            command,
            stamp,
            redactions,
        };
        // Fail fast at the edge; the state machine checks again, deterministically.
        request.validate()?;
        let timeout = self.inner.config.write_timeout;
        let redacted = (!request.redactions.is_empty())
            .then(|| (request.tenant_id.clone(), request.redactions.clone()));
        let proposed = self.raft().client_write(raft_store::Proposal(request));
        let response = tokio::time::timeout(timeout, proposed)
            .await
            .map_err(|_| ApiError::Timeout {
                what: "write",
                timeout_ms: millis(timeout),
            })??;
        if let Some((tenant_id, redactions)) = redacted {
            self.inner.config.pii.count(&tenant_id, &redactions);
        }
        let index = response.log_id.index;
        let Response {
            outcome,
            replayed,
            change,
        } = response.data;
        let outcome = outcome.ok_or(ApiError::NoOutcome { index })?;
        let receipt = outcome.result.map_err(ApiError::Rejected)?;
        Ok(Written {
            receipt,
            change,
            meta: v1::WriteMeta {
                index: outcome.index,
                replayed,
                leader_id: self.node_id(),
            },
        })
    }

    /// The call after a write: from the change, or (for a replay) as stored now.
    fn call_after(&self, tenant_id: &str, written: &Written) -> Result<Call, ApiError> {
        match &written.change {
            Some(change) => Ok(change.call.clone()),
            None => Ok(self
                .reader()
                .get_call(tenant_id, &written.call().call_id)?
                .value),
        }
    }

    /// A write whose response is the call after it.
    async fn call_write(
        &self,
        caller: &Caller,
        write: WriteRequest,
    ) -> Result<v1::CallResponse, ApiError> {
        let write = scoped(caller, write)?;
        let tenant_id = write.tenant_id.clone();
        let written = self.write(write).await?;
        let call = self.call_after(&tenant_id, &written)?;
        Ok(v1::CallResponse {
            call: Some(convert::wire_call(&call)),
            meta: Some(written.meta),
        })
    }

    /// Serves a read at the requested consistency: waits until local state may answer, reads,
    /// and returns the value with the metadata of where it was served.
    ///
    /// `read` runs on the blocking pool ([`Api::off_runtime`]), so it should also build the
    /// wire form of what it read.
    async fn serve_read<T: Send + 'static>(
        &self,
        caller: &Caller,
        options: Option<v1::ReadOptions>,
        read: impl FnOnce(&Reader) -> Result<At<T>, ReadError> + Send + 'static,
    ) -> Result<(T, Option<v1::ReadMeta>), ApiError> {
        self.read_gate(caller, options).await?;
        let at = self.off_runtime(read).await?;
        let meta = v1::ReadMeta {
            applied_index: at.applied_index,
            node_id: self.node_id(),
        };
        Ok((at.value, Some(meta)))
    }

    /// [`Api::serve_read`] of one call's data; a malformed call id is refused before any wait.
    async fn serve_call_read<T: Send + 'static>(
        &self,
        caller: &Caller,
        call_id: &str,
        options: Option<v1::ReadOptions>,
        read: impl FnOnce(&Reader, &CallId) -> Result<At<T>, ReadError> + Send + 'static,
    ) -> Result<(T, Option<v1::ReadMeta>), ApiError> {
        let call_id = convert::call_id(call_id)?;
        self.serve_read(caller, options, move |reader| read(reader, &call_id))
            .await
    }

    /// Runs a read of applied state (RocksDB scans, decoding, building the wire form) on the
    /// blocking pool. Why: a page is up to 1 MiB of stored data; built on the runtime's worker
    /// threads (two on a 2-core machine), a flood of them kept openraft's core and the Raft
    /// service's heartbeat handlers waiting for a thread, long enough to cost the leader its
    /// lease. Admission bounds how many run at once, so the pool stays small.
    pub(crate) async fn off_runtime<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Reader) -> Result<T, ReadError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let reader = self.reader().clone();
        let done = tokio::task::spawn_blocking(move || read(&reader)).await;
        done.map_err(|e| ApiError::ReadTask(e.to_string()))?
            .map_err(ApiError::from)
    }

    /// Waits until a read at the requested consistency may be served from local state.
    async fn read_gate(
        &self,
        caller: &Caller,
        read: Option<v1::ReadOptions>,
    ) -> Result<(), ApiError> {
        let read = read.unwrap_or_default();
        let started = Instant::now();
        let mut target = read.min_index;
        if read.consistency() == v1::Consistency::Linearizable {
            target = target.max(self.confirmed_read_index(caller).await?);
        }
        self.wait_applied(target, started).await
    }

    /// A read index confirmed by a quorum: locally on the leader, else asked of the leader on
    /// the caller's behalf (with the caller's own token: a follower holds no credential of its
    /// own to lend).
    pub async fn confirmed_read_index(&self, caller: &Caller) -> Result<u64, ApiError> {
        let wait = self.inner.config.read_wait_max;
        let confirmed = self.raft().ensure_linearizable(ReadPolicy::ReadIndex);
        let error = match tokio::time::timeout(wait, confirmed).await {
            Err(_) => {
                return Err(ApiError::Timeout {
                    what: "read index",
                    timeout_ms: millis(wait),
                });
            }
            Ok(Ok(read_log_id)) => return Ok(read_log_id.index()),
            Ok(Err(e)) => self.with_known_leader(e.into()),
        };
        let ApiError::NotLeader {
            leader_addr: Some(addr),
            leader_id,
        } = &error
        else {
            return Err(error);
        };
        let channel = self.leader_channel(addr, *leader_id)?;
        let mut client = v1::cluster_service_client::ClusterServiceClient::new(channel);
        let mut request = GrpcRequest::new(v1::ReadIndexRequest {});
        request.set_timeout(wait);
        if let Some(token) = caller.token() {
            let value = client::BearerToken::new(token)
                .header_value()
                .ok_or(ApiError::Auth(AuthError::NotBearer))?;
            request
                .metadata_mut()
                .insert(crate::auth::AUTHORIZATION_HEADER, value);
        }
        match client.read_index(request).await {
            Ok(response) => Ok(response.into_inner().read_index),
            Err(status) => {
                tracing::debug!(leader = %addr, error = %status, "failed to get a read index from the leader");
                Err(error)
            }
        }
    }

    fn leader_channel(&self, addr: &str, leader_id: Option<u64>) -> Result<Channel, ApiError> {
        // The map only caches lazily connecting channels: a panic while holding the lock leaves
        // nothing half-updated, so a poisoned lock is used as is.
        let mut channels = self
            .inner
            .leader_channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // The dialer checks the leader's certificate names the leader's id: one channel per both.
        let key = format!("{}@{addr}", leader_id.unwrap_or(0));
        if let Some(channel) = channels.get(&key) {
            return Ok(channel.clone());
        }
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|source| ApiError::LeaderAddr {
                addr: addr.to_owned(),
                source,
            })?
            .connect_timeout(self.inner.config.read_wait_max);
        let channel = self.inner.config.dialer.channel(endpoint, leader_id);
        channels.insert(key, channel.clone());
        Ok(channel)
    }

    async fn wait_applied(&self, index: u64, started: Instant) -> Result<(), ApiError> {
        let mut applied = self.reader().watch_applied();
        let wait = self
            .inner
            .config
            .read_wait_max
            .saturating_sub(started.elapsed());
        let reached = tokio::time::timeout(wait, applied.wait_for(|a| a.index() >= index)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ApiError::ShuttingDown),
            Err(_) => Err(ApiError::NotCaughtUp {
                node_id: self.node_id(),
                min_index: index,
                applied_index: self.reader().applied().index(),
                waited_ms: millis(started.elapsed()),
            }),
        }
    }

    fn members(&self) -> Vec<v1::Member> {
        let metrics = self.raft().metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let matched: BTreeMap<u64, u64> = metrics
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, log_id)| (*id, log_id.as_ref().map_or(0, |l| l.index)))
                    .collect()
            })
            .unwrap_or_default();
        membership
            .nodes()
            .map(|(id, member)| v1::Member {
                node_id: *id,
                addr: member.addr.clone(),
                region: member.region.clone(),
                voter: voters.contains(id),
                matched_index: matched.get(id).copied(),
            })
            .collect()
    }

    async fn membership_change(
        &self,
        change: ChangeMembers<u64, Member>,
    ) -> Result<v1::MembershipResponse, ApiError> {
        let response = self.raft().change_membership(change, false).await?;
        Ok(v1::MembershipResponse {
            members: self.members(),
            index: response.log_id.index,
        })
    }
}

/// `CallService` handlers.
impl Api {
    async fn create_call(
        &self,
        caller: &Caller,
        req: v1::CreateCallRequest,
    ) -> Result<v1::CallResponse, ApiError> {
        self.call_write(caller, convert::create_call(req)?).await
    }

    async fn start_call(
        &self,
        caller: &Caller,
        req: v1::StartCallRequest,
    ) -> Result<v1::CallResponse, ApiError> {
        self.call_write(caller, convert::start_call(req)?).await
    }

    async fn append_turn(
        &self,
        caller: &Caller,
        req: v1::AppendTurnRequest,
    ) -> Result<v1::AppendTurnResponse, ApiError> {
        let write = scoped(caller, convert::append_turn(req)?)?;
        let tenant_id = write.tenant_id.clone();
        let call_id = write.command.call_id();
        let written = self.write(write).await?;
        let call = self.call_after(&tenant_id, &written)?;
        let turn = match (&written.change, written.call().turn_index, call_id) {
            (Some(change), _, _) => change.turn.clone(),
            (None, Some(index), Some(call_id)) => self
                .reader()
                .list_turns(&tenant_id, &call_id, index, 1)?
                .value
                .items
                .into_iter()
                .next(),
            _ => None,
        };
        Ok(v1::AppendTurnResponse {
            turn: turn.as_ref().map(convert::wire_turn),
            call: Some(convert::wire_call(&call)),
            meta: Some(written.meta),
        })
    }

    async fn log_event(
        &self,
        caller: &Caller,
        req: v1::LogEventRequest,
    ) -> Result<v1::LogEventResponse, ApiError> {
        let written = self
            .write(scoped(caller, convert::log_event(req)?)?)
            .await?;
        let event = match &written.change {
            Some(change) => change.events.first().cloned(),
            None => self
                .reader()
                .list_events(None, written.call().first_position, 1)?
                .value
                .items
                .into_iter()
                .next(),
        };
        Ok(v1::LogEventResponse {
            event: event.as_ref().map(convert::wire_event),
            meta: Some(written.meta),
        })
    }

    async fn update_context(
        &self,
        caller: &Caller,
        req: v1::UpdateContextRequest,
    ) -> Result<v1::CallResponse, ApiError> {
        self.call_write(caller, convert::update_context(req)?).await
    }

    async fn request_handoff(
        &self,
        caller: &Caller,
        req: v1::RequestHandoffRequest,
    ) -> Result<v1::CallResponse, ApiError> {
        self.call_write(caller, convert::request_handoff(req)?)
            .await
    }

    async fn end_call(
        &self,
        caller: &Caller,
        req: v1::EndCallRequest,
    ) -> Result<v1::CallResponse, ApiError> {
        self.call_write(caller, convert::end_call(req)?).await
    }

    /// Erases a call's content. The disk side (snapshot, log purge, compaction on every node)
    /// follows the applied erase in [`crate::erasure`].
    async fn erase_call(
        &self,
        caller: &Caller,
        req: v1::EraseCallRequest,
    ) -> Result<v1::EraseCallResponse, ApiError> {
        // The actor an erase records is the subject of the caller's token (an agent of the
        // owning tenant, or an admin).
        let write = scoped(caller, convert::erase_call(req, caller.subject())?)?;
        let tenant_id = write.tenant_id.clone();
        let written = self.write(write).await?;
        let call = self.call_after(&tenant_id, &written)?;
        let erasure = call.erased.unwrap_or_default();
        Ok(v1::EraseCallResponse {
            call: Some(convert::wire_call(&call)),
            meta: Some(written.meta),
            turns_erased: erasure.turns,
            events_erased: erasure.events,
            entities_erased: erasure.entities,
        })
    }

    async fn get_call(
        &self,
        caller: &Caller,
        req: v1::GetCallRequest,
    ) -> Result<v1::GetCallResponse, ApiError> {
        let tenant_id = caller.tenant(&req.tenant_id)?;
        let (call, meta) = self
            .serve_call_read(caller, &req.call_id, req.read, move |reader, call_id| {
                let at = reader.get_call(&tenant_id, call_id)?;
                Ok(at_map(at, |call| convert::wire_call(&call)))
            })
            .await?;
        Ok(v1::GetCallResponse {
            call: Some(call),
            meta,
        })
    }

    async fn get_context(
        &self,
        caller: &Caller,
        req: v1::GetContextRequest,
    ) -> Result<v1::GetContextResponse, ApiError> {
        let last_turns = match req.last_turns {
            0 => CONTEXT_TURNS_DEFAULT,
            n => n,
        };
        let tenant_id = caller.tenant(&req.tenant_id)?;
        let (mut response, meta) = self
            .serve_call_read(caller, &req.call_id, req.read, move |reader, call_id| {
                let at = reader.get_context(&tenant_id, call_id, last_turns)?;
                Ok(at_map(at, |context| v1::GetContextResponse {
                    summary: context.summary,
                    entities: context.entities.into_iter().collect(),
                    recent_turns: context
                        .recent_turns
                        .iter()
                        .map(convert::wire_turn)
                        .collect(),
                    handoff: context.handoff.as_ref().map(convert::wire_handoff),
                    meta: None,
                }))
            })
            .await?;
        response.meta = meta;
        Ok(response)
    }

    async fn list_turns(
        &self,
        caller: &Caller,
        req: v1::ListTurnsRequest,
    ) -> Result<v1::ListTurnsResponse, ApiError> {
        let tenant_id = caller.tenant(&req.tenant_id)?;
        let (from_index, limit) = (req.from_index, req.limit);
        let (mut response, meta) = self
            .serve_call_read(caller, &req.call_id, req.read, move |reader, call_id| {
                let at = reader.list_turns(&tenant_id, call_id, from_index, limit)?;
                Ok(at_map(at, |page| v1::ListTurnsResponse {
                    turns: page.items.iter().map(convert::wire_turn).collect(),
                    next_index: page.next.unwrap_or(0),
                    meta: None,
                }))
            })
            .await?;
        response.meta = meta;
        Ok(response)
    }

    pub(crate) async fn list_calls(
        &self,
        caller: &Caller,
        req: v1::ListCallsRequest,
    ) -> Result<v1::ListCallsResponse, ApiError> {
        let state = convert::state_filter(req.state)?;
        let after = match req.page_token.as_str() {
            "" => None,
            token => Some(
                convert::call_id(token)
                    .map_err(|_| Invalid::new(Field::PageToken, Problem::Malformed))?,
            ),
        };
        let tenant_id = caller.tenant(&req.tenant_id)?;
        let page_size = req.page_size;
        let (mut response, meta) = self
            .serve_read(caller, req.read, move |reader| {
                let at = reader.list_calls(&tenant_id, state, after, page_size)?;
                Ok(at_map(at, |page| v1::ListCallsResponse {
                    calls: page.items.iter().map(convert::wire_call).collect(),
                    next_page_token: page.next.map(|id| id.to_string()).unwrap_or_default(),
                    meta: None,
                }))
            })
            .await?;
        response.meta = meta;
        Ok(response)
    }
}

/// `EventService` handlers.
impl Api {
    async fn list_call_events(
        &self,
        caller: &Caller,
        req: v1::ListCallEventsRequest,
    ) -> Result<v1::ListEventsResponse, ApiError> {
        let tenant_id = caller.tenant(&req.tenant_id)?;
        let (from_sequence, limit) = (req.from_sequence, req.limit);
        let (mut response, meta) = self
            .serve_call_read(caller, &req.call_id, req.read, move |reader, call_id| {
                let at = reader.list_call_events(&tenant_id, call_id, from_sequence, limit)?;
                Ok(at_map(at, wire_events))
            })
            .await?;
        response.meta = meta;
        Ok(response)
    }

    async fn list_events(
        &self,
        caller: &Caller,
        req: v1::ListEventsRequest,
    ) -> Result<v1::ListEventsResponse, ApiError> {
        let (from_position, limit) = (req.from_position, req.limit);
        // The cluster-wide log, narrowed to the caller's tenant unless it is an admin.
        let scope = caller.tenant_scope().map(str::to_owned);
        let (mut response, meta) = self
            .serve_read(caller, req.read, move |reader| {
                let at = reader.list_events(scope.as_deref(), from_position, limit)?;
                Ok(at_map(at, wire_events))
            })
            .await?;
        response.meta = meta;
        Ok(response)
    }
}

/// `EventService` queries over the secondary indexes.
impl Api {
    async fn query_events(
        &self,
        caller: &Caller,
        req: v1::QueryEventsRequest,
    ) -> Result<v1::QueryEventsResponse, ApiError> {
        // Indexes are per tenant: an admin names one.
        let tenant_id = caller.tenant(&req.tenant_id)?;
        let call_id = match req.call_id.as_str() {
            "" => None,
            text => Some(convert::call_id(text)?),
        };
        let after = match req.page_token.as_str() {
            "" => None,
            token => Some(
                token
                    .parse::<u64>()
                    .map_err(|_| Invalid::new(Field::PageToken, Problem::Malformed))?,
            ),
        };
        let query = raft_store::EventQuery {
            filter: domain::EventFilter {
                tenant_id: Some(tenant_id),
                call_id,
                type_prefixes: Vec::new(),
                metadata: req.metadata.into_iter().collect(),
                min_severity: convert::min_severity(req.min_severity)?,
                project_id: non_empty(req.project_id),
                task_id: non_empty(req.task_id),
                agent_type: non_empty(req.agent_type),
            },
            types: req.event_types,
            from_ms: (req.from_ms > 0).then_some(req.from_ms),
            to_ms: (req.to_ms > 0).then_some(req.to_ms),
            newest_first: req.newest_first,
            after,
            limit: req.limit,
            with_total: req.with_total,
        };
        let (mut response, meta) = self
            .serve_read(caller, req.read, move |reader| {
                // A call the caller cannot see is not found, as for every read of a call.
                if let (Some(call_id), Some(tenant_id)) =
                    (&query.filter.call_id, &query.filter.tenant_id)
                {
                    reader.get_call(tenant_id, call_id)?;
                }
                let at = reader.query_events(&query)?;
                Ok(at_map(at, |page| v1::QueryEventsResponse {
                    events: page.items.iter().map(convert::wire_event).collect(),
                    next_page_token: page.next.map(|p| p.to_string()).unwrap_or_default(),
                    total: page.total.map_or(0, |t| t.count),
                    total_exact: page.total.is_some_and(|t| t.exact),
                    meta: None,
                }))
            })
            .await?;
        response.meta = meta;
        Ok(response)
    }

    pub(crate) async fn event_stats(
        &self,
        caller: &Caller,
        req: v1::EventStatsRequest,
    ) -> Result<v1::EventStatsResponse, ApiError> {
        let tenant_id = caller.tenant(&req.tenant_id)?;
        let project = non_empty(req.project_id);
        let from_ms = (req.from_ms > 0).then_some(req.from_ms);
        let to_ms = (req.to_ms > 0).then_some(req.to_ms);
        let bucket_ms = req.bucket_ms;
        let (mut response, meta) = self
            .serve_read(caller, req.read, move |reader| {
                let at = reader.event_stats(
                    &tenant_id,
                    project.as_deref(),
                    from_ms,
                    to_ms,
                    bucket_ms,
                )?;
                Ok(at_map(at, |stats| v1::EventStatsResponse {
                    total: stats.total,
                    activity: stats.activity,
                    by_type: stats.by_type.into_iter().collect(),
                    by_severity: stats
                        .by_severity
                        .into_iter()
                        .map(|(s, n)| (s.as_str().to_owned(), n))
                        .collect(),
                    agents: stats
                        .agents
                        .iter()
                        .map(|a| v1::AgentStats {
                            agent_type: a.agent_type.clone(),
                            records: a.records,
                            completed: a.completed,
                            errors: a.errors,
                            success_rate: a.success_rate(),
                        })
                        .collect(),
                    buckets: stats
                        .buckets
                        .iter()
                        .map(|(start_ms, events)| v1::TimeBucket {
                            start_ms: *start_ms,
                            events: *events,
                        })
                        .collect(),
                    meta: None,
                }))
            })
            .await?;
        response.meta = meta;
        Ok(response)
    }
}

/// `ActivityService` handlers.
impl Api {
    async fn record_activity(
        &self,
        caller: &Caller,
        req: v1::RecordActivityRequest,
    ) -> Result<v1::RecordActivityResponse, ApiError> {
        let written = self
            .write(scoped(caller, convert::record_activity(req)?)?)
            .await?;
        let receipt = written.activity();
        if !written.meta.replayed {
            let records = receipt.last_position + 1 - receipt.first_position.max(1);
            metrics::counter!(names::ACTIVITY_RECORDED).increment(records);
            metrics::counter!(names::ACTIVITY_COMPACTED).increment(receipt.compacted);
        }
        Ok(v1::RecordActivityResponse {
            first_position: receipt.first_position,
            last_position: receipt.last_position,
            compacted: receipt.compacted,
            meta: Some(written.meta),
        })
    }

    async fn set_retention(
        &self,
        caller: &Caller,
        req: v1::SetRetentionRequest,
    ) -> Result<v1::RetentionResponse, ApiError> {
        let input = serde_json::json!({
            "tenant_id": truncated(&req.tenant_id),
            "max_age_ms": req.max_age_ms,
            "max_records": req.max_records,
        });
        let result = self
            .retention_write(caller, convert::set_retention(req)?)
            .await;
        self.audit(caller, "set_retention", input, &result).await;
        result
    }

    async fn compact_activity(
        &self,
        caller: &Caller,
        req: v1::CompactActivityRequest,
    ) -> Result<v1::RetentionResponse, ApiError> {
        let input = serde_json::json!({ "tenant_id": truncated(&req.tenant_id) });
        let result = self
            .retention_write(caller, convert::compact_activity(req)?)
            .await;
        self.audit(caller, "compact_activity", input, &result).await;
        result
    }

    async fn retention_write(
        &self,
        caller: &Caller,
        write: WriteRequest,
    ) -> Result<v1::RetentionResponse, ApiError> {
        let written = self.write(scoped(caller, write)?).await?;
        let receipt = written.activity();
        if !written.meta.replayed {
            metrics::counter!(names::ACTIVITY_COMPACTED).increment(receipt.compacted);
        }
        Ok(v1::RetentionResponse {
            compacted: receipt.compacted,
            more: receipt.more,
            meta: Some(written.meta),
        })
    }
}

/// `WatchService` handlers.
impl Api {
    pub(crate) async fn watch_events(
        &self,
        caller: &Caller,
        req: v1::WatchEventsRequest,
    ) -> Result<crate::watch::WatchStream, ApiError> {
        // The caller's tenant (an admin: every tenant) unless the body names one it may watch.
        let tenant_id = if req.tenant_id.is_empty() {
            caller.tenant_scope().map(str::to_owned)
        } else {
            Some(caller.tenant(&req.tenant_id)?)
        };
        let call_id = match req.call_id.as_str() {
            "" => None,
            text => Some(convert::call_id(text)?),
        };
        let filter = domain::EventFilter {
            tenant_id,
            call_id,
            type_prefixes: req.event_type_prefixes,
            metadata: req.metadata.into_iter().collect(),
            min_severity: convert::min_severity(req.min_severity)?,
            project_id: non_empty(req.project_id),
            task_id: non_empty(req.task_id),
            agent_type: non_empty(req.agent_type),
        };
        filter.check()?;
        // A call the caller cannot see is not found, as for every read of a call.
        if let (Some(call_id), Some(tenant_id)) = (call_id, filter.tenant_id.clone()) {
            self.off_runtime(move |reader| reader.get_call(&tenant_id, &call_id))
                .await?;
        }
        let progress = match req.progress_interval_ms {
            0 => crate::watch::PROGRESS_INTERVAL_DEFAULT,
            ms => Duration::from_millis(u64::from(ms)).clamp(
                crate::watch::PROGRESS_INTERVAL_MIN,
                crate::watch::PROGRESS_INTERVAL_MAX,
            ),
        };
        self.inner
            .config
            .watches
            .open(filter, req.from_position, progress)
    }
}

/// `ClusterService` handlers.
impl Api {
    async fn status(
        &self,
        _caller: &Caller,
        _req: v1::StatusRequest,
    ) -> Result<v1::StatusResponse, ApiError> {
        let metrics = self.raft().metrics().borrow_watched().clone();
        let (leader_id, leader_addr) = self.leader();
        Ok(v1::StatusResponse {
            cluster_id: self.inner.config.cluster_id.clone(),
            node_id: self.node_id(),
            leader_id,
            leader_addr: leader_addr.unwrap_or_default(),
            term: metrics.current_term,
            members: self.members(),
            committed_index: metrics.local_committed.map_or(0, |l| l.index),
            applied_index: metrics.last_applied.map_or(0, |l| l.index),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            snapshot_index: metrics.snapshot.map_or(0, |l| l.index),
            purged_index: metrics.purged.map_or(0, |l| l.index),
        })
    }

    async fn add_learner(
        &self,
        caller: &Caller,
        req: v1::AddLearnerRequest,
    ) -> Result<v1::MembershipResponse, ApiError> {
        let input = serde_json::json!({
            "node_id": req.node_id,
            "addr": truncated(&req.addr),
            "region": truncated(&req.region),
        });
        // Answered by the leader only, so that a refusal is recorded in the trail too.
        self.ensure_leader()?;
        let result = self.add_learner_unaudited(req).await;
        self.audit(caller, "add_learner", input, &result).await;
        result
    }

    async fn add_learner_unaudited(
        &self,
        req: v1::AddLearnerRequest,
    ) -> Result<v1::MembershipResponse, ApiError> {
        let (node_id, member) = convert::member(req.node_id, req.addr, req.region)?;
        let response = self.raft().add_learner(node_id, member, true).await?;
        Ok(v1::MembershipResponse {
            members: self.members(),
            index: response.log_id.index,
        })
    }

    async fn promote(
        &self,
        caller: &Caller,
        req: v1::PromoteRequest,
    ) -> Result<v1::MembershipResponse, ApiError> {
        let input = serde_json::json!({ "node_ids": node_ids_bounded(&req.node_ids) });
        // Answered by the leader only, so that a refusal is recorded in the trail too.
        self.ensure_leader()?;
        let result = self.promote_unaudited(req).await;
        self.audit(caller, "promote", input, &result).await;
        result
    }

    async fn promote_unaudited(
        &self,
        req: v1::PromoteRequest,
    ) -> Result<v1::MembershipResponse, ApiError> {
        let ids = convert::node_ids(req.node_ids)?;
        let members = self.members();
        for id in &ids {
            let Some(member) = members.iter().find(|m| m.node_id == *id) else {
                return Err(convert::MemberInvalid::NotAMember { node_id: *id }.into());
            };
            if !member.voter {
                self.wait_caught_up(*id).await?;
            }
        }
        self.membership_change(ChangeMembers::AddVoterIds(ids))
            .await
    }

    async fn remove(
        &self,
        caller: &Caller,
        req: v1::RemoveRequest,
    ) -> Result<v1::MembershipResponse, ApiError> {
        let input = serde_json::json!({ "node_ids": node_ids_bounded(&req.node_ids) });
        // Answered by the leader only, so that a refusal is recorded in the trail too.
        self.ensure_leader()?;
        let result = self.remove_unaudited(req).await;
        self.audit(caller, "remove", input, &result).await;
        result
    }

    async fn remove_unaudited(
        &self,
        req: v1::RemoveRequest,
    ) -> Result<v1::MembershipResponse, ApiError> {
        let ids = convert::node_ids(req.node_ids)?;
        let known: BTreeSet<u64> = self.members().iter().map(|m| m.node_id).collect();
        if let Some(unknown) = ids.iter().find(|id| !known.contains(id)) {
            return Err(convert::MemberInvalid::NotAMember { node_id: *unknown }.into());
        }
        let voters: BTreeSet<u64> = self.raft().voter_ids().collect();
        let (remove_voters, remove_learners): (BTreeSet<u64>, BTreeSet<u64>) =
            ids.into_iter().partition(|id| voters.contains(id));
        let mut response = None;
        if !remove_voters.is_empty() {
            response = Some(
                self.membership_change(ChangeMembers::RemoveVoters(remove_voters))
                    .await?,
            );
        }
        if !remove_learners.is_empty() {
            response = Some(
                self.membership_change(ChangeMembers::RemoveNodes(remove_learners))
                    .await?,
            );
        }
        // One of the two sets is non-empty: `node_ids` refused an empty list.
        response.ok_or(ApiError::Member(convert::MemberInvalid::NodeIdsEmpty))
    }

    async fn trigger_snapshot(
        &self,
        caller: &Caller,
        _req: v1::TriggerSnapshotRequest,
    ) -> Result<v1::TriggerSnapshotResponse, ApiError> {
        let result = self.trigger_snapshot_unaudited().await;
        let input = serde_json::json!({ "node_id": self.node_id() });
        self.audit(caller, "trigger_snapshot", input, &result).await;
        result
    }

    async fn trigger_snapshot_unaudited(&self) -> Result<v1::TriggerSnapshotResponse, ApiError> {
        let applied = self.reader().applied().index();
        self.raft().trigger().snapshot().await?;
        let wait = self.inner.config.write_timeout;
        let built = self
            .raft()
            .wait(Some(wait))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied),
                "snapshot built",
            )
            .await
            .map_err(|_| ApiError::Timeout {
                what: "snapshot",
                timeout_ms: millis(wait),
            })?;
        Ok(v1::TriggerSnapshotResponse {
            snapshot_index: built.snapshot.map_or(0, |s| s.index),
        })
    }

    async fn initialize(
        &self,
        caller: &Caller,
        req: v1::InitializeRequest,
    ) -> Result<v1::InitializeResponse, ApiError> {
        let input = serde_json::json!({
            "members": req.members.iter().take(16).map(|m| m.node_id).collect::<Vec<_>>(),
        });
        let result = self.initialize_unaudited(req).await;
        self.audit(caller, "initialize", input, &result).await;
        result
    }

    async fn initialize_unaudited(
        &self,
        req: v1::InitializeRequest,
    ) -> Result<v1::InitializeResponse, ApiError> {
        if req.members.is_empty() {
            return Err(convert::MemberInvalid::MembersEmpty.into());
        }
        let members = req
            .members
            .into_iter()
            .map(|m| convert::member(m.node_id, m.addr, m.region))
            .collect::<Result<BTreeMap<u64, Member>, _>>()?;
        self.raft().initialize(members).await?;
        Ok(v1::InitializeResponse {})
    }

    async fn read_index(
        &self,
        caller: &Caller,
        _req: v1::ReadIndexRequest,
    ) -> Result<v1::ReadIndexResponse, ApiError> {
        // Only the leader answers, so that a follower asking never asks another follower.
        if !self.raft().is_leader() {
            return Err(ApiError::NotLeader {
                leader_id: None,
                leader_addr: None,
            });
        }
        Ok(v1::ReadIndexResponse {
            read_index: self.confirmed_read_index(caller).await?,
            leader_id: self.node_id(),
        })
    }

    async fn digest(
        &self,
        _caller: &Caller,
        _req: v1::DigestRequest,
    ) -> Result<v1::DigestResponse, ApiError> {
        // The whole state machine: never on the runtime.
        let at = self
            .off_runtime(|reader| reader.digest().map_err(ReadError::from))
            .await?;
        Ok(v1::DigestResponse {
            node_id: self.node_id(),
            applied_index: at.applied_index,
            sha256: at.value.to_vec(),
        })
    }
}

/// `write` acting for the caller's tenant: the token's, never a different one from the body.
fn scoped(caller: &Caller, mut write: WriteRequest) -> Result<WriteRequest, ApiError> {
    write.tenant_id = caller.tenant(&write.tenant_id)?;
    if write.tenant_id == crate::audit::AUDIT_TENANT {
        return Err(AuthError::ReservedTenant {
            tenant: crate::audit::AUDIT_TENANT,
        }
        .into());
    }
    Ok(write)
}

/// At most 16 node ids of a request, for the audit trail (the request itself is validated
/// separately; this only bounds what is recorded of it).
fn node_ids_bounded(ids: &[u64]) -> Vec<u64> {
    ids.iter().take(16).copied().collect()
}

/// Text of a request as the audit trail records it: at most 256 bytes.
fn truncated(text: &str) -> String {
    let mut end = text.len().min(256);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// An optional text field of a request: empty means not given.
fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

/// A value read at an index, converted (to its wire form) at the same index.
fn at_map<T, U>(at: At<T>, convert: impl FnOnce(T) -> U) -> At<U> {
    At {
        value: convert(at.value),
        applied_index: at.applied_index,
    }
}

/// A page of events as the wire answers it (its `meta` filled in by the caller).
fn wire_events(page: raft_store::Page<domain::Event, u64>) -> v1::ListEventsResponse {
    v1::ListEventsResponse {
        events: page.items.iter().map(convert::wire_event).collect(),
        next: page.next.unwrap_or(0),
        meta: None,
    }
}
