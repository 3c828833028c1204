//! The Acteon condition grammar, as written in Rule manifests (camelCase operators).
//!
//! A condition is a tree: `all` / `any` / `not` combine nodes; leaves check a field
//! (`field: action.payload.x` plus exactly one operator), look at shared state
//! (`stateSeen`, `stateCounter`), hold while an event of a StateMachine is active
//! (`inhibitedBy`), or call a state function (`call` + `args`: `has_active_event`,
//! `event_in_state`).
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
    /// The sliding-window count of the throttle Rule `rule` (in the rule's scope), for
    /// the window of `key` (the throttle's key template) over `window_seconds` (default:
    /// the throttle's own window), compared with `op`.
    StateCounter {
        rule: String,
        key: Option<String>,
        window_seconds: Option<u64>,
        op: FieldOp,
    },
    /// Holds while an event of a StateMachine is active and agrees with the action on the
    /// `equal` fields (Alertmanager's inhibition).
    InhibitedBy(Inhibition),
    Call {
        function: String,
        args: Vec<Value>,
    },
}

/// `inhibitedBy`: an event of `stateMachine` that is active (in no terminal state) and
/// whose action had the same values as this action in every `equal` field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Inhibition {
    pub state_machine: String,
    #[serde(default)]
    pub equal: Vec<String>,
}

/// The inhibition function that reads as an `inhibitedBy` leaf.
pub const HAS_ACTIVE_EVENT: &str = "has_active_event";

/// `event_in_state([machine,] fingerprint, state)`: whether an event is in a state.
pub const EVENT_IN_STATE: &str = "event_in_state";

/// A call `event_in_state(fingerprint, state)` or `event_in_state(machine, fingerprint,
/// state)`: holds while the event with that fingerprint (of the action's namespace and
/// tenant) of the StateMachine — of any StateMachine the action's namespace sees, when
/// none is named — is recorded in `state` (and has not expired).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventInState {
    pub state_machine: Option<String>,
    /// A field path starting with `action.` (the fingerprint is that field's value), or a
    /// literal fingerprint.
    pub fingerprint: String,
    pub state: String,
}

