//! Pure middle stage of a reconcile: objects (+ resolved Secret values) → snapshot and a
//! verdict per object. No I/O here, so it is tested without a cluster.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use acteon_api::Snapshot;
use acteon_api::compile::{self, CompileOptions, Document, Kind, ObjectId};
use acteon_api::crd::ProviderSpec;
use acteon_api::snapshot::secret_id;
use acteon_channel::seal::SealKey;

use super::index::{Object, ObjectKey};

/// Whether an object made it into the snapshot, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Rejected {
        reason: String,
        /// Names the field, never a credential value.
        message: String,
    },
}

/// Values of the Secrets that Providers reference: (namespace, name) → key → bytes.
/// A Secret that does not exist is absent; one that exists outside the operator's
/// `--secret-label-selector` is absent too, and said so (status names the selector).
#[derive(Clone, Debug, Default)]
pub struct SecretValues {
    data: HashMap<(String, String), BTreeMap<String, Vec<u8>>>,
    outside_selector: HashMap<(String, String), String>,
}

impl SecretValues {
    pub fn new() -> SecretValues {
        SecretValues::default()
    }

    pub fn insert(&mut self, secret: (String, String), data: BTreeMap<String, Vec<u8>>) {
        self.data.insert(secret, data);
    }

    pub fn get(&self, secret: &(String, String)) -> Option<&BTreeMap<String, Vec<u8>>> {
        self.data.get(secret)
    }

    /// Records that `secret` exists but does not match `selector`.
    pub fn insert_outside_selector(&mut self, secret: (String, String), selector: &str) {
        self.outside_selector.insert(secret, selector.to_owned());
    }
}

/// The result of one build.
pub struct Build {
    pub snapshot: Snapshot,
    pub verdicts: HashMap<ObjectKey, Verdict>,
}

/// Secrets (namespace, name) that the Providers among `objects` reference.
pub fn referenced_secrets(objects: &[Arc<Object>]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = objects
        .iter()
        .filter(|o| o.key.kind == Kind::Provider)
        .filter_map(|o| {
            let spec = o.spec.parse::<ProviderSpec>().ok()?;
            Some(
                spec.secret_refs()
                    .into_iter()
                    .map(|(_, r)| (o.key.namespace.clone(), r.name.clone()))
                    .collect::<Vec<_>>(),
            )
        })
        .flatten()
        .collect();
    out.sort();
    out.dedup();
    out
}

fn document(o: &Object) -> Document {
    Document {
        source: format!("{}/{}", o.key.namespace, o.key.name),
        id: ObjectId {
            kind: o.key.kind,
            namespace: Some(o.key.namespace.clone()),
            name: o.key.name.clone(),
        },
        generation: Some(o.generation),
        spec: o.spec.clone(),
    }
}

/// A Provider whose credentials cannot be resolved, with the reason.
fn secret_problem(
    o: &Object,
    secrets: &SecretValues,
    seal_key: Option<&SealKey>,
) -> Option<Verdict> {
    let spec = o.spec.parse::<ProviderSpec>().ok()?;
    for (field, r) in spec.secret_refs() {
        let reject = |reason: &str, message: String| {
            Some(Verdict::Rejected {
                reason: reason.to_owned(),
                message: format!("{field}: {message}"),
            })
        };
        let name = (o.key.namespace.clone(), r.name.clone());
        if let Some(selector) = secrets.outside_selector.get(&name) {
            return reject(
                "SecretNotSelected",
                format!(
                    "Secret `{}/{}` does not match the operator's Secret selector `{selector}`: label it so",
                    o.key.namespace, r.name
                ),
            );
        }
        let Some(data) = secrets.get(&name) else {
            return reject(
                "SecretNotFound",
                format!("Secret `{}/{}` not found", o.key.namespace, r.name),
            );
        };
        if !data.contains_key(&r.key) {
            return reject(
                "SecretKeyNotFound",
                format!(
                    "Secret `{}/{}` has no key `{}`",
                    o.key.namespace, r.name, r.key
                ),
            );
        }
        if seal_key.is_none() {
            return reject(
                "NoSealKey",
                "the operator has no seal key (--seal-key-file / ACTEON_SEAL_KEY), so it cannot hand credentials to gateways".into(),
            );
        }
    }
    None
}

