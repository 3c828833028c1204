//! Conditions compiled for evaluation: regexes built once, literals pre-typed.
//!
//! Absent values never fail a rule open (README, "Absent values"): an absent field, or a
//! path through a non-object, reads as null; `eq`/`ne`/`inList` compare with null; ordering
//! and string operators on null or across types are false; `exists` tests presence. A field
//! check therefore never errs. What still can (a state leaf whose key cannot be formed or
//! whose state was not read, a leaf validation rejects) propagates
//! like CEL's errors: `all` is false if any part is false, else an error; `any` is true if
//! any part is true, else an error. The engine treats an erring rule as not matching,
//! counts it per rule and shows it in dry runs. State leaves are in [`super::state_read`].

use std::cmp::Ordering;
use std::time::Duration;

use acteon_api::condition::{Condition, FieldOp, Inhibition};
use acteon_api::field::FieldPath;
use acteon_api::template::KeyTemplate;
use chrono_tz::Tz;
use regex::Regex;
use serde_json::Value;

use super::EvalInput;
use super::field::{FieldValue, resolve};
use super::state_read::{Fingerprint, LeafContext, StateLeaf};

/// Why a condition could not be evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// A key (dedup key, key template) could not be formed from the action.
    #[error("{0}")]
    MissingKey(String),
    #[error("{0}")]
    Unsupported(String),
    /// A state leaf could not be answered (its state was not read, or the object it
    /// reads does not exist for the action's namespace).
    #[error("{0}")]
    State(String),
    #[error("CEL: {0}")]
    Cel(String),
}

/// A compiled condition node.
#[derive(Debug)]
pub enum Cond {
    All(Vec<Cond>),
    Any(Vec<Cond>),
    Not(Box<Cond>),
    Check {
        path: FieldPath,
        op: Op,
    },
    /// A leaf answered by the state read before evaluation.
    State(StateLeaf),
    /// A leaf this gateway does not run (validation rejects them: unknown calls): a rule
    /// error.
    NeedsState {
        what: String,
    },
}

/// A compiled operator.
#[derive(Debug)]
pub enum Op {
    Eq(Value),
    Ne(Value),
    Cmp {
        op: &'static str,
        rhs: Value,
        accept: fn(Ordering) -> bool,
    },
    Contains(Value),
    StartsWith(String),
    EndsWith(String),
    Matches(Regex),
    InList(Vec<Value>),
    Exists(bool),
}

impl EvalError {
    /// Bounded label for the `reason` of `acteon_rule_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            EvalError::MissingKey(_) => "missing_key",
            EvalError::Unsupported(_) => "unsupported",
            EvalError::State(_) => "state",
            EvalError::Cel(_) => "cel",
        }
    }
}

/// Compile problems the validator would normally have caught already.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CompileError(pub String);

/// Compiles a condition; `ctx` resolves what state leaves read.
pub fn compile(c: &Condition, ctx: &LeafContext<'_>) -> Result<Cond, CompileError> {
    let all = |v: &[Condition]| -> Result<Vec<Cond>, CompileError> {
        v.iter().map(|c| compile(c, ctx)).collect()
    };
    let template = |k: &str| KeyTemplate::parse(k).map_err(|e| CompileError(e.0));
    let paths = |fields: &[String]| -> Result<Vec<FieldPath>, CompileError> {
        fields
            .iter()
            .map(|f| FieldPath::parse(f).map_err(|e| CompileError(e.0)))
            .collect()
    };
    let inhibited = |i: &Inhibition| -> Result<Cond, CompileError> {
        Ok(Cond::State(StateLeaf::inhibited(
            &i.state_machine,
            paths(&i.equal)?,
            ctx,
        )))
    };
    Ok(match c {
        Condition::All(v) => Cond::All(all(v)?),
        Condition::Any(v) => Cond::Any(all(v)?),
        Condition::Not(c) => Cond::Not(Box::new(compile(c, ctx)?)),
        Condition::Field { field, op } => Cond::Check {
            path: FieldPath::parse(field).map_err(|e| CompileError(e.0))?,
            op: compile_op(op)?,
        },
        Condition::StateSeen {
            key,
            within_seconds,
        } => Cond::State(StateLeaf::Seen {
            key: template(key)?,
            within: within_seconds.map(Duration::from_secs),
        }),
        Condition::StateCounter {
            rule,
            key,
            window_seconds,
            op,
        } => Cond::State(StateLeaf::counter(
            rule,
            key.as_deref().map(template).transpose()?,
            window_seconds.map(Duration::from_secs),
            compile_op(op)?,
            ctx,
        )),
        Condition::InhibitedBy(i) => inhibited(i)?,
        // `has_active_event(machine, field)` is an inhibition on that one field.
        Condition::Call { function, .. } => match (c.as_inhibition(), c.as_event_in_state()) {
            (Some(i), _) => inhibited(&i)?,
            (None, Some(check)) => {
                let fingerprint = match check.fingerprint_path() {
                    Some(path) => {
                        Fingerprint::Field(FieldPath::parse(path).map_err(|e| CompileError(e.0))?)
                    }
                    None => Fingerprint::Literal(check.fingerprint.clone()),
                };
                Cond::State(StateLeaf::event_in(&check, fingerprint, ctx))
            }
            (None, None) => Cond::NeedsState {
                what: format!("`{function}`"),
            },
        },
    })
}

