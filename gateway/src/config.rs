//! The live configuration: a snapshot compiled into a rule set and providers, swapped
//! atomically so a dispatch sees the old configuration or the new one, never a mix.

use std::sync::Arc;

use acteon_api::Snapshot;
use acteon_api::crd::quota::parse_window_seconds;
use acteon_api::crd::{Overage, QuotaSpec};
use acteon_api::snapshot::Entry;
use arc_swap::ArcSwap;

use crate::action::Action;
use crate::providers::ProviderRegistry;
use crate::rules::{BuildError, RuleSet};

/// A compiled snapshot, ready to serve.
pub struct Runtime {
    pub snapshot: Arc<Snapshot>,
    pub rules: RuleSet,
    pub providers: ProviderRegistry,
    pub quotas: Vec<QuotaRule>,
}

/// A quota with its window resolved.
pub struct QuotaRule {
    pub id: String,
    pub namespace: Option<String>,
    pub spec: QuotaSpec,
    pub window_seconds: u64,
}

impl QuotaRule {
    /// Whether this quota counts `action` when delivered to `provider`.
    pub fn applies(&self, action: &Action, provider: &str) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| ns == action.namespace)
            && self.spec.tenant == action.tenant
            && self.spec.provider.as_deref().is_none_or(|p| p == provider)
            && self
                .spec
                .action_type
                .as_deref()
                .is_none_or(|t| t == action.action_type)
    }

    pub fn blocks(&self) -> bool {
        self.spec.overage == Overage::Block
    }
}

fn quota_rules(entries: &[Entry<QuotaSpec>]) -> Vec<QuotaRule> {
    entries
        .iter()
        .filter_map(|e| {
            Some(QuotaRule {
                id: match &e.namespace {
                    Some(ns) => format!("{ns}/{}", e.name),
                    None => e.name.clone(),
                },
                namespace: e.namespace.clone(),
                window_seconds: parse_window_seconds(&e.spec.window)?,
                spec: e.spec.clone(),
            })
        })
        .collect()
}

impl Runtime {
    pub fn build(snapshot: Snapshot, http: &reqwest::Client) -> Result<Runtime, BuildError> {
        Ok(Runtime {
            rules: RuleSet::build(&snapshot.rules)?,
            providers: ProviderRegistry::build(&snapshot.providers, http),
            quotas: quota_rules(&snapshot.quotas),
            snapshot: Arc::new(snapshot),
        })
    }
}

/// The configuration currently served.
pub struct LiveConfig {
    current: ArcSwap<Runtime>,
}

impl LiveConfig {
    pub fn new(runtime: Runtime) -> LiveConfig {
        LiveConfig {
            current: ArcSwap::from_pointee(runtime),
        }
    }

    /// The runtime for one dispatch (cheap; holds it for the dispatch's duration).
    pub fn load(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    pub fn swap(&self, runtime: Runtime) {
        self.current.store(Arc::new(runtime));
    }
}