impl EventInState {
    /// The field path the fingerprint is read from, when it is one.
    pub fn fingerprint_path(&self) -> Option<&str> {
        self.fingerprint
            .starts_with("action.")
            .then_some(self.fingerprint.as_str())
    }
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
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    window_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inhibited_by: Option<Inhibition>,
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
        if self.inhibited_by.is_some() {
            kinds.push("inhibitedBy");
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
                    "a condition needs one of `all`, `any`, `not`, `field`, `stateSeen`, `stateCounter`, `inhibitedBy` or `call`",
                )
            } else {
                err(format!(
                    "a condition has exactly one of `all`, `any`, `not`, `field`, `stateSeen`, `stateCounter`, `inhibitedBy`, `call`; found {}",
                    kinds.join(", ")
                ))
            });
        }
        let ops = raw.take_ops();
        let within = raw.within_seconds.take();
        let counter_key = raw.key.take();
        let window = raw.window_seconds.take();
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
        if raw.state_counter.is_none() {
            if counter_key.is_some() {
                return Err(err("`key` only goes with `stateCounter`"));
            }
            if window.is_some() {
                return Err(err("`windowSeconds` only goes with `stateCounter`"));
            }
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
        if let Some(rule) = raw.state_counter {
            let mut ops = one_op("stateCounter", ops)?;
            if ops.len() > 1 {
                return Err(err("`stateCounter` takes exactly one operator"));
            }
            return Ok(Condition::StateCounter {
                rule,
                key: counter_key,
                window_seconds: window,
                op: ops.remove(0),
            });
        }
        if let Some(inhibition) = raw.inhibited_by {
            no_ops("inhibitedBy")?;
            return Ok(Condition::InhibitedBy(inhibition));
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
            Condition::StateCounter {
                rule,
                key,
                window_seconds,
                op,
            } => {
                raw.state_counter = Some(rule);
                raw.key = key;
                raw.window_seconds = window_seconds;
                raw.set_op(op);
            }
            Condition::InhibitedBy(inhibition) => raw.inhibited_by = Some(inhibition),
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

    /// The inhibition this leaf checks: an `inhibitedBy` leaf, or a call
    /// `has_active_event(machine, field)` (the machine's active events that agree with
    /// the action on that field). `None` for other nodes and malformed calls.
    pub fn as_inhibition(&self) -> Option<Inhibition> {
        match self {
            Condition::InhibitedBy(i) => Some(i.clone()),
            Condition::Call { function, args } if function == HAS_ACTIVE_EVENT => {
                match args.as_slice() {
                    [Value::String(machine), Value::String(field)] => Some(Inhibition {
                        state_machine: machine.clone(),
                        equal: vec![field.clone()],
                    }),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The event check this leaf makes: a call `event_in_state` with two or three
    /// string arguments. `None` for other nodes and malformed calls.
    pub fn as_event_in_state(&self) -> Option<EventInState> {
        let Condition::Call { function, args } = self else {
            return None;
        };
        if function != EVENT_IN_STATE {
            return None;
        }
        let text = |v: &Value| v.as_str().map(str::to_owned);
        match args.as_slice() {
            [fp, state] => Some(EventInState {
                state_machine: None,
                fingerprint: text(fp)?,
                state: text(state)?,
            }),
            [machine, fp, state] => Some(EventInState {
                state_machine: Some(text(machine)?),
                fingerprint: text(fp)?,
                state: text(state)?,
            }),
            _ => None,
        }
    }

    /// Whether this node, or one below it, reads shared state.
    pub fn reads_state(&self) -> bool {
        let mut found = false;
        self.walk(&mut |c| {
            found |= matches!(
                c,
                Condition::StateSeen { .. }
                    | Condition::StateCounter { .. }
                    | Condition::InhibitedBy(_)
            ) || c.as_inhibition().is_some()
                || c.as_event_in_state().is_some();
        });
        found
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
            {"stateCounter": "pager", "key": "{{action.payload.service}}", "windowSeconds": 60, "gte": 10},
            {"inhibitedBy": {"stateMachine": "cluster-events", "equal": ["action.payload.cluster"]}},
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
        assert!(
            parse(json!({"field": "x", "eq": 1, "key": "k"}))
                .unwrap_err()
                .contains("`key` only goes with `stateCounter`")
        );
        assert!(
            parse(json!({"inhibitedBy": {"stateMachine": "m"}, "eq": 1}))
                .unwrap_err()
                .contains("`eq` is not allowed next to `inhibitedBy`")
        );
        assert!(
            parse(json!({"inhibitedBy": {"stateMachine": "m", "equals": []}}))
                .unwrap_err()
                .contains("unknown field `equals`")
        );
    }

    #[test]
    fn inhibitions_are_read_from_leaves_and_calls() {
        let leaf = parse(json!({"inhibitedBy": {"stateMachine": "m"}})).unwrap();
        assert_eq!(
            leaf.as_inhibition(),
            Some(Inhibition {
                state_machine: "m".into(),
                equal: vec![]
            })
        );
        let call = parse(json!({"call": "has_active_event", "args": ["m", "payload.c"]})).unwrap();
        assert_eq!(
            call.as_inhibition(),
            Some(Inhibition {
                state_machine: "m".into(),
                equal: vec!["payload.c".into()]
            })
        );
        let other = parse(json!({"call": "event_in_state", "args": ["f", "s"]})).unwrap();
        assert_eq!(other.as_inhibition(), None);
        assert!(other.reads_state(), "event_in_state reads an event");
        assert_eq!(
            other.as_event_in_state(),
            Some(EventInState {
                state_machine: None,
                fingerprint: "f".into(),
                state: "s".into()
            })
        );
        let named =
            parse(json!({"call": "event_in_state", "args": ["m", "action.fingerprint", "s"]}));
        let named = named.unwrap().as_event_in_state().unwrap();
        assert_eq!(named.state_machine.as_deref(), Some("m"));
        assert_eq!(named.fingerprint_path(), Some("action.fingerprint"));
        let bad = parse(json!({"call": "event_in_state", "args": ["f", 1]})).unwrap();
        assert_eq!(bad.as_event_in_state(), None);
        let nested = parse(json!({"all": [{"field": "x", "eq": 1}, {"not": {"stateSeen": "k"}}]}));
        assert!(nested.unwrap().reads_state());
        assert!(!parse(json!({"field": "x", "eq": 1})).unwrap().reads_state());
    }
}