fn compile_op(op: &FieldOp) -> Result<Op, CompileError> {
    Ok(match op {
        FieldOp::Eq(v) => Op::Eq(v.clone()),
        FieldOp::Ne(v) => Op::Ne(v.clone()),
        FieldOp::Gt(v) => Op::Cmp {
            op: "gt",
            rhs: v.clone(),
            accept: |o| o == Ordering::Greater,
        },
        FieldOp::Gte(v) => Op::Cmp {
            op: "gte",
            rhs: v.clone(),
            accept: |o| o != Ordering::Less,
        },
        FieldOp::Lt(v) => Op::Cmp {
            op: "lt",
            rhs: v.clone(),
            accept: |o| o == Ordering::Less,
        },
        FieldOp::Lte(v) => Op::Cmp {
            op: "lte",
            rhs: v.clone(),
            accept: |o| o != Ordering::Greater,
        },
        FieldOp::Contains(v) => Op::Contains(v.clone()),
        FieldOp::StartsWith(s) => Op::StartsWith(s.clone()),
        FieldOp::EndsWith(s) => Op::EndsWith(s.clone()),
        FieldOp::Matches(re) => {
            Op::Matches(Regex::new(re).map_err(|e| CompileError(e.to_string()))?)
        }
        FieldOp::InList(v) => Op::InList(v.clone()),
        FieldOp::Exists(b) => Op::Exists(*b),
    })
}

impl Cond {
    pub fn eval(&self, input: &EvalInput<'_>, tz: Option<Tz>) -> Result<bool, EvalError> {
        match self {
            Cond::All(items) => {
                let mut err = None;
                for c in items {
                    match c.eval(input, tz) {
                        Ok(false) => return Ok(false),
                        Ok(true) => {}
                        Err(e) => err = err.or(Some(e)),
                    }
                }
                err.map_or(Ok(true), Err)
            }
            Cond::Any(items) => {
                let mut err = None;
                for c in items {
                    match c.eval(input, tz) {
                        Ok(true) => return Ok(true),
                        Ok(false) => {}
                        Err(e) => err = err.or(Some(e)),
                    }
                }
                err.map_or(Ok(false), Err)
            }
            Cond::Not(c) => c.eval(input, tz).map(|b| !b),
            Cond::Check { path, op } => Ok(apply(op, &resolve(path, input, tz))),
            Cond::State(leaf) => leaf.eval(input, tz),
            Cond::NeedsState { what } => Err(EvalError::Unsupported(format!(
                "{what} is not supported by this gateway"
            ))),
        }
    }

