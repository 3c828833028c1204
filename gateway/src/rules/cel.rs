//! CEL conditions (`cel` crate): compiled once; evaluated over `action`, `time` and `state`.
//!
//! State is read before evaluation, as for condition leaves ([`super::state_read`]): the
//! expression's calls `has_active_event(machine, action.field)`, `event_in_state([machine,]
//! fingerprint, state)` and `state.seen(key)`, whose arguments are string literals or action
//! fields, are found when the rule is compiled ([`acteon_api::cel::state_calls`]) and become
//! state leaves; the pipeline reads them with the other rules' reads. At evaluation each
//! call's answer is computed from those reads, and the CEL functions look it up by the
//! argument values they are called with. An expression without such calls reads nothing.

use std::cell::RefCell;

use acteon_api::cel::{CelArg, StateCall};
use acteon_api::field::FieldPath;
use chrono::{Datelike, Timelike};
use chrono_tz::Tz;

use super::EvalInput;
use super::condition::{self, CompileError, Cond, EvalError};
use super::field::resolve;
use super::state_read::{LeafContext, StateLeaf};

/// A compiled CEL expression.
pub struct CelCondition {
    program: cel::Program,
    calls: Vec<CelStateCall>,
}

/// A state call of the expression and the leaf that answers it.
struct CelStateCall {
    function: &'static str,
    args: Vec<Arg>,
    leaf: StateLeaf,
}

enum Arg {
    Literal(String),
    Field(FieldPath),
}

impl std::fmt::Debug for CelCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CelCondition")
    }
}

/// Text of an absent argument value (null or a missing field) in answer keys.
const ABSENT: &str = "\u{0}";

thread_local! {
    /// The standard environment with the state functions, built once per thread: each
    /// evaluation adds its variables in a scope of its own.
    static ROOT: cel::Context<'static, 'static> = root_context();
    /// The answers of the state calls of the evaluation running on this thread.
    static ANSWERS: RefCell<Vec<(String, Result<bool, EvalError>)>> = const { RefCell::new(Vec::new()) };
}

fn root_context() -> cel::Context<'static, 'static> {
    let mut ctx = cel::Context::default();
    for name in [
        acteon_api::condition::HAS_ACTIVE_EVENT,
        acteon_api::condition::EVENT_IN_STATE,
        acteon_api::cel::SEEN,
    ] {
        // The names are fixed and distinct: declaring them cannot fail.
        let _ = ctx.add_function(
            name,
            move |cel::extractors::Arguments(args): cel::extractors::Arguments| answer(name, &args),
        );
    }
    ctx
}

/// A state function's answer, computed before evaluation for these argument values.
fn answer(function: &str, args: &[cel::Value]) -> Result<cel::Value, cel::ExecutionError> {
    let texts: Vec<String> = args.iter().map(value_text).collect();
    let key = answer_key(function, texts.iter().map(String::as_str));
    ANSWERS.with(|answers| {
        match answers.borrow().iter().find(|(k, _)| *k == key) {
            Some((_, Ok(b))) => Ok(cel::Value::Bool(*b)),
            Some((_, Err(e))) => Err(cel::ExecutionError::function_error(function, e)),
            None => Err(cel::ExecutionError::function_error(
                function,
                "its state was not read before evaluation (arguments must be literals or action fields)",
            )),
        }
    })
}

fn answer_key<'a>(function: &str, args: impl Iterator<Item = &'a str>) -> String {
    let mut key = function.to_owned();
    for a in args {
        key.push('\u{1f}');
        key.push_str(a);
    }
    key
}

fn value_text(v: &cel::Value) -> String {
    match v {
        cel::Value::String(s) => s.as_str().to_owned(),
        cel::Value::Int(i) => i.to_string(),
        cel::Value::UInt(u) => u.to_string(),
        cel::Value::Float(f) => {
            serde_json::Number::from_f64(*f).map_or_else(|| f.to_string(), |n| n.to_string())
        }
        cel::Value::Bool(b) => b.to_string(),
        cel::Value::Null => ABSENT.to_owned(),
        // Lists, maps…: no state call is answered for them.
        _ => "\u{0}?".to_owned(),
    }
}

