//! `deduplicate`: at most one successful execution per key within the TTL, across replicas.
//!
//! The key is the rule's template, else the action's `dedup_key`, else (as in Acteon) the
//! action's `id`, scoped by namespace and tenant (not by rule: two rules deduplicating the
//! same key share it). A template that cannot be rendered (a placeholder's field is absent)
//! falls back to the `id` and is reported as a rule error: the action is still delivered
//! once and a retry of it is still deduplicated, never silently dropped. The mark carries a
//! token (when it was set, and by which action) so only the dispatch that set it can
//! release it when delivery fails, and `stateSeen` with `withinSeconds` can read its age.

use std::time::Duration;

use acteon_api::template::KeyTemplate;
use chrono_tz::Tz;

use super::EvalInput;
use super::condition::EvalError;
use super::key::state_key;
use super::template::render;
use crate::state::Gate;

/// Default TTL when the rule sets none (Acteon's default).
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// A compiled `deduplicate` rule.
#[derive(Debug)]
pub struct Dedup {
    pub ttl: Duration,
    pub key: Option<KeyTemplate>,
}

impl Dedup {
    pub fn new(ttl_seconds: Option<u64>, key: Option<KeyTemplate>) -> Dedup {
        Dedup {
            ttl: ttl_seconds.map_or(DEFAULT_TTL, Duration::from_secs),
            key,
        }
    }

    /// Builds the gate; the error says the template could not be rendered and the `id`
    /// was used.
    pub fn gate(&self, input: &EvalInput<'_>, tz: Option<Tz>) -> (Gate, Option<EvalError>) {
        gate(input, tz, self.ttl, self.key.as_ref())
    }
}

fn gate(
    input: &EvalInput<'_>,
    tz: Option<Tz>,
    ttl: Duration,
    key: Option<&KeyTemplate>,
) -> (Gate, Option<EvalError>) {
    let a = input.action;
    let rendered = key.map(|t| render(t, input, tz));
    let (raw, error) = match (&rendered, &a.dedup_key) {
        (Some(Some(k)), _) => (k.as_str(), None),
        (Some(None), _) => (
            a.id.as_str(),
            Some(EvalError::MissingKey(
                "dedup key template has an absent field; keyed by the action id".into(),
            )),
        ),
        (None, Some(k)) => (k.as_str(), None),
        (None, None) => (a.id.as_str(), None),
    };
    let gate = Gate::Dedup {
        key: mark_key(&a.namespace, &a.tenant, raw),
        ttl,
        token: crate::state::dedup_token(input.now.timestamp_millis().max(0) as u64, &a.id),
    };
    (gate, error)
}

/// The backend key of the dedup mark of `key` (what `stateSeen` reads too).
pub fn mark_key(namespace: &str, tenant: &str, key: &str) -> String {
    state_key("d", &[namespace, tenant, key])
}
