//! The client end: openraft's `RaftNetworkFactory` and one `RaftNetworkV2` per target.
//!
//! Keeps one lazily connected tonic `Channel` per peer, keyed by node id and address, and turns
//! every transport failure into the openraft error that makes openraft retry or back off (see
//! the table in the parent module). A failed RPC is logged at DEBUG only: openraft reports
//! failed replication itself, and a down peer would otherwise log on every heartbeat.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::errors::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::RPCOption;
use openraft::network::v2::RaftNetworkV2;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RPCTypes, RaftNetworkFactory, StorageError};
use proto::raft_v1::raft_service_client::RaftServiceClient;
use proto::raft_v1::snapshot_chunk::Kind;
use proto::raft_v1::{RaftPayload, SnapshotChunk, SnapshotHeader, SnapshotTrailer};
use raft_store::{Member, NodeId, SnapshotFile, TypeConfig, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use super::{
    Error, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, RAFT_MESSAGE_BYTES_MAX,
    SNAPSHOT_CHUNKS_IN_FLIGHT, TransportConfig, decode, encode,
};

type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>;

/// Builds the [`Network`] openraft uses to reach each peer; cheap to clone.
#[derive(Debug, Clone)]
pub struct NetworkFactory {
    config: Arc<TransportConfig>,
    dialer: super::Dialer,
    channels: Arc<Mutex<HashMap<NodeId, Peer>>>,
}

#[derive(Debug, Clone)]
struct Peer {
    addr: String,
    channel: Channel,
}

impl NetworkFactory {
    /// Plaintext connections to peers. `config` must have passed [`TransportConfig::validate`].
    pub fn new(config: TransportConfig) -> Self {
        Self::with_dialer(config, super::Dialer::Plain)
    }

    /// Connections to peers opened by `dialer` (mutual TLS, each peer checked to be the node
    /// it is dialled as). `config` must have passed [`TransportConfig::validate`].
    pub fn with_dialer(config: TransportConfig, dialer: super::Dialer) -> Self {
        Self {
            config: Arc::new(config),
            dialer,
            channels: Arc::default(),
        }
    }

    /// The cached channel to `target`, or a new one when there is none or its address changed.
    /// Never connects: the channel connects on its first request, and again after a failure.
    fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, Error> {
        // A panic while holding this lock cannot leave the map inconsistent: every update is a
        // single insert.
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(peer) = channels.get(&target)
            && peer.addr == addr
        {
            return Ok(peer.channel.clone());
        }
        let channel = self
            .dialer
            .channel(endpoint(&self.config, target, addr)?, Some(target));
        let previous = channels.insert(
            target,
            Peer {
                addr: addr.to_owned(),
                channel: channel.clone(),
            },
        );
        if let Some(previous) = previous {
            tracing::info!(peer = target, old_addr = %previous.addr, new_addr = %addr, "peer address changed");
        }
        Ok(channel)
    }
}

fn endpoint(config: &TransportConfig, target: NodeId, addr: &str) -> Result<Endpoint, Error> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(uri).map_err(|source| Error::BadAddress {
        target,
        addr: addr.to_owned(),
        source,
    })?;
    Ok(endpoint
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Network {
        let client = match self.channel(target, &node.addr) {
            Ok(channel) => Ok(RaftServiceClient::new(channel)
                .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)),
            Err(error) => {
                // Every RPC to this peer will say the same thing, as Unreachable, so openraft
                // backs off; say it once here where it is found.
                tracing::warn!(peer = target, error = %super::chain(&error), "cannot reach peer");
                Err(Arc::new(error))
            }
        };
        Network {
            config: self.config.clone(),
            target,
            addr: node.addr.clone(),
            client,
        }
    }
}

/// openraft's connection to one peer.
#[derive(Debug)]
pub struct Network {
    config: Arc<TransportConfig>,
    target: NodeId,
    addr: String,
    client: Result<RaftServiceClient<Channel>, Arc<Error>>,
}

#[derive(Debug, Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    PreVote,
    TransferLeader,
}

