//! A small userspace TCP proxy that delays and throttles a link: this kernel has no netem, so
//! delay and slow links are made here. In a drill, peers reach node `i` through its proxy
//! (`--advertise` names the proxy), so the proxy shapes every Raft message into `i` and its
//! answers. In namespace mode the proxy's listening socket is created inside host `i`'s network
//! namespace, so nftables rules there still see the peer's address.
//!
//! Bounded: at most [`CONNECTIONS_MAX`] connections, [`QUEUE_CHUNKS_MAX`] chunks queued per
//! direction. Dropping a [`Proxy`] stops it and every connection it carries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub const CONNECTIONS_MAX: usize = 256;
pub const QUEUE_CHUNKS_MAX: usize = 256;
const CHUNK_BYTES: usize = 16 * 1024;
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How a link is shaped now; changed at any time by the nemesis.
#[derive(Debug, Default)]
pub struct Shape {
    /// Added to every chunk, each direction.
    pub delay_ms: AtomicU64,
    /// Throughput cap per direction and connection; 0 = none.
    pub bytes_per_sec: AtomicU64,
}

impl Shape {
    pub fn set(&self, delay_ms: u64, bytes_per_sec: u64) {
        self.delay_ms.store(delay_ms, Ordering::Relaxed);
        self.bytes_per_sec.store(bytes_per_sec, Ordering::Relaxed);
    }

    pub fn clear(&self) {
        self.set(0, 0);
    }
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    pub listen: SocketAddr,
    pub shape: Arc<Shape>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` inside the network namespace at `ns_path` (from a short-lived thread that
/// enters it), or in the current namespace when `ns_path` is `None`.
pub fn bind(addr: SocketAddr, ns_path: Option<String>) -> anyhow::Result<std::net::TcpListener> {
    let Some(ns_path) = ns_path else {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        return Ok(listener);
    };
    let handle = std::thread::spawn(move || -> anyhow::Result<std::net::TcpListener> {
        let ns = std::fs::File::open(&ns_path)?;
        // Only this thread moves; the socket keeps its namespace after the thread ends.
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    });
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
}

/// Starts forwarding connections accepted on `listener` to `upstream`.
pub fn start(listener: std::net::TcpListener, upstream: String) -> anyhow::Result<Proxy> {
    let listen = listener.local_addr()?;
    let listener = TcpListener::from_std(listener)?;
    let shape = Arc::new(Shape::default());
    let task = tokio::spawn(accept_loop(listener, upstream, shape.clone()));
    Ok(Proxy {
        listen,
        shape,
        task,
    })
}

async fn accept_loop(listener: TcpListener, upstream: String, shape: Arc<Shape>) {
    let live = Arc::new(AtomicUsize::new(0));
    // Connections live in this set: aborting the accept loop drops it and aborts them all.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((inbound, _)) = accepted else { continue };
                if live.load(Ordering::Relaxed) >= CONNECTIONS_MAX {
                    continue;
                }
                live.fetch_add(1, Ordering::Relaxed);
                let (upstream, shape, live) = (upstream.clone(), shape.clone(), live.clone());
                connections.spawn(async move {
                    carry(inbound, &upstream, shape).await;
                    live.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn carry(inbound: TcpStream, upstream: &str, shape: Arc<Shape>) {
    let Ok(Ok(outbound)) =
        tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream)).await
    else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    tokio::select! {
        _ = pump(in_read, out_write, shape.clone()) => {}
        _ = pump(out_read, in_write, shape) => {}
    }
}

/// Copies one direction, delaying each chunk by the current delay and pacing to the cap.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shape: Arc<Shape>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(QUEUE_CHUNKS_MAX);
    let reader = async move {
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let delay = Duration::from_millis(shape.delay_ms.load(Ordering::Relaxed));
            let paced = match shape.bytes_per_sec.load(Ordering::Relaxed) {
                0 => Duration::ZERO,
                bps => Duration::from_secs_f64(n as f64 / bps as f64),
            };
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .await
                .is_err()
            {
                return;
            }
            if !paced.is_zero() {
                tokio::time::sleep(paced).await;
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            // A deadline already passed (no delay) still waits for the next timer tick, about
            // a millisecond per hop: skip the timer then.
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn forwards_and_delays() {
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let echo_addr = echo.local_addr().expect("echo addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let listener = bind("127.0.0.1:0".parse().expect("addr"), None).expect("bind proxy");
        let proxy = start(listener, echo_addr.to_string()).expect("start proxy");
        proxy.shape.set(100, 0);
        let mut client = TcpStream::connect(proxy.listen).await.expect("connect");
        let started = Instant::now();
        client.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
        // Delayed on the way in and on the way back.
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
    }
}
