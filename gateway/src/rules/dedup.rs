//! `deduplicate`: at most one successful execution per key within the TTL, across replicas.
//!
//! The key is the rule's template, or the action's `dedup_key`, scoped by namespace and
//! tenant (not by rule: two rules deduplicating the same key share it). The mark carries a
//! token so only the dispatch that set it can release it when delivery fails.

use std::time::Duration;

use acteon_api::template::KeyTemplate;
use chrono_tz::Tz;

use super::EvalInput;
use super::template::render;
use crate::state::Gate;

/// Default TTL when the rule sets none (Acteon's default).
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// Builds the gate, or `None` if the action carries no key for this rule.
pub fn gate(
    input: &EvalInput<'_>,
    tz: Option<Tz>,
    ttl: Option<u64>,
    key: Option<&KeyTemplate>,
) -> Option<Gate> {
    let raw = match key {
        Some(t) => render(t, input, tz)?,
        None => input.action.dedup_key.clone()?,
    };
    let a = input.action;
    Some(Gate::Dedup {
        key: super::scoped_key("d", &a.namespace, &a.tenant, &raw),
        ttl: ttl.map_or(DEFAULT_TTL, Duration::from_secs),
        token: a.id.clone(),
    })
}
