//! `chaos-tests relay`: a TCP relay that forwards fixed routes, each with an added delay, so a
//! compose cluster can have inter-region latency on a kernel without netem. Every route is one
//! [`crate::proxy`] (`LISTEN=UPSTREAM@DELAY_MS`): the delay is added to each direction, and the
//! upstream `host:port` is resolved at every connect, so a name served by the container DNS
//! may come up after the relay.
//!
//! It owns no state beyond the listeners; it must not look at the bytes it carries.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use crate::proxy::{self, Proxy};

/// Most routes one relay carries.
pub const ROUTES_MAX: usize = 64;
/// Largest delay a route may add, per direction.
pub const DELAY_MS_MAX: u64 = 10_000;

/// `chaos-tests relay` options.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    /// `LISTEN=UPSTREAM[@DELAY_MS]`, repeatable: accept on LISTEN (ip:port), forward to
    /// UPSTREAM (host:port, resolved at each connect), adding DELAY_MS to each direction.
    /// E.g. `--route 0.0.0.0:7103=relay-b:7103@20`.
    #[arg(long = "route", required = true, value_parser = Route::from_str)]
    pub routes: Vec<Route>,
}

/// One forwarding rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub listen: SocketAddr,
    /// `host:port`, resolved when a connection is opened.
    pub upstream: String,
    /// Added to each direction.
    pub delay_ms: u64,
}

/// Why a route or a set of routes is refused; the message quotes the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("route {route:?}: expected LISTEN=UPSTREAM[@DELAY_MS]")]
    Shape { route: String },
    #[error("route {route:?}: listen address {listen:?} is not ip:port with a port in 1..=65535")]
    Listen { route: String, listen: String },
    #[error("route {route:?}: upstream {upstream:?} is invalid: {reason}")]
    Upstream {
        route: String,
        upstream: String,
        reason: &'static str,
    },
    #[error("route {route:?}: delay {delay:?} is not a whole number of milliseconds in 0..={max}")]
    Delay {
        route: String,
        delay: String,
        max: u64,
    },
    #[error("no route given: pass --route LISTEN=UPSTREAM[@DELAY_MS] at least once")]
    NoRoutes,
    #[error("{count} routes given, at most {max} are allowed")]
    TooManyRoutes { count: usize, max: usize },
    #[error("listen address {listen} is used by two routes")]
    DuplicateListen { listen: SocketAddr },
}

impl FromStr for Route {
    type Err = RouteError;

    fn from_str(raw: &str) -> Result<Self, RouteError> {
        let route = raw.trim();
        let shape = || RouteError::Shape {
            route: route.to_owned(),
        };
        let (listen, rest) = route.split_once('=').ok_or_else(shape)?;
        if listen.is_empty() || rest.is_empty() || rest.contains('=') {
            return Err(shape());
        }
        let listen_addr = listen
            .parse::<SocketAddr>()
            .ok()
            .filter(|addr| addr.port() != 0)
            .ok_or_else(|| RouteError::Listen {
                route: route.to_owned(),
                listen: listen.to_owned(),
            })?;
        let (upstream, delay) = match rest.rsplit_once('@') {
            Some((upstream, delay)) => (upstream, Some(delay)),
            None => (rest, None),
        };
        check_upstream(upstream).map_err(|reason| RouteError::Upstream {
            route: route.to_owned(),
            upstream: upstream.to_owned(),
            reason,
        })?;
        let delay_ms = match delay {
            None => 0,
            Some(delay) => delay
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms <= DELAY_MS_MAX)
                .ok_or_else(|| RouteError::Delay {
                    route: route.to_owned(),
                    delay: delay.to_owned(),
                    max: DELAY_MS_MAX,
                })?,
        };
        Ok(Self {
            listen: listen_addr,
            upstream: upstream.to_owned(),
            delay_ms,
        })
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.listen, self.upstream)?;
        if self.delay_ms > 0 {
            write!(f, " (+{} ms each way)", self.delay_ms)?;
        }
        Ok(())
    }
}

/// `host:port` (a bracketed IPv6 host is fine); the host is resolved later, at connect.
fn check_upstream(upstream: &str) -> Result<(), &'static str> {
    let (host, port) = upstream.rsplit_once(':').ok_or("expected host:port")?;
    if host.is_empty() {
        return Err("host is empty");
    }
    if host.contains(|c: char| c.is_whitespace() || c == '/' || c == '@') {
        return Err("host contains a space, '/' or '@'");
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err("port must be a number in 1..=65535"),
        Ok(_) => Ok(()),
    }
}

/// Checks a whole set: at least one route, at most [`ROUTES_MAX`], distinct listen addresses.
pub fn validate(routes: &[Route]) -> Result<(), RouteError> {
    if routes.is_empty() {
        return Err(RouteError::NoRoutes);
    }
    if routes.len() > ROUTES_MAX {
        return Err(RouteError::TooManyRoutes {
            count: routes.len(),
            max: ROUTES_MAX,
        });
    }
    let mut seen = BTreeSet::new();
    for route in routes {
        if !seen.insert(route.listen) {
            return Err(RouteError::DuplicateListen {
                listen: route.listen,
            });
        }
    }
    Ok(())
}

/// Running routes; dropping it stops every listener and connection.
#[derive(Debug)]
pub struct Relay {
    /// One proxy per route, in the order given; `listen` is the bound address.
    pub proxies: Vec<Proxy>,
}

