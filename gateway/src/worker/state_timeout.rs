//! A state timed out: the event moves on, once, unless it left that state since the
//! timeout was armed (the move requires the event's armed timeout to be this timer).

use serde_json::json;

use super::task::StateTimeout;
use super::{Done, observe_lateness};
use crate::action::Action;
use crate::pipeline::Gateway;
use crate::pipeline::park::for_timeout;
use crate::rules::state_machine::EventRecord;
use crate::state::unix_ms;

pub(super) async fn fire(gateway: &Gateway, task: StateTimeout, timer_id: &str) -> Done {
    observe_lateness(gateway, "state_timeout", task.due_ms);
    let rt = gateway.config.load();
    if !rt.loaded {
        return Done::Retry("no configuration snapshot yet".into());
    }
    let Some(machine) = rt.machines.by_id(&task.machine) else {
        tracing::info!(machine = ?task.machine, "state timeout of a StateMachine that no longer exists: dropped");
        return Done::Complete;
    };
    // The event keeps the record of the action that last moved it: the inhibition sets of
    // this move (and of later ones) are computed from its fields.
    let stored = match gateway.state_call(gateway.state.get_event(&task.key)).await {
        Ok(info) => info.and_then(|e| serde_json::from_slice::<EventRecord>(&e.record).ok()),
        Err(e) => return e.into(),
    };
    let record = stored.unwrap_or_else(|| EventRecord {
        namespace: task.namespace.clone(),
        tenant: task.tenant.clone(),
        machine: task.machine.clone(),
        provider: task.provider.clone(),
        action_type: task.action_type.clone(),
        payload: json!({"fingerprint": task.fingerprint, "timed_out": task.state}),
        metadata: Default::default(),
        dedup_key: None,
    });
    let sets = rt
        .rules
        .inhibitions()
        .active_sets(&machine.id, &record.action(&task.fingerprint));
    let cause = format!("{timer_id}:fired");
    let t = machine.moving(
        task.key.clone(),
        &task.fingerprint,
        Some(task.to.clone()),
        &record,
        &cause,
        unix_ms(),
        sets,
    );
    let t = for_timeout(t, timer_id, &task.state);
    let t = machine.with_notice(
        t,
        timeout_notification(&task),
        &task.provider,
        &cause,
        unix_ms(),
    );
    let result = match gateway.move_event(t).await {
        Ok(result) => result,
        Err(e) => return e.into(),
    };
    gateway.count_transition(machine, &task.to, &result);
    Done::Complete
}

/// Whether an action id is one [`timeout_notification`] made (the audit trail's source).
pub(super) fn is_timeout_notification(id: &str) -> bool {
    id.contains(TIMEOUT_ID_MARK)
}

const TIMEOUT_ID_MARK: &str = ":timeout:";

/// The notification of a timeout move: the event's namespace, tenant and action type.
fn timeout_notification(task: &StateTimeout) -> Action {
    Action {
        id: format!("{}{TIMEOUT_ID_MARK}{}", task.fingerprint, task.due_ms),
        namespace: task.namespace.clone(),
        tenant: task.tenant.clone(),
        provider: task.provider.clone(),
        action_type: task.action_type.clone(),
        payload: json!({
            "fingerprint": task.fingerprint,
            "machine": task.machine,
            "previous_state": task.state,
            "new_state": task.to,
            "reason": "timeout",
        }),
        created_at: Some(chrono::Utc::now()),
        metadata: Default::default(),
        dedup_key: None,
        status: Some(task.to.clone()),
        fingerprint: Some(task.fingerprint.clone()),
        trace: crate::trace::current().or_else(|| task.trace.clone()),
    }
}
