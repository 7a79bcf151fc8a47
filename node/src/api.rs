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
use domain::{Call, CallId, Change, Receipt, Request, Stamp};
use openraft::async_runtime::WatchReceiver;
use openraft::{ChangeMembers, ReadPolicy};
use proto::v1;
use raft_store::{At, Member, ReadError, Reader, Response};
use tonic::transport::Channel;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};
use uuid::Uuid;

use crate::Raft;
use crate::admission::{Admission, AdmissionConfig, Class, Permit};
use crate::convert::{self, WriteRequest};
use crate::status::ApiError;

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
    /// How to reach the leader for a read index (mutual TLS unless `--insecure`).
    pub dialer: crate::tls::Dialer,
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
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("config", &self.inner.config)
            .finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// An accepted write, ready to be turned into a response.
struct Written {
    receipt: Receipt,
    change: Option<Box<Change>>,
    meta: v1::WriteMeta,
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

/// One tonic service impl per service of the RPC table, each method admitting the request by its
/// kind, handing it to the inherent handler of the same name, and its error to [`Api::reply`].
macro_rules! serve_rpcs {
    (package $_package:literal ($_module:ident); $(service $_service:ident (
        $server_module:ident :: $server_trait:ident, $($_client:tt)*
    ) {
        $($(#[$_doc:meta])* $_rpc:ident $method:ident ($req:ident) -> $resp:ident
            [$kind:ident, $($_how:tt)*])*
    })*) => {
        $(
            #[tonic::async_trait]
            impl v1::$server_module::$server_trait for Api {
                $(
                    async fn $method(
                        &self,
                        request: GrpcRequest<v1::$req>,
                    ) -> Result<GrpcResponse<v1::$resp>, Status> {
                        let result = match self.admit(admission_class!($kind)).await {
                            // The slot is held until the handler's answer is ready.
                            // Inherent methods win over trait methods: this is the handler.
                            Ok(_slot) => Api::$method(self, request.into_inner()).await,
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

impl Api {
    pub fn new(raft: Raft, reader: Reader, config: ApiConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                raft,
                reader,
                admission: Admission::new(config.node_id, config.admission),
                config,
                leader_channels: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A slot of `class` ([`crate::admission`]); RPCs of no class need none.
    async fn admit(&self, class: Option<Class>) -> Result<Option<Permit>, ApiError> {
        match class {
            Some(class) => Ok(Some(self.inner.admission.admit(class).await?)),
            None => Ok(None),
        }
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

    /// Stamps, proposes and waits for a write to apply.
    async fn write(&self, write: WriteRequest) -> Result<Written, ApiError> {
        // The leader mints what a create needs: the call id (UUIDv7) and, for a request that
        // carries no trace id, one in W3C trace-id form (a UUIDv7's 32 hex digits, never zero).
        let creates = matches!(write.command, domain::Command::CreateCall { .. });
        let stamp = Stamp {
            at_ms: now_ms(),
            minted_call_id: creates.then(Uuid::now_v7),
            minted_trace_id: creates.then(Uuid::now_v7),
        };
        let request = Request {
            tenant_id: write.tenant_id,
            request_id: write.request_id,
            command: write.command,
            stamp,
        };
        // Fail fast at the edge; the state machine checks again, deterministically.
        request.validate()?;
        let timeout = self.inner.config.write_timeout;
        let proposed = self.raft().client_write(raft_store::Proposal(request));
        let response = tokio::time::timeout(timeout, proposed)
            .await
            .map_err(|_| ApiError::Timeout {
                what: "write",
                timeout_ms: millis(timeout),
            })??;
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
                .get_call(tenant_id, &written.receipt.call_id)?
                .value),
        }
    }

    /// A write whose response is the call after it.
    async fn call_write(&self, write: WriteRequest) -> Result<v1::CallResponse, ApiError> {
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
        options: Option<v1::ReadOptions>,
        read: impl FnOnce(&Reader) -> Result<At<T>, ReadError> + Send + 'static,
    ) -> Result<(T, Option<v1::ReadMeta>), ApiError> {
        self.read_gate(options).await?;
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
        call_id: &str,
        options: Option<v1::ReadOptions>,
        read: impl FnOnce(&Reader, &CallId) -> Result<At<T>, ReadError> + Send + 'static,
    ) -> Result<(T, Option<v1::ReadMeta>), ApiError> {
        let call_id = convert::call_id(call_id)?;
        self.serve_read(options, move |reader| read(reader, &call_id))
            .await
    }

    /// Runs a read of applied state (RocksDB scans, decoding, building the wire form) on the
    /// blocking pool. Why: a page is up to 1 MiB of stored data; built on the runtime's worker
    /// threads (two on a 2-core machine), a flood of them kept openraft's core and the Raft
    /// service's heartbeat handlers waiting for a thread, long enough to cost the leader its
    /// lease. Admission bounds how many run at once, so the pool stays small.
    async fn off_runtime<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Reader) -> Result<T, ReadError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let reader = self.reader().clone();
        let done = tokio::task::spawn_blocking(move || read(&reader)).await;
        done.map_err(|e| ApiError::ReadTask(e.to_string()))?
            .map_err(ApiError::from)
    }

    /// Waits until a read at the requested consistency may be served from local state.
    async fn read_gate(&self, read: Option<v1::ReadOptions>) -> Result<(), ApiError> {
        let read = read.unwrap_or_default();
        let started = Instant::now();
        let mut target = read.min_index;
        if read.consistency() == v1::Consistency::Linearizable {
            target = target.max(self.confirmed_read_index().await?);
        }
        self.wait_applied(target, started).await
    }

    /// A read index confirmed by a quorum: locally on the leader, else asked of the leader.
    pub async fn confirmed_read_index(&self) -> Result<u64, ApiError> {
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
    async fn create_call(&self, req: v1::CreateCallRequest) -> Result<v1::CallResponse, ApiError> {
        self.call_write(convert::create_call(req)?).await
    }

    async fn start_call(&self, req: v1::StartCallRequest) -> Result<v1::CallResponse, ApiError> {
        self.call_write(convert::start_call(req)?).await
    }

    async fn append_turn(
        &self,
        req: v1::AppendTurnRequest,
    ) -> Result<v1::AppendTurnResponse, ApiError> {
        let write = convert::append_turn(req)?;
        let tenant_id = write.tenant_id.clone();
        let call_id = write.command.call_id();
        let written = self.write(write).await?;
        let call = self.call_after(&tenant_id, &written)?;
        let turn = match (&written.change, written.receipt.turn_index, call_id) {
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

    async fn log_event(&self, req: v1::LogEventRequest) -> Result<v1::LogEventResponse, ApiError> {
        let written = self.write(convert::log_event(req)?).await?;
        let event = match &written.change {
            Some(change) => change.events.first().cloned(),
            None => self
                .reader()
                .list_events(written.receipt.first_position, 1)?
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
        req: v1::UpdateContextRequest,
    ) -> Result<v1::CallResponse, ApiError> {
        self.call_write(convert::update_context(req)?).await
    }

    async fn request_handoff(
        &self,
        req: v1::RequestHandoffRequest,
    ) -> Result<v1::CallResponse, ApiError> {
        self.call_write(convert::request_handoff(req)?).await
    }

    async fn end_call(&self, req: v1::EndCallRequest) -> Result<v1::CallResponse, ApiError> {
        self.call_write(convert::end_call(req)?).await
    }

    async fn get_call(&self, req: v1::GetCallRequest) -> Result<v1::GetCallResponse, ApiError> {
        let tenant_id = req.tenant_id;
        let (call, meta) = self
            .serve_call_read(&req.call_id, req.read, move |reader, call_id| {
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
        req: v1::GetContextRequest,
    ) -> Result<v1::GetContextResponse, ApiError> {
        let last_turns = match req.last_turns {
            0 => CONTEXT_TURNS_DEFAULT,
            n => n,
        };
        let tenant_id = req.tenant_id;
        let (mut response, meta) = self
            .serve_call_read(&req.call_id, req.read, move |reader, call_id| {
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
        req: v1::ListTurnsRequest,
    ) -> Result<v1::ListTurnsResponse, ApiError> {
        let (tenant_id, from_index, limit) = (req.tenant_id, req.from_index, req.limit);
        let (mut response, meta) = self
            .serve_call_read(&req.call_id, req.read, move |reader, call_id| {
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

    async fn list_calls(
        &self,
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
        let (tenant_id, page_size) = (req.tenant_id, req.page_size);
        let (mut response, meta) = self
            .serve_read(req.read, move |reader| {
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
        req: v1::ListCallEventsRequest,
    ) -> Result<v1::ListEventsResponse, ApiError> {
        let (tenant_id, from_sequence, limit) = (req.tenant_id, req.from_sequence, req.limit);
        let (mut response, meta) = self
            .serve_call_read(&req.call_id, req.read, move |reader, call_id| {
                let at = reader.list_call_events(&tenant_id, call_id, from_sequence, limit)?;
                Ok(at_map(at, wire_events))
            })
            .await?;
        response.meta = meta;
        Ok(response)
    }

    async fn list_events(
        &self,
        req: v1::ListEventsRequest,
    ) -> Result<v1::ListEventsResponse, ApiError> {
        let (from_position, limit) = (req.from_position, req.limit);
        let (mut response, meta) = self
            .serve_read(req.read, move |reader| {
                let at = reader.list_events(from_position, limit)?;
                Ok(at_map(at, wire_events))
            })
            .await?;
        response.meta = meta;
        Ok(response)
    }
}

/// `ClusterService` handlers.
impl Api {
    async fn status(&self, _req: v1::StatusRequest) -> Result<v1::StatusResponse, ApiError> {
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
        req: v1::AddLearnerRequest,
    ) -> Result<v1::MembershipResponse, ApiError> {
        let (node_id, member) = convert::member(req.node_id, req.addr, req.region)?;
        let response = self.raft().add_learner(node_id, member, true).await?;
        Ok(v1::MembershipResponse {
            members: self.members(),
            index: response.log_id.index,
        })
    }

    async fn promote(&self, req: v1::PromoteRequest) -> Result<v1::MembershipResponse, ApiError> {
        let ids = convert::node_ids(req.node_ids)?;
        self.membership_change(ChangeMembers::AddVoterIds(ids))
            .await
    }

    async fn remove(&self, req: v1::RemoveRequest) -> Result<v1::MembershipResponse, ApiError> {
        let ids = convert::node_ids(req.node_ids)?;
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
        _req: v1::TriggerSnapshotRequest,
    ) -> Result<v1::TriggerSnapshotResponse, ApiError> {
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
            read_index: self.confirmed_read_index().await?,
            leader_id: self.node_id(),
        })
    }

    async fn digest(&self, _req: v1::DigestRequest) -> Result<v1::DigestResponse, ApiError> {
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
