//! `schedule`: park the action for a delay; when it is due the worker runs it on through the
//! rules after this one (against the configuration of that moment), then delivers it.
//!
//! The continuation is the timer's own state (the parking rule's place in the rule order),
//! never a flag a client could put into a request.

use std::time::Duration;

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