impl Rpc {
    fn name(self) -> &'static str {
        match self {
            Rpc::AppendEntries => "append entries",
            Rpc::Vote => "vote",
            Rpc::PreVote => "pre-vote",
            Rpc::TransferLeader => "transfer leader",
        }
    }

    fn request(self) -> &'static str {
        match self {
            Rpc::AppendEntries => "append entries request",
            Rpc::Vote => "vote request",
            Rpc::PreVote => "pre-vote request",
            Rpc::TransferLeader => "transfer leader request",
        }
    }

    fn response(self) -> &'static str {
        match self {
            Rpc::AppendEntries => "append entries response",
            Rpc::Vote => "vote response",
            Rpc::PreVote => "pre-vote response",
            Rpc::TransferLeader => "transfer leader response",
        }
    }

    fn openraft(self) -> RPCTypes {
        match self {
            Rpc::AppendEntries => RPCTypes::AppendEntries,
            Rpc::Vote | Rpc::PreVote => RPCTypes::Vote,
            Rpc::TransferLeader => RPCTypes::TransferLeader,
        }
    }
}

/// Why a call produced no payload.
enum CallError {
    /// Our own timer ran out.
    Elapsed(Duration),
    /// The peer or the connection answered with a status.
    Status(tonic::Status),
    /// Nothing was sent, or what came back is unusable.
    Local(Error),
    /// The peer's address does not parse; nothing can be sent.
    BadAddress(Arc<Error>),
}

impl Network {
    fn client(&self) -> Result<RaftServiceClient<Channel>, CallError> {
        match &self.client {
            Ok(client) => Ok(client.clone()),
            Err(error) => Err(CallError::BadAddress(error.clone())),
        }
    }

    fn payload(&self, data: Vec<u8>) -> RaftPayload {
        RaftPayload {
            data,
            cluster_id: self.config.cluster_id.clone(),
            from_node_id: self.config.node_id,
            to_node_id: self.target,
        }
    }

