//! The state a CEL expression reads, found in its syntax tree.
//!
//! Rule evaluation is pure: what a rule reads from shared state is fetched in one backend
//! call before evaluation. A CEL expression declares its reads by calling
//! `has_active_event(machine, action.field)`, `event_in_state([machine,] fingerprint,
//! state)` or `state.seen(key)` with arguments known before evaluation: string literals, or
//! fields of the action (`action.payload.x`). [`state_calls`] lists those calls as the
//! condition leaves they mean, so validation and the gateway treat them like the leaves of
//! a `condition`.

use serde_json::Value;

use crate::condition::{Condition, EVENT_IN_STATE, HAS_ACTIVE_EVENT};

/// `state.seen(key)`: the dedup mark of `key` is set.
pub const SEEN: &str = "seen";

/// An argument of a state call: a string literal or an action field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CelArg {
    Literal(String),
    /// `action.…`, as written.
    Field(String),
}

/// One state call of an expression: its function, its arguments and the condition leaf
/// it reads as.
#[derive(Clone, Debug, PartialEq)]
pub struct StateCall {
    pub function: &'static str,
    pub args: Vec<CelArg>,
    pub leaf: Condition,
}

/// The state calls of `program` (each distinct call once), or why one cannot be read
/// ahead of evaluation.
pub fn state_calls(program: &cel::Program) -> Result<Vec<StateCall>, String> {
    let mut calls = Vec::new();
    walk(program.expression(), &mut |call| {
        let found = state_call(call)?;
        if let Some(found) = found
            && !calls.contains(&found)
        {
            calls.push(found);
        }
        Ok(())
    })?;
    Ok(calls)
}

type Visit<'a> = dyn FnMut(&cel::common::ast::CallExpr) -> Result<(), String> + 'a;

fn walk(e: &cel::common::ast::IdedExpr, visit: &mut Visit<'_>) -> Result<(), String> {
    use cel::common::ast::{EntryExpr, Expr};
    match &e.expr {
        Expr::Call(call) => {
            visit(call)?;
            if let Some(target) = &call.target {
                walk(target, visit)?;
            }
            call.args.iter().try_for_each(|a| walk(a, visit))
        }
        Expr::Comprehension(c) => [
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ]
        .into_iter()
        .try_for_each(|x| walk(x, visit)),
        Expr::List(l) => l.elements.iter().try_for_each(|x| walk(x, visit)),
        Expr::Map(m) => m.entries.iter().try_for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(kv) => {
                walk(&kv.key, visit)?;
                walk(&kv.value, visit)
            }
            EntryExpr::StructField(f) => walk(&f.value, visit),
        }),
        Expr::Struct(s) => s.entries.iter().try_for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(kv) => {
                walk(&kv.key, visit)?;
                walk(&kv.value, visit)
            }
            EntryExpr::StructField(f) => walk(&f.value, visit),
        }),
        Expr::Select(s) => walk(&s.operand, visit),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Ok(()),
    }
}

/// The state call `call` is, if it is one.
fn state_call(call: &cel::common::ast::CallExpr) -> Result<Option<StateCall>, String> {
    use cel::common::ast::Expr;
    let on_state =
        matches!(call.target.as_deref().map(|t| &t.expr), Some(Expr::Ident(v)) if v == "state");
    let function = match (call.func_name.as_str(), call.target.is_some(), on_state) {
        (HAS_ACTIVE_EVENT, false, _) => HAS_ACTIVE_EVENT,
        (EVENT_IN_STATE, false, _) => EVENT_IN_STATE,
        (SEEN, _, true) => SEEN,
        _ => return Ok(None),
    };
    let args = call
        .args
        .iter()
        .map(|a| arg(a).ok_or_else(|| format!("`{function}` takes string literals or action fields (e.g. action.payload.x) as arguments, known before evaluation")))
        .collect::<Result<Vec<_>, _>>()?;
    let leaf = leaf(function, &args)?;
    Ok(Some(StateCall {
        function,
        args,
        leaf,
    }))
}

fn arg(e: &cel::common::ast::IdedExpr) -> Option<CelArg> {
    use cel::common::ast::{Expr, LiteralValue};
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(CelArg::Literal(s.inner().to_owned())),
        Expr::Select(_) => field_path(e).map(CelArg::Field),
        _ => None,
    }
}

