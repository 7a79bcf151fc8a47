//! Limits at the edge of the gRPC port: how many connections a node holds (in total and per
//! client address), how many requests each connection and each client address may have in
//! flight, how long a connection may take to send its first request, how long a client read or
//! write may take, and which answer an oversized message gets.
//!
//! Why: before these, the only bound was tonic's per-connection concurrency limit, which queues
//! (holding each stream's memory) rather than refuses, and nothing bounded connections, idle or
//! half-open ones, or clients opening many connections. Every limit here is validated config
//! ([`EdgeConfig`]); what is over a bound is refused at once, never queued:
//! - a connection over [`EdgeConfig::connections_max`] or
//!   [`EdgeConfig::connections_per_client_max`] is closed as soon as it is accepted;
//! - a request over [`EdgeConfig::requests_in_flight_per_connection_max`] or
//!   [`EdgeConfig::requests_in_flight_per_client_max`] is answered `RESOURCE_EXHAUSTED` with
//!   `x-switchboard-overloaded: connection` or `client` (so the client library backs off);
//! - a connection that sends no request within [`EdgeConfig::handshake_timeout`] (a client that
//!   never completes the HTTP/2 or TLS handshake, or trickles it) is closed;
//! - a client read or write (the RPC table's `read` and `write` kinds, all unary) still
//!   unanswered after [`EdgeConfig::request_time_max`] is answered `DEADLINE_EXCEEDED` (its
//!   handler is dropped: writes are idempotent by request id);
//! - a request message over its service's decoding bound is `RESOURCE_EXHAUSTED` (tonic says
//!   `OUT_OF_RANGE`; gRPC's convention, and other servers, say `RESOURCE_EXHAUSTED`).
//!
//! The HTTP/2 settings (streams per connection, keepalive) are applied by the server builder
//! ([`EdgeConfig::http2_streams_per_connection_max`] and friends).
//!
//! How it composes: [`Edge::admit`] wraps any accepted stream (TCP now; a TLS acceptor can run
//! on the admitted stream, so that refused connections cost no handshake) and forwards its
//! `Connected` info; [`EdgeLayer`] is a tower layer over the routes that finds the request's
//! connection by the remote address in tonic's connect info ([`remote_addr`] is the one place
//! that reads it). The internal Raft service is not counted against its client address (peers
//! share addresses with nothing but must never be refused because a client on the same host is
//! busy); its connections and their in-flight requests are bounded like any other.
//!
//! Must not: hold a lock across an await, or queue a request.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::observe::names;

