//! `schedule`: park the action for a delay; when it is due the worker runs it on through the
//! rules after this one (against the configuration of that moment), then delivers it.
//!
//! The continuation is the timer's own state (the parking rule's place in the rule order),
//! never a flag a client could put into a request.

use std::time::Duration;

use super::CompiledRule;
use super::key::state_key;
use crate::action::Action;
use crate::state::TimerWrite;
use crate::worker::task::{FireSchedule, Task};

/// Longest delay a rule may ask for (validation enforces it; kept here as a guard).
pub const MAX_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);

/// A compiled `schedule` rule.
#[derive(Debug)]
pub struct Schedule {
    pub delay: Duration,
}

impl Schedule {
    pub fn new(delay_seconds: u64) -> Schedule {
        Schedule {
            delay: Duration::from_secs(delay_seconds.clamp(1, MAX_DELAY.as_secs())),
        }
    }
}

impl Schedule {
    /// The timer that parks `action` (its payload already modified) until it is due.
    pub fn deferral(&self, action: &Action, rule: &CompiledRule, now_ms: u64) -> TimerWrite {
        let due_ms = now_ms + self.delay.as_millis() as u64;
        let task = Task::FireSchedule(FireSchedule {
            action: action.clone(),
            after: rule.place(),
            due_ms,
        });
        TimerWrite {
            // Per namespace and action id: a retried dispatch replaces its own timer
            // instead of scheduling the action twice.
            id: format!(
                "schedule:{}",
                state_key("s", &[&action.namespace, &action.tenant, &action.id])
            ),
            due_unix_ms: due_ms,
            payload: task.encode(),
        }
    }
}
