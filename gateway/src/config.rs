//! The live configuration: a snapshot compiled into a rule set and providers, swapped
//! atomically so a dispatch sees the old configuration or the new one, never a mix.
//!
//! A gateway that follows the operator starts with an *empty* runtime (`loaded == false`):
//! it answers 503 until the first snapshot arrives. The flag lives in the runtime itself, so
//! the dispatch path still makes one atomic load.

use std::sync::Arc;
use std::time::Duration;

use acteon_api::Snapshot;
use acteon_api::crd::quota::parse_window_seconds;
use acteon_api::crd::{Overage, QuotaSpec};
use acteon_api::snapshot::Entry;
use acteon_channel::seal::SealKey;
use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::action::Action;
use crate::providers::{ProviderBuildError, ProviderRegistry, Secrets, qualified_name};
use crate::rules::RuleSet;
use crate::rules::chain::Chains;
use crate::rules::state_machine::Machines;

/// A compiled snapshot, ready to serve.
pub struct Runtime {
    /// The snapshot, with its sealed `secrets` removed (the providers hold what they need).
    pub snapshot: Arc<Snapshot>,
    pub rules: RuleSet,
    /// StateMachines, for `stateMachine` rules, the worker's timeouts and `/v1/events`.
    pub machines: Machines,
    /// Chains, for `chain` rules (a run keeps the definition it started with).
    pub chains: Chains,
    pub providers: ProviderRegistry,
    pub quotas: Vec<QuotaRule>,
    /// False only for the placeholder served before the first snapshot arrives.
    pub loaded: bool,
}

/// A snapshot that cannot be served. Never contains credential values.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Rule(#[from] crate::rules::BuildError),
    #[error(transparent)]
    Provider(#[from] ProviderBuildError),
}

impl std::fmt::Debug for Runtime {
    /// A summary: no provider internals, so no credential can be printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("loaded", &self.loaded)
            .field("version", &self.snapshot.version)
            .field("digest", &self.snapshot.digest)
            .field("rules", &self.rules.len())
            .field("providers", &self.providers.len())
            .field("quotas", &self.quotas.len())
            .finish()
    }
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

    /// The length of this quota's windows.
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_seconds)
    }

    /// The backend key of this quota's counter for actions of `namespace` (a shared quota
    /// counts each namespace apart).
    pub fn counter_key(&self, namespace: &str) -> String {
        crate::rules::scoped_key("q", namespace, &self.spec.tenant, &self.id)
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
    /// Compiles a snapshot. `seal` opens the sealed credentials that Providers reference
    /// (`snapshot.secrets`); a reference that is missing or does not open fails the build,
    /// naming the provider and the field. The sealed values are dropped from the snapshot
    /// kept in the runtime.
    pub fn build(
        mut snapshot: Snapshot,
        http: &reqwest::Client,
        seal: Option<&SealKey>,
    ) -> Result<Runtime, BuildError> {
        let sealed = std::mem::take(&mut snapshot.secrets);
        let secrets = Secrets {
            sealed: &sealed,
            key: seal,
        };
        let machines = Machines::build(&snapshot.state_machines);
        Ok(Runtime {
            rules: RuleSet::build_with(&snapshot.rules, &machines)?,
            providers: ProviderRegistry::build(&snapshot.providers, http, secrets)?,
            quotas: quota_rules(&snapshot.quotas),
            machines,
            chains: Chains::build(&snapshot.chains),
            snapshot: Arc::new(snapshot),
            loaded: true,
        })
    }

    /// The placeholder served until a first snapshot arrives: no rules, no providers,
    /// version 0, `loaded == false`.
    pub fn empty() -> Runtime {
        Runtime {
            snapshot: Arc::new(Snapshot::default()),
            rules: RuleSet::default(),
            providers: ProviderRegistry::default(),
            quotas: Vec::new(),
            machines: Machines::default(),
            chains: Chains::default(),
            loaded: false,
        }
    }
}

/// Refuses a configuration from files that references Secrets: only the operator resolves
/// them (and seals them into the snapshots it publishes).
pub fn reject_secret_refs(snapshot: &Snapshot) -> Result<(), String> {
    let problems: Vec<String> = snapshot
        .providers
        .iter()
        .flat_map(|e| {
            e.spec.secret_refs().into_iter().map(move |(field, r)| {
                format!(
                    "  provider {} ({}): {field} references Secret `{}` key `{}`",
                    qualified_name(e),
                    e.source,
                    r.name,
                    r.key
                )
            })
        })
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "Secrets are resolved by the operator: a gateway serving --config files cannot use \
         them (run the operator and start the gateway with --state <redis|postgres> and no \
         --config):\n{}",
        problems.join("\n")
    ))
}

/// Where the served configuration comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// Compiled from `--config` files at start.
    Files,
    /// Followed from the operator's config channel on this backend (`redis`, `postgres`…).
    Channel { backend: &'static str },
}

/// What the follower knows besides the served runtime: shown by `GET /v1/config` and
/// reported to the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigStatus {
    pub source: ConfigSource,
    /// This gateway's id in reports (channel mode).
    pub gateway_id: Option<String>,
    /// The newest version that failed to apply (newer than the served one), and why.
    pub failed_version: Option<u64>,
    /// That version's digest (a version number alone repeats when the backend loses its
    /// data and publications start again at 1).
    pub failed_digest: Option<String>,
    pub error: Option<String>,
}

/// The configuration currently served.
pub struct LiveConfig {
    current: ArcSwap<Runtime>,
    status: Mutex<ConfigStatus>,
}

impl LiveConfig {
    /// Serves `runtime`, compiled from files.
    pub fn new(runtime: Runtime) -> LiveConfig {
        LiveConfig {
            current: ArcSwap::from_pointee(runtime),
            status: Mutex::new(ConfigStatus {
                source: ConfigSource::Files,
                gateway_id: None,
                failed_version: None,
                failed_digest: None,
                error: None,
            }),
        }
    }

    /// Serves nothing yet (503) until a snapshot from `source` is swapped in.
    pub fn waiting(source: ConfigSource, gateway_id: Option<String>) -> LiveConfig {
        LiveConfig {
            current: ArcSwap::from_pointee(Runtime::empty()),
            status: Mutex::new(ConfigStatus {
                source,
                gateway_id,
                failed_version: None,
                failed_digest: None,
                error: None,
            }),
        }
    }

    /// The runtime for one dispatch (cheap; holds it for the dispatch's duration).
    pub fn load(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// Serves `runtime` from now on (the newest publication: any failure recorded before
    /// is cleared).
    pub fn swap(&self, runtime: Runtime) {
        self.current.store(Arc::new(runtime));
        let mut status = self.status.lock();
        status.failed_version = None;
        status.failed_digest = None;
        status.error = None;
    }

    /// Records that `version` (`digest`) could not be applied (the served runtime is
    /// unchanged).
    pub fn record_failure(&self, version: u64, digest: &str, error: String) {
        let mut status = self.status.lock();
        status.failed_version = Some(version);
        status.failed_digest = Some(digest.to_owned());
        status.error = Some(error);
    }

    pub fn status(&self) -> ConfigStatus {
        self.status.lock().clone()
    }
}
