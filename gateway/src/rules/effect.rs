//! What a matching rule does: one compiled value per rule, its logic in the effect's file.

use std::time::Duration;

use acteon_api::crd::RuleAction;
use acteon_api::field::FieldPath;
use acteon_api::template::KeyTemplate;

use super::chain::ChainRule;
use super::dedup::Dedup;
use super::group::Group;
use super::modify::Modify;
use super::reroute::Reroute;
use super::schedule::Schedule;
use super::state_machine::StateMachineRule;
use super::throttle::Throttle;

/// A rule's action, compiled for evaluation.
#[derive(Debug)]
pub enum Effect {
    Allow,
    Deny,
    Suppress,
    Reroute(Reroute),
    Modify(Modify),
    Dedup(Dedup),
    Throttle(Throttle),
    Group(Group),
    Schedule(Schedule),
    StateMachine(StateMachineRule),
    Chain(ChainRule),
    /// Parsed and validated, run by later work (approval): `NOT_IMPLEMENTED`.
    NotImplemented {
        kind: &'static str,
    },
}

impl Effect {
    /// Compiles a rule's action; the error names what is wrong.
    pub fn compile(action: &RuleAction) -> Result<Effect, String> {
        let template = |k: &Option<String>| -> Result<Option<KeyTemplate>, String> {
            k.as_deref()
                .map(|k| KeyTemplate::parse(k).map_err(|e| e.0))
                .transpose()
        };
        let paths = |fields: &[String]| -> Result<Vec<(String, FieldPath)>, String> {
            fields
                .iter()
                .map(|f| {
                    FieldPath::parse(f)
                        .map(|p| (f.clone(), p))
                        .map_err(|e| format!("`{f}`: {e}"))
                })
                .collect()
        };
        Ok(match action {
            RuleAction::Allow => Effect::Allow,
            RuleAction::Deny => Effect::Deny,
            RuleAction::Suppress => Effect::Suppress,
            RuleAction::Reroute { target_provider } => Effect::Reroute(Reroute {
                target: target_provider.clone(),
            }),
            RuleAction::Modify { changes } => Effect::Modify(Modify {
                changes: changes.clone(),
            }),
            RuleAction::Deduplicate { ttl_seconds, key } => {
                Effect::Dedup(Dedup::new(*ttl_seconds, template(key)?))
            }
            RuleAction::Throttle {
                max_count,
                window_seconds,
                key,
            } => Effect::Throttle(Throttle {
                max_count: *max_count,
                window_seconds: *window_seconds,
                key: template(key)?,
            }),
            RuleAction::Group {
                group_by,
                group_wait_seconds,
                group_interval_seconds,
                repeat_interval_seconds,
                max_group_size,
                notify_provider,
                ..
            } => Effect::Group(Group {
                group_by: paths(group_by)?,
                wait: Duration::from_secs(*group_wait_seconds),
                interval: Duration::from_secs((*group_interval_seconds).max(1)),
                repeat: repeat_interval_seconds.map(|r| Duration::from_secs(r.max(1))),
                max_size: (*max_group_size).clamp(1, super::group::MAX_GROUP_SIZE) as usize,
                notify_provider: notify_provider.clone(),
            }),
            RuleAction::Schedule { delay_seconds } => {
                Effect::Schedule(Schedule::new(*delay_seconds))
            }
            RuleAction::StateMachine {
                state_machine,
                fingerprint_fields,
            } => Effect::StateMachine(StateMachineRule {
                machine: state_machine.clone(),
                fingerprint_fields: paths(fingerprint_fields)?
                    .into_iter()
                    .map(|(_, p)| p)
                    .collect(),
            }),
            RuleAction::Chain { chain } => Effect::Chain(ChainRule {
                chain: chain.clone(),
            }),
            other => Effect::NotImplemented {
                kind: other.type_name(),
            },
        })
    }

    /// Acteon's snake_case name of the action type (dry-run verdicts).
    pub fn verdict_name(&self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
            Effect::Suppress => "suppress",
            Effect::Reroute(_) => "reroute",
            Effect::Modify(_) => "modify",
            Effect::Dedup(_) => "deduplicate",
            Effect::Throttle(_) => "throttle",
            Effect::Group(_) => "group",
            Effect::Schedule(_) => "schedule",
            Effect::StateMachine(_) => "state_machine",
            Effect::Chain(_) => "chain",
            Effect::NotImplemented { kind } => match *kind {
                "requestApproval" => "request_approval",
                other => other,
            },
        }
    }

    /// Whether it is a gate (deduplicate, throttle).
    pub fn is_gate(&self) -> bool {
        matches!(self, Effect::Dedup(_) | Effect::Throttle(_))
    }
}
