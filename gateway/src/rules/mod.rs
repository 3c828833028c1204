//! The rule engine: rules from a snapshot, compiled once, evaluated in priority order.
//!
//! Evaluation is pure: it reads the action, the clock and the answers of the state reads
//! made before it ([`state_read`]), and returns the gates to check (dedup, throttle) and
//! the [`Decision`]: deliver, stop, or park, with the data each needs.
//! The pipeline then checks all gates (and makes the parking write) in one atomic backend
//! call. Since gates only ever stop an action, checking them after the pure pass gives
//! exactly the result of checking each one in rule order. Each effect's logic lives in its
//! own file; [`effect::Effect`] lists them.

pub mod cel;
pub mod chain;
pub mod condition;
pub mod dedup;
pub mod effect;
pub mod field;
pub mod group;
pub mod index;
pub mod key;
pub mod modify;
pub mod reroute;
pub mod schedule;
pub mod state_machine;
pub mod state_read;
pub mod template;
pub mod throttle;

use std::borrow::Cow;
use std::sync::Arc;

use acteon_api::crd::RuleSpec;
use acteon_api::snapshot::Entry;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use smallvec::SmallVec;

use self::cel::CelCondition;
use self::condition::{Cond, EvalError};
pub use self::effect::Effect;
use self::group::GroupTarget;
use self::index::RuleIndex;
use self::state_machine::{EventTarget, Machines};
use self::state_read::{Inhibitions, LeafContext, StateLeaf, StateView, ThrottleRef, Throttles};
use crate::action::Action;
use crate::state::{Gate, StateRead};

/// What a condition sees: the action, its current payload, the time, and the answers of
/// the state reads made before evaluation (`None`: none were made).
pub struct EvalInput<'a> {
    pub action: &'a Action,
    pub payload: &'a Value,
    pub now: DateTime<Utc>,
    pub state: Option<&'a StateView>,
}

/// A rule's predicate.
#[derive(Debug)]
pub enum Predicate {
    Condition(Cond),
    Cel(CelCondition),
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
    /// Whether its condition has a state leaf.
    pub reads_state: bool,
}

/// A rule's place in the evaluation order, kept by parked actions: when they are released
/// they continue with the rules ordered after it, in the configuration of that moment (the
/// rule itself may have been edited or deleted meanwhile).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RulePlace {
    pub priority: i32,
    pub namespace: String,
    pub name: String,
}

impl CompiledRule {
    pub fn place(&self) -> RulePlace {
        RulePlace {
            priority: self.priority,
            namespace: self.namespace.clone().unwrap_or_default(),
            name: self.name.clone(),
        }
    }
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
    /// Whether any rule has a state leaf (else dispatches read no state).
    reads_state: bool,
    inhibitions: Inhibitions,
}

/// What to do with the action, decided by the first terminal or parking rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Deliver. `rule` is the `allow` or `reroute` rule that decided, if one matched;
    /// `reroute` the provider it names.
    Deliver {
        rule: Option<u32>,
        reroute: Option<String>,
    },
    /// Nothing is delivered (`deny` or `suppress`).
    Stop { rule: u32 },
    /// Park the action; the pipeline writes `park` in the gates' atomic call.
    Park { rule: u32, park: Park },
    /// A rule whose action type is not implemented yet.
    NotImplemented { rule: u32, kind: &'static str },
}

/// Where a parked action waits, with what the evaluation computed for it.
#[derive(Debug, Clone, PartialEq)]
pub enum Park {
    Group(GroupTarget),
    Schedule,
    StateMachine(EventTarget),
    Chain,
}

/// The result of evaluating one action.
#[derive(Debug)]
pub struct Evaluation {
    /// The payload after `modify` rules, if any applied.
    pub payload: Option<Value>,
    /// Gates asked for by `deduplicate` and `throttle` rules, in rule order.
    pub gates: SmallVec<[Gate; 2]>,
    pub decision: Decision,
    /// Rules that matched, in order (for metrics).
    pub matched: SmallVec<[u32; 4]>,
    /// Rules whose evaluation failed (they did not match).
    pub errors: SmallVec<[(u32, EvalError); 1]>,
}

