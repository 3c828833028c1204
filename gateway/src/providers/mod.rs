//! Providers deliver actions. The registry maps (namespace, name) to a built provider;
//! a Provider in namespace N serves actions of N, shared ones serve everyone.

pub mod discord;
pub mod email;
pub mod http;
pub mod log;
pub mod opsgenie;
pub mod pagerduty;
pub mod response;
pub mod slack;
pub mod teams;
pub mod template;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use acteon_api::crd::provider::MessageMode;
use acteon_api::crd::{
    CircuitBreaker, ProviderRateLimit, ProviderSpec, ProviderType, SecretKeyRef,
};
use acteon_api::snapshot::{Entry, secret_id};
use acteon_channel::seal::SealKey;
use async_trait::async_trait;
use reqwest::header::{HeaderName, HeaderValue};

use crate::action::Action;
use crate::outcome::ProviderResponse;

/// A failed delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderError {
    pub code: String,
    pub message: String,
    pub retryable: bool,
    pub attempts: u32,
}

impl ProviderError {
    pub fn new(
        code: &str,
        message: impl Into<String>,
        retryable: bool,
        attempts: u32,
    ) -> ProviderError {
        ProviderError {
            code: code.to_owned(),
            message: message.into(),
            retryable,
            attempts,
        }
    }
}

/// A message a provider delivered, as its protocol refers to it later: Slack's channel id
/// and `ts`, a Discord message id, an email's `Message-ID`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MessageRef {
    /// Where the message is, when the protocol needs it besides the id (Slack's channel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    pub id: String,
}

/// How a delivery relates to an earlier message of its conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Follow<'a> {
    /// A message of its own.
    New,
    /// Replaces this message.
    Update(&'a MessageRef),
    /// Replies to this message (the thread's root).
    Reply(&'a MessageRef),
}

/// The error code of a delivery that referred to a message the peer no longer knows
/// (deleted, or never seen by this account): the caller may deliver it as new instead.
pub const MESSAGE_GONE: &str = "MESSAGE_GONE";

/// Something that delivers an action.
#[async_trait]
pub trait Provider: Send + Sync {
    async fn execute(&self, action: &Action) -> Result<ProviderResponse, ProviderError>;

    /// Delivers `action` following an earlier message, and answers the reference of the
    /// message delivered when the protocol gives one. Providers that cannot refer to
    /// messages (validation keeps their `messageMode` at `new`) deliver a new message.
    async fn execute_with(
        &self,
        action: &Action,
        follow: Follow<'_>,
    ) -> Result<(ProviderResponse, Option<MessageRef>), ProviderError> {
        let _ = follow;
        Ok((self.execute(action).await?, None))
    }

    /// The longest one `execute` can take, every attempt and backoff included; `None` for
    /// providers that wait on nothing. Bounds the in-flight lease of dedup marks.
    fn max_delivery_time(&self) -> Option<Duration> {
        None
    }
}

/// A provider, what it is called, and the delivery settings that wrap it.
pub struct ProviderHandle {
    pub name: String,
    /// `namespace/name`, or the bare name of a shared provider: unique in a snapshot, the
    /// key of its circuit breaker and rate limit in the state backend.
    pub id: String,
    /// Namespace of the Provider; `None` for a shared one.
    pub namespace: Option<String>,
    pub kind: ProviderType,
    pub provider: Arc<dyn Provider>,
    pub circuit: Option<CircuitBreaker>,
    pub rate_limit: Option<ProviderRateLimit>,
    pub message_mode: MessageMode,
}

impl ProviderHandle {
    /// The longest a delivery through this handle can take: the provider's own bound plus
    /// the longest wait for a rate-limit slot, for each provider call it may make.
    pub fn max_delivery_time(&self) -> Option<Duration> {
        let slot = self
            .rate_limit
            .as_ref()
            .map(crate::delivery::rate_limit::max_wait);
        // Following a message the peer lost takes a second call (and slot): see
        // `delivery::threads`.
        let calls = if self.message_mode == MessageMode::New {
            1
        } else {
            2
        };
        match (self.provider.max_delivery_time(), slot) {
            (None, None) => None,
            (a, b) => Some(
                a.unwrap_or_default()
                    .saturating_add(b.unwrap_or_default())
                    .saturating_mul(calls),
            ),
        }
    }
}

/// Accepts everything and does nothing (benchmarks and tests).
pub struct Noop;

#[async_trait]
impl Provider for Noop {
    async fn execute(&self, _: &Action) -> Result<ProviderResponse, ProviderError> {
        Ok(ProviderResponse::success(serde_json::Value::Object(
            Default::default(),
        )))
    }
}

/// A Provider that cannot be built from the snapshot: names the provider and the field,
/// never a credential's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("provider {provider}: {field}: {message}")]
pub struct ProviderBuildError {
    /// `namespace/name`, or the name of a shared provider.
    pub provider: String,
    pub field: String,
    pub message: String,
}

/// The sealed credentials of a snapshot and the key that opens them.
#[derive(Clone, Copy)]
pub struct Secrets<'a> {
    pub sealed: &'a BTreeMap<String, String>,
    pub key: Option<&'a SealKey>,
}