/// Validates and compiles every object; Providers whose Secrets are missing are rejected
/// before compiling, so the Rules that use them are rejected too.
pub fn build(
    objects: &[Arc<Object>],
    secrets: &SecretValues,
    seal_key: Option<&SealKey>,
    options: &CompileOptions,
) -> Build {
    let mut verdicts: HashMap<ObjectKey, Verdict> = HashMap::new();
    let mut docs = Vec::with_capacity(objects.len());
    for o in objects {
        if o.key.kind == Kind::Provider
            && let Some(v) = secret_problem(o, secrets, seal_key)
        {
            verdicts.insert(o.key.clone(), v);
            continue;
        }
        docs.push(document(o));
    }
    let compiled = compile::compile(&docs, options);
    for e in compiled.rejections {
        let Some(id) = e.object else { continue };
        let key = ObjectKey {
            kind: id.kind,
            namespace: id.namespace.unwrap_or_default(),
            name: id.name,
        };
        let message = match &e.field {
            Some(f) => format!("{f}: {}", e.message),
            None => e.message,
        };
        verdicts.insert(
            key,
            Verdict::Rejected {
                reason: e.reason.to_owned(),
                message,
            },
        );
    }
    for o in objects {
        verdicts.entry(o.key.clone()).or_insert(Verdict::Accepted);
    }
    let mut snapshot = compiled.snapshot;
    if let Some(key) = seal_key {
        seal_secrets(&mut snapshot, secrets, key, options);
        snapshot.seal_key_id = Some(key.fingerprint());
    }
    snapshot.seal();
    Build { snapshot, verdicts }
}

