//! The `opsgenie` provider: Opsgenie's Alert API v2 with an API integration key
//! (`Authorization: GenieKey <key>`).
//!
//! What to do: the payload's `action` (`create`, default; `close` or `resolve`;
//! `acknowledge` or `ack`), else PagerDuty's `event_action` (`trigger`, `resolve`,
//! `acknowledge`). Create is `POST /v2/alerts`; close and acknowledge are
//! `POST /v2/alerts/{alias}/close|acknowledge?identifierType=alias` and need an alias.
//!
//! Payload mapping (create): `message` (else `summary`, else `title`, else `text`, else the
//! action type; cut to 130 characters), `alias` (else the payload's `dedup_key`, else the
//! action's `dedup_key`, else its `fingerprint`), `description` (else `text` when it is not
//! the message), `priority` (`P1`–`P5`, else from `severity`: critical P1, error/high P2,
//! warning P3, low P4, info P5, else the Provider's, else P3), `tags` (with the
//! Provider's), `details` (else `custom_details`; values that are not strings as JSON
//! text), `entity`, `source` (else the Provider's, else `<namespace>/<tenant>`),
//! `responders` (else the Provider's), `actions`, `note`, `user`.
//!
//! Opsgenie answers 202 `{"result", "took", "requestId"}`: success, with the request id
//! (returned even with `redactResponse`: it is how the request's processing is looked up).
//! 4xx fail at once with Opsgenie's `message` (and `errors`); 429 (after `Retry-After` when
//! given), 5xx and transport errors are retried. The key is never shown, and is cut out of
//! anything Opsgenie says back before it is quoted.

use std::collections::BTreeSet;
use std::time::Duration;

use acteon_api::crd::ProviderSpec;
use acteon_api::crd::provider::OpsgenieProvider as OpsgenieSpec;
use async_trait::async_trait;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::{Map, Value, json};

use super::http::{Answer, Attempt, HttpSettings, bounded, with_retries};
use super::response::{MAX_EXCERPT, truncate};
use super::{Provider, ProviderError};
use crate::action::Action;
use crate::outcome::ProviderResponse;

/// Default Alert API base URL (EU accounts: `https://api.eu.opsgenie.com`).
pub const DEFAULT_API_URL: &str = "https://api.opsgenie.com";
/// Opsgenie's limits, in characters (longer fields are refused, or cut by Opsgenie).
const MAX_MESSAGE: usize = 130;
const MAX_ALIAS: usize = 512;
const MAX_DESCRIPTION: usize = 15_000;
const MAX_SOURCE: usize = 100;
const MAX_ENTITY: usize = 512;
const MAX_NOTE: usize = 25_000;
const MAX_TAGS: usize = 20;
const MAX_TAG: usize = 50;
const MAX_DETAILS_TEXT: usize = 8_000;

/// What a delivery asks of Opsgenie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verb {
    Create,
    Close,
    Acknowledge,
}

pub struct OpsgenieProvider {
    base: reqwest::Url,
    auth: HeaderValue,
    /// The key, only to cut it out of what Opsgenie says back.
    key: String,
    priority: String,
    responders: Value,
    tags: Vec<String>,
    source: Option<String>,
    settings: HttpSettings,
    http: reqwest::Client,
}

impl std::fmt::Debug for OpsgenieProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsgenieProvider")
            .field("base", &acteon_api::redact::redact_url(self.base.as_str()))
            .field("key", &"***")
            .field("priority", &self.priority)
            .field("timeout", &self.settings.timeout)
            .finish_non_exhaustive()
    }
}