impl Relay {
    /// Binds every route first (so a taken port fails before anything is forwarded), then
    /// starts them. Needs a tokio runtime.
    pub fn start(routes: &[Route]) -> anyhow::Result<Self> {
        let mut listeners = Vec::with_capacity(routes.len());
        for route in routes {
            let listener = proxy::bind(route.listen, None)
                .map_err(|e| anyhow::anyhow!("route {route}: failed to listen: {e}"))?;
            listeners.push(listener);
        }
        let mut proxies = Vec::with_capacity(routes.len());
        for (route, listener) in routes.iter().zip(listeners) {
            let proxy = proxy::start(listener, route.upstream.clone())?;
            proxy.shape.set(route.delay_ms, 0);
            proxies.push(proxy);
        }
        Ok(Self { proxies })
    }
}

/// `chaos-tests relay`: forwards until SIGTERM or SIGINT (it is PID 1 in its container, where
/// SIGTERM has no default action, so it must be handled).
pub async fn run(args: RelayArgs) -> anyhow::Result<()> {
    validate(&args.routes)?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let relay = Relay::start(&args.routes)?;
    for route in &args.routes {
        println!("relay: {route}");
    }
    let signal = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    };
    drop(relay);
    println!("relay: stopped on {signal}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::Instant;

    use super::*;

    fn parse(raw: &str) -> Result<Route, RouteError> {
        raw.parse()
    }

    #[test]
    fn route_with_delay_parses() {
        assert_eq!(
            parse("0.0.0.0:7103=relay-b:7103@40"),
            Ok(Route {
                listen: "0.0.0.0:7103".parse().expect("addr"),
                upstream: "relay-b:7103".into(),
                delay_ms: 40,
            })
        );
    }

    #[test]
    fn route_without_delay_has_none() {
        let route = parse("0.0.0.0:7101=node1:7101").expect("valid");
        assert_eq!(route.upstream, "node1:7101");
        assert_eq!(route.delay_ms, 0);
        let v6 = parse("[::]:7101=[::1]:7101@5").expect("valid");
        assert_eq!(v6.upstream, "[::1]:7101");
    }

    #[test]
    fn malformed_routes_name_the_problem() {
        assert!(matches!(
            parse("0.0.0.0:7101"),
            Err(RouteError::Shape { .. })
        ));
        assert!(matches!(
            parse("0.0.0.0:7101=a:1=b:2"),
            Err(RouteError::Shape { .. })
        ));
        assert!(matches!(
            parse("node1:7101=node1:7101"),
            Err(RouteError::Listen { .. })
        ));
        assert!(matches!(
            parse("0.0.0.0:0=node1:7101"),
            Err(RouteError::Listen { .. })
        ));
        for upstream in ["node1", ":7101", "node1:0", "node1:x", "no de:1"] {
            let err = parse(&format!("0.0.0.0:7101={upstream}")).expect_err(upstream);
            assert!(matches!(err, RouteError::Upstream { .. }), "{err}");
        }
        for delay in ["", "-1", "1.5", "10001"] {
            let err = parse(&format!("0.0.0.0:7101=node1:7101@{delay}")).expect_err(delay);
            assert!(matches!(err, RouteError::Delay { .. }), "{err}");
        }
        let message = parse("0.0.0.0:7101=node1:7101@soon")
            .expect_err("bad delay")
            .to_string();
        assert!(message.contains("\"soon\""), "{message}");
    }

    #[test]
    fn route_sets_need_distinct_listen_addresses() {
        assert_eq!(validate(&[]), Err(RouteError::NoRoutes));
        let a = parse("0.0.0.0:7101=node1:7101").expect("valid");
        let b = parse("0.0.0.0:7101=node2:7102").expect("valid");
        assert!(matches!(
            validate(&[a.clone(), b]),
            Err(RouteError::DuplicateListen { .. })
        ));
        assert_eq!(validate(&[a]), Ok(()));
        let many: Vec<Route> = (1..=ROUTES_MAX as u16 + 1)
            .map(|port| parse(&format!("127.0.0.1:{port}=x:1")).expect("valid"))
            .collect();
        assert!(matches!(
            validate(&many),
            Err(RouteError::TooManyRoutes { .. })
        ));
    }

    #[tokio::test]
    async fn forwards_to_a_named_upstream_with_the_delay_each_way() {
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let echo_port = echo.local_addr().expect("echo addr").port();
        let echo_task = tokio::spawn(async move {
            let (mut stream, _) = echo.accept().await.expect("accept");
            let mut buf = [0u8; 64];
            loop {
                let n = stream.read(&mut buf).await.expect("read");
                if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        let delay_ms = 50;
        let route = Route {
            listen: "127.0.0.1:0".parse().expect("addr"),
            // A name, not an address: resolved at connect time.
            upstream: format!("localhost:{echo_port}"),
            delay_ms,
        };
        let relay = Relay::start(&[route]).expect("start relay");
        let mut client = TcpStream::connect(relay.proxies[0].listen)
            .await
            .expect("connect");
        let started = Instant::now();
        client.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).await.expect("read");
        let round_trip = started.elapsed();
        assert_eq!(&buf, b"ping");
        assert!(
            round_trip >= Duration::from_millis(2 * delay_ms),
            "round trip {round_trip:?} is shorter than twice the {delay_ms} ms delay"
        );
        drop(client);
        drop(relay);
        echo_task.abort();
    }
}
