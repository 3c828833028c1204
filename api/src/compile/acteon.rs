//! Acteon rule files (top-level `rules:` and/or `chains:`, snake_case) read as Rule and
//! Chain documents, and Acteon server configs (TOML) read for their `[[chains.definitions]]`.
//!
//! The only difference from a manifest's `spec` is spelling, so the file is rewritten
//! to camelCase and then goes through exactly the same validation as a manifest. Keys are
//! sorted into three kinds, as Acteon's own parser (which ignores unknown keys) reads them:
//! keys we read; keys Acteon reads and this gateway does not run yet (an error saying so,
//! never a silently different rule); and keys Acteon ignores, which are dropped with a
//! warning ([`warnings_in_paths`], printed by `acteon-gateway validate`). The other
//! sections of a server config are Acteon's server settings, which this gateway takes from
//! Kubernetes resources and its flags: each is ignored with a warning. Chains:
//! [`super::acteon_chains`].

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::acteon_chains::chain_documents;
use super::documents::{Document, is_toml};
use super::error::{CompileError, Kind, ObjectId};

const FILE_KEYS: &[&str] = &["rules", "chains"];

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

/// Rule keys Acteon reads that this gateway does not run yet.
const RULE_KEYS_NOT_YET: &[&str] = &["mute_time_intervals", "active_time_intervals"];

const CONDITION_KEYS: &[&str] = &[
    "all",
    "any",
    "not",
    "field",
    "eq",
    "ne",
    "gt",
    "gte",
    "lt",
    "lte",
    "contains",
    "starts_with",
    "ends_with",
    "matches",
    "in_list",
    "exists",
    "state_seen",
    "within_seconds",
    "state_counter",
    "key",
    "window_seconds",
    "inhibited_by",
    "call",
    "args",
];

/// Condition predicates Acteon reads that this gateway does not run yet.
const CONDITION_KEYS_NOT_YET: &[&str] = &["semantic_match", "wasm_plugin"];

/// The keys each action type reads besides `type`; `None` for a type we do not know (the
/// validation names it).
fn action_keys(action_type: &str) -> Option<&'static [&'static str]> {
    Some(match action_type {
        "allow" | "deny" | "suppress" => &[],
        "reroute" => &["target_provider"],
        "modify" => &["changes"],
        "deduplicate" => &["ttl_seconds", "key"],
        "throttle" => &["max_count", "window_seconds", "key"],
        "group" => &[
            "group_by",
            "group_wait_seconds",
            "group_interval_seconds",
            "repeat_interval_seconds",
            "max_group_size",
            "template",
            "notify_provider",
        ],
        "schedule" => &["delay_seconds"],
        "chain" => &["chain"],
        "state_machine" => &["state_machine", "fingerprint_fields"],
        "request_approval" => &["notify_provider", "timeout_seconds", "message"],
        _ => return None,
    })
}

fn error(source: &str, object: Option<ObjectId>, field: String, message: String) -> CompileError {
    CompileError {
        source: source.to_owned(),
        object,
        field: Some(field),
        reason: "InvalidRuleFile",
        message,
    }
}

/// What reading one file found besides its documents: ignored keys (warnings) and keys
/// not supported yet (errors).
pub(super) struct Findings<'a> {
    pub source: &'a str,
    /// The object being read, which errors name.
    pub id: Option<ObjectId>,
    pub warnings: Vec<String>,
    pub errors: Vec<CompileError>,
}