/// `action.a.b` as text, for a selection chain rooted at `action`.
fn field_path(e: &cel::common::ast::IdedExpr) -> Option<String> {
    use cel::common::ast::Expr;
    match &e.expr {
        Expr::Ident(root) if root == "action" => Some(root.clone()),
        Expr::Select(s) if !s.test => Some(format!("{}.{}", field_path(&s.operand)?, s.field)),
        _ => None,
    }
}

/// The condition leaf a call reads as; the kinds of arguments each position takes.
fn leaf(function: &'static str, args: &[CelArg]) -> Result<Condition, String> {
    use CelArg::{Field, Literal};
    let text = |a: &CelArg| match a {
        Literal(s) | Field(s) => Value::String(s.clone()),
    };
    let call = || Condition::Call {
        function: function.to_owned(),
        args: args.iter().map(text).collect(),
    };
    let literal_path = |s: &str| s.starts_with("action.");
    match (function, args) {
        (HAS_ACTIVE_EVENT, [Literal(_), Field(_)]) => Ok(call()),
        (HAS_ACTIVE_EVENT, _) => Err(format!(
            "`{HAS_ACTIVE_EVENT}` takes a StateMachine name (a string) and an action field"
        )),
        (EVENT_IN_STATE, [fp, Literal(_)]) | (EVENT_IN_STATE, [Literal(_), fp, Literal(_)])
            if !matches!(fp, Literal(s) if literal_path(s)) =>
        {
            Ok(call())
        }
        (EVENT_IN_STATE, _) => Err(format!(
            "`{EVENT_IN_STATE}` takes [a StateMachine name,] a fingerprint (a string that does not start with `action.`, or an action field) and a state name"
        )),
        (SEEN, [Literal(key)]) if !key.contains("{{") => Ok(Condition::StateSeen {
            key: key.clone(),
            within_seconds: None,
        }),
        (SEEN, [Field(path)]) => Ok(Condition::StateSeen {
            key: format!("{{{{{path}}}}}"),
            within_seconds: None,
        }),
        _ => Err("`state.seen` takes one key: a string without `{{`, or an action field".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(src: &str) -> Result<Vec<StateCall>, String> {
        state_calls(&cel::Program::compile(src).expect("parses"))
    }

    #[test]
    fn calls_are_found_anywhere_in_the_tree() {
        let found = calls(
            r#"action.action_type == "deploy" && (event_in_state(action.payload.incident, "firing")
               || [1].exists(x, has_active_event("cluster-events", action.metadata.cluster)))
               && !state.seen("k") && event_in_state(action.payload.incident, "firing")"#,
        )
        .unwrap();
        let names: Vec<&str> = found.iter().map(|c| c.function).collect();
        assert_eq!(names, [EVENT_IN_STATE, HAS_ACTIVE_EVENT, SEEN], "each once");
        assert_eq!(
            found[0].args,
            [
                CelArg::Field("action.payload.incident".into()),
                CelArg::Literal("firing".into())
            ]
        );
        assert_eq!(
            found[1].leaf.as_inhibition().map(|i| i.equal),
            Some(vec!["action.metadata.cluster".to_owned()])
        );
        assert_eq!(
            found[2].leaf,
            Condition::StateSeen {
                key: "k".into(),
                within_seconds: None
            }
        );
        let field = calls("state.seen(action.dedup_key)").unwrap();
        assert_eq!(
            field[0].leaf,
            Condition::StateSeen {
                key: "{{action.dedup_key}}".into(),
                within_seconds: None
            }
        );
        assert!(
            calls("action.payload.seen(1) || size(action.payload) > 0")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn arguments_must_be_known_before_evaluation() {
        for bad in [
            r#"event_in_state(action.payload.a + "x", "firing")"#,
            r#"event_in_state("fp", action.payload.state)"#,
            r#"event_in_state("action.fingerprint", "firing")"#,
            r#"has_active_event("m", "action.metadata.cluster")"#,
            r#"has_active_event(action.payload.m, action.metadata.cluster)"#,
            r#"state.seen("{{action.id}}")"#,
            r#"[1].exists(x, event_in_state(x, "firing"))"#,
        ] {
            assert!(calls(bad).is_err(), "{bad}");
        }
    }
}
