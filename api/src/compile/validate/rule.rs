//! Rule validation: condition (field paths, regexes, operator values), CEL, time zone,
//! key templates, and the objects the action refers to.

use serde_json::Value;

use super::{Accepted, Parsed, Problem};
use crate::compile::error::Kind;
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
    let need = |kind: Kind, field: &str, name: &str, reason: &'static str| {
        if accepted.resolves(kind, scope, name) {
            Ok(())
        } else {
            Err(Problem::new(
                field,
                reason,
                format!("{} `{name}` not found", kind.as_str().to_lowercase()),
            ))
        }
    };
    match action {
        RuleAction::Reroute { target_provider } => need(
            Kind::Provider,
            "spec.action.targetProvider",
            target_provider,
            "ProviderNotFound",
        ),
        RuleAction::Chain { chain } => {
            need(Kind::Chain, "spec.action.chain", chain, "ChainNotFound")
        }
        RuleAction::StateMachine {
            state_machine,
            fingerprint_fields,
        } => {
            for (i, f) in fingerprint_fields.iter().enumerate() {
                FieldPath::parse(f).map_err(|e| {
                    Problem::new(
                        format!("spec.action.fingerprintFields[{i}]"),
                        "InvalidFieldPath",
                        e.0,
                    )
                })?;
            }
            need(
                Kind::StateMachine,
                "spec.action.stateMachine",
                state_machine,
                "StateMachineNotFound",
            )
        }
        RuleAction::RequestApproval {
            notify_provider, ..
        } => need(
            Kind::Provider,
            "spec.action.notifyProvider",
            notify_provider,
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
            max_group_size,
            ..
        } => {
            if group_by.is_empty() {
                return Err(Problem::new(
                    "spec.action.groupBy",
                    "InvalidAction",
                    "needs at least one field",
                ));
            }
            for (i, f) in group_by.iter().enumerate() {
                FieldPath::parse(f).map_err(|e| {
                    Problem::new(format!("spec.action.groupBy[{i}]"), "InvalidFieldPath", e.0)
                })?;
            }
            if *max_group_size == 0 {
                return Err(Problem::new(
                    "spec.action.maxGroupSize",
                    "InvalidAction",
                    "must be at least 1",
                ));
            }
            Ok(())
        }
        RuleAction::Schedule { delay_seconds } if *delay_seconds == 0 => Err(Problem::new(
            "spec.action.delaySeconds",
            "InvalidAction",
            "must be at least 1",
        )),
        _ => Ok(()),
    }
}