impl<'a> Findings<'a> {
    pub fn new(source: &'a str) -> Findings<'a> {
        Findings {
            source,
            id: None,
            warnings: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// A key Acteon's parser does not read: dropped.
    pub fn ignored(&mut self, at: &str) {
        self.warnings.push(format!(
            "{}: {at}: ignored (Acteon's parser does not read this key)",
            self.source
        ));
    }

    /// A setting of Acteon's server, which this gateway takes from Kubernetes resources and
    /// its flags: dropped.
    pub fn server_setting(&mut self, at: &str) {
        let hint = match at {
            "rules" => "; give the rule files to --config",
            "providers" => "; providers are Provider manifests",
            _ => "",
        };
        self.warnings.push(format!(
            "{}: {at}: ignored (an Acteon server setting; this gateway takes its settings \
             from Kubernetes resources and its flags{hint})",
            self.source
        ));
    }

    /// A key Acteon reads that this gateway does not run yet: an error.
    pub fn not_yet(&mut self, at: String, key: &str) {
        self.fail(at, &format!("not supported yet: {key}"));
    }

    pub fn fail(&mut self, at: String, message: &str) {
        let e = error(self.source, self.id.clone(), at, message.to_owned());
        self.errors.push(e);
    }

    /// Rewrites the keys of the map at `at`: `read` keys to camelCase (their values by
    /// `convert(found, key_at, key, value)`), `not_yet` keys reported as not supported yet,
    /// the rest dropped with a warning. Anything but a map is left for the validation.
    pub fn rewrite(
        &mut self,
        at: &str,
        value: &Value,
        read: &[&str],
        not_yet: &[&str],
        mut convert: impl FnMut(&mut Self, &str, &str, &Value) -> Value,
    ) -> Value {
        let Some(obj) = value.as_object() else {
            return value.clone();
        };
        let mut out = Map::new();
        for (key, value) in obj {
            let key_at = format!("{at}.{key}");
            if not_yet.contains(&key.as_str()) {
                self.not_yet(key_at, key);
            } else if read.contains(&key.as_str()) {
                let converted = convert(self, &key_at, key, value);
                out.insert(snake_to_camel(key), converted);
            } else {
                self.ignored(&key_at);
            }
        }
        Value::Object(out)
    }
}

/// Turns each entry of `rules:` into a shared (namespace-less) Rule document, and each
/// chain definition of `chains:` into a shared Chain document.
pub fn rule_documents(source: &str, file: &Value) -> Result<Vec<Document>, Vec<CompileError>> {
    read_file(source, file, Shape::RuleFile).0
}

/// The warnings of one Acteon rule file: keys Acteon's parser ignores, which are dropped.
pub fn file_warnings(source: &str, file: &Value) -> Vec<String> {
    read_file(source, file, Shape::RuleFile).1
}

/// The chains of an Acteon server config (TOML): `[[chains.definitions]]` as shared Chain
/// documents. Every other section is a server setting (see [`toml_warnings`]).
pub fn toml_documents(source: &str, text: &str) -> Result<Vec<Document>, Vec<CompileError>> {
    let file = parse_toml(source, text).map_err(|e| vec![e])?;
    read_file(source, &file, Shape::ServerConfig).0
}

/// The warnings of an Acteon server config: one per section other than `chains`, and the
/// keys of its chains that Acteon does not read or that are server settings.
pub fn toml_warnings(source: &str, text: &str) -> Vec<String> {
    match parse_toml(source, text) {
        Ok(file) => read_file(source, &file, Shape::ServerConfig).1,
        Err(_) => Vec::new(),
    }
}

fn parse_toml(source: &str, text: &str) -> Result<Value, CompileError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let at = e.span().map_or(String::new(), |span| {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before[line_start..].chars().count() + 1;
            format!(" at line {line}, column {column}")
        });
        CompileError {
            source: source.to_owned(),
            object: None,
            field: None,
            reason: "InvalidRuleFile",
            message: format!("not valid TOML{at}: {}", e.message().trim_end()),
        }
    })?;
    Ok(toml_to_json(toml::Value::Table(table)))
}

/// A TOML value as JSON: datetimes become their text, floats that JSON cannot hold (NaN,
/// infinities) null.
fn toml_to_json(value: toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => Value::Object(
            table
                .into_iter()
                .map(|(k, v)| (k, toml_to_json(v)))
                .collect(),
        ),
    }
}

