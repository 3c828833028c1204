//! The action a client dispatches: Acteon's `Action` JSON.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// An action to dispatch. Unknown fields (template, attachments, signature…) are ignored.
/// Every field that becomes state or reaches the logs is bounded (see [`limits`]) and may
/// hold no control character.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Action {
    /// Generated (UUID v7) when absent.
    #[serde(default)]
    #[schema(max_length = 256)]
    pub id: String,
    /// A Kubernetes namespace name (DNS-1123 label): the isolation boundary.
    #[schema(max_length = 63, pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
    pub namespace: String,
    #[schema(min_length = 1, max_length = 253)]
    pub tenant: String,
    #[schema(min_length = 1, max_length = 253)]
    pub provider: String,
    #[schema(min_length = 1, max_length = 253)]
    pub action_type: String,
    #[schema(value_type = Object)]
    pub payload: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    /// Flat string map; `{"labels": {…}}` (Acteon's Python SDK) is accepted too.
    /// At most 64 entries; keys up to 253 bytes, values up to 1024 bytes.
    #[serde(
        default,
        deserialize_with = "metadata",
        skip_serializing_if = "HashMap::is_empty"
    )]
    pub metadata: HashMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 1024)]
    pub dedup_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 253)]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 1024)]
    pub fingerprint: Option<String>,
    /// The trace this action's work belongs to. Set by the gateway from the request's
    /// `traceparent` (a body's value is replaced), and stored with the action wherever it
    /// is deferred, so the work that follows continues the same trace.
    #[serde(
        default,
        rename = "trace_context",
        deserialize_with = "crate::trace::context::lenient",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(ignore)]
    pub trace: Option<crate::trace::TraceContext>,
}

/// Bounds on request fields, in bytes (UTF-8). They keep state keys, logs and metric-free
/// memory bounded whatever clients send; the README's "Limits" table lists them.
pub mod limits {
    /// A Kubernetes namespace name (DNS-1123 label).
    pub const NAMESPACE: usize = 63;
    /// `tenant`, `provider`, `action_type`.
    pub const NAME: usize = 253;
    pub const ID: usize = 256;
    pub const DEDUP_KEY: usize = 1024;
    pub const FINGERPRINT: usize = 1024;
    pub const STATUS: usize = 253;
    pub const METADATA_ENTRIES: usize = 64;
    pub const METADATA_KEY: usize = 253;
    pub const METADATA_VALUE: usize = 1024;
}

#[derive(Deserialize)]
#[serde(untagged)]
enum MetadataForm {
    Labels { labels: HashMap<String, String> },
    Flat(HashMap<String, String>),
}

fn metadata<'de, D: Deserializer<'de>>(d: D) -> Result<HashMap<String, String>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(HashMap::new()),
        Some(v) => match serde_json::from_value::<MetadataForm>(v) {
            Ok(MetadataForm::Labels { labels }) => Ok(labels),
            Ok(MetadataForm::Flat(map)) => Ok(map),
            Err(_) => Err(serde::de::Error::custom(
                "metadata must be a map of strings to strings (or {\"labels\": {...}})",
            )),
        },
    }
}

/// What is wrong with a well-formed but unacceptable action; the message names the field.
pub fn validate(action: &Action) -> Result<(), String> {
    check_namespace(&action.namespace)?;
    for (field, value) in [
        ("tenant", &action.tenant),
        ("provider", &action.provider),
        ("action_type", &action.action_type),
    ] {
        if value.is_empty() {
            return Err(format!("`{field}` must not be empty"));
        }
        check_text(field, value, limits::NAME)?;
    }
    check_text("id", &action.id, limits::ID)?;
    for (field, value, limit) in [
        ("dedup_key", &action.dedup_key, limits::DEDUP_KEY),
        ("fingerprint", &action.fingerprint, limits::FINGERPRINT),
        ("status", &action.status, limits::STATUS),
    ] {
        if let Some(v) = value {
            check_text(field, v, limit)?;
        }
    }
    check_metadata(&action.metadata)
}

/// A DNS-1123 label, as Kubernetes namespace names are: the namespace selects whose rules
/// and providers apply, so it must name a namespace that could exist.
pub fn check_namespace(ns: &str) -> Result<(), String> {
    if ns.is_empty() {
        return Err("`namespace` must not be empty".into());
    }
    check_text("namespace", ns, limits::NAMESPACE)?;
    let b = ns.as_bytes();
    let inner_ok = b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if !inner_ok || b[0] == b'-' || b[b.len() - 1] == b'-' {
        return Err(format!(
            "`namespace` must be a Kubernetes namespace name (lowercase letters, digits and \
             `-`, starting and ending with a letter or digit): {ns:?}"
        ));
    }
    Ok(())
}

fn check_metadata(metadata: &HashMap<String, String>) -> Result<(), String> {
    if metadata.len() > limits::METADATA_ENTRIES {
        return Err(format!(
            "`metadata` has {} entries; the limit is {}",
            metadata.len(),
            limits::METADATA_ENTRIES
        ));
    }
    for (k, v) in metadata {
        check_text("metadata key", k, limits::METADATA_KEY)?;
        check_text("metadata value", v, limits::METADATA_VALUE)
            .map_err(|e| format!("{e} (key {:?})", truncated(k)))?;
    }
    Ok(())
}

