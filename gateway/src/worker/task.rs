//! What a timer does when it is due: the typed payload of every timer the gateway arms.

use serde::{Deserialize, Serialize};

use crate::action::Action;
use crate::rules::RulePlace;

/// A timer's task, stored as JSON in the timer's payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Task {
    /// Send a group's notification (see `group_flush_begin` / `group_flush_end`).
    FlushGroup(FlushGroup),
    /// Run a scheduled action on through the rules after its schedule rule.
    FireSchedule(FireSchedule),
    /// Move a state-machine event whose state timed out.
    StateTimeout(StateTimeout),
    /// Send the notification of a state-machine move (registered with the move).
    NotifyMove(NotifyMove),
    /// Run the current step of a chain (the payload is the whole run).
    AdvanceChain(Box<ChainRun>),
    /// An ended chain run, kept for inspection: due when its retention ends (then removed).
    ChainEnded(Box<super::chain_record::ChainRecord>),
    /// A dead letter, kept for inspection and replay: due when its retention ends.
    DeadLetter(Box<crate::dead_letter::DeadLetter>),
}

/// A running chain, as its timer carries it from step to step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChainRun {
    pub chain_id: String,
    /// `namespace/name` of the Chain (or `name` when shared).
    pub chain: String,
    /// The definition's version when the run started (its generation, if known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The definition the run started with: edits and deletions meanwhile do not touch it.
    pub definition: acteon_api::crd::ChainSpec,
    /// The action that started the chain.
    pub origin: Action,
    /// Index of the step to run next.
    pub step: usize,
    /// Failed attempts of that step so far.
    #[serde(default)]
    pub attempt: u32,
    /// Results of the steps run so far, in order.
    pub results: Vec<StepResult>,
    pub started_ms: u64,
    pub deadline_ms: u64,
    /// The chains whose `subChain` step is running, outermost first: each resumes after
    /// that step when the sub-chain ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<ParentChain>,
    /// Cancelled by `POST /v1/chains/{id}/cancel`: no further step runs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancelled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,
}

/// A chain waiting for its `subChain` step, at index `step`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParentChain {
    pub chain: String,
    pub definition: acteon_api::crd::ChainSpec,
    pub step: usize,
    /// Results recorded before the sub-chain started.
    pub results_before: usize,
}

/// What one step did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    pub name: String,
    pub success: bool,
    /// The provider's answer body (null for a failed step).
    pub body: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub attempts: u32,
    pub finished_ms: u64,
    /// When the last attempt started.
    #[serde(default)]
    pub started_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The rendered payload sent (per call, for a parallel step).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub request: serde_json::Value,
    /// Failed, and the chain went on (`onFailure: skip`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NotifyMove {
    /// `namespace/name` of the StateMachine (or `name` when shared), for logs.
    pub machine: String,
    pub provider: String,
    /// The notification: the action that made the move, or one describing it.
    pub action: Action,
    /// When the move was made: a notification that could not be sent for
    /// [`NotifyMove::GIVE_UP_AFTER_MS`] is dropped (counted and logged).
    pub moved_ms: u64,
    /// The backend key of the moved event: its notifications are one conversation
    /// (`messageMode`). Absent in tasks armed before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

impl NotifyMove {
    pub const GIVE_UP_AFTER_MS: u64 = 24 * 3_600_000;
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlushGroup {
    pub key: String,
    pub interval_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_ms: Option<u64>,
    /// The trace of the action that armed this flush (the first of the batch); the
    /// notification continues it.
    #[serde(
        default,
        deserialize_with = "crate::trace::context::lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub trace: Option<crate::trace::TraceContext>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FireSchedule {
    /// The action as it was parked (`modify` changes applied).
    pub action: Action,
    /// The schedule rule: evaluation continues after it.
    pub after: RulePlace,
    pub due_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateTimeout {
    pub namespace: String,
    pub tenant: String,
    /// `namespace/name` of the StateMachine (or `name` when shared).
    pub machine: String,
    pub key: String,
    pub fingerprint: String,
    /// The state that timed out and the state it moves to.
    pub state: String,
    pub to: String,
    pub due_ms: u64,
    /// Where a `notify` move's notification goes, and its action type.
    pub provider: String,
    pub action_type: String,
    /// The trace context in effect when the work was deferred: the worker's span for the
    /// task continues it. Absent in payloads written before traces were kept.
    #[serde(
        default,
        deserialize_with = "crate::trace::context::lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub trace: Option<crate::trace::TraceContext>,
}

impl Task {
    pub fn encode(&self) -> Vec<u8> {
        // A task is plain data (strings, numbers, JSON values): serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Task, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The trace context stored with the task, if any.
    pub fn trace(&self) -> Option<&crate::trace::TraceContext> {
        match self {
            Task::FlushGroup(t) => t.trace.as_ref(),
            Task::FireSchedule(t) => t.action.trace.as_ref(),
            Task::StateTimeout(t) => t.trace.as_ref(),
            Task::NotifyMove(t) => t.action.trace.as_ref(),
            Task::AdvanceChain(run) => run.origin.trace.as_ref(),
            Task::ChainEnded(_) | Task::DeadLetter(_) => None,
        }
    }

    /// Bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Task::FlushGroup(_) => "flush_group",
            Task::FireSchedule(_) => "fire_schedule",
            Task::StateTimeout(_) => "state_timeout",
            Task::NotifyMove(_) => "notify_move",
            Task::AdvanceChain(_) => "advance_chain",
            Task::ChainEnded(_) => "chain_ended",
            Task::DeadLetter(_) => "dead_letter",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Payloads written before trace context was kept still decode (without one), and a
    /// stored context survives the round trip.
    #[test]
    fn payloads_without_trace_context_still_decode() {
        let old_flush = json!({"type": "flush_group", "key": "g:1", "interval_ms": 1000});
        let old_timeout = json!({"type": "state_timeout", "namespace": "n", "tenant": "t",
            "machine": "m", "key": "k", "fingerprint": "f", "state": "a", "to": "b",
            "due_ms": 1, "provider": "p", "action_type": "x"});
        let old_schedule = json!({"type": "fire_schedule", "due_ms": 1,
            "after": {"priority": 1, "namespace": "n", "name": "r"},
            "action": {"namespace": "n", "tenant": "t", "provider": "p", "action_type": "x",
                "payload": {}}});
        for old in [old_flush, old_timeout, old_schedule] {
            let task = Task::decode(old.to_string().as_bytes()).expect("old payload decodes");
            assert!(task.trace().is_none(), "{old}");
        }
        let ctx = crate::trace::TraceContext::new_root();
        let task = Task::FlushGroup(FlushGroup {
            key: "g:1".into(),
            interval_ms: 1000,
            repeat_ms: None,
            trace: Some(ctx.clone()),
        });
        let decoded = Task::decode(&task.encode()).expect("decodes");
        assert_eq!(decoded.trace(), Some(&ctx));
        // A damaged context is dropped, never the task.
        let damaged = json!({"type": "flush_group", "key": "g:1", "interval_ms": 1000,
            "trace": {"traceparent": "00-junk"}});
        let task = Task::decode(damaged.to_string().as_bytes()).expect("decodes");
        assert!(task.trace().is_none());
    }
}
