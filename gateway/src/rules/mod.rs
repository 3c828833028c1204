//! The rule engine: rules from a snapshot, compiled once, evaluated in priority order.
//!
//! Evaluation is pure: it reads the action and the clock and returns the gates to check
//! (dedup, throttle) and the terminal verdict. The pipeline then checks all gates in one
//! atomic backend call. Since gates only ever stop an action, checking them after the pure
//! pass gives exactly the result of checking each one in rule order.

pub mod cel;
pub mod condition;
pub mod dedup;
pub mod field;
pub mod index;
pub mod key;
pub mod modify;
pub mod template;
pub mod throttle;

use std::borrow::Cow;
use std::sync::Arc;

use acteon_api::crd::{RuleAction, RuleSpec};
use acteon_api::snapshot::Entry;
use acteon_api::template::KeyTemplate;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::Value;
use smallvec::SmallVec;

use self::cel::CelCondition;
use self::condition::{Cond, EvalError};
use self::index::RuleIndex;
use crate::action::Action;
use crate::state::Gate;

/// What a condition sees: the action, its current payload, and the time.
pub struct EvalInput<'a> {
    pub action: &'a Action,
    pub payload: &'a Value,
    pub now: DateTime<Utc>,
}

/// A rule's predicate.
#[derive(Debug)]
pub enum Predicate {
    Condition(Cond),
    Cel(CelCondition),
}

/// An action compiled for evaluation (templates parsed).
#[derive(Debug)]
pub enum Effect {
    Allow,
    Deny,
    Suppress,
    Reroute {
        target: String,
    },
    Modify {
        changes: Value,
    },
    Deduplicate {
        ttl_seconds: Option<u64>,
        key: Option<KeyTemplate>,
    },
    Throttle {
        max_count: u64,
        window_seconds: u64,
        key: Option<KeyTemplate>,
    },
    /// Parsed and validated, but run by later work (group, schedule, chain, state machine,
    /// approval): answered `NOT_IMPLEMENTED`.
    NotImplemented {
        kind: &'static str,
    },
}

/// One compiled rule.
#[derive(Debug)]
pub struct CompiledRule {
    /// `namespace/name`, or `name` for shared rules: unique, used in outcomes and metrics.
    pub id: Arc<str>,
    pub name: String,
    pub namespace: Option<String>,
    pub priority: i32,
    pub timezone: Option<Tz>,
    pub predicate: Predicate,
    pub effect: Effect,
}

/// A rule set that failed to compile (the compile path's validation normally prevents it).
#[derive(Debug, thiserror::Error)]
#[error("rule {rule}: {message}")]
pub struct BuildError {
    pub rule: String,
    pub message: String,
}

/// Rules in evaluation order plus their index.
#[derive(Default)]
pub struct RuleSet {
    rules: Vec<CompiledRule>,
    index: RuleIndex,
}

/// The terminal decision of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Execute on the requested provider; `rule` is the `allow` rule, if one matched.
    Execute {
        rule: Option<u32>,
    },
    Deny {
        rule: u32,
    },
    Suppress {
        rule: u32,
    },
    Reroute {
        rule: u32,
    },
    NotImplemented {
        rule: u32,
    },
}

/// The result of evaluating one action.
#[derive(Debug)]
pub struct Evaluation {
    /// The payload after `modify` rules, if any applied.
    pub payload: Option<Value>,
    /// Gates asked for by `deduplicate` and `throttle` rules, in rule order.
    pub gates: SmallVec<[Gate; 2]>,
    pub verdict: Verdict,
    /// Rules that matched, in order (for metrics).
    pub matched: SmallVec<[u32; 4]>,
    /// Rules whose evaluation failed (they did not match).
    pub errors: SmallVec<[(u32, EvalError); 1]>,
}

fn compile_rule(entry: &Entry<RuleSpec>) -> Result<CompiledRule, BuildError> {
    let id: Arc<str> = match &entry.namespace {
        Some(ns) => format!("{ns}/{}", entry.name).into(),
        None => entry.name.clone().into(),
    };
    let fail = |message: String| BuildError {
        rule: id.to_string(),
        message,
    };
    let spec = &entry.spec;
    let predicate = match (&spec.condition, &spec.cel) {
        (Some(c), _) => Predicate::Condition(condition::compile(c).map_err(|e| fail(e.0))?),
        (None, Some(src)) => Predicate::Cel(CelCondition::compile(src).map_err(|e| fail(e.0))?),
        (None, None) => return Err(fail("no condition".into())),
    };
    let timezone = match &spec.timezone {
        Some(tz) => Some(
            tz.parse::<Tz>()
                .map_err(|_| fail(format!("bad time zone `{tz}`")))?,
        ),
        None => None,
    };
    let template = |k: &Option<String>| -> Result<Option<KeyTemplate>, BuildError> {
        k.as_deref()
            .map(|k| KeyTemplate::parse(k).map_err(|e| fail(e.0)))
            .transpose()
    };
    let effect = match &spec.action {
        RuleAction::Allow => Effect::Allow,
        RuleAction::Deny => Effect::Deny,
        RuleAction::Suppress => Effect::Suppress,
        RuleAction::Reroute { target_provider } => Effect::Reroute {
            target: target_provider.clone(),
        },
        RuleAction::Modify { changes } => Effect::Modify {
            changes: changes.clone(),
        },
        RuleAction::Deduplicate { ttl_seconds, key } => Effect::Deduplicate {
            ttl_seconds: *ttl_seconds,
            key: template(key)?,
        },
        RuleAction::Throttle {
            max_count,
            window_seconds,
            key,
        } => Effect::Throttle {
            max_count: *max_count,
            window_seconds: *window_seconds,
            key: template(key)?,
        },
        other => Effect::NotImplemented {
            kind: other.type_name(),
        },
    };
    Ok(CompiledRule {
        id,
        name: entry.name.clone(),
        namespace: entry.namespace.clone(),
        priority: spec.priority,
        timezone,
        predicate,
        effect,
    })
}