    /// The node's truth when it does not depend on state: `None` when it depends on a
    /// state leaf (or on a function this gateway does not run). `all` is false as soon as
    /// one part is, `any` true as soon as one part is, as [`Cond::eval`] decides them.
    pub fn without_state(&self, input: &EvalInput<'_>, tz: Option<Tz>) -> Option<bool> {
        match self {
            Cond::All(items) | Cond::Any(items) => {
                let decisive = matches!(self, Cond::Any(_));
                let mut unknown = false;
                for c in items {
                    match c.without_state(input, tz) {
                        Some(b) if b == decisive => return Some(decisive),
                        Some(_) => {}
                        None => unknown = true,
                    }
                }
                (!unknown).then_some(!decisive)
            }
            Cond::Not(c) => c.without_state(input, tz).map(|b| !b),
            Cond::Check { path, op } => Some(apply(op, &resolve(path, input, tz))),
            Cond::State(_) | Cond::NeedsState { .. } => None,
        }
    }

    /// Visits every node.
    pub fn walk<'a>(&'a self, visit: &mut impl FnMut(&'a Cond)) {
        visit(self);
        match self {
            Cond::All(v) | Cond::Any(v) => v.iter().for_each(|c| c.walk(visit)),
            Cond::Not(c) => c.walk(visit),
            _ => {}
        }
    }
}

fn as_str<'a>(v: &'a FieldValue<'a>) -> Option<&'a str> {
    match v {
        FieldValue::Str(s) => Some(s),
        FieldValue::Json(Value::String(s)) => Some(s),
        _ => None,
    }
}

fn as_f64(v: &FieldValue<'_>) -> Option<f64> {
    match v {
        FieldValue::Int(i) => Some(*i as f64),
        FieldValue::Json(Value::Number(n)) => n.as_f64(),
        _ => None,
    }
}

/// Absent, or present as JSON null: the two read the same.
fn is_null(v: &FieldValue<'_>) -> bool {
    matches!(v, FieldValue::Missing | FieldValue::Json(Value::Null))
}

/// Equality with numbers compared by value (1 == 1.0); absent equals null; other types
/// must agree.
fn equals(field: &FieldValue<'_>, lit: &Value) -> bool {
    match (field, lit) {
        (FieldValue::Missing, Value::Null) => true,
        (FieldValue::Str(s), Value::String(l)) => s == l,
        (FieldValue::Int(i), Value::Number(n)) => n.as_f64() == Some(*i as f64),
        (FieldValue::Json(Value::Number(a)), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (FieldValue::Json(v), lit) => *v == lit,
        _ => false,
    }
}

/// Numbers numerically, strings lexically; anything else (null, mixed types) has no order.
fn order(field: &FieldValue<'_>, rhs: &Value) -> Option<Ordering> {
    match rhs {
        Value::Number(n) => as_f64(field)?.partial_cmp(&n.as_f64()?),
        Value::String(r) => Some(as_str(field)?.cmp(r.as_str())),
        _ => None,
    }
}

fn contains(field: &FieldValue<'_>, needle: &Value) -> bool {
    match (field, needle) {
        (FieldValue::Json(Value::Array(items)), lit) => {
            items.iter().any(|i| equals(&FieldValue::Json(i), lit))
        }
        (_, Value::String(n)) => as_str(field).is_some_and(|s| s.contains(n.as_str())),
        _ => false,
    }
}

/// Applies an operator to a resolved field. Total: an operator that does not apply to the
/// value (absent, null, another type) is false, never an error, so `ne` and `not` see a
/// definite answer and a safety rule cannot fail open on a missing field.
pub(super) fn apply(op: &Op, field: &FieldValue<'_>) -> bool {
    match op {
        Op::Exists(want) => is_null(field) != *want,
        Op::Eq(lit) => equals(field, lit),
        Op::Ne(lit) => !equals(field, lit),
        Op::InList(items) => items.iter().any(|lit| equals(field, lit)),
        Op::Cmp { rhs, accept, .. } => order(field, rhs).is_some_and(accept),
        Op::Contains(needle) => contains(field, needle),
        Op::StartsWith(p) => as_str(field).is_some_and(|s| s.starts_with(p.as_str())),
        Op::EndsWith(p) => as_str(field).is_some_and(|s| s.ends_with(p.as_str())),
        Op::Matches(re) => as_str(field).is_some_and(|s| re.is_match(s)),
    }
}
