//! Chain definitions of Acteon files read as Chain documents.
//!
//! An Acteon rule file may have a top-level `chains:` (a list of definitions, or
//! `{definitions: [...]}` as in Acteon's server config), and an Acteon server config (TOML)
//! has `[[chains.definitions]]`. Each definition is rewritten to a camelCase Chain `spec`
//! and then validated exactly like a `kind: Chain` manifest. `payload_template` and a
//! branch's `value` are user data: their keys are never rewritten. Keys are sorted as in
//! rule files: keys we read; keys Acteon reads that this gateway does not run yet (an
//! error); keys Acteon does not read (dropped with a warning). Rejections found by the
//! validation are restated in the file's own spelling ([`restate`]):
//! `chains[0].steps[1].branches[0].target`, not `spec.steps[1].branches[0].target`.

use serde_json::Value;

use super::acteon::{Findings, map_list, named_document, snake_to_camel};
use super::documents::Document;
use super::error::{CompileError, Kind};

const CHAIN_KEYS: &[&str] = &[
    "name",
    "steps",
    "timeout_seconds",
    "on_cancel",
    "on_failure",
];

/// Keys of `chains:` as a map (Acteon's `[chains]` section) besides `definitions`: settings
/// of Acteon's server, which this gateway does not take from files.
const SERVER_CHAIN_KEYS: &[&str] = &["completed_chain_ttl_seconds", "max_concurrent_advances"];

const STEP_KEYS: &[&str] = &[
    "name",
    "provider",
    "action_type",
    "payload_template",
    "sub_chain",
    "parallel",
    "retry",
    "branches",
    "default_next",
    "on_failure",
    "delay_seconds",
];

/// The keys of one call of a `parallel` step (and of `on_cancel`, which may name itself).
const CALL_KEYS: &[&str] = &["name", "provider", "action_type", "payload_template"];
/// Acteon's calls of a `parallel` step are whole steps: their other step keys are not run
/// yet.
const CALL_KEYS_NOT_YET: &[&str] = &[
    "sub_chain",
    "parallel",
    "retry",
    "branches",
    "default_next",
    "on_failure",
    "delay_seconds",
];

const PARALLEL_KEYS: &[&str] = &["steps", "join", "on_failure", "timeout_seconds"];
/// `parallel` keys Acteon reads that this gateway does not run yet.
const PARALLEL_KEYS_NOT_YET: &[&str] = &["max_concurrency"];

const RETRY_KEYS: &[&str] = &["max_attempts", "backoff_seconds"];
/// Acteon's own step retry (additional attempts, milliseconds, a strategy): not run yet;
/// this gateway's is `max_attempts` in all with a linear `backoff_seconds`.
const RETRY_KEYS_NOT_YET: &[&str] = &["max_retries", "backoff_ms", "strategy", "jitter_ms"];

const BRANCH_KEYS: &[&str] = &["field", "operator", "value", "target"];

/// Chain-level `on_failure` that is this gateway's behaviour (and Acteon's default).
const CHAIN_ON_FAILURE: &str = "abort";

/// Name of an `on_cancel` call that has none (Acteon's carries no name).
const ON_CANCEL_NAME: &str = "on-cancel";

/// Turns the file's `chains` into shared (namespace-less) Chain documents. Problems go
/// to `found`; a definition with a problem of its own gives no document.
pub(super) fn chain_documents(found: &mut Findings<'_>, chains: &Value) -> Vec<Document> {
    found.id = None;
    let (at, definitions) = match chains {
        Value::Array(list) => ("chains".to_owned(), list),
        Value::Object(section) => {
            for key in section.keys().filter(|k| *k != "definitions") {
                if SERVER_CHAIN_KEYS.contains(&key.as_str()) {
                    found.server_setting(&format!("chains.{key}"));
                } else {
                    found.ignored(&format!("chains.{key}"));
                }
            }
            match section.get("definitions") {
                Some(Value::Array(list)) => ("chains.definitions".to_owned(), list),
                None => return Vec::new(),
                Some(_) => {
                    found.fail("chains.definitions".into(), "must be a list");
                    return Vec::new();
                }
            }
        }
        _ => {
            found.fail(
                "chains".into(),
                "must be a list of chain definitions or a map with `definitions`",
            );
            return Vec::new();
        }
    };
    definitions
        .iter()
        .enumerate()
        .filter_map(|(i, def)| chain_document(found, &format!("{at}[{i}]"), def))
        .collect()
}

