//! The `Chain` custom resource: multi-step delivery with branches.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::status::ResourceStatus;

/// An ordered sequence of provider calls with branches and sub-chains.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "acteon.dev",
    version = "v1alpha1",
    kind = "Chain",
    doc = "A Chain (acteon.dev/v1alpha1): a multi-step delivery started by a Rule whose action is `chain`. Each run calls its steps' providers in order (branches and `defaultNext` may jump), keeps the definition it started with, and ends completed, failed, cancelled or timed out. Steps use Providers and sub-Chains of the Chain's namespace or the shared one. The operator validates it (unique step names, known targets, no cycles) and reports in `status`.",
    namespaced,
    status = "ResourceStatus",
    shortname = "achain",
    category = "acteon",
    printcolumn = r#"{"name":"First Step","type":"string","jsonPath":".spec.steps[0].name"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChainSpec {
    /// The steps, run from the first (at least one).
    #[schemars(length(min = 1))]
    pub steps: Vec<ChainStep>,
    /// Whole-chain timeout (default 300 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Delivered once when a run is cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_cancel: Option<ParallelStep>,
}

/// One step of a chain: a provider call, a sub-chain, or provider calls made at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChainStep {
    /// Unique within the chain; `branches`, `defaultNext` and `{{steps.NAME.*}}` refer to it.
    pub name: String,
    /// Provider called by this step, of this namespace or shared (exactly one of `provider`,
    /// `subChain` and `parallel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// `action_type` of the call (default: the starting action's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_type: Option<String>,
    /// Payload with `{{origin.*}}`, `{{prev.*}}`, `{{steps.NAME.*}}` placeholders (default:
    /// the starting action's payload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::free_form_object")]
    pub payload_template: Option<Value>,
    /// Chain run as this step (of this namespace or shared; no cycles): the run goes on here
    /// when it completes, and its failure is this step's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_chain: Option<String>,
    /// Provider calls made at once; the step's result joins theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<Parallel>,
    /// Attempts of a failing step (on top of the provider's own retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<StepRetry>,
    /// Where to go next, on this step's result: the first branch that matches wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<ChainBranch>,
    /// Step run next when no branch matches (default: the next step in order; after the
    /// last one the run completes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_next: Option<String>,
    /// `abort` (default), `skip` or `dlq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
    /// Wait this long before running the step (0 to 604800).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_seconds: Option<u64>,
}

/// One provider call of a `parallel` step, or a chain's `onCancel`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParallelStep {
    /// Name of the call; in a `parallel` step, unique there and the key of its result in
    /// the step's body (`results.NAME`).
    pub name: String,
    /// Provider called, of this namespace or shared.
    pub provider: String,
    /// `action_type` of the call (default: the starting action's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_type: Option<String>,
    /// Payload with `{{origin.*}}`, `{{prev.*}}`, `{{steps.NAME.*}}` placeholders (default:
    /// the starting action's payload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::free_form_object")]
    pub payload_template: Option<Value>,
}

/// `parallel`: calls made at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Parallel {
    /// The calls (at least one; names unique within the step).
    #[schemars(length(min = 1))]
    pub steps: Vec<ParallelStep>,
    /// `all` (default: the step succeeds when every call does) or `any`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<String>,
    /// `failFast` (default: stop waiting at the first failure that decides) or
    /// `bestEffort` (wait for every call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
    /// Longest wait for the calls (default: the chain's remaining time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

/// `retry` of a step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepRetry {
    /// Attempts in all (1 to 10; default 3).
    pub max_attempts: u32,
    /// Pause before attempt N+1, times N (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_seconds: Option<u64>,
}

/// A jump taken when the step's result matches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChainBranch {
    /// Field of the step's result: `success` (boolean), `status` (`success` or `failed`),
    /// `body` or `body.<path>`.
    pub field: String,
    /// eq, ne, gt, gte, lt, lte, contains, exists.
    pub operator: String,
    /// Value compared with the field (any JSON value; gt, gte, lt, lte compare numbers);
    /// for `exists`, `false` matches an absent or null field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::free_form_value")]
    pub value: Option<Value>,
    /// Step run next when the branch matches (one of this chain's steps).
    pub target: String,
}