/// Builds a backend key `prefix:namespace:tenant:rest`, every part escaped and bounded
/// (see [`key`]), so different (namespace, tenant, rest) triples never share a key.
pub fn scoped_key(prefix: &'static str, namespace: &str, tenant: &str, rest: &str) -> String {
    key::state_key(prefix, &[namespace, tenant, rest])
}

impl RuleSet {
    /// Compiles the enabled rules, sorted by priority, then namespace, then name.
    pub fn build(entries: &[Entry<RuleSpec>]) -> Result<RuleSet, BuildError> {
        let mut enabled: Vec<&Entry<RuleSpec>> =
            entries.iter().filter(|e| e.spec.enabled).collect();
        enabled.sort_by(|a, b| {
            (
                a.spec.priority,
                a.namespace.as_deref().unwrap_or(""),
                a.name.as_str(),
            )
                .cmp(&(
                    b.spec.priority,
                    b.namespace.as_deref().unwrap_or(""),
                    b.name.as_str(),
                ))
        });
        let rules = enabled
            .into_iter()
            .map(compile_rule)
            .collect::<Result<Vec<_>, _>>()?;
        let constraints: Vec<_> = rules
            .iter()
            .map(|r| {
                let cond = match &r.predicate {
                    Predicate::Condition(c) => Some(c),
                    Predicate::Cel(_) => None,
                };
                index::constraints_of(cond, r.namespace.as_deref())
            })
            .collect();
        let index = RuleIndex::build(&constraints);
        Ok(RuleSet { rules, index })
    }

    pub fn rules(&self) -> &[CompiledRule] {
        &self.rules
    }

    pub fn rule(&self, pos: u32) -> &CompiledRule {
        &self.rules[pos as usize]
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Rules every dispatch has to look at (no equality constraint to index on).
    pub fn unindexed(&self) -> usize {
        self.index.unindexed()
    }

    /// Runs the rules over `action` at time `now`.
    pub fn evaluate(&self, action: &Action, now: DateTime<Utc>) -> Evaluation {
        self.evaluate_candidates(action, now, self.index.candidates(action))
    }

    /// Like [`RuleSet::evaluate`] but looks at every rule: the reference the index is
    /// tested against.
    #[doc(hidden)]
    pub fn evaluate_without_index(&self, action: &Action, now: DateTime<Utc>) -> Evaluation {
        self.evaluate_candidates(action, now, (0..self.rules.len() as u32).collect())
    }

    fn evaluate_candidates(
        &self,
        action: &Action,
        now: DateTime<Utc>,
        candidates: index::Candidates,
    ) -> Evaluation {
        let mut payload: Cow<'_, Value> = Cow::Borrowed(&action.payload);
        let mut eval = Evaluation {
            payload: None,
            gates: SmallVec::new(),
            verdict: Verdict::Execute { rule: None },
            matched: SmallVec::new(),
            errors: SmallVec::new(),
        };
        for pos in candidates {
            let rule = &self.rules[pos as usize];
            if rule
                .namespace
                .as_deref()
                .is_some_and(|ns| ns != action.namespace)
            {
                continue;
            }
            let input = EvalInput {
                action,
                payload: &payload,
                now,
            };
            let matched = match &rule.predicate {
                Predicate::Condition(c) => c.eval(&input, rule.timezone),
                Predicate::Cel(c) => c.eval(&input, rule.timezone),
            };
            match matched {
                Ok(true) => eval.matched.push(pos),
                Ok(false) => continue,
                Err(e) => {
                    eval.errors.push((pos, e));
                    continue;
                }
            }
            let terminal = match &rule.effect {
                Effect::Modify { changes } => {
                    modify::apply(&mut payload, changes);
                    None
                }
                Effect::Deduplicate { ttl_seconds, key } => {
                    let (gate, error) =
                        dedup::gate(&input, rule.timezone, *ttl_seconds, key.as_ref());
                    eval.gates.push(gate);
                    eval.errors.extend(error.map(|e| (pos, e)));
                    None
                }
                Effect::Throttle {
                    max_count,
                    window_seconds,
                    key,
                } => {
                    let (gate, error) = throttle::gate(
                        &input,
                        rule.timezone,
                        &rule.id,
                        *max_count,
                        *window_seconds,
                        key.as_ref(),
                    );
                    eval.gates.push(gate);
                    eval.errors.extend(error.map(|e| (pos, e)));
                    None
                }
                Effect::Allow => Some(Verdict::Execute { rule: Some(pos) }),
                Effect::Deny => Some(Verdict::Deny { rule: pos }),
                Effect::Suppress => Some(Verdict::Suppress { rule: pos }),
                Effect::Reroute { .. } => Some(Verdict::Reroute { rule: pos }),
                Effect::NotImplemented { .. } => Some(Verdict::NotImplemented { rule: pos }),
            };
            if let Some(v) = terminal {
                eval.verdict = v;
                break;
            }
        }
        if let Cow::Owned(p) = payload {
            eval.payload = Some(p);
        }
        eval
    }
}