fn chain_document(found: &mut Findings<'_>, at: &str, def: &Value) -> Option<Document> {
    named_document(found, at, def, Kind::Chain, |found, def| {
        let mut spec = found.rewrite(
            at,
            def,
            CHAIN_KEYS,
            &[],
            |found, key_at, key, value| match key {
                "steps" => map_list(value, |i, step| {
                    step_value(found, &format!("{key_at}[{i}]"), step)
                }),
                "on_cancel" => on_cancel_value(found, key_at, value),
                // Acteon's default, which is what a failed step does here; Acteon's other
                // policy (`abort_no_dlq`) is about dead letters, which do not exist yet.
                "on_failure" if value.as_str() != Some(CHAIN_ON_FAILURE) => {
                    found.not_yet(key_at.to_owned(), "on_failure (other than `abort`)");
                    Value::Null
                }
                _ => value.clone(),
            },
        );
        if let Some(spec) = spec.as_object_mut() {
            spec.remove("name");
            spec.remove("onFailure");
        }
        spec
    })
}

fn step_value(found: &mut Findings<'_>, at: &str, step: &Value) -> Value {
    found.rewrite(
        at,
        step,
        STEP_KEYS,
        &[],
        |found, at, key, value| match key {
            "branches" => map_list(value, |i, branch| {
                branch_value(found, &format!("{at}[{i}]"), branch)
            }),
            "parallel" => parallel_value(found, at, value),
            "retry" => found.rewrite(at, value, RETRY_KEYS, RETRY_KEYS_NOT_YET, keep),
            // `payload_template` is user data, kept as written; the rest are scalars.
            _ => value.clone(),
        },
    )
}

fn keep(_: &mut Findings<'_>, _: &str, _: &str, value: &Value) -> Value {
    value.clone()
}

/// A branch: its `value` is kept as written; Acteon's `neq` is `ne`.
fn branch_value(found: &mut Findings<'_>, at: &str, branch: &Value) -> Value {
    found.rewrite(at, branch, BRANCH_KEYS, &[], |_, _, key, value| {
        match (key, value.as_str()) {
            ("operator", Some("neq")) => Value::String("ne".into()),
            _ => value.clone(),
        }
    })
}

/// `parallel`: Acteon spells `on_failure` values `fail_fast` / `best_effort`.
fn parallel_value(found: &mut Findings<'_>, at: &str, parallel: &Value) -> Value {
    found.rewrite(
        at,
        parallel,
        PARALLEL_KEYS,
        PARALLEL_KEYS_NOT_YET,
        |found, at, key, value| match (key, value) {
            ("steps", _) => map_list(value, |i, call| {
                let at = format!("{at}[{i}]");
                found.rewrite(&at, call, CALL_KEYS, CALL_KEYS_NOT_YET, keep)
            }),
            ("on_failure", Value::String(s)) => Value::String(snake_to_camel(s)),
            _ => value.clone(),
        },
    )
}

/// `on_cancel`: Acteon's `{provider, action_type}`, named [`ON_CANCEL_NAME`] unless the
/// file names it (as a Chain's `onCancel` must be).
fn on_cancel_value(found: &mut Findings<'_>, at: &str, on_cancel: &Value) -> Value {
    let mut out = found.rewrite(at, on_cancel, CALL_KEYS, &[], keep);
    if let Some(obj) = out.as_object_mut() {
        obj.entry("name")
            .or_insert_with(|| Value::String(ON_CANCEL_NAME.into()));
    }
    out
}

