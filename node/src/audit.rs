//! The audit trail: every cluster administration action, with its actor (the token's subject),
//! recorded as an event of the replicated log.
//!
//! Audit events live in the reserved tenant [`AUDIT_TENANT`], on an audit call the leader
//! creates when it records the first action (and again when one fills up: a call holds at most
//! `CALL_EVENTS_MAX` events). Their type is `admin.<action>`; the payload names the action's
//! input and outcome, the metadata its `actor` and `outcome`. No client may write to the
//! reserved tenant, not even an admin ([`crate::auth::AuthError::ReservedTenant`]), so the
//! trail holds only what nodes recorded; admins read it like any tenant's events
//! (`switchboard events list --tenant _cluster`), and the cluster-wide log shows it to admins.
//!
//! An action is recorded after it is done, by the leader that did it, with its outcome. An
//! action served by a follower (a pinned `TriggerSnapshot`) is logged at INFO with its actor
//! and counted, but not in the replicated trail: a follower cannot propose. Erasures record
//! their own `call.erased` event, with the actor, in the erased call's tenant.

use std::collections::BTreeMap;

use domain::{CallId, Command, Payload};
use uuid::Uuid;

use crate::api::Api;
use crate::auth::Caller;
use crate::convert::WriteRequest;
use crate::observe::names;
use crate::status::ApiError;

/// The tenant of audit events; refused as the tenant of any client write.
pub const AUDIT_TENANT: &str = "_cluster";

/// Event type prefix of audit events.
pub const AUDIT_EVENT_PREFIX: &str = "admin.";

impl Api {
    /// Records that `caller` did `action` with `input`, and how it ended. Never fails the
    /// action: a trail that cannot be written is logged as an error (the action is done).
    pub(crate) async fn audit<T>(
        &self,
        caller: &Caller,
        action: &'static str,
        input: serde_json::Value,
        result: &Result<T, ApiError>,
    ) {
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(names::ADMIN_ACTIONS, "action" => action, "outcome" => outcome)
            .increment(1);
        tracing::info!(
            actor = caller.subject(),
            action,
            outcome,
            input = %input,
            "admin action"
        );
        if !self.is_leader() {
            return;
        }
        let mut payload =
            serde_json::json!({ "action": action, "input": input, "outcome": outcome });
        if let Err(error) = result {
            payload["error"] = serde_json::Value::String(error.to_string());
        }
        let metadata = BTreeMap::from([
            ("actor".to_owned(), caller.subject().to_owned()),
            ("outcome".to_owned(), outcome.to_owned()),
        ]);
        if let Err(e) = self
            .record_audit(action, payload.to_string(), metadata)
            .await
        {
            tracing::error!(action, error = %e, "failed to record an admin action in the audit trail");
        }
    }

    async fn record_audit(
        &self,
        action: &'static str,
        payload: String,
        metadata: BTreeMap<String, String>,
    ) -> Result<(), ApiError> {
        // One retry on a new audit call, when the current one is full or gone.
        for fresh in [false, true] {
            let call_id = self.audit_call(fresh).await?;
            let write = WriteRequest {
                tenant_id: AUDIT_TENANT.to_owned(),
                request_id: Uuid::now_v7().to_string(),
                command: Command::LogEvent {
                    call_id,
                    event_type: format!("{AUDIT_EVENT_PREFIX}{action}"),
                    payload: Payload::Json(payload.clone()),
                    metadata: metadata.clone(),
                },
            };
            match self.write(write).await {
                Err(ApiError::Rejected(rejection)) => {
                    tracing::info!(call_id = %call_id, error = %rejection, "the audit call refused the event; starting a new one");
                }
                other => return other.map(|_| ()),
            }
        }
        Err(ApiError::AuditTrail)
    }

    /// The audit call events go to: cached, else the newest of the audit tenant, else (or when
    /// `fresh`) a new one.
    async fn audit_call(&self, fresh: bool) -> Result<CallId, ApiError> {
        if let Some(call_id) = self.cached_audit_call().filter(|_| !fresh) {
            return Ok(call_id);
        }
        let newest = if fresh {
            None
        } else {
            self.off_runtime(|reader| {
                let mut after = None;
                let mut newest = None;
                loop {
                    let page = reader.list_calls(AUDIT_TENANT, None, after, 0)?.value;
                    if let Some(last) = page.items.last() {
                        newest = Some(last.call_id);
                    }
                    match page.next {
                        Some(next) => after = Some(next),
                        None => return Ok(newest),
                    }
                }
            })
            .await?
        };
        let call_id = match newest {
            Some(call_id) => call_id,
            None => {
                let write = WriteRequest {
                    tenant_id: AUDIT_TENANT.to_owned(),
                    request_id: Uuid::now_v7().to_string(),
                    command: Command::CreateCall {
                        source: "switchboard audit trail".to_owned(),
                        channel: domain::Channel::Chat,
                        metadata: BTreeMap::new(),
                        trace_id: None,
                    },
                };
                let call_id = self.write(write).await?.call().call_id;
                // Events go to calls that have started.
                let start = WriteRequest {
                    tenant_id: AUDIT_TENANT.to_owned(),
                    request_id: Uuid::now_v7().to_string(),
                    command: Command::StartCall { call_id },
                };
                self.write(start).await?;
                call_id
            }
        };
        self.cache_audit_call(call_id);
        Ok(call_id)
    }
}
