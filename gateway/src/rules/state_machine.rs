//! `stateMachine`: move the action's event (identified by its fingerprint) through a
//! `StateMachine` (terminal). The requested state is the action's `status`; no status means
//! the event stays where it is.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use acteon_api::crd::StateMachineSpec;
use acteon_api::field::FieldPath;
use acteon_api::snapshot::Entry;
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::EvalInput;
use super::field::resolve;
use super::key::state_key;
use crate::action::Action;
use crate::state::{MoveNotice, TimerWrite, Transition};
use crate::worker::task::{NotifyMove, StateTimeout, Task};

/// A compiled `stateMachine` rule.
#[derive(Debug)]
pub struct StateMachineRule {
    pub machine: String,
    pub fingerprint_fields: Vec<FieldPath>,
}

/// The event an action moves and where to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventTarget {
    pub fingerprint: String,
    pub to: Option<String>,
}

impl StateMachineRule {
    /// The action's `fingerprint`, else a stable hash of the listed fields (absent fields
    /// hash as absent, distinct from any value), else the action id.
    pub fn target(&self, input: &EvalInput<'_>, tz: Option<Tz>) -> EventTarget {
        let a = input.action;
        let fingerprint = match (&a.fingerprint, self.fingerprint_fields.is_empty()) {
            (Some(f), _) => f.clone(),
            (None, true) => a.id.clone(),
            (None, false) => {
                let values: Vec<String> = self
                    .fingerprint_fields
                    .iter()
                    .map(|p| match resolve(p, input, tz).to_key_text() {
                        Some(t) => format!("={t}"),
                        None => "!".to_owned(),
                    })
                    .collect();
                let parts: Vec<&str> = values.iter().map(String::as_str).collect();
                // The escaped key makes the parts unambiguous; its digest is the stable,
                // bounded fingerprint.
                let digest = Sha256::digest(state_key("fp", &parts).as_bytes());
                digest[..16].iter().map(|b| format!("{b:02x}")).collect()
            }
        };
        EventTarget {
            fingerprint,
            to: a.status.clone(),
        }
    }
}

/// A `StateMachine` compiled for lookups.
#[derive(Debug)]
pub struct Machine {
    /// `namespace/name`, or `name` when shared: unique, used in keys and metrics.
    pub id: String,
    pub initial: String,
    pub terminal: HashSet<String>,
    /// Target state → (source state, notify) of every allowed move into it.
    pub into: HashMap<String, Vec<(String, bool)>>,
    /// State → (after, target) of its timeout.
    pub timeouts: HashMap<String, (Duration, String)>,
    pub notify_provider: Option<String>,
}

impl Machine {
    fn compile(entry: &Entry<StateMachineSpec>) -> Machine {
        let spec = &entry.spec;
        let mut into: HashMap<String, Vec<(String, bool)>> = HashMap::new();
        for t in &spec.transitions {
            into.entry(t.to.clone())
                .or_default()
                .push((t.from.clone(), t.notify));
        }
        Machine {
            id: match &entry.namespace {
                Some(ns) => format!("{ns}/{}", entry.name),
                None => entry.name.clone(),
            },
            initial: spec.initial_state.clone(),
            terminal: spec.terminal_states.iter().cloned().collect(),
            into,
            timeouts: spec
                .timeouts
                .iter()
                .map(|t| {
                    let after = Duration::from_secs(t.after_seconds.max(1));
                    (t.state.clone(), (after, t.transition_to.clone()))
                })
                .collect(),
            notify_provider: spec.notify_provider.clone(),
        }
    }

    /// States from which `to` may be entered.
    pub fn sources_of(&self, to: &str) -> Vec<String> {
        self.into
            .get(to)
            .map(|v| v.iter().map(|(from, _)| from.clone()).collect())
            .unwrap_or_default()
    }

    /// Whether the move `from` → `to` notifies.
    pub fn notifies(&self, from: &str, to: &str) -> bool {
        self.into
            .get(to)
            .is_some_and(|v| v.iter().any(|(f, n)| f == from && *n))
    }
}

/// The machines of a snapshot, by scope.
#[derive(Debug, Default)]
pub struct Machines {
    /// (namespace or "" for shared, name) → machine
    by_name: HashMap<(String, String), Arc<Machine>>,
}

