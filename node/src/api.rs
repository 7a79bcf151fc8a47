//! The public gRPC API (`switchboard.v1`): calls, events and cluster administration.
//!
//! Writes: the leader stamps time and ids, proposes through Raft, waits for the entry to apply
//! and answers with the outcome and the log index; any other node answers with a redirect.
//! Reads: `LINEARIZABLE` waits for a read index confirmed by the leader (asked over
//! `ClusterService.ReadIndex` when this node is a follower), `LOCAL` reads at once, and
//! `min_index` waits (bounded) for the local node to apply that index. Handlers only validate,
//! propose or wait, and answer: a client that disconnects loses nothing but its answer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use domain::{Call, Change, Receipt, Request, Stamp};
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ReadPolicy};
use proto::v1::{
    self, call_service_server::CallService, cluster_service_server::ClusterService,
    event_service_server::EventService,
};
use raft_store::{Member, Reader, Response};
use tonic::transport::Channel;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};
use uuid::Uuid;

use crate::Raft;
use crate::convert::{self, WriteRequest};
use crate::status::ApiError;

/// What the API needs to know about its node.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub node_id: u64,
    pub cluster_id: String,
    pub write_timeout: Duration,
    pub read_wait_max: Duration,
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

/// An accepted write, ready to be turned into a response.
struct Written {
    receipt: Receipt,
    change: Option<Box<Change>>,
    meta: v1::WriteMeta,
}

