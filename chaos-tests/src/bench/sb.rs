//! Switchboard under the benchmark workload: one write RPC per transition, either on raw tonic
//! clients pointed at the leader (no client-library overhead) or through the client library
//! (`client::Client`: leader cache, redirects, retries with the same request id).

use std::time::Duration;

use client::{Client, ClientConfig};
use proto::v1::call_service_client::CallServiceClient;
use proto::v1::{
    self, AppendTurnRequest, Channel, Consistency, CreateCallRequest, EndCallRequest,
    GetCallRequest, ReadOptions, RequestHandoffRequest, StartCallRequest, Urgency,
};

use super::workload::{self, Op};

/// Timeout of one benchmark request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection of the benchmark's pool.
#[derive(Debug, Clone)]
pub enum SbConn {
    Raw(CallServiceClient<harness::AuthChannel>),
    Library(Client),
}

/// `size` raw connections (one HTTP/2 connection each) spread round-robin over `addrs`.
pub async fn raw_pool(
    addrs: &[String],
    tls: Option<&client::TlsConfig>,
    token: Option<&str>,
    size: usize,
) -> anyhow::Result<Vec<SbConn>> {
    let mut pool = Vec::with_capacity(size);
    for i in 0..size.max(1) {
        let channel = client::endpoint(&addrs[i % addrs.len()], tls)?
            .connect_timeout(Duration::from_secs(5))
            .timeout(REQUEST_TIMEOUT)
            .connect()
            .await?;
        let channel = tonic::service::interceptor::InterceptedService::new(
            channel,
            harness::Bearer::new(token),
        );
        pool.push(SbConn::Raw(CallServiceClient::new(channel)));
    }
    Ok(pool)
}

/// `size` independent library clients (each with its own channels) of the cluster's client
/// configuration (`ProcessCluster::client_config`).
pub fn library_pool(config: &ClientConfig, size: usize) -> anyhow::Result<Vec<SbConn>> {
    (0..size.max(1))
        .map(|_| {
            let client = Client::new(ClientConfig {
                request_timeout: REQUEST_TIMEOUT,
                call_deadline: REQUEST_TIMEOUT * 2,
                ..config.clone()
            })?;
            Ok(SbConn::Library(client))
        })
        .collect()
}

/// What the Switchboard driver knows about one virtual call.
#[derive(Debug)]
pub struct SbCall {
    pub seq: u64,
    /// Minted by the leader at create.
    pub call_id: String,
    pub turns: u32,
    /// Prefix of this call's request ids (unique per run).
    pub request_prefix: String,
    step: u32,
}

impl SbCall {
    pub fn new(seq: u64, run: &str) -> Self {
        Self {
            seq,
            call_id: String::new(),
            turns: 0,
            request_prefix: format!("{run}-{seq}"),
            step: 0,
        }
    }

    fn request_id(&mut self) -> String {
        self.step += 1;
        format!("{}-{}", self.request_prefix, self.step)
    }
}

fn timed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(REQUEST_TIMEOUT);
    request
}

fn spoken_at_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs `op` on `call` as one write RPC.
pub async fn step(conn: &mut SbConn, call: &mut SbCall, op: Op) -> anyhow::Result<()> {
    let tenant_id = workload::TENANT.to_owned();
    let request_id = call.request_id();
    let call_id = call.call_id.clone();
    match op {
        Op::Create => {
            let req = CreateCallRequest {
                tenant_id,
                request_id,
                source: workload::source(call.seq),
                channel: Channel::Voice.into(),
                metadata: workload::METADATA
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                trace_id: None,
            };
            let response = match conn {
                SbConn::Raw(c) => c.create_call(timed(req)).await?.into_inner(),
                SbConn::Library(c) => c.create_call(req).await?,
            };
            call.call_id = response
                .call
                .map(|c| c.call_id)
                .ok_or_else(|| anyhow::anyhow!("create answered without a call"))?;
        }
        Op::Start => {
            let req = StartCallRequest {
                tenant_id,
                request_id,
                call_id,
            };
            match conn {
                SbConn::Raw(c) => drop(c.start_call(timed(req)).await?),
                SbConn::Library(c) => drop(c.start_call(req).await?),
            }
        }
        Op::Turn => {
            let n = call.turns + 1;
            let req = AppendTurnRequest {
                tenant_id,
                request_id,
                call_id,
                speaker: workload::speaker(n).to_owned(),
                text: workload::turn_text(call.seq, n),
                confidence: workload::TURN_CONFIDENCE,
                language: workload::TURN_LANGUAGE.to_owned(),
                spoken_at_ms: spoken_at_ms(),
            };
            match conn {
                SbConn::Raw(c) => drop(c.append_turn(timed(req)).await?),
                SbConn::Library(c) => drop(c.append_turn(req).await?),
            }
            call.turns = n;
        }
        Op::Handoff => {
            let req = RequestHandoffRequest {
                tenant_id,
                request_id,
                call_id,
                reason: workload::HANDOFF_REASON.to_owned(),
                urgency: Urgency::High.into(),
                target: Some(workload::HANDOFF_TARGET.to_owned()),
            };
            match conn {
                SbConn::Raw(c) => drop(c.request_handoff(timed(req)).await?),
                SbConn::Library(c) => drop(c.request_handoff(req).await?),
            }
        }
        Op::End => {
            let req = EndCallRequest {
                tenant_id,
                request_id,
                call_id,
                reason: workload::END_REASON.to_owned(),
                resolution: workload::END_RESOLUTION.to_owned(),
            };
            match conn {
                SbConn::Raw(c) => drop(c.end_call(timed(req)).await?),
                SbConn::Library(c) => drop(c.end_call(req).await?),
            }
        }
    }
    Ok(())
}

/// Reads one call at `consistency` (raw connections only).
pub async fn read(
    conn: &mut SbConn,
    call_id: &str,
    consistency: Consistency,
) -> anyhow::Result<()> {
    let req = GetCallRequest {
        tenant_id: workload::TENANT.to_owned(),
        call_id: call_id.to_owned(),
        read: Some(ReadOptions {
            consistency: consistency.into(),
            min_index: 0,
        }),
    };
    let response: v1::GetCallResponse = match conn {
        SbConn::Raw(c) => c.get_call(timed(req)).await?.into_inner(),
        SbConn::Library(c) => c.get_call(req).await?,
    };
    anyhow::ensure!(response.call.is_some(), "call {call_id} not found");
    Ok(())
}
