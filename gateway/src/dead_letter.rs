//! Dead letters: deliveries that failed for good — a dispatch whose provider kept failing
//! in a way worth retrying until its retries ran out, or a chain step whose `onFailure` is
//! `dlq` — kept in the state backend with the action, the error, attempts and times, so an
//! operator can look, replay or drop them (`/v1/dlq`).
//!
//! An entry is a timer of its own (`dlq:<namespace>:<tenant>:<id>`), due when its
//! retention ends — then the worker removes it — so entries are durable on Redis and
//! Postgres, listed by namespace and tenant through the timer index, and bounded in time.
//! A replay holds a short lock on the entry, so two replays of it never both deliver.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::action::Action;
use crate::pipeline::Gateway;
use crate::providers::ProviderError;
use crate::rules::key::state_key;
use crate::state::{StateError, unix_ms};
use crate::worker::task::Task;

/// How long an entry is kept, unless configured otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest error message kept.
const MAX_ERROR: usize = 2048;

/// Where a dead letter came from.
pub const FROM_DISPATCH: &str = "dispatch";
pub const FROM_CHAIN: &str = "chain";

/// One dead letter. The flat fields are those of Acteon's DLQ entries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetter {
    /// The entry's id (not the action's).
    pub id: String,
    pub action_id: String,
    pub namespace: String,
    pub tenant: String,
    pub provider: String,
    pub action_type: String,
    pub error: String,
    /// The provider's error code.
    pub code: String,
    /// Delivery attempts made (the provider's retries included; replays add theirs).
    pub attempts: u32,
    /// When the entry was made (unix seconds).
    pub timestamp: u64,
    /// When it was made and last tried (unix ms).
    pub created_ms: u64,
    pub last_attempt_ms: u64,
    /// `dispatch` or `chain`.
    pub source: String,
    /// The chain run and step, for a chain step's entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_step: Option<String>,
    /// When the entry is removed (unix ms).
    pub expires_ms: u64,
    /// The action as it was to be delivered (what a replay sends).
    pub action: Action,
}

impl DeadLetter {
    /// An entry for `action`, which failed on its provider with `error`.
    pub fn new(action: &Action, error: &ProviderError, source: &str, retention: Duration) -> Self {
        let now = unix_ms();
        DeadLetter {
            id: uuid::Uuid::now_v7().to_string(),
            action_id: action.id.clone(),
            namespace: action.namespace.clone(),
            tenant: action.tenant.clone(),
            provider: action.provider.clone(),
            action_type: action.action_type.clone(),
            error: bounded(&error.message),
            code: error.code.clone(),
            attempts: error.attempts.max(1),
            timestamp: now / 1000,
            created_ms: now,
            last_attempt_ms: now,
            source: source.to_owned(),
            chain_id: None,
            chain_step: None,
            expires_ms: now.saturating_add(retention.as_millis() as u64),
            action: action.clone(),
        }
    }

    pub fn timer_id(&self) -> String {
        timer_id(&self.namespace, &self.tenant, &self.id)
    }

    /// A failed replay: the entry stays, with its new error and attempts.
    pub fn failed_again(&mut self, error: &ProviderError) {
        self.error = bounded(&error.message);
        self.code = error.code.clone();
        self.attempts = self.attempts.saturating_add(error.attempts.max(1));
        self.last_attempt_ms = unix_ms();
    }
}

fn bounded(text: &str) -> String {
    text[..text.floor_char_boundary(MAX_ERROR)].to_owned()
}

/// The timer of entry `id`.
pub fn timer_id(namespace: &str, tenant: &str, id: &str) -> String {
    format!("dlq:{}", state_key("d", &[namespace, tenant, id]))
}

/// Id prefix of the entries of a namespace (and tenant), or of all.
pub fn list_prefix(namespace: Option<&str>, tenant: Option<&str>) -> String {
    match (namespace, tenant) {
        (Some(ns), Some(t)) => format!("dlq:{}:", state_key("d", &[ns, t])),
        (Some(ns), None) => format!("dlq:{}:", state_key("d", &[ns])),
        _ => "dlq:d:".to_owned(),
    }
}

/// The lock a replay holds on entry `id`.
pub fn replay_lock(timer_id: &str) -> String {
    format!("dlq-replay:{timer_id}")
}

/// Stores `entry`; a failure is logged and counted (the delivery's outcome already says it
/// failed).
pub async fn store(gateway: &Gateway, entry: &DeadLetter) -> Result<(), StateError> {
    let task = Task::DeadLetter(Box::new(entry.clone()));
    let id = entry.timer_id();
    let write = gateway
        .state
        .schedule_timer(&id, entry.expires_ms, task.encode());
    let result = gateway.state_call(write).await;
    let label = if result.is_ok() { "stored" } else { "error" };
    gateway
        .metrics
        .dead_letters
        .with_label_values(&[entry.provider.as_str(), entry.source.as_str(), label])
        .inc();
    match &result {
        Ok(()) => {
            tracing::warn!(dlq_id = %entry.id, action_id = %entry.action_id, provider = %entry.provider, error = %entry.error, "delivery dead-lettered")
        }
        Err(e) => {
            tracing::error!(action_id = %entry.action_id, provider = %entry.provider, error = %e, "could not store a dead letter")
        }
    }
    result
}

/// The entry a timer holds, if it is one.
pub fn decode(payload: &[u8]) -> Option<DeadLetter> {
    match Task::decode(payload).ok()? {
        Task::DeadLetter(entry) => Some(*entry),
        _ => None,
    }
}
