//! Rule validation: condition (field paths, regexes, operator values, the StateMachines
//! inhibitions name), CEL, time zone, key templates, and the objects the action refers to.
//! The throttle Rules that `stateCounter` leaves read are checked once every Rule has been
//! validated ([`check_counters`]).

use serde_json::Value;

use super::{Accepted, Parsed, Problem, Run};
use crate::compile::error::Kind;
use crate::compile::limits::{MAX_DELAY_SECONDS, MAX_GROUP_SIZE, MAX_KEY_FIELDS};
use crate::condition::{
    Condition, EVENT_IN_STATE, EventInState, FieldOp, HAS_ACTIVE_EVENT, Inhibition,
};
use crate::crd::{RuleAction, RuleSpec};
use crate::field::FieldPath;
use crate::template::KeyTemplate;

pub(super) fn check(r: &Parsed<'_, RuleSpec>, accepted: &Accepted) -> Result<(), Problem> {
    let spec = &r.spec;
    match (&spec.condition, &spec.cel) {
        (Some(c), None) => check_condition(c, "spec.condition", &r.scope, accepted)?,
        (None, Some(expr)) => check_cel(expr, &r.scope, accepted)?,
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

/// The expression parses, and its state calls read what a condition leaf may read.
fn check_cel(expr: &str, scope: &Option<String>, accepted: &Accepted) -> Result<(), Problem> {
    let program = cel::Program::compile(expr)
        .map_err(|e| Problem::new("spec.cel", "InvalidCel", format!("CEL does not parse: {e}")))?;
    let calls = crate::cel::state_calls(&program)
        .map_err(|message| Problem::new("spec.cel", "InvalidCel", message))?;
    for call in calls {
        check_condition(&call.leaf, "spec.cel", scope, accepted).map_err(|p| Problem {
            field: "spec.cel".into(),
            message: format!("`{}`: {}", call.function, p.message),
            ..p
        })?;
    }
    Ok(())
}

fn check_condition(
    cond: &Condition,
    at: &str,
    scope: &Option<String>,
    accepted: &Accepted,
) -> Result<(), Problem> {
    match cond {
        Condition::All(items) | Condition::Any(items) => {
            let key = if matches!(cond, Condition::All(_)) {
                "all"
            } else {
                "any"
            };
            items.iter().enumerate().try_for_each(|(i, c)| {
                check_condition(c, &format!("{at}.{key}[{i}]"), scope, accepted)
            })
        }
        Condition::Not(inner) => check_condition(inner, &format!("{at}.not"), scope, accepted),
        Condition::Field { field, op } => {
            FieldPath::parse(field)
                .map_err(|e| Problem::new(format!("{at}.field"), "InvalidFieldPath", e.0))?;
            check_op(op, at)
        }
        Condition::StateSeen {
            key,
            within_seconds,
        } => {
            if let Some(w) = within_seconds {
                condition_seconds(*w, &format!("{at}.withinSeconds"))?;
            }
            check_template(key, &format!("{at}.stateSeen"))
        }
        Condition::StateCounter {
            rule,
            key,
            window_seconds,
            op,
        } => {
            if rule.is_empty() {
                return Err(Problem::new(
                    format!("{at}.stateCounter"),
                    "InvalidCondition",
                    "names the throttle Rule whose window is counted",
                ));
            }
            if let Some(k) = key {
                check_template(k, &format!("{at}.key"))?;
            }
            if let Some(w) = window_seconds {
                condition_seconds(*w, &format!("{at}.windowSeconds"))?;
            }
            check_count_op(op, at)
        }
        Condition::InhibitedBy(inhibition) => {
            check_inhibition(inhibition, &format!("{at}.inhibitedBy"), scope, accepted)
        }
        Condition::Call { function, args } => {
            check_call(function, args, at)?;
            match cond.as_inhibition() {
                Some(inhibition) if function == HAS_ACTIVE_EVENT => check_inhibition_parts(
                    &inhibition,
                    &format!("{at}.args[0]"),
                    |_| format!("{at}.args[1]"),
                    scope,
                    accepted,
                ),
                None if function == HAS_ACTIVE_EVENT => Err(Problem::new(
                    format!("{at}.args"),
                    "InvalidCondition",
                    "`has_active_event` takes a StateMachine name and a field path, both strings",
                )),
                _ => match cond.as_event_in_state() {
                    Some(check) => check_event_in_state(&check, at, scope, accepted),
                    None => Err(Problem::new(
                        format!("{at}.args"),
                        "InvalidCondition",
                        "`event_in_state` takes [stateMachine,] fingerprint and state, all strings",
                    )),
                },
            }
        }
    }
}

/// `event_in_state([machine,] fingerprint, state)`: the machine exists, the fingerprint
/// is a literal or a field path of the action, the state is named.
fn check_event_in_state(
    check: &EventInState,
    at: &str,
    scope: &Option<String>,
    accepted: &Accepted,
) -> Result<(), Problem> {
    let first = usize::from(check.state_machine.is_some());
    if let Some(machine) = &check.state_machine {
        accepted.need(
            Kind::StateMachine,
            scope,
            machine,
            format!("{at}.args[0]"),
            "StateMachineNotFound",
        )?;
    }
    let fp_at = format!("{at}.args[{first}]");
    if check.fingerprint.is_empty() {
        return Err(Problem::new(
            fp_at,
            "InvalidCondition",
            "the fingerprint is empty",
        ));
    }
    if let Some(path) = check.fingerprint_path() {
        match FieldPath::parse(path) {
            Ok(FieldPath::Time(_)) => {
                return Err(Problem::new(
                    fp_at,
                    "InvalidFieldPath",
                    format!("`{path}` is the evaluation time, not a field of the action"),
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(Problem::new(fp_at, "InvalidFieldPath", e.0)),
        }
    }
    if check.state.is_empty() {
        return Err(Problem::new(
            format!("{at}.args[{}]", first + 1),
            "InvalidCondition",
            "the state is empty",
        ));
    }
    Ok(())
}

/// A duration of a condition leaf: 1 s to 7 days.
fn condition_seconds(seconds: u64, field: &str) -> Result<(), Problem> {
    in_range(seconds, 1, MAX_DELAY_SECONDS, field).map_err(|p| Problem {
        reason: "InvalidCondition",
        ..p
    })
}

/// A count compares with numbers.
fn check_count_op(op: &FieldOp, at: &str) -> Result<(), Problem> {
    let number = |v: &Value| v.is_number();
    let ok = match op {
        FieldOp::Eq(v)
        | FieldOp::Ne(v)
        | FieldOp::Gt(v)
        | FieldOp::Gte(v)
        | FieldOp::Lt(v)
        | FieldOp::Lte(v) => number(v),
        FieldOp::InList(items) => items.iter().all(number),
        _ => false,
    };
    if ok {
        return Ok(());
    }
    Err(Problem::new(
        format!("{at}.{}", op.name()),
        "InvalidCondition",
        "a count compares with numbers: eq, ne, gt, gte, lt, lte or inList",
    ))
}

fn check_inhibition(
    inhibition: &Inhibition,
    at: &str,
    scope: &Option<String>,
    accepted: &Accepted,
) -> Result<(), Problem> {
    check_inhibition_parts(
        inhibition,
        &format!("{at}.stateMachine"),
        |i| format!("{at}.equal[{i}]"),
        scope,
        accepted,
    )
}

/// The StateMachine must resolve in the rule's scope (as for a `stateMachine` rule); the
/// `equal` fields (at most [`MAX_KEY_FIELDS`], each once) are action fields that the
/// event's action and this action both have. An action's `id` and `status`, and its
/// `fingerprint`, differ between an event and what it inhibits by nature: refused.
fn check_inhibition_parts(
    inhibition: &Inhibition,
    machine_at: &str,
    field_at: impl Fn(usize) -> String,
    scope: &Option<String>,
    accepted: &Accepted,
) -> Result<(), Problem> {
    accepted.need(
        Kind::StateMachine,
        scope,
        &inhibition.state_machine,
        machine_at,
        "StateMachineNotFound",
    )?;
    if inhibition.equal.len() > MAX_KEY_FIELDS {
        return Err(Problem::new(
            field_at(MAX_KEY_FIELDS),
            "InvalidCondition",
            format!(
                "`equal` has {} fields; at most {MAX_KEY_FIELDS}",
                inhibition.equal.len()
            ),
        ));
    }
    let mut seen: Vec<FieldPath> = Vec::with_capacity(inhibition.equal.len());
    for (i, f) in inhibition.equal.iter().enumerate() {
        let path =
            FieldPath::parse(f).map_err(|e| Problem::new(field_at(i), "InvalidFieldPath", e.0))?;
        let problem = match &path {
            FieldPath::Time(_) => Some(format!(
                "`{f}` is the evaluation time, not a field of the action"
            )),
            FieldPath::Id | FieldPath::Status | FieldPath::Fingerprint => Some(format!(
                "`{f}` differs between an event and the actions it inhibits by nature (use payload or metadata fields, tenant, provider, action_type or dedup_key)"
            )),
            _ if seen.contains(&path) => Some(format!("`{f}` is listed twice")),
            _ => None,
        };
        if let Some(message) = problem {
            return Err(Problem::new(field_at(i), "InvalidFieldPath", message));
        }
        seen.push(path);
    }
    Ok(())
}

/// Rejects, until none is left, Rules with a `stateCounter` leaf that names no throttle
/// Rule in scope (its own namespace first, then shared, as the gateway resolves it), a
/// `windowSeconds` longer than that throttle's window (its older passes are not kept), or
/// a `key` where the throttle has none (and the other way round).
pub(super) fn check_counters<'d>(
    run: &mut Run<'_>,
    mut rules: Vec<Parsed<'d, RuleSpec>>,
) -> Vec<Parsed<'d, RuleSpec>> {
    loop {
        let mut found = None;
        'rules: for (i, r) in rules.iter().enumerate() {
            let Some(cond) = &r.spec.condition else {
                continue;
            };
            for (at, leaf) in counter_leaves(cond, "spec.condition") {
                if let Err(p) = check_counter(&rules, &run.accepted, &r.scope, &at, leaf) {
                    found = Some((i, p));
                    break 'rules;
                }
            }
        }
        let Some((i, problem)) = found else {
            return rules;
        };
        let r = rules.remove(i);
        run.accepted.remove(Kind::Rule, &r.scope, &r.doc.id.name);
        run.reject(r.doc, problem);
    }
}

fn counter_leaves<'c>(cond: &'c Condition, at: &str) -> Vec<(String, &'c Condition)> {
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
                .flat_map(|(i, c)| counter_leaves(c, &format!("{at}.{key}[{i}]")))
                .collect()
        }
        Condition::Not(inner) => counter_leaves(inner, &format!("{at}.not")),
        Condition::StateCounter { .. } => vec![(at.to_owned(), cond)],
        _ => Vec::new(),
    }
}