impl std::fmt::Debug for Secrets<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("ids", &self.sealed.keys().collect::<Vec<_>>())
            .field("key", &self.key)
            .finish()
    }
}

/// An opened credential. `Debug` does not show it.
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(***)")
    }
}

impl<'a> Secrets<'a> {
    /// No credentials at all (a configuration from files).
    pub fn none() -> Secrets<'static> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        Secrets {
            sealed: &EMPTY,
            key: None,
        }
    }

    /// Opens the credential `secret` referenced by `entry` at `field`.
    fn open<S>(
        &self,
        entry: &Entry<S>,
        field: &str,
        secret: &SecretKeyRef,
    ) -> Result<SecretValue, ProviderBuildError> {
        let fail = |message: String| ProviderBuildError {
            provider: qualified_name(entry),
            field: field.to_owned(),
            message,
        };
        let id = secret_id(entry.namespace.as_deref(), secret);
        let sealed = self.sealed.get(&id).ok_or_else(|| {
            fail(format!(
                "Secret `{}` key `{}` is not in the snapshot (id `{id}`)",
                secret.name, secret.key
            ))
        })?;
        let key = self.key.ok_or_else(|| {
            fail(format!(
                "Secret `{}` key `{}` is sealed in the snapshot but this gateway has no seal key \
                 (--seal-key-file or ACTEON_SEAL_KEY)",
                secret.name, secret.key
            ))
        })?;
        key.open(&id, sealed).map(SecretValue).map_err(|e| {
            fail(format!(
                "Secret `{}` key `{}` cannot be opened: {e}",
                secret.name, secret.key
            ))
        })
    }
}

/// `namespace/name`, or the bare name of a shared object.
pub fn qualified_name<S>(entry: &Entry<S>) -> String {
    match &entry.namespace {
        Some(ns) => format!("{ns}/{}", entry.name),
        None => entry.name.clone(),
    }
}

/// Providers of one snapshot.
#[derive(Default)]
pub struct ProviderRegistry {
    // foldhash: a dispatch looks its provider up a few times, and SipHash (std's default)
    // was ~2% of a dispatch. Keys come from the configuration, so a faster hash opens no
    // collision attack (requests only look up).
    shared: foldhash::HashMap<String, ProviderHandle>,
    by_namespace: foldhash::HashMap<String, foldhash::HashMap<String, ProviderHandle>>,
}

/// Retry settings resolved from a Provider spec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retry {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Retry {
    /// The longest a delivery through [`http::with_retries`] takes when each attempt takes
    /// at most `timeout`: every attempt, plus every pause at twice `maxBackoffMs` (a jittered
    /// backoff, or a peer's retry hint, is never longer).
    pub fn worst_case(&self, timeout: Duration) -> Duration {
        let pauses = self.max_attempts.saturating_sub(1);
        timeout
            .saturating_mul(self.max_attempts)
            .saturating_add(self.max_backoff.saturating_mul(2).saturating_mul(pauses))
    }

    pub fn from_spec(spec: &ProviderSpec) -> Retry {
        let r = spec.retry.as_ref();
        Retry {
            max_attempts: r.and_then(|r| r.max_attempts).unwrap_or(3).max(1),
            initial_backoff: Duration::from_millis(
                r.and_then(|r| r.initial_backoff_ms).unwrap_or(100),
            ),
            max_backoff: Duration::from_millis(r.and_then(|r| r.max_backoff_ms).unwrap_or(2000)),
        }
    }
}

