//! The `StateMachine` custom resource: event lifecycles.
//!
//! A `stateMachine` rule moves an event (identified by its fingerprint) between `states`;
//! the requested state is the action's `status`. Validation (`acteon_api::compile`)
//! requires every state named anywhere to be one of `states`, at most one timeout per
//! state, and no transition or timeout out of a terminal state (terminal means final: an
//! event in a terminal state is no longer active for inhibition).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::ResourceStatus;

/// States, allowed transitions and timeouts of an event lifecycle.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "acteon.dev",
    version = "v1alpha1",
    kind = "StateMachine",
    doc = "A StateMachine (acteon.dev/v1alpha1): the lifecycle of events. A Rule whose action is `stateMachine` moves an action's event (one per namespace, tenant and fingerprint) to the state the action's `status` requests, when `transitions` allow it; `timeouts` move events that stay too long. Events in `terminalStates` are no longer active. It serves its namespace, or every namespace when in the shared one; the operator validates it and reports in `status`.",
    namespaced,
    status = "ResourceStatus",
    shortname = "asm",
    category = "acteon",
    printcolumn = r#"{"name":"Initial","type":"string","jsonPath":".spec.initialState"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateMachineSpec {
    /// Every state an event can be in (1 to 100, unique).
    #[schemars(length(min = 1, max = 100))]
    pub states: Vec<String>,
    /// The state a new event starts in; one of `states`, not terminal.
    pub initial_state: String,
    /// States that end the lifecycle (e.g. `resolved`): an event there is no longer active,
    /// and no transition or timeout may leave them. Each one of `states`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub terminal_states: Vec<String>,
    /// The moves an action's `status` may request (at most 1000, each pair once).
    #[serde(default)]
    pub transitions: Vec<Transition>,
    /// Automatic moves after an event has stayed in a state for a while (at most one per state).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeouts: Vec<StateTimeout>,
    /// Provider that receives the notifications of `notify` transitions (a Provider of this
    /// namespace or a shared one); default: the provider of the action that made the move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_provider: Option<String>,
}

/// An allowed move from one state to another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Transition {
    /// One of `states`, not terminal.
    pub from: String,
    /// One of `states`.
    pub to: String,
    /// Whether this move sends a notification (to `notifyProvider`, else the action's provider).
    #[serde(default)]
    pub notify: bool,
}

/// A move made when an event stays in `state` for `afterSeconds`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateTimeout {
    /// One of `states`, not terminal.
    pub state: String,
    /// Seconds in `state` before the move (1 to 604800, i.e. 7 days).
    pub after_seconds: u64,
    /// One of `states`, other than `state`.
    pub transition_to: String,
}
