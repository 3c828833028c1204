//! The index: every watched Acteon object, as the watches last saw it.
//!
//! Watches feed it; the reconcile loop reads a consistent copy. Spec changes (and
//! additions, deletions) raise `config_changed`; status-only changes — mostly our own
//! writes coming back — only raise `status_changed`, so they never cause a recompile.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use acteon_api::compile::{Kind, Spec};
use acteon_api::crd::ResourceStatus;
use kube::api::DynamicObject;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;

/// Identity of one object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// What the operator keeps of a watched object (no managed fields, no annotations).
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub key: ObjectKey,
    pub uid: String,
    pub generation: i64,
    /// Shared with the documents of every compile pass (no copy per pass).
    pub spec: Spec,
    /// The status as last written (by us); default when absent or unreadable.
    pub status: ResourceStatus,
}

impl Object {
    /// Converts a watched object; `None` when it lacks a name or namespace.
    pub fn from_dynamic(kind: Kind, obj: DynamicObject) -> Option<Object> {
        let DynamicObject { metadata, data, .. } = obj;
        let mut data = data;
        let status = data
            .get_mut("status")
            .map(Value::take)
            .and_then(|s| serde_json::from_value(s).ok())
            .unwrap_or_default();
        Some(Object {
            key: ObjectKey {
                kind,
                namespace: metadata.namespace?,
                name: metadata.name?,
            },
            uid: metadata.uid.unwrap_or_default(),
            generation: metadata.generation.unwrap_or(0),
            spec: Spec::from_value(data.get("spec").unwrap_or(&Value::Null)),
            status,
        })
    }

    fn same_config(&self, other: &Object) -> bool {
        self.uid == other.uid && self.generation == other.generation && self.spec == other.spec
    }
}

/// Which objects one watch covers: a kind, in one namespace or all.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WatchScope {
    pub kind: Kind,
    pub namespace: Option<String>,
}

impl WatchScope {
    fn covers(&self, key: &ObjectKey) -> bool {
        key.kind == self.kind
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| *ns == key.namespace)
    }
}

/// All watched objects, plus which watches have completed their first listing.
pub struct Index {
    objects: Mutex<BTreeMap<ObjectKey, Arc<Object>>>,
    synced: Mutex<HashSet<WatchScope>>,
    expected_scopes: usize,
    config_changed: watch::Sender<u64>,
    status_changed: watch::Sender<u64>,
}

impl Index {
    pub fn new(expected_scopes: usize) -> Index {
        Index {
            objects: Mutex::new(BTreeMap::new()),
            synced: Mutex::new(HashSet::new()),
            expected_scopes,
            config_changed: watch::channel(0).0,
            status_changed: watch::channel(0).0,
        }
    }

    pub fn config_changes(&self) -> watch::Receiver<u64> {
        self.config_changed.subscribe()
    }

    pub fn status_changes(&self) -> watch::Receiver<u64> {
        self.status_changed.subscribe()
    }

    /// Whether every watch has listed its objects once (before that, a snapshot would
    /// be missing objects and gateways would lose rules).
    pub fn is_synced(&self) -> bool {
        self.synced.lock().len() >= self.expected_scopes
    }

    /// Every object, in key order.
    pub fn objects(&self) -> Vec<Arc<Object>> {
        self.objects.lock().values().cloned().collect()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.objects.lock().len()
    }

    /// An object was added or modified.
    pub fn apply(&self, obj: Object) {
        let config = {
            let mut objects = self.objects.lock();
            let config = objects
                .get(&obj.key)
                .is_none_or(|old| !old.same_config(&obj));
            objects.insert(obj.key.clone(), Arc::new(obj));
            config
        };
        self.notify(config);
    }

    pub fn delete(&self, key: &ObjectKey) {
        let removed = self.objects.lock().remove(key).is_some();
        if removed {
            self.notify(true);
        }
    }

    /// A watch (re)listed its scope: its objects are exactly `listed`.
    pub fn replace(&self, scope: &WatchScope, listed: Vec<Object>) {
        let config = {
            let mut objects = self.objects.lock();
            let before: Vec<ObjectKey> = objects
                .keys()
                .filter(|k| scope.covers(k))
                .cloned()
                .collect();
            let mut config = false;
            let listed_keys: HashSet<ObjectKey> = listed.iter().map(|o| o.key.clone()).collect();
            for key in before.iter().filter(|k| !listed_keys.contains(*k)) {
                objects.remove(key);
                config = true;
            }
            for obj in listed {
                config |= objects
                    .get(&obj.key)
                    .is_none_or(|old| !old.same_config(&obj));
                objects.insert(obj.key.clone(), Arc::new(obj));
            }
            config
        };
        let first = self.synced.lock().insert(scope.clone());
        self.notify(config || first);
    }

    /// Something outside the objects changed (a referenced Secret): rebuild.
    pub fn touch_config(&self) {
        self.notify(true);
    }

    fn notify(&self, config: bool) {
        if config {
            self.config_changed.send_modify(|n| *n += 1);
        } else {
            self.status_changed.send_modify(|n| *n += 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(name: &str, generation: i64, spec: Value) -> Object {
        Object {
            key: ObjectKey {
                kind: Kind::Rule,
                namespace: "ns".into(),
                name: name.into(),
            },
            uid: format!("uid-{name}"),
            generation,
            spec: spec.into(),
            status: ResourceStatus::default(),
        }
    }

    #[test]
    fn status_only_changes_do_not_raise_config_changes() {
        let index = Index::new(1);
        let mut config = index.config_changes();
        let mut status = index.status_changes();
        index.apply(obj("a", 1, json!({"priority": 1})));
        assert!(config.has_changed().unwrap());
        config.mark_unchanged();
        let mut same = obj("a", 1, json!({"priority": 1}));
        same.status.observed_generation = Some(1);
        index.apply(same);
        assert!(!config.has_changed().unwrap());
        assert!(status.has_changed().unwrap());
        status.mark_unchanged();
        index.apply(obj("a", 2, json!({"priority": 2})));
        assert!(config.has_changed().unwrap());
    }

    #[test]
    fn relisting_removes_objects_that_are_gone_and_marks_the_scope_synced() {
        let index = Index::new(2);
        let rules = WatchScope {
            kind: Kind::Rule,
            namespace: None,
        };
        index.replace(&rules, vec![obj("a", 1, json!({})), obj("b", 1, json!({}))]);
        assert_eq!(index.len(), 2);
        assert!(!index.is_synced(), "one of two watches listed");
        let mut config = index.config_changes();
        config.mark_unchanged();
        index.replace(&rules, vec![obj("b", 1, json!({}))]);
        assert_eq!(index.len(), 1);
        assert!(
            config.has_changed().unwrap(),
            "a deletion is a config change"
        );
        index.replace(
            &WatchScope {
                kind: Kind::Provider,
                namespace: None,
            },
            vec![],
        );
        assert!(index.is_synced());
        assert_eq!(index.len(), 1, "another kind's listing leaves rules alone");
    }
}
