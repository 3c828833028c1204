//! The action a client dispatches: Acteon's `Action` JSON.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// An action to dispatch. Unknown fields (template, attachments, signature…) are ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Action {
    /// Generated (UUID v7) when absent.
    #[serde(default)]
    pub id: String,
    pub namespace: String,
    pub tenant: String,
    pub provider: String,
    pub action_type: String,
    #[schema(value_type = Object)]
    pub payload: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    /// Flat string map; `{"labels": {…}}` (Acteon's Python SDK) is accepted too.
    #[serde(
        default,
        deserialize_with = "metadata",
        skip_serializing_if = "HashMap::is_empty"
    )]
    pub metadata: HashMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
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

/// What is wrong with a well-formed but unacceptable action.
pub fn validate(action: &Action) -> Result<(), String> {
    for (field, value) in [
        ("namespace", &action.namespace),
        ("tenant", &action.tenant),
        ("provider", &action.provider),
        ("action_type", &action.action_type),
    ] {
        if value.is_empty() {
            return Err(format!("`{field}` must not be empty"));
        }
        if value.len() > 253 {
            return Err(format!("`{field}` is longer than 253 characters"));
        }
    }
    if action.id.len() > 256 {
        return Err("`id` is longer than 256 characters".into());
    }
    Ok(())
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
}
