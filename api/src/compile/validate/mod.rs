//! Validation of each kind, in dependency order: providers, state machines, chains,
//! quotas, then rules (which may refer to all the others).

mod chain;
mod provider;
mod rule;
mod state_machine;

use std::collections::{HashMap, HashSet};

use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_path_to_error::Segment;

use super::CompileOptions;
use super::documents::Document;
use super::error::{CompileError, Kind, ObjectId};
use crate::crd::quota::parse_window_seconds;
use crate::crd::{Overage, QuotaSpec};
use crate::snapshot::{Entry, Snapshot};

/// A problem inside one object: field path (relative to the object), reason, message.
pub(super) struct Problem {
    pub field: String,
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    pub fn new(
        field: impl Into<String>,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Problem {
        Problem {
            field: field.into(),
            reason,
            message: message.into(),
        }
    }
}

/// Names of accepted (and of rejected) objects, for resolving references within scope.
#[derive(Default)]
pub(super) struct Accepted {
    names: HashSet<(Kind, Option<String>, String)>,
    /// Objects rejected so far, so a reference to one says so rather than "not found".
    rejected: HashSet<(Kind, Option<String>, String)>,
}

impl Accepted {
    fn insert(&mut self, kind: Kind, scope: &Option<String>, name: &str) {
        self.names.insert((kind, scope.clone(), name.to_owned()));
    }

    fn remove(&mut self, kind: Kind, scope: &Option<String>, name: &str) {
        self.names.remove(&(kind, scope.clone(), name.to_owned()));
    }

    fn mark_rejected(&mut self, kind: Kind, scope: &Option<String>, name: &str) {
        self.rejected.insert((kind, scope.clone(), name.to_owned()));
    }

    /// An object in `scope` may use objects of its own namespace and shared ones.
    pub fn resolves(&self, kind: Kind, scope: &Option<String>, name: &str) -> bool {
        self.names.contains(&(kind, scope.clone(), name.to_owned()))
            || self.names.contains(&(kind, None, name.to_owned()))
    }

    /// Checks a reference from an object in `scope` to the `kind` named `name`: a problem
    /// at `field` with `reason` (e.g. `ProviderNotFound`) when no accepted object of that
    /// name is in scope; the message says whether one exists but was rejected.
    pub fn need(
        &self,
        kind: Kind,
        scope: &Option<String>,
        name: &str,
        field: impl Into<String>,
        reason: &'static str,
    ) -> Result<(), Problem> {
        if self.resolves(kind, scope, name) {
            return Ok(());
        }
        let what = match kind {
            Kind::StateMachine => "state machine",
            Kind::Provider => "provider",
            Kind::Chain => "chain",
            Kind::Quota => "quota",
            Kind::Rule => "rule",
        };
        let rejected = self
            .rejected
            .contains(&(kind, scope.clone(), name.to_owned()))
            || self.rejected.contains(&(kind, None, name.to_owned()));
        let message = if rejected {
            format!("{what} `{name}` is rejected (see its own status)")
        } else {
            format!("{what} `{name}` not found")
        };
        Err(Problem::new(field, reason, message))
    }
}

/// A document that parsed into its typed spec.
pub(super) struct Parsed<'a, S> {
    pub doc: &'a Document,
    pub scope: Option<String>,
    pub spec: S,
}

struct Run<'a> {
    options: &'a CompileOptions,
    rejections: Vec<CompileError>,
    accepted: Accepted,
}

impl<'a> Run<'a> {
    fn reject(&mut self, doc: &Document, p: Problem) {
        let scope = self.scope(&doc.id);
        self.accepted
            .mark_rejected(doc.id.kind, &scope, &doc.id.name);
        self.rejections.push(CompileError {
            source: doc.source.clone(),
            object: Some(doc.id.clone()),
            field: Some(p.field),
            reason: p.reason,
            message: p.message,
        });
    }

    fn scope(&self, id: &ObjectId) -> Option<String> {
        id.namespace
            .clone()
            .filter(|ns| *ns != self.options.shared_namespace)
    }