impl OpsgenieProvider {
    /// Fails with the field and a message naming what is wrong, never the key.
    pub fn new(
        o: &OpsgenieSpec,
        spec: &ProviderSpec,
        key: &[u8],
        http: reqwest::Client,
    ) -> Result<OpsgenieProvider, (&'static str, String)> {
        let key_error = |m: &str| ("spec.opsgenie.apiKeySecretRef", m.to_owned());
        let key = std::str::from_utf8(key.trim_ascii())
            .map_err(|_| key_error("the API key is not UTF-8"))?
            .to_owned();
        if key.is_empty() {
            return Err(key_error("the API key is empty"));
        }
        let mut auth = HeaderValue::from_str(&format!("GenieKey {key}"))
            .map_err(|_| key_error("the API key is not a valid HTTP header value"))?;
        auth.set_sensitive(true);
        let base = o.api_url.as_deref().unwrap_or(DEFAULT_API_URL);
        let base = reqwest::Url::parse(base)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base())
            .ok_or_else(|| ("spec.opsgenie.apiUrl", "not an http(s) URL".to_owned()))?;
        Ok(OpsgenieProvider {
            base,
            auth,
            key,
            priority: o.priority.clone().unwrap_or_else(|| "P3".into()),
            responders: serde_json::to_value(&o.responders).unwrap_or(Value::Null),
            tags: o.tags.clone(),
            source: o.source.clone(),
            settings: HttpSettings::from_spec(spec),
            http,
        })
    }

    /// The URL and body of the request for `a`, or why there is none.
    fn request(&self, a: &Action) -> Result<(reqwest::Url, Value), ProviderError> {
        let verb = verb(&a.payload)?;
        let alias = alias(a);
        let mut url = self.base.clone();
        let Ok(mut path) = url.path_segments_mut() else {
            // `new` refused bases that cannot have a path.
            return Err(invalid("opsgenie: apiUrl cannot have a path"));
        };
        path.pop_if_empty().extend(["v2", "alerts"]);
        let body = match (verb, alias) {
            (Verb::Create, alias) => {
                drop(path);
                self.alert(a, alias)
            }
            (verb, Some(alias)) => {
                let what = if verb == Verb::Close {
                    "close"
                } else {
                    "acknowledge"
                };
                // Pushed as one segment: a `/` in the alias is escaped, not a path.
                path.extend([alias.as_str(), what]);
                drop(path);
                url.query_pairs_mut().append_pair("identifierType", "alias");
                self.closing(a)
            }
            (_, None) => {
                return Err(invalid(
                    "opsgenie: close and acknowledge need an alias (payload `alias` or \
                     `dedup_key`, the action's dedup_key or fingerprint)",
                ));
            }
        };
        Ok((url, body))
    }

    /// The body of a create request.
    fn alert(&self, a: &Action, alias: Option<String>) -> Value {
        let p = &a.payload;
        // An empty text is no message: Opsgenie refuses an empty one.
        let text_of = |key: &str| {
            p.get(key)
                .and_then(Value::as_str)
                .filter(|t| !t.trim().is_empty())
                .map(str::to_owned)
        };
        let (message, from_text) = match ["message", "summary", "title"]
            .iter()
            .find_map(|k| text_of(k))
        {
            Some(m) => (m, false),
            None => match text_of("text") {
                Some(t) => (t, true),
                None => (a.action_type.clone(), false),
            },
        };
        let mut alert = Map::new();
        alert.insert(
            "message".into(),
            truncate(&message, MAX_MESSAGE).to_owned().into(),
        );
        if let Some(alias) = alias {
            alert.insert("alias".into(), alias.into());
        }
        let description = text_of("description").or_else(|| text_of("text").filter(|_| !from_text));
        if let Some(d) = description {
            alert.insert(
                "description".into(),
                truncate(&d, MAX_DESCRIPTION).to_owned().into(),
            );
        }
        alert.insert("priority".into(), self.priority_of(p).into());
        let tags = self.tags_of(p);
        if !tags.is_empty() {
            alert.insert("tags".into(), tags.into());
        }
        if let Some(d) = details(p) {
            alert.insert("details".into(), d);
        }
        if let Some(e) = text_of("entity") {
            alert.insert("entity".into(), truncate(&e, MAX_ENTITY).to_owned().into());
        }
        alert.insert("source".into(), self.source_of(a).into());
        match p.get("responders").filter(|r| r.is_array()) {
            Some(r) => {
                alert.insert("responders".into(), r.clone());
            }
            None if self.responders.as_array().is_some_and(|r| !r.is_empty()) => {
                alert.insert("responders".into(), self.responders.clone());
            }
            None => {}
        }
        if let Some(actions) = p.get("actions").filter(|v| v.is_array()) {
            alert.insert("actions".into(), actions.clone());
        }
        for key in ["note", "user"] {
            if let Some(v) = text_of(key) {
                alert.insert(key.into(), truncate(&v, MAX_NOTE).to_owned().into());
            }
        }
        Value::Object(alert)
    }

    /// The body of a close or acknowledge request.
    fn closing(&self, a: &Action) -> Value {
        let p = &a.payload;
        let mut body = Map::new();
        body.insert("source".into(), self.source_of(a).into());
        for key in ["note", "user"] {
            if let Some(v) = p.get(key).and_then(Value::as_str) {
                body.insert(key.into(), truncate(v, MAX_NOTE).to_owned().into());
            }
        }
        Value::Object(body)
    }

    fn priority_of(&self, p: &Value) -> String {
        let given = p
            .get("priority")
            .and_then(Value::as_str)
            .filter(|v| matches!(*v, "P1" | "P2" | "P3" | "P4" | "P5"));
        let by_severity = || {
            Some(match p.get("severity").and_then(Value::as_str)? {
                "critical" => "P1",
                "error" | "high" => "P2",
                "warning" => "P3",
                "low" => "P4",
                "info" => "P5",
                _ => return None,
            })
        };
        given
            .or_else(by_severity)
            .map(str::to_owned)
            .unwrap_or_else(|| self.priority.clone())
    }

    /// The payload's tags and the Provider's, without repeats, within Opsgenie's limits.
    fn tags_of(&self, p: &Value) -> Vec<String> {
        let payload_tags = p
            .get("tags")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str);
        let mut seen = BTreeSet::new();
        payload_tags
            .chain(self.tags.iter().map(String::as_str))
            .map(|t| truncate(t.trim(), MAX_TAG).to_owned())
            .filter(|t| !t.is_empty() && seen.insert(t.clone()))
            .take(MAX_TAGS)
            .collect()
    }

    fn source_of(&self, a: &Action) -> String {
        let source = a
            .payload
            .get("source")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| self.source.clone())
            .unwrap_or_else(|| format!("{}/{}", a.namespace, a.tenant));
        truncate(&source, MAX_SOURCE).to_owned()
    }

    /// `text` with the key cut out.
    fn scrub(&self, text: &str) -> String {
        text.replace(&self.key, "***")
    }

    async fn attempt(&self, url: &reqwest::Url, body: &[u8]) -> Result<ProviderResponse, Attempt> {
        const TARGET: &str = "opsgenie alert API";
        let req = self
            .http
            .post(url.clone())
            .header(AUTHORIZATION, self.auth.clone());
        let Answer {
            status,
            retry_after: hint,
            headers,
            read,
        } = self
            .settings
            .send_json(req, "application/json", body, TARGET)
            .await?;
        let answer: Value = serde_json::from_slice(&read.bytes).unwrap_or(Value::Null);
        if status.is_success() {
            let request_id = answer.get("requestId").cloned().unwrap_or(Value::Null);
            let body = if self.settings.response.redact {
                json!({"requestId": request_id})
            } else {
                json!({"result": answer.get("result"), "requestId": request_id})
            };
            let mut r = ProviderResponse::success(body);
            r.headers = headers;
            return Ok(r);
        }
        let said = if self.settings.response.redact {
            String::new()
        } else {
            match opsgenie_message(&answer) {
                Some(m) => format!(": {}", self.scrub(&bounded(&m, MAX_EXCERPT))),
                None => self.scrub(&self.settings.response.excerpt(&read)),
            }
        };
        let message = format!("{TARGET} answered {status}{said}");
        let mut a = match status.as_u16() {
            429 => Attempt::new("RATE_LIMITED", message, true),
            s if s >= 500 => Attempt::new("HTTP_5XX", message, true),
            _ => Attempt::new("HTTP_4XX", message, false),
        };
        a.retry_after = hint;
        Err(a)
    }
}

