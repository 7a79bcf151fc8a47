//! The server end: `switchboard.raft.v1.RaftService`, handing what peers send to the local Raft.
//!
//! Checks that every message comes from this cluster and is meant for this node, decodes it and
//! calls `Raft::append_entries`, `vote`, `pre_vote`, `handle_transfer_leader` or
//! `install_full_snapshot`. Receives snapshots into `snapshots/incoming/` in bounded memory and
//! never leaves a partial file behind. Holds no Raft logic of its own.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{Fatal, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, TransferLeaderRequest, VoteRequest,
};
use proto::raft_v1::raft_service_server::{RaftService, RaftServiceServer};
use proto::raft_v1::snapshot_chunk::Kind;
use proto::raft_v1::{RaftPayload, SnapshotChunk, SnapshotHeader, SnapshotTrailer};
use raft_store::snapshot::SnapshotDir;
use raft_store::{NodeId, SnapshotFile, SnapshotMeta, TypeConfig, Vote};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, Streaming};

use super::{
    Error, RAFT_MESSAGE_BYTES_MAX, SNAPSHOT_BYTES_MAX, SNAPSHOT_RECEIVES_MAX, TransportConfig,
    decode, encode,
};

/// Name prefix and suffix of a snapshot being received in `snapshots/incoming/`.
const RECEIVE_PREFIX: &str = "receive-";
const RECEIVE_SUFFIX: &str = ".part";
/// Write buffer of a snapshot being received.
const RECEIVE_BUFFER_BYTES: usize = 256 * 1024;

/// The Raft service of one node. Build it with [`raft_service`].
pub struct RaftServiceImpl {
    raft: crate::Raft,
    config: Arc<TransportConfig>,
    snapshots: SnapshotDir,
    receiving: Arc<Semaphore>,
    contact: super::LeaderContact,
}

impl std::fmt::Debug for RaftServiceImpl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftServiceImpl")
            .field("config", &self.config)
            .field("snapshots", &self.snapshots)
            .finish_non_exhaustive()
    }
}

/// The gRPC server of the Raft service for `raft`, with message bounds set.
///
/// `config` must have passed [`TransportConfig::validate`]. Call this before serving: it removes
/// what interrupted receives left in `snapshots/incoming/` (no receive can be running yet).
pub fn raft_service(
    raft: crate::Raft,
    config: TransportConfig,
    snapshots: SnapshotDir,
    contact: super::LeaderContact,
) -> RaftServiceServer<RaftServiceImpl> {
    remove_leftovers(&snapshots);
    let service = RaftServiceImpl {
        raft,
        config: Arc::new(config),
        snapshots,
        receiving: Arc::new(Semaphore::new(SNAPSHOT_RECEIVES_MAX)),
        contact,
    };
    RaftServiceServer::new(service)
        .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)
}

fn remove_leftovers(snapshots: &SnapshotDir) {
    let probe = snapshots.incoming_path(RECEIVE_PREFIX);
    let Some(incoming) = probe.parent() else {
        return;
    };
    let entries = match fs::read_dir(incoming) {
        Ok(entries) => entries,
        Err(error) => {
            tracing::warn!(dir = %incoming.display(), %error, "failed to list incoming snapshots");
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(RECEIVE_PREFIX) && name.ends_with(RECEIVE_SUFFIX) {
            tracing::info!(file = %entry.path().display(), "removing an interrupted snapshot receive");
            remove_if_present(&entry.path());
        }
    }
}

fn remove_if_present(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(file = %path.display(), %error, "failed to remove a partial snapshot");
        }
    }
}

/// Removes a file when dropped, unless disarmed: a receive that fails, or whose handler is
/// dropped because the sender went away, leaves nothing behind.
struct RemoveOnDrop {
    path: Option<PathBuf>,
}

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.path = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            remove_if_present(&path);
        }
    }
}

impl RaftServiceImpl {
    /// Who is calling, by the verified certificate of the connection: `Ok(None)` when peers
    /// are not authenticated (`--insecure`), else the calling member's node id.
    fn authenticate(&self, extensions: &http::Extensions) -> Result<Option<NodeId>, Error> {
        if !self.config.authenticate_peers {
            return Ok(None);
        }
        let Some(peer) = extensions.get::<crate::tls::PeerInfo>() else {
            return Err(Error::Unauthenticated {
                reason: "the connection is not a tls connection",
            });
        };
        if !peer.tls || peer.certs.is_empty() {
            return Err(Error::Unauthenticated {
                reason: "the caller presented no certificate",
            });
        }
        let identity = match &peer.node {
            Ok(Some(identity)) => identity,
            Ok(None) | Err(_) => return Err(Error::NotANode),
        };
        if identity.cluster_id != self.config.cluster_id {
            return Err(Error::ForeignCluster {
                node_id: identity.node_id,
            });
        }
        if !self.is_member(identity.node_id) {
            return Err(Error::NotMember {
                node_id: identity.node_id,
            });
        }
        Ok(Some(identity.node_id))
    }