/// How a file's top level is read.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// YAML: `rules:` and `chains:`, other keys ignored as Acteon's rule parser does.
    RuleFile,
    /// Acteon's server config: `[chains]`; every other section a server setting.
    ServerConfig,
}

type Read = (Result<Vec<Document>, Vec<CompileError>>, Vec<String>);

fn read_file(source: &str, file: &Value, shape: Shape) -> Read {
    let mut found = Findings::new(source);
    for key in file.as_object().into_iter().flat_map(Map::keys) {
        match shape {
            Shape::RuleFile if !FILE_KEYS.contains(&key.as_str()) => found.ignored(key),
            Shape::ServerConfig if key != "chains" => found.server_setting(key),
            _ => {}
        }
    }
    let mut docs = Vec::new();
    if shape == Shape::RuleFile {
        match file.get("rules") {
            Some(Value::Array(rules)) => {
                for (i, rule) in rules.iter().enumerate() {
                    docs.extend(rule_document(&mut found, i, rule));
                }
            }
            None if file.get("chains").is_some() => {}
            _ => found.fail("rules".into(), "`rules` must be a list"),
        }
    }
    if let Some(chains) = file.get("chains") {
        docs.extend(chain_documents(&mut found, chains));
    }
    let result = if found.errors.is_empty() {
        Ok(docs)
    } else {
        Err(found.errors)
    };
    (result, found.warnings)
}

/// Warnings of every Acteon rule file and server config among `paths` (files and
/// directories, as the compile path reads them). Files that cannot be read or parsed give
/// none: compiling reports them.
pub fn warnings_in_paths(paths: &[PathBuf]) -> Vec<String> {
    let Ok(files) = super::documents::config_files(paths) else {
        return Vec::new();
    };
    let mut warnings = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let source = file.display().to_string();
        if is_toml(&source) {
            warnings.extend(toml_warnings(&source, &text));
            continue;
        }
        for de in serde_yaml_ng::Deserializer::from_str(&text) {
            let Ok(value) = Value::deserialize(de) else {
                break;
            };
            if is_rule_file(&value) {
                warnings.extend(file_warnings(&source, &value));
            }
        }
    }
    warnings
}

/// An Acteon rule file: a `rules:` or `chains:` key and no manifest header.
pub fn is_rule_file(v: &Value) -> bool {
    (v.get("rules").is_some() || v.get("chains").is_some())
        && v.get("apiVersion").is_none()
        && v.get("kind").is_none()
}

fn rule_document(found: &mut Findings<'_>, index: usize, rule: &Value) -> Option<Document> {
    let at = format!("rules[{index}]");
    named_document(found, &at, rule, Kind::Rule, |found, rule| {
        let mut spec = found.rewrite(
            &at,
            rule,
            RULE_KEYS,
            RULE_KEYS_NOT_YET,
            |found, key_at, key, value| match key {
                "condition" => camel_condition(found, key_at, value),
                "action" => camel_action(found, key_at, value),
                _ => value.clone(),
            },
        );
        if let Some(spec) = spec.as_object_mut() {
            spec.remove("name");
            spec.remove("metadata");
        }
        spec
    })
}

