//! CEL conditions (`cel` crate): compiled once; evaluated over `action`, `time` and `state`.
//!
//! `state` is an empty map: the state a rule reads is fetched before evaluation from the
//! leaves of its `condition` ([`super::state_read`]), and a CEL expression names no reads
//! the gateway could fetch ahead. Rules that read state use `condition` leaves
//! (`inhibitedBy`, `stateSeen`, `stateCounter`); CEL rules never cost a state read.

use chrono::{Datelike, Timelike};
use chrono_tz::Tz;

use super::EvalInput;
use super::condition::{CompileError, EvalError};

/// A compiled CEL expression.
pub struct CelCondition {
    program: cel::Program,
}

impl std::fmt::Debug for CelCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CelCondition")
    }
}

impl CelCondition {
    pub fn compile(src: &str) -> Result<CelCondition, CompileError> {
        cel::Program::compile(src)
            .map(|program| CelCondition { program })
            .map_err(|e| CompileError(e.to_string()))
    }

    pub fn eval(&self, input: &EvalInput<'_>, tz: Option<Tz>) -> Result<bool, EvalError> {
        let mut ctx = cel::Context::default();
        ctx.add_variable_from_value("action", action_value(input)?);
        ctx.add_variable_from_value("time", time_value(input, tz)?);
        ctx.add_variable_from_value(
            "state",
            cel::Value::from(std::collections::HashMap::<String, cel::Value>::new()),
        );
        match self.program.execute(&ctx) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(EvalError::Cel(format!(
                "expression gave {:?}, not a boolean",
                other.type_of()
            ))),
            Err(e) => Err(EvalError::Cel(e.to_string())),
        }
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
