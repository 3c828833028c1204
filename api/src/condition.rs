//! The Acteon condition grammar, as written in Rule manifests (camelCase operators).
//!
//! A condition is a tree: `all` / `any` / `not` combine nodes; leaves check a field
//! (`field: action.payload.x` plus exactly one operator), look at shared state
//! (`stateSeen`, `stateCounter`) or call an inhibition function (`call` + `args`).
//! Acteon rule files spell operators in snake_case; [`crate::compile::acteon`] rewrites
//! them to this form before deserializing, so both formats share one type.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One node of a rule condition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawCondition", into = "RawCondition")]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    Field {
        field: String,
        op: FieldOp,
    },
    StateSeen {
        key: String,
        within_seconds: Option<u64>,
    },
    StateCounter {
        key: String,
        op: FieldOp,
    },
    Call {
        function: String,
        args: Vec<Value>,
    },
}

/// A comparison applied to a field or counter value.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldOp {
    Eq(Value),
    Ne(Value),
    Gt(Value),
    Gte(Value),
    Lt(Value),
    Lte(Value),
    Contains(Value),
    StartsWith(String),
    EndsWith(String),
    Matches(String),
    InList(Vec<Value>),
    Exists(bool),
}

impl FieldOp {
    /// The operator's name as written in manifests.
    pub fn name(&self) -> &'static str {
        match self {
            FieldOp::Eq(_) => "eq",
            FieldOp::Ne(_) => "ne",
            FieldOp::Gt(_) => "gt",
            FieldOp::Gte(_) => "gte",
            FieldOp::Lt(_) => "lt",
            FieldOp::Lte(_) => "lte",
            FieldOp::Contains(_) => "contains",
            FieldOp::StartsWith(_) => "startsWith",
            FieldOp::EndsWith(_) => "endsWith",
            FieldOp::Matches(_) => "matches",
            FieldOp::InList(_) => "inList",
            FieldOp::Exists(_) => "exists",
        }
    }
}

/// The wire form: a map with optional keys, validated into [`Condition`].
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCondition {
    #[serde(skip_serializing_if = "Option::is_none")]
    all: Option<Vec<Condition>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    any: Option<Vec<Condition>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    not: Option<Box<Condition>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_seen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    within_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_counter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    call: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    args: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eq: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ne: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gt: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gte: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lt: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lte: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    contains: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    starts_with: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ends_with: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    matches: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    in_list: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exists: Option<bool>,
}

/// Why a condition map is not a valid condition.
#[derive(Debug)]
pub struct ConditionError(String);

impl fmt::Display for ConditionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl RawCondition {
    /// Takes the operators out, so leftovers can be detected.
    fn take_ops(&mut self) -> Vec<FieldOp> {
        let mut ops = Vec::new();
        let mut push = |op: Option<FieldOp>| ops.extend(op);
        push(self.eq.take().map(FieldOp::Eq));
        push(self.ne.take().map(FieldOp::Ne));
        push(self.gt.take().map(FieldOp::Gt));
        push(self.gte.take().map(FieldOp::Gte));
        push(self.lt.take().map(FieldOp::Lt));
        push(self.lte.take().map(FieldOp::Lte));
        push(self.contains.take().map(FieldOp::Contains));
        push(self.starts_with.take().map(FieldOp::StartsWith));
        push(self.ends_with.take().map(FieldOp::EndsWith));
        push(self.matches.take().map(FieldOp::Matches));
        push(self.in_list.take().map(FieldOp::InList));
        push(self.exists.take().map(FieldOp::Exists));
        ops
    }

    fn set_op(&mut self, op: FieldOp) {
        match op {
            FieldOp::Eq(v) => self.eq = Some(v),
            FieldOp::Ne(v) => self.ne = Some(v),
            FieldOp::Gt(v) => self.gt = Some(v),
            FieldOp::Gte(v) => self.gte = Some(v),
            FieldOp::Lt(v) => self.lt = Some(v),
            FieldOp::Lte(v) => self.lte = Some(v),
            FieldOp::Contains(v) => self.contains = Some(v),
            FieldOp::StartsWith(v) => self.starts_with = Some(v),
            FieldOp::EndsWith(v) => self.ends_with = Some(v),
            FieldOp::Matches(v) => self.matches = Some(v),
            FieldOp::InList(v) => self.in_list = Some(v),
            FieldOp::Exists(v) => self.exists = Some(v),
        }
    }

    fn kinds_present(&self) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        if self.all.is_some() {
            kinds.push("all");
        }
        if self.any.is_some() {
            kinds.push("any");
        }
        if self.not.is_some() {
            kinds.push("not");
        }
        if self.field.is_some() {
            kinds.push("field");
        }
        if self.state_seen.is_some() {
            kinds.push("stateSeen");
        }
        if self.state_counter.is_some() {
            kinds.push("stateCounter");
        }
        if self.call.is_some() {
            kinds.push("call");
        }
        kinds
    }
}

fn err(msg: impl Into<String>) -> ConditionError {
    ConditionError(msg.into())
}

/// Several operators on one field mean all of them must hold (Acteon's reading).
fn field_check(field: String, ops: Vec<FieldOp>) -> Condition {
    let mut checks: Vec<Condition> = ops
        .into_iter()
        .map(|op| Condition::Field {
            field: field.clone(),
            op,
        })
        .collect();
    if checks.len() == 1 {
        checks.remove(0)
    } else {
        Condition::All(checks)
    }
}

