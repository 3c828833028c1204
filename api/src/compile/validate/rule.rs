//! Rule validation: condition (field paths, regexes, operator values), CEL, time zone,
//! key templates, and the objects the action refers to.

use serde_json::Value;

use super::{Accepted, Parsed, Problem};
use crate::compile::error::Kind;
use crate::compile::limits::{MAX_DELAY_SECONDS, MAX_GROUP_SIZE, MAX_KEY_FIELDS};
use crate::condition::{Condition, FieldOp};
use crate::crd::{RuleAction, RuleSpec};
use crate::field::FieldPath;
use crate::template::KeyTemplate;

pub(super) fn check(r: &Parsed<'_, RuleSpec>, accepted: &Accepted) -> Result<(), Problem> {
    let spec = &r.spec;
    match (&spec.condition, &spec.cel) {
        (Some(c), None) => check_condition(c, "spec.condition")?,
        (None, Some(expr)) => check_cel(expr)?,
        (Some(_), Some(_)) => {
            return Err(Problem::new(
                "spec.cel",
                "InvalidCondition",
                "set either `condition` or `cel`, not both",
            ));
        }
        (None, None) => {
            return Err(Problem::new(
                "spec.condition",
                "InvalidCondition",
                "a rule needs `condition` or `cel`",
            ));
        }
    }
    if let Some(tz) = &spec.timezone
        && tz.parse::<chrono_tz::Tz>().is_err()
    {
        return Err(Problem::new(
            "spec.timezone",
            "InvalidTimezone",
            format!("`{tz}` is not an IANA time zone"),
        ));
    }
    check_action(&spec.action, &r.scope, accepted)
}

fn check_cel(expr: &str) -> Result<(), Problem> {
    cel::Program::compile(expr)
        .map(|_| ())
        .map_err(|e| Problem::new("spec.cel", "InvalidCel", format!("CEL does not parse: {e}")))
}

fn check_condition(cond: &Condition, at: &str) -> Result<(), Problem> {
    match cond {
        Condition::All(items) | Condition::Any(items) => {
            let key = if matches!(cond, Condition::All(_)) {
                "all"
            } else {
                "any"
            };
            items
                .iter()
                .enumerate()
                .try_for_each(|(i, c)| check_condition(c, &format!("{at}.{key}[{i}]")))
        }
        Condition::Not(inner) => check_condition(inner, &format!("{at}.not")),
        Condition::Field { field, op } => {
            FieldPath::parse(field)
                .map_err(|e| Problem::new(format!("{at}.field"), "InvalidFieldPath", e.0))?;
            check_op(op, at)
        }
        Condition::StateSeen { key, .. } => check_template(key, &format!("{at}.stateSeen")),
        Condition::StateCounter { key, op } => {
            check_template(key, &format!("{at}.stateCounter"))?;
            check_op(op, at)
        }
        Condition::Call { function, args } => check_call(function, args, at),
    }
}

fn check_op(op: &FieldOp, at: &str) -> Result<(), Problem> {
    let field = format!("{at}.{}", op.name());
    match op {
        FieldOp::Matches(re) => regex::Regex::new(re).map(|_| ()).map_err(|e| {
            Problem::new(
                field,
                "InvalidRegex",
                format!("regex does not compile: {e}"),
            )
        }),
        FieldOp::Gt(v) | FieldOp::Gte(v) | FieldOp::Lt(v) | FieldOp::Lte(v)
            if !(v.is_number() || v.is_string()) =>
        {
            Err(Problem::new(
                field,
                "InvalidCondition",
                "compares against a number or a string",
            ))
        }
        FieldOp::Contains(v) if !(v.is_string() || v.is_number() || v.is_boolean()) => {
            Err(Problem::new(
                field,
                "InvalidCondition",
                "looks for a string, number or boolean",
            ))
        }
        _ => Ok(()),
    }
}

const FUNCTIONS: &[(&str, usize)] = &[("has_active_event", 2), ("event_in_state", 2)];

fn check_call(function: &str, args: &[Value], at: &str) -> Result<(), Problem> {
    let Some((_, arity)) = FUNCTIONS.iter().find(|(name, _)| *name == function) else {
        return Err(Problem::new(
            format!("{at}.call"),
            "InvalidCondition",
            format!("unknown function `{function}` (known: has_active_event, event_in_state)"),
        ));
    };
    if args.len() != *arity {
        return Err(Problem::new(
            format!("{at}.args"),
            "InvalidCondition",
            format!("`{function}` takes {arity} arguments, got {}", args.len()),
        ));
    }
    Ok(())
}

fn check_template(src: &str, field: &str) -> Result<(), Problem> {
    // A key without placeholders is a literal key, which is fine.
    if !src.contains("{{") && !src.contains("}}") && !src.is_empty() {
        return Ok(());
    }
    KeyTemplate::parse(src)
        .map(|_| ())
        .map_err(|e| Problem::new(field, "InvalidTemplate", e.0))
}

