//! `group`: park the action in a group of actions sharing the `groupBy` values; the worker
//! sends one notification per group after `groupWait`, then at most one per `groupInterval`
//! (Alertmanager's semantics). The notification runs on through the rules after this one.

use std::time::Duration;

use acteon_api::field::FieldPath;
use chrono_tz::Tz;
use serde_json::{Map, Value};

use super::EvalInput;
use super::field::{FieldValue, resolve};

/// Most events one notification carries (validation bounds `maxGroupSize` by it too).
pub const MAX_GROUP_SIZE: u64 = 1000;

/// A compiled `group` rule.
#[derive(Debug)]
pub struct Group {
    /// (path as written, parsed path)
    pub group_by: Vec<(String, FieldPath)>,
    pub wait: Duration,
    pub interval: Duration,
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
