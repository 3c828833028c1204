//! Reading files: multi-document YAML manifests, Acteon rule files and Acteon server
//! configs (TOML).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;

use super::acteon;
use super::error::{CompileError, Kind, ObjectId};

/// One object to compile, before validation.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub source: String,
    pub id: ObjectId,
    pub generation: Option<i64>,
    /// The object's `spec`, still untyped.
    pub spec: Spec,
}

/// An object's `spec` as compact JSON text, shared (the operator compiles the same objects
/// on every pass). Not a parsed [`Value`]: every JSON object in a `Value` is a B-tree whose
/// first node takes about 600 bytes however few keys it holds, which at 10,000 Rules was the
/// largest part of the operator's memory. Typed specs are deserialized from the text.
#[derive(Clone, Debug)]
pub struct Spec(Arc<RawValue>);

impl Spec {
    pub fn from_value(value: &Value) -> Spec {
        // Serializing a `Value` cannot fail (its map keys are strings).
        let raw = serde_json::value::to_raw_value(value)
            .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("valid JSON"));
        Spec(Arc::from(raw))
    }

    /// The JSON text (keys sorted, no whitespace).
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// The spec as a [`Value`] (for error reports and rewriting; not for the hot path).
    pub fn value(&self) -> Value {
        serde_json::from_str(self.json()).unwrap_or(Value::Null)
    }

    /// Deserializes the typed spec.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.json())
    }
}

impl PartialEq for Spec {
    fn eq(&self, other: &Spec) -> bool {
        self.json() == other.json()
    }
}

impl From<Value> for Spec {
    fn from(value: Value) -> Spec {
        Spec::from_value(&value)
    }
}

/// Namespace Kubernetes gives an object applied without one.
const DEFAULT_NAMESPACE: &str = "default";

fn error(
    source: &str,
    object: Option<ObjectId>,
    field: Option<&str>,
    message: String,
) -> CompileError {
    CompileError {
        source: source.to_owned(),
        object,
        field: field.map(str::to_owned),
        reason: "InvalidManifest",
        message,
    }
}

/// Lists the files named by `paths`; directories are read non-recursively (sorted) for
/// YAML (`.yaml`, `.yml`) and Acteon server configs (`.toml`).
pub fn config_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, CompileError> {
    let mut files = Vec::new();
    for path in paths {
        let io_err =
            |e: std::io::Error| error(&path.display().to_string(), None, None, e.to_string());
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(io_err)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && matches!(
                            p.extension().and_then(|e| e.to_str()),
                            Some("yaml" | "yml" | "toml")
                        )
                })
                .collect();
            found.sort();
            files.extend(found);
        } else if path.exists() {
            files.push(path.clone());
        } else {
            return Err(error(
                &path.display().to_string(),
                None,
                None,
                "no such file or directory".into(),
            ));
        }
    }
    Ok(files)
}

/// Reads every document of the given files and directories.
pub fn read_paths(paths: &[PathBuf]) -> Result<Vec<Document>, Vec<CompileError>> {
    let files = config_files(paths).map_err(|e| vec![e])?;
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        let source = file.display().to_string();
        match std::fs::read_to_string(&file) {
            Ok(text) => match parse_file(&source, &text) {
                Ok(d) => docs.extend(d),
                Err(e) => errors.extend(e),
            },
            Err(e) => errors.push(error(&source, None, None, e.to_string())),
        }
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(errors)
    }
}

/// Whether a file is read as an Acteon server config (TOML): by its name, `*.toml`.
pub fn is_toml(file: &str) -> bool {
    Path::new(file)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
}

/// Parses one file's text by its name: an Acteon server config (`*.toml`, see
/// [`acteon::toml_documents`]) or YAML ([`parse_text`]).
pub fn parse_file(source: &str, text: &str) -> Result<Vec<Document>, Vec<CompileError>> {
    if is_toml(source) {
        acteon::toml_documents(source, text)
    } else {
        parse_text(source, text)
    }
}

/// Parses YAML text: any number of `---`-separated manifests, or an Acteon rule file.
pub fn parse_text(source: &str, text: &str) -> Result<Vec<Document>, Vec<CompileError>> {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for (index, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let doc_source = format!("{source}#{}", index + 1);
        let value = match Value::deserialize(de) {
            Ok(Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                // The document stream cannot resume after a syntax error (the iterator
                // would yield the same error forever), so stop at the first one.
                errors.push(error(
                    &doc_source,
                    None,
                    None,
                    format!("not valid YAML: {e}"),
                ));
                break;
            }
        };
        let result = if acteon::is_rule_file(&value) {
            acteon::rule_documents(source, &value)
        } else {
            manifest_document(&doc_source, value)
                .map(|d| vec![d])
                .map_err(|e| vec![e])
        };
        match result {
            Ok(d) => docs.extend(d),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(errors)
    }
}

fn manifest_document(source: &str, mut value: Value) -> Result<Document, CompileError> {
    let str_at = |v: &Value, field: &str| v.get(field).and_then(Value::as_str).map(str::to_owned);
    let api_version = str_at(&value, "apiVersion").ok_or_else(|| {
        error(
            source,
            None,
            Some("apiVersion"),
            "missing `apiVersion` (expected acteon.dev/v1alpha1)".into(),
        )
    })?;
    let kind_name = str_at(&value, "kind")
        .ok_or_else(|| error(source, None, Some("kind"), "missing `kind`".into()))?;
    if api_version != crate::API_VERSION {
        return Err(error(
            source,
            None,
            Some("apiVersion"),
            format!("`{api_version}` is not {}", crate::API_VERSION),
        ));
    }
    let kind = Kind::parse(&kind_name).ok_or_else(|| {
        error(
            source,
            None,
            Some("kind"),
            format!(
                "unknown kind `{kind_name}` (expected Rule, Provider, Chain, StateMachine or Quota)"
            ),
        )
    })?;
    let metadata = value.get("metadata").cloned().unwrap_or(Value::Null);
    let name = str_at(&metadata, "name").ok_or_else(|| {
        error(
            source,
            None,
            Some("metadata.name"),
            format!("{kind} without `metadata.name`"),
        )
    })?;
    let namespace = str_at(&metadata, "namespace").unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    let id = ObjectId {
        kind,
        namespace: Some(namespace),
        name,
    };
    check_dns_label(source, &id)?;
    let spec = value.get_mut("spec").map(Value::take).ok_or_else(|| {
        error(
            source,
            Some(id.clone()),
            Some("spec"),
            "missing `spec`".into(),
        )
    })?;
    Ok(Document {
        source: source.to_owned(),
        generation: metadata.get("generation").and_then(Value::as_i64),
        id,
        spec: Spec::from_value(&spec),
    })
}

/// Object names follow Kubernetes' DNS-1123 subdomain rules.
fn check_dns_label(source: &str, id: &ObjectId) -> Result<(), CompileError> {
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    if !valid(&id.name) {
        return Err(error(
            source,
            Some(id.clone()),
            Some("metadata.name"),
            format!(
                "`{}` is not a valid name (lowercase letters, digits, '-' and '.')",
                id.name
            ),
        ));
    }
    if let Some(ns) = &id.namespace
        && !valid(ns)
    {
        return Err(error(
            source,
            Some(id.clone()),
            Some("metadata.namespace"),
            format!("`{ns}` is not a valid namespace"),
        ));
    }
    Ok(())
}

/// File name for messages.
pub fn display(path: &Path) -> String {
    path.display().to_string()
}