    /// Whether `node_id` may call: in `--initial-cluster`, in this node's membership (voters
    /// and learners), or anyone of the cluster while that membership is empty.
    fn is_member(&self, node_id: NodeId) -> bool {
        if self.config.initial_members.contains(&node_id) {
            return true;
        }
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let membership = metrics.membership_config.membership();
        let mut nodes = membership.nodes().map(|(id, _)| *id).peekable();
        nodes.peek().is_none() || nodes.any(|id| id == node_id)
    }

    fn check_sender(
        &self,
        cluster_id: &str,
        from: NodeId,
        to: NodeId,
        authenticated: Option<NodeId>,
    ) -> Result<(), Error> {
        if let Some(cert_node_id) = authenticated
            && cert_node_id != from
        {
            return Err(Error::Impersonation { cert_node_id, from });
        }
        if cluster_id != self.config.cluster_id {
            return Err(Error::ClusterMismatch {
                node_id: self.config.node_id,
                from,
                theirs: cluster_id.to_owned(),
            });
        }
        if to != self.config.node_id {
            return Err(Error::WrongNode {
                node_id: self.config.node_id,
                from,
                to,
            });
        }
        Ok(())
    }

    /// Checks the sender and decodes the payload; returns the sender's id with the message.
    fn open<T: serde::de::DeserializeOwned>(
        &self,
        payload: &RaftPayload,
        what: &'static str,
        authenticated: Option<NodeId>,
    ) -> Result<T, Error> {
        self.check_sender(
            &payload.cluster_id,
            payload.from_node_id,
            payload.to_node_id,
            authenticated,
        )?;
        decode(what, payload.from_node_id, &payload.data)
    }

    fn reply<T: Serialize>(
        &self,
        what: &'static str,
        to: NodeId,
        value: &T,
    ) -> Result<Response<RaftPayload>, Error> {
        Ok(Response::new(RaftPayload {
            data: encode(what, value)?,
            cluster_id: self.config.cluster_id.clone(),
            from_node_id: self.config.node_id,
            to_node_id: to,
        }))
    }

    fn stopped(&self, error: RaftError<TypeConfig>) -> Error {
        let source = match error {
            RaftError::APIError(never) => match never {},
            RaftError::Fatal(fatal) => fatal,
        };
        self.fatal(source)
    }

    fn fatal(&self, source: Fatal<TypeConfig>) -> Error {
        Error::Stopped {
            node_id: self.config.node_id,
            source,
        }
    }

    /// The one place a transport error becomes a status, logged at the level it deserves.
    fn fail(&self, rpc: &'static str, from: NodeId, error: Error) -> Status {
        let message = super::chain(&error);
        match &error {
            // Peers keep calling while this node stops: expected, and said once by openraft.
            Error::Stopped { .. } => {
                tracing::debug!(rpc, peer = from, error = %message, "refused raft rpc")
            }
            Error::Io { .. } | Error::Encode { .. } => {
                tracing::error!(rpc, peer = from, error = %message, "raft rpc failed");
            }
            _ => tracing::warn!(rpc, peer = from, error = %message, "refused raft rpc"),
        }
        Status::from(error)
    }

