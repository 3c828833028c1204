//! The `slack` provider: Web API `chat.postMessage` with a bot token, or an incoming
//! webhook.
//!
//! Payload mapping: `channel` (else the Provider's), `text` (else `summary`, else the action
//! type and payload as compact JSON), `blocks` (an array, passed as is), `thread_ts`.
//!
//! The Web API answers HTTP 200 with `{"ok": false, "error": "<code>"}` when it refuses a
//! message: that is a failure (code `SLACK_ERROR`, Slack's code in the message), never
//! retried except `ratelimited`. HTTP 429 is retried after its `Retry-After`, 5xx and
//! transport errors with backoff. The token and the webhook URL (itself a credential) are
//! never shown: messages name the endpoint as `slack chat.postMessage` or
//! `slack incoming webhook`.

use std::time::Duration;

use acteon_api::crd::ProviderSpec;
use acteon_api::crd::provider::SlackProvider as SlackSpec;
use async_trait::async_trait;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::{Map, Value, json};

use super::http::{Answer, Attempt, bounded, send_json, with_retries, worst_case};
use super::response::ResponsePolicy;
use super::{Provider, ProviderError, Retry};
use crate::action::Action;
use crate::outcome::ProviderResponse;

/// Default Web API base URL.
pub const DEFAULT_API_URL: &str = "https://slack.com/api";
/// Slack's limit for `text` is 40,000 characters; a generated text is kept far shorter.
const MAX_GENERATED_TEXT: usize = 3000;
/// Longest Slack error code quoted (they are short identifiers).
const MAX_CODE: usize = 64;

enum Endpoint {
    /// `chat.postMessage` at this URL (not secret), with `Authorization: Bearer <token>`.
    Api { url: String, auth: HeaderValue },
    /// An incoming webhook: the URL is the credential.
    Webhook { url: String },
}

pub struct SlackProvider {
    endpoint: Endpoint,
    channel: Option<String>,
    response: ResponsePolicy,
    timeout: Duration,
    retry: Retry,
    http: reqwest::Client,
}

impl std::fmt::Debug for SlackProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackProvider")
            .field("endpoint", &self.target())
            .field("channel", &self.channel)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// The credential a Slack provider is built with.
pub enum SlackCredential {
    /// A bot token (`xoxb-…`).
    Token(Vec<u8>),
    /// An incoming-webhook URL.
    WebhookUrl(String),
}

impl SlackProvider {
    /// Fails with a message naming what is wrong, never the credential.
    pub fn new(
        s: &SlackSpec,
        spec: &ProviderSpec,
        credential: SlackCredential,
        http: reqwest::Client,
    ) -> Result<SlackProvider, String> {
        let endpoint = match credential {
            SlackCredential::Token(token) => {
                let mut value = b"Bearer ".to_vec();
                value.extend_from_slice(token.trim_ascii());
                let mut auth = HeaderValue::from_bytes(&value)
                    .map_err(|_| "the token is not a valid HTTP header value".to_owned())?;
                auth.set_sensitive(true);
                let base = s.api_url.as_deref().unwrap_or(DEFAULT_API_URL);
                Endpoint::Api {
                    url: format!("{}/chat.postMessage", base.trim_end_matches('/')),
                    auth,
                }
            }
            SlackCredential::WebhookUrl(url) => {
                let url = url.trim().to_owned();
                if reqwest::Url::parse(&url)
                    .map(|u| !matches!(u.scheme(), "http" | "https"))
                    .unwrap_or(true)
                {
                    return Err("the Secret's value is not an http(s) URL".into());
                }
                Endpoint::Webhook { url }
            }
        };
        Ok(SlackProvider {
            endpoint,
            channel: s.channel.clone(),
            response: ResponsePolicy {
                redact: spec.redact_response.unwrap_or(false),
            },
            timeout: Duration::from_secs(spec.timeout_seconds.unwrap_or(10)),
            retry: Retry::from_spec(spec),
            http,
        })
    }

