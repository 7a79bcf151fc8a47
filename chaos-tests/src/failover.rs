//! Failover time: SIGKILL the leader of a 3-node cluster and measure until the first write
//! that succeeds, as a client that knows every endpoint sees it.

use std::time::{Duration, Instant};

use harness::ProcessCluster;
use proto::v1::call_service_client::CallServiceClient;
use proto::v1::{self, Channel};

const LEADER_WAIT: Duration = Duration::from_secs(30);
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);
const RETRY_PAUSE: Duration = Duration::from_millis(10);

fn create(run: usize, attempt: u64) -> v1::CreateCallRequest {
    v1::CreateCallRequest {
        tenant_id: "failover".into(),
        request_id: format!("run-{run}-attempt-{attempt}"),
        source: "drill".into(),
        channel: Channel::Voice.into(),
        ..Default::default()
    }
}

async fn try_write(
    addr: &str,
    tls: Option<&client::TlsConfig>,
    token: Option<&str>,
    request: v1::CreateCallRequest,
) -> bool {
    let Ok(endpoint) = client::endpoint(addr, tls) else {
        return false;
    };
    let Ok(channel) = endpoint.connect_timeout(ATTEMPT_TIMEOUT).connect().await else {
        return false;
    };
    let mut request = tonic::Request::new(request);
    request.set_timeout(ATTEMPT_TIMEOUT);
    if let Some(value) = token.and_then(|t| client::BearerToken::new(t).header_value()) {
        request.metadata_mut().insert("authorization", value);
    }
    CallServiceClient::new(channel)
        .create_call(request)
        .await
        .is_ok()
}

/// One trial: returns the time from SIGKILL to the first acknowledged write.
pub async fn trial(
    binary: &std::path::Path,
    run: usize,
    node_args: &[&str],
) -> anyhow::Result<Duration> {
    let mut cluster = ProcessCluster::start(binary, 3, node_args)?;
    let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
    anyhow::ensure!(
        try_write(
            &cluster.grpc(leader),
            cluster.tls(),
            cluster.admin_token(),
            create(run, 0),
        )
        .await,
        "write before the kill failed"
    );
    let survivors: Vec<String> = cluster
        .nodes
        .keys()
        .filter(|id| **id != leader)
        .map(|id| cluster.grpc(*id))
        .collect();
    cluster.kill(leader)?;
    let killed = Instant::now();
    let mut attempt = 1;
    loop {
        for addr in &survivors {
            if try_write(
                addr,
                cluster.tls(),
                cluster.admin_token(),
                create(run, attempt),
            )
            .await
            {
                return Ok(killed.elapsed());
            }
            attempt += 1;
        }
        anyhow::ensure!(
            killed.elapsed() < LEADER_WAIT,
            "no write succeeded within {LEADER_WAIT:?}"
        );
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Runs `runs` trials and prints each and the summary; returns the durations.
pub async fn measure(runs: usize, node_args: &[String]) -> anyhow::Result<Vec<Duration>> {
    let node_args: Vec<&str> = node_args.iter().map(String::as_str).collect();
    if !node_args.is_empty() {
        println!("node flags: {}", node_args.join(" "));
    }
    let binary = crate::switchboard_binary()?;
    let mut times = Vec::with_capacity(runs);
    for run in 0..runs {
        let took = trial(&binary, run, &node_args).await?;
        println!(
            "run {:>2}: leader SIGKILL -> first successful write: {:>5} ms",
            run + 1,
            took.as_millis()
        );
        times.push(took);
    }
    let mut sorted = times.clone();
    sorted.sort();
    if let (Some(min), Some(max)) = (sorted.first(), sorted.last()) {
        let median = sorted[sorted.len() / 2];
        println!(
            "failover over {} runs: median {} ms, min {} ms, max {} ms",
            sorted.len(),
            median.as_millis(),
            min.as_millis(),
            max.as_millis()
        );
    }
    Ok(times)
}