/// Default most connections held by the gRPC port at once (the systemd unit allows 65,536
/// open files; each idle HTTP/2 connection holds a few tens of KiB).
pub const CONNECTIONS_MAX: usize = 16_384;
/// Default most connections from one client address (peers and clients alike): room for a
/// client host's connection pool (the overload test and the benchmark open 200-256 from one
/// address), not for a flood.
pub const CONNECTIONS_PER_CLIENT_MAX: usize = 1_024;
/// Default most requests in flight on one connection (a request is in flight until its
/// response body ends).
pub const REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX: usize = 256;
/// Default most requests in flight from one client address, over all its connections.
pub const REQUESTS_IN_FLIGHT_PER_CLIENT_MAX: usize = 1_024;
/// Default HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`: twice the in-flight bound, so that a
/// client over the in-flight bound hears `RESOURCE_EXHAUSTED` instead of queueing its streams.
pub const HTTP2_STREAMS_PER_CONNECTION_MAX: u32 = 512;
/// Default interval of HTTP/2 keepalive pings on an idle connection.
pub const HTTP2_KEEPALIVE_INTERVAL_MS: u64 = 10_000;
/// Default wait for a keepalive ping's answer before the connection is closed.
pub const HTTP2_KEEPALIVE_TIMEOUT_MS: u64 = 20_000;
/// Default longest time from accepting a connection to its first request.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Default longest time of a client read or write: above the write timeout and the read wait
/// (5 s each by default), which answer first in the ordinary case.
pub const REQUEST_TIME_MS_MAX: u64 = 30_000;
/// Default largest request message of the cluster service (status, membership, snapshots): its
/// requests are ids, an address and a region, a few hundred bytes.
pub const CLUSTER_MESSAGE_BYTES_MAX: usize = 64 << 10;
/// Pause after a failed `accept` (out of file descriptors): retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Table callback: every public RPC's path with its kind (`read`, `write`, `leader`, `pinned`).
macro_rules! rpc_path_kinds {
    (package $package:literal ($_module:ident); $(service $service:ident ($($_modules:tt)*) {
        $($(#[$_doc:meta])* $rpc:ident $_method:ident ($_req:ident) -> $_resp:ident
            [$kind:ident, $($_how:tt)*])*
    })*) => {
        &[$($((
            concat!("/", $package, ".", stringify!($service), "/", stringify!($rpc)),
            stringify!($kind),
        ),)*)*]
    };
}

/// The public RPCs, by path, with their kinds.
const RPC_PATH_KINDS: &[(&str, &str)] = proto::switchboard_rpcs!(rpc_path_kinds);

/// Whether `path` is a client read or write, whose time the edge bounds. Cluster
/// administration is not bounded here: `AddLearner` waits for the learner to catch up, which
/// may rightly take longer; the client's own deadline bounds it.
fn time_bounded(path: &str) -> bool {
    RPC_PATH_KINDS
        .iter()
        .any(|(p, kind)| *p == path && matches!(*kind, "read" | "write"))
}

/// The header that tells a client its request was refused for load, not for what it asked.
const OVERLOADED_HEADER: &str = client::OVERLOADED_HEADER;

/// Validated edge limits (see the module documentation for what each refuses and how).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeConfig {
    pub connections_max: usize,
    pub connections_per_client_max: usize,
    pub requests_in_flight_per_connection_max: usize,
    pub requests_in_flight_per_client_max: usize,
    pub http2_streams_per_connection_max: u32,
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    pub handshake_timeout: Duration,
    pub request_time_max: Duration,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            connections_max: CONNECTIONS_MAX,
            connections_per_client_max: CONNECTIONS_PER_CLIENT_MAX,
            requests_in_flight_per_connection_max: REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX,
            requests_in_flight_per_client_max: REQUESTS_IN_FLIGHT_PER_CLIENT_MAX,
            http2_streams_per_connection_max: HTTP2_STREAMS_PER_CONNECTION_MAX,
            http2_keepalive_interval: Duration::from_millis(HTTP2_KEEPALIVE_INTERVAL_MS),
            http2_keepalive_timeout: Duration::from_millis(HTTP2_KEEPALIVE_TIMEOUT_MS),
            handshake_timeout: Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
            request_time_max: Duration::from_millis(REQUEST_TIME_MS_MAX),
        }
    }
}

/// Why a connection was closed as soon as it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionRefused {
    #[error("{max} connections are open, the bound of --connections-max")]
    Total { max: usize },
    #[error("{client} has {max} connections open, the bound of --connections-per-client-max")]
    PerClient { client: IpAddr, max: usize },
}

impl ConnectionRefused {
    fn reason(&self) -> &'static str {
        match self {
            ConnectionRefused::Total { .. } => "connections",
            ConnectionRefused::PerClient { .. } => "connections_per_client",
        }
    }
}

/// Why a request was refused before it reached its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestRefused {
    #[error("{max} requests are in flight on this connection, the bound of --grpc-concurrency-max")]
    PerConnection { max: usize },
    #[error(
        "{max} requests are in flight from this client address, the bound of \
         --requests-in-flight-per-client-max"
    )]
    PerClient { max: usize },
}

impl RequestRefused {
    /// The `x-switchboard-overloaded` value and the metric's `reason`.
    fn class(&self) -> &'static str {
        match self {
            RequestRefused::PerConnection { .. } => "connection",
            RequestRefused::PerClient { .. } => "client",
        }
    }
}

