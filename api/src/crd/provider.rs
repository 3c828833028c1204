//! The `Provider` custom resource: where actions are delivered.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::ResourceStatus;

/// A delivery target (webhook, Slack, email, …) that rules and actions refer to by name.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "acteon.dev",
    version = "v1alpha1",
    kind = "Provider",
    doc = "A Provider (acteon.dev/v1alpha1): where actions are delivered. Actions, Rules, Chains, StateMachines and Quotas name it; it serves its namespace, or every namespace when in the shared one. Credentials come from Secrets of its namespace, read by the operator and sealed before they reach the gateways. Types: log, noop, webhook, slack, email, pagerduty, teams, discord, opsgenie.",
    namespaced,
    status = "ResourceStatus",
    shortname = "aprov",
    category = "acteon",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// Enforced by API servers with CRD validation rules (1.25+); the operator checks the same
// everywhere.
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type != 'webhook' || has(self.webhook)", "message": "type webhook needs spec.webhook"},
    {"rule": "self.type != 'slack' || has(self.slack)", "message": "type slack needs spec.slack"},
    {"rule": "self.type != 'email' || has(self.email)", "message": "type email needs spec.email"},
    {"rule": "self.type != 'pagerduty' || has(self.pagerduty)", "message": "type pagerduty needs spec.pagerduty"},
    {"rule": "self.type != 'teams' || has(self.teams)", "message": "type teams needs spec.teams"},
    {"rule": "self.type != 'discord' || has(self.discord)", "message": "type discord needs spec.discord"},
    {"rule": "self.type != 'opsgenie' || has(self.opsgenie)", "message": "type opsgenie needs spec.opsgenie"},
    {"rule": "!has(self.slack) || has(self.slack.tokenSecretRef) != has(self.slack.webhookUrlSecretRef)", "message": "spec.slack needs exactly one of tokenSecretRef and webhookUrlSecretRef"}
]))]
pub struct ProviderSpec {
    /// Provider type; the block of the same name configures it.
    #[serde(rename = "type")]
    pub provider_type: ProviderType,
    /// Settings of a `log` provider (optional; only with type `log`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogProvider>,
    /// Settings of a `webhook` provider (required with type `webhook`, else absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookProvider>,
    /// Settings of a `slack` provider (required with type `slack`, else absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackProvider>,
    /// Settings of an `email` provider (required with type `email`, else absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailProvider>,
    /// Settings of a `pagerduty` provider (required with type `pagerduty`, else absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagerduty: Option<PagerDutyProvider>,
    /// Settings of a `teams` provider (required with type `teams`, else absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teams: Option<WebhookUrlProvider>,
    /// Settings of a `discord` provider (required with type `discord`, else absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discord: Option<WebhookUrlProvider>,
    /// Settings of an `opsgenie` provider (required with type `opsgenie`, else absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opsgenie: Option<OpsgenieProvider>,
    /// Templates rendered from the action into payload fields before the provider maps the
    /// payload (any type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<MessageTemplates>,
    /// Per-attempt timeout (default 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Attempts of a delivery that fails in a way worth retrying (connect errors, timeouts,
    /// 5xx and 429 answers, transient SMTP replies), with exponential backoff and jitter; a
    /// provider's retry hint (`Retry-After`) is waited for when it is at most
    /// `maxBackoffMs`, else the delivery fails retryable at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Stops calling the provider after repeated failures (validated, not enforced yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Caps deliveries to the provider (validated, not enforced yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<ProviderRateLimit>,
    /// When true, outcomes and failure messages carry nothing of the provider's answer but
    /// its status: no body, no headers. By default the body is returned cut to 4 KiB and
    /// only the headers `content-type`, `retry-after` and request ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redact_response: Option<bool>,
    /// Whether a group's or a state-machine event's later notifications post new messages
    /// (`new`, default), replace the first one (`update`) or reply to it (`thread`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_mode: Option<MessageMode>,
}

/// What a re-notification of the same conversation (a group's next notification, the next
/// notifying move of a state-machine event) does: `new` (default) posts a new message,
/// `update` replaces the first message (slack with a token, discord), `thread` replies to
/// it (slack with a token, email). The first message's reference is kept 7 days after the
/// conversation's last notification.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageMode {
    /// Every notification is a message of its own.
    #[default]
    New,
    /// Later notifications replace the first message.
    Update,
    /// Later notifications reply to the first message.
    Thread,
}

impl MessageMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageMode::New => "new",
            MessageMode::Update => "update",
            MessageMode::Thread => "thread",
        }
    }
}

