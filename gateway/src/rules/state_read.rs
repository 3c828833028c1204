//! Condition leaves that read shared state: `inhibitedBy` (and `has_active_event`),
//! `stateSeen` and `stateCounter`.
//!
//! Evaluation stays pure. Before a dispatch is evaluated, the pipeline asks the rule set
//! for the reads its candidate rules need ([`super::RuleSet::state_reads`], computed from
//! the action as dispatched), makes them in one backend call, and evaluates with the
//! answers ([`StateView`]). A leaf computes its read again while evaluating and looks its
//! answer up; a read that was not made (a `modify` rule before it changed a field its key
//! uses) is a rule error (reason `state`), never a guess. Dispatches whose candidate rules
//! have no such leaf make no extra call.
//!
//! - **Inhibition**: an event of a StateMachine is *active* from its first recorded move
//!   until it reaches a terminal state. For each (machine, `equal` list) some leaf uses,
//!   every move of the machine's events keeps the event's fingerprint in the set named by
//!   the moving action's `equal` values ([`EqualList::set_key`]) while it is not terminal
//!   (see [`Inhibitions`]); the leaf holds when the set named by the current action's
//!   values is not empty. Sets are scoped by namespace, not tenant: an event of any tenant
//!   of the namespace inhibits (list `action.tenant` in `equal` to stay within a tenant). A
//!   field absent on both sides agrees (as in Alertmanager).
//! - **`stateSeen: <key template>`** holds while the dedup mark of that key is set: the same
//!   key a `deduplicate` rule with that template builds (namespace and tenant scoped); with
//!   `withinSeconds`, only while the mark was set at most that long ago.
//! - **`stateCounter: <throttle rule>`** (+ `key`, `windowSeconds`) counts the passes in
//!   that throttle rule's sliding window for the key (by default over the rule's own window).
//! - **`event_in_state([machine,] fingerprint, state)`** holds while the event with that
//!   fingerprint (a literal, or the value of an `action.` field path; the action's namespace
//!   and tenant) of the machine is recorded in `state`. Without a machine, any machine the
//!   action's namespace sees (one read each); an absent fingerprint field holds for none.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use acteon_api::condition::EventInState;
use acteon_api::field::FieldPath;
use acteon_api::template::KeyTemplate;
use chrono_tz::Tz;
use smallvec::SmallVec;

use super::EvalInput;
use super::condition::{EvalError, Op};
use super::dedup;
use super::field::resolve;
use super::key::state_key;
use super::state_machine::{Machines, event_key};
use super::template::render;
use super::throttle;
use crate::action::Action;
use crate::state::StateRead;

/// A name resolved as the gateway resolves references: the action's namespace first, then
/// shared.
#[derive(Debug, Clone)]
pub struct Scoped<T> {
    by_namespace: HashMap<String, T>,
    shared: Option<T>,
}

impl<T> Scoped<T> {
    /// From the objects of a name, by scope (`""` = shared). A namespaced rule only ever
    /// sees its own namespace, so only that namespace's object is kept for it.
    fn build<'s>(
        rule_namespace: Option<&str>,
        objects: impl Iterator<Item = (&'s str, T)>,
    ) -> Self {
        let mut scoped = Scoped {
            by_namespace: HashMap::new(),
            shared: None,
        };
        for (scope, value) in objects {
            if scope.is_empty() {
                scoped.shared = Some(value);
            } else if rule_namespace.is_none_or(|ns| ns == scope) {
                scoped.by_namespace.insert(scope.to_owned(), value);
            }
        }
        scoped
    }

    pub fn get(&self, namespace: &str) -> Option<&T> {
        self.by_namespace.get(namespace).or(self.shared.as_ref())
    }

    fn values(&self) -> impl Iterator<Item = &T> {
        self.by_namespace.values().chain(self.shared.as_ref())
    }
}

/// The fields an inhibition compares, with the id that names its sets.
#[derive(Debug, PartialEq, Eq)]
pub struct EqualList {
    pub id: String,
    pub paths: Vec<FieldPath>,
}

