//! The pure parts of a chain step: its payload rendered from the run, and the step that
//! follows from its result (branches, `defaultNext`, else the next in order).
//!
//! Placeholders: `{{origin.<field>}}` (the action that started the chain: `payload.x`,
//! `metadata.k`, `action_type`, …), `{{prev.<field>}}` (the previous step's result:
//! `success`, `body.x`, `error`), `{{steps.NAME.<field>}}` (a named earlier step's result),
//! `{{chain_id}}`, `{{step_index}}`. A string that is one placeholder becomes its JSON value;
//! placeholders inside longer strings are replaced by their text. A placeholder without a
//! value is an error of the step, never an empty string.

use acteon_api::crd::{ChainBranch, ChainSpec};
use serde_json::{Map, Value, json};

use super::task::{ChainRun, StepResult};

/// The values placeholders read, for the step about to run.
pub fn context(run: &ChainRun) -> Value {
    let origin = serde_json::to_value(&run.origin).unwrap_or(Value::Null);
    let result = |r: &StepResult| json!({"success": r.success, "body": r.body, "error": r.error, "attempts": r.attempts});
    let steps: Map<String, Value> = run
        .results
        .iter()
        .map(|r| (r.name.clone(), result(r)))
        .collect();
    json!({
        "origin": origin,
        "prev": run.results.last().map(result),
        "steps": steps,
        "chain_id": run.chain_id,
        "step_index": run.step,
    })
}