    /// Deserializes each document of `kind`; errors name the spec field.
    fn parse<'d, S: DeserializeOwned>(
        &mut self,
        docs: &'d [Document],
        kind: Kind,
    ) -> Vec<Parsed<'d, S>> {
        let mut out = Vec::new();
        for doc in docs.iter().filter(|d| d.id.kind == kind) {
            // From the text on the common path; errors are worked out on the parsed
            // value, whose messages carry no line/column noise.
            if let Ok(spec) = doc.spec.parse::<S>() {
                out.push(Parsed {
                    doc,
                    scope: self.scope(&doc.id),
                    spec,
                });
                continue;
            }
            let value = doc.spec.value();
            match serde_path_to_error::deserialize::<_, S>(&value) {
                Ok(spec) => out.push(Parsed {
                    doc,
                    scope: self.scope(&doc.id),
                    spec,
                }),
                Err(e) => {
                    let field = error_field(&value, &e, |v| {
                        serde_path_to_error::deserialize::<_, S>(v)
                            .err()
                            .map(|e| e.into_inner().to_string())
                    });
                    self.reject(
                        doc,
                        Problem::new(field, "InvalidSpec", e.into_inner().to_string()),
                    );
                }
            }
        }
        out
    }

    /// Keeps the objects `check` accepts and records them as resolvable.
    fn keep<'d, S>(
        &mut self,
        kind: Kind,
        items: Vec<Parsed<'d, S>>,
        check: impl Fn(&Parsed<'d, S>, &Accepted) -> Result<(), Problem>,
    ) -> Vec<Parsed<'d, S>> {
        let mut kept = Vec::new();
        for item in items {
            match check(&item, &self.accepted) {
                Ok(()) => kept.push(item),
                Err(p) => self.reject(item.doc, p),
            }
        }
        for item in &kept {
            self.accepted.insert(kind, &item.scope, &item.doc.id.name);
        }
        kept
    }
}

/// The value a deserialization error path points at.
fn value_at<'v>(root: &'v Value, path: &serde_path_to_error::Path) -> Option<&'v Value> {
    path.iter().try_fold(root, |v, segment| match segment {
        Segment::Map { key } => v.get(key.as_str()),
        Segment::Seq { index } => v.get(*index),
        Segment::Enum { .. } => Some(v),
        Segment::Unknown => None,
    })
}

fn value_at_mut<'v>(
    root: &'v mut Value,
    path: &serde_path_to_error::Path,
) -> Option<&'v mut Value> {
    path.iter().try_fold(root, |v, segment| match segment {
        Segment::Map { key } => v.get_mut(key.as_str()),
        Segment::Seq { index } => v.get_mut(*index),
        Segment::Enum { .. } => Some(v),
        Segment::Unknown => None,
    })
}

/// The dotted field (`spec.…`) a deserialization error belongs to.
///
/// serde cannot follow paths into internally tagged enums (a Rule's `action`), so
/// `ttlSeconds: "x"` is reported at `action`: there the offending key is found by
/// leaving each key out in turn (`retry` deserializes a trial spec, `None` = success).
/// `unknown field` and `missing field` errors on a map name their key.
fn error_field(
    spec: &Value,
    err: &serde_path_to_error::Error<serde_json::Error>,
    retry: impl Fn(&Value) -> Option<String>,
) -> String {
    let path = err.path().to_string();
    let base = if path == "." {
        "spec".to_owned()
    } else {
        format!("spec.{path}")
    };
    let Some(obj) = value_at(spec, err.path()).and_then(Value::as_object) else {
        return base;
    };
    let message = err.inner().to_string();
    let quoted = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('`'))
            .and_then(|r| r.split('`').next())
    };
    if let Some(key) = quoted("unknown field ").filter(|k| obj.contains_key(*k)) {
        return format!("{base}.{key}");
    }
    if let Some(key) = quoted("missing field ").filter(|k| !obj.contains_key(*k)) {
        return format!("{base}.{key}");
    }
    if obj.get("type").is_some_and(Value::is_string) {
        for key in obj.keys().filter(|k| *k != "type") {
            let mut trial = spec.clone();
            if let Some(o) = value_at_mut(&mut trial, err.path()).and_then(Value::as_object_mut) {
                o.remove(key);
            }
            if retry(&trial).as_deref() != Some(message.as_str()) {
                return format!("{base}.{key}");
            }
        }
    }
    base
}