fn compile_rule(
    entry: &Entry<RuleSpec>,
    machines: &Machines,
    throttles: &Throttles,
) -> Result<CompiledRule, BuildError> {
    let id: Arc<str> = match &entry.namespace {
        Some(ns) => format!("{ns}/{}", entry.name).into(),
        None => entry.name.clone().into(),
    };
    let fail = |message: String| BuildError {
        rule: id.to_string(),
        message,
    };
    let spec = &entry.spec;
    let ctx = LeafContext {
        namespace: entry.namespace.as_deref(),
        machines,
        throttles,
    };
    let predicate = match (&spec.condition, &spec.cel) {
        (Some(c), _) => Predicate::Condition(condition::compile(c, &ctx).map_err(|e| fail(e.0))?),
        (None, Some(src)) => {
            Predicate::Cel(CelCondition::compile(src, &ctx).map_err(|e| fail(e.0))?)
        }
        (None, None) => return Err(fail("no condition".into())),
    };
    let timezone = match &spec.timezone {
        Some(tz) => Some(
            tz.parse::<Tz>()
                .map_err(|_| fail(format!("bad time zone `{tz}`")))?,
        ),
        None => None,
    };
    let effect = Effect::compile(&spec.action).map_err(fail)?;
    let mut reads_state = false;
    match &predicate {
        Predicate::Condition(c) => c.walk(&mut |n| reads_state |= matches!(n, Cond::State(_))),
        Predicate::Cel(c) => reads_state = c.state_leaves().next().is_some(),
    }
    Ok(CompiledRule {
        id,
        name: entry.name.clone(),
        namespace: entry.namespace.clone(),
        priority: spec.priority,
        timezone,
        predicate,
        effect,
        reads_state,
    })
}

/// Every throttle rule (enabled or not: a counter of a disabled one reads an idle window),
/// for `stateCounter` leaves.
fn throttles(entries: &[Entry<RuleSpec>]) -> Throttles {
    entries
        .iter()
        .filter_map(|e| match &e.spec.action {
            acteon_api::crd::RuleAction::Throttle { window_seconds, .. } => {
                let id: Arc<str> = match &e.namespace {
                    Some(ns) => format!("{ns}/{}", e.name).into(),
                    None => e.name.clone().into(),
                };
                let scope = e.namespace.clone().unwrap_or_default();
                let window = std::time::Duration::from_secs(*window_seconds);
                Some(((scope, e.name.clone()), ThrottleRef { id, window }))
            }
            _ => None,
        })
        .collect()
}

/// Builds a backend key `prefix:namespace:tenant:rest`, every part escaped and bounded
/// (see [`key`]), so different (namespace, tenant, rest) triples never share a key.
pub fn scoped_key(prefix: &'static str, namespace: &str, tenant: &str, rest: &str) -> String {
    key::state_key(prefix, &[namespace, tenant, rest])
}

impl RuleSet {
    /// Compiles the enabled rules without StateMachines (inhibitions then resolve to none:
    /// see [`RuleSet::build_with`]).
    pub fn build(entries: &[Entry<RuleSpec>]) -> Result<RuleSet, BuildError> {
        RuleSet::build_with(entries, &Machines::default())
    }

    /// Compiles the enabled rules, sorted by priority, then namespace, then name; the
    /// inhibitions of their conditions read the events of `machines`.
    pub fn build_with(
        entries: &[Entry<RuleSpec>],
        machines: &Machines,
    ) -> Result<RuleSet, BuildError> {
        let throttles = throttles(entries);
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
            .map(|e| compile_rule(e, machines, &throttles))
            .collect::<Result<Vec<_>, _>>()?;
        let mut inhibitions = Inhibitions::default();
        for r in &rules {
            match &r.predicate {
                Predicate::Condition(c) => c.walk(&mut |n| {
                    if let Cond::State(leaf) = n {
                        inhibitions.register(leaf);
                    }
                }),
                Predicate::Cel(c) => c.state_leaves().for_each(|l| inhibitions.register(l)),
            }
        }
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
        Ok(RuleSet {
            reads_state: rules.iter().any(|r| r.reads_state),
            rules,
            index,
            inhibitions,
        })
    }

    /// Whether any rule reads state (a dispatch then may make one read before evaluation).
    pub fn reads_state(&self) -> bool {
        self.reads_state
    }

    /// The `equal` lists inhibition leaves use, by machine: the active sets that moves of
    /// each machine's events maintain.
    pub fn inhibitions(&self) -> &Inhibitions {
        &self.inhibitions
    }

    /// The state reads the rules that may match `action` need (those after `after` for a
    /// released action), each once; empty when none of them reads state.
    pub fn state_reads(
        &self,
        action: &Action,
        now: DateTime<Utc>,
        after: Option<&RulePlace>,
    ) -> Vec<StateRead> {
        let mut reads = Vec::new();
        if !self.reads_state {
            return reads;
        }
        let first = after.map_or(0, |p| self.first_after(p));
        let input = EvalInput {
            action,
            payload: &action.payload,
            now,
            state: None,
        };
        // Until a `modify` rule may have patched the payload, a condition whose other
        // leaves already decide it (false, or true whatever the state) needs no read.
        let mut patched = false;
        for pos in self
            .index
            .candidates(action)
            .into_iter()
            .filter(|p| *p >= first)
        {
            let rule = &self.rules[pos as usize];
            let other_namespace = rule
                .namespace
                .as_deref()
                .is_some_and(|ns| ns != action.namespace);
            if other_namespace {
                continue;
            }
            patched |= matches!(rule.effect, Effect::Modify(_));
            if !rule.reads_state {
                continue;
            }
            let mut add = |leaf: &StateLeaf| {
                if let Ok(leaf_reads) = leaf.reads(&input, rule.timezone) {
                    for read in leaf_reads {
                        if !reads.contains(&read) {
                            reads.push(read);
                        }
                    }
                }
            };
            match &rule.predicate {
                Predicate::Condition(c) => {
                    if !patched && c.without_state(&input, rule.timezone).is_some() {
                        continue;
                    }
                    c.walk(&mut |n| {
                        if let Cond::State(leaf) = n {
                            add(leaf);
                        }
                    });
                }
                Predicate::Cel(c) => c.state_leaves().for_each(add),
            }
        }
        reads
    }