/// One admitted connection, as the request layer sees it.
#[derive(Debug, Default)]
struct Connection {
    in_flight: usize,
    /// Set by the first request; until then the connection's reads run against the handshake
    /// deadline. Read without the lock by [`Admitted::poll_read`].
    first_request: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct Client {
    connections: usize,
    in_flight: usize,
}

#[derive(Debug, Default)]
struct Tables {
    connections: HashMap<SocketAddr, Connection>,
    clients: HashMap<IpAddr, Client>,
}

impl Tables {
    fn forget_idle_client(&mut self, ip: IpAddr) {
        if self
            .clients
            .get(&ip)
            .is_some_and(|c| c.connections == 0 && c.in_flight == 0)
        {
            self.clients.remove(&ip);
        }
    }
}

#[derive(Debug)]
struct Shared {
    config: EdgeConfig,
    /// Held only for table updates, never across an await. Its size is bounded by the
    /// connections and requests it counts.
    tables: Mutex<Tables>,
}

impl Shared {
    fn tables(&self) -> MutexGuard<'_, Tables> {
        // The tables are counters updated in one step each: a panic elsewhere cannot leave
        // them half-written.
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The edge limits of one gRPC port: cheap to clone, shared by the accept loop and the layer.
#[derive(Debug, Clone)]
pub struct Edge {
    shared: Arc<Shared>,
}

/// The address a client is counted under: IPv4-mapped IPv6 addresses count as their IPv4.
fn client_of(addr: SocketAddr) -> IpAddr {
    addr.ip().to_canonical()
}

/// The remote address of the connection a request arrived on, from tonic's connect info.
/// A stream type whose `Connected` info is not `TcpConnectInfo` (a TLS stream) must be added
/// here, or its requests are all counted as one unknown client.
pub fn remote_addr(extensions: &http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<crate::tls::PeerInfo>()
        .and_then(|peer| peer.remote_addr)
        .or_else(|| {
            extensions
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr)
        })
}

impl Edge {
    pub fn new(config: EdgeConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                tables: Mutex::new(Tables::default()),
            }),
        }
    }

    pub fn config(&self) -> &EdgeConfig {
        &self.shared.config
    }

    /// Counts a freshly accepted connection from `remote`, or refuses it over a bound (the
    /// caller drops the stream, closing it). The count is released when the returned stream is
    /// dropped.
    pub fn admit<IO>(&self, io: IO, remote: SocketAddr) -> Result<Admitted<IO>, ConnectionRefused> {
        let config = &self.shared.config;
        let client = client_of(remote);
        let first_request = {
            let mut tables = self.shared.tables();
            if tables.connections.len() >= config.connections_max {
                return Err(ConnectionRefused::Total {
                    max: config.connections_max,
                });
            }
            let count = tables.clients.entry(client).or_default();
            if count.connections >= config.connections_per_client_max {
                tables.forget_idle_client(client);
                return Err(ConnectionRefused::PerClient {
                    client,
                    max: config.connections_per_client_max,
                });
            }
            count.connections += 1;
            let connection = tables.connections.entry(remote).or_default();
            Arc::clone(&connection.first_request)
        };
        metrics::gauge!(names::EDGE_CONNECTIONS).increment(1.0);
        Ok(Admitted {
            io,
            remote,
            edge: self.clone(),
            deadline: Some(Box::pin(tokio::time::sleep(config.handshake_timeout))),
            first_request,
        })
    }

    /// [`Edge::admit`], counting and logging a refusal (the connection is then dropped: closed).
    pub fn admit_counted<IO>(&self, io: IO, remote: SocketAddr) -> Option<Admitted<IO>> {
        match self.admit(io, remote) {
            Ok(admitted) => Some(admitted),
            Err(refused) => {
                metrics::counter!(names::EDGE_REFUSED, "reason" => refused.reason()).increment(1);
                tracing::debug!(%remote, error = %refused, "connection refused");
                None
            }
        }
    }

    /// Accepts connections from `listener` (with `TCP_NODELAY`) and yields those within the
    /// connection bounds; the others are closed at once and counted.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> impl Stream<Item = io::Result<Admitted<TcpStream>>> + use<> {
        let edge = self.clone();
        futures::stream::unfold((listener, edge), |(listener, edge)| async move {
            loop {
                match listener.accept().await {
                    Ok((stream, remote)) => {
                        // TCP_NODELAY on every accepted connection: with Nagle on, a reply
                        // written as several small HTTP/2 frames waits for the peer's delayed
                        // ACK (~40 ms on Linux), a floor under every replicated write and
                        // every client reply.
                        if let Err(e) = stream.set_nodelay(true) {
                            tracing::debug!(error = %e, "failed to set TCP_NODELAY");
                        }
                        match edge.admit(stream, remote) {
                            Ok(admitted) => return Some((Ok(admitted), (listener, edge))),
                            Err(refused) => {
                                metrics::counter!(
                                    names::EDGE_REFUSED,
                                    "reason" => refused.reason()
                                )
                                .increment(1);
                                tracing::debug!(%remote, error = %refused, "connection refused");
                            }
                        }
                    }
                    Err(e) => {
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        return Some((Err(e), (listener, edge)));
                    }
                }
            }
        })
    }

    /// A tonic server builder with the edge's HTTP/2 settings: streams per connection and
    /// keepalive (a client that stops answering pings is dropped).
    pub fn server_builder(&self) -> tonic::transport::Server {
        let config = &self.shared.config;
        tonic::transport::Server::builder()
            .max_concurrent_streams(config.http2_streams_per_connection_max)
            .http2_keepalive_interval(Some(config.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(config.http2_keepalive_timeout))
    }

    /// The tower layer that bounds requests in flight and the time of client reads and writes.
    pub fn layer(&self) -> EdgeLayer {
        EdgeLayer { edge: self.clone() }
    }

    fn release_connection(&self, remote: SocketAddr) {
        let client = client_of(remote);
        let mut tables = self.shared.tables();
        tables.connections.remove(&remote);
        if let Some(count) = tables.clients.get_mut(&client) {
            count.connections = count.connections.saturating_sub(1);
        }
        tables.forget_idle_client(client);
        drop(tables);
        metrics::gauge!(names::EDGE_CONNECTIONS).decrement(1.0);
    }

    /// Takes an in-flight slot of the request's connection and, unless `per_client` is false,
    /// of its client address.
    fn acquire(
        &self,
        remote: Option<SocketAddr>,
        per_client: bool,
    ) -> Result<InFlight, RequestRefused> {
        let config = &self.shared.config;
        let mut tables = self.shared.tables();
        let connection = remote.filter(|addr| tables.connections.contains_key(addr));
        if let Some(connection) = connection.and_then(|addr| tables.connections.get_mut(&addr)) {
            connection.first_request.store(true, Ordering::Release);
            if connection.in_flight >= config.requests_in_flight_per_connection_max {
                return Err(RequestRefused::PerConnection {
                    max: config.requests_in_flight_per_connection_max,
                });
            }
        }
        // Without connect info (not a stream this edge admitted), the requests share one
        // bucket: the bound still holds, if unfairly.
        let client = per_client.then(|| {
            remote
                .map(client_of)
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        });
        if let Some(client) = client {
            let count = tables.clients.entry(client).or_default();
            if count.in_flight >= config.requests_in_flight_per_client_max {
                tables.forget_idle_client(client);
                return Err(RequestRefused::PerClient {
                    max: config.requests_in_flight_per_client_max,
                });
            }
            count.in_flight += 1;
        }
        if let Some(connection) = connection.and_then(|addr| tables.connections.get_mut(&addr)) {
            connection.in_flight += 1;
        }
        Ok(InFlight {
            edge: self.clone(),
            connection,
            client,
        })
    }
}

