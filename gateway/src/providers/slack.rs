//! The `slack` provider: Web API `chat.postMessage` with a bot token, or an incoming
//! webhook.
//!
//! Following an earlier message (`messageMode`, Web API only): a reply is a
//! `chat.postMessage` with `thread_ts` set to the root's `ts`, in the root's channel; an
//! update is a `chat.update` of the message's channel id and `ts` (the ids that
//! `chat.postMessage` answered). `message_not_found`, `thread_not_found`,
//! `cant_update_message` and `edit_window_closed` then fail with `MESSAGE_GONE`.
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

use super::http::{Answer, Attempt, HttpSettings, bounded, with_retries};
use super::response::{UrlSecrets, secret_webhook_url};
use super::{Follow, MESSAGE_GONE, MessageRef, Provider, ProviderError};
use crate::action::Action;
use crate::outcome::ProviderResponse;

/// Default Web API base URL.
pub const DEFAULT_API_URL: &str = "https://slack.com/api";
/// Slack's limit for `text` is 40,000 characters; a generated text is kept far shorter.
const MAX_GENERATED_TEXT: usize = 3000;
/// Longest Slack error code quoted (they are short identifiers).
const MAX_CODE: usize = 64;
/// Longest channel id or `ts` kept as a message reference (Slack's are ~20 characters).
const MAX_REF: usize = 64;
/// Slack's answers to a request that followed a message it cannot follow any more.
const GONE: [&str; 4] = [
    "message_not_found",
    "thread_not_found",
    "cant_update_message",
    "edit_window_closed",
];

enum Endpoint {
    /// The Web API methods at these URLs (not secret), with `Authorization: Bearer <token>`.
    Api {
        post: String,
        update: String,
        auth: HeaderValue,
    },
    /// An incoming webhook: the URL is the credential (`secrets`: its parts).
    Webhook {
        url: reqwest::Url,
        secrets: UrlSecrets,
    },
}

/// The Web API method a message goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    PostMessage,
    Update,
}

pub struct SlackProvider {
    endpoint: Endpoint,
    channel: Option<String>,
    settings: HttpSettings,
    http: reqwest::Client,
}

impl std::fmt::Debug for SlackProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackProvider")
            .field("endpoint", &self.target(Method::PostMessage))
            .field("channel", &self.channel)
            .field("timeout", &self.settings.timeout)
            .field("retry", &self.settings.retry)
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
                let base = s
                    .api_url
                    .as_deref()
                    .unwrap_or(DEFAULT_API_URL)
                    .trim_end_matches('/');
                Endpoint::Api {
                    post: format!("{base}/chat.postMessage"),
                    update: format!("{base}/chat.update"),
                    auth,
                }
            }
            SlackCredential::WebhookUrl(url) => {
                let (url, secrets) = secret_webhook_url(&url)?;
                Endpoint::Webhook { url, secrets }
            }
        };
        Ok(SlackProvider {
            endpoint,
            channel: s.channel.clone(),
            settings: HttpSettings::from_spec(spec),
            http,
        })
    }

    /// `text` (from the peer's answer) without the webhook URL's secret parts.
    fn scrub(&self, text: &str) -> String {
        match &self.endpoint {
            Endpoint::Webhook { secrets, .. } => secrets.scrub(text),
            Endpoint::Api { .. } => text.to_owned(),
        }
    }

    /// What messages call the endpoint (never the webhook URL).
    fn target(&self, method: Method) -> &'static str {
        match (&self.endpoint, method) {
            (Endpoint::Api { .. }, Method::PostMessage) => "slack chat.postMessage",
            (Endpoint::Api { .. }, Method::Update) => "slack chat.update",
            (Endpoint::Webhook { .. }, _) => "slack incoming webhook",
        }
    }

    /// The message for `a` following `follow`, and the method it goes to.
    fn request(&self, a: &Action, follow: Follow<'_>) -> Result<(Method, Value), ProviderError> {
        let mut m = self.message(a)?;
        let Value::Object(fields) = &mut m else {
            return Ok((Method::PostMessage, m));
        };
        let (method, reference) = match follow {
            Follow::New => return Ok((Method::PostMessage, m)),
            Follow::Reply(root) => (Method::PostMessage, root),
            Follow::Update(message) => (Method::Update, message),
        };
        // The thread and the message to replace live in the channel of the first message,
        // by id (chat.update takes no channel name), whatever this payload names.
        if let Some(channel) = &reference.channel {
            fields.insert("channel".into(), Value::String(channel.clone()));
        }
        let ts = Value::String(reference.id.clone());
        if method == Method::Update {
            fields.remove("thread_ts");
            fields.insert("ts".into(), ts);
        } else {
            fields.insert("thread_ts".into(), ts);
        }
        Ok((method, m))
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

    /// One request; `following`: it refers to an earlier message (see [`GONE`]).
    async fn attempt(
        &self,
        method: Method,
        body: &[u8],
        following: bool,
    ) -> Result<(ProviderResponse, Option<MessageRef>), Attempt> {
        let target = self.target(method);
        let req = match (&self.endpoint, method) {
            (Endpoint::Api { post, auth, .. }, Method::PostMessage) => {
                self.http.post(post).header(AUTHORIZATION, auth.clone())
            }
            (Endpoint::Api { update, auth, .. }, Method::Update) => {
                self.http.post(update).header(AUTHORIZATION, auth.clone())
            }
            (Endpoint::Webhook { url, .. }, _) => self.http.post(url.clone()),
        };
        let Answer {
            status,
            retry_after: hint,
            headers,
            read,
        } = self
            .settings
            .send_json(req, "application/json; charset=utf-8", body, target)
            .await?;
        if status.as_u16() == 429 {
            let mut a = Attempt::new("RATE_LIMITED", format!("{target} answered {status}"), true);
            a.retry_after = hint;
            return Err(a);
        }
        if status.is_server_error() {
            return Err(Attempt::new(
                "HTTP_5XX",
                format!(
                    "{target} answered {status}{}",
                    self.scrub(&self.settings.response.excerpt(&read))
                ),
                true,
            ));
        }
        // Incoming webhooks answer errors as 4xx with the code as plain text
        // (`invalid_payload`, `channel_not_found`, `no_service`).
        if !status.is_success() {
            return Err(Attempt::new(
                "SLACK_ERROR",
                format!(
                    "{target} answered {status}{}",
                    self.scrub(&self.settings.response.excerpt(&read))
                ),
                false,
            ));
        }
        let mut reference = None;
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
                    let kind = if ratelimited {
                        "RATE_LIMITED"
                    } else if following && GONE.contains(&code.as_str()) {
                        MESSAGE_GONE
                    } else {
                        "SLACK_ERROR"
                    };
                    let mut a = Attempt::new(kind, format!("{target}: {code}"), ratelimited);
                    a.retry_after = hint;
                    return Err(a);
                }
                // What a caller needs to refer to the message (thread on it, update it).
                reference = message_ref(&answer);
                json!({"ok": true, "channel": answer.get("channel"), "ts": answer.get("ts")})
            }
        };
        let mut r = ProviderResponse::success(if self.settings.response.redact {
            json!({})
        } else {
            body
        });
        r.headers = headers;
        Ok((r, reference))
    }
}

