//! The `pagerduty` provider: PagerDuty Events API v2 (`POST <apiUrl>/v2/enqueue`).
//!
//! Payload mapping: `event_action` (`trigger` default, `acknowledge`, `resolve`),
//! `dedup_key` (else the action's `dedup_key`, else its `fingerprint`; required to
//! acknowledge or resolve), `summary` (else `text`, else the action type), `severity`
//! (`critical|error|warning|info`, else the Provider's, else `error`), `source` (else the
//! Provider's, else `<namespace>/<tenant>`), `component`, `group`, `class`,
//! `custom_details` (else the whole payload).
//!
//! 202 is success, answered with PagerDuty's `dedup_key`; 400 fails at once with
//! PagerDuty's message; 429 (after `Retry-After` when given), 5xx and transport errors are
//! retried. The routing key travels in the body only, and is cut out of anything PagerDuty
//! says back before it is quoted.

use std::time::Duration;

use acteon_api::crd::ProviderSpec;
use acteon_api::crd::provider::PagerDutyProvider as PagerDutySpec;
use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::http::{Answer, Attempt, HttpSettings, bounded, with_retries};
use super::response::{MAX_EXCERPT, truncate};
use super::{Provider, ProviderError};
use crate::action::Action;
use crate::outcome::ProviderResponse;

/// Default Events API base URL.
pub const DEFAULT_API_URL: &str = "https://events.pagerduty.com";
/// PagerDuty's limit for `payload.summary`.
const MAX_SUMMARY: usize = 1024;
/// PagerDuty's limit for `dedup_key`.
const MAX_DEDUP_KEY: usize = 255;
const SEVERITIES: &[&str] = &["critical", "error", "warning", "info"];

pub struct PagerDutyProvider {
    url: String,
    routing_key: String,
    severity: String,
    source: Option<String>,
    settings: HttpSettings,
    http: reqwest::Client,
}

impl std::fmt::Debug for PagerDutyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PagerDutyProvider")
            .field("url", &acteon_api::redact::redact_url(&self.url))
            .field("routing_key", &"***")
            .field("severity", &self.severity)
            .finish_non_exhaustive()
    }
}

impl PagerDutyProvider {
    /// Fails with a message naming what is wrong, never the key.
    pub fn new(
        p: &PagerDutySpec,
        spec: &ProviderSpec,
        routing_key: &[u8],
        http: reqwest::Client,
    ) -> Result<PagerDutyProvider, String> {
        let routing_key = std::str::from_utf8(routing_key.trim_ascii())
            .map_err(|_| "the routing key is not UTF-8".to_owned())?
            .to_owned();
        if routing_key.is_empty() {
            return Err("the routing key is empty".into());
        }
        let base = p
            .api_url
            .as_deref()
            .unwrap_or(DEFAULT_API_URL)
            .trim_end_matches('/');
        // A full endpoint URL is accepted as well as the base.
        let url = if base.ends_with("/v2/enqueue") {
            base.to_owned()
        } else {
            format!("{base}/v2/enqueue")
        };
        Ok(PagerDutyProvider {
            url,
            routing_key,
            severity: p.severity.clone().unwrap_or_else(|| "error".into()),
            source: p.source.clone(),
            settings: HttpSettings::from_spec(spec),
            http,
        })
    }