/// A field path as text (Acteon's spelling without `action.`), for set names.
fn path_text(path: &FieldPath) -> String {
    match path {
        FieldPath::Namespace => "namespace".into(),
        FieldPath::Tenant => "tenant".into(),
        FieldPath::Provider => "provider".into(),
        FieldPath::ActionType => "action_type".into(),
        FieldPath::Id => "id".into(),
        FieldPath::Status => "status".into(),
        FieldPath::Fingerprint => "fingerprint".into(),
        FieldPath::DedupKey => "dedup_key".into(),
        FieldPath::Payload(keys) if keys.is_empty() => "payload".into(),
        FieldPath::Payload(keys) => format!("payload.{}", keys.join(".")),
        FieldPath::Metadata(k) => format!("metadata.{k}"),
        FieldPath::Time(t) => format!("time.{t:?}"),
    }
}

impl EqualList {
    pub fn new(paths: Vec<FieldPath>) -> EqualList {
        let texts: Vec<String> = paths.iter().map(path_text).collect();
        let parts: Vec<&str> = texts.iter().map(String::as_str).collect();
        EqualList {
            id: state_key("eq", &parts),
            paths,
        }
    }

    /// The set of active events of machine `machine_id` whose action had the values of
    /// `input`'s action in these fields, in its namespace: `=value`, or `!` when absent
    /// (absent agrees with absent, never with a value).
    pub fn set_key(&self, machine_id: &str, input: &EvalInput<'_>) -> String {
        let values: Vec<String> = self
            .paths
            .iter()
            .map(|p| match resolve(p, input, None).to_key_text() {
                Some(t) => format!("={t}"),
                None => "!".to_owned(),
            })
            .collect();
        let mut parts: Vec<&str> = Vec::with_capacity(3 + values.len());
        parts.extend([
            input.action.namespace.as_str(),
            machine_id,
            self.id.as_str(),
        ]);
        parts.extend(values.iter().map(String::as_str));
        state_key("ia", &parts)
    }
}

/// A throttle rule a `stateCounter` leaf may read: its id and window.
#[derive(Debug, Clone)]
pub struct ThrottleRef {
    pub id: Arc<str>,
    pub window: Duration,
}

/// Throttle rules by (scope or `""`, name), for resolving `stateCounter` leaves.
pub type Throttles = HashMap<(String, String), ThrottleRef>;

/// What compiling a condition needs to resolve state leaves.
pub struct LeafContext<'a> {
    /// The namespace of the rule being compiled (`None` = shared).
    pub namespace: Option<&'a str>,
    pub machines: &'a Machines,
    pub throttles: &'a Throttles,
}

/// A compiled state leaf.
#[derive(Debug)]
pub enum StateLeaf {
    Inhibited {
        machine: String,
        /// Machine id by the action's namespace.
        ids: Scoped<String>,
        equal: Arc<EqualList>,
    },
    Seen {
        key: KeyTemplate,
        /// `withinSeconds`: only a mark set this recently.
        within: Option<Duration>,
    },
    Counter {
        rule: String,
        throttle: Scoped<ThrottleRef>,
        key: Option<KeyTemplate>,
        window: Option<Duration>,
        op: Op,
    },
    EventIn {
        /// Machine ids by the action's namespace, one entry per machine name looked at.
        machines: Vec<Scoped<String>>,
        fingerprint: Fingerprint,
        state: String,
    },
}

/// Where `event_in_state` takes its fingerprint from.
#[derive(Debug)]
pub enum Fingerprint {
    Literal(String),
    Field(FieldPath),
}

impl StateLeaf {
    pub fn inhibited(machine: &str, equal: Vec<FieldPath>, ctx: &LeafContext<'_>) -> StateLeaf {
        let ids = Scoped::build(
            ctx.namespace,
            ctx.machines
                .named(machine)
                .map(|(scope, m)| (scope, m.id.clone())),
        );
        StateLeaf::Inhibited {
            machine: machine.to_owned(),
            ids,
            equal: Arc::new(EqualList::new(equal)),
        }
    }