/// The channel id and `ts` of the message an answer reports, when both are there and of
/// a sane length.
fn message_ref(answer: &Value) -> Option<MessageRef> {
    let text = |key: &str| {
        answer
            .get(key)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty() && v.len() <= MAX_REF)
    };
    Some(MessageRef {
        channel: Some(text("channel")?.to_owned()),
        id: text("ts")?.to_owned(),
    })
}

#[async_trait]
impl Provider for SlackProvider {
    async fn execute(&self, a: &Action) -> Result<ProviderResponse, ProviderError> {
        self.execute_with(a, Follow::New).await.map(|(r, _)| r)
    }

    #[tracing::instrument(name = "slack", skip_all, fields(action = %a.id))]
    async fn execute_with(
        &self,
        a: &Action,
        follow: Follow<'_>,
    ) -> Result<(ProviderResponse, Option<MessageRef>), ProviderError> {
        let (method, message) = self.request(a, follow)?;
        // Serialising a Value cannot fail; an empty body would be refused by Slack.
        let body = serde_json::to_vec(&message).unwrap_or_default();
        let following = follow != Follow::New;
        with_retries(self.settings.retry, || {
            self.attempt(method, &body, following)
        })
        .await
    }

    fn max_delivery_time(&self) -> Option<Duration> {
        Some(self.settings.max_delivery_time())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> SlackProvider {
        let spec: ProviderSpec = serde_json::from_value(json!({
            "type": "slack",
            "slack": {"tokenSecretRef": {"name": "s", "key": "t"}, "channel": "#alerts"}
        }))
        .expect("spec");
        let Some(s) = &spec.slack else {
            panic!("slack block")
        };
        let token = SlackCredential::Token(b"xoxb-1".to_vec());
        SlackProvider::new(s, &spec, token, reqwest::Client::new()).expect("provider")
    }

    fn action(payload: Value) -> Action {
        serde_json::from_value(json!({
            "namespace": "ns", "tenant": "t", "provider": "p", "action_type": "a",
            "payload": payload
        }))
        .expect("action")
    }

    #[test]
    fn following_a_message_names_it_in_its_channel() {
        let p = api();
        let first = MessageRef {
            channel: Some("C1".into()),
            id: "1.000001".into(),
        };
        let a = action(json!({"text": "hi", "channel": "#ops", "thread_ts": "9.9"}));
        let (method, m) = p.request(&a, Follow::Update(&first)).expect("update");
        assert_eq!(method, Method::Update);
        assert_eq!(m, json!({"channel": "C1", "ts": "1.000001", "text": "hi"}));
        let (method, m) = p.request(&a, Follow::Reply(&first)).expect("reply");
        assert_eq!(method, Method::PostMessage);
        assert_eq!(
            m,
            json!({"channel": "C1", "thread_ts": "1.000001", "text": "hi"})
        );
        let (method, m) = p.request(&a, Follow::New).expect("new");
        assert_eq!(method, Method::PostMessage);
        assert_eq!(
            m,
            json!({"channel": "#ops", "thread_ts": "9.9", "text": "hi"})
        );
    }

    #[test]
    fn only_a_complete_answer_is_a_reference() {
        let r = message_ref(&json!({"ok": true, "channel": "C1", "ts": "1.2"}));
        assert_eq!(
            r,
            Some(MessageRef {
                channel: Some("C1".into()),
                id: "1.2".into()
            })
        );
        assert_eq!(message_ref(&json!({"ok": true, "channel": "C1"})), None);
        let long = "9".repeat(MAX_REF + 1);
        assert_eq!(message_ref(&json!({"channel": "C1", "ts": long})), None);
    }
}