    /// The event for `a`, or why there is none.
    fn event(&self, a: &Action) -> Result<Value, ProviderError> {
        let p = &a.payload;
        let text_of = |key: &str| p.get(key).and_then(Value::as_str).map(str::to_owned);
        let invalid = |m: String| ProviderError::new("INVALID_PAYLOAD", m, false, 0);
        let event_action = text_of("event_action").unwrap_or_else(|| "trigger".into());
        if !matches!(event_action.as_str(), "trigger" | "acknowledge" | "resolve") {
            return Err(invalid(format!(
                "pagerduty: event_action `{}` is not one of trigger, acknowledge, resolve",
                bounded(&event_action, 64)
            )));
        }
        let dedup_key = text_of("dedup_key")
            .or_else(|| a.dedup_key.clone())
            .or_else(|| a.fingerprint.clone());
        let mut event = Map::new();
        event.insert(
            "routing_key".into(),
            Value::String(self.routing_key.clone()),
        );
        event.insert("event_action".into(), Value::String(event_action.clone()));
        match dedup_key {
            Some(k) if k.chars().count() > MAX_DEDUP_KEY => {
                return Err(invalid(format!(
                    "pagerduty: dedup_key is longer than {MAX_DEDUP_KEY} characters"
                )));
            }
            Some(k) => {
                event.insert("dedup_key".into(), Value::String(k));
            }
            None if event_action != "trigger" => {
                return Err(invalid(format!(
                    "pagerduty: `{event_action}` needs a dedup_key (payload, action dedup_key or fingerprint)"
                )));
            }
            None => {}
        }
        if event_action == "trigger" {
            let summary = text_of("summary")
                .or_else(|| text_of("text"))
                .unwrap_or_else(|| a.action_type.clone());
            let severity = text_of("severity")
                .filter(|s| SEVERITIES.contains(&s.as_str()))
                .unwrap_or_else(|| self.severity.clone());
            let source = text_of("source")
                .or_else(|| self.source.clone())
                .unwrap_or_else(|| format!("{}/{}", a.namespace, a.tenant));
            let mut payload = Map::new();
            payload.insert(
                "summary".into(),
                Value::String(truncate(&summary, MAX_SUMMARY).to_owned()),
            );
            payload.insert("severity".into(), Value::String(severity));
            payload.insert("source".into(), Value::String(source));
            for key in ["component", "group", "class", "timestamp"] {
                if let Some(v) = text_of(key) {
                    payload.insert(key.into(), Value::String(v));
                }
            }
            let details = p.get("custom_details").unwrap_or(p).clone();
            payload.insert("custom_details".into(), details);
            event.insert("payload".into(), Value::Object(payload));
            for key in ["client", "client_url"] {
                if let Some(v) = text_of(key) {
                    event.insert(key.into(), Value::String(v));
                }
            }
            for key in ["links", "images"] {
                if let Some(v) = p.get(key).filter(|v| v.is_array()) {
                    event.insert(key.into(), v.clone());
                }
            }
        }
        Ok(Value::Object(event))
    }

    /// `text` with the routing key cut out.
    fn scrub(&self, text: &str) -> String {
        text.replace(&self.routing_key, "***")
    }

    async fn attempt(&self, body: &[u8]) -> Result<ProviderResponse, Attempt> {
        const TARGET: &str = "pagerduty /v2/enqueue";
        let Answer {
            status,
            retry_after: hint,
            headers,
            read,
        } = self
            .settings
            .send_json(self.http.post(&self.url), "application/json", body, TARGET)
            .await?;
        let answer: Value = serde_json::from_slice(&read.bytes).unwrap_or(Value::Null);
        if status.is_success() {
            let dedup_key = answer.get("dedup_key").cloned().unwrap_or(Value::Null);
            // The dedup key is the caller's handle on the incident (to acknowledge or
            // resolve it): returned even when the answer is otherwise redacted.
            let body = if self.settings.response.redact {
                json!({"dedup_key": dedup_key})
            } else {
                json!({
                    "status": answer.get("status"),
                    "message": answer.get("message"),
                    "dedup_key": dedup_key,
                })
            };
            let mut r = ProviderResponse::success(body);
            r.headers = headers;
            return Ok(r);
        }
        // PagerDuty's own explanation: `message` and `errors`, bounded, key cut out.
        let said = if self.settings.response.redact {
            String::new()
        } else {
            let mut parts: Vec<String> = Vec::new();
            if let Some(m) = answer.get("message").and_then(Value::as_str) {
                parts.push(m.to_owned());
            }
            if let Some(errors) = answer.get("errors").and_then(Value::as_array) {
                parts.extend(errors.iter().filter_map(Value::as_str).map(str::to_owned));
            }
            if parts.is_empty() {
                self.scrub(&self.settings.response.excerpt(&read))
            } else {
                format!(": {}", self.scrub(&bounded(&parts.join("; "), MAX_EXCERPT)))
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

#[async_trait]
impl Provider for PagerDutyProvider {
    #[tracing::instrument(name = "pagerduty", skip_all, fields(action = %a.id))]
    async fn execute(&self, a: &Action) -> Result<ProviderResponse, ProviderError> {
        let event = self.event(a)?;
        let body = serde_json::to_vec(&event).unwrap_or_default();
        with_retries(self.settings.retry, || self.attempt(&body)).await
    }

    fn max_delivery_time(&self) -> Option<Duration> {
        Some(self.settings.max_delivery_time())
    }
}
