//! The `Rule` custom resource: one step of the action pipeline.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::status::ResourceStatus;
use crate::condition::Condition;

/// A rule of the action pipeline: when its condition holds for an action, its action applies.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "acteon.dev",
    version = "v1alpha1",
    kind = "Rule",
    doc = "A Rule (acteon.dev/v1alpha1): one step of the action pipeline. Rules are evaluated in `priority` order; when a Rule's `condition` (or `cel`) holds for an action, its `action` applies, and the first terminal action ends the evaluation (none: the action is delivered to its provider). A Rule applies to the actions of its namespace; one in the shared namespace applies to every namespace. The operator validates it (references included) and reports in `status`.",
    namespaced,
    status = "ResourceStatus",
    shortname = "arule",
    category = "acteon",
    printcolumn = r#"{"name":"Priority","type":"integer","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action.type"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// Enforced by API servers with CRD validation rules (1.25+); the operator checks the same
// everywhere.
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.condition) != has(self.cel)", "message": "exactly one of spec.condition and spec.cel"}
]))]
pub struct RuleSpec {
    /// Evaluation order: lower runs first; ties are broken by namespace, then name.
    #[serde(default)]
    pub priority: i32,
    /// What the rule is for, shown in `GET /v1/rules`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A disabled rule stays in the configuration but never matches.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Acteon condition grammar: `all`/`any`/`not`, or `field` with one operator. Exactly one of `condition` and `cel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::free_form_object")]
    pub condition: Option<Condition>,
    /// A CEL expression over `action`, `time` and `state`. Exactly one of `condition` and `cel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cel: Option<String>,
    /// IANA time zone for `time.*` fields (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// What happens to a matching action.
    #[schemars(schema_with = "action_schema")]
    pub action: RuleAction,
}

/// The `action` schema as the API server sees it: one object whose `type` says which of the
/// optional fields apply (structural schemas cannot express a tagged union; the operator
/// validates the combination with the same serde types as the gateway).
fn action_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let string = |d: &str| serde_json::json!({"type": "string", "description": d});
    let integer = |d: &str| serde_json::json!({"type": "integer", "format": "int64", "minimum": 0, "description": d});
    let at_least_1 = |d: &str| serde_json::json!({"type": "integer", "format": "int64", "minimum": 1, "description": d});
    let delay = |d: &str| serde_json::json!({"type": "integer", "format": "int64", "minimum": 1, "maximum": 604_800, "description": d});
    let needs = |t: &str, field: &str| serde_json::json!({"rule": format!("self.type != '{t}' || has(self.{field})"), "message": format!("{t} needs spec.action.{field}")});
    schemars::json_schema!({
        "type": "object",
        "description": "What happens to a matching action, tagged by `type`.",
        "required": ["type"],
        "properties": {
            "type": {
                "type": "string",
                "description": "allow, deny, suppress, reroute, modify, deduplicate, throttle, group, schedule, chain, stateMachine or requestApproval",
                "enum": ["allow", "deny", "suppress", "reroute", "modify", "deduplicate", "throttle", "group", "schedule", "chain", "stateMachine", "requestApproval"]
            },
            "targetProvider": string("reroute: provider to execute on instead"),
            "changes": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "description": "modify: JSON merge patch on the payload"},
            "ttlSeconds": at_least_1("deduplicate: how long a key stays marked (default 300)"),
            "key": string("deduplicate / throttle: key template, e.g. {{action.payload.service}}"),
            "maxCount": at_least_1("throttle: actions allowed per window (at least 1)"),
            "windowSeconds": at_least_1("throttle: window length in seconds (at least 1)"),
            "groupBy": {"type": "array", "items": {"type": "string"}, "description": "group: action fields whose values form the group key, e.g. payload.floor or action.metadata.cluster (1 to 20)"},
            "groupWaitSeconds": integer("group: wait before the first notification (default 30, at most 604800)"),
            "groupIntervalSeconds": delay("group: minimum time between notifications (default 300, 1 to 604800)"),
            "repeatIntervalSeconds": delay("group: resend an unchanged group's notification after this long (default: never; groupIntervalSeconds to 604800)"),
            "maxGroupSize": {"type": "integer", "format": "int64", "minimum": 1, "maximum": 1000, "description": "group: most events in one group (default 100, 1 to 1000)"},
            "template": string("group: notification template"),
            "delaySeconds": delay("schedule: delay in seconds (1 to 604800)"),
            "chain": string("chain: name of the Chain"),
            "stateMachine": string("stateMachine: name of the StateMachine (this namespace or shared)"),
            "fingerprintFields": {"type": "array", "items": {"type": "string"}, "description": "stateMachine: action fields identifying the event when the action has no fingerprint (at most 20)"},
            "notifyProvider": string("requestApproval: provider that carries the request; group: provider that receives the group's notifications"),
            "timeoutSeconds": integer("requestApproval: how long approval may take (default 3600)"),
            "message": string("requestApproval: message for the approver")
        },
        // Which fields a `type` needs: enforced by API servers with CRD validation rules
        // (1.25+); the operator checks the same everywhere.
        "x-kubernetes-validations": [
            needs("reroute", "targetProvider"),
            needs("modify", "changes"),
            needs("throttle", "maxCount"),
            needs("throttle", "windowSeconds"),
            needs("group", "groupBy"),
            needs("schedule", "delaySeconds"),
            needs("chain", "chain"),
            needs("stateMachine", "stateMachine"),
            needs("requestApproval", "notifyProvider")
        ]
    })
}

