//! The `teams` provider: a Microsoft Teams incoming webhook, or a Power Automate
//! Workflows URL ("when a Teams webhook request is received"), both `POST`ed a message
//! whose attachment is an Adaptive Card.
//!
//! Payload mapping: `card` (an Adaptive Card object) is sent as the message's one
//! attachment; `attachments` (an array of message attachments) is sent as is; otherwise a
//! card is built: a heading from `title` (else `summary` when there is also a `text`),
//! a body from `text` (else `summary`, else the action type and payload as compact JSON),
//! and `severity` colouring the heading (or the body without one).
//!
//! Workflows answer 202, legacy connectors 200 with the body `1`. A connector also answers
//! 200 when it failed to deliver, with the reason as text (`Webhook message delivery failed
//! with error: … HttpStatusCode 429 …`): a 2xx whose body is neither empty, `1` nor JSON is
//! a failure (`TEAMS_ERROR`), retried when the quoted status is 429 or 5xx. 408, 429 (after
//! `Retry-After`), 5xx and transport errors are retried; other 4xx fail at once. The URL is
//! the credential: messages call it `teams webhook`.

use std::time::Duration;

use acteon_api::crd::ProviderSpec;
use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::http::{Answer, Attempt, HttpSettings, bounded, with_retries};
use super::response::{MAX_EXCERPT, Read, UrlSecrets, secret_webhook_url};
use super::{Provider, ProviderError};
use crate::action::Action;
use crate::outcome::ProviderResponse;

const TARGET: &str = "teams webhook";
const CARD_TYPE: &str = "application/vnd.microsoft.card.adaptive";
/// A generated text is kept short (Teams refuses messages over about 28 KB).
const MAX_GENERATED_TEXT: usize = 3000;
/// Teams shows at most a handful of attachments; more is a mistake in the payload.
const MAX_ATTACHMENTS: usize = 10;

pub struct TeamsProvider {
    url: reqwest::Url,
    /// Cut out of anything Teams says back (a connector's token, a Workflows `sig`).
    secrets: UrlSecrets,
    settings: HttpSettings,
    http: reqwest::Client,
}

impl std::fmt::Debug for TeamsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeamsProvider")
            .field("url", &"***")
            .field("timeout", &self.settings.timeout)
            .field("retry", &self.settings.retry)
            .finish_non_exhaustive()
    }
}

impl TeamsProvider {
    /// `url`: the webhook URL from its Secret. Fails naming what is wrong, never the URL.
    pub fn new(
        spec: &ProviderSpec,
        url: &str,
        http: reqwest::Client,
    ) -> Result<TeamsProvider, String> {
        let (url, secrets) = secret_webhook_url(url)?;
        Ok(TeamsProvider {
            secrets,
            url,
            settings: HttpSettings::from_spec(spec),
            http,
        })
    }

    /// The message for `a`, or why there is none.
    fn message(a: &Action) -> Result<Value, ProviderError> {
        let p = &a.payload;
        let invalid = |m: &str| ProviderError::new("INVALID_PAYLOAD", m, false, 0);
        let attachments = match (p.get("card"), p.get("attachments")) {
            (Some(card), _) if card.is_object() => vec![card_attachment(card.clone())],
            (Some(_), _) => return Err(invalid("teams: `card` is not an object")),
            (None, Some(Value::Array(list))) if list.len() > MAX_ATTACHMENTS => {
                return Err(invalid("teams: more than 10 attachments"));
            }
            (None, Some(Value::Array(list))) if !list.is_empty() => list.clone(),
            (None, Some(_)) => return Err(invalid("teams: `attachments` is not a list")),
            (None, None) => vec![card_attachment(simple_card(a))],
        };
        Ok(json!({"type": "message", "attachments": attachments}))
    }