fn invalid(message: &str) -> ProviderError {
    ProviderError::new("INVALID_PAYLOAD", message, false, 0)
}

/// What the payload asks for: `action`, else PagerDuty's `event_action`.
fn verb(p: &Value) -> Result<Verb, ProviderError> {
    let asked = p
        .get("action")
        .or_else(|| p.get("event_action"))
        .and_then(Value::as_str);
    match asked {
        None | Some("create" | "trigger") => Ok(Verb::Create),
        Some("close" | "resolve") => Ok(Verb::Close),
        Some("acknowledge" | "ack") => Ok(Verb::Acknowledge),
        Some(other) => Err(invalid(&format!(
            "opsgenie: action `{}` is not one of create, close, resolve, acknowledge",
            bounded(other, 64)
        ))),
    }
}

/// The alert's alias: the payload's `alias` or `dedup_key`, the action's `dedup_key` or
/// its `fingerprint`; cut to Opsgenie's 512 characters.
fn alias(a: &Action) -> Option<String> {
    let text_of = |key: &str| {
        a.payload
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    text_of("alias")
        .or_else(|| text_of("dedup_key"))
        .or_else(|| a.dedup_key.clone())
        .or_else(|| a.fingerprint.clone())
        .filter(|s| !s.is_empty())
        .map(|s| truncate(&s, MAX_ALIAS).to_owned())
}

/// `details` (else `custom_details`) as Opsgenie's string map: other values as JSON text,
/// each cut to 8000 characters (Opsgenie's limit for the whole map).
fn details(p: &Value) -> Option<Value> {
    let map = p
        .get("details")
        .or_else(|| p.get("custom_details"))?
        .as_object()?;
    let details: Map<String, Value> = map
        .iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (
                k.clone(),
                Value::String(truncate(&text, MAX_DETAILS_TEXT).to_owned()),
            )
        })
        .collect();
    Some(Value::Object(details))
}