/// The kinds of provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderType {
    /// Writes the action to the gateway log.
    Log,
    /// Accepts and drops the action (benchmarks, tests).
    Noop,
    Webhook,
    Slack,
    Email,
    Pagerduty,
    Teams,
    Discord,
    Opsgenie,
}

impl ProviderType {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderType::Log => "log",
            ProviderType::Noop => "noop",
            ProviderType::Webhook => "webhook",
            ProviderType::Slack => "slack",
            ProviderType::Email => "email",
            ProviderType::Pagerduty => "pagerduty",
            ProviderType::Teams => "teams",
            ProviderType::Discord => "discord",
            ProviderType::Opsgenie => "opsgenie",
        }
    }
}

/// Reference to one key of a Kubernetes Secret in the Provider's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// Name of the Secret, in the Provider's namespace.
    pub name: String,
    /// Key of the Secret's data whose value is used.
    pub key: String,
}

/// `log`: writes each action to the gateway log.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogProvider {
    /// `info` (default), `warn` or `debug`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["info", "warn", "debug"]))]
    pub level: Option<String>,
}

/// `webhook`: sends the payload as a JSON body to a URL.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookProvider {
    /// http(s) URL called for each action; credentials in it are shown only redacted.
    pub url: String,
    /// HTTP method (default POST).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(?i:post|put|patch|get|delete)$"))]
    pub method: Option<String>,
    /// Headers sent on every request, by name (a `secretHeaders` entry of the same name
    /// wins).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Headers whose values come from Secrets (e.g. `Authorization`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_headers: BTreeMap<String, SecretKeyRef>,
}

/// `slack`: posts with the Web API (`chat.postMessage`, a bot token) or to an incoming
/// webhook; exactly one of `tokenSecretRef` and `webhookUrlSecretRef`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SlackProvider {
    /// Bot token (`xoxb-…`), from a Secret: messages go through `chat.postMessage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
    /// Incoming-webhook URL, from a Secret (instead of a token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url_secret_ref: Option<SecretKeyRef>,
    /// Web API base URL, http(s) (default `https://slack.com/api`); only with a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// Channel when the payload names none (with a token one of the two is needed; a
    /// webhook posts to its own channel by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

/// `email`: sends mail through an SMTP server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmailProvider {
    /// Host name of the SMTP server.
    pub smtp_host: String,
    /// Port of the SMTP server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_port: Option<u16>,
    /// Sender address.
    pub from: String,
    /// Recipient addresses when the payload names none (`to`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    /// Copy addresses when the payload names none (`cc`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<String>,
    /// Subject when the payload has none (`subject`, else `summary`); default
    /// `Acteon: <action type>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `none`, `starttls` (default; the server must offer it) or `tls` (implicit TLS).
    /// Default port: 25, 587 and 465 respectively.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["none", "starttls", "tls"]))]
    pub tls: Option<String>,
    /// PEM certificates trusted for the server, besides the public roots (a relay with a
    /// private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
    /// SMTP user name, from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_secret_ref: Option<SecretKeyRef>,
    /// SMTP password, from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
}

/// `pagerduty`: sends events to PagerDuty's Events API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PagerDutyProvider {
    /// Routing (integration) key of the PagerDuty service, from a Secret.
    pub routing_key_secret_ref: SecretKeyRef,
    /// Events API base URL, http(s) (default `https://events.pagerduty.com`); events are
    /// posted to `<apiUrl>/v2/enqueue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// Severity when the payload has none: `critical`, `error` (default), `warning`,
    /// `info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["critical", "error", "warning", "info"]))]
    pub severity: Option<String>,
    /// Source when the payload has none (default: the action's namespace/tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// `teams` or `discord`: posts to an incoming webhook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookUrlProvider {
    /// Incoming-webhook URL (for teams also a Power Automate Workflows URL), from a
    /// Secret: the URL is the credential.
    pub webhook_url_secret_ref: SecretKeyRef,
}

/// `opsgenie`: creates, closes and acknowledges alerts with Opsgenie's Alert API (v2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpsgenieProvider {
    /// API key of an Opsgenie API integration, from a Secret (sent as
    /// `Authorization: GenieKey <key>`).
    pub api_key_secret_ref: SecretKeyRef,
    /// API base URL, http(s) (default `https://api.opsgenie.com`; EU accounts
    /// `https://api.eu.opsgenie.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// Priority when the payload gives neither `priority` nor a known `severity`: `P1`
    /// (highest) to `P5`; default `P3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["P1", "P2", "P3", "P4", "P5"]))]
    pub priority: Option<String>,
    /// Responders when the payload names none (at most 50).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub responders: Vec<OpsgenieResponder>,
    /// Tags added to every alert, besides the payload's (at most 20 in all, each at most
    /// 50 characters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Source when the payload has none (default: the action's namespace/tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Who Opsgenie notifies of an alert: a team, user, escalation or schedule, by exactly one
