//! Watches of the five kinds feeding the [`Index`].

use std::sync::Arc;

use acteon_api::compile::Kind;
use acteon_api::crd::{Chain, Provider, Quota, Rule, StateMachine};
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_stream};

use super::index::{Index, Object, ObjectKey, WatchScope};

pub const KINDS: [Kind; 5] = [
    Kind::Provider,
    Kind::StateMachine,
    Kind::Chain,
    Kind::Quota,
    Kind::Rule,
];

/// API resource of a kind (group, version, plural).
pub fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Rule => ApiResource::erase::<Rule>(&()),
        Kind::Provider => ApiResource::erase::<Provider>(&()),
        Kind::Chain => ApiResource::erase::<Chain>(&()),
        Kind::StateMachine => ApiResource::erase::<StateMachine>(&()),
        Kind::Quota => ApiResource::erase::<Quota>(&()),
    }
}

/// The watch scopes for `namespaces` (all namespaces when empty).
pub fn scopes(namespaces: &[String]) -> Vec<WatchScope> {
    KINDS
        .iter()
        .flat_map(|&kind| {
            if namespaces.is_empty() {
                vec![WatchScope {
                    kind,
                    namespace: None,
                }]
            } else {
                namespaces
                    .iter()
                    .map(|ns| WatchScope {
                        kind,
                        namespace: Some(ns.clone()),
                    })
                    .collect()
            }
        })
        .collect()
}

/// Runs one watch per scope until the process ends (watches retry with backoff).
pub fn spawn(client: &kube::Client, index: &Arc<Index>, scopes: Vec<WatchScope>) {
    for scope in scopes {
        let ar = api_resource(scope.kind);
        let api: Api<DynamicObject> = match &scope.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        let index = index.clone();
        tokio::spawn(async move {
            let mut stream = watch_stream(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            let mut listing: Vec<Object> = Vec::new();
            while let Some(event) = stream.next().await {
                let convert = |o: DynamicObject| Object::from_dynamic(scope.kind, o);
                match event {
                    Ok(Event::Init) => listing.clear(),
                    Ok(Event::InitApply(o)) => listing.extend(convert(o)),
                    Ok(Event::InitDone) => index.replace(&scope, std::mem::take(&mut listing)),
                    Ok(Event::Apply(o)) => {
                        if let Some(o) = convert(o) {
                            index.apply(o);
                        }
                    }
                    Ok(Event::Delete(o)) => {
                        if let (Some(namespace), Some(name)) =
                            (o.metadata.namespace, o.metadata.name)
                        {
                            index.delete(&ObjectKey {
                                kind: scope.kind,
                                namespace,
                                name,
                            });
                        }
                    }
                    Err(e) => tracing::warn!(kind = %scope.kind, error = %e, "watch error"),
                }
            }
        });
    }
}