    async fn install(
        &self,
        stream: &mut Streaming<SnapshotChunk>,
        authenticated: Option<NodeId>,
    ) -> Result<Response<RaftPayload>, (NodeId, Error)> {
        let header = match stream.message().await {
            Ok(Some(SnapshotChunk {
                kind: Some(Kind::Header(header)),
            })) => header,
            Ok(other) => {
                let got = match other {
                    None => "nothing",
                    Some(SnapshotChunk { kind: None }) => "an empty message",
                    Some(SnapshotChunk {
                        kind: Some(Kind::Data(_)),
                    }) => "data",
                    Some(SnapshotChunk {
                        kind: Some(Kind::Trailer(_)),
                    }) => "a trailer",
                    Some(SnapshotChunk {
                        kind: Some(Kind::Header(_)),
                    }) => "a header",
                };
                return Err((0, Error::NoHeader { got }));
            }
            Err(source) => return Err((0, Error::StreamBroken { from: 0, source })),
        };
        let from = header.from_node_id;
        self.check_sender(&header.cluster_id, from, header.to_node_id, authenticated)
            .map_err(|e| (from, e))?;
        let vote: Vote = decode("snapshot vote", from, &header.vote).map_err(|e| (from, e))?;
        let meta: SnapshotMeta =
            decode("snapshot meta", from, &header.meta).map_err(|e| (from, e))?;
        if header.size_bytes > SNAPSHOT_BYTES_MAX {
            return Err((
                from,
                Error::SnapshotTooLarge {
                    size_bytes: header.size_bytes,
                    max_bytes: SNAPSHOT_BYTES_MAX,
                },
            ));
        }
        let _permit = self.receiving.clone().try_acquire_owned().map_err(|_| {
            (
                from,
                Error::SnapshotBusy {
                    node_id: self.config.node_id,
                    receives_max: SNAPSHOT_RECEIVES_MAX,
                },
            )
        })?;

        let name = format!(
            "{RECEIVE_PREFIX}{from}-{}{RECEIVE_SUFFIX}",
            uuid::Uuid::now_v7()
        );
        let path = self.snapshots.incoming_path(&name);
        let partial = RemoveOnDrop {
            path: Some(path.clone()),
        };
        tracing::info!(peer = from, last_log_id = ?meta.last_log_id, size_bytes = header.size_bytes, "receiving snapshot");
        let timeout = self.config.snapshot_timeout;
        let received = tokio::time::timeout(timeout, receive(stream, &header, from, path.clone()))
            .await
            .map_err(|_| (from, Error::SnapshotTimeout { from, timeout }))?
            .map_err(|e| (from, e))?;

        // Check the file's own framing and content here: handed to the state machine, a bad
        // file would be a storage error, which stops this node.
        let verify_path = path.clone();
        let (found, file) = tokio::task::spawn_blocking(move || {
            let found = raft_store::snapshot::verify(&verify_path)?;
            Ok::<_, raft_store::Error>((found, SnapshotFile::open(verify_path)?))
        })
        .await
        .map_err(|e| {
            (
                from,
                Error::Io {
                    path: path.clone(),
                    source: io::Error::other(e),
                },
            )
        })?
        .map_err(|e| (from, Error::SnapshotInvalid(e)))?;
        if found.last_log_id != meta.last_log_id || found.last_membership != meta.last_membership {
            return Err((
                from,
                Error::SnapshotMeta {
                    found: Box::new(found),
                    announced: Box::new(meta),
                },
            ));
        }

        tracing::info!(peer = from, last_log_id = ?meta.last_log_id, size_bytes = received, "received snapshot");
        // From here the state machine may read the file, by path: it must not vanish under it.
        // Installed, it is moved out of incoming/; refused (an older snapshot than ours, or a
        // stale leader), it is still here and goes now. If this handler is dropped meanwhile,
        // the next start removes it.
        partial.disarm();
        let snapshot = openraft::storage::Snapshot {
            meta,
            snapshot: file,
        };
        let installed = self.raft.install_full_snapshot(vote, snapshot).await;
        remove_if_present(&path);
        let response = installed.map_err(|e| (from, self.fatal(e)))?;
        self.reply("snapshot response", from, &response)
            .map_err(|e| (from, e))
    }
}

/// Writes the data chunks that follow `header` into a new file at `path` and checks them
/// against the trailer; returns the bytes received. The file is synced when this returns `Ok`.
async fn receive(
    stream: &mut Streaming<SnapshotChunk>,
    header: &SnapshotHeader,
    from: NodeId,
    path: PathBuf,
) -> Result<u64, Error> {
    let mut writer = run_blocking(&path, {
        let path = path.clone();
        move || Writer::create(path)
    })
    .await?;
    let trailer: SnapshotTrailer = loop {
        let message = stream
            .message()
            .await
            .map_err(|source| Error::StreamBroken { from, source })?;
        let kind = match message {
            None => {
                return Err(Error::NoTrailer {
                    received_bytes: writer.received_bytes,
                });
            }
            Some(SnapshotChunk { kind }) => kind,
        };
        match kind {
            Some(Kind::Data(data)) => {
                if writer.received_bytes + data.len() as u64 > header.size_bytes {
                    return Err(Error::SnapshotOverrun {
                        size_bytes: header.size_bytes,
                    });
                }
                writer = run_blocking(&path, move || {
                    let mut writer = writer;
                    writer.write(&data)?;
                    Ok(writer)
                })
                .await?;
            }
            Some(Kind::Trailer(trailer)) => break trailer,
            Some(Kind::Header(_)) => {
                return Err(Error::OutOfOrder {
                    got: "a second header",
                });
            }
            None => {
                return Err(Error::OutOfOrder {
                    got: "an empty message",
                });
            }
        }
    };
    let received_bytes = writer.received_bytes;
    if trailer.size_bytes != header.size_bytes || received_bytes != header.size_bytes {
        return Err(Error::SnapshotSize {
            header_bytes: header.size_bytes,
            trailer_bytes: trailer.size_bytes,
            received_bytes,
        });
    }
    let digest = run_blocking(&path, move || writer.finish()).await?;
    if digest.as_slice() != trailer.sha256.as_slice() {
        return Err(Error::SnapshotDigest { received_bytes });
    }
    Ok(received_bytes)
}