impl CelCondition {
    pub fn compile(src: &str, ctx: &LeafContext<'_>) -> Result<CelCondition, CompileError> {
        let program = cel::Program::compile(src).map_err(|e| CompileError(e.to_string()))?;
        let calls = acteon_api::cel::state_calls(&program)
            .map_err(CompileError)?
            .into_iter()
            .map(|call| compile_call(call, ctx))
            .collect::<Result<_, _>>()?;
        Ok(CelCondition { program, calls })
    }

    /// The leaves whose reads this expression needs.
    pub fn state_leaves(&self) -> impl Iterator<Item = &StateLeaf> {
        self.calls.iter().map(|c| &c.leaf)
    }

    pub fn eval(&self, input: &EvalInput<'_>, tz: Option<Tz>) -> Result<bool, EvalError> {
        let answers = self
            .calls
            .iter()
            .map(|c| (c.key(input, tz), c.leaf.eval(input, tz)))
            .collect();
        let action = action_value(input)?;
        let time = time_value(input, tz)?;
        ANSWERS.with(|a| *a.borrow_mut() = answers);
        let result = ROOT.with(|root| {
            let mut ctx = root.new_inner_scope();
            ctx.add_variable_from_value("action", action);
            ctx.add_variable_from_value("time", time);
            ctx.add_variable_from_value(
                "state",
                cel::Value::from(std::collections::HashMap::<String, cel::Value>::new()),
            );
            self.program.execute(&ctx)
        });
        ANSWERS.with(|a| a.borrow_mut().clear());
        match result {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(EvalError::Cel(format!(
                "expression gave {:?}, not a boolean",
                other.type_of()
            ))),
            Err(e) => Err(EvalError::Cel(e.to_string())),
        }
    }
}

fn compile_call(call: StateCall, ctx: &LeafContext<'_>) -> Result<CelStateCall, CompileError> {
    let Cond::State(leaf) = condition::compile(&call.leaf, ctx)? else {
        return Err(CompileError(format!("`{}` reads no state", call.function)));
    };
    let args = call
        .args
        .into_iter()
        .map(|a| match a {
            CelArg::Literal(s) => Ok(Arg::Literal(s)),
            CelArg::Field(path) => FieldPath::parse(&path)
                .map(Arg::Field)
                .map_err(|e| CompileError(e.0)),
        })
        .collect::<Result<_, _>>()?;
    Ok(CelStateCall {
        function: call.function,
        args,
        leaf,
    })
}

impl CelStateCall {
    /// The answer key of this call for `input`: its argument values as text.
    fn key(&self, input: &EvalInput<'_>, tz: Option<Tz>) -> String {
        let texts: Vec<String> = self
            .args
            .iter()
            .map(|a| match a {
                Arg::Literal(s) => s.clone(),
                Arg::Field(path) => resolve(path, input, tz)
                    .to_key_text()
                    .map_or_else(|| ABSENT.to_owned(), |t| t.into_owned()),
            })
            .collect();
        answer_key(self.function, texts.iter().map(String::as_str))
    }
}

fn to_cel(v: &serde_json::Value) -> Result<cel::Value, EvalError> {
    cel::to_value(v).map_err(|e| EvalError::Cel(e.to_string()))
}

/// The action as CEL sees it: Acteon's field names, with the (possibly modified) payload.
fn action_value(input: &EvalInput<'_>) -> Result<cel::Value, EvalError> {
    let a = input.action;
    to_cel(&serde_json::json!({
        "id": a.id,
        "namespace": a.namespace,
        "tenant": a.tenant,
        "provider": a.provider,
        "action_type": a.action_type,
        "payload": input.payload,
        "metadata": a.metadata,
        "dedup_key": a.dedup_key,
        "status": a.status,
        "fingerprint": a.fingerprint,
    }))
}

fn time_value(input: &EvalInput<'_>, tz: Option<Tz>) -> Result<cel::Value, EvalError> {
    let now = input.now.with_timezone(&tz.unwrap_or(Tz::UTC));
    to_cel(&serde_json::json!({
        "hour": now.hour(),
        "minute": now.minute(),
        "second": now.second(),
        "weekday": now.format("%A").to_string(),
        "weekday_num": now.weekday().number_from_monday(),
        "day": now.day(),
        "month": now.month(),
        "year": now.year(),
        "timestamp": now.timestamp(),
    }))
}