impl Machines {
    pub fn build(entries: &[Entry<StateMachineSpec>]) -> Machines {
        let by_name = entries
            .iter()
            .map(|e| {
                let scope = e.namespace.clone().unwrap_or_default();
                ((scope, e.name.clone()), Arc::new(Machine::compile(e)))
            })
            .collect();
        Machines { by_name }
    }

    /// The machine `name` as seen from `namespace`: its own first, then a shared one.
    pub fn resolve(&self, namespace: &str, name: &str) -> Option<&Arc<Machine>> {
        self.by_name
            .get(&(namespace.to_owned(), name.to_owned()))
            .or_else(|| self.by_name.get(&(String::new(), name.to_owned())))
    }

    /// The machines a rule or request of `namespace` can name: its own, and the shared ones
    /// it has none of the same name for.
    pub fn visible_from(&self, namespace: &str) -> Vec<Arc<Machine>> {
        self.names()
            .filter_map(|name| self.resolve(namespace, name).cloned())
            .collect()
    }

    /// Every machine called `name`, with its scope (`""` = shared).
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a str, &'a Arc<Machine>)> {
        self.by_name
            .iter()
            .filter(move |((_, n), _)| n == name)
            .map(|((scope, _), m)| (scope.as_str(), m))
    }

    /// The names of all machines (each once, whatever its scopes).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        let mut names: Vec<&str> = self.by_name.keys().map(|(_, n)| n.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names.into_iter()
    }

    /// A machine by its id (`namespace/name` or `name`).
    pub fn by_id(&self, id: &str) -> Option<&Arc<Machine>> {
        let (scope, name) = id.split_once('/').unwrap_or(("", id));
        self.by_name.get(&(scope.to_owned(), name.to_owned()))
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// How long an event is remembered after its last change.
pub const EVENT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// What an event remembers of the action that last moved it (for `/v1/events`, the
/// notifications of timeouts, and the inhibition sets of moves made without an action:
/// timeouts and `PUT /v1/events/{fingerprint}/transition` compute them from the record).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub namespace: String,
    pub tenant: String,
    pub machine: String,
    pub provider: String,
    pub action_type: String,
    pub payload: Value,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub metadata: HashMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
}

impl EventRecord {
    /// What `action` leaves in the event it moves.
    pub fn of(action: &Action, machine: &str) -> EventRecord {
        EventRecord {
            namespace: action.namespace.clone(),
            tenant: action.tenant.clone(),
            machine: machine.to_owned(),
            provider: action.provider.clone(),
            action_type: action.action_type.clone(),
            payload: action.payload.clone(),
            metadata: action.metadata.clone(),
            dedup_key: action.dedup_key.clone(),
        }
    }

    /// The recorded action's fields as an action (the fields an inhibition's `equal` may
    /// list; the id and status are not kept).
    pub fn action(&self, fingerprint: &str) -> Action {
        Action {
            id: String::new(),
            namespace: self.namespace.clone(),
            tenant: self.tenant.clone(),
            provider: self.provider.clone(),
            action_type: self.action_type.clone(),
            payload: self.payload.clone(),
            created_at: None,
            metadata: self.metadata.clone(),
            dedup_key: self.dedup_key.clone(),
            status: None,
            fingerprint: Some(fingerprint.to_owned()),
            trace: crate::trace::current(),
        }
    }
}

impl Machine {
    /// The backend key of an event.
    pub fn event_key(&self, namespace: &str, tenant: &str, fingerprint: &str) -> String {
        event_key(namespace, tenant, &self.id, fingerprint)
    }

    /// Where notifications of this machine go for an action of `provider`.
    pub fn notify_target<'a>(&'a self, provider: &'a str) -> &'a str {
        self.notify_provider.as_deref().unwrap_or(provider)
    }

    /// The move `action` asks for (to `target.to`), with the timeout of the state it
    /// enters armed at `now_ms` + its delay; `active_sets` are the inhibition sets of the
    /// action's values (see [`super::state_read::Inhibitions::active_sets`]).
    pub fn transition(
        &self,
        action: &Action,
        target: &EventTarget,
        now_ms: u64,
        active_sets: Vec<String>,
    ) -> Transition {
        let key = self.event_key(&action.namespace, &action.tenant, &target.fingerprint);
        let record = EventRecord::of(action, &self.id);
        // No requested state: an event seen for the first time (or after a terminal state)
        // is recorded in the initial state, with that state's timeout, as Acteon does; a
        // live event stays where it is. Asked as a move into the initial state allowed from
        // no state, so a live event elsewhere is refused, which the caller reads as staying.
        let to = target.to.clone().unwrap_or_else(|| self.initial.clone());
        let mut t = self.moving(
            key,
            &target.fingerprint,
            Some(to),
            &record,
            &action.id,
            now_ms,
            active_sets,
        );
        if target.to.is_none() {
            t.allowed_from.clear();
        }
        t
    }