/// Restates a rejection of a chain read from an Acteon file in the file's terms: the
/// file as its source and the field as the file spells it, e.g.
/// `chains[0].steps[1].branches[0].target` for `spec.steps[1].branches[0].target`.
pub(super) fn restate(e: &mut CompileError) {
    if e.object.as_ref().is_none_or(|o| o.kind != Kind::Chain) {
        return;
    }
    let Some((file, at)) = e.source.rsplit_once(' ') else {
        return;
    };
    if !((at.starts_with("chains[") || at.starts_with("chains.definitions[")) && at.ends_with(']'))
    {
        return;
    }
    let field = match e.field.as_deref() {
        Some("metadata.name") => format!("{at}.name"),
        None => at.to_owned(),
        Some(field) => match field.strip_prefix("spec") {
            Some(rest) if rest.is_empty() || rest.starts_with('.') => {
                format!("{at}{}", camel_to_snake(rest))
            }
            _ => return,
        },
    };
    e.field = Some(field);
    e.source = file.to_owned();
}

/// `subChain` → `sub_chain`.
fn camel_to_snake(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::compile::error::ObjectId;

    fn read(chains: Value) -> (Vec<Document>, Vec<String>, Vec<CompileError>) {
        let mut found = Findings::new("f.yaml");
        let docs = chain_documents(&mut found, &chains);
        (docs, found.warnings, found.errors)
    }

    #[test]
    fn payload_templates_and_branch_values_keep_their_keys() {
        let (docs, warnings, errors) = read(json!([{
            "name": "c",
            "timeout_seconds": 60,
            "steps": [{
                "name": "a",
                "provider": "p",
                "action_type": "invoke",
                "payload_template": {"device_id": "{{origin.payload.device_id}}", "nested_key": {"keep_me": 1}},
                "branches": [{"field": "body.x", "operator": "neq", "value": {"some_key": true}, "target": "b"}],
                "retry": {"max_attempts": 2, "backoff_seconds": 3},
                "default_next": "b"
            }, {
                "name": "b",
                "parallel": {"steps": [{"name": "x", "provider": "p", "payload_template": {"a_b": 1}}], "join": "any", "on_failure": "best_effort", "timeout_seconds": 5},
                "on_failure": "skip",
                "delay_seconds": 1
            }],
            "on_cancel": {"provider": "p", "action_type": "chain_cancelled"}
        }]));
        assert!(
            warnings.is_empty() && errors.is_empty(),
            "{warnings:?} {errors:?}"
        );
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].source, "f.yaml chains[0]");
        assert_eq!(
            (
                docs[0].id.kind,
                docs[0].id.namespace.as_deref(),
                docs[0].id.name.as_str()
            ),
            (Kind::Chain, None, "c")
        );
        assert_eq!(
            docs[0].spec.value(),
            json!({
                "timeoutSeconds": 60,
                "steps": [{
                    "name": "a",
                    "provider": "p",
                    "actionType": "invoke",
                    "payloadTemplate": {"device_id": "{{origin.payload.device_id}}", "nested_key": {"keep_me": 1}},
                    "branches": [{"field": "body.x", "operator": "ne", "value": {"some_key": true}, "target": "b"}],
                    "retry": {"maxAttempts": 2, "backoffSeconds": 3},
                    "defaultNext": "b"
                }, {
                    "name": "b",
                    "parallel": {"steps": [{"name": "x", "provider": "p", "payloadTemplate": {"a_b": 1}}], "join": "any", "onFailure": "bestEffort", "timeoutSeconds": 5},
                    "onFailure": "skip",
                    "delaySeconds": 1
                }],
                "onCancel": {"name": "on-cancel", "provider": "p", "actionType": "chain_cancelled"}
            })
        );
    }

    #[test]
    fn unknown_keys_warn_and_server_settings_say_so() {
        let (docs, warnings, errors) = read(json!({
            "completed_chain_ttl_seconds": 60,
            "max_concurrent_advances": 4,
            "colour": "blue",
            "definitions": [{"name": "c", "comment": "x", "on_failure": "abort",
                "steps": [{"name": "a", "provider": "p", "note": 1,
                    "branches": [{"field": "success", "operator": "eq", "value": true, "target": "a", "why": "x"}]}]}]
        }));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(docs.len(), 1);
        assert_eq!(
            docs[0].spec.value(),
            json!({"steps": [{"name": "a", "provider": "p",
                "branches": [{"field": "success", "operator": "eq", "value": true, "target": "a"}]}]})
        );
        for (at, why) in [
            ("chains.completed_chain_ttl_seconds:", "server setting"),
            ("chains.max_concurrent_advances:", "server setting"),
            ("chains.colour:", "does not read"),
            ("chains.definitions[0].comment:", "does not read"),
            ("chains.definitions[0].steps[0].note:", "does not read"),
            (
                "chains.definitions[0].steps[0].branches[0].why:",
                "does not read",
            ),
        ] {
            assert!(
                warnings.iter().any(|w| w.contains(at) && w.contains(why)),
                "{at} in {warnings:?}"
            );
        }
        assert_eq!(warnings.len(), 6, "{warnings:?}");
    }

    #[test]
    fn keys_acteon_reads_that_we_do_not_run_yet_are_named() {
        let step = |extra: Value| {
            let mut s = json!({"name": "a", "provider": "p"});
            s.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            s
        };
        for (def, at) in [
            (
                json!({"name": "c", "on_failure": "abort_no_dlq", "steps": [step(json!({}))]}),
                "chains[0].on_failure",
            ),
            (
                json!({"name": "c", "steps": [step(json!({"retry": {"max_retries": 2}}))]}),
                "chains[0].steps[0].retry.max_retries",
            ),
            (
                json!({"name": "c", "steps": [{"name": "a", "parallel": {"max_concurrency": 2, "steps": [{"name": "x", "provider": "p"}]}}]}),
                "chains[0].steps[0].parallel.max_concurrency",
            ),
            (
                json!({"name": "c", "steps": [{"name": "a", "parallel": {"steps": [{"name": "x", "provider": "p", "delay_seconds": 3}]}}]}),
                "chains[0].steps[0].parallel.steps[0].delay_seconds",
            ),
        ] {
            let (docs, _, errors) = read(json!([def]));
            assert!(docs.is_empty(), "{at}");
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].field.as_deref(), Some(at));
            assert!(errors[0].message.starts_with("not supported yet: "));
            assert_eq!(errors[0].object.as_ref().unwrap().kind, Kind::Chain);
        }
    }

    #[test]
    fn malformed_definitions_name_the_field() {
        for (chains, at) in [
            (json!("x"), "chains"),
            (json!({"definitions": {}}), "chains.definitions"),
            (json!([1]), "chains[0]"),
            (json!([{"steps": []}]), "chains[0].name"),
        ] {
            let (docs, _, errors) = read(chains);
            assert!(docs.is_empty());
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].field.as_deref(), Some(at), "{errors:?}");
        }
    }

    #[test]
    fn rejections_are_restated_in_the_files_spelling() {
        let rejection = |source: &str, kind, field: Option<&str>| CompileError {
            source: source.into(),
            object: Some(ObjectId {
                kind,
                namespace: None,
                name: "c".into(),
            }),
            field: field.map(str::to_owned),
            reason: "DanglingStep",
            message: "m".into(),
        };
        for (source, field, want_source, want_field) in [
            (
                "f.yaml chains[0]",
                Some("spec.steps[1].branches[0].target"),
                "f.yaml",
                Some("chains[0].steps[1].branches[0].target"),
            ),
            (
                "a b/f.toml chains.definitions[2]",
                Some("spec.steps[0].subChain"),
                "a b/f.toml",
                Some("chains.definitions[2].steps[0].sub_chain"),
            ),
            (
                "f.yaml chains[1]",
                Some("metadata.name"),
                "f.yaml",
                Some("chains[1].name"),
            ),
            (
                "f.yaml chains[1]",
                Some("spec"),
                "f.yaml",
                Some("chains[1]"),
            ),
            // A manifest's rejection is left alone.
            (
                "f.yaml#2",
                Some("spec.steps"),
                "f.yaml#2",
                Some("spec.steps"),
            ),
        ] {
            let mut e = rejection(source, Kind::Chain, field);
            restate(&mut e);
            assert_eq!(
                (e.source.as_str(), e.field.as_deref()),
                (want_source, want_field)
            );
        }
        let mut rule = rejection("f.yaml rules[0]", Kind::Rule, Some("spec.action"));
        restate(&mut rule);
        assert_eq!(rule.field.as_deref(), Some("spec.action"));
    }
}