fn build(
    entry: &Entry<ProviderSpec>,
    http: &reqwest::Client,
    secrets: Secrets<'_>,
) -> Result<Arc<dyn Provider>, ProviderBuildError> {
    let spec = &entry.spec;
    // Every credential the Provider references must open: a snapshot that cannot deliver
    // is refused as a whole.
    let mut opened = BTreeMap::new();
    for (field, secret) in spec.secret_refs() {
        let value = secrets.open(entry, &field, secret)?;
        opened.insert(field, value);
    }
    Ok(match spec.provider_type {
        ProviderType::Noop => Arc::new(Noop),
        ProviderType::Log => Arc::new(log::LogProvider::new(spec)),
        ProviderType::Webhook => match &spec.webhook {
            Some(w) => {
                let mut headers = Vec::with_capacity(w.secret_headers.len());
                for header in w.secret_headers.keys() {
                    let field = format!("spec.webhook.secretHeaders.{header}");
                    let fail = |message: &str| ProviderBuildError {
                        provider: qualified_name(entry),
                        field: field.clone(),
                        message: message.to_owned(),
                    };
                    let value = opened
                        .get(&field)
                        .ok_or_else(|| fail("credential not resolved"))?;
                    let name = HeaderName::from_bytes(header.as_bytes())
                        .map_err(|_| fail("not a valid HTTP header name"))?;
                    let mut value = HeaderValue::from_bytes(value.as_bytes())
                        .map_err(|_| fail("the Secret's value is not a valid HTTP header value"))?;
                    value.set_sensitive(true);
                    headers.push((name, value));
                }
                Arc::new(
                    webhook::WebhookProvider::new(w, spec, http.clone())
                        .with_secret_headers(headers),
                )
            }
            None => return Err(missing_block(entry)),
        },
        ProviderType::Slack => match &spec.slack {
            Some(s) => {
                let credential = match (&s.token_secret_ref, &s.webhook_url_secret_ref) {
                    (Some(_), _) => slack::SlackCredential::Token(
                        secret(&opened, entry, "spec.slack.tokenSecretRef")?
                            .as_bytes()
                            .to_vec(),
                    ),
                    (None, Some(_)) => {
                        let field = "spec.slack.webhookUrlSecretRef";
                        let url = std::str::from_utf8(secret(&opened, entry, field)?.as_bytes())
                            .map_err(|_| {
                                build_error(entry, field, "the Secret's value is not UTF-8")
                            })?
                            .to_owned();
                        slack::SlackCredential::WebhookUrl(url)
                    }
                    (None, None) => {
                        return Err(build_error(
                            entry,
                            "spec.slack",
                            "needs tokenSecretRef or webhookUrlSecretRef",
                        ));
                    }
                };
                let field = if s.token_secret_ref.is_some() {
                    "spec.slack.tokenSecretRef"
                } else {
                    "spec.slack.webhookUrlSecretRef"
                };
                Arc::new(
                    slack::SlackProvider::new(s, spec, credential, http.clone())
                        .map_err(|m| build_error(entry, field, &m))?,
                )
            }
            None => return Err(missing_block(entry)),
        },
        ProviderType::Pagerduty => match &spec.pagerduty {
            Some(p) => {
                let field = "spec.pagerduty.routingKeySecretRef";
                let key = secret(&opened, entry, field)?;
                Arc::new(
                    pagerduty::PagerDutyProvider::new(p, spec, key.as_bytes(), http.clone())
                        .map_err(|m| build_error(entry, field, &m))?,
                )
            }
            None => return Err(missing_block(entry)),
        },
        ProviderType::Email => match &spec.email {
            Some(e) => {
                let credentials = match (&e.username_secret_ref, &e.password_secret_ref) {
                    (Some(_), Some(_)) => Some((
                        secret(&opened, entry, "spec.email.usernameSecretRef")?.as_bytes(),
                        secret(&opened, entry, "spec.email.passwordSecretRef")?.as_bytes(),
                    )),
                    (None, None) => None,
                    _ => {
                        return Err(build_error(
                            entry,
                            "spec.email",
                            "usernameSecretRef and passwordSecretRef go together",
                        ));
                    }
                };
                Arc::new(
                    email::EmailProvider::new(e, spec, credentials)
                        .map_err(|(field, m)| build_error(entry, &field, &m))?,
                )
            }
            None => return Err(missing_block(entry)),
        },
        ProviderType::Discord => match &spec.discord {
            Some(_) => {
                let field = "spec.discord.webhookUrlSecretRef";
                let url = std::str::from_utf8(secret(&opened, entry, field)?.as_bytes())
                    .map_err(|_| build_error(entry, field, "the Secret's value is not UTF-8"))?
                    .to_owned();
                Arc::new(
                    discord::DiscordProvider::new(spec, &url, http.clone())
                        .map_err(|m| build_error(entry, field, &m))?,
                )
            }
            None => return Err(missing_block(entry)),
        },
        ProviderType::Opsgenie => match &spec.opsgenie {
            Some(o) => {
                let key = secret(&opened, entry, "spec.opsgenie.apiKeySecretRef")?;
                Arc::new(
                    opsgenie::OpsgenieProvider::new(o, spec, key.as_bytes(), http.clone())
                        .map_err(|(field, m)| build_error(entry, field, &m))?,
                )
            }
            None => return Err(missing_block(entry)),
        },
        ProviderType::Teams => match &spec.teams {
            Some(_) => {
                let field = "spec.teams.webhookUrlSecretRef";
                let url = std::str::from_utf8(secret(&opened, entry, field)?.as_bytes())
                    .map_err(|_| build_error(entry, field, "the Secret's value is not UTF-8"))?
                    .to_owned();
                Arc::new(
                    teams::TeamsProvider::new(spec, &url, http.clone())
                        .map_err(|m| build_error(entry, field, &m))?,
                )
            }
            None => return Err(missing_block(entry)),
        },
    })
}