/// Length in bytes and no control characters: they would break log lines and keys, and a
/// NUL is refused by Postgres (which must not look like a backend outage).
fn check_text(field: &str, value: &str, limit: usize) -> Result<(), String> {
    if value.len() > limit {
        return Err(format!(
            "`{field}` is {} bytes long; the limit is {limit}",
            value.len()
        ));
    }
    if let Some((at, c)) = first_control(value) {
        return Err(format!(
            "`{field}` contains the control character U+{:04X} at byte {at}",
            c as u32
        ));
    }
    Ok(())
}

/// The first control character (C0, DEL, C1) and its byte offset.
fn first_control(s: &str) -> Option<(usize, char)> {
    // Fast path: C0 and DEL are single bytes, and every C1 character starts with 0xC2.
    if !s.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2) {
        return None;
    }
    s.char_indices().find(|(_, c)| c.is_control())
}

fn truncated(s: &str) -> &str {
    &s[..s.floor_char_boundary(40)]
}

impl Action {
    /// Fills in what the client may leave out.
    pub fn complete(&mut self) {
        if self.id.is_empty() {
            self.id = uuid::Uuid::now_v7().to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metadata_forms() {
        let base =
            json!({"namespace":"n","tenant":"t","provider":"p","action_type":"a","payload":{}});
        let mut flat = base.clone();
        flat["metadata"] = json!({"cluster": "c1"});
        let mut labels = base.clone();
        labels["metadata"] = json!({"labels": {"cluster": "c1"}});
        for v in [flat, labels] {
            let a: Action = serde_json::from_value(v).unwrap();
            assert_eq!(a.metadata.get("cluster").map(String::as_str), Some("c1"));
        }
        let mut bad = base.clone();
        bad["metadata"] = json!({"n": 1});
        assert!(
            serde_json::from_value::<Action>(bad)
                .unwrap_err()
                .to_string()
                .contains("metadata must be")
        );
    }

    #[test]
    fn extra_sdk_fields_are_ignored() {
        let v = json!({"namespace":"n","tenant":"t","provider":"p","action_type":"a","payload":{},
            "template":"x","attachments":[],"signature":"s"});
        assert!(serde_json::from_value::<Action>(v).is_ok());
    }

    fn valid() -> Action {
        serde_json::from_value(
            json!({"namespace":"ns-1","tenant":"t","provider":"p","action_type":"a","payload":{}}),
        )
        .unwrap()
    }

    #[test]
    fn namespace_is_a_dns_label() {
        for ok in ["a", "ns-1", "0", &"a".repeat(63)] {
            let mut a = valid();
            a.namespace = ok.to_owned();
            assert_eq!(validate(&a), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "A",
            "a_b",
            "a:b",
            "-a",
            "a-",
            "a.b",
            "é",
            &"a".repeat(64),
            "a\nb",
        ] {
            let mut a = valid();
            a.namespace = bad.to_owned();
            let err = validate(&a).unwrap_err();
            assert!(err.contains("`namespace`"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn every_field_is_bounded_and_free_of_control_characters() {
        type Set = fn(&mut Action, String);
        let fields: [(&str, usize, Set); 7] = [
            ("tenant", limits::NAME, |a, v| a.tenant = v),
            ("provider", limits::NAME, |a, v| a.provider = v),
            ("action_type", limits::NAME, |a, v| a.action_type = v),
            ("id", limits::ID, |a, v| a.id = v),
            ("dedup_key", limits::DEDUP_KEY, |a, v| a.dedup_key = Some(v)),
            ("fingerprint", limits::FINGERPRINT, |a, v| {
                a.fingerprint = Some(v)
            }),
            ("status", limits::STATUS, |a, v| a.status = Some(v)),
        ];
        for (field, limit, set) in fields {
            let mut a = valid();
            set(&mut a, "x".repeat(limit));
            assert_eq!(validate(&a), Ok(()), "{field} at its limit");
            set(&mut a, "x".repeat(limit + 1));
            let err = validate(&a).unwrap_err();
            assert!(
                err.contains(&format!("`{field}`")) && err.contains("limit"),
                "{err}"
            );
            for bad in ["a\0b", "a\nb", "\u{7f}", "x\u{85}y", "\u{1b}[31m"] {
                set(&mut a, bad.to_owned());
                let err = validate(&a).unwrap_err();
                assert!(
                    err.contains(&format!("`{field}`")) && err.contains("control"),
                    "{err}"
                );
            }
            set(&mut a, "ünïcödé ✓".to_owned());
            assert_eq!(validate(&a), Ok(()), "{field} with non-control unicode");
        }
    }

    #[test]
    fn metadata_is_bounded() {
        let mut a = valid();
        a.metadata = (0..limits::METADATA_ENTRIES)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        assert_eq!(validate(&a), Ok(()));
        a.metadata.insert("one-more".into(), "v".into());
        assert!(
            validate(&a)
                .unwrap_err()
                .contains("`metadata` has 65 entries")
        );
        for (k, v, needle) in [
            ("k\0".to_owned(), "v".to_owned(), "`metadata key`"),
            ("k".repeat(254), "v".to_owned(), "`metadata key`"),
            ("k".to_owned(), "v\r".to_owned(), "`metadata value`"),
            ("k".to_owned(), "v".repeat(1025), "`metadata value`"),
        ] {
            a.metadata = HashMap::from([(k, v)]);
            let err = validate(&a).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
    }
}
