//! `throttle`: a true sliding window per rule × namespace × tenant (× optional key).
//!
//! The backend keeps the pass times of the window; a pass is counted only when the whole
//! dispatch passes its gates, so rejected attempts never consume budget, and `retry_after`
//! is exactly the time until the oldest counted pass leaves the window. An action whose key
//! template cannot be rendered shares the rule's window without a key (it is never
//! unthrottled), and the rule error is reported.

use std::time::Duration;

use acteon_api::template::KeyTemplate;
use chrono_tz::Tz;

use super::EvalInput;
use super::condition::EvalError;
use super::key::state_key;
use super::template::render;
use crate::state::Gate;

/// A compiled `throttle` rule.
#[derive(Debug)]
pub struct Throttle {
    pub max_count: u64,
    pub window_seconds: u64,
    pub key: Option<KeyTemplate>,
}

impl Throttle {
    /// Builds the gate; the error says the key template could not be rendered.
    pub fn gate(
        &self,
        input: &EvalInput<'_>,
        tz: Option<Tz>,
        rule_id: &str,
    ) -> (Gate, Option<EvalError>) {
        gate(
            input,
            tz,
            rule_id,
            self.max_count,
            self.window_seconds,
            self.key.as_ref(),
        )
    }
}

fn gate(
    input: &EvalInput<'_>,
    tz: Option<Tz>,
    rule_id: &str,
    max_count: u64,
    window_seconds: u64,
    key: Option<&KeyTemplate>,
) -> (Gate, Option<EvalError>) {
    let a = input.action;
    let rendered = key.map(|t| render(t, input, tz));
    // The common case (no key template) builds the key with a single allocation.
    let (key, error) = match &rendered {
        None => (window_key(&a.namespace, &a.tenant, rule_id, None), None),
        Some(Some(k)) => (window_key(&a.namespace, &a.tenant, rule_id, Some(k)), None),
        Some(None) => (
            window_key(&a.namespace, &a.tenant, rule_id, None),
            Some(EvalError::MissingKey(
                "throttle key template has an absent field; counted in the rule's unkeyed window"
                    .into(),
            )),
        ),
    };
    let gate = Gate::Throttle {
        key,
        limit: max_count,
        window: Duration::from_secs(window_seconds),
    };
    (gate, error)
}

/// The backend key of a throttle rule's window (what `stateCounter` reads too). A keyed
/// window has one more part than the unkeyed one, so the two can never share a key.
pub fn window_key(namespace: &str, tenant: &str, rule_id: &str, key: Option<&str>) -> String {
    match key {
        None => state_key("t", &[namespace, tenant, rule_id]),
        Some(k) => state_key("t", &[namespace, tenant, rule_id, k]),
    }
}