/// `provider`, rendering the Provider's `spec.templates` into each action's payload first.
fn with_templates(
    entry: &Entry<ProviderSpec>,
    provider: Arc<dyn Provider>,
) -> Result<Arc<dyn Provider>, ProviderBuildError> {
    let Some(t) = entry
        .spec
        .templates
        .as_ref()
        .filter(|t| !t.fields.is_empty() || !t.json_fields.is_empty())
    else {
        return Ok(provider);
    };
    // Validation compiled them already; a snapshot from elsewhere is checked again here.
    let compiled = acteon_api::message_template::compile(t)
        .map_err(|p| build_error(entry, &p.field, &p.message))?;
    Ok(Arc::new(template::TemplatedProvider::new(
        provider, compiled,
    )))
}

/// The opened credential of `field`.
fn secret<'o>(
    opened: &'o BTreeMap<String, SecretValue>,
    entry: &Entry<ProviderSpec>,
    field: &str,
) -> Result<&'o SecretValue, ProviderBuildError> {
    opened
        .get(field)
        .ok_or_else(|| build_error(entry, field, "credential not resolved"))
}

/// A type whose settings block is absent (validation refuses it; a snapshot from
/// elsewhere may still hold one).
fn missing_block(entry: &Entry<ProviderSpec>) -> ProviderBuildError {
    let ty = entry.spec.provider_type.as_str();
    build_error(
        entry,
        &format!("spec.{ty}"),
        &format!("type `{ty}` needs a `{ty}` block"),
    )
}

fn build_error(entry: &Entry<ProviderSpec>, field: &str, message: &str) -> ProviderBuildError {
    ProviderBuildError {
        provider: qualified_name(entry),
        field: field.to_owned(),
        message: message.to_owned(),
    }
}

impl ProviderRegistry {
    /// Builds every provider of a snapshot, opening the credentials they reference;
    /// `http` is shared so connections are pooled across configuration reloads.
    pub fn build(
        entries: &[Entry<ProviderSpec>],
        http: &reqwest::Client,
        secrets: Secrets<'_>,
    ) -> Result<ProviderRegistry, ProviderBuildError> {
        let mut reg = ProviderRegistry::default();
        for e in entries {
            let handle = ProviderHandle {
                name: e.name.clone(),
                id: qualified_name(e),
                namespace: e.namespace.clone(),
                kind: e.spec.provider_type,
                provider: with_templates(e, build(e, http, secrets)?)?,
                circuit: e.spec.circuit_breaker.clone(),
                rate_limit: e.spec.rate_limit.clone(),
                message_mode: e.spec.message_mode.unwrap_or_default(),
            };
            match &e.namespace {
                Some(ns) => {
                    reg.by_namespace
                        .entry(ns.clone())
                        .or_default()
                        .insert(e.name.clone(), handle);
                }
                None => {
                    reg.shared.insert(e.name.clone(), handle);
                }
            }
        }
        Ok(reg)
    }

    /// Number of providers.
    pub fn len(&self) -> usize {
        self.shared.len() + self.by_namespace.values().map(|m| m.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The provider `name` as seen from `namespace` (own namespace first, then shared).
    pub fn get(&self, namespace: &str, name: &str) -> Option<&ProviderHandle> {
        self.by_namespace
            .get(namespace)
            .and_then(|m| m.get(name))
            .or_else(|| self.shared.get(name))
    }

    /// Every provider, shared ones first.
    pub fn iter(&self) -> impl Iterator<Item = &ProviderHandle> {
        self.shared
            .values()
            .chain(self.by_namespace.values().flat_map(|m| m.values()))
    }

    /// Whether `namespace` has providers of its own.
    pub fn has_namespace(&self, namespace: &str) -> bool {
        self.by_namespace.contains_key(namespace)
    }
}