fn check_counter(
    rules: &[Parsed<'_, RuleSpec>],
    accepted: &Accepted,
    scope: &Option<String>,
    at: &str,
    leaf: &Condition,
) -> Result<(), Problem> {
    let Condition::StateCounter {
        rule,
        key,
        window_seconds,
        ..
    } = leaf
    else {
        return Ok(());
    };
    let named = |s: &Option<String>| {
        rules
            .iter()
            .find(|r| r.scope == *s && r.doc.id.name == *rule)
    };
    let field = format!("{at}.stateCounter");
    let Some(target) = named(scope).or_else(|| named(&None)) else {
        // "not found", or "rejected" for a rule rejected (for its own counter, say).
        accepted.need(Kind::Rule, scope, rule, field.clone(), "RuleNotFound")?;
        return Err(Problem::new(
            field,
            "RuleNotFound",
            format!("rule `{rule}` not found"),
        ));
    };
    let RuleAction::Throttle {
        window_seconds: throttle_window,
        key: throttle_key,
        ..
    } = &target.spec.action
    else {
        return Err(Problem::new(
            field,
            "InvalidCondition",
            format!("rule `{rule}` is not a throttle rule"),
        ));
    };
    if let Some(w) = window_seconds
        && w > throttle_window
    {
        return Err(Problem::new(
            format!("{at}.windowSeconds"),
            "InvalidCondition",
            format!(
                "must be at most the windowSeconds of throttle rule `{rule}` ({throttle_window}): older passes are not kept"
            ),
        ));
    }
    match (key, throttle_key) {
        (None, Some(_)) => Err(Problem::new(
            format!("{at}.key"),
            "InvalidCondition",
            format!("throttle rule `{rule}` counts per key: give the key to read"),
        )),
        (Some(_), None) => Err(Problem::new(
            format!("{at}.key"),
            "InvalidCondition",
            format!("throttle rule `{rule}` has no key: leave `key` out"),
        )),
        _ => Ok(()),
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

/// Functions a `call` leaf may name, with the argument counts they take.
const FUNCTIONS: &[(&str, &[usize])] = &[(HAS_ACTIVE_EVENT, &[2]), (EVENT_IN_STATE, &[2, 3])];

fn check_call(function: &str, args: &[Value], at: &str) -> Result<(), Problem> {
    let Some((_, arities)) = FUNCTIONS.iter().find(|(name, _)| *name == function) else {
        return Err(Problem::new(
            format!("{at}.call"),
            "InvalidCondition",
            format!("unknown function `{function}` (known: has_active_event, event_in_state)"),
        ));
    };
    if !arities.contains(&args.len()) {
        let takes = arities
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(" or ");
        return Err(Problem::new(
            format!("{at}.args"),
            "InvalidCondition",
            format!("`{function}` takes {takes} arguments, got {}", args.len()),
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