    /// What messages call the endpoint (never the webhook URL).
    fn target(&self) -> &'static str {
        match self.endpoint {
            Endpoint::Api { .. } => "slack chat.postMessage",
            Endpoint::Webhook { .. } => "slack incoming webhook",
        }
    }

    /// The message for `a`, or why there is none.
    fn message(&self, a: &Action) -> Result<Value, ProviderError> {
        let p = &a.payload;
        let text_of = |key: &str| p.get(key).and_then(Value::as_str).map(str::to_owned);
        let mut m = Map::new();
        let channel = text_of("channel").or_else(|| self.channel.clone());
        match (&channel, &self.endpoint) {
            (Some(c), _) => {
                m.insert("channel".into(), Value::String(c.clone()));
            }
            (None, Endpoint::Api { .. }) => {
                return Err(ProviderError::new(
                    "INVALID_PAYLOAD",
                    "slack: no channel: the payload has no `channel` and the Provider no \
                     `spec.slack.channel`",
                    false,
                    0,
                ));
            }
            (None, Endpoint::Webhook { .. }) => {}
        }
        let blocks = p.get("blocks").filter(|b| b.is_array());
        let text = text_of("text").or_else(|| text_of("summary"));
        let text = match (text, blocks) {
            (Some(t), _) => t,
            // Slack uses `text` as the notification fallback of blocks: keep it short.
            (None, Some(_)) => a.action_type.clone(),
            (None, None) => bounded(&format!("{}: {}", a.action_type, p), MAX_GENERATED_TEXT),
        };
        m.insert("text".into(), Value::String(text));
        if let Some(b) = blocks {
            m.insert("blocks".into(), b.clone());
        }
        if let Some(ts) = text_of("thread_ts") {
            m.insert("thread_ts".into(), Value::String(ts));
        }
        Ok(Value::Object(m))
    }

    async fn attempt(&self, body: &[u8]) -> Result<ProviderResponse, Attempt> {
        let target = self.target();
        let req = match &self.endpoint {
            Endpoint::Api { url, auth } => self.http.post(url).header(AUTHORIZATION, auth.clone()),
            Endpoint::Webhook { url } => self.http.post(url),
        };
        let Answer {
            status,
            retry_after: hint,
            headers,
            read,
        } = send_json(
            req,
            self.timeout,
            "application/json; charset=utf-8",
            body,
            &self.response,
            target,
        )
        .await?;
        if status.as_u16() == 429 {
            let mut a = Attempt::new("RATE_LIMITED", format!("{target} answered {status}"), true);
            a.retry_after = hint;
            return Err(a);
        }
        if status.is_server_error() {
            return Err(Attempt::new(
                "HTTP_5XX",
                format!("{target} answered {status}{}", self.response.excerpt(&read)),
                true,
            ));
        }
        // Incoming webhooks answer errors as 4xx with the code as plain text
        // (`invalid_payload`, `channel_not_found`, `no_service`).
        if !status.is_success() {
            return Err(Attempt::new(
                "SLACK_ERROR",
                format!("{target} answered {status}{}", self.response.excerpt(&read)),
                false,
            ));
        }
        let body = match self.endpoint {
            Endpoint::Webhook { .. } => json!({"ok": true}),
            Endpoint::Api { .. } => {
                let answer: Value = serde_json::from_slice(&read.bytes).map_err(|_| {
                    Attempt::new(
                        "SLACK_ERROR",
                        format!("{target} answered {status} without a JSON body"),
                        false,
                    )
                })?;
                if answer.get("ok") != Some(&Value::Bool(true)) {
                    let code = answer
                        .get("error")
                        .and_then(Value::as_str)
                        .map(|c| bounded(c, MAX_CODE))
                        .unwrap_or_else(|| "unknown_error".into());
                    let ratelimited = code == "ratelimited";
                    let mut a = Attempt::new(
                        if ratelimited {
                            "RATE_LIMITED"
                        } else {
                            "SLACK_ERROR"
                        },
                        format!("{target}: {code}"),
                        ratelimited,
                    );
                    a.retry_after = hint;
                    return Err(a);
                }
                // What a caller needs to refer to the message (thread on it, update it).
                json!({"ok": true, "channel": answer.get("channel"), "ts": answer.get("ts")})
            }
        };
        let mut r = ProviderResponse::success(if self.response.redact {
            json!({})
        } else {
            body
        });
        r.headers = headers;
        Ok(r)
    }
}

#[async_trait]
impl Provider for SlackProvider {
    #[tracing::instrument(name = "slack", skip_all, fields(action = %a.id))]
    async fn execute(&self, a: &Action) -> Result<ProviderResponse, ProviderError> {
        let message = self.message(a)?;
        // Serialising a Value cannot fail; an empty body would be refused by Slack.
        let body = serde_json::to_vec(&message).unwrap_or_default();
        with_retries(self.retry, || self.attempt(&body)).await
    }

    fn max_delivery_time(&self) -> Option<Duration> {
        Some(worst_case(&self.retry, self.timeout))
    }
}
