//! The one wait for an elected leader: ask `ClusterService.Status` of every endpoint, all at
//! once, until their answers show a leader the way the caller needs it ([`Agreement`]).

use std::fmt;
use std::time::{Duration, Instant};

use client::TlsConfig;
use proto::v1::cluster_service_client::ClusterServiceClient;
use proto::v1::{StatusRequest, StatusResponse};
use tonic::transport::{Channel, Endpoint};

use crate::Error;

/// Bound on connecting to one node; a node cut off by a partition must not stall a round.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on one status request; a paused node accepts connections but never answers.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two rounds of status requests.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What counts as "a leader is elected".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agreement {
    /// Every endpoint answers and names the same leader, which is one of them and has
    /// committed its whole log (so the entry opening its term: it serves writes): a cluster
    /// that is fully up and settled (tests, benchmarks, measurements). Followers name a new
    /// leader a moment before it can write; connections between nodes that open with a TLS
    /// handshake make that moment longer.
    Unanimous,
    /// Some endpoint answers that it is the leader (the highest term wins); the others may be
    /// down, cut off, or outside the membership (a wiped node waiting to be added back).
    LeaderOnly,
}

impl fmt::Display for Agreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Agreement::Unanimous => "agreed",
            Agreement::LeaderOnly => "self-declared",
        })
    }
}

/// An elected leader and the term it leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leader {
    pub id: u64,
    pub term: u64,
}

/// What the last round saw, for the error when the wait gives up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastSeen {
    /// This endpoint did not answer (the first that did not, in the caller's order).
    Unanswered {
        endpoint: String,
        code: tonic::Code,
        message: String,
    },
    /// Every endpoint answered; the leader each named, in the caller's order.
    Leaders(Vec<Option<u64>>),
}

impl fmt::Display for LastSeen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LastSeen::Unanswered {
                endpoint,
                code,
                message,
            } => write!(f, "{endpoint}: {code:?}: {message}"),
            LastSeen::Leaders(leaders) => write!(f, "leaders seen: {leaders:?}"),
        }
    }
}

/// One node's answer, as far as the wait cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    node_id: u64,
    leader_id: Option<u64>,
    term: u64,
    /// Everything in the node's log is committed: for a leader, the entry that opens its term
    /// too, so it serves writes (followers may name it a moment before).
    committed_all: bool,
}

/// The leader the answers show under `agreement`, if they show one (`None`: no answer).
fn agreed_leader(agreement: Agreement, answers: &[Option<Seen>]) -> Option<Leader> {
    let self_declared = answers
        .iter()
        .flatten()
        .filter(|s| s.leader_id == Some(s.node_id));
    match agreement {
        Agreement::LeaderOnly => self_declared.max_by_key(|s| s.term).map(|s| Leader {
            id: s.node_id,
            term: s.term,
        }),
        Agreement::Unanimous => {
            let leader = answers.first().copied().flatten()?.leader_id?;
            let all_agree = answers
                .iter()
                .all(|a| a.is_some_and(|s| s.leader_id == Some(leader)));
            if !all_agree {
                return None;
            }
            self_declared
                .filter(|s| s.node_id == leader && s.committed_all)
                .map(|s| Leader {
                    id: s.node_id,
                    term: s.term,
                })
                .next()
        }
    }
}

fn endpoint(addr: &str, tls: Option<&TlsConfig>) -> Result<Endpoint, Error> {
    client::endpoint(addr, tls)
        .map(|e| e.connect_timeout(CONNECT_TIMEOUT).timeout(STATUS_TIMEOUT))
        .map_err(|source| Error::Endpoint {
            endpoint: addr.to_owned(),
            source,
        })
}

