//! Secret values for Provider `secretKeyRef`s.
//!
//! Secrets are watched by metadata only (a cluster's Secrets — Helm release records
//! included — can be large, and most are none of our business); a referenced Secret's
//! data is read with a GET and cached by resourceVersion. A change to a Secret that a
//! Provider references raises a config change, so rotated credentials reach gateways.
//!
//! With `--secret-label-selector` the watch covers only the Secrets it selects, and a
//! referenced Secret is read only if it matches (the API server applies the selector); one
//! outside it is reported as such in the Provider's status (`SecretNotSelected`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_stream};
use parking_lot::Mutex;

use super::build::SecretValues;
use super::index::Index;

type Name = (String, String);

#[derive(Default)]
struct Cache {
    /// resourceVersion of every Secret in the watched namespaces.
    versions: HashMap<Name, String>,
    /// Data of referenced Secrets, with the resourceVersion it was read at.
    data: HashMap<Name, (String, BTreeMap<String, Vec<u8>>)>,
    referenced: HashSet<Name>,
}

pub struct Secrets {
    client: kube::Client,
    /// Label selector narrowing what is watched and read.
    selector: Option<String>,
    cache: Mutex<Cache>,
    index: Arc<Index>,
}

impl Secrets {
    pub fn new(client: kube::Client, index: Arc<Index>, selector: Option<String>) -> Arc<Secrets> {
        Arc::new(Secrets {
            client,
            selector: selector.filter(|s| !s.trim().is_empty()),
            cache: Mutex::new(Cache::default()),
            index,
        })
    }

    /// Watches Secret metadata in `namespaces` (all when empty) until the process ends.
    pub fn spawn_watches(self: &Arc<Self>, namespaces: &[String]) {
        let apis: Vec<Api<PartialObjectMeta<Secret>>> = if namespaces.is_empty() {
            vec![Api::all(self.client.clone())]
        } else {
            namespaces
                .iter()
                .map(|ns| Api::namespaced(self.client.clone(), ns))
                .collect()
        };
        for api in apis {
            let me = self.clone();
            let mut config = watcher::Config::default();
            if let Some(selector) = &self.selector {
                config = config.labels(selector);
            }
            tokio::spawn(async move {
                let mut stream = watch_stream(api, config).default_backoff().boxed();
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(Event::Apply(m) | Event::InitApply(m)) => me.seen(
                            m.metadata.namespace.unwrap_or_default(),
                            m.metadata.name.unwrap_or_default(),
                            m.metadata.resource_version,
                        ),
                        Ok(Event::Delete(m)) => me.seen(
                            m.metadata.namespace.unwrap_or_default(),
                            m.metadata.name.unwrap_or_default(),
                            None,
                        ),
                        Ok(Event::Init | Event::InitDone) => {}
                        Err(e) => tracing::warn!(error = %e, "secret watch error"),
                    }
                }
            });
        }
    }

    fn seen(&self, namespace: String, name: String, version: Option<String>) {
        let key = (namespace, name);
        let mut cache = self.cache.lock();
        let before = cache.versions.get(&key).cloned();
        match &version {
            Some(v) => cache.versions.insert(key.clone(), v.clone()),
            None => cache.versions.remove(&key),
        };
        // A referenced Secret whose data we hold at another version (or not at all).
        let stale = cache.referenced.contains(&key)
            && cache.data.get(&key).map(|(read_at, _)| read_at) != version.as_ref();
        drop(cache);
        if stale && before != version {
            tracing::info!(secret = %format!("{}/{}", key.0, key.1), "referenced Secret changed");
            self.index.touch_config();
        }
    }

    /// Values of the `wanted` Secrets; absent ones are left out. Reads only what changed.
    pub async fn resolve(&self, wanted: &[Name]) -> Result<SecretValues, kube::Error> {
        let mut out = SecretValues::new();
        let mut to_read = Vec::new();
        {
            let mut cache = self.cache.lock();
            cache.referenced = wanted.iter().cloned().collect();
            for key in wanted {
                match (cache.versions.get(key), cache.data.get(key)) {
                    (Some(v), Some((read_at, data))) if v == read_at => {
                        out.insert(key.clone(), data.clone());
                    }
                    _ => to_read.push(key.clone()),
                }
            }
        }
        for key in to_read {
            let Some(secret) = self.read(&key, &mut out).await? else {
                self.cache.lock().data.remove(&key);
                continue;
            };
            let data: BTreeMap<String, Vec<u8>> = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            let version = secret.metadata.resource_version.unwrap_or_default();
            self.cache
                .lock()
                .data
                .insert(key.clone(), (version, data.clone()));
            out.insert(key, data);
        }
        Ok(out)
    }

    /// Secret `key` if it exists and matches the selector; one that exists outside the
    /// selector is recorded in `out` as such.
    async fn read(
        &self,
        key: &Name,
        out: &mut SecretValues,
    ) -> Result<Option<Secret>, kube::Error> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &key.0);
        let Some(selector) = &self.selector else {
            return api.get_opt(&key.1).await;
        };
        let params = ListParams::default()
            .labels(selector)
            .fields(&format!("metadata.name={}", key.1));
        if let Some(secret) = api.list(&params).await?.items.into_iter().next() {
            return Ok(Some(secret));
        }
        if api.get_metadata_opt(&key.1).await?.is_some() {
            out.insert_outside_selector(key.clone(), selector);
        }
        Ok(None)
    }
}
