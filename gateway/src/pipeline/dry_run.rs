//! Dry runs: what a dispatch would do, without side effects.

use super::Gateway;
use crate::action::Action;
use crate::config::Runtime;
use crate::outcome::{ActionOutcome, RuleEvalError};
use crate::rules::{Decision, Evaluation};

impl Gateway {
    /// What a dispatch would do, in Acteon's `DryRun` shape: `verdict` is Acteon's snake_case
    /// name of the deciding rule's type. Gates do not decide here (no state is read), so
    /// when no terminal rule matched, the first passing `deduplicate` / `throttle` rule is
    /// the one named, as Acteon names the rule its dry run stops at.
    pub(super) fn dry_run(
        &self,
        rt: &Runtime,
        action: &Action,
        eval: &Evaluation,
    ) -> ActionOutcome {
        let (verdict, matched_rule) = self.verdict(rt, eval);
        let provider = match &eval.decision {
            Decision::Deliver {
                reroute: Some(to), ..
            } => to.clone(),
            _ => action.provider.clone(),
        };
        let errors = eval
            .errors
            .iter()
            .map(|(pos, e)| RuleEvalError {
                rule: rt.rules.rule(*pos).id.to_string(),
                error: e.to_string(),
            })
            .collect();
        ActionOutcome::DryRun {
            verdict: verdict.to_owned(),
            matched_rule,
            would_be_provider: provider,
            errors,
        }
    }
}

impl Gateway {
    /// The verdict and deciding rule of an evaluation, as the dry run names them (the audit
    /// trail records the same for real dispatches).
    pub(super) fn verdict(
        &self,
        rt: &Runtime,
        eval: &Evaluation,
    ) -> (&'static str, Option<String>) {
        let name = |pos: u32| Some(rt.rules.rule(pos).name.clone());
        match &eval.decision {
            Decision::Deliver { rule: None, .. } if self.options.default_deny => ("deny", None),
            Decision::Deliver { rule: None, .. } => match first_gate_rule(rt, eval) {
                Some(pos) => (effect_kind(rt, pos), name(pos)),
                None => ("allow", None),
            },
            Decision::Deliver {
                rule: Some(pos), ..
            } => (effect_kind(rt, *pos), name(*pos)),
            Decision::Stop { rule }
            | Decision::Park { rule, .. }
            | Decision::NotImplemented { rule, .. } => (effect_kind(rt, *rule), name(*rule)),
        }
    }
}

/// The first matched `deduplicate` or `throttle` rule, if any.
fn first_gate_rule(rt: &Runtime, eval: &Evaluation) -> Option<u32> {
    eval.matched
        .iter()
        .copied()
        .find(|pos| rt.rules.rule(*pos).effect.is_gate())
}

/// Acteon's snake_case verdict name for a rule's action type.
fn effect_kind(rt: &Runtime, rule: u32) -> &'static str {
    rt.rules.rule(rule).effect.verdict_name()
}