    async fn attempt(&self, body: &[u8]) -> Result<ProviderResponse, Attempt> {
        let Answer {
            status,
            retry_after: hint,
            headers,
            read,
        } = self
            .settings
            .send_json(
                self.http.post(self.url.clone()),
                "application/json",
                body,
                TARGET,
            )
            .await?;
        if status.is_success() {
            if let Some(failure) = connector_failure(&read) {
                return Err(self.refused_with_200(status, &failure));
            }
            let mut r = ProviderResponse::success(json!({"ok": true}));
            r.headers = headers;
            return Ok(r);
        }
        let message = format!("{TARGET} answered {status}{}", self.said(&read));
        let mut a = match status.as_u16() {
            429 => Attempt::new("RATE_LIMITED", message, true),
            // A request timeout says nothing was done: worth another try.
            408 => Attempt::new("HTTP_4XX", message, true),
            s if s >= 500 => Attempt::new("HTTP_5XX", message, true),
            _ => Attempt::new("HTTP_4XX", message, false),
        };
        a.retry_after = hint;
        Err(a)
    }

    /// A connector's "delivered with 200, but failed" text: retried when the status it
    /// quotes from Teams is worth retrying.
    fn refused_with_200(&self, status: reqwest::StatusCode, text: &str) -> Attempt {
        let retryable = quoted_status(text).is_some_and(|s| s == 429 || s >= 500);
        let quoted = if self.settings.response.redact {
            String::new()
        } else {
            format!(
                ": {}",
                acteon_api::redact::redact_urls_in(&bounded(text, MAX_EXCERPT))
            )
        };
        Attempt::new(
            "TEAMS_ERROR",
            format!("{TARGET} answered {status}{quoted}"),
            retryable,
        )
    }

    /// What Teams said in an error answer: Workflows' `error.message`, else an excerpt.
    fn said(&self, read: &Read) -> String {
        if self.settings.response.redact {
            return String::new();
        }
        let answer: Value = serde_json::from_slice(&read.bytes).unwrap_or(Value::Null);
        let message = answer
            .pointer("/error/message")
            .or_else(|| answer.get("message"))
            .and_then(Value::as_str);
        match message {
            Some(m) => format!(": {}", self.secrets.scrub(&bounded(m, MAX_EXCERPT))),
            None => self.secrets.scrub(&self.settings.response.excerpt(read)),
        }
    }
}

/// A message attachment holding the Adaptive Card `card`.
fn card_attachment(card: Value) -> Value {
    json!({"contentType": CARD_TYPE, "contentUrl": null, "content": card})
}

/// The Adaptive Card built from `title`, `summary`, `text` and `severity`.
fn simple_card(a: &Action) -> Value {
    let p = &a.payload;
    let text_of = |key: &str| p.get(key).and_then(Value::as_str).map(str::to_owned);
    let (heading, text) = match (text_of("title"), text_of("text"), text_of("summary")) {
        (title, Some(text), summary) => (title.or(summary), text),
        (title, None, Some(summary)) => (title, summary),
        (title, None, None) => (
            title,
            bounded(&format!("{}: {}", a.action_type, p), MAX_GENERATED_TEXT),
        ),
    };
    let color = text_of("severity").and_then(|s| severity_color(&s));
    let mut body = Vec::with_capacity(2);
    if let Some(h) = heading {
        let mut block = text_block(h);
        block.insert("weight".into(), "Bolder".into());
        block.insert("size".into(), "Medium".into());
        body.push(block);
    }
    body.push(text_block(text));
    if let (Some(c), Some(first)) = (color, body.first_mut()) {
        first.insert("color".into(), c.into());
    }
    json!({
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    })
}

fn text_block(text: String) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("type".into(), "TextBlock".into());
    m.insert("text".into(), Value::String(text));
    m.insert("wrap".into(), Value::Bool(true));
    m
}

/// The Adaptive Card colour of a severity (the same words PagerDuty uses).
fn severity_color(severity: &str) -> Option<&'static str> {
    match severity {
        "critical" | "error" => Some("Attention"),
        "warning" => Some("Warning"),
        "info" => Some("Accent"),
        "ok" | "resolved" => Some("Good"),
        _ => None,
    }
}

