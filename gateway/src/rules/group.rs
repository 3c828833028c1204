//! `group`: park the action in a group of actions sharing the `groupBy` values; the worker
//! sends one notification per group after `groupWait`, then at most one per `groupInterval`
//! (Alertmanager's semantics). The notification runs on through the rules after this one.
//!
//! With `repeatIntervalSeconds` the group tells events apart by their `fingerprint`: a
//! known one arriving again is not news but a sign the group is still active, and keeps
//! the last notification repeated every `repeatInterval` (see `GroupAppend`). Events without
//! a fingerprint are always news; a group whose known events stop arriving goes quiet and
//! expires.

use std::time::Duration;

use acteon_api::field::FieldPath;
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::field::{FieldValue, resolve};
use super::key::state_key;
use super::{CompiledRule, EvalInput, RulePlace};
use crate::action::Action;
use crate::state::GroupAppend;
use crate::worker::task::{FlushGroup, Task};

/// Most events one notification carries (validation bounds `maxGroupSize` by it too).
pub const MAX_GROUP_SIZE: u64 = 1000;

/// A compiled `group` rule.
#[derive(Debug)]
pub struct Group {
    /// (path as written, parsed path)
    pub group_by: Vec<(String, FieldPath)>,
    pub wait: Duration,
    pub interval: Duration,
    /// `repeatIntervalSeconds`: re-send the last notification while the group is active.
    pub repeat: Option<Duration>,
    pub max_size: usize,
    pub notify_provider: Option<String>,
}

/// The group an action belongs to: its `groupBy` labels (absent fields are null).
#[derive(Clone, Debug, PartialEq)]
pub struct GroupTarget {
    pub labels: Map<String, Value>,
}

impl Group {
    /// Computes the action's group labels.
    pub fn target(&self, input: &EvalInput<'_>, tz: Option<Tz>) -> GroupTarget {
        let labels = self
            .group_by
            .iter()
            .map(|(name, path)| (name.clone(), label_value(resolve(path, input, tz))))
            .collect();
        GroupTarget { labels }
    }
}

fn label_value(v: FieldValue<'_>) -> Value {
    match v {
        FieldValue::Str(s) => Value::String(s.into_owned()),
        FieldValue::Json(v) => v.clone(),
        FieldValue::Int(i) => Value::from(i),
        FieldValue::Missing => Value::Null,
    }
}

/// What a group remembers from its first event: where its notifications go and where they
/// continue in the rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupMeta {
    pub namespace: String,
    pub tenant: String,
    /// The rule's `notifyProvider`, else the grouped events' provider.
    pub provider: String,
    pub action_type: String,
    pub labels: Map<String, Value>,
    /// The group rule: notifications continue with the rules after it.
    pub after: RulePlace,
    /// The rule's `groupInterval`, for flushing the group on demand.
    pub interval_ms: u64,
}

impl Group {
    /// The backend key of the action's group: per namespace, tenant, rule and labels.
    pub fn key(&self, action: &Action, rule_id: &str, target: &GroupTarget) -> String {
        let labels = Value::Object(target.labels.clone()).to_string();
        state_key("g", &[&action.namespace, &action.tenant, rule_id, &labels])
    }

    /// The append that parks `action` in its group.
    pub fn deferral(
        &self,
        action: &Action,
        rule: &CompiledRule,
        target: &GroupTarget,
    ) -> GroupAppend {
        let key = self.key(action, &rule.id, target);
        let meta = GroupMeta {
            namespace: action.namespace.clone(),
            tenant: action.tenant.clone(),
            provider: self
                .notify_provider
                .clone()
                .unwrap_or_else(|| action.provider.clone()),
            action_type: action.action_type.clone(),
            labels: target.labels.clone(),
            after: rule.place(),
            interval_ms: self.interval.as_millis() as u64,
        };
        let task = Task::FlushGroup(FlushGroup {
            key: key.clone(),
            interval_ms: self.interval.as_millis() as u64,
            repeat_ms: self.repeat.map(|r| r.as_millis() as u64),
            trace: action.trace.clone(),
        });
        GroupAppend {
            timer_id: timer_id(&key),
            key,
            group_id: uuid::Uuid::now_v7().to_string(),
            meta: serde_json::to_vec(&meta).unwrap_or_default(),
            event: serde_json::to_vec(&action.payload).unwrap_or_default(),
            max_events: self.max_size,
            wait: self.wait,
            interval: self.interval,
            // Long enough for a refresh to find the group until its next repeat.
            idle_ttl: self.wait + self.interval.max(self.repeat.unwrap_or_default()),
            timer_payload: task.encode(),
            fingerprint: action.fingerprint.clone(),
            repeat: self.repeat,
        }
    }
}

/// Key prefix of the groups of a namespace (and tenant), for listing.
pub fn key_prefix(namespace: &str, tenant: Option<&str>) -> String {
    let mut prefix = match tenant {
        Some(t) => state_key("g", &[namespace, t]),
        None => state_key("g", &[namespace]),
    };
    prefix.push(':');
    prefix
}

/// The prefix of every group's key, whatever its namespace (see [`key_prefix`]).
pub const ALL_GROUPS: &str = "g:";

/// The id of a group's flush timer.
pub fn timer_id(key: &str) -> String {
    format!("group:{key}")
}
