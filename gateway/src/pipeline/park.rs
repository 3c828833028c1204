//! Parking an action (group, schedule, state machine): the write is made in the same
//! atomic backend call as the dispatch's gates, so a stopped dispatch writes nothing and an
//! accepted one is never half-recorded. Gates are applied with their full TTL: a parked
//! action has no delivery of its own to confirm.

use super::gates::GateCheck;
use super::{DispatchError, Gateway};
use crate::action::Action;
use crate::config::Runtime;
use crate::outcome::ActionOutcome;
use crate::rules::state_machine::{EventTarget, Machine};
use crate::rules::{CompiledRule, Effect, Evaluation, Park};
use crate::state::{
    DeferResult, Deferral, GateMode, StateError, Transition, TransitionResult, time_of_ms, unix_ms,
};

impl Gateway {
    pub(super) async fn park(
        &self,
        rt: &Runtime,
        action: &Action,
        eval: &Evaluation,
        rule: &CompiledRule,
        park: &Park,
    ) -> Result<ActionOutcome, DispatchError> {
        let now_ms = unix_ms();
        match (park, &rule.effect) {
            (Park::Schedule, Effect::Schedule(s)) => {
                let timer = s.deferral(action, rule, now_ms);
                let due = timer.due_unix_ms;
                let (check, _) = self.gates_and(eval, Deferral::Timer(timer)).await?;
                Ok(check.unwrap_or_else(|| {
                    self.metrics.parked.with_label_values(&["schedule"]).inc();
                    ActionOutcome::Scheduled {
                        action_id: action.id.clone(),
                        scheduled_for: time_of_ms(due),
                    }
                }))
            }
            (Park::Group(target), Effect::Group(g)) => {
                let append = g.deferral(action, rule, target);
                match self.gates_and(eval, Deferral::GroupAppend(append)).await? {
                    (Some(stop), _) => Ok(stop),
                    (
                        None,
                        Some(DeferResult::Grouped {
                            group_id,
                            size,
                            notify_at_ms,
                        }),
                    ) => {
                        self.metrics.parked.with_label_values(&["group"]).inc();
                        Ok(ActionOutcome::Grouped {
                            group_id,
                            group_size: size as usize,
                            notify_at: time_of_ms(notify_at_ms),
                        })
                    }
                    (None, other) => Err(unexpected(other)),
                }
            }
            (Park::StateMachine(target), Effect::StateMachine(m)) => {
                let Some(machine) = rt.machines.resolve(&action.namespace, &m.machine) else {
                    return Ok(ActionOutcome::failed(
                        "STATE_MACHINE_NOT_FOUND",
                        format!("rule `{}`: no StateMachine `{}`", rule.name, m.machine),
                        false,
                        0,
                    ));
                };
                let sets = rt.rules.inhibitions().active_sets(&machine.id, action);
                let transition = machine.transition(action, target, now_ms, sets);
                // The notification is the moving action itself, sent by the worker.
                let provider = machine.notify_target(&action.provider).to_owned();
                let transition =
                    machine.with_notice(transition, action.clone(), &provider, &action.id, now_ms);
                let (check, result) = self
                    .gates_and(eval, Deferral::Transition(transition))
                    .await?;
                if let Some(stop) = check {
                    return Ok(stop);
                }
                self.moved(machine, target, result).await
            }
            (Park::Chain, Effect::Chain(c)) => {
                let Some(def) = rt.chains.resolve(&action.namespace, &c.chain) else {
                    return Ok(ActionOutcome::failed(
                        "CHAIN_NOT_FOUND",
                        format!("rule `{}`: no Chain `{}`", rule.name, c.chain),
                        false,
                        0,
                    ));
                };
                let chain_id = uuid::Uuid::now_v7().to_string();
                let timer = def.start(action, &chain_id, now_ms);
                let (check, _) = self.gates_and(eval, Deferral::Timer(timer)).await?;
                Ok(check.unwrap_or_else(|| {
                    self.metrics.parked.with_label_values(&["chain"]).inc();
                    self.metrics
                        .chains
                        .with_label_values(&[&def.id, "started"])
                        .inc();
                    ActionOutcome::ChainStarted {
                        chain_id,
                        chain_name: def.name.clone(),
                        total_steps: def.spec.steps.len(),
                        first_step: def
                            .spec
                            .steps
                            .first()
                            .map(|s| s.name.clone())
                            .unwrap_or_default(),
                    }
                }))
            }
            _ => Err(DispatchError::State(StateError::Unavailable(
                "parking decision does not match its rule".into(),
            ))),
        }
    }