/// A request's slots; released when the response body ends or is dropped.
#[derive(Debug)]
struct InFlight {
    edge: Edge,
    connection: Option<SocketAddr>,
    client: Option<IpAddr>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut tables = self.edge.shared.tables();
        if let Some(connection) = self
            .connection
            .and_then(|addr| tables.connections.get_mut(&addr))
        {
            connection.in_flight = connection.in_flight.saturating_sub(1);
        }
        if let Some(client) = self.client {
            if let Some(count) = tables.clients.get_mut(&client) {
                count.in_flight = count.in_flight.saturating_sub(1);
            }
            tables.forget_idle_client(client);
        }
    }
}

/// An accepted connection within the bounds: counted until dropped, and closed by its reads
/// failing if no request arrives within the handshake timeout.
#[derive(Debug)]
pub struct Admitted<IO> {
    io: IO,
    remote: SocketAddr,
    edge: Edge,
    /// Until the first request; `None` after it.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    first_request: Arc<AtomicBool>,
}

impl<IO> Admitted<IO> {
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO> Drop for Admitted<IO> {
    fn drop(&mut self) {
        self.edge.release_connection(self.remote);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Admitted<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.first_request.load(Ordering::Acquire) {
            this.deadline = None;
        }
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            metrics::counter!(names::EDGE_REFUSED, "reason" => "handshake_timeout").increment(1);
            tracing::debug!(remote = %this.remote, "no request within the handshake timeout");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request within the handshake timeout",
            )));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Admitted<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: Connected> Connected for Admitted<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Tower layer of [`EdgeService`].
#[derive(Debug, Clone)]
pub struct EdgeLayer {
    edge: Edge,
}

impl<S> tower::Layer<S> for EdgeLayer {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EdgeService {
            inner,
            edge: self.edge.clone(),
        }
    }
}

/// Bounds requests in flight per connection and per client address, bounds the time of client
/// reads and writes, and answers an oversized request message with `RESOURCE_EXHAUSTED`.
#[derive(Debug, Clone)]
pub struct EdgeService<S> {
    inner: S,
    edge: Edge,
}

/// A gRPC answer built here, as an HTTP response (trailers-only).
fn answer(status: Status) -> http::Response<Body> {
    status.into_http()
}

