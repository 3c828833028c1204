//! Providers deliver actions. The registry maps (namespace, name) to a built provider;
//! a Provider in namespace N serves actions of N, shared ones serve everyone.

pub mod log;
pub mod webhook;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use acteon_api::crd::{ProviderSpec, ProviderType};
use acteon_api::snapshot::Entry;
use async_trait::async_trait;

use crate::action::Action;
use crate::outcome::ProviderResponse;

/// A failed delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderError {
    pub code: String,
    pub message: String,
    pub retryable: bool,
    pub attempts: u32,
}

impl ProviderError {
    pub fn new(
        code: &str,
        message: impl Into<String>,
        retryable: bool,
        attempts: u32,
    ) -> ProviderError {
        ProviderError {
            code: code.to_owned(),
            message: message.into(),
            retryable,
            attempts,
        }
    }
}

/// Something that delivers an action.
#[async_trait]
pub trait Provider: Send + Sync {
    async fn execute(&self, action: &Action) -> Result<ProviderResponse, ProviderError>;
}

/// A provider and what it is called.
pub struct ProviderHandle {
    pub name: String,
    pub kind: ProviderType,
    pub provider: Arc<dyn Provider>,
}

/// Accepts everything and does nothing (benchmarks and tests).
pub struct Noop;

#[async_trait]
impl Provider for Noop {
    async fn execute(&self, _: &Action) -> Result<ProviderResponse, ProviderError> {
        Ok(ProviderResponse::success(serde_json::Value::Object(
            Default::default(),
        )))
    }
}

/// A provider type whose client is not built yet: every delivery fails clearly.
struct NotImplemented(ProviderType);

#[async_trait]
impl Provider for NotImplemented {
    async fn execute(&self, _: &Action) -> Result<ProviderResponse, ProviderError> {
        Err(ProviderError::new(
            "NOT_IMPLEMENTED",
            format!("provider type `{}` is not implemented yet", self.0.as_str()),
            false,
            0,
        ))
    }
}

/// Providers of one snapshot.
#[derive(Default)]
pub struct ProviderRegistry {
    shared: HashMap<String, ProviderHandle>,
    by_namespace: HashMap<String, HashMap<String, ProviderHandle>>,
}

/// Retry settings resolved from a Provider spec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retry {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Retry {
    pub fn from_spec(spec: &ProviderSpec) -> Retry {
        let r = spec.retry.as_ref();
        Retry {
            max_attempts: r.and_then(|r| r.max_attempts).unwrap_or(3).max(1),
            initial_backoff: Duration::from_millis(
                r.and_then(|r| r.initial_backoff_ms).unwrap_or(100),
            ),
            max_backoff: Duration::from_millis(r.and_then(|r| r.max_backoff_ms).unwrap_or(2000)),
        }
    }
}

fn build(spec: &ProviderSpec, http: &reqwest::Client) -> Arc<dyn Provider> {
    match spec.provider_type {
        ProviderType::Noop => Arc::new(Noop),
        ProviderType::Log => Arc::new(log::LogProvider::new(spec)),
        ProviderType::Webhook => match &spec.webhook {
            Some(w) => Arc::new(webhook::WebhookProvider::new(w, spec, http.clone())),
            None => Arc::new(NotImplemented(spec.provider_type)),
        },
        other => Arc::new(NotImplemented(other)),
    }
}

impl ProviderRegistry {
    /// Builds every provider of a snapshot; `http` is shared so connections are pooled
    /// across configuration reloads.
    pub fn build(entries: &[Entry<ProviderSpec>], http: &reqwest::Client) -> ProviderRegistry {
        let mut reg = ProviderRegistry::default();
        for e in entries {
            let handle = ProviderHandle {
                name: e.name.clone(),
                kind: e.spec.provider_type,
                provider: build(&e.spec, http),
            };
            match &e.namespace {
                Some(ns) => {
                    reg.by_namespace
                        .entry(ns.clone())
                        .or_default()
                        .insert(e.name.clone(), handle);
                }
                None => {
                    reg.shared.insert(e.name.clone(), handle);
                }
            }
        }
        reg
    }

    /// The provider `name` as seen from `namespace` (own namespace first, then shared).
    pub fn get(&self, namespace: &str, name: &str) -> Option<&ProviderHandle> {
        self.by_namespace
            .get(namespace)
            .and_then(|m| m.get(name))
            .or_else(|| self.shared.get(name))
    }

    /// Whether `namespace` has providers of its own.
    pub fn has_namespace(&self, namespace: &str) -> bool {
        self.by_namespace.contains_key(namespace)
    }
}
