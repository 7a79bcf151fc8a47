//! Accepting connections on a public port: TCP, then (unless `--insecure`) the TLS handshake,
//! each in its own bounded task so that a slow client cannot hold up the others.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::{HANDSHAKE_TIMEOUT, HANDSHAKES_IN_FLIGHT_MAX, IdentityError, NodeIdentity, Tls, names};

/// Accepted connections waiting for the server to take them.
const ACCEPTED_QUEUE_MAX: usize = 64;
/// Pause after a failed `accept` (say, out of file descriptors) before the next one.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Which port a listener serves: picks the ALPN protocol and labels the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Grpc,
    Http,
}

impl Port {
    fn label(self) -> &'static str {
        match self {
            Port::Grpc => "grpc",
            Port::Http => "http",
        }
    }
}

/// What a request handler knows of the connection it came on (a request extension).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote_addr: Option<SocketAddr>,
    /// Whether the connection is TLS; `false` only under `--insecure`.
    pub tls: bool,
    /// The client's certificate chain, verified against the cluster CA during the handshake;
    /// empty when the client presented none.
    pub certs: Arc<[CertificateDer<'static>]>,
    /// The node identity the client's certificate names, if any.
    pub node: Result<Option<NodeIdentity>, IdentityError>,
}

/// What an accepted TCP connection becomes before TLS: itself (the HTTP port), or the gRPC
/// port's edge-admitted connection (`crate::edge::Admitted`), bounded per client and in total.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

/// An accepted connection: plaintext (`--insecure`) or TLS.
#[derive(Debug)]
pub struct Conn<IO = TcpStream> {
    stream: Stream<IO>,
    info: PeerInfo,
}

#[derive(Debug)]
enum Stream<IO> {
    Plain(IO),
    Tls(Box<tokio_rustls::server::TlsStream<IO>>),
}

impl<IO> Conn<IO> {
    pub fn info(&self) -> &PeerInfo {
        &self.info
    }
}

impl<IO: Transport> tonic::transport::server::Connected for Conn<IO> {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl<IO: Transport> AsyncRead for Conn<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<IO: Transport> AsyncWrite for Conn<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Accepts on `listener` until `shutdown`: returns the stream of ready connections (for
/// tonic's `serve_with_incoming_shutdown`, or [`HttpListener`]) and the accept loop, which the
/// caller runs. With `tls` `None` (`--insecure`) connections are plaintext.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    port: Port,
    shutdown: CancellationToken,
) -> (
    ReceiverStream<io::Result<Conn>>,
    impl Future<Output = ()> + Send + 'static,
) {
    incoming_admitted(listener, tls, port, shutdown, |tcp, _| Some(tcp))
}

/// [`incoming`], with every accepted TCP connection first passed to `admit` (before its TLS
/// handshake): `None` closes it at once.
pub fn incoming_admitted<IO: Transport>(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    port: Port,
    shutdown: CancellationToken,
    admit: impl Fn(TcpStream, SocketAddr) -> Option<IO> + Send + 'static,
) -> (
    ReceiverStream<io::Result<Conn<IO>>>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE_MAX);
    (
        ReceiverStream::new(rx),
        accept_loop(listener, tls, port, tx, shutdown, admit),
    )
}

async fn accept_loop<IO: Transport>(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    port: Port,
    tx: mpsc::Sender<io::Result<Conn<IO>>>,
    shutdown: CancellationToken,
    admit: impl Fn(TcpStream, SocketAddr) -> Option<IO>,
) {
    let mut handshakes = JoinSet::new();
    loop {
        if handshakes.len() >= HANDSHAKES_IN_FLIGHT_MAX {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = handshakes.join_next() => continue,
            }
        }
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(port = port.label(), %error, "failed to accept a connection");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        // TCP_NODELAY on every accepted connection: with Nagle on, a reply written as several
        // small HTTP/2 frames waits for the peer's delayed ACK (~40 ms on Linux), a floor
        // under every replicated write and every client reply.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%remote, %error, "failed to set TCP_NODELAY");
        }
        let Some(tcp) = admit(tcp, remote) else {
            continue;
        };
        let Some(tls) = &tls else {
            let conn = Conn {
                stream: Stream::Plain(tcp),
                info: PeerInfo {
                    remote_addr: Some(remote),
                    tls: false,
                    certs: Arc::from(Vec::new()),
                    node: Ok(None),
                },
            };
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
            continue;
        };
        let material = tls.current();
        let config = match port {
            Port::Grpc => material.grpc.clone(),
            Port::Http => material.http.clone(),
        };
        let tx = tx.clone();
        handshakes.spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    metrics::counter!(names::TLS_HANDSHAKE_FAILURES_TOTAL, "port" => port.label())
                        .increment(1);
                    tracing::debug!(port = port.label(), %remote, %error, "tls handshake failed");
                    return;
                }
                Err(_) => {
                    metrics::counter!(names::TLS_HANDSHAKE_FAILURES_TOTAL, "port" => port.label())
                        .increment(1);
                    tracing::debug!(port = port.label(), %remote, "tls handshake timed out");
                    return;
                }
            };
            let certs: Arc<[CertificateDer<'static>]> = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_else(|| Arc::from(Vec::new()));
            let node = match certs.first() {
                Some(leaf) => NodeIdentity::from_cert(leaf),
                None => Ok(None),
            };
            let conn = Conn {
                stream: Stream::Tls(Box::new(stream)),
                info: PeerInfo {
                    remote_addr: Some(remote),
                    tls: true,
                    certs,
                    node,
                },
            };
            // The server is gone when this fails: nothing is left to serve the connection.
            let _ = tx.send(Ok(conn)).await;
        });
    }
}

/// [`incoming`] as an axum listener, for the HTTP port.
#[derive(Debug)]
pub struct HttpListener {
    incoming: mpsc::Receiver<io::Result<Conn>>,
    local_addr: SocketAddr,
}

impl HttpListener {
    pub fn new(incoming: ReceiverStream<io::Result<Conn>>, local_addr: SocketAddr) -> Self {
        Self {
            incoming: incoming.into_inner(),
            local_addr,
        }
    }
}

impl axum::serve::Listener for HttpListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        loop {
            match self.incoming.recv().await {
                Some(Ok(conn)) => {
                    let addr = conn.info.remote_addr.unwrap_or(self.local_addr);
                    return (conn, addr);
                }
                Some(Err(_)) => continue,
                // The accept loop stopped (shutdown): wait for the graceful shutdown to end
                // the server.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}