/// `template` with its placeholders replaced from `ctx`.
pub fn render(template: &Value, ctx: &Value) -> Result<Value, String> {
    Ok(match template {
        Value::String(s) => render_str(s, ctx)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render(v, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render(v, ctx)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

fn render_str(s: &str, ctx: &Value) -> Result<Value, String> {
    let trimmed = s.trim();
    if let Some(inner) = trimmed
        .strip_prefix("{{")
        .and_then(|r| r.strip_suffix("}}"))
        && !inner.contains("{{")
        && !inner.contains("}}")
    {
        return lookup(ctx, inner.trim()).cloned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| format!("unclosed placeholder in `{s}`"))?;
        match lookup(ctx, after[..close].trim())? {
            Value::String(text) => out.push_str(text),
            other => out.push_str(&other.to_string()),
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

/// The value at a dotted path (object keys, array indexes); absent or null is an error.
fn lookup<'a>(ctx: &'a Value, path: &str) -> Result<&'a Value, String> {
    let found = walk(ctx, path).filter(|v| !v.is_null());
    found.ok_or_else(|| format!("`{{{{{path}}}}}` has no value"))
}

fn walk<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, key| match v {
        Value::Object(map) => map.get(key),
        Value::Array(items) => items.get(key.parse::<usize>().ok()?),
        _ => None,
    })
}

/// The index of the step after `step`, given its result; `None` when the chain is done.
pub fn next_step(spec: &ChainSpec, step: usize, result: &StepResult) -> Option<usize> {
    let current = spec.steps.get(step)?;
    let target = current
        .branches
        .iter()
        .find(|b| branch_matches(b, result))
        .map(|b| b.target.as_str())
        .or(current.default_next.as_deref());
    match target {
        Some(name) => spec.steps.iter().position(|s| s.name == name),
        None => (step + 1 < spec.steps.len()).then_some(step + 1),
    }
}

/// Whether a branch holds for a step's result: `field` is `success`, `status`
/// (`success` / `failed`) or `body.<path>`.
pub fn branch_matches(branch: &ChainBranch, result: &StepResult) -> bool {
    let status = Value::String(if result.success { "success" } else { "failed" }.into());
    let success = Value::Bool(result.success);
    let field = match branch.field.as_str() {
        "success" => Some(&success),
        "status" => Some(&status),
        "body" => Some(&result.body),
        f => f
            .strip_prefix("body.")
            .and_then(|path| walk(&result.body, path)),
    };
    let value = branch.value.as_ref();
    match branch.operator.as_str() {
        "exists" => field.is_some_and(|v| !v.is_null()) != (value == Some(&Value::Bool(false))),
        "eq" => field.is_some_and(|f| same(f, value)),
        "ne" => !field.is_some_and(|f| same(f, value)),
        "contains" => match (field, value) {
            (Some(Value::String(s)), Some(Value::String(part))) => s.contains(part.as_str()),
            (Some(Value::Array(items)), Some(v)) => items.iter().any(|i| same(i, Some(v))),
            _ => false,
        },
        op => match (field.and_then(Value::as_f64), value.and_then(Value::as_f64)) {
            (Some(a), Some(b)) => match op {
                "gt" => a > b,
                "gte" => a >= b,
                "lt" => a < b,
                "lte" => a <= b,
                _ => false,
            },
            _ => false,
        },
    }
}

/// JSON equality, numbers compared by value (`1` equals `1.0`).
fn same(a: &Value, b: Option<&Value>) -> bool {
    match (a, b) {
        (Value::Number(x), Some(Value::Number(y))) => x.as_f64() == y.as_f64(),
        (a, Some(b)) => a == b,
        (_, None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Action;

    fn run_with(results: Vec<StepResult>) -> ChainRun {
        let origin: Action = serde_json::from_value(json!({
            "id": "a1", "namespace": "ns", "tenant": "t", "provider": "p",
            "action_type": "alert", "payload": {"host": "db-1", "n": 3}
        }))
        .unwrap();
        ChainRun {
            chain_id: "c1".into(),
            chain: "ns/c".into(),
            generation: None,
            definition: serde_json::from_value(json!({"steps": [{"name": "a", "provider": "p"}]}))
                .unwrap(),
            origin,
            step: results.len(),
            attempt: 0,
            results,
            started_ms: 0,
            deadline_ms: 0,
            parents: Vec::new(),
            cancelled: false,
            cancel_reason: None,
            cancelled_by: None,
        }
    }

    fn result(name: &str, body: Value) -> StepResult {
        StepResult {
            name: name.into(),
            success: true,
            body,
            error: None,
            attempts: 1,
            finished_ms: 0,
            ..StepResult::default()
        }
    }

    #[test]
    fn placeholders_render_values_and_text() {
        let run = run_with(vec![
            result("triage", json!({"severity": "high", "ticket": {"id": 42}})),
            result("page", json!({"ok": true})),
        ]);
        let ctx = context(&run);
        let out = render(
            &json!({
                "host": "{{origin.payload.host}}",
                "n": "{{ origin.payload.n }}",
                "ticket": "{{steps.triage.body.ticket.id}}",
                "text": "#{{steps.triage.body.ticket.id}} on {{origin.payload.host}} ({{chain_id}}, step {{step_index}})",
                "prev": "{{prev.body.ok}}",
                "fixed": [1, "x"]
            }),
            &ctx,
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"host": "db-1", "n": 3, "ticket": 42, "text": "#42 on db-1 (c1, step 2)", "prev": true, "fixed": [1, "x"]})
        );
        for missing in [
            "{{steps.nope.body}}",
            "{{origin.payload.absent}}",
            "x {{prev.body.nope}}",
            "{{unclosed",
        ] {
            assert!(render(&json!(missing), &ctx).is_err(), "{missing}");
        }
    }

    #[test]
    fn branches_pick_the_first_match_then_default_then_next() {
        let spec: ChainSpec = serde_json::from_value(json!({"steps": [
            {"name": "triage", "provider": "p", "branches": [
                {"field": "body.severity", "operator": "eq", "value": "high", "target": "page"},
                {"field": "body.score", "operator": "gte", "value": 5, "target": "page"},
                {"field": "success", "operator": "eq", "value": false, "target": "log"}
            ], "defaultNext": "log"},
            {"name": "page", "provider": "p"},
            {"name": "log", "provider": "p"}
        ]}))
        .unwrap();
        let with = |body: Value| next_step(&spec, 0, &result("triage", body));
        assert_eq!(with(json!({"severity": "high"})), Some(1));
        assert_eq!(with(json!({"score": 7.5})), Some(1));
        assert_eq!(with(json!({"severity": "low"})), Some(2), "defaultNext");
        assert_eq!(
            next_step(&spec, 1, &result("page", json!({}))),
            Some(2),
            "next in order"
        );
        assert_eq!(next_step(&spec, 2, &result("log", json!({}))), None, "done");
        let exists = |v: Option<Value>| ChainBranch {
            field: "body.ticket".into(),
            operator: "exists".into(),
            value: v,
            target: "x".into(),
        };
        let r = result("s", json!({"ticket": 1}));
        assert!(branch_matches(&exists(None), &r));
        assert!(!branch_matches(&exists(Some(json!(false))), &r));
        assert!(branch_matches(
            &exists(Some(json!(false))),
            &result("s", json!({}))
        ));
    }
}
