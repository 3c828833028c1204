//! StateMachine validation: states, terminal states, transitions, timeouts and the
//! notification provider.
//!
//! Every state named anywhere must be one of `states`. Terminal states are final: no
//! transition and no timeout may leave one (an event in one is finished: its next action
//! starts a new lifecycle from the initial state), and the initial state cannot be one (an
//! event would start out finished). Sizes are bounded ([`limits`]).

use std::collections::HashMap;

use super::{Accepted, Parsed, Problem};
use crate::compile::error::Kind;
use crate::compile::limits::{
    MAX_DELAY_SECONDS, MAX_STATE_NAME_BYTES, MAX_STATES, MAX_TRANSITIONS,
};
use crate::crd::StateMachineSpec;

const REASON: &str = "InvalidStateMachine";

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem::new(field, REASON, message)
}

pub(super) fn check(m: &Parsed<'_, StateMachineSpec>, accepted: &Accepted) -> Result<(), Problem> {
    let spec = &m.spec;
    // State name → index in `states`.
    let states = check_states(spec)?;
    let known = |field: String, state: &str| {
        if states.contains_key(state) {
            Ok(())
        } else {
            Err(invalid(
                field,
                format!("`{state}` is not one of spec.states"),
            ))
        }
    };
    known("spec.initialState".into(), &spec.initial_state)?;

    let mut terminal: HashMap<&str, usize> = HashMap::new();
    for (i, t) in spec.terminal_states.iter().enumerate() {
        let field = format!("spec.terminalStates[{i}]");
        known(field.clone(), t)?;
        if let Some(j) = terminal.insert(t, i) {
            return Err(invalid(
                field,
                format!("`{t}` is listed twice (also spec.terminalStates[{j}])"),
            ));
        }
        if *t == spec.initial_state {
            return Err(invalid(
                field,
                format!("`{t}` is spec.initialState: a new event would start in a terminal state"),
            ));
        }
    }
    let leaves_terminal = |field: String, state: &str, what: &str| {
        if terminal.contains_key(state) {
            Err(invalid(
                field,
                format!(
                    "`{state}` is terminal (spec.terminalStates): no {what} may leave it (a terminal event starts over from spec.initialState on its next action)"
                ),
            ))
        } else {
            Ok(())
        }
    };

    if spec.transitions.len() > MAX_TRANSITIONS {
        return Err(invalid(
            "spec.transitions",
            format!(
                "has {} transitions; at most {MAX_TRANSITIONS}",
                spec.transitions.len()
            ),
        ));
    }
    let mut pairs: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, t) in spec.transitions.iter().enumerate() {
        let at = format!("spec.transitions[{i}]");
        known(format!("{at}.from"), &t.from)?;
        known(format!("{at}.to"), &t.to)?;
        leaves_terminal(format!("{at}.from"), &t.from, "transition")?;
        if let Some(j) = pairs.insert((&t.from, &t.to), i) {
            return Err(invalid(
                at,
                format!(
                    "`{}` → `{}` is listed twice (also spec.transitions[{j}])",
                    t.from, t.to
                ),
            ));
        }
    }

    let mut timed: HashMap<&str, usize> = HashMap::new();
    for (i, t) in spec.timeouts.iter().enumerate() {
        let at = format!("spec.timeouts[{i}]");
        known(format!("{at}.state"), &t.state)?;
        known(format!("{at}.transitionTo"), &t.transition_to)?;
        leaves_terminal(format!("{at}.state"), &t.state, "timeout")?;
        if let Some(j) = timed.insert(&t.state, i) {
            return Err(invalid(
                format!("{at}.state"),
                format!(
                    "`{}` already has a timeout (spec.timeouts[{j}]); at most one per state",
                    t.state
                ),
            ));
        }
        if t.transition_to == t.state {
            return Err(invalid(
                format!("{at}.transitionTo"),
                format!("a timeout must move to another state than `{}`", t.state),
            ));
        }
        if !(1..=MAX_DELAY_SECONDS).contains(&t.after_seconds) {
            return Err(invalid(
                format!("{at}.afterSeconds"),
                format!("must be between 1 and {MAX_DELAY_SECONDS} (7 days)"),
            ));
        }
    }

    if let Some(p) = &spec.notify_provider {
        accepted.need(
            Kind::Provider,
            &m.scope,
            p,
            "spec.notifyProvider",
            "ProviderNotFound",
        )?;
    }
    Ok(())
}

/// `states`: 1 to [`MAX_STATES`] unique, non-empty, printable names; name → index.
fn check_states(spec: &StateMachineSpec) -> Result<HashMap<&str, usize>, Problem> {
    if spec.states.is_empty() {
        return Err(invalid("spec.states", "needs at least one state"));
    }
    if spec.states.len() > MAX_STATES {
        return Err(invalid(
            "spec.states",
            format!("has {} states; at most {MAX_STATES}", spec.states.len()),
        ));
    }
    let mut index = HashMap::with_capacity(spec.states.len());
    for (i, s) in spec.states.iter().enumerate() {
        let field = format!("spec.states[{i}]");
        if s.is_empty() {
            return Err(invalid(field, "a state needs a name"));
        }
        if s.len() > MAX_STATE_NAME_BYTES {
            return Err(invalid(
                field,
                format!("is longer than {MAX_STATE_NAME_BYTES} bytes"),
            ));
        }
        if s.trim() != s || s.chars().any(char::is_control) {
            return Err(invalid(
                field,
                "must not start or end with spaces or contain control characters",
            ));
        }
        if let Some(j) = index.insert(s.as_str(), i) {
            return Err(invalid(
                field,
                format!("`{s}` is listed twice (also spec.states[{j}])"),
            ));
        }
    }
    Ok(index)
}