    /// Runs a dispatch's gates with one deferral: the outcome of a gate that stopped it, or
    /// the deferral's result.
    async fn gates_and(
        &self,
        eval: &Evaluation,
        deferral: Deferral,
    ) -> Result<(Option<ActionOutcome>, Option<DeferResult>), DispatchError> {
        let (check, mut results) = self
            .check_gates_deferring(eval, GateMode::APPLY, std::slice::from_ref(&deferral))
            .await?;
        Ok(match check {
            GateCheck::Stopped(stop) => (Some(stop), None),
            GateCheck::Passed | GateCheck::Quota { .. } => (None, results.pop()),
        })
    }

    /// The answer to a state-machine move, and its notification when the move notifies.
    async fn moved(
        &self,
        machine: &Machine,
        target: &EventTarget,
        result: Option<DeferResult>,
    ) -> Result<ActionOutcome, DispatchError> {
        let Some(DeferResult::Transition(result)) = result else {
            return Err(unexpected(result));
        };
        // No requested state was asked of the backend as "record in the initial state if
        // new" (see `Machine::transition`): a live event elsewhere answers Refused, which
        // here means it stays where it is.
        let result = match (&target.to, result) {
            (None, TransitionResult::Refused { current }) => {
                TransitionResult::Unchanged { current }
            }
            (_, result) => result,
        };
        let to = target.to.as_deref().unwrap_or(&machine.initial);
        let outcome = transition_outcome(machine, &target.fingerprint, Some(to), &result);
        self.count_transition(machine, to, &result);
        Ok(outcome)
    }

    /// Makes one state-machine move outside a dispatch (a timeout, a move by hand): one
    /// backend call, bounded by the state timeout.
    pub async fn move_event(&self, t: Transition) -> Result<TransitionResult, StateError> {
        let deferrals = [Deferral::Transition(t)];
        let call = self
            .state
            .run_gates_and_defer(&[], GateMode::APPLY, &deferrals);
        match self.state_call(call).await?.1.pop() {
            Some(DeferResult::Transition(result)) => Ok(result),
            other => Err(StateError::Unavailable(format!(
                "state backend answered a move with {other:?}"
            ))),
        }
    }

    /// Counts a move by machine, requested state and result (an event recorded in its
    /// initial state counts as changed, though its previous and new states are the same).
    pub(crate) fn count_transition(&self, machine: &Machine, to: &str, result: &TransitionResult) {
        let result = match result {
            TransitionResult::Changed { .. } => "changed",
            TransitionResult::Unchanged { .. } => "unchanged",
            TransitionResult::Refused { .. } => "refused",
        };
        // Bounded: machines and their states come from the configuration; an unknown
        // requested state is counted as such.
        let state = if machine.into.contains_key(to) || machine.initial == to {
            to
        } else {
            "_unknown"
        };
        self.metrics
            .transitions
            .with_label_values(&[&machine.id, state, result])
            .inc();
    }
}

/// The code of a move a state machine does not allow (an outcome of a dispatch, a 409 of
/// `PUT /v1/events/{fingerprint}/transition`).
pub const TRANSITION_NOT_ALLOWED: &str = "TRANSITION_NOT_ALLOWED";

/// The outcome of a move: `StateChanged` for a change (and for staying put, with the same
/// state on both sides and no notification; an event recorded in its initial state answers
/// the same, previous and new state both the initial one), `Failed` with `TRANSITION_NOT_ALLOWED` for a
/// move the machine does not allow (the state is left as it was).
pub fn transition_outcome(
    machine: &Machine,
    fingerprint: &str,
    to: Option<&str>,
    result: &TransitionResult,
) -> ActionOutcome {
    match result {
        TransitionResult::Changed { previous } => {
            let to = to.unwrap_or_default();
            ActionOutcome::StateChanged {
                fingerprint: fingerprint.to_owned(),
                previous_state: previous.clone(),
                new_state: to.to_owned(),
                // Recorded in its initial state (previous == to): no move, no notification.
                notify: previous != to && machine.notifies(previous, to),
            }
        }
        TransitionResult::Unchanged { current } => ActionOutcome::StateChanged {
            fingerprint: fingerprint.to_owned(),
            previous_state: current.clone(),
            new_state: current.clone(),
            notify: false,
        },
        TransitionResult::Refused { current } => ActionOutcome::failed(
            TRANSITION_NOT_ALLOWED,
            format!(
                "state machine `{}`: no transition from `{current}` to `{}`; the event stays in `{current}`",
                machine.id,
                to.unwrap_or_default()
            ),
            false,
            0,
        ),
    }
}

fn unexpected(result: Option<DeferResult>) -> DispatchError {
    DispatchError::State(StateError::Unavailable(format!(
        "state backend answered a deferral with {result:?}"
    )))
}

/// A transition for the worker or the API: the same move a dispatch makes.
pub fn for_timeout(mut t: Transition, timer_id: &str, from: &str) -> Transition {
    t.require_timer = Some(timer_id.to_owned());
    t.allowed_from = vec![from.to_owned()];
    t
}