/// One named object of an Acteon file (a rule, a chain definition) at `at` as a shared
/// document of `kind`, whose spec `spec` writes; none when reading it found a problem.
pub(super) fn named_document(
    found: &mut Findings<'_>,
    at: &str,
    value: &Value,
    kind: Kind,
    spec: impl FnOnce(&mut Findings<'_>, &Value) -> Value,
) -> Option<Document> {
    let what = match kind {
        Kind::Chain => "chain definition",
        _ => "rule",
    };
    let Some(name) = value.get("name").and_then(Value::as_str) else {
        if value.is_object() {
            found.fail(format!("{at}.name"), &format!("a {what} needs a `name`"));
        } else {
            found.fail(at.to_owned(), &format!("a {what} must be a map"));
        }
        return None;
    };
    let id = ObjectId {
        kind,
        namespace: None,
        name: name.to_owned(),
    };
    found.id = Some(id.clone());
    let errors_before = found.errors.len();
    let spec = spec(found, value);
    found.id = None;
    if found.errors.len() > errors_before {
        // The problems are already reported with their paths.
        return None;
    }
    Some(Document {
        source: format!("{} {at}", found.source),
        id,
        generation: None,
        spec: spec.into(),
    })
}

/// Maps each item of a list; anything else is left for the validation to name.
pub(super) fn map_list(value: &Value, mut f: impl FnMut(usize, &Value) -> Value) -> Value {
    match value.as_array() {
        Some(items) => Value::Array(items.iter().enumerate().map(|(i, v)| f(i, v)).collect()),
        None => value.clone(),
    }
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
fn camel_condition(found: &mut Findings<'_>, at: &str, cond: &Value) -> Value {
    found.rewrite(
        at,
        cond,
        CONDITION_KEYS,
        CONDITION_KEYS_NOT_YET,
        |found, key_at, key, value| match key {
            "all" | "any" => map_list(value, |i, c| {
                camel_condition(found, &format!("{key_at}[{i}]"), c)
            }),
            "not" => camel_condition(found, key_at, value),
            // `{state_machine, equal}`: keys rewritten, the field paths left alone.
            "inhibited_by" => match value.as_object() {
                Some(inner) => Value::Object(
                    inner
                        .iter()
                        .map(|(k, v)| (snake_to_camel(k), v.clone()))
                        .collect(),
                ),
                None => value.clone(),
            },
            _ => value.clone(),
        },
    )
}

/// Rewrites the action's keys and its `type`; `changes` (a payload patch) is left alone.
fn camel_action(found: &mut Findings<'_>, at: &str, action: &Value) -> Value {
    let Some(obj) = action.as_object() else {
        return action.clone();
    };
    let known = obj
        .get("type")
        .and_then(Value::as_str)
        .and_then(action_keys);
    let mut out = Map::new();
    for (key, value) in obj {
        if let Some(known) = known
            && key != "type"
            && !known.contains(&key.as_str())
        {
            found.ignored(&format!("{at}.{key}"));
            continue;
        }
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

/// Renders an Acteon rule file (or server config) as Rule and Chain manifests
/// (`---`-separated YAML). Names become Kubernetes names ([`manifest_name`]), and references
/// to the file's chains (a rule's `chain`, a step's `subChain`) follow their renaming.
pub fn to_manifests(
    source: &str,
    text: &str,
    namespace: Option<&str>,
) -> Result<String, Vec<CompileError>> {
    let docs = super::documents::parse_file(source, text)?;
    let docs: Vec<&Document> = docs
        .iter()
        .filter(|d| matches!(d.id.kind, Kind::Rule | Kind::Chain))
        .collect();
    let chains: HashMap<&str, String> = docs
        .iter()
        .filter(|d| d.id.kind == Kind::Chain)
        .map(|d| (d.id.name.as_str(), manifest_name(&d.id.name)))
        .collect();
    let renamed = |v: &mut Value| {
        if let Some(new) = v.as_str().and_then(|name| chains.get(name)) {
            *v = Value::String(new.clone());
        }
    };
    let mut out = String::new();
    for doc in docs {
        let mut spec = doc.spec.value();
        if doc.id.kind == Kind::Rule {
            if let Some(action) = spec.get_mut("action")
                && action.get("type").and_then(Value::as_str) == Some("chain")
                && let Some(chain) = action.get_mut("chain")
            {
                renamed(chain);
            }
        } else if let Some(steps) = spec.get_mut("steps").and_then(Value::as_array_mut) {
            steps
                .iter_mut()
                .filter_map(|step| step.get_mut("subChain"))
                .for_each(renamed);
        }
        let mut metadata = Map::new();
        metadata.insert("name".into(), Value::String(manifest_name(&doc.id.name)));
        if let Some(ns) = namespace {
            metadata.insert("namespace".into(), Value::String(ns.to_owned()));
        }
        let manifest = serde_json::json!({
            "apiVersion": crate::API_VERSION,
            "kind": doc.id.kind.as_str(),
            "metadata": metadata,
            "spec": spec,
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
    fn state_leaves_convert_their_keys_but_not_their_paths() {
        let file = json!({"rules": [{
            "name": "inhibit",
            "condition": {"any": [
                {"inhibited_by": {"state_machine": "cluster_events", "equal": ["metadata.cluster_name"]}},
                {"state_counter": "pager_throttle", "key": "{{payload.service_name}}", "window_seconds": 60, "gt": 5},
                {"state_seen": "{{payload.alert_key}}"}
            ]},
            "action": {"type": "suppress"}
        }]});
        let docs = rule_documents("f.yaml", &file).unwrap();
        assert_eq!(
            docs[0].spec.value()["condition"],
            json!({"any": [
                {"inhibitedBy": {"stateMachine": "cluster_events", "equal": ["metadata.cluster_name"]}},
                {"stateCounter": "pager_throttle", "key": "{{payload.service_name}}", "windowSeconds": 60, "gt": 5},
                {"stateSeen": "{{payload.alert_key}}"}
            ]})
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
    fn keys_acteon_ignores_are_dropped_with_a_warning() {
        let file = json!({"version": 2, "rules": [{"name": "m", "when": {},
            "condition": {"all": [{"field": "tenant", "eq": "t", "note": "x"}, {"not": {"field": "a", "eq": 1, "default_next": "b"}}]},
            "action": {"type": "deduplicate", "ttl_seconds": 5, "default_next": "x"}}]});
        let docs = rule_documents("f.yaml", &file).unwrap();
        assert_eq!(
            docs[0].spec.value(),
            json!({"condition": {"all": [{"field": "tenant", "eq": "t"}, {"not": {"field": "a", "eq": 1}}]},
                "action": {"type": "deduplicate", "ttlSeconds": 5}})
        );
        let warnings = file_warnings("f.yaml", &file);
        for at in [
            "f.yaml: version:",
            "rules[0].when:",
            "rules[0].condition.all[0].note:",
            "rules[0].condition.all[1].not.default_next:",
            "rules[0].action.default_next:",
        ] {
            assert!(
                warnings
                    .iter()
                    .any(|w| w.contains(at) && w.contains("ignored")),
                "{at} in {warnings:?}"
            );
        }
        assert_eq!(warnings.len(), 5, "{warnings:?}");
    }

    #[test]
    fn keys_acteon_reads_that_we_do_not_run_yet_are_named() {
        for (rule, at, key) in [
            (
                json!({"name": "m", "mute_time_intervals": ["nights"], "condition": {"field": "tenant", "eq": "t"}, "action": {"type": "allow"}}),
                "rules[0].mute_time_intervals",
                "mute_time_intervals",
            ),
            (
                json!({"name": "m", "active_time_intervals": ["days"], "condition": {"field": "tenant", "eq": "t"}, "action": {"type": "allow"}}),
                "rules[0].active_time_intervals",
                "active_time_intervals",
            ),
            (
                json!({"name": "m", "condition": {"semantic_match": "billing", "threshold": 0.8}, "action": {"type": "allow"}}),
                "rules[0].condition.semantic_match",
                "semantic_match",
            ),
            (
                json!({"name": "m", "condition": {"any": [{"field": "tenant", "eq": "t"}, {"wasm_plugin": "p", "wasm_function": "f"}]}, "action": {"type": "allow"}}),
                "rules[0].condition.any[1].wasm_plugin",
                "wasm_plugin",
            ),
        ] {
            let err = rule_documents("f.yaml", &json!({"rules": [rule]})).unwrap_err();
            assert_eq!(err.len(), 1, "{err:?}");
            assert_eq!(err[0].field.as_deref(), Some(at));
            assert_eq!(err[0].message, format!("not supported yet: {key}"));
            assert!(!err[0].to_string().contains("unknown field"), "{}", err[0]);
        }
    }
}
