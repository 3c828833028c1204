//! The `discord` provider: a Discord webhook (`POST <webhook URL>?wait=true`).
//!
//! Payload mapping: `content` (else `text`, else `summary`, else the action type and
//! payload as compact JSON; cut to Discord's 2000 characters), `embeds` (an array, passed
//! as is, at most 10), `username`. `wait=true` makes Discord answer with the message, whose
//! `id` is returned.
//!
//! Updating an earlier message (`messageMode: update`): `PATCH <webhook URL>/messages/{id}`
//! with the new `content` and `embeds` (a webhook may edit the messages it sent); a 404
//! (the message was deleted) fails with `MESSAGE_GONE`. A webhook cannot start a thread on
//! its own message, so replies are not offered.
//!
//! 429 is retried after the answer's `retry_after` (seconds, JSON) or `Retry-After`; 5xx and
//! transport errors with backoff; other 4xx (`{"code": 50006, "message": …}`) fail at once.
//! The webhook URL is the credential: messages call it `discord webhook`.

use std::time::Duration;

use acteon_api::crd::ProviderSpec;
use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::http::{Answer, Attempt, HttpSettings, bounded, with_retries};
use super::response::{MAX_EXCERPT, UrlSecrets, secret_webhook_url, truncate};
use super::{Follow, MESSAGE_GONE, MessageRef, Provider, ProviderError};
use crate::action::Action;
use crate::outcome::ProviderResponse;

/// Discord's limit for `content`, in characters.
const MAX_CONTENT: usize = 2000;
/// Discord's limit of embeds per message.
const MAX_EMBEDS: usize = 10;
const TARGET: &str = "discord webhook";
/// Longest message id kept as a reference (Discord's snowflakes have up to 20 digits).
const MAX_ID: usize = 32;

pub struct DiscordProvider {
    url: reqwest::Url,
    /// The webhook's token (in the URL's path), cut out of anything Discord says back.
    secrets: UrlSecrets,
    settings: HttpSettings,
    http: reqwest::Client,
}

impl std::fmt::Debug for DiscordProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscordProvider")
            .field("url", &"***")
            .field("timeout", &self.settings.timeout)
            .field("retry", &self.settings.retry)
            .finish_non_exhaustive()
    }
}

impl DiscordProvider {
    /// `url`: the webhook URL from its Secret. Fails naming what is wrong, never the URL.
    pub fn new(
        spec: &ProviderSpec,
        url: &str,
        http: reqwest::Client,
    ) -> Result<DiscordProvider, String> {
        let (mut url, secrets) = secret_webhook_url(url)?;
        // Without `wait=true` Discord answers 204 and no message id.
        if !url.query_pairs().any(|(k, _)| k == "wait") {
            url.query_pairs_mut().append_pair("wait", "true");
        }
        Ok(DiscordProvider {
            secrets,
            url,
            settings: HttpSettings::from_spec(spec),
            http,
        })
    }

    /// The message for `a`.
    fn message(&self, a: &Action) -> Result<Value, ProviderError> {
        let p = &a.payload;
        let text_of = |key: &str| p.get(key).and_then(Value::as_str).map(str::to_owned);
        let embeds = p.get("embeds").and_then(Value::as_array);
        if embeds.is_some_and(|e| e.len() > MAX_EMBEDS) {
            return Err(ProviderError::new(
                "INVALID_PAYLOAD",
                format!("discord: more than {MAX_EMBEDS} embeds"),
                false,
                0,
            ));
        }
        let content = text_of("content")
            .or_else(|| text_of("text"))
            .or_else(|| text_of("summary"));
        let content = match (content, embeds) {
            (Some(c), _) => Some(c),
            (None, Some(_)) => None,
            (None, None) => Some(format!("{}: {}", a.action_type, p)),
        };
        let mut m = Map::new();
        if let Some(c) = content {
            // Discord refuses longer content; a cut message beats none.
            m.insert("content".into(), truncate(&c, MAX_CONTENT).into());
        }
        if let Some(e) = embeds {
            m.insert("embeds".into(), Value::Array(e.clone()));
        }
        if let Some(u) = text_of("username") {
            m.insert("username".into(), Value::String(u));
        }
        Ok(Value::Object(m))
    }

