//! Status shared by all Acteon custom resources.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Status written by the operator (never by users).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` and `Ready` conditions, one of each `type`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"]
    ))]
    pub conditions: Vec<StatusCondition>,
    /// How many gateways serve a snapshot that contains this generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateways_serving: Option<u32>,
    /// Chains only: its runs, as the gateways last reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executions: Option<ExecutionsStatus>,
}

/// A Chain's runs (`status.executions`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionsStatus {
    /// Runs running, as of the gateways' last census (every few seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<u64>,
    /// Why the last failed or timed-out run did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// RFC 3339 time that run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub last_failure_time: Option<String>,
}

/// A standard Kubernetes condition (the shape of `metav1.Condition`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusCondition {
    /// `Accepted` or `Ready`; the key of the list (one condition per type).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[schemars(extend("enum" = ["True", "False", "Unknown"]))]
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable explanation.
    pub message: String,
    /// The `metadata.generation` this condition describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339 time of the last change of `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub last_transition_time: Option<String>,
}