/// of `id` and `name` (`username` for a user).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpsgenieResponder {
    /// What the responder is: team, user, escalation or schedule.
    #[serde(rename = "type")]
    #[schemars(extend("enum" = ["team", "user", "escalation", "schedule"]))]
    pub responder_type: String,
    /// Opsgenie's id of the responder (one of id, name, username).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Name of the team, escalation or schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Username (email) of a user responder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// Message templates (MiniJinja, Jinja2's syntax) rendered from the action — `payload`,
/// `metadata`, `namespace`, `tenant`, `provider`, `action_type`, `id`, `dedup_key`,
/// `fingerprint`, `status`, `created_at` — into top-level payload fields, which then map as
/// the provider type maps them. A group notification's events are `payload.events`.
/// Undefined values render empty. At most 32 templates of at most 16 KiB each; each renders
/// at most 64 KiB.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MessageTemplates {
    /// Payload field → template rendering its text (e.g. `text`, `subject`, `summary`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
    /// Payload field → template rendering JSON (e.g. Slack `blocks`, a Teams `card`): every
    /// `{{ … }}` writes its value as JSON (quoted and escaped), and the whole result must
    /// parse as JSON.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub json_fields: BTreeMap<String, String>,
}

/// Attempts of a delivery and the pauses between them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Pause before the first retry, doubled for each next one (default 100 ms; at most
    /// `maxBackoffMs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_backoff_ms: Option<u64>,
    /// Longest pause between attempts (default 2000 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff_ms: Option<u64>,
}

/// Circuit breaker of a provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Failures in a row that open the circuit (at least 1).
    pub failure_threshold: u32,
    /// How long the circuit stays open before a delivery is tried again.
    pub recovery_timeout_seconds: u64,
    /// Provider that receives the actions while the circuit is open (of this namespace or
    /// shared; not this provider).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_provider: Option<String>,
}

/// Rate limit of a provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderRateLimit {
    /// Deliveries allowed per second (at least 1), across all gateways: deliveries start
    /// at least 1/maxPerSecond apart (5% more, a margin for late starts).
    pub max_per_second: u32,
    /// How long a delivery may wait for its slot (1–300, default 30); past it the
    /// delivery fails with the retryable `RATE_LIMITED` (a dispatch's dead letter keeps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait_seconds: Option<u32>,
}

impl ProviderSpec {
    /// Every `secretKeyRef` this Provider uses, with the field that holds it.
    pub fn secret_refs(&self) -> Vec<(String, &SecretKeyRef)> {
        let mut refs: Vec<(String, &SecretKeyRef)> = Vec::new();
        if let Some(w) = &self.webhook {
            for (header, r) in &w.secret_headers {
                refs.push((format!("spec.webhook.secretHeaders.{header}"), r));
            }
        }
        if let Some(s) = &self.slack {
            if let Some(r) = &s.token_secret_ref {
                refs.push(("spec.slack.tokenSecretRef".into(), r));
            }
            if let Some(r) = &s.webhook_url_secret_ref {
                refs.push(("spec.slack.webhookUrlSecretRef".into(), r));
            }
        }
        if let Some(e) = &self.email {
            if let Some(r) = &e.username_secret_ref {
                refs.push(("spec.email.usernameSecretRef".into(), r));
            }
            if let Some(r) = &e.password_secret_ref {
                refs.push(("spec.email.passwordSecretRef".into(), r));
            }
        }
        if let Some(p) = &self.pagerduty {
            refs.push((
                "spec.pagerduty.routingKeySecretRef".into(),
                &p.routing_key_secret_ref,
            ));
        }
        if let Some(t) = &self.teams {
            refs.push((
                "spec.teams.webhookUrlSecretRef".into(),
                &t.webhook_url_secret_ref,
            ));
        }
        if let Some(d) = &self.discord {
            refs.push((
                "spec.discord.webhookUrlSecretRef".into(),
                &d.webhook_url_secret_ref,
            ));
        }
        if let Some(o) = &self.opsgenie {
            refs.push((
                "spec.opsgenie.apiKeySecretRef".into(),
                &o.api_key_secret_ref,
            ));
        }
        refs
    }
}
