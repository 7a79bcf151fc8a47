//! The drill's activity writer: `RecordActivity` batches through the faults, each retried by
//! the client under its own request id until it is answered or the client gives up. What it
//! did is judged by [`crate::checkers::activity_batches`] against the final log.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use client::{Client, ClientConfig};
use proto::v1;

use super::cluster::Reach;
use super::workload::Shared;
use crate::checkers::activity_batches::ActivityBatch;

/// Records per batch.
const RECORDS: u64 = 3;
/// Pause between batches.
const PAUSE: Duration = Duration::from_millis(100);
/// Batches per drill, at most.
const BATCHES_MAX: usize = 2_000;

/// Writes batches until `stop`; returns what happened to each.
pub async fn run(reach: Reach, seed: u64, shared: Arc<Shared>) -> Vec<ActivityBatch> {
    let client = match Client::new(ClientConfig {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(1500),
        ..reach.client_config()
    }) {
        Ok(client) => client,
        Err(error) => {
            println!("   activity writer could not start: {error}");
            return Vec::new();
        }
    };
    let mut batches = Vec::new();
    for n in 0..BATCHES_MAX {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let request_id = format!("activity-{seed}-{n}");
        let entries = (0..RECORDS)
            .map(|k| v1::ActivityEntry {
                activity_type: v1::ActivityType::Progress.into(),
                activity: Some(v1::Activity {
                    agent_type: "drill-agent".to_owned(),
                    agent_name: "Drill agent".to_owned(),
                    project_id: "drill".to_owned(),
                    task_id: format!("{request_id}-{k}"),
                    severity: v1::Severity::Info.into(),
                    status: v1::ActivityStatus::InProgress.into(),
                    ..Default::default()
                }),
                metadata: [("rid".to_owned(), request_id.clone())].into(),
                ..Default::default()
            })
            .collect();
        let answer = client
            .record_activity(v1::RecordActivityRequest {
                tenant_id: super::workload::TENANT.to_owned(),
                request_id: request_id.clone(),
                entries,
            })
            .await;
        batches.push(ActivityBatch {
            request_id,
            records: RECORDS,
            acked: answer.ok().map(|r| (r.first_position, r.last_position)),
        });
        tokio::time::sleep(PAUSE).await;
    }
    batches
}
