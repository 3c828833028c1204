//! Outcomes of a dispatch, serialized exactly as Acteon does (externally tagged).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// What happened to an action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub enum ActionOutcome {
    Executed(ProviderResponse),
    Deduplicated,
    Suppressed {
        rule: String,
    },
    Rerouted {
        original_provider: String,
        new_provider: String,
        response: ProviderResponse,
    },
    Throttled {
        #[schema(value_type = Object, example = json!({"secs": 3, "nanos": 0}))]
        retry_after: Duration,
    },
    Failed(ActionError),
    Grouped {
        group_id: String,
        group_size: usize,
        notify_at: DateTime<Utc>,
    },
    Scheduled {
        action_id: String,
        scheduled_for: DateTime<Utc>,
    },
    ChainStarted {
        chain_id: String,
        chain_name: String,
        total_steps: usize,
        first_step: String,
    },
    StateChanged {
        fingerprint: String,
        previous_state: String,
        new_state: String,
        notify: bool,
    },
    PendingApproval {
        approval_id: String,
        expires_at: DateTime<Utc>,
        approve_url: String,
        reject_url: String,
        notification_sent: bool,
    },
    QuotaExceeded {
        tenant: String,
        quota: String,
        limit: u64,
        used: u64,
        #[schema(value_type = Object, example = json!({"secs": 3, "nanos": 0}))]
        resets_in: Duration,
    },
    CircuitOpen {
        provider: String,
        #[serde(default)]
        fallback_chain: Vec<String>,
    },
    DryRun {
        verdict: String,
        matched_rule: Option<String>,
        would_be_provider: String,
        /// Rules whose evaluation failed for this action (they did not match). Not in
        /// Acteon's shape, which SDKs parse ignoring unknown keys; left out when empty.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        errors: Vec<RuleEvalError>,
    },
}

/// A rule whose evaluation failed, as a dry run reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RuleEvalError {
    /// `namespace/name`, or `name` for shared rules.
    pub rule: String,
    pub error: String,
}

impl ActionOutcome {
    /// Bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ActionOutcome::Executed(_) => "executed",
            ActionOutcome::Deduplicated => "deduplicated",
            ActionOutcome::Suppressed { .. } => "suppressed",
            ActionOutcome::Rerouted { .. } => "rerouted",
            ActionOutcome::Throttled { .. } => "throttled",
            ActionOutcome::Failed(_) => "failed",
            ActionOutcome::Grouped { .. } => "grouped",
            ActionOutcome::Scheduled { .. } => "scheduled",
            ActionOutcome::ChainStarted { .. } => "chain_started",
            ActionOutcome::StateChanged { .. } => "state_changed",
            ActionOutcome::PendingApproval { .. } => "pending_approval",
            ActionOutcome::QuotaExceeded { .. } => "quota_exceeded",
            ActionOutcome::CircuitOpen { .. } => "circuit_open",
            ActionOutcome::DryRun { .. } => "dry_run",
        }
    }

    pub fn failed(
        code: &str,
        message: impl Into<String>,
        retryable: bool,
        attempts: u32,
    ) -> ActionOutcome {
        ActionOutcome::Failed(ActionError {
            code: code.to_owned(),
            message: message.into(),
            retryable,
            attempts,
        })
    }
}

/// A provider's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProviderResponse {
    pub status: ResponseStatus,
    #[schema(value_type = Object)]
    pub body: Value,
    #[serde(default)]
    pub headers: HashMap<String, String>,
}

impl ProviderResponse {
    pub fn success(body: Value) -> ProviderResponse {
        ProviderResponse {
            status: ResponseStatus::Success,
            body,
            headers: HashMap::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResponseStatus {
    Success,
    Failure,
    Partial,
}

/// Why an action failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ActionError {
    pub code: String,
    pub message: String,
    pub retryable: bool,
    pub attempts: u32,
}
