//! `throttle`: a true sliding window per rule × namespace × tenant (× optional key).
//!
//! The backend keeps the pass times of the window; a pass is counted only when the whole
//! dispatch passes its gates, so rejected attempts never consume budget, and `retry_after`
//! is exactly the time until the oldest counted pass leaves the window.

use std::time::Duration;

use acteon_api::template::KeyTemplate;
use chrono_tz::Tz;

use super::EvalInput;
use super::template::render;
use crate::state::Gate;

/// Builds the gate; `None` when the key template cannot be rendered for this action.
pub fn gate(
    input: &EvalInput<'_>,
    tz: Option<Tz>,
    rule_id: &str,
    max_count: u64,
    window_seconds: u64,
    key: Option<&KeyTemplate>,
) -> Option<Gate> {
    let a = input.action;
    // The common case (no key template) builds the key with a single allocation.
    let suffix: std::borrow::Cow<'_, str> = match key {
        Some(t) => format!("{rule_id}:{}", render(t, input, tz)?).into(),
        None => rule_id.into(),
    };
    Some(Gate::Throttle {
        key: super::scoped_key("t", &a.namespace, &a.tenant, &suffix),
        limit: max_count,
        window: Duration::from_secs(window_seconds),
    })
}