/// Keeps the first document of each (kind, scope, name) and rejects later ones. Scope, not
/// namespace: a rule from an Acteon rule file and a manifest in the shared namespace with
/// the same name would otherwise share metric labels and throttle keys.
fn without_duplicates(docs: &[Document], run: &mut Run<'_>) -> Vec<Document> {
    let mut seen: HashMap<(Kind, Option<String>, &str), &str> = HashMap::new();
    let mut unique = Vec::with_capacity(docs.len());
    for doc in docs {
        let key = (doc.id.kind, run.scope(&doc.id), doc.id.name.as_str());
        if let Some(first) = seen.get(&key) {
            run.rejections.push(CompileError {
                source: doc.source.clone(),
                object: Some(doc.id.clone()),
                field: Some("metadata.name".into()),
                reason: "Duplicate",
                message: format!("defined twice (first in {first})"),
            });
        } else {
            seen.insert(key, &doc.source);
            unique.push(doc.clone());
        }
    }
    unique
}

/// Accepted objects in a fixed order (namespace, then name), whatever order the
/// documents came in, so equal content gives an equal snapshot and digest (the operator
/// lists objects from its cache in no particular order).
fn entries<S>(items: Vec<Parsed<'_, S>>) -> Vec<Entry<S>> {
    let mut out: Vec<Entry<S>> = items
        .into_iter()
        .map(|p| Entry {
            namespace: p.scope,
            name: p.doc.id.name.clone(),
            generation: p.doc.generation,
            source: p.doc.source.clone(),
            spec: p.spec,
        })
        .collect();
    out.sort_by(|a, b| {
        (a.namespace.as_deref().unwrap_or(""), &a.name, &a.source).cmp(&(
            b.namespace.as_deref().unwrap_or(""),
            &b.name,
            &b.source,
        ))
    });
    out
}

pub(super) fn compile(docs: &[Document], options: &CompileOptions) -> super::Compiled {
    let mut run = Run {
        options,
        rejections: Vec::new(),
        accepted: Accepted::default(),
    };
    let unique = without_duplicates(docs, &mut run);

    let providers = run.parse(&unique, Kind::Provider);
    let providers = run.keep(Kind::Provider, providers, |p, _| provider::check(&p.spec));
    let providers = provider::check_fallbacks(&mut run, providers);

    let machines = run.parse(&unique, Kind::StateMachine);
    let machines = run.keep(Kind::StateMachine, machines, |m, acc| {
        state_machine::check(m, acc)
    });

    let chains = run.parse(&unique, Kind::Chain);
    let chains = run.keep(Kind::Chain, chains, |c, acc| chain::check(c, acc));
    let chains = chain::check_sub_chains(&mut run, chains);

    let quotas = run.parse(&unique, Kind::Quota);
    let quotas = run.keep(Kind::Quota, quotas, |q, acc| check_quota(q, acc));

    let rules = run.parse(&unique, Kind::Rule);
    let rules = run.keep(Kind::Rule, rules, |r, acc| rule::check(r, acc));
    let rules = rule::check_counters(&mut run, rules);

    let mut snapshot = Snapshot {
        version: 1,
        digest: String::new(),
        rules: {
            // Evaluation order: priority, then namespace, then name (the sort is stable).
            let mut rules = entries(rules);
            rules.sort_by_key(|r| r.spec.priority);
            rules
        },
        providers: entries(providers),
        chains: entries(chains),
        state_machines: entries(machines),
        quotas: entries(quotas),
        secrets: Default::default(),
        seal_key_id: None,
    };
    snapshot.seal();
    super::Compiled {
        snapshot,
        rejections: run.rejections,
    }
}

fn check_quota(q: &Parsed<'_, QuotaSpec>, accepted: &Accepted) -> Result<(), Problem> {
    let spec = &q.spec;
    if spec.tenant.is_empty() {
        return Err(Problem::new(
            "spec.tenant",
            "InvalidQuota",
            "must not be empty",
        ));
    }
    if spec.limit == 0 {
        return Err(Problem::new(
            "spec.limit",
            "InvalidQuota",
            "must be at least 1",
        ));
    }
    if parse_window_seconds(&spec.window).is_none() {
        return Err(Problem::new(
            "spec.window",
            "InvalidQuota",
            format!("`{}` is not a window (e.g. 30s, 15m, 1h, 1d)", spec.window),
        ));
    }
    match (&spec.overage, &spec.fallback_provider) {
        (Overage::Degrade, None) => Err(Problem::new(
            "spec.fallbackProvider",
            "InvalidQuota",
            "`overage: degrade` needs a fallbackProvider",
        )),
        (_, Some(p)) => accepted.need(
            Kind::Provider,
            &q.scope,
            p,
            "spec.fallbackProvider",
            "ProviderNotFound",
        ),
        _ => Ok(()),
    }
}
