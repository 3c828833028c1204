//! The five custom resources of group `acteon.dev`, version `v1alpha1`.

pub mod chain;
pub mod provider;
pub mod quota;
pub mod rule;
pub mod state_machine;
pub mod status;

pub use chain::{Chain, ChainBranch, ChainSpec, ChainStep, Parallel, ParallelStep, StepRetry};
pub use provider::{
    CircuitBreaker, Provider, ProviderRateLimit, ProviderSpec, ProviderType, SecretKeyRef,
};
pub use quota::{Overage, Quota, QuotaSpec};
pub use rule::{Rule, RuleAction, RuleSpec};
pub use state_machine::{StateMachine, StateMachineSpec};
pub use status::{ExecutionsStatus, ResourceStatus, StatusCondition};

use schemars::{Schema, SchemaGenerator, json_schema};

/// Schema for a field validated by the operator rather than by the API server
/// (recursive conditions cannot be expressed in a structural schema).
pub(crate) fn free_form_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Schema for any JSON value.
pub(crate) fn free_form_value(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-preserve-unknown-fields": true
    })
}
