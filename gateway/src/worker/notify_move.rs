//! The notification of a state-machine move: registered by the backend in the move's own
//! call, sent here, at least once. A retryable failure leaves the claim to expire, so the
//! notification is tried again after the lease (by any replica) until it is sent, fails
//! for good, or is older than [`NotifyMove::GIVE_UP_AFTER_MS`].

use super::Done;
use super::task::NotifyMove;
use crate::audit::AuditSource;
use crate::delivery::threads::Conversation;
use crate::pipeline::Gateway;
use crate::state::unix_ms;

pub(super) async fn send(gateway: &Gateway, task: NotifyMove) -> Done {
    let rt = gateway.config.load();
    if !rt.loaded {
        return Done::Retry("no configuration snapshot yet".into());
    }
    let counted = |label: &str| {
        gateway
            .metrics
            .transition_notifications
            .with_label_values(&[label])
            .inc();
    };
    if rt
        .providers
        .get(&task.action.namespace, &task.provider)
        .is_none()
    {
        counted("provider_not_found");
        tracing::warn!(machine = ?task.machine, provider = ?task.provider, "state machine notification: provider not found; dropped");
        return Done::Complete;
    }
    let started = std::time::Instant::now();
    let dispatched_at = crate::audit::now_micros();
    let call = gateway.call_provider(&rt, &task.action.namespace, &task.provider, &task.action);
    // The event's notifications are one conversation (a provider may update or thread).
    let called = match &task.event {
        Some(event) => Conversation::event(event).scope(call).await,
        None => call.await,
    };
    let result = called.into_result(&task.provider);
    // A timeout's notification is a delivery of its own (a dispatch's move is recorded
    // with the dispatch); each attempt that ends the task is recorded once.
    let audited = |r: Result<(), String>| async {
        if super::state_timeout::is_timeout_notification(&task.action.id) {
            gateway
                .audit_delivery(
                    &task.action,
                    r,
                    "state_machine",
                    AuditSource::StateTimeout,
                    dispatched_at,
                    started,
                )
                .await;
        }
    };
    let e = match result {
        Ok(_) => {
            counted("sent");
            audited(Ok(())).await;
            return Done::Complete;
        }
        Err(e) => e,
    };
    let too_old = unix_ms().saturating_sub(task.moved_ms) > NotifyMove::GIVE_UP_AFTER_MS;
    if e.retryable && !too_old {
        counted("retry");
        return Done::Retry(format!(
            "state machine notification to `{}` failed: {}",
            task.provider, e.code
        ));
    }
    counted("failed");
    audited(Err(format!("{}: {}", e.code, e.message))).await;
    tracing::warn!(machine = ?task.machine, provider = ?task.provider, code = %e.code, too_old, "state machine notification failed; dropped");
    Done::Complete
}