fn check_action(
    action: &RuleAction,
    scope: &Option<String>,
    accepted: &Accepted,
) -> Result<(), Problem> {
    match action {
        RuleAction::Reroute { target_provider } => accepted.need(
            Kind::Provider,
            scope,
            target_provider,
            "spec.action.targetProvider",
            "ProviderNotFound",
        ),
        RuleAction::Chain { chain } => accepted.need(
            Kind::Chain,
            scope,
            chain,
            "spec.action.chain",
            "ChainNotFound",
        ),
        RuleAction::StateMachine {
            state_machine,
            fingerprint_fields,
        } => {
            check_key_fields(fingerprint_fields, "spec.action.fingerprintFields", true)?;
            accepted.need(
                Kind::StateMachine,
                scope,
                state_machine,
                "spec.action.stateMachine",
                "StateMachineNotFound",
            )
        }
        RuleAction::RequestApproval {
            notify_provider, ..
        } => accepted.need(
            Kind::Provider,
            scope,
            notify_provider,
            "spec.action.notifyProvider",
            "ProviderNotFound",
        ),
        RuleAction::Modify { changes } if !changes.is_object() => Err(Problem::new(
            "spec.action.changes",
            "InvalidAction",
            "must be a map (a JSON merge patch on the payload)",
        )),
        RuleAction::Deduplicate { ttl_seconds, key } => {
            if *ttl_seconds == Some(0) {
                return Err(Problem::new(
                    "spec.action.ttlSeconds",
                    "InvalidAction",
                    "must be at least 1",
                ));
            }
            key.as_deref()
                .map_or(Ok(()), |k| check_template(k, "spec.action.key"))
        }
        RuleAction::Throttle {
            max_count,
            window_seconds,
            key,
        } => {
            if *max_count == 0 {
                return Err(Problem::new(
                    "spec.action.maxCount",
                    "InvalidAction",
                    "must be at least 1",
                ));
            }
            if *window_seconds == 0 {
                return Err(Problem::new(
                    "spec.action.windowSeconds",
                    "InvalidAction",
                    "must be at least 1",
                ));
            }
            key.as_deref()
                .map_or(Ok(()), |k| check_template(k, "spec.action.key"))
        }
        RuleAction::Group {
            group_by,
            group_wait_seconds,
            group_interval_seconds,
            repeat_interval_seconds,
            max_group_size,
            notify_provider,
            ..
        } => {
            check_key_fields(group_by, "spec.action.groupBy", false)?;
            in_range(
                *group_wait_seconds,
                0,
                MAX_DELAY_SECONDS,
                "spec.action.groupWaitSeconds",
            )?;
            in_range(
                *group_interval_seconds,
                1,
                MAX_DELAY_SECONDS,
                "spec.action.groupIntervalSeconds",
            )?;
            if let Some(repeat) = repeat_interval_seconds {
                if *repeat < *group_interval_seconds {
                    return Err(Problem::new(
                        "spec.action.repeatIntervalSeconds",
                        "InvalidAction",
                        format!("must be at least groupIntervalSeconds ({group_interval_seconds})"),
                    ));
                }
                in_range(
                    *repeat,
                    1,
                    MAX_DELAY_SECONDS,
                    "spec.action.repeatIntervalSeconds",
                )?;
            }
            in_range(
                *max_group_size,
                1,
                MAX_GROUP_SIZE,
                "spec.action.maxGroupSize",
            )?;
            notify_provider.as_deref().map_or(Ok(()), |p| {
                accepted.need(
                    Kind::Provider,
                    scope,
                    p,
                    "spec.action.notifyProvider",
                    "ProviderNotFound",
                )
            })
        }
        RuleAction::Schedule { delay_seconds } => in_range(
            *delay_seconds,
            1,
            MAX_DELAY_SECONDS,
            "spec.action.delaySeconds",
        ),
        _ => Ok(()),
    }
}

/// `value` within `min..=max`, else an `InvalidAction` problem at `field`.
fn in_range(value: u64, min: u64, max: u64, field: &str) -> Result<(), Problem> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    let message = match (min, max) {
        (0, MAX_DELAY_SECONDS) => format!("must be at most {max} (7 days)"),
        (_, MAX_DELAY_SECONDS) => format!("must be between {min} and {max} (7 days)"),
        _ => format!("must be between {min} and {max}"),
    };
    Err(Problem::new(field, "InvalidAction", message))
}

/// `groupBy` / `fingerprintFields`: paths of the action (the condition paths without
/// `time.*`; the `action.` prefix may be left out), each field once, at most
/// [`MAX_KEY_FIELDS`]; `groupBy` needs at least one.
fn check_key_fields(fields: &[String], at: &str, may_be_empty: bool) -> Result<(), Problem> {
    if fields.is_empty() && !may_be_empty {
        return Err(Problem::new(
            at,
            "InvalidAction",
            "needs at least one field, e.g. action.payload.floor",
        ));
    }
    if fields.len() > MAX_KEY_FIELDS {
        return Err(Problem::new(
            at,
            "InvalidAction",
            format!("has {} fields; at most {MAX_KEY_FIELDS}", fields.len()),
        ));
    }
    let mut seen: Vec<FieldPath> = Vec::with_capacity(fields.len());
    for (i, f) in fields.iter().enumerate() {
        let field = format!("{at}[{i}]");
        let path =
            FieldPath::parse(f).map_err(|e| Problem::new(&field, "InvalidFieldPath", e.0))?;
        if !path.is_action_field() {
            return Err(Problem::new(
                field,
                "InvalidFieldPath",
                format!(
                    "`{f}` is the evaluation time, not a field of the action (use action.namespace, action.tenant, action.provider, action.action_type, action.id, action.status, action.fingerprint, action.dedup_key, action.payload.* or action.metadata.*)"
                ),
            ));
        }
        if let Some(j) = seen.iter().position(|p| *p == path) {
            return Err(Problem::new(
                field,
                "InvalidAction",
                format!("`{f}` is the same field as {at}[{j}]"),
            ));
        }
        seen.push(path);
    }
    Ok(())
}
