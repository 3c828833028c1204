//! Conditions compiled for evaluation: regexes built once, literals pre-typed.
//!
//! Errors (a missing field, a type mismatch) propagate like CEL's: `all` is false if any
//! part is false, else an error if any part errs; `any` is true if any part is true, else an
//! error if any part errs. The engine treats an erring rule as not matching and counts it.

use std::cmp::Ordering;

use acteon_api::condition::{Condition, FieldOp};
use acteon_api::field::FieldPath;
use chrono_tz::Tz;
use regex::Regex;
use serde_json::Value;

use super::EvalInput;
use super::field::{FieldValue, resolve};

/// Why a condition could not be evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error("field `{0}` is missing")]
    MissingField(String),
    #[error("`{op}` cannot compare {found} with {expected}")]
    TypeMismatch {
        op: &'static str,
        found: &'static str,
        expected: &'static str,
    },
    #[error("{0}")]
    Unsupported(String),
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
        display: String,
        op: Op,
    },
    /// State predicates and inhibition functions parse and validate; they are evaluated by
    /// the state-machine and grouping work, and until then count as rule errors.
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

/// Compile problems the validator would normally have caught already.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CompileError(pub String);

/// Compiles a condition.
pub fn compile(c: &Condition) -> Result<Cond, CompileError> {
    Ok(match c {
        Condition::All(v) => Cond::All(v.iter().map(compile).collect::<Result<_, _>>()?),
        Condition::Any(v) => Cond::Any(v.iter().map(compile).collect::<Result<_, _>>()?),
        Condition::Not(c) => Cond::Not(Box::new(compile(c)?)),
        Condition::Field { field, op } => Cond::Check {
            path: FieldPath::parse(field).map_err(|e| CompileError(e.0))?,
            display: field.clone(),
            op: compile_op(op)?,
        },
        Condition::StateSeen { key, .. } => Cond::NeedsState {
            what: format!("stateSeen `{key}`"),
        },
        Condition::StateCounter { key, .. } => Cond::NeedsState {
            what: format!("stateCounter `{key}`"),
        },
        Condition::Call { function, .. } => Cond::NeedsState {
            what: format!("`{function}`"),
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
            Cond::Check { path, display, op } => apply(op, &resolve(path, input, tz), display),
            Cond::NeedsState { what } => Err(EvalError::Unsupported(format!(
                "{what} needs state machines and grouping, which this gateway does not run yet"
            ))),
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

fn type_name(v: &FieldValue<'_>) -> &'static str {
    match v {
        FieldValue::Str(_) | FieldValue::Json(Value::String(_)) => "a string",
        FieldValue::Int(_) | FieldValue::Json(Value::Number(_)) => "a number",
        FieldValue::Json(Value::Bool(_)) => "a boolean",
        FieldValue::Json(Value::Null) => "null",
        FieldValue::Json(Value::Array(_)) => "a list",
        FieldValue::Json(Value::Object(_)) => "a map",
        FieldValue::Missing => "nothing",
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

/// Equality with numbers compared by value (1 == 1.0); different types are unequal.
fn equals(field: &FieldValue<'_>, lit: &Value) -> bool {
    match (field, lit) {
        (FieldValue::Str(s), Value::String(l)) => s == l,
        (FieldValue::Int(i), Value::Number(n)) => n.as_f64() == Some(*i as f64),
        (FieldValue::Json(Value::Number(a)), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (FieldValue::Json(v), lit) => *v == lit,
        _ => false,
    }
}

fn mismatch(op: &'static str, found: &FieldValue<'_>, expected: &'static str) -> EvalError {
    EvalError::TypeMismatch {
        op,
        found: type_name(found),
        expected,
    }
}

fn apply(op: &Op, field: &FieldValue<'_>, display: &str) -> Result<bool, EvalError> {
    if let Op::Exists(want) = op {
        let present = !matches!(field, FieldValue::Missing | FieldValue::Json(Value::Null));
        return Ok(present == *want);
    }
    if matches!(field, FieldValue::Missing) {
        return Err(EvalError::MissingField(display.to_owned()));
    }
    match op {
        Op::Eq(lit) => Ok(equals(field, lit)),
        Op::Ne(lit) => Ok(!equals(field, lit)),
        Op::InList(items) => Ok(items.iter().any(|lit| equals(field, lit))),
        Op::Cmp { op, rhs, accept } => {
            let ord = match (rhs, as_f64(field), as_str(field)) {
                (Value::Number(n), Some(lhs), _) => {
                    lhs.partial_cmp(&n.as_f64().unwrap_or(f64::NAN))
                }
                (Value::String(r), _, Some(lhs)) => Some(lhs.cmp(r.as_str())),
                (Value::Number(_), ..) => return Err(mismatch(op, field, "a number")),
                _ => return Err(mismatch(op, field, "a string")),
            };
            Ok(ord.is_some_and(accept))
        }
        Op::Contains(needle) => match (field, needle) {
            (FieldValue::Json(Value::Array(items)), lit) => {
                Ok(items.iter().any(|i| equals(&FieldValue::Json(i), lit)))
            }
            (_, Value::String(n)) => as_str(field)
                .map(|s| s.contains(n.as_str()))
                .ok_or_else(|| mismatch("contains", field, "a string or a list")),
            _ => Err(mismatch("contains", field, "a list")),
        },
        Op::StartsWith(p) => as_str(field)
            .map(|s| s.starts_with(p.as_str()))
            .ok_or_else(|| mismatch("startsWith", field, "a string")),
        Op::EndsWith(p) => as_str(field)
            .map(|s| s.ends_with(p.as_str()))
            .ok_or_else(|| mismatch("endsWith", field, "a string")),
        Op::Matches(re) => as_str(field)
            .map(|s| re.is_match(s))
            .ok_or_else(|| mismatch("matches", field, "a string")),
        Op::Exists(want) => Ok(*want),
    }
}