/// Runs file work off the async threads.
async fn run_blocking<T, F>(path: &Path, work: F) -> Result<T, Error>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(io::Error::other)
        .and_then(|result| result)
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// A snapshot file being received: buffered writes, hashed as they go.
struct Writer {
    out: BufWriter<File>,
    hasher: Sha256,
    received_bytes: u64,
}

impl Writer {
    fn create(path: PathBuf) -> io::Result<Self> {
        let file = OpenOptions::new().write(true).create_new(true).open(path)?;
        Ok(Self {
            out: BufWriter::with_capacity(RECEIVE_BUFFER_BYTES, file),
            hasher: Sha256::new(),
            received_bytes: 0,
        })
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.hasher.update(data);
        self.received_bytes += data.len() as u64;
        Ok(())
    }

    /// Flushes and fsyncs the file; returns the SHA-256 of everything written.
    fn finish(self) -> io::Result<[u8; 32]> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(self.hasher.finalize().into())
    }
}

#[tonic::async_trait]
impl RaftService for RaftServiceImpl {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        const RPC: &str = "append entries";
        let authenticated = self
            .authenticate(request.extensions())
            .map_err(|e| self.fail(RPC, request.get_ref().from_node_id, e))?;
        let payload = request.into_inner();
        let from = payload.from_node_id;
        let rpc: AppendEntriesRequest<TypeConfig> = self
            .open(&payload, "append entries request", authenticated)
            .map_err(|e| self.fail(RPC, from, e))?;
        tracing::debug!(peer = from, entries = rpc.entries.len(), "append entries");
        let response = self
            .raft
            .append_entries(rpc)
            .await
            .map_err(|e| self.fail(RPC, from, self.stopped(e)))?;
        // A leader this node still follows reached it (whatever the entries' fate).
        if !matches!(response, AppendEntriesResponse::HigherVote(_)) {
            self.contact.touch();
        }
        self.reply("append entries response", from, &response)
            .map_err(|e| self.fail(RPC, from, e))
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        const RPC: &str = "vote";
        let authenticated = self
            .authenticate(request.extensions())
            .map_err(|e| self.fail(RPC, request.get_ref().from_node_id, e))?;
        let payload = request.into_inner();
        let from = payload.from_node_id;
        let rpc: VoteRequest<TypeConfig> = self
            .open(&payload, "vote request", authenticated)
            .map_err(|e| self.fail(RPC, from, e))?;
        tracing::debug!(peer = from, vote = %rpc.vote, "vote");
        let response = self
            .raft
            .vote(rpc)
            .await
            .map_err(|e| self.fail(RPC, from, self.stopped(e)))?;
        self.reply("vote response", from, &response)
            .map_err(|e| self.fail(RPC, from, e))
    }

    async fn pre_vote(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        const RPC: &str = "pre-vote";
        let authenticated = self
            .authenticate(request.extensions())
            .map_err(|e| self.fail(RPC, request.get_ref().from_node_id, e))?;
        let payload = request.into_inner();
        let from = payload.from_node_id;
        let rpc: VoteRequest<TypeConfig> = self
            .open(&payload, "pre-vote request", authenticated)
            .map_err(|e| self.fail(RPC, from, e))?;
        tracing::debug!(peer = from, vote = %rpc.vote, "pre-vote");
        let response = self
            .raft
            .pre_vote(rpc)
            .await
            .map_err(|e| self.fail(RPC, from, self.stopped(e)))?;
        self.reply("pre-vote response", from, &response)
            .map_err(|e| self.fail(RPC, from, e))
    }

    async fn transfer_leader(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        const RPC: &str = "transfer leader";
        let authenticated = self
            .authenticate(request.extensions())
            .map_err(|e| self.fail(RPC, request.get_ref().from_node_id, e))?;
        let payload = request.into_inner();
        let from = payload.from_node_id;
        let rpc: TransferLeaderRequest<TypeConfig> = self
            .open(&payload, "transfer leader request", authenticated)
            .map_err(|e| self.fail(RPC, from, e))?;
        tracing::info!(peer = from, "leadership offered by the leader");
        let response = self
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(|e| self.fail(RPC, from, self.fatal(e)))?;
        self.reply("transfer leader response", from, &response)
            .map_err(|e| self.fail(RPC, from, e))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        const RPC: &str = "install snapshot";
        let authenticated = self
            .authenticate(request.extensions())
            .map_err(|e| self.fail(RPC, 0, e))?;
        let mut stream = request.into_inner();
        self.install(&mut stream, authenticated)
            .await
            .map_err(|(from, e)| self.fail(RPC, from, e))
    }
}