/// Puts the sealed value of every accepted Provider's `secretKeyRef` into the snapshot.
fn seal_secrets(
    snapshot: &mut Snapshot,
    secrets: &SecretValues,
    key: &SealKey,
    options: &CompileOptions,
) {
    let mut sealed = BTreeMap::new();
    for entry in &snapshot.providers {
        let namespace = entry
            .namespace
            .clone()
            .unwrap_or_else(|| options.shared_namespace.clone());
        for (_, r) in entry.spec.secret_refs() {
            let Some(value) = secrets
                .get(&(namespace.clone(), r.name.clone()))
                .and_then(|d| d.get(&r.key))
            else {
                continue; // rejected above; unreachable for accepted providers
            };
            let id = secret_id(entry.namespace.as_deref(), r);
            let text = key.seal(&id, value);
            sealed.insert(id, text);
        }
    }
    snapshot.secrets = sealed;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn obj(kind: Kind, ns: &str, name: &str, generation: i64, spec: Value) -> Arc<Object> {
        Arc::new(Object {
            key: ObjectKey {
                kind,
                namespace: ns.into(),
                name: name.into(),
            },
            uid: format!("uid-{name}"),
            generation,
            spec: spec.into(),
            status: Default::default(),
        })
    }

    fn key(kind: Kind, ns: &str, name: &str) -> ObjectKey {
        ObjectKey {
            kind,
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn webhook_with_secret(secret: &str) -> Value {
        json!({"type": "webhook", "webhook": {
            "url": "http://127.0.0.1:1/x",
            "secretHeaders": {"Authorization": {"name": secret, "key": "token"}}}})
    }

    fn secrets(ns: &str, name: &str, k: &str, v: &str) -> SecretValues {
        let mut s = SecretValues::new();
        s.insert(
            (ns.into(), name.into()),
            BTreeMap::from([(k.to_owned(), v.as_bytes().to_vec())]),
        );
        s
    }

    #[test]
    fn a_bad_rule_is_rejected_and_the_rest_compiles() {
        let objects = vec![
            obj(Kind::Provider, "t", "log", 1, json!({"type": "log"})),
            obj(
                Kind::Rule,
                "t",
                "good",
                3,
                json!({"condition": {"field": "action.tenant", "eq": "a"}, "action": {"type": "suppress"}}),
            ),
            obj(
                Kind::Rule,
                "t",
                "bad-regex",
                1,
                json!({"condition": {"field": "action.tenant", "matches": "("}, "action": {"type": "suppress"}}),
            ),
            obj(
                Kind::Rule,
                "t",
                "bad-provider",
                1,
                json!({"cel": "true", "action": {"type": "reroute", "targetProvider": "nope"}}),
            ),
        ];
        let b = build(
            &objects,
            &SecretValues::new(),
            None,
            &CompileOptions::default(),
        );
        assert_eq!(b.verdicts[&key(Kind::Rule, "t", "good")], Verdict::Accepted);
        let Verdict::Rejected { reason, message } = &b.verdicts[&key(Kind::Rule, "t", "bad-regex")]
        else {
            panic!("bad regex accepted")
        };
        assert!(message.contains("spec.condition"), "{reason}: {message}");
        let Verdict::Rejected { reason, message } =
            &b.verdicts[&key(Kind::Rule, "t", "bad-provider")]
        else {
            panic!("unknown provider accepted")
        };
        assert_eq!(reason, "ProviderNotFound", "{message}");
        assert!(message.contains("nope"));
        let names: Vec<&str> = b.snapshot.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["good"]);
        assert_eq!(b.snapshot.rules[0].generation, Some(3));
    }

    /// StateMachines are validated like every other kind: a broken one is rejected alone
    /// (and so are the Rules that drive it), a valid one in the same namespace goes into the
    /// snapshot; fixing the broken one (a new build over the same objects) brings its
    /// Rule back, since every build re-resolves every reference.
    #[test]
    fn a_broken_state_machine_is_rejected_alone_and_takes_its_rules_with_it() {
        let machine = |to: &str| {
            json!({"states": ["open", "closed"], "initialState": "open", "terminalStates": ["closed"],
                "notifyProvider": "log", "transitions": [{"from": "open", "to": to, "notify": true}],
                "timeouts": [{"state": "open", "afterSeconds": 60, "transitionTo": "closed"}]})
        };
        let drive = |m: &str| {
            json!({"condition": {"field": "action.action_type", "eq": "incident"},
                "action": {"type": "stateMachine", "stateMachine": m, "fingerprintFields": ["metadata.service"]}})
        };
        let objects = |broken_to: &str| {
            vec![
                obj(Kind::Provider, "t", "log", 1, json!({"type": "log"})),
                obj(Kind::StateMachine, "t", "good", 1, machine("closed")),
                obj(Kind::StateMachine, "t", "broken", 2, machine(broken_to)),
                obj(Kind::Rule, "t", "drives-good", 1, drive("good")),
                obj(Kind::Rule, "t", "drives-broken", 1, drive("broken")),
            ]
        };
        let b = build(
            &objects("reopened"),
            &SecretValues::new(),
            None,
            &CompileOptions::default(),
        );
        assert_eq!(
            b.verdicts[&key(Kind::StateMachine, "t", "good")],
            Verdict::Accepted
        );
        assert_eq!(
            b.verdicts[&key(Kind::StateMachine, "t", "broken")],
            Verdict::Rejected {
                reason: "InvalidStateMachine".into(),
                message: "spec.transitions[0].to: `reopened` is not one of spec.states".into(),
            }
        );
        assert_eq!(
            b.verdicts[&key(Kind::Rule, "t", "drives-broken")],
            Verdict::Rejected {
                reason: "StateMachineNotFound".into(),
                message:
                    "spec.action.stateMachine: state machine `broken` is rejected (see its own status)"
                        .into(),
            }
        );
        assert_eq!(
            b.verdicts[&key(Kind::Rule, "t", "drives-good")],
            Verdict::Accepted
        );
        let machines: Vec<&str> = b
            .snapshot
            .state_machines
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(machines, ["good"]);
        assert_eq!(b.snapshot.state_machines[0].generation, Some(1));
        let fixed = build(
            &objects("closed"),
            &SecretValues::new(),
            None,
            &CompileOptions::default(),
        );
        assert!(
            fixed.verdicts.values().all(|v| *v == Verdict::Accepted),
            "{:?}",
            fixed.verdicts
        );
        assert_eq!(fixed.snapshot.state_machines.len(), 2);
        assert_eq!(fixed.snapshot.rules.len(), 2);
        assert_ne!(b.snapshot.digest, fixed.snapshot.digest);
    }

    #[test]
    fn the_digest_does_not_depend_on_object_order_or_build_count() {
        let a = obj(Kind::Provider, "t", "a", 1, json!({"type": "log"}));
        let b = obj(Kind::Provider, "t", "b", 1, json!({"type": "noop"}));
        let one = build(
            &[a.clone(), b.clone()],
            &SecretValues::new(),
            None,
            &CompileOptions::default(),
        );
        let two = build(
            &[b, a],
            &SecretValues::new(),
            None,
            &CompileOptions::default(),
        );
        assert_eq!(one.snapshot.digest, two.snapshot.digest);
    }

    #[test]
    fn missing_secrets_reject_the_provider_and_the_rules_that_use_it() {
        let seal = SealKey::generate();
        let objects = vec![
            obj(Kind::Provider, "t", "hook", 1, webhook_with_secret("creds")),
            obj(
                Kind::Rule,
                "t",
                "to-hook",
                1,
                json!({"cel": "true", "action": {"type": "reroute", "targetProvider": "hook"}}),
            ),
        ];
        let none = build(
            &objects,
            &SecretValues::new(),
            Some(&seal),
            &CompileOptions::default(),
        );
        assert!(matches!(
            &none.verdicts[&key(Kind::Provider, "t", "hook")],
            Verdict::Rejected { reason, .. } if reason == "SecretNotFound"
        ));
        assert!(matches!(
            &none.verdicts[&key(Kind::Rule, "t", "to-hook")],
            Verdict::Rejected { reason, .. } if reason == "ProviderNotFound"
        ));
        let wrong_key = build(
            &objects,
            &secrets("t", "creds", "other", "x"),
            Some(&seal),
            &CompileOptions::default(),
        );
        assert!(matches!(
            &wrong_key.verdicts[&key(Kind::Provider, "t", "hook")],
            Verdict::Rejected { reason, message } if reason == "SecretKeyNotFound" && message.contains("spec.webhook.secretHeaders.Authorization")
        ));
        let no_seal = build(
            &objects,
            &secrets("t", "creds", "token", "s3cr3t"),
            None,
            &CompileOptions::default(),
        );
        assert!(matches!(
            &no_seal.verdicts[&key(Kind::Provider, "t", "hook")],
            Verdict::Rejected { reason, .. } if reason == "NoSealKey"
        ));
    }

    #[test]
    fn resolved_secrets_are_sealed_never_plain_and_the_digest_is_stable() {
        let seal = SealKey::generate();
        let objects = vec![obj(
            Kind::Provider,
            "t",
            "hook",
            1,
            webhook_with_secret("creds"),
        )];
        let values = secrets("t", "creds", "token", "s3cr3t-value");
        let one = build(&objects, &values, Some(&seal), &CompileOptions::default());
        assert_eq!(
            one.verdicts[&key(Kind::Provider, "t", "hook")],
            Verdict::Accepted
        );
        let body = serde_json::to_string(&one.snapshot).unwrap();
        assert!(!body.contains("s3cr3t-value"), "plaintext in the snapshot");
        let sealed = &one.snapshot.secrets["t/creds/token"];
        assert_eq!(seal.open("t/creds/token", sealed).unwrap(), b"s3cr3t-value");
        let two = build(&objects, &values, Some(&seal), &CompileOptions::default());
        assert_eq!(
            one.snapshot.digest, two.snapshot.digest,
            "restarts must not republish"
        );
        let changed = build(
            &objects,
            &secrets("t", "creds", "token", "rotated"),
            Some(&seal),
            &CompileOptions::default(),
        );
        assert_ne!(
            one.snapshot.digest, changed.snapshot.digest,
            "a rotated secret is a new snapshot"
        );
    }

    /// A new seal key is a new publication even without any credential to seal: gateways
    /// that hold only the new key need a body it signed.
    #[test]
    fn a_new_seal_key_changes_the_digest() {
        let objects = vec![obj(Kind::Provider, "t", "p", 1, json!({"type": "noop"}))];
        let none = SecretValues::new();
        let options = CompileOptions::default();
        let old = build(&objects, &none, Some(&SealKey::generate()), &options);
        let new = build(&objects, &none, Some(&SealKey::generate()), &options);
        assert!(old.snapshot.secrets.is_empty());
        assert_ne!(old.snapshot.digest, new.snapshot.digest);
        assert!(old.snapshot.seal_key_id.is_some());
    }

    #[test]
    fn referenced_secrets_are_listed_once() {
        let objects = vec![
            obj(Kind::Provider, "t", "a", 1, webhook_with_secret("creds")),
            obj(Kind::Provider, "t", "b", 1, webhook_with_secret("creds")),
            obj(Kind::Provider, "u", "c", 1, webhook_with_secret("other")),
        ];
        assert_eq!(
            referenced_secrets(&objects),
            [
                ("t".to_owned(), "creds".to_owned()),
                ("u".to_owned(), "other".to_owned())
            ]
        );
    }
}