fn refused(refusal: RequestRefused) -> http::Response<Body> {
    metrics::counter!(names::EDGE_REFUSED, "reason" => refusal.class()).increment(1);
    let mut status = Status::resource_exhausted(refusal.to_string());
    if let Ok(value) = refusal.class().parse() {
        status.metadata_mut().insert(OVERLOADED_HEADER, value);
    }
    answer(status)
}

/// Tonic answers a request message over `max_decoding_message_size` with `OUT_OF_RANGE` and
/// this message; gRPC's convention is `RESOURCE_EXHAUSTED`. Pinned by
/// `node/tests/edge_limits.rs`, so a tonic release that words it otherwise fails there.
const TONIC_OVERSIZED: &str = "decoded message length too large";

/// The answer to `response`, with tonic's oversized-message `OUT_OF_RANGE` turned into
/// `RESOURCE_EXHAUSTED` (same message: it names the size and the bound).
fn oversized_as_exhausted(response: http::Response<Body>) -> http::Response<Body> {
    let out_of_range = response
        .headers()
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == b"11");
    if !out_of_range {
        return response;
    }
    match Status::from_header_map(response.headers()) {
        Some(status) if status.message().contains(TONIC_OVERSIZED) => {
            metrics::counter!(names::EDGE_REFUSED, "reason" => "message_bytes").increment(1);
            answer(Status::resource_exhausted(status.message()))
        }
        _ => response,
    }
}