    pub fn counter(
        rule: &str,
        key: Option<KeyTemplate>,
        window: Option<Duration>,
        op: Op,
        ctx: &LeafContext<'_>,
    ) -> StateLeaf {
        let throttle = Scoped::build(
            ctx.namespace,
            ctx.throttles
                .iter()
                .filter(|((_, name), _)| name == rule)
                .map(|((scope, _), t)| (scope.as_str(), t.clone())),
        );
        StateLeaf::Counter {
            rule: rule.to_owned(),
            throttle,
            key,
            window,
            op,
        }
    }

    /// `event_in_state`: of the named machine, or of every machine.
    pub fn event_in(
        check: &EventInState,
        fingerprint: Fingerprint,
        ctx: &LeafContext<'_>,
    ) -> StateLeaf {
        let names: Vec<&str> = match &check.state_machine {
            Some(name) => vec![name.as_str()],
            None => ctx.machines.names().collect(),
        };
        let machines = names
            .into_iter()
            .map(|name| {
                Scoped::build(
                    ctx.namespace,
                    ctx.machines
                        .named(name)
                        .map(|(scope, m)| (scope, m.id.clone())),
                )
            })
            .collect();
        StateLeaf::EventIn {
            machines,
            fingerprint,
            state: check.state.clone(),
        }
    }

    /// The reads this leaf needs for `input` (in order), or why none can be formed.
    pub fn reads(
        &self,
        input: &EvalInput<'_>,
        tz: Option<Tz>,
    ) -> Result<SmallVec<[StateRead; 1]>, EvalError> {
        let StateLeaf::EventIn {
            machines,
            fingerprint,
            state,
        } = self
        else {
            return Ok(smallvec::smallvec![self.read(input, tz)?]);
        };
        let a = input.action;
        let fp = match fingerprint {
            Fingerprint::Literal(fp) => fp.clone(),
            Fingerprint::Field(path) => match resolve(path, input, tz).to_key_text() {
                Some(text) => text.into_owned(),
                // No fingerprint: no event has it.
                None => return Ok(SmallVec::new()),
            },
        };
        Ok(machines
            .iter()
            .filter_map(|m| m.get(&a.namespace))
            .map(|id| StateRead::EventInState {
                key: event_key(&a.namespace, &a.tenant, id, &fp),
                state: state.clone(),
            })
            .collect())
    }

    /// The read of a leaf that makes exactly one.
    fn read(&self, input: &EvalInput<'_>, tz: Option<Tz>) -> Result<StateRead, EvalError> {
        let a = input.action;
        match self {
            StateLeaf::EventIn { .. } => Err(EvalError::State(
                "event_in_state makes one read per machine".into(),
            )),
            StateLeaf::Inhibited {
                machine,
                ids,
                equal,
            } => {
                let id = ids.get(&a.namespace).ok_or_else(|| {
                    EvalError::State(format!(
                        "inhibitedBy: no StateMachine `{machine}` for namespace `{}`",
                        a.namespace
                    ))
                })?;
                Ok(StateRead::SetNotEmpty {
                    key: equal.set_key(id, input),
                })
            }
            StateLeaf::Seen { key, within } => {
                let raw = render(key, input, tz).ok_or_else(|| {
                    EvalError::MissingKey("stateSeen key template has an absent field".into())
                })?;
                let key = dedup::mark_key(&a.namespace, &a.tenant, &raw);
                Ok(match within {
                    Some(within) => StateRead::DedupSeenWithin {
                        key,
                        within: *within,
                    },
                    None => StateRead::DedupSeen { key },
                })
            }
            StateLeaf::Counter {
                rule,
                throttle,
                key,
                window,
                ..
            } => {
                let t = throttle.get(&a.namespace).ok_or_else(|| {
                    EvalError::State(format!(
                        "stateCounter: no throttle rule `{rule}` for namespace `{}`",
                        a.namespace
                    ))
                })?;
                let rendered = match key {
                    Some(k) => Some(render(k, input, tz).ok_or_else(|| {
                        EvalError::MissingKey(
                            "stateCounter key template has an absent field".into(),
                        )
                    })?),
                    None => None,
                };
                Ok(StateRead::WindowCount {
                    key: throttle::window_key(&a.namespace, &a.tenant, &t.id, rendered.as_deref()),
                    window: window.unwrap_or(t.window).min(t.window),
                })
            }
        }
    }

