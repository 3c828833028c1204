//! A scheduled action is due: it runs on through the rules after its schedule rule, in the
//! configuration of this moment, and is delivered (or stopped, or parked again) from there.

use super::task::FireSchedule;
use super::{Done, observe_lateness};
use crate::pipeline::Gateway;

pub(super) async fn fire(gateway: &Gateway, task: FireSchedule) -> Done {
    observe_lateness(gateway, "fire_schedule", task.due_ms);
    let mut action = task.action;
    // Work that follows (a delivery, a parking again) is under this task's span.
    if let Some(ctx) = crate::trace::current() {
        action.trace = Some(ctx);
    }
    match gateway.resume(action, &task.after, "schedule").await {
        Ok(_) => Done::Complete,
        Err(e) => e.into(),
    }
}