    /// `PATCH <webhook URL>/messages/{id}`, keeping the URL's `thread_id` (a message in a
    /// thread is found there) and dropping `wait` (the edit answers the message anyway);
    /// `None` for an id that is not a snowflake.
    fn edit_url(&self, id: &str) -> Option<reqwest::Url> {
        if id.is_empty() || id.len() > MAX_ID || !id.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut url = self.url.clone();
        let query: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != "wait")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.path_segments_mut()
            .ok()?
            .pop_if_empty()
            .extend(["messages", id]);
        url.set_query(None);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Some(url)
    }

    /// One request: a new message, or (`edit`) the edit of one.
    async fn attempt(
        &self,
        edit: Option<&reqwest::Url>,
        body: &[u8],
    ) -> Result<(ProviderResponse, Option<MessageRef>), Attempt> {
        let req = match edit {
            Some(url) => self.http.patch(url.clone()),
            None => self.http.post(self.url.clone()),
        };
        let Answer {
            status,
            retry_after: header_hint,
            headers,
            read,
        } = self
            .settings
            .send_json(req, "application/json", body, TARGET)
            .await?;
        let answer: Value = serde_json::from_slice(&read.bytes).unwrap_or(Value::Null);
        if status.is_success() {
            let body = if self.settings.response.redact {
                json!({})
            } else {
                json!({"id": answer.get("id"), "channel_id": answer.get("channel_id")})
            };
            let mut r = ProviderResponse::success(body);
            r.headers = headers;
            let reference = answer
                .get("id")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty() && id.len() <= MAX_ID)
                .map(|id| MessageRef {
                    channel: None,
                    id: id.to_owned(),
                });
            return Ok((r, reference));
        }
        // Discord's explanation: `message` (and its numeric `code`), bounded.
        let said = if self.settings.response.redact {
            String::new()
        } else {
            match answer.get("message").and_then(Value::as_str) {
                Some(m) => format!(
                    ": {}{}",
                    self.secrets.scrub(&bounded(m, MAX_EXCERPT)),
                    answer
                        .get("code")
                        .and_then(Value::as_i64)
                        .map(|c| format!(" (code {c})"))
                        .unwrap_or_default()
                ),
                None => self.secrets.scrub(&self.settings.response.excerpt(&read)),
            }
        };
        let message = format!("{TARGET} answered {status}{said}");
        Err(match status.as_u16() {
            429 => {
                let mut a = Attempt::new("RATE_LIMITED", message, true);
                // The JSON `retry_after` is in seconds (fractional); the header rounds.
                a.retry_after = answer
                    .get("retry_after")
                    .and_then(Value::as_f64)
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
                    .or(header_hint);
                a
            }
            s if s >= 500 => Attempt::new("HTTP_5XX", message, true),
            404 if edit.is_some() => Attempt::new(MESSAGE_GONE, message, false),
            _ => Attempt::new("HTTP_4XX", message, false),
        })
    }
}

#[async_trait]
impl Provider for DiscordProvider {
    async fn execute(&self, a: &Action) -> Result<ProviderResponse, ProviderError> {
        self.execute_with(a, Follow::New).await.map(|(r, _)| r)
    }

    #[tracing::instrument(name = "discord", skip_all, fields(action = %a.id))]
    async fn execute_with(
        &self,
        a: &Action,
        follow: Follow<'_>,
    ) -> Result<(ProviderResponse, Option<MessageRef>), ProviderError> {
        let mut message = self.message(a)?;
        // Only an update refers to a message; a reply (refused by validation) and a
        // reference that is no message id post anew.
        let edit = match follow {
            Follow::Update(m) => self.edit_url(&m.id),
            Follow::New | Follow::Reply(_) => None,
        };
        if edit.is_some()
            && let Value::Object(fields) = &mut message
        {
            // An edit changes the content only: the author's name is not editable.
            fields.remove("username");
        }
        let body = serde_json::to_vec(&message).unwrap_or_default();
        with_retries(self.settings.retry, || self.attempt(edit.as_ref(), &body)).await
    }

    fn max_delivery_time(&self) -> Option<Duration> {
        Some(self.settings.max_delivery_time())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(url: &str) -> DiscordProvider {
        let spec: ProviderSpec = serde_json::from_value(json!({
            "type": "discord", "discord": {"webhookUrlSecretRef": {"name": "d", "key": "url"}}
        }))
        .expect("spec");
        DiscordProvider::new(&spec, url, reqwest::Client::new()).expect("provider")
    }

    #[test]
    fn an_edit_goes_to_the_message_under_the_webhook_keeping_its_thread() {
        let p = provider("https://discord.test/api/webhooks/1/tok?thread_id=77");
        let url = p.edit_url("1188").expect("a snowflake");
        assert_eq!(
            url.as_str(),
            "https://discord.test/api/webhooks/1/tok/messages/1188?thread_id=77"
        );
        let p = provider("https://discord.test/api/webhooks/1/tok/");
        let url = p.edit_url("42").expect("a snowflake");
        assert_eq!(
            url.as_str(),
            "https://discord.test/api/webhooks/1/tok/messages/42"
        );
        for bad in ["", "../x", "12a", &"1".repeat(40)] {
            assert_eq!(p.edit_url(bad), None, "{bad:?}");
        }
    }
}