    fn first_after(&self, place: &RulePlace) -> u32 {
        self.rules.partition_point(|r| r.place() <= *place) as u32
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

    /// Runs the rules over `action` at time `now`, with no state read (state leaves err).
    pub fn evaluate(&self, action: &Action, now: DateTime<Utc>) -> Evaluation {
        self.evaluate_with(action, now, None)
    }

    /// Runs the rules over `action` at time `now`, state leaves answered by `state` (the
    /// answers of [`RuleSet::state_reads`]).
    pub fn evaluate_with(
        &self,
        action: &Action,
        now: DateTime<Utc>,
        state: Option<&StateView>,
    ) -> Evaluation {
        self.evaluate_candidates(action, now, self.index.candidates(action), 0, state)
    }

    /// Runs the rules ordered after `place` (a released parked action continues there).
    pub fn evaluate_after(
        &self,
        action: &Action,
        now: DateTime<Utc>,
        place: &RulePlace,
        state: Option<&StateView>,
    ) -> Evaluation {
        let first = self.first_after(place);
        self.evaluate_candidates(action, now, self.index.candidates(action), first, state)
    }

    /// Like [`RuleSet::evaluate`] but looks at every rule: the reference the index is
    /// tested against.
    #[doc(hidden)]
    pub fn evaluate_without_index(&self, action: &Action, now: DateTime<Utc>) -> Evaluation {
        self.evaluate_candidates(action, now, (0..self.rules.len() as u32).collect(), 0, None)
    }

    fn evaluate_candidates(
        &self,
        action: &Action,
        now: DateTime<Utc>,
        candidates: index::Candidates,
        first: u32,
        state: Option<&StateView>,
    ) -> Evaluation {
        let mut payload: Cow<'_, Value> = Cow::Borrowed(&action.payload);
        let mut eval = Evaluation {
            payload: None,
            gates: SmallVec::new(),
            decision: Decision::Deliver {
                rule: None,
                reroute: None,
            },
            matched: SmallVec::new(),
            errors: SmallVec::new(),
        };
        for pos in candidates.into_iter().filter(|p| *p >= first) {
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
                state,
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
            if let Some(decision) = on_match(rule, pos, &input, &mut eval) {
                eval.decision = decision;
                break;
            }
            if let Effect::Modify(m) = &rule.effect {
                m.apply(&mut payload);
            }
        }
        if let Cow::Owned(p) = payload {
            eval.payload = Some(p);
        }
        eval
    }
}

/// What a matching rule does: a decision for terminal and parking rules; gates are added
/// to `eval`; `None` lets evaluation continue.
fn on_match(
    rule: &CompiledRule,
    pos: u32,
    input: &EvalInput<'_>,
    eval: &mut Evaluation,
) -> Option<Decision> {
    let tz = rule.timezone;
    let (gate, error) = match &rule.effect {
        Effect::Dedup(d) => d.gate(input, tz),
        Effect::Throttle(t) => t.gate(input, tz, &rule.id),
        Effect::Modify(_) => return None,
        Effect::Allow => {
            return Some(Decision::Deliver {
                rule: Some(pos),
                reroute: None,
            });
        }
        Effect::Reroute(r) => {
            return Some(Decision::Deliver {
                rule: Some(pos),
                reroute: Some(r.target.clone()),
            });
        }
        Effect::Deny | Effect::Suppress => return Some(Decision::Stop { rule: pos }),
        Effect::Group(g) => {
            return Some(Decision::Park {
                rule: pos,
                park: Park::Group(g.target(input, tz)),
            });
        }
        Effect::Schedule(_) => {
            return Some(Decision::Park {
                rule: pos,
                park: Park::Schedule,
            });
        }
        Effect::StateMachine(m) => {
            return Some(Decision::Park {
                rule: pos,
                park: Park::StateMachine(m.target(input, tz)),
            });
        }
        Effect::Chain(_) => {
            return Some(Decision::Park {
                rule: pos,
                park: Park::Chain,
            });
        }
        Effect::NotImplemented { kind } => {
            return Some(Decision::NotImplemented { rule: pos, kind });
        }
    };
    eval.gates.push(gate);
    eval.errors.extend(error.map(|e| (pos, e)));
    None
}