/// A `Status` request carrying `token` as its bearer token, when there is one.
fn status_request(token: Option<&str>) -> tonic::Request<StatusRequest> {
    let mut request = tonic::Request::new(StatusRequest {});
    if let Some(value) = token.and_then(|t| client::BearerToken::new(t).header_value()) {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// The cluster as the node at `addr` (`host:port`) sees it: one bounded attempt, over TLS
/// with `tls` (else plaintext, to `--insecure` nodes), with `token` as the bearer token (nodes
/// that require tokens answer nothing without one).
pub async fn status(
    addr: &str,
    tls: Option<&TlsConfig>,
    token: Option<&str>,
) -> Result<StatusResponse, Error> {
    let channel = endpoint(addr, tls)?
        .connect()
        .await
        .map_err(|source| Error::Connect {
            endpoint: addr.to_owned(),
            source,
        })?;
    ClusterServiceClient::new(channel)
        .status(status_request(token))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|source| Error::Status {
            endpoint: addr.to_owned(),
            source,
        })
}

/// Asks every endpoint (`host:port`) for its status until the answers show a leader under
/// `agreement`, for at most `within` (plus one round, itself bounded by the timeouts above).
pub async fn wait_for_leader(
    endpoints: &[String],
    tls: Option<&TlsConfig>,
    token: Option<&str>,
    within: Duration,
    agreement: Agreement,
) -> Result<Leader, Error> {
    if endpoints.is_empty() {
        return Err(Error::NoEndpoints);
    }
    // Lazy channels, kept across rounds: they connect on first use and reconnect after a
    // node restarts, so polling does not open a connection per round.
    let clients = endpoints
        .iter()
        .map(|addr| {
            Ok(ClusterServiceClient::new(
                endpoint(addr, tls)?.connect_lazy(),
            ))
        })
        .collect::<Result<Vec<ClusterServiceClient<Channel>>, Error>>()?;
    let started = Instant::now();
    loop {
        let asks = clients.iter().map(|client| {
            let mut client = client.clone();
            let request = status_request(token);
            async move { client.status(request).await }
        });
        let answers = futures::future::join_all(asks).await;
        let mut seen = Vec::with_capacity(answers.len());
        let mut unanswered = None;
        for (addr, answer) in endpoints.iter().zip(answers) {
            match answer {
                Ok(response) => {
                    let status = response.into_inner();
                    seen.push(Some(Seen {
                        node_id: status.node_id,
                        leader_id: status.leader_id,
                        term: status.term,
                        committed_all: status.committed_index >= status.last_log_index,
                    }));
                }
                Err(e) => {
                    seen.push(None);
                    unanswered.get_or_insert_with(|| LastSeen::Unanswered {
                        endpoint: addr.clone(),
                        code: e.code(),
                        message: e.message().to_owned(),
                    });
                }
            }
        }
        if let Some(leader) = agreed_leader(agreement, &seen) {
            return Ok(leader);
        }
        let last = unanswered.unwrap_or_else(|| {
            LastSeen::Leaders(seen.iter().map(|s| s.and_then(|s| s.leader_id)).collect())
        });
        if started.elapsed() >= within {
            return Err(Error::NoLeader {
                agreement,
                within,
                last,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(node_id: u64, leader_id: Option<u64>, term: u64) -> Option<Seen> {
        Some(Seen {
            node_id,
            leader_id,
            term,
            committed_all: true,
        })
    }

    const fn leader(id: u64, term: u64) -> Option<Leader> {
        Some(Leader { id, term })
    }

    #[test]
    fn unanimous_needs_every_answer_naming_the_same_leader_which_answered() {
        use Agreement::Unanimous;
        let settled = [
            node(1, Some(2), 3),
            node(2, Some(2), 3),
            node(3, Some(2), 3),
        ];
        assert_eq!(agreed_leader(Unanimous, &settled), leader(2, 3));
        let one_silent = [node(1, Some(2), 3), node(2, Some(2), 3), None];
        assert_eq!(agreed_leader(Unanimous, &one_silent), None);
        let split = [
            node(1, Some(1), 4),
            node(2, Some(2), 3),
            node(3, Some(1), 4),
        ];
        assert_eq!(agreed_leader(Unanimous, &split), None);
        // Followers still name a leader that was killed: not elected yet.
        let stale = [node(1, Some(3), 3), node(2, Some(3), 3)];
        assert_eq!(agreed_leader(Unanimous, &stale), None);
        let nobody = [node(1, None, 1), node(2, None, 1)];
        assert_eq!(agreed_leader(Unanimous, &nobody), None);
        // Named by all, but its term's first entry is not committed yet: it cannot write.
        let opening = [
            node(1, Some(2), 3),
            Some(Seen {
                committed_all: false,
                ..node(2, Some(2), 3).expect("answer")
            }),
        ];
        assert_eq!(agreed_leader(Unanimous, &opening), None);
    }

    #[test]
    fn leader_only_takes_the_highest_term_node_that_says_it_leads() {
        use Agreement::LeaderOnly;
        let cut_off = [node(1, Some(1), 5), None, node(3, None, 0)];
        assert_eq!(agreed_leader(LeaderOnly, &cut_off), leader(1, 5));
        let deposed = [
            node(1, Some(1), 4),
            node(2, Some(2), 5),
            node(3, Some(2), 5),
        ];
        assert_eq!(agreed_leader(LeaderOnly, &deposed), leader(2, 5));
        // Naming a leader is not enough: the leader itself must say so.
        let hearsay = [node(1, Some(2), 5), None];
        assert_eq!(agreed_leader(LeaderOnly, &hearsay), None);
        assert_eq!(agreed_leader(LeaderOnly, &[None, None]), None);
    }

    #[test]
    fn the_last_round_seen_reads_well_in_the_error() {
        let error = Error::NoLeader {
            agreement: Agreement::Unanimous,
            within: Duration::from_secs(30),
            last: LastSeen::Leaders(vec![Some(1), None]),
        };
        assert_eq!(
            error.to_string(),
            "no agreed leader within 30s (leaders seen: [Some(1), None])"
        );
        let last = LastSeen::Unanswered {
            endpoint: "127.0.0.1:7101".to_owned(),
            code: tonic::Code::Unavailable,
            message: "connection refused".to_owned(),
        };
        assert_eq!(
            last.to_string(),
            "127.0.0.1:7101: Unavailable: connection refused"
        );
    }

    #[tokio::test]
    async fn waiting_on_no_endpoint_is_an_error_at_once() {
        let error = wait_for_leader(
            &[],
            None,
            None,
            Duration::from_secs(60),
            Agreement::Unanimous,
        )
        .await;
        assert!(matches!(error, Err(Error::NoEndpoints)));
    }

    #[tokio::test]
    async fn a_wait_on_a_closed_port_gives_up_naming_the_endpoint() {
        // Bound then dropped: nothing listens there for the test's short life.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind a loopback port");
        let endpoints = [addr.to_string()];
        let error = wait_for_leader(
            &endpoints,
            None,
            None,
            Duration::from_millis(200),
            Agreement::LeaderOnly,
        )
        .await
        .expect_err("nothing listens");
        let message = error.to_string();
        assert!(
            message.starts_with("no self-declared leader within 200ms ("),
            "{message}"
        );
        assert!(message.contains(&addr.to_string()), "{message}");
    }
}
