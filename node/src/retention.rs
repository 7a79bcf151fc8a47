//! Activity retention for tenants that stopped writing: the leader proposes `CompactActivity`
//! for every tenant whose oldest activity record is past its retention, every
//! `RETENTION_CHECK_EVERY`, until none is.
//!
//! Which records go is decided by the state machine, deterministically, at the entry's index
//! (`domain::activity`); this task only says when to look. Records written keep the bound on
//! their own entries; this covers the age bound of a tenant with no new records.

use std::time::Duration;

use domain::Command;
use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::convert::WriteRequest;
use crate::observe::names;

/// How often the leader looks for tenants past their retention.
pub const RETENTION_CHECK_EVERY: Duration = Duration::from_secs(30);
/// Tenants compacted per look.
const TENANTS_PER_CHECK_MAX: usize = 64;
/// Compactions proposed per tenant and look (each removes at most
/// `ACTIVITY_COMPACT_PER_ENTRY_MAX` records).
const COMPACTIONS_PER_TENANT_MAX: usize = 50;

pub async fn run(api: Api, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(RETENTION_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if !api.is_leader() {
            continue;
        }
        if let Err(error) = compact_due(&api).await {
            tracing::warn!(%error, "activity retention pass failed; retried at the next check");
        }
    }
}

async fn compact_due(api: &Api) -> Result<(), crate::status::ApiError> {
    let now_ms = crate::api::now_ms();
    let due = api
        .off_runtime(move |reader| {
            reader
                .retention_due(now_ms, TENANTS_PER_CHECK_MAX)
                .map_err(raft_store::ReadError::from)
        })
        .await?;
    for tenant in due {
        for _ in 0..COMPACTIONS_PER_TENANT_MAX {
            let written = api
                .write(WriteRequest {
                    tenant_id: tenant.clone(),
                    request_id: uuid::Uuid::now_v7().to_string(),
                    command: Command::CompactActivity,
                })
                .await?;
            let receipt = written.activity();
            metrics::counter!(names::ACTIVITY_COMPACTED).increment(receipt.compacted);
            if !receipt.more {
                break;
            }
        }
    }
    Ok(())
}