    /// Sends one unary RPC and returns the peer's payload, checked to come from the peer.
    async fn call(&self, rpc: Rpc, data: Vec<u8>, ttl: Duration) -> Result<RaftPayload, CallError> {
        let mut client = self.client()?;
        let mut request = tonic::Request::new(self.payload(data));
        request.set_timeout(ttl);
        let call = async move {
            match rpc {
                Rpc::AppendEntries => client.append_entries(request).await,
                Rpc::Vote => client.vote(request).await,
                Rpc::PreVote => client.pre_vote(request).await,
                Rpc::TransferLeader => client.transfer_leader(request).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, call).await {
            Err(_) => return Err(CallError::Elapsed(ttl)),
            Ok(Err(status)) if status.code() == Code::DeadlineExceeded => {
                return Err(CallError::Elapsed(ttl));
            }
            Ok(Err(status)) => return Err(CallError::Status(status)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        self.check_reply(&reply.cluster_id, reply.from_node_id)
            .map_err(CallError::Local)?;
        Ok(reply)
    }

    /// The server checks who we meant to reach; this checks who answered.
    fn check_reply(&self, cluster_id: &str, from: NodeId) -> Result<(), Error> {
        if cluster_id != self.config.cluster_id || from != self.target {
            return Err(Error::WrongReply {
                node: self.target,
                from,
                cluster_id: cluster_id.to_owned(),
            });
        }
        Ok(())
    }

    async fn unary<Req, Resp>(
        &self,
        rpc: Rpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let ttl = option.hard_ttl().min(self.config.rpc_timeout);
        let data =
            encode(rpc.request(), request).map_err(|e| self.rpc_error(rpc, CallError::Local(e)))?;
        let reply = self
            .call(rpc, data, ttl)
            .await
            .map_err(|e| self.rpc_error(rpc, e))?;
        decode(rpc.response(), self.target, &reply.data)
            .map_err(|e| self.rpc_error(rpc, CallError::Local(e)))
    }

    fn timeout(&self, action: RPCTypes, timeout: Duration) -> Timeout<TypeConfig> {
        Timeout {
            action,
            id: self.config.node_id,
            target: self.target,
            timeout,
        }
    }

    fn rpc_error(&self, rpc: Rpc, error: CallError) -> RPCError<TypeConfig> {
        let error = match error {
            CallError::Elapsed(ttl) => return RPCError::Timeout(self.timeout(rpc.openraft(), ttl)),
            CallError::BadAddress(error) => {
                return RPCError::Unreachable(Unreachable::new(&*error));
            }
            CallError::Local(error) => error,
            CallError::Status(status) => Error::Rpc {
                rpc: rpc.name(),
                target: self.target,
                addr: self.addr.clone(),
                source: status,
            },
        };
        tracing::debug!(peer = self.target, error = %super::chain(&error), "raft rpc failed");
        if is_transient(&error) {
            RPCError::Network(NetworkError::new(&error))
        } else {
            RPCError::Unreachable(Unreachable::new(&error))
        }
    }

    async fn send_snapshot(
        &self,
        vote: Vote,
        snapshot: Snapshot,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let unreachable = |e: Error| StreamingError::Unreachable(Unreachable::new(&e));
        let mut client = match &self.client {
            Ok(client) => client.clone(),
            Err(error) => return Err(StreamingError::Unreachable(Unreachable::new(&**error))),
        };
        let signature = snapshot.meta.signature();
        let storage_error = |e: io::Error| {
            StreamingError::StorageError(StorageError::from_io_error(
                ErrorSubject::Snapshot(Some(signature.clone())),
                ErrorVerb::Read,
                e,
            ))
        };
        let SnapshotFile { path, file } = snapshot.snapshot;
        let (reader, size_bytes) =
            tokio::task::spawn_blocking(move || ChunkReader::open(path, file))
                .await
                .map_err(io::Error::other)
                .and_then(|opened| opened)
                .map_err(storage_error)?;
        let header = SnapshotHeader {
            vote: encode("snapshot vote", &vote).map_err(unreachable)?,
            meta: encode("snapshot meta", &snapshot.meta).map_err(unreachable)?,
            size_bytes,
            cluster_id: self.config.cluster_id.clone(),
            from_node_id: self.config.node_id,
            to_node_id: self.target,
        };

        let (tx, rx) = mpsc::channel(SNAPSHOT_CHUNKS_IN_FLIGHT);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request.set_timeout(self.config.snapshot_timeout);
        let call = client.install_snapshot(request);
        let feed = feed(
            tx,
            header,
            reader,
            self.config.snapshot_chunk_bytes,
            self.config.rpc_timeout,
        );
        tokio::pin!(call, feed);
        let fed = tokio::select! {
            reply = &mut call => {
                // The peer answered before the trailer: only a refusal can do that.
                let status = match reply {
                    Err(status) => status,
                    Ok(_) => tonic::Status::internal("answered before the snapshot trailer"),
                };
                return Err(self.snapshot_status_error(status));
            }
            fed = &mut feed => fed,
        };
        match fed {
            Ok(()) | Err(Feed::Closed) => {}
            Err(Feed::Read(e)) => return Err(storage_error(e)),
            Err(Feed::Stalled(stall)) => {
                return Err(StreamingError::Timeout(
                    self.timeout(RPCTypes::InstallSnapshot, stall),
                ));
            }
        }
        // Sent in full, or the peer stopped taking chunks: either way its answer says how it
        // ended.
        let reply = call
            .await
            .map_err(|status| self.snapshot_status_error(status))?
            .into_inner();
        self.check_reply(&reply.cluster_id, reply.from_node_id)
            .map_err(unreachable)?;
        decode("snapshot response", self.target, &reply.data).map_err(unreachable)
    }

    fn snapshot_status_error(&self, status: tonic::Status) -> StreamingError<TypeConfig> {
        if status.code() == Code::DeadlineExceeded {
            let timeout = self.timeout(RPCTypes::InstallSnapshot, self.config.snapshot_timeout);
            return StreamingError::Timeout(timeout);
        }
        let error = Error::Rpc {
            rpc: "install snapshot",
            target: self.target,
            addr: self.addr.clone(),
            source: status,
        };
        tracing::debug!(peer = self.target, error = %super::chain(&error), "raft rpc failed");
        if is_transient(&error) {
            StreamingError::Network(NetworkError::new(&error))
        } else {
            StreamingError::Unreachable(Unreachable::new(&error))
        }
    }
}

/// Whether retrying at once may help (openraft's `Network`) or not (`Unreachable`: back off).
fn is_transient(error: &Error) -> bool {
    match error {
        Error::Rpc { source, .. } => !matches!(
            source.code(),
            Code::Unavailable
                | Code::FailedPrecondition
                | Code::InvalidArgument
                | Code::Unimplemented
                | Code::ResourceExhausted
                | Code::PermissionDenied
                | Code::Unauthenticated
        ),
        _ => false,
    }
}

impl RaftNetworkV2<TypeConfig> for Network {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(Rpc::AppendEntries, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(Rpc::Vote, &rpc, &option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let ttl = option.hard_ttl().min(self.config.rpc_timeout);
        let data = encode(Rpc::PreVote.request(), &rpc)
            .map_err(|e| self.rpc_error(Rpc::PreVote, CallError::Local(e)))?;
        match self.call(Rpc::PreVote, data, ttl).await {
            Ok(reply) => decode(Rpc::PreVote.response(), self.target, &reply.data)
                .map_err(|e| self.rpc_error(Rpc::PreVote, CallError::Local(e))),
            // A peer that predates Pre-Vote grants, as openraft's default does for a network
            // without it: an unreachable peer still never counts as a grant.
            Err(CallError::Status(status)) if status.code() == Code::Unimplemented => {
                Ok(VoteResponse::new(rpc.vote, None, true))
            }
            Err(error) => Err(self.rpc_error(Rpc::PreVote, error)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let timeout = self.config.snapshot_timeout;
        let last_log_id = snapshot.meta.last_log_id;
        tracing::info!(peer = self.target, ?last_log_id, "sending snapshot");
        let transfer = tokio::time::timeout(timeout, self.send_snapshot(vote, snapshot));
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            sent = transfer => match sent {
                Ok(result) => result,
                Err(_) => Err(StreamingError::Timeout(self.timeout(RPCTypes::InstallSnapshot, timeout))),
            },
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(Rpc::TransferLeader, &req, &option).await
    }
}

/// Why feeding a snapshot stream stopped early.
enum Feed {
    /// Reading our own snapshot file failed.
    Read(io::Error),
    /// The connection took no message for this long.
    Stalled(Duration),
    /// The call ended; its status says why.
    Closed,
}

/// Sends the header, the file in chunks, then the trailer, waiting at most `stall` for the
/// connection to take each message.
async fn feed(
    tx: mpsc::Sender<SnapshotChunk>,
    header: SnapshotHeader,
    mut reader: ChunkReader,
    chunk_bytes: usize,
    stall: Duration,
) -> Result<(), Feed> {
    send(&tx, Kind::Header(header), stall).await?;
    while reader.remaining_bytes() > 0 {
        let (returned, chunk) = tokio::task::spawn_blocking(move || {
            let chunk = reader.next_chunk(chunk_bytes);
            (reader, chunk)
        })
        .await
        .map_err(|e| Feed::Read(io::Error::other(e)))?;
        reader = returned;
        let chunk = chunk.map_err(Feed::Read)?;
        send(&tx, Kind::Data(chunk), stall).await?;
    }
    let (size_bytes, sha256) = reader.finish();
    send(
        &tx,
        Kind::Trailer(SnapshotTrailer {
            size_bytes,
            sha256: sha256.to_vec(),
        }),
        stall,
    )
    .await
}

async fn send(tx: &mpsc::Sender<SnapshotChunk>, kind: Kind, stall: Duration) -> Result<(), Feed> {
    let chunk = SnapshotChunk { kind: Some(kind) };
    match tokio::time::timeout(stall, tx.send(chunk)).await {
        Err(_) => Err(Feed::Stalled(stall)),
        Ok(Err(_)) => Err(Feed::Closed),
        Ok(Ok(())) => Ok(()),
    }
}

/// Reads an open snapshot file front to back in chunks, hashing what it hands out. Used from
/// blocking threads only.
struct ChunkReader {
    path: PathBuf,
    file: File,
    size_bytes: u64,
    sent_bytes: u64,
    hasher: Sha256,
}

impl ChunkReader {
    fn open(path: PathBuf, mut file: File) -> io::Result<(Self, u64)> {
        // Another reader of this handle may have moved its offset.
        file.seek(SeekFrom::Start(0))?;
        let size_bytes = file.metadata()?.len();
        let reader = Self {
            path,
            file,
            size_bytes,
            sent_bytes: 0,
            hasher: Sha256::new(),
        };
        Ok((reader, size_bytes))
    }

    fn remaining_bytes(&self) -> u64 {
        self.size_bytes - self.sent_bytes
    }

    fn next_chunk(&mut self, chunk_bytes: usize) -> io::Result<Vec<u8>> {
        let len =
            usize::try_from(self.remaining_bytes()).map_or(chunk_bytes, |r| r.min(chunk_bytes));
        let mut chunk = vec![0u8; len];
        self.file.read_exact(&mut chunk).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "failed to read snapshot {} at byte {}: {e}",
                    self.path.display(),
                    self.sent_bytes
                ),
            )
        })?;
        self.hasher.update(&chunk);
        self.sent_bytes += len as u64;
        Ok(chunk)
    }

    fn finish(self) -> (u64, [u8; 32]) {
        (self.sent_bytes, self.hasher.finalize().into())
    }
}