    /// The leaf's truth, from the answers read before evaluation.
    pub fn eval(&self, input: &EvalInput<'_>, tz: Option<Tz>) -> Result<bool, EvalError> {
        let answer = |read: &StateRead| {
            input.state.and_then(|view| view.answer(read)).ok_or_else(|| {
                EvalError::State(format!(
                    "{}: its state was not read before evaluation (a modify rule before it changed a field its key uses?)",
                    self.name()
                ))
            })
        };
        Ok(match self {
            StateLeaf::Inhibited { .. } | StateLeaf::Seen { .. } => {
                answer(&self.read(input, tz)?)? > 0
            }
            StateLeaf::Counter { op, .. } => {
                let count = i64::try_from(answer(&self.read(input, tz)?)?).unwrap_or(i64::MAX);
                super::condition::apply(op, &super::field::FieldValue::Int(count))
            }
            StateLeaf::EventIn { .. } => {
                let mut found = false;
                for read in self.reads(input, tz)? {
                    found |= answer(&read)? > 0;
                }
                found
            }
        })
    }

    fn name(&self) -> &'static str {
        match self {
            StateLeaf::Inhibited { .. } => "inhibitedBy",
            StateLeaf::Seen { .. } => "stateSeen",
            StateLeaf::Counter { .. } => "stateCounter",
            StateLeaf::EventIn { .. } => "event_in_state",
        }
    }
}

/// The answers of the reads made before an evaluation.
#[derive(Debug, Default, Clone)]
pub struct StateView {
    reads: Vec<StateRead>,
    answers: Vec<u64>,
}

impl StateView {
    /// `answers[i]` answers `reads[i]` (as [`crate::state::StateStore::read_state`] gives
    /// them).
    pub fn new(reads: Vec<StateRead>, answers: Vec<u64>) -> StateView {
        StateView { reads, answers }
    }

    pub fn answer(&self, read: &StateRead) -> Option<u64> {
        let i = self.reads.iter().position(|r| r == read)?;
        self.answers.get(i).copied()
    }

    pub fn reads(&self) -> &[StateRead] {
        &self.reads
    }
}

/// The `equal` lists inhibition leaves use, by the id of the machine whose events they
/// read: what a move of that machine's events must keep its active sets for.
#[derive(Debug, Default)]
pub struct Inhibitions {
    by_machine: HashMap<String, Vec<Arc<EqualList>>>,
}

