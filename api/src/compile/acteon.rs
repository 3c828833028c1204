//! Acteon rule files (top-level `rules:`, snake_case) read as Rule documents.
//!
//! The only difference from a Rule manifest's `spec` is spelling, so the file is rewritten
//! to camelCase and then goes through exactly the same validation as a manifest.

use serde_json::{Map, Value};

use super::documents::Document;
use super::error::{CompileError, Kind, ObjectId};

const RULE_KEYS: &[&str] = &[
    "name",
    "priority",
    "description",
    "enabled",
    "condition",
    "cel",
    "timezone",
    "action",
    "metadata",
];

fn error(source: &str, object: Option<ObjectId>, field: String, message: String) -> CompileError {
    CompileError {
        source: source.to_owned(),
        object,
        field: Some(field),
        reason: "InvalidRuleFile",
        message,
    }
}

/// Turns each entry of `rules:` into a shared (namespace-less) Rule document.
pub fn rule_documents(source: &str, file: &Value) -> Result<Vec<Document>, Vec<CompileError>> {
    let Some(rules) = file.get("rules").and_then(Value::as_array) else {
        return Err(vec![error(
            source,
            None,
            "rules".into(),
            "`rules` must be a list".into(),
        )]);
    };
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        match rule_document(source, i, rule) {
            Ok(d) => docs.push(d),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(errors)
    }
}

fn rule_document(source: &str, index: usize, rule: &Value) -> Result<Document, CompileError> {
    let at = format!("rules[{index}]");
    let obj = rule
        .as_object()
        .ok_or_else(|| error(source, None, at.clone(), "a rule must be a map".into()))?;
    let name = obj.get("name").and_then(Value::as_str).ok_or_else(|| {
        error(
            source,
            None,
            format!("{at}.name"),
            "a rule needs a `name`".into(),
        )
    })?;
    let id = ObjectId {
        kind: Kind::Rule,
        namespace: None,
        name: name.to_owned(),
    };
    let mut spec = Map::new();
    for (key, value) in obj {
        if !RULE_KEYS.contains(&key.as_str()) {
            return Err(error(
                source,
                Some(id),
                format!("{at}.{key}"),
                format!(
                    "unknown rule key `{key}` (expected one of {})",
                    RULE_KEYS.join(", ")
                ),
            ));
        }
        let converted = match key.as_str() {
            "name" | "metadata" => continue,
            "condition" => camel_condition(value),
            "action" => camel_action(value),
            _ => value.clone(),
        };
        spec.insert(key.clone(), converted);
    }
    Ok(Document {
        source: format!("{source} {at}"),
        id,
        generation: None,
        spec: Value::Object(spec).into(),
    })
}

/// `starts_with` → `startsWith`.
pub fn snake_to_camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut upper = false;
    for c in s.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Rewrites the keys of condition nodes, never the values being compared.
fn camel_condition(cond: &Value) -> Value {
    let Some(obj) = cond.as_object() else {
        return cond.clone();
    };
    let mut out = Map::new();
    for (key, value) in obj {
        let value = match key.as_str() {
            "all" | "any" => match value.as_array() {
                Some(items) => Value::Array(items.iter().map(camel_condition).collect()),
                None => value.clone(),
            },
            "not" => camel_condition(value),
            _ => value.clone(),
        };
        out.insert(snake_to_camel(key), value);
    }
    Value::Object(out)
}

/// Rewrites the action's keys and its `type`; `changes` (a payload patch) is left alone.
fn camel_action(action: &Value) -> Value {
    let Some(obj) = action.as_object() else {
        return action.clone();
    };
    let mut out = Map::new();
    for (key, value) in obj {
        let value = match (key.as_str(), value) {
            ("type", Value::String(t)) => Value::String(snake_to_camel(t)),
            _ => value.clone(),
        };
        out.insert(snake_to_camel(key), value);
    }
    Value::Object(out)
}

/// A Kubernetes-valid object name derived from an Acteon rule name.
pub fn manifest_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    let trimmed = out.trim_matches('-');
    if trimmed.is_empty() {
        "rule".to_owned()
    } else {
        trimmed.chars().take(253).collect()
    }
}

/// Renders an Acteon rule file as Rule manifests (`---`-separated YAML).
pub fn to_manifests(
    source: &str,
    text: &str,
    namespace: Option<&str>,
) -> Result<String, Vec<CompileError>> {
    let docs = super::documents::parse_text(source, text)?;
    let mut out = String::new();
    for doc in docs.iter().filter(|d| d.id.kind == Kind::Rule) {
        let mut metadata = Map::new();
        metadata.insert("name".into(), Value::String(manifest_name(&doc.id.name)));
        if let Some(ns) = namespace {
            metadata.insert("namespace".into(), Value::String(ns.to_owned()));
        }
        let manifest = serde_json::json!({
            "apiVersion": crate::API_VERSION,
            "kind": "Rule",
            "metadata": metadata,
            "spec": doc.spec.value(),
        });
        let yaml = serde_yaml_ng::to_string(&manifest).map_err(|e| {
            vec![CompileError {
                source: doc.source.clone(),
                object: Some(doc.id.clone()),
                field: None,
                reason: "InvalidRuleFile",
                message: e.to_string(),
            }]
        })?;
        out.push_str("---\n");
        out.push_str(&yaml);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn converts_keys_but_not_values() {
        let file = json!({"rules": [{
            "name": "Dedup_Sensor readings",
            "priority": 2,
            "condition": {"all": [
                {"field": "action.payload.device_id", "starts_with": "in_list"},
                {"not": {"field": "action.action_type", "in_list": ["a_b"]}}
            ]},
            "action": {"type": "state_machine", "state_machine": "alert", "fingerprint_fields": ["metadata.cluster_name"]}
        }]});
        let docs = rule_documents("f.yaml", &file).unwrap();
        assert_eq!(docs[0].id.namespace, None);
        assert_eq!(
            docs[0].spec.value(),
            json!({
                "priority": 2,
                "condition": {"all": [
                    {"field": "action.payload.device_id", "startsWith": "in_list"},
                    {"not": {"field": "action.action_type", "inList": ["a_b"]}}
                ]},
                "action": {"type": "stateMachine", "stateMachine": "alert", "fingerprintFields": ["metadata.cluster_name"]}
            })
        );
        assert_eq!(
            manifest_name("Dedup_Sensor readings"),
            "dedup-sensor-readings"
        );
    }

    #[test]
    fn modify_changes_keep_their_keys() {
        let file = json!({"rules": [{"name": "m", "condition": {"field": "tenant", "eq": "t"},
            "action": {"type": "modify", "changes": {"pipeline_version": "2"}}}]});
        let docs = rule_documents("f.yaml", &file).unwrap();
        assert_eq!(
            docs[0].spec.value()["action"]["changes"],
            json!({"pipeline_version": "2"})
        );
    }

    #[test]
    fn unknown_rule_keys_are_named() {
        let file = json!({"rules": [{"name": "m", "when": {}}]});
        let err = rule_documents("f.yaml", &file).unwrap_err();
        assert!(err[0].to_string().contains("rules[0].when"), "{}", err[0]);
    }
}