/// Opsgenie's explanation of an error: `message`, and the per-field `errors` of a 422.
fn opsgenie_message(answer: &Value) -> Option<String> {
    let message = answer.get("message").and_then(Value::as_str)?;
    let errors = answer
        .get("errors")
        .and_then(Value::as_object)
        .map(|e| {
            e.iter()
                .map(|(field, why)| format!("{field}: {}", why.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|e| !e.is_empty());
    Some(match errors {
        Some(e) => format!("{message} ({e})"),
        None => message.to_owned(),
    })
}

#[async_trait]
impl Provider for OpsgenieProvider {
    #[tracing::instrument(name = "opsgenie", skip_all, fields(action = %a.id))]
    async fn execute(&self, a: &Action) -> Result<ProviderResponse, ProviderError> {
        let (url, body) = self.request(a)?;
        // Serialising a Value cannot fail.
        let body = serde_json::to_vec(&body).unwrap_or_default();
        with_retries(self.settings.retry, || self.attempt(&url, &body)).await
    }

    fn max_delivery_time(&self) -> Option<Duration> {
        Some(self.settings.max_delivery_time())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> OpsgenieProvider {
        let spec: ProviderSpec = serde_json::from_value(json!({
            "type": "opsgenie",
            "opsgenie": {"apiKeySecretRef": {"name": "og", "key": "k"},
                         "apiUrl": "https://api.eu.opsgenie.com/", "tags": ["acteon", "db"]}
        }))
        .expect("spec");
        let o = spec.opsgenie.clone().expect("block");
        OpsgenieProvider::new(&o, &spec, b"g3n13-k3y\n", reqwest::Client::new()).expect("builds")
    }

    fn action(payload: Value) -> Action {
        Action {
            id: "1".into(),
            namespace: "ns".into(),
            tenant: "t".into(),
            provider: "og".into(),
            action_type: "alert".into(),
            payload,
            created_at: None,
            metadata: Default::default(),
            dedup_key: Some("dk".into()),
            status: None,
            fingerprint: None,
            trace: None,
        }
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let shown = format!("{:?}", provider());
        assert!(!shown.contains("g3n13"), "{shown}");
    }

    #[test]
    fn create_maps_the_payload_within_opsgenies_limits() {
        let p = provider();
        let (url, body) = p
            .request(&action(json!({
                "summary": "x".repeat(200), "text": "details here", "severity": "error",
                "tags": ["db", "prod"], "details": {"cpu": 97, "host": "db-1"}
            })))
            .expect("request");
        assert_eq!(url.as_str(), "https://api.eu.opsgenie.com/v2/alerts");
        assert_eq!(
            body["message"].as_str().map(|m| m.chars().count()),
            Some(130)
        );
        assert_eq!(body["description"], "details here");
        assert_eq!(body["priority"], "P2");
        assert_eq!(body["alias"], "dk");
        assert_eq!(body["tags"], json!(["db", "prod", "acteon"]));
        assert_eq!(body["details"], json!({"cpu": "97", "host": "db-1"}));
        assert_eq!(body["source"], "ns/t");
    }

    #[test]
    fn close_and_acknowledge_go_to_the_alias() {
        let p = provider();
        let (url, body) = p
            .request(&action(
                json!({"action": "close", "alias": "db-1/cpu", "note": "ok"}),
            ))
            .expect("request");
        assert_eq!(
            url.as_str(),
            "https://api.eu.opsgenie.com/v2/alerts/db-1%2Fcpu/close?identifierType=alias"
        );
        assert_eq!(body, json!({"source": "ns/t", "note": "ok"}));
        let (url, _) = p
            .request(&action(json!({"event_action": "acknowledge"})))
            .expect("request");
        assert!(url.path().ends_with("/v2/alerts/dk/acknowledge"), "{url}");
        let mut no_alias = action(json!({"action": "resolve"}));
        no_alias.dedup_key = None;
        assert_eq!(
            p.request(&no_alias).expect_err("no alias").code,
            "INVALID_PAYLOAD"
        );
        assert!(p.request(&action(json!({"action": "snooze"}))).is_err());
    }
}