impl Inhibitions {
    /// Registers a leaf's list for every machine it may resolve to.
    pub fn register(&mut self, leaf: &StateLeaf) {
        let StateLeaf::Inhibited { ids, equal, .. } = leaf else {
            return;
        };
        for id in ids.values() {
            let lists = self.by_machine.entry(id.clone()).or_default();
            if !lists.iter().any(|l| l.id == equal.id) {
                lists.push(equal.clone());
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_machine.is_empty()
    }

    /// Whether some leaf reads the events of machine `machine_id`.
    pub fn watches(&self, machine_id: &str) -> bool {
        self.by_machine.contains_key(machine_id)
    }

    /// The active sets a move of an event of machine `machine_id` by `action` keeps the
    /// event in (or takes it out of, for a terminal state).
    pub fn active_sets(&self, machine_id: &str, action: &Action) -> Vec<String> {
        let Some(lists) = self.by_machine.get(machine_id) else {
            return Vec::new();
        };
        let input = EvalInput {
            action,
            payload: &action.payload,
            now: chrono::Utc::now(),
            state: None,
        };
        lists
            .iter()
            .map(|l| l.set_key(machine_id, &input))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn action(payload: serde_json::Value) -> Action {
        serde_json::from_value(json!({
            "namespace": "ns", "tenant": "t", "provider": "p", "action_type": "x",
            "payload": payload, "metadata": {"cluster": "c1"}
        }))
        .unwrap()
    }

    fn list(paths: &[&str]) -> EqualList {
        EqualList::new(paths.iter().map(|p| FieldPath::parse(p).unwrap()).collect())
    }

    fn key(l: &EqualList, a: &Action) -> String {
        let input = EvalInput {
            action: a,
            payload: &a.payload,
            now: chrono::Utc::now(),
            state: None,
        };
        l.set_key("ns/m", &input)
    }

    #[test]
    fn set_keys_follow_the_listed_values_only() {
        let l = list(&["action.payload.cluster", "metadata.cluster"]);
        let a = action(json!({"cluster": "c1", "pod": "p1"}));
        let b = action(json!({"cluster": "c1", "pod": "p2"}));
        let c = action(json!({"cluster": "c2"}));
        assert_eq!(key(&l, &a), key(&l, &b));
        assert_ne!(key(&l, &a), key(&l, &c));
        // Absent agrees with absent, not with a value (nor with the text "!").
        let none = action(json!({}));
        assert_eq!(key(&l, &none), key(&l, &action(json!({"other": 1}))));
        assert_ne!(key(&l, &none), key(&l, &action(json!({"cluster": "!"}))));
        // Another list never shares a set, even over the same values.
        let other = list(&["payload.cluster"]);
        assert_ne!(key(&other, &a), key(&l, &a));
        // The empty list: one set per machine and namespace.
        assert_eq!(key(&list(&[]), &a), key(&list(&[]), &c));
    }

    #[test]
    fn conditions_decided_without_state_need_no_read() {
        use acteon_api::condition::Condition;

        let machines = Machines::default();
        let throttles = Throttles::default();
        let ctx = LeafContext {
            namespace: Some("ns"),
            machines: &machines,
            throttles: &throttles,
        };
        let cond = |v: serde_json::Value| {
            let c: Condition = serde_json::from_value(v).unwrap();
            super::super::condition::compile(&c, &ctx).unwrap()
        };
        let a = action(json!({"cluster": "c1", "up": true}));
        let input = EvalInput {
            action: &a,
            payload: &a.payload,
            now: chrono::Utc::now(),
            state: None,
        };
        let seen = json!({"stateSeen": "k"});
        let up = |eq: bool| json!({"field": "payload.up", "eq": eq});
        let decided = |v| cond(v).without_state(&input, None);
        assert_eq!(decided(json!({"all": [up(false), seen]})), Some(false));
        assert_eq!(decided(json!({"all": [seen, up(true)]})), None);
        assert_eq!(decided(json!({"any": [seen, up(true)]})), Some(true));
        assert_eq!(decided(json!({"any": [up(false), seen]})), None);
        assert_eq!(
            decided(json!({"not": {"any": [seen, up(true)]}})),
            Some(false)
        );
        assert_eq!(decided(json!({"all": [up(true), up(true)]})), Some(true));
        assert_eq!(decided(json!({"any": [up(false)]})), Some(false));
    }

    #[test]
    fn views_answer_the_reads_they_were_given() {
        let r = StateRead::DedupSeen { key: "k".into() };
        let view = StateView::new(vec![r.clone()], vec![1]);
        assert_eq!(view.answer(&r), Some(1));
        assert_eq!(view.answer(&StateRead::DedupSeen { key: "j".into() }), None);
        // A short answer list answers nothing for the missing reads.
        let short = StateView::new(vec![r.clone()], vec![]);
        assert_eq!(short.answer(&r), None);
    }
}