/// The failure text of a 2xx answer, if it is one: anything but empty, `1` or JSON.
fn connector_failure(read: &Read) -> Option<String> {
    let text = String::from_utf8_lossy(&read.bytes);
    let text = text.trim();
    if text.is_empty() || text == "1" || serde_json::from_str::<Value>(text).is_ok() {
        return None;
    }
    Some(text.to_owned())
}

/// The HTTP status a connector's failure text quotes (`HttpStatusCode 429`, or
/// `HttpStatusCode: 429`), if any.
fn quoted_status(text: &str) -> Option<u16> {
    let (_, rest) = text.split_once("HttpStatusCode")?;
    let digits: String = rest
        .trim_start_matches([':', ' ', '='])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[async_trait]
impl Provider for TeamsProvider {
    #[tracing::instrument(name = "teams", skip_all, fields(action = %a.id))]
    async fn execute(&self, a: &Action) -> Result<ProviderResponse, ProviderError> {
        let message = Self::message(a)?;
        // Serialising a Value cannot fail.
        let body = serde_json::to_vec(&message).unwrap_or_default();
        with_retries(self.settings.retry, || self.attempt(&body)).await
    }

    fn max_delivery_time(&self) -> Option<Duration> {
        Some(self.settings.max_delivery_time())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Read {
        Read {
            bytes: text.as_bytes().to_vec(),
            cut: false,
        }
    }

    #[test]
    fn connector_answers_are_told_apart() {
        for ok in ["", "1", " 1\n", "{}", r#"{"status":"ok"}"#] {
            assert_eq!(connector_failure(&read(ok)), None, "{ok:?}");
        }
        let failed = "Webhook message delivery failed with error: Microsoft Teams endpoint \
                      returned HttpStatusCode 429.";
        assert_eq!(connector_failure(&read(failed)).as_deref(), Some(failed));
        assert_eq!(quoted_status(failed), Some(429));
        assert_eq!(quoted_status("HttpStatusCode: 503 Service"), Some(503));
        assert_eq!(quoted_status("Summary or Text is required."), None);
    }

    #[test]
    fn debug_does_not_show_the_url() {
        let spec: ProviderSpec = serde_json::from_value(json!({
            "type": "teams", "teams": {"webhookUrlSecretRef": {"name": "t", "key": "url"}}
        }))
        .expect("spec");
        let p = TeamsProvider::new(
            &spec,
            "https://example.invalid/webhookb2/s3cr3t?sig=s1gnatureValue",
            reqwest::Client::new(),
        )
        .expect("builds");
        let shown = format!("{p:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("s1g"),
            "{shown}"
        );
        assert!(
            TeamsProvider::new(&spec, "ftp://x/s3cr3t", reqwest::Client::new())
                .is_err_and(|e| !e.contains("s3cr3t"))
        );
    }

    #[test]
    fn a_simple_card_maps_title_text_and_severity() {
        let a = |payload: Value| crate::action::Action {
            id: "1".into(),
            namespace: "ns".into(),
            tenant: "t".into(),
            provider: "p".into(),
            action_type: "alert".into(),
            payload,
            created_at: None,
            metadata: Default::default(),
            dedup_key: None,
            status: None,
            fingerprint: None,
            trace: None,
        };
        let card = simple_card(&a(
            json!({"summary": "disk full", "text": "db-1 at 99%", "severity": "critical"}),
        ));
        assert_eq!(card["body"][0]["text"], "disk full");
        assert_eq!(card["body"][0]["color"], "Attention");
        assert_eq!(card["body"][1]["text"], "db-1 at 99%");
        let card = simple_card(&a(json!({"summary": "s", "severity": "warning"})));
        assert_eq!(card["body"].as_array().map(Vec::len), Some(1));
        assert_eq!(card["body"][0]["color"], "Warning");
        let card = simple_card(&a(json!({"value": 1})));
        assert_eq!(card["body"][0]["text"], r#"alert: {"value":1}"#);
    }
}