impl<S, B> tower::Service<http::Request<B>> for EdgeService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Body>, S::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let peer = proto::RAFT_RPC_PATHS.contains(&path);
        let bounded = time_bounded(path);
        let remote = remote_addr(request.extensions());
        let in_flight = match self.edge.acquire(remote, !peer) {
            Ok(in_flight) => in_flight,
            Err(refusal) => return Box::pin(std::future::ready(Ok(refused(refusal)))),
        };
        let time_max = self.edge.shared.config.request_time_max;
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = if bounded {
                match tokio::time::timeout(time_max, response).await {
                    Ok(response) => response?,
                    Err(_) => {
                        metrics::counter!(names::EDGE_REFUSED, "reason" => "request_time")
                            .increment(1);
                        return Ok(answer(Status::deadline_exceeded(format!(
                            "request took longer than the bound of {} ms \
                             (--request-time-ms-max)",
                            time_max.as_millis()
                        ))));
                    }
                }
            } else {
                response.await?
            };
            let response = oversized_as_exhausted(response);
            Ok(response.map(|body| {
                Body::new(CountedBody {
                    inner: body,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// A response body that holds its request's in-flight slots until it ends or is dropped.
struct CountedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(config: EdgeConfig) -> Edge {
        Edge::new(config)
    }

    fn addr(ip: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((ip, port))
    }

    #[tokio::test]
    async fn connections_over_the_per_client_bound_are_refused_and_released_on_drop() {
        let edge = edge(EdgeConfig {
            connections_per_client_max: 2,
            ..EdgeConfig::default()
        });
        let first = edge.admit((), addr([10, 0, 0, 1], 1)).expect("first");
        let _second = edge.admit((), addr([10, 0, 0, 1], 2)).expect("second");
        let third = edge.admit((), addr([10, 0, 0, 1], 3));
        assert!(matches!(
            third,
            Err(ConnectionRefused::PerClient { max: 2, .. })
        ));
        // Another client address is not affected.
        edge.admit((), addr([10, 0, 0, 2], 1))
            .expect("other client");
        drop(first);
        edge.admit((), addr([10, 0, 0, 1], 3))
            .expect("a slot freed by the closed connection");
    }

    #[test]
    fn only_client_reads_and_writes_are_time_bounded() {
        assert!(time_bounded("/switchboard.v1.CallService/CreateCall"));
        assert!(time_bounded("/switchboard.v1.EventService/ListEvents"));
        assert!(!time_bounded("/switchboard.v1.ClusterService/AddLearner"));
        assert!(!time_bounded(
            "/switchboard.raft.v1.RaftService/InstallSnapshot"
        ));
        assert!(!time_bounded("/grpc.health.v1.Health/Check"));
    }

    #[tokio::test]
    async fn connections_over_the_total_bound_are_refused() {
        let edge = edge(EdgeConfig {
            connections_max: 1,
            ..EdgeConfig::default()
        });
        let _first = edge.admit((), addr([10, 0, 0, 1], 1)).expect("first");
        assert_eq!(
            edge.admit((), addr([10, 0, 0, 2], 1)).err(),
            Some(ConnectionRefused::Total { max: 1 })
        );
    }

    #[tokio::test]
    async fn requests_over_the_per_connection_bound_are_refused_until_one_ends() {
        let edge = edge(EdgeConfig {
            requests_in_flight_per_connection_max: 2,
            ..EdgeConfig::default()
        });
        let remote = addr([10, 0, 0, 1], 1);
        let _connection = edge.admit((), remote).expect("admitted");
        let first = edge.acquire(Some(remote), true).expect("first");
        let _second = edge.acquire(Some(remote), true).expect("second");
        assert_eq!(
            edge.acquire(Some(remote), true).err(),
            Some(RequestRefused::PerConnection { max: 2 })
        );
        drop(first);
        edge.acquire(Some(remote), true).expect("slot freed");
    }

    #[tokio::test]
    async fn requests_over_the_per_client_bound_are_refused_across_connections_but_not_peers() {
        let edge = edge(EdgeConfig {
            requests_in_flight_per_client_max: 2,
            ..EdgeConfig::default()
        });
        let (a, b) = (addr([10, 0, 0, 1], 1), addr([10, 0, 0, 1], 2));
        let _ca = edge.admit((), a).expect("a");
        let _cb = edge.admit((), b).expect("b");
        let _one = edge.acquire(Some(a), true).expect("one");
        let _two = edge.acquire(Some(b), true).expect("two");
        assert_eq!(
            edge.acquire(Some(b), true).err(),
            Some(RequestRefused::PerClient { max: 2 })
        );
        // Raft traffic is not counted against the address.
        edge.acquire(Some(b), false).expect("peer request");
        // Nor are other addresses.
        edge.acquire(Some(addr([10, 0, 0, 2], 1)), true)
            .expect("other client");
    }

    #[tokio::test]
    async fn counts_return_to_zero_and_tables_forget_idle_clients() {
        let edge = edge(EdgeConfig::default());
        let remote = addr([10, 0, 0, 1], 1);
        let connection = edge.admit((), remote).expect("admitted");
        let request = edge.acquire(Some(remote), true).expect("request");
        drop(request);
        drop(connection);
        let tables = edge.shared.tables();
        assert!(tables.connections.is_empty());
        assert!(tables.clients.is_empty(), "{:?}", tables.clients);
    }

    const HANDSHAKE_TIMEOUT_SHORT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn a_connection_without_a_request_fails_its_reads_after_the_handshake_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let edge = edge(EdgeConfig {
            handshake_timeout: HANDSHAKE_TIMEOUT_SHORT,
            ..EdgeConfig::default()
        });
        let remote = addr([10, 0, 0, 1], 1);
        let (mut client, server) = tokio::io::duplex(64);
        let started = std::time::Instant::now();
        let mut admitted = edge.admit(server, remote).expect("admitted");
        // Part of a preface arrives in time; the rest never does.
        client.write_all(b"PRI * HTTP/2.0").await.expect("write");
        let mut buf = [0u8; 64];
        let mut read = admitted.read(&mut buf).await;
        while let Ok(n) = read {
            assert!(n > 0, "the client never closed its side");
            read = admitted.read(&mut buf).await;
        }
        assert_eq!(read.expect_err("timed out").kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= HANDSHAKE_TIMEOUT_SHORT);
    }

    #[tokio::test]
    async fn a_connection_with_a_request_is_not_timed_out() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let edge = edge(EdgeConfig {
            handshake_timeout: HANDSHAKE_TIMEOUT_SHORT,
            ..EdgeConfig::default()
        });
        let (silent, served) = (addr([10, 0, 0, 1], 1), addr([10, 0, 0, 1], 2));
        let (_silent_client, silent_server) = tokio::io::duplex(64);
        let (mut client, server) = tokio::io::duplex(64);
        let mut silent = edge.admit(silent_server, silent).expect("admitted");
        let mut admitted = edge.admit(server, served).expect("admitted");
        let _request = edge.acquire(Some(served), true).expect("request");
        // The silent connection, admitted with it, times out: the deadline has passed.
        let mut buf = [0u8; 4];
        let timed_out = silent.read(&mut buf).await;
        assert_eq!(
            timed_out.expect_err("timed out").kind(),
            io::ErrorKind::TimedOut
        );
        client.write_all(b"late").await.expect("write");
        admitted
            .read_exact(&mut buf)
            .await
            .expect("read after the deadline");
        assert_eq!(&buf, b"late");
    }
}