impl Api {
    pub fn new(raft: Raft, reader: Reader, config: ApiConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                raft,
                reader,
                config,
                leader_channels: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    fn reader(&self) -> &Reader {
        &self.inner.reader
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

    fn not_leader(&self, leader_id: Option<u64>, leader_node: Option<&Member>) -> ApiError {
        let (known_id, known_addr) = self.leader();
        let leader_id = leader_id.or(known_id);
        let leader_addr = leader_node.map(|m| m.addr.clone()).or(known_addr);
        ApiError::NotLeader {
            leader_id,
            leader_addr: leader_addr.filter(|_| leader_id != Some(self.inner.config.node_id)),
        }
    }

    fn raft_error<E>(&self, error: RaftError<raft_store::TypeConfig, E>) -> ApiError
    where
        E: std::error::Error
            + openraft::TryAsRef<openraft::error::ForwardToLeader<raft_store::TypeConfig>>,
    {
        match error.forward_to_leader() {
            Some(forward) => self.not_leader(forward.leader_id, forward.leader_node.as_ref()),
            None => ApiError::Raft(error.to_string()),
        }
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
        let response = match tokio::time::timeout(
            timeout,
            self.raft().client_write(raft_store::Proposal(request)),
        )
        .await
        {
            Err(_) => {
                return Err(ApiError::Timeout {
                    what: "write",
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                });
            }
            Ok(Err(e)) => {
                return Err(self.raft_error::<ClientWriteError<raft_store::TypeConfig>>(e));
            }
            Ok(Ok(response)) => response,
        };
        let Response {
            outcome,
            replayed,
            change,
        } = response.data;
        let outcome =
            outcome.ok_or_else(|| ApiError::Raft("a request entry produced no outcome".into()))?;
        let receipt = outcome.result.map_err(ApiError::Rejected)?;
        Ok(Written {
            receipt,
            change,
            meta: v1::WriteMeta {
                index: outcome.index,
                replayed,
                leader_id: self.inner.config.node_id,
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

    async fn call_write(&self, write: WriteRequest) -> Result<v1::CallResponse, ApiError> {
        let tenant_id = write.tenant_id.clone();
        let written = self.write(write).await?;
        let call = self.call_after(&tenant_id, &written)?;
        Ok(v1::CallResponse {
            call: Some(convert::wire_call(&call)),
            meta: Some(written.meta),
        })
    }

    /// Waits until a read at the requested consistency may be served from local state.
    async fn read_gate(&self, read: Option<v1::ReadOptions>) -> Result<(), ApiError> {
        let read = read.unwrap_or_default();
        let started = Instant::now();
        let mut target = read.min_index;
        if read.consistency() == v1::Consistency::Linearizable {
            target = target.max(self.read_index().await?);
        }
        self.wait_applied(target, started).await
    }

    /// The metadata of a read served at `applied_index`.
    fn read_meta(&self, applied_index: u64) -> Option<v1::ReadMeta> {
        Some(v1::ReadMeta {
            applied_index,
            node_id: self.inner.config.node_id,
        })
    }

    /// A read index confirmed by a quorum: locally on the leader, else asked of the leader.
    pub async fn read_index(&self) -> Result<u64, ApiError> {
        let wait = self.inner.config.read_wait_max;
        let timed_out = || ApiError::Timeout {
            what: "read index",
            timeout_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        };
        match tokio::time::timeout(wait, self.raft().ensure_linearizable(ReadPolicy::ReadIndex))
            .await
        {
            Err(_) => Err(timed_out()),
            Ok(Ok(read_log_id)) => Ok(read_log_id.index()),
            Ok(Err(e)) => {
                let Some(forward) = e.forward_to_leader() else {
                    return Err(ApiError::Raft(e.to_string()));
                };
                let error = self.not_leader(forward.leader_id, forward.leader_node.as_ref());
                let ApiError::NotLeader {
                    leader_addr: Some(addr),
                    ..
                } = &error
                else {
                    return Err(error);
                };
                let channel = self.leader_channel(addr)?;
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
        }
    }

    fn leader_channel(&self, addr: &str) -> Result<Channel, ApiError> {
        let mut channels = self
            .inner
            .leader_channels
            .lock()
            .map_err(|_| ApiError::Raft("leader channel cache poisoned".into()))?;
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| ApiError::Raft(format!("bad leader address {addr}: {e}")))?
            .connect_timeout(self.inner.config.read_wait_max);
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
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
                node_id: self.inner.config.node_id,
                min_index: index,
                applied_index: self.reader().applied().index(),
                waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
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
        let response = self
            .raft()
            .change_membership(change, false)
            .await
            .map_err(|e| match e.forward_to_leader() {
                Some(f) => self.not_leader(f.leader_id, f.leader_node.as_ref()),
                None => ApiError::Membership(e.to_string()),
            })?;
        Ok(v1::MembershipResponse {
            members: self.members(),
            index: response.log_id.index,
        })
    }
}

fn answer<T>(result: Result<T, ApiError>) -> Result<GrpcResponse<T>, Status> {
    result.map(GrpcResponse::new).map_err(Status::from)
}

#[tonic::async_trait]
impl CallService for Api {
    async fn create_call(
        &self,
        req: GrpcRequest<v1::CreateCallRequest>,
    ) -> Result<GrpcResponse<v1::CallResponse>, Status> {
        answer(
            async {
                self.call_write(convert::create_call(req.into_inner())?)
                    .await
            }
            .await,
        )
    }

    async fn start_call(
        &self,
        req: GrpcRequest<v1::StartCallRequest>,
    ) -> Result<GrpcResponse<v1::CallResponse>, Status> {
        answer(
            async {
                self.call_write(convert::start_call(req.into_inner())?)
                    .await
            }
            .await,
        )
    }

    async fn append_turn(
        &self,
        req: GrpcRequest<v1::AppendTurnRequest>,
    ) -> Result<GrpcResponse<v1::AppendTurnResponse>, Status> {
        answer(
            async {
                let write = convert::append_turn(req.into_inner())?;
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
            .await,
        )
    }

    async fn log_event(
        &self,
        req: GrpcRequest<v1::LogEventRequest>,
    ) -> Result<GrpcResponse<v1::LogEventResponse>, Status> {
        answer(
            async {
                let written = self.write(convert::log_event(req.into_inner())?).await?;
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
            .await,
        )
    }

    async fn update_context(
        &self,
        req: GrpcRequest<v1::UpdateContextRequest>,
    ) -> Result<GrpcResponse<v1::CallResponse>, Status> {
        answer(
            async {
                self.call_write(convert::update_context(req.into_inner())?)
                    .await
            }
            .await,
        )
    }

    async fn request_handoff(
        &self,
        req: GrpcRequest<v1::RequestHandoffRequest>,
    ) -> Result<GrpcResponse<v1::CallResponse>, Status> {
        answer(
            async {
                self.call_write(convert::request_handoff(req.into_inner())?)
                    .await
            }
            .await,
        )
    }

    async fn end_call(
        &self,
        req: GrpcRequest<v1::EndCallRequest>,
    ) -> Result<GrpcResponse<v1::CallResponse>, Status> {
        answer(async { self.call_write(convert::end_call(req.into_inner())?).await }.await)
    }

    async fn get_call(
        &self,
        req: GrpcRequest<v1::GetCallRequest>,
    ) -> Result<GrpcResponse<v1::GetCallResponse>, Status> {
        answer(
            async {
                let req = req.into_inner();
                let call_id = convert::call_id(&req.call_id)?;
                self.read_gate(req.read).await?;
                let read = self.reader().get_call(&req.tenant_id, &call_id)?;
                Ok(v1::GetCallResponse {
                    call: Some(convert::wire_call(&read.value)),
                    meta: self.read_meta(read.applied_index),
                })
            }
            .await,
        )
    }

    async fn get_context(
        &self,
        req: GrpcRequest<v1::GetContextRequest>,
    ) -> Result<GrpcResponse<v1::GetContextResponse>, Status> {
        answer(
            async {
                let req = req.into_inner();
                let call_id = convert::call_id(&req.call_id)?;
                self.read_gate(req.read).await?;
                let last_turns = if req.last_turns == 0 {
                    10
                } else {
                    req.last_turns
                };
                let read = self
                    .reader()
                    .get_context(&req.tenant_id, &call_id, last_turns)?;
                let context = read.value;
                Ok(v1::GetContextResponse {
                    summary: context.summary,
                    entities: context.entities.into_iter().collect(),
                    recent_turns: context
                        .recent_turns
                        .iter()
                        .map(convert::wire_turn)
                        .collect(),
                    handoff: context.handoff.as_ref().map(convert::wire_handoff),
                    meta: self.read_meta(read.applied_index),
                })
            }
            .await,
        )
    }

    async fn list_turns(
        &self,
        req: GrpcRequest<v1::ListTurnsRequest>,
    ) -> Result<GrpcResponse<v1::ListTurnsResponse>, Status> {
        answer(
            async {
                let req = req.into_inner();
                let call_id = convert::call_id(&req.call_id)?;
                self.read_gate(req.read).await?;
                let read = self.reader().list_turns(
                    &req.tenant_id,
                    &call_id,
                    req.from_index,
                    req.limit,
                )?;
                Ok(v1::ListTurnsResponse {
                    turns: read.value.items.iter().map(convert::wire_turn).collect(),
                    next_index: read.value.next.unwrap_or(0),
                    meta: self.read_meta(read.applied_index),
                })
            }
            .await,
        )
    }

    async fn list_calls(
        &self,
        req: GrpcRequest<v1::ListCallsRequest>,
    ) -> Result<GrpcResponse<v1::ListCallsResponse>, Status> {
        answer(
            async {
                let req = req.into_inner();
                let state = convert::state_filter(req.state)?;
                let after = match req.page_token.as_str() {
                    "" => None,
                    token => Some(convert::call_id(token).map_err(|_| {
                        domain::limits::Invalid::new(
                            domain::limits::Field::PageToken,
                            domain::limits::Problem::Malformed,
                        )
                    })?),
                };
                self.read_gate(req.read).await?;
                let read = self
                    .reader()
                    .list_calls(&req.tenant_id, state, after, req.page_size)?;
                Ok(v1::ListCallsResponse {
                    calls: read.value.items.iter().map(convert::wire_call).collect(),
                    next_page_token: read.value.next.map(|id| id.to_string()).unwrap_or_default(),
                    meta: self.read_meta(read.applied_index),
                })
            }
            .await,
        )
    }
}

#[tonic::async_trait]
impl EventService for Api {
    async fn list_call_events(
        &self,
        req: GrpcRequest<v1::ListCallEventsRequest>,
    ) -> Result<GrpcResponse<v1::ListEventsResponse>, Status> {
        answer(
            async {
                let req = req.into_inner();
                let call_id = convert::call_id(&req.call_id)?;
                self.read_gate(req.read).await?;
                let read = self.reader().list_call_events(
                    &req.tenant_id,
                    &call_id,
                    req.from_sequence,
                    req.limit,
                )?;
                Ok(v1::ListEventsResponse {
                    events: read.value.items.iter().map(convert::wire_event).collect(),
                    next: read.value.next.unwrap_or(0),
                    meta: self.read_meta(read.applied_index),
                })
            }
            .await,
        )
    }

    async fn list_events(
        &self,
        req: GrpcRequest<v1::ListEventsRequest>,
    ) -> Result<GrpcResponse<v1::ListEventsResponse>, Status> {
        answer(
            async {
                let req = req.into_inner();
                self.read_gate(req.read).await?;
                let read = self.reader().list_events(req.from_position, req.limit)?;
                Ok(v1::ListEventsResponse {
                    events: read.value.items.iter().map(convert::wire_event).collect(),
                    next: read.value.next.unwrap_or(0),
                    meta: self.read_meta(read.applied_index),
                })
            }
            .await,
        )
    }
}

#[tonic::async_trait]
impl ClusterService for Api {
    async fn status(
        &self,
        _req: GrpcRequest<v1::StatusRequest>,
    ) -> Result<GrpcResponse<v1::StatusResponse>, Status> {
        let metrics = self.raft().metrics().borrow_watched().clone();
        let (leader_id, leader_addr) = self.leader();
        answer(Ok(v1::StatusResponse {
            cluster_id: self.inner.config.cluster_id.clone(),
            node_id: self.inner.config.node_id,
            leader_id,
            leader_addr: leader_addr.unwrap_or_default(),
            term: metrics.current_term,
            members: self.members(),
            committed_index: metrics.local_committed.map_or(0, |l| l.index),
            applied_index: metrics.last_applied.map_or(0, |l| l.index),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            snapshot_index: metrics.snapshot.map_or(0, |l| l.index),
            purged_index: metrics.purged.map_or(0, |l| l.index),
        }))
    }

    async fn add_learner(
        &self,
        req: GrpcRequest<v1::AddLearnerRequest>,
    ) -> Result<GrpcResponse<v1::MembershipResponse>, Status> {
        let req = req.into_inner();
        answer(
            async {
                if req.node_id == 0 || req.addr.is_empty() {
                    return Err(ApiError::Membership(
                        "a learner needs a positive node_id and an addr".into(),
                    ));
                }
                let response = self
                    .raft()
                    .add_learner(req.node_id, Member::new(req.addr, req.region), true)
                    .await
                    .map_err(|e| match e.forward_to_leader() {
                        Some(f) => self.not_leader(f.leader_id, f.leader_node.as_ref()),
                        None => ApiError::Membership(e.to_string()),
                    })?;
                Ok(v1::MembershipResponse {
                    members: self.members(),
                    index: response.log_id.index,
                })
            }
            .await,
        )
    }

    async fn promote(
        &self,
        req: GrpcRequest<v1::PromoteRequest>,
    ) -> Result<GrpcResponse<v1::MembershipResponse>, Status> {
        let ids: BTreeSet<u64> = req.into_inner().node_ids.into_iter().collect();
        answer(
            self.membership_change(ChangeMembers::AddVoterIds(ids))
                .await,
        )
    }

    async fn remove(
        &self,
        req: GrpcRequest<v1::RemoveRequest>,
    ) -> Result<GrpcResponse<v1::MembershipResponse>, Status> {
        let ids: BTreeSet<u64> = req.into_inner().node_ids.into_iter().collect();
        let voters: BTreeSet<u64> = self.raft().voter_ids().collect();
        let (remove_voters, remove_learners): (BTreeSet<u64>, BTreeSet<u64>) =
            ids.into_iter().partition(|id| voters.contains(id));
        answer(
            async {
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
                response.ok_or_else(|| ApiError::Membership("no node ids given".into()))
            }
            .await,
        )
    }

    async fn trigger_snapshot(
        &self,
        _req: GrpcRequest<v1::TriggerSnapshotRequest>,
    ) -> Result<GrpcResponse<v1::TriggerSnapshotResponse>, Status> {
        answer(
            async {
                let applied = self.reader().applied().index();
                self.raft()
                    .trigger()
                    .snapshot()
                    .await
                    .map_err(|e| ApiError::Raft(e.to_string()))?;
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
                        timeout_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    })?;
                Ok(v1::TriggerSnapshotResponse {
                    snapshot_index: built.snapshot.map_or(0, |s| s.index),
                })
            }
            .await,
        )
    }

    async fn initialize(
        &self,
        req: GrpcRequest<v1::InitializeRequest>,
    ) -> Result<GrpcResponse<v1::InitializeResponse>, Status> {
        let members: BTreeMap<u64, Member> = req
            .into_inner()
            .members
            .into_iter()
            .map(|m| (m.node_id, Member::new(m.addr, m.region)))
            .collect();
        answer(
            async {
                self.raft()
                    .initialize(members)
                    .await
                    .map_err(|e| ApiError::Membership(e.to_string()))?;
                Ok(v1::InitializeResponse {})
            }
            .await,
        )
    }

    async fn read_index(
        &self,
        _req: GrpcRequest<v1::ReadIndexRequest>,
    ) -> Result<GrpcResponse<v1::ReadIndexResponse>, Status> {
        answer(
            async {
                if !self.raft().is_leader() {
                    let (id, addr) = self.leader();
                    return Err(ApiError::NotLeader {
                        leader_id: id,
                        leader_addr: addr,
                    });
                }
                Ok(v1::ReadIndexResponse {
                    read_index: self.read_index().await?,
                    leader_id: self.inner.config.node_id,
                })
            }
            .await,
        )
    }

    async fn digest(
        &self,
        _req: GrpcRequest<v1::DigestRequest>,
    ) -> Result<GrpcResponse<v1::DigestResponse>, Status> {
        answer(
            self.reader()
                .digest()
                .map(|at| v1::DigestResponse {
                    node_id: self.inner.config.node_id,
                    applied_index: at.applied_index,
                    sha256: at.value.to_vec(),
                })
                .map_err(|e| ApiError::Read(e.into())),
        )
    }
}