impl TryFrom<RawCondition> for Condition {
    type Error = ConditionError;

    fn try_from(mut raw: RawCondition) -> Result<Self, Self::Error> {
        let kinds = raw.kinds_present();
        if kinds.len() != 1 {
            return Err(if kinds.is_empty() {
                err(
                    "a condition needs one of `all`, `any`, `not`, `field`, `stateSeen`, `stateCounter` or `call`",
                )
            } else {
                err(format!(
                    "a condition has exactly one of `all`, `any`, `not`, `field`, `stateSeen`, `stateCounter`, `call`; found {}",
                    kinds.join(", ")
                ))
            });
        }
        let ops = raw.take_ops();
        let within = raw.within_seconds.take();
        let args = raw.args.take();
        let no_ops = |what: &str| -> Result<(), ConditionError> {
            if ops.is_empty() {
                Ok(())
            } else {
                Err(err(format!(
                    "operator `{}` is not allowed next to `{what}`",
                    ops[0].name()
                )))
            }
        };
        let one_op = |what: &str, ops: Vec<FieldOp>| -> Result<Vec<FieldOp>, ConditionError> {
            if ops.is_empty() {
                Err(err(format!(
                    "`{what}` needs an operator: one of eq, ne, gt, gte, lt, lte, contains, startsWith, endsWith, matches, inList, exists"
                )))
            } else {
                Ok(ops)
            }
        };
        if within.is_some() && raw.state_seen.is_none() {
            return Err(err("`withinSeconds` only goes with `stateSeen`"));
        }
        if args.is_some() && raw.call.is_none() {
            return Err(err("`args` only goes with `call`"));
        }
        if let Some(all) = raw.all {
            no_ops("all")?;
            return Ok(Condition::All(all));
        }
        if let Some(any) = raw.any {
            no_ops("any")?;
            return Ok(Condition::Any(any));
        }
        if let Some(not) = raw.not {
            no_ops("not")?;
            return Ok(Condition::Not(not));
        }
        if let Some(field) = raw.field {
            return Ok(field_check(field, one_op("field", ops)?));
        }
        if let Some(key) = raw.state_seen {
            no_ops("stateSeen")?;
            return Ok(Condition::StateSeen {
                key,
                within_seconds: within,
            });
        }
        if let Some(key) = raw.state_counter {
            let mut ops = one_op("stateCounter", ops)?;
            if ops.len() > 1 {
                return Err(err("`stateCounter` takes exactly one operator"));
            }
            return Ok(Condition::StateCounter {
                key,
                op: ops.remove(0),
            });
        }
        let function = raw.call.unwrap_or_default();
        no_ops("call")?;
        Ok(Condition::Call {
            function,
            args: args.unwrap_or_default(),
        })
    }
}

impl From<Condition> for RawCondition {
    fn from(c: Condition) -> Self {
        let mut raw = RawCondition::default();
        match c {
            Condition::All(v) => raw.all = Some(v),
            Condition::Any(v) => raw.any = Some(v),
            Condition::Not(v) => raw.not = Some(v),
            Condition::Field { field, op } => {
                raw.field = Some(field);
                raw.set_op(op);
            }
            Condition::StateSeen {
                key,
                within_seconds,
            } => {
                raw.state_seen = Some(key);
                raw.within_seconds = within_seconds;
            }
            Condition::StateCounter { key, op } => {
                raw.state_counter = Some(key);
                raw.set_op(op);
            }
            Condition::Call { function, args } => {
                raw.call = Some(function);
                raw.args = Some(args);
            }
        }
        raw
    }
}

impl Condition {
    /// Visits every node, depth first.
    pub fn walk<'a>(&'a self, visit: &mut impl FnMut(&'a Condition)) {
        visit(self);
        match self {
            Condition::All(v) | Condition::Any(v) => v.iter().for_each(|c| c.walk(visit)),
            Condition::Not(c) => c.walk(visit),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Condition, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn nested_condition_round_trips() {
        let src = json!({"all": [
            {"field": "action.tenant", "eq": "t"},
            {"not": {"field": "action.payload.device_id", "startsWith": "test-"}},
            {"any": [{"field": "action.payload.v", "inList": [1, 2]}, {"field": "action.payload.w", "exists": true}]},
            {"stateSeen": "k", "withinSeconds": 5},
            {"stateCounter": "c", "gt": 3},
            {"call": "has_active_event", "args": ["cluster_down", "action.metadata.cluster"]}
        ]});
        let cond = parse(src.clone()).unwrap();
        assert_eq!(serde_json::to_value(&cond).unwrap(), src);
    }

    #[test]
    fn two_operators_on_one_field_mean_both() {
        let cond = parse(json!({"field": "action.payload.v", "gt": 1, "lt": 5})).unwrap();
        let Condition::All(parts) = cond else {
            panic!("expected all")
        };
        assert_eq!(parts.len(), 2);
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(
            parse(json!({"field": "x"}))
                .unwrap_err()
                .contains("needs an operator")
        );
        assert!(
            parse(json!({"field": "x", "all": []}))
                .unwrap_err()
                .contains("found all, field")
        );
        assert!(
            parse(json!({"field": "x", "equals": 1}))
                .unwrap_err()
                .contains("unknown field `equals`")
        );
        assert!(
            parse(json!({"all": [], "eq": 1}))
                .unwrap_err()
                .contains("`eq` is not allowed")
        );
        assert!(parse(json!({})).unwrap_err().contains("needs one of"));
    }
}