fn default_true() -> bool {
    true
}

fn default_group_wait() -> u64 {
    30
}

fn default_group_interval() -> u64 {
    300
}

fn default_max_group_size() -> u64 {
    100
}

fn default_approval_timeout() -> u64 {
    3600
}

/// The action of a rule, tagged by `type`: allow, deny, suppress, reroute{targetProvider},
/// modify{changes}, deduplicate{ttlSeconds, key}, throttle{maxCount, windowSeconds, key},
/// group{groupBy, groupWaitSeconds, groupIntervalSeconds, repeatIntervalSeconds, maxGroupSize,
/// notifyProvider}, schedule{delaySeconds},
/// chain{chain}, stateMachine{stateMachine, fingerprintFields}, requestApproval{notifyProvider,
/// timeoutSeconds, message}.
// Variant and field docs are plain comments: the CRD schema merges the variants into one
// object, which requires a property shared by variants (`type`, `key`) to have one schema.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum RuleAction {
    // Execute on the requested provider (terminal).
    Allow,
    // Refuse the action (terminal; answered as `Suppressed`, as Acteon does).
    Deny,
    // Drop the action silently (terminal).
    Suppress,
    // Execute on another provider (terminal).
    #[serde(rename_all = "camelCase")]
    Reroute {
        // Provider to execute on instead.
        target_provider: String,
    },
    // Apply a JSON merge patch to the payload and continue.
    Modify {
        // The merge patch.
        #[schemars(schema_with = "super::free_form_object")]
        changes: Value,
    },
    // Let one action per key through within the TTL; later ones answer `Deduplicated`.
    #[serde(rename_all = "camelCase")]
    Deduplicate {
        // How long a key stays marked (default 300 s).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_seconds: Option<u64>,
        // Key template, e.g. `{{action.payload.service}}`; default: the action's `dedup_key`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    // Sliding-window rate limit; excess actions answer `Throttled` with the time until a slot frees.
    #[serde(rename_all = "camelCase")]
    Throttle {
        // Actions allowed per window.
        max_count: u64,
        // Window length in seconds.
        window_seconds: u64,
        // Optional key template that splits the budget further.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    // Batch actions that share `groupBy` values (Alertmanager's grouping).
    #[serde(rename_all = "camelCase")]
    Group {
        // Action fields whose values form the group key (1 to 20 condition paths; the
        // `action.` prefix may be left out, as in `payload.floor`).
        group_by: Vec<String>,
        // Wait before the first notification of a new group (0 to 604800 s).
        #[serde(default = "default_group_wait")]
        group_wait_seconds: u64,
        // Minimum time between notifications of one group (1 to 604800 s).
        #[serde(default = "default_group_interval")]
        group_interval_seconds: u64,
        // Resend an unchanged group's notification after this long (groupIntervalSeconds
        // to 604800 s); none: only changes are notified.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        repeat_interval_seconds: Option<u64>,
        // Most events in one group (1 to 1000).
        #[serde(default = "default_max_group_size")]
        max_group_size: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        template: Option<String>,
        // Provider that receives the group's notifications (this namespace or shared).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        notify_provider: Option<String>,
    },
    // Delay the action; it continues with the later rules when due.
    #[serde(rename_all = "camelCase")]
    Schedule {
        // Delay in seconds (1 to 604800).
        delay_seconds: u64,
    },
    // Start a `Chain` (terminal).
    Chain {
        // Name of the Chain.
        chain: String,
    },
    // Drive a `StateMachine` (terminal).
    #[serde(rename_all = "camelCase")]
    StateMachine {
        // Name of the StateMachine.
        state_machine: String,
        // Action fields whose values identify the event when the action carries no
        // `fingerprint` (at most 20 condition paths).
        #[serde(default)]
        fingerprint_fields: Vec<String>,
    },
    // Hold the action until a human approves it (terminal).
    #[serde(rename_all = "camelCase")]
    RequestApproval {
        // Provider that carries the approval request.
        notify_provider: String,
        #[serde(default = "default_approval_timeout")]
        timeout_seconds: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
}

impl RuleAction {
    /// The `type` tag as written in manifests.
    pub fn type_name(&self) -> &'static str {
        match self {
            RuleAction::Allow => "allow",
            RuleAction::Deny => "deny",
            RuleAction::Suppress => "suppress",
            RuleAction::Reroute { .. } => "reroute",
            RuleAction::Modify { .. } => "modify",
            RuleAction::Deduplicate { .. } => "deduplicate",
            RuleAction::Throttle { .. } => "throttle",
            RuleAction::Group { .. } => "group",
            RuleAction::Schedule { .. } => "schedule",
            RuleAction::Chain { .. } => "chain",
            RuleAction::StateMachine { .. } => "stateMachine",
            RuleAction::RequestApproval { .. } => "requestApproval",
        }
    }
}
