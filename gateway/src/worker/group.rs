//! A group's notification is due: the pending events become one notification action that
//! runs on through the rules after the group rule (it can never re-enter that rule).
//!
//! At least once: the batch stays in the backend as "being sent" until
//! `group_flush_end`, so a replica that dies while sending leaves it for the next claim.

use serde_json::{Value, json};

use super::task::FlushGroup;
use super::{Done, observe_lateness};
use crate::action::Action;
use crate::delivery::threads::Conversation;
use crate::pipeline::Gateway;
use crate::rules::group::GroupMeta;
use crate::state::{ClaimedTimer, GroupBatch, unix_ms};

pub(super) async fn flush(gateway: &Gateway, task: FlushGroup, timer: &ClaimedTimer) -> Done {
    observe_lateness(gateway, "flush_group", timer.due_ms);
    let state = &gateway.state;
    let batch = match gateway.state_call(state.group_flush_begin(&task.key)).await {
        Ok(Some(batch)) => batch,
        // The group expired or was already sent: nothing to do.
        Ok(None) => return Done::Complete,
        Err(e) => return e.into(),
    };
    let meta: GroupMeta = match serde_json::from_slice(&batch.meta) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(group = ?task.key, error = %e, "group with unreadable metadata dropped");
            return Done::Complete;
        }
    };
    let action = notification(&meta, &batch, &task.key);
    // The group's notifications are one conversation (a provider may update or thread).
    let resumed =
        Conversation::group(&task.key).scope(gateway.resume(action, &meta.after, "group"));
    if let Err(e) = resumed.await {
        return e.into();
    }
    gateway
        .metrics
        .group_flushes
        .with_label_values(&[if batch.repeat { "repeat" } else { "flush" }])
        .inc();
    let repeat_at = task.repeat_ms.map(|r| unix_ms() + r);
    let interval = std::time::Duration::from_millis(task.interval_ms);
    let end = state.group_flush_end(&task.key, &timer.id, &timer.claim, interval, repeat_at);
    match gateway.state_call(end).await {
        Ok(true) => Done::Settled,
        Ok(false) => {
            gateway.metrics.worker_claims_lost.inc();
            tracing::warn!(group = ?task.key, "group claim lost after sending: another replica may send it again");
            Done::Settled
        }
        Err(e) => e.into(),
    }
}

/// The group notification: same namespace, tenant and action type as the grouped events,
/// delivered to the rule's `notifyProvider` or the events' provider.
fn notification(meta: &GroupMeta, batch: &GroupBatch, key: &str) -> Action {
    let events: Vec<Value> = batch
        .events
        .iter()
        .map(|e| serde_json::from_slice(e).unwrap_or(Value::Null))
        .collect();
    let omitted = batch.event_count.saturating_sub(events.len() as u64);
    let flushed_at = chrono::Utc::now();
    Action {
        id: format!("{}-{}", batch.group_id, flushed_at.timestamp_millis()),
        namespace: meta.namespace.clone(),
        tenant: meta.tenant.clone(),
        provider: meta.provider.clone(),
        action_type: meta.action_type.clone(),
        payload: json!({
            "group_id": batch.group_id,
            "group_key": key,
            "labels": meta.labels,
            "event_count": batch.event_count,
            "events": events,
            "omitted": omitted,
            "repeat": batch.repeat,
            "flushed_at": flushed_at,
        }),
        created_at: Some(flushed_at),
        metadata: Default::default(),
        dedup_key: None,
        status: None,
        fingerprint: None,
        // The flush task's span, a child of the trace of the batch's first action.
        trace: crate::trace::current(),
    }
}