    /// A move of the event at `key` to `to`; `cause` makes the timeout timer's id unique.
    /// The event joins `active_sets` unless `to` is terminal, which takes it out of them.
    #[allow(clippy::too_many_arguments)]
    pub fn moving(
        &self,
        key: String,
        fingerprint: &str,
        to: Option<String>,
        record: &EventRecord,
        cause: &str,
        now_ms: u64,
        active_sets: Vec<String>,
    ) -> Transition {
        let timeout = to.as_deref().and_then(|state| {
            let (after, next) = self.timeouts.get(state)?;
            let due_ms = now_ms + after.as_millis() as u64;
            let task = Task::StateTimeout(StateTimeout {
                namespace: record.namespace.clone(),
                tenant: record.tenant.clone(),
                machine: self.id.clone(),
                key: key.clone(),
                fingerprint: fingerprint.to_owned(),
                state: state.to_owned(),
                to: next.clone(),
                due_ms,
                provider: self.notify_target(&record.provider).to_owned(),
                action_type: record.action_type.clone(),
                // The work in progress (the dispatch, the worker task) made the move.
                trace: crate::trace::current(),
            });
            Some(TimerWrite {
                id: format!("timeout:{key}:{}", state_key("c", &[cause, state])),
                due_unix_ms: due_ms,
                payload: task.encode(),
            })
        });
        Transition {
            allowed_from: to
                .as_deref()
                .map(|t| self.sources_of(t))
                .unwrap_or_default(),
            to_terminal: to.as_deref().is_some_and(|t| self.terminal.contains(t)),
            terminal: {
                let mut terminal: Vec<String> = self.terminal.iter().cloned().collect();
                terminal.sort();
                terminal
            },
            key,
            fingerprint: fingerprint.to_owned(),
            initial: self.initial.clone(),
            to,
            require_timer: None,
            timeout,
            active_sets,
            record: serde_json::to_vec(record).unwrap_or_default(),
            ttl: EVENT_TTL,
            notice: None,
        }
    }

    /// The move `t` with its notification, if a move into its target notifies from some
    /// state: `notification` sent to `provider` by the worker, registered by the backend
    /// only if the move happens from such a state. `cause` makes the timer's id unique.
    pub fn with_notice(
        &self,
        mut t: Transition,
        notification: Action,
        provider: &str,
        cause: &str,
        now_ms: u64,
    ) -> Transition {
        let Some(to) = t.to.as_deref() else {
            return t;
        };
        let from: Vec<String> = self
            .sources_of(to)
            .into_iter()
            .filter(|from| from != to && self.notifies(from, to))
            .collect();
        if from.is_empty() || provider.is_empty() {
            return t;
        }
        let task = Task::NotifyMove(NotifyMove {
            machine: self.id.clone(),
            provider: provider.to_owned(),
            action: notification,
            moved_ms: now_ms,
            event: Some(t.key.clone()),
        });
        t.notice = Some(MoveNotice {
            from,
            timer: TimerWrite {
                id: format!("notify:{}:{}", t.key, state_key("c", &[cause, to])),
                due_unix_ms: now_ms,
                payload: task.encode(),
            },
        });
        t
    }
}

/// Key prefix of the events of a namespace (and tenant), for listing.
/// The backend key of an event of the machine `machine_id`.
pub fn event_key(namespace: &str, tenant: &str, machine_id: &str, fingerprint: &str) -> String {
    state_key("e", &[namespace, tenant, machine_id, fingerprint])
}

pub fn key_prefix(namespace: &str, tenant: Option<&str>) -> String {
    let mut prefix = match tenant {
        Some(t) => state_key("e", &[namespace, t]),
        None => state_key("e", &[namespace]),
    };
    prefix.push(':');
    prefix
}
