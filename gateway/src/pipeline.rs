//! The dispatch pipeline: rules → gates (one atomic backend call) → provider → outcome.

use std::sync::Arc;
use std::time::{Duration, Instant};

use acteon_api::crd::Overage;
use chrono::Utc;
use smallvec::SmallVec;

use crate::action::Action;
use crate::config::{LiveConfig, QuotaRule, Runtime};

/// The result of checking a dispatch's gates.
enum GateCheck {
    Passed,
    Stopped(ActionOutcome),
    /// Quota gate number `index` (among the quota gates) stopped it.
    Quota {
        index: usize,
        used: u64,
        resets_in: Duration,
    },
}
use crate::metrics::Metrics;
use crate::outcome::{ActionOutcome, RuleEvalError};
use crate::providers::ProviderHandle;
use crate::rules::{Decision, Evaluation, scoped_key};
use crate::state::confirm::DedupConfirmer;
use crate::state::{DedupConfirm, Gate, GateMode, GateResult, GateStop, StateError, StateStore};

/// Settings of the pipeline.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Bound on every state backend call; past it the dispatch answers 503.
    pub state_timeout: Duration,
    /// When no terminal rule matches: execute (default) or deny.
    pub default_deny: bool,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            state_timeout: Duration::from_secs(2),
            default_deny: false,
        }
    }
}

/// Shortest in-flight lease of a dedup mark (see [`GateMode::Apply`]).
pub const DEDUP_LEASE_FLOOR: Duration = Duration::from_secs(5);
/// Added to a provider's worst-case delivery time for the in-flight lease: covers the
/// confirmation's trip through the batcher and clock differences.
pub const DEDUP_LEASE_MARGIN: Duration = Duration::from_secs(3);

/// Message of `/readyz` and dispatches before the first snapshot.
pub const NOT_LOADED: &str = "no configuration snapshot received yet";

/// Why a dispatch got no outcome.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// Following the operator and no snapshot has arrived yet.
    #[error("{}", NOT_LOADED)]
    NotLoaded,
    #[error(transparent)]
    State(#[from] StateError),
}

/// The gateway: live configuration, shared state, metrics.
pub struct Gateway {
    pub config: LiveConfig,
    pub state: Arc<dyn StateStore>,
    pub metrics: Arc<Metrics>,
    pub options: GatewayOptions,
    /// Extends the dedup marks of successful deliveries, batched in the background.
    pub confirmer: DedupConfirmer,
}

/// Where an action will be delivered, once the verdict is known.
struct Delivery<'r> {
    provider: String,
    rerouted: bool,
    quotas: SmallVec<[&'r QuotaRule; 1]>,
    /// In-flight lease of the dedup marks set for this delivery.
    lease: Duration,
}

impl Gateway {
    /// Dispatches one action. Errors are for the caller to map (4xx / 503); every other
    /// result, failures of delivery included, is an outcome.
    // User strings are logged with `?` (Debug): it escapes control characters, so no request
    // can forge a log line.
    #[tracing::instrument(level = "debug", skip_all, fields(ns = ?action.namespace, tenant = ?action.tenant, provider = ?action.provider))]
    pub async fn dispatch(
        &self,
        mut action: Action,
        dry_run: bool,
    ) -> Result<ActionOutcome, DispatchError> {
        let started = Instant::now();
        action.complete();
        let rt = self.config.load();
        if !rt.loaded {
            return Err(DispatchError::NotLoaded);
        }
        if rt
            .providers
            .get(&action.namespace, &action.provider)
            .is_none()
        {
            self.metrics
                .bad_requests
                .with_label_values(&["unknown_provider"])
                .inc();
            // An outcome, as in Acteon: the action is well-formed, only its target is unknown.
            return Ok(ActionOutcome::failed(
                "PROVIDER_NOT_FOUND",
                format!(
                    "unknown provider {:?} for namespace {:?}",
                    action.provider, action.namespace
                ),
                false,
                0,
            ));
        }
        let mut eval = rt.rules.evaluate(&action, Utc::now());
        self.record_rules(&rt, &eval);
        if let Some(p) = eval.payload.take() {
            action.payload = p;
        }
        let outcome = if dry_run {
            self.dry_run(&rt, &action, &eval)
        } else {
            self.run(&rt, &action, &eval).await?
        };
        let label = outcome.label();
        let ns = if rt.providers.has_namespace(&action.namespace) {
            action.namespace.as_str()
        } else {
            "_shared"
        };
        self.metrics
            .dispatches
            .with_label_values(&[label, ns, action.provider.as_str()])
            .inc();
        self.metrics
            .dispatch_seconds
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
        Ok(outcome)
    }

    fn record_rules(&self, rt: &Runtime, eval: &Evaluation) {
        for pos in &eval.matched {
            self.metrics
                .rule_matches
                .with_label_values(&[&*rt.rules.rule(*pos).id])
                .inc();
        }
        for (pos, err) in &eval.errors {
            let rule = rt.rules.rule(*pos);
            self.metrics
                .rule_errors
                .with_label_values(&[&*rule.id, err.reason()])
                .inc();
            tracing::debug!(rule = %rule.id, error = %err, "rule evaluation failed; treated as not matching");
        }
    }

    /// What a dispatch would do, in Acteon's `DryRun` shape: `verdict` is Acteon's snake_case
    /// name of the deciding rule's type. Gates do not decide here (no state is read), so
    /// when no terminal rule matched, the first passing `deduplicate` / `throttle` rule is
    /// the one named, as Acteon names the rule its dry run stops at.
    fn dry_run(&self, rt: &Runtime, action: &Action, eval: &Evaluation) -> ActionOutcome {
        let name = |pos: u32| Some(rt.rules.rule(pos).name.clone());
        let requested = || action.provider.clone();
        let (verdict, matched_rule, provider) = match &eval.decision {
            Decision::Deliver { rule: None, .. } if self.options.default_deny => {
                ("deny", None, requested())
            }
            Decision::Deliver { rule: None, .. } => match first_gate_rule(rt, eval) {
                Some(pos) => (effect_kind(rt, pos), name(pos), requested()),
                None => ("allow", None, requested()),
            },
            Decision::Deliver {
                rule: Some(pos),
                reroute,
            } => (
                effect_kind(rt, *pos),
                name(*pos),
                reroute.clone().unwrap_or_else(requested),
            ),
            Decision::Stop { rule }
            | Decision::Park { rule, .. }
            | Decision::NotImplemented { rule, .. } => {
                (effect_kind(rt, *rule), name(*rule), requested())
            }
        };
        let errors = eval
            .errors
            .iter()
            .map(|(pos, e)| RuleEvalError {
                rule: rt.rules.rule(*pos).id.to_string(),
                error: e.to_string(),
            })
            .collect();
        ActionOutcome::DryRun {
            verdict: verdict.to_owned(),
            matched_rule,
            would_be_provider: provider,
            errors,
        }
    }

    async fn run(
        &self,
        rt: &Runtime,
        action: &Action,
        eval: &Evaluation,
    ) -> Result<ActionOutcome, DispatchError> {
        let rule_name = |pos: u32| rt.rules.rule(pos).name.clone();
        let mut delivery = match &eval.decision {
            Decision::NotImplemented { rule, kind } => {
                return Ok(not_implemented(&rule_name(*rule), kind));
            }
            Decision::Park { rule, .. } => {
                let kind = rt.rules.rule(*rule).effect.verdict_name();
                return Ok(not_implemented(&rule_name(*rule), kind));
            }
            Decision::Deliver { rule: None, .. } if self.options.default_deny => {
                return Ok(ActionOutcome::Suppressed {
                    rule: "default-deny".into(),
                });
            }
            Decision::Deliver { reroute, .. } => Delivery {
                provider: reroute.clone().unwrap_or_else(|| action.provider.clone()),
                rerouted: reroute.is_some(),
                quotas: SmallVec::new(),
                lease: DEDUP_LEASE_FLOOR,
            },
            // Nothing will be delivered: the gates are checked (a duplicate is still
            // `Deduplicated`) but not applied, so the action consumes no budget.
            Decision::Stop { rule } => {
                if let Some(stop) = self.check_only(eval).await? {
                    return Ok(stop);
                }
                return Ok(ActionOutcome::Suppressed {
                    rule: rule_name(*rule),
                });
            }
        };
        let Some(handle) = rt.providers.get(&action.namespace, &delivery.provider) else {
            if let Some(stop) = self.check_only(eval).await? {
                return Ok(stop);
            }
            return Ok(ActionOutcome::failed(
                "PROVIDER_NOT_FOUND",
                format!("provider `{}` not found", delivery.provider),
                false,
                0,
            ));
        };
        delivery.lease = dedup_lease(handle);
        delivery.quotas = rt
            .quotas
            .iter()
            .filter(|q| q.applies(action, &delivery.provider))
            .collect();
        if let Some(stop) = self
            .check_quota_gates(rt, action, eval, &mut delivery)
            .await?
        {
            return Ok(stop);
        }
        Ok(self.deliver(rt, action, eval, &delivery).await)
    }

    /// The rule gates checked, nothing applied (one call): the outcome of the first that
    /// stops, if any.
    async fn check_only(&self, eval: &Evaluation) -> Result<Option<ActionOutcome>, DispatchError> {
        Ok(match self.check_gates(eval, &[], GateMode::Check).await? {
            GateCheck::Stopped(stop) => Some(stop),
            GateCheck::Passed | GateCheck::Quota { .. } => None,
        })
    }

    /// Checks the rule gates plus `quotas` (passed last) in one atomic call, applying them
    /// all if all pass and `mode` says so.
    async fn check_gates(
        &self,
        eval: &Evaluation,
        quotas: &[Gate],
        mode: GateMode,
    ) -> Result<GateCheck, DispatchError> {
        let combined: SmallVec<[Gate; 4]>;
        let gates: &[Gate] = if quotas.is_empty() {
            &eval.gates
        } else {
            combined = eval.gates.iter().chain(quotas).cloned().collect();
            &combined
        };
        if gates.is_empty() {
            return Ok(GateCheck::Passed);
        }
        Ok(match self.apply_gates(gates, mode).await? {
            GateResult::Passed => GateCheck::Passed,
            GateResult::Stopped {
                reason: GateStop::Duplicate,
                ..
            } => GateCheck::Stopped(ActionOutcome::Deduplicated),
            GateResult::Stopped {
                reason: GateStop::Throttled { retry_after },
                ..
            } => GateCheck::Stopped(ActionOutcome::Throttled { retry_after }),
            GateResult::Stopped {
                index,
                reason: GateStop::QuotaExceeded { used, resets_in },
            } => GateCheck::Quota {
                index: index.saturating_sub(eval.gates.len()),
                used,
                resets_in,
            },
        })
    }

    /// Rule gates and quota gates together. A quota whose overage is `warn` or `degrade`
    /// does not stop the action: it is dropped from the check (and for `degrade` the action
    /// goes to the fallback provider), and the remaining gates are checked again.
    async fn check_quota_gates(
        &self,
        rt: &Runtime,
        action: &Action,
        eval: &Evaluation,
        delivery: &mut Delivery<'_>,
    ) -> Result<Option<ActionOutcome>, DispatchError> {
        loop {
            let quota_gates: SmallVec<[Gate; 2]> = delivery
                .quotas
                .iter()
                .map(|q| Gate::Quota {
                    key: scoped_key("q", &action.namespace, &action.tenant, &q.id),
                    limit: q.spec.limit,
                    window: Duration::from_secs(q.window_seconds),
                })
                .collect();
            let mode = GateMode::Apply {
                dedup_lease: Some(delivery.lease),
            };
            let (index, used, resets_in) = match self.check_gates(eval, &quota_gates, mode).await? {
                GateCheck::Passed => return Ok(None),
                GateCheck::Stopped(outcome) => return Ok(Some(outcome)),
                GateCheck::Quota {
                    index,
                    used,
                    resets_in,
                } => (index, used, resets_in),
            };
            let Some(quota) = delivery.quotas.get(index).copied() else {
                return Ok(None);
            };
            match quota.spec.overage {
                Overage::Block => {
                    return Ok(Some(ActionOutcome::QuotaExceeded {
                        tenant: action.tenant.clone(),
                        quota: quota.id.clone(),
                        limit: quota.spec.limit,
                        used,
                        resets_in,
                    }));
                }
                Overage::Warn => {
                    tracing::warn!(quota = %quota.id, tenant = ?action.tenant, used, "quota exceeded; delivering anyway (overage: warn)")
                }
                Overage::Degrade => {
                    if let Some(fallback) = &quota.spec.fallback_provider {
                        delivery.provider = fallback.clone();
                        delivery.rerouted = true;
                        if let Some(handle) = rt.providers.get(&action.namespace, fallback) {
                            delivery.lease = dedup_lease(handle);
                        }
                    }
                }
            }
            delivery.quotas.remove(index);
        }
    }

    async fn apply_gates(&self, gates: &[Gate], mode: GateMode) -> Result<GateResult, StateError> {
        let started = Instant::now();
        let call = self.state.run_gates(gates, mode);
        let result = match tokio::time::timeout(self.options.state_timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(StateError::Timeout(self.options.state_timeout)),
        };
        self.metrics
            .state_seconds
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.metrics
                .state_errors
                .with_label_values(&["apply_gates"])
                .inc();
            if mode != GateMode::Check {
                self.release_after_unknown_result(gates);
            }
        }
        result
    }

    /// After a failed or timed-out gate check the client gets a 503 and will retry, but the
    /// backend may still have applied the gates. Releasing this dispatch's dedup marks (the
    /// release is owner-checked, so it only ever removes our own) keeps that retry from
    /// being answered `Deduplicated` for an action that was never delivered.
    fn release_after_unknown_result(&self, gates: &[Gate]) {
        let marks: Vec<(String, String)> = gates
            .iter()
            .filter_map(|g| match g {
                Gate::Dedup { key, token, .. } => Some((key.clone(), token.clone())),
                _ => None,
            })
            .collect();
        if marks.is_empty() {
            return;
        }
        let state = self.state.clone();
        let timeout = self.options.state_timeout;
        tokio::spawn(async move {
            for (key, token) in marks {
                // Retried a few times: the backend is likely just coming back.
                for attempt in 0..3u32 {
                    if let Ok(Ok(_)) =
                        tokio::time::timeout(timeout, state.release_dedup(&key, &token)).await
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt + 1))).await;
                }
            }
        });
    }

    async fn deliver(
        &self,
        rt: &Runtime,
        action: &Action,
        eval: &Evaluation,
        delivery: &Delivery<'_>,
    ) -> ActionOutcome {
        let Some(handle) = rt.providers.get(&action.namespace, &delivery.provider) else {
            self.release_dedup(eval).await;
            return ActionOutcome::failed(
                "PROVIDER_NOT_FOUND",
                format!("provider `{}` not found", delivery.provider),
                false,
                0,
            );
        };
        let started = Instant::now();
        let result = handle.provider.execute(action).await;
        let elapsed = started.elapsed().as_secs_f64();
        match result {
            Ok(response) => {
                self.metrics
                    .provider_seconds
                    .with_label_values(&[handle.name.as_str(), "success"])
                    .observe(elapsed);
                self.confirm_dedup(eval, delivery.lease);
                if delivery.rerouted {
                    ActionOutcome::Rerouted {
                        original_provider: action.provider.clone(),
                        new_provider: delivery.provider.clone(),
                        response,
                    }
                } else {
                    ActionOutcome::Executed(response)
                }
            }
            Err(e) => {
                self.metrics
                    .provider_seconds
                    .with_label_values(&[handle.name.as_str(), "failure"])
                    .observe(elapsed);
                self.metrics
                    .provider_failures
                    .with_label_values(&[handle.name.as_str(), e.code.as_str()])
                    .inc();
                tracing::warn!(provider = %handle.name, code = %e.code, error = %e.message, attempts = e.attempts, "delivery failed");
                self.release_dedup(eval).await;
                ActionOutcome::failed(&e.code, e.message, e.retryable, e.attempts)
            }
        }
    }

    /// The delivery succeeded: queues the confirmations that make this dispatch's dedup
    /// marks, set for the in-flight lease, last their full TTL. Never waits on the backend.
    fn confirm_dedup(&self, eval: &Evaluation, lease: Duration) {
        for g in &eval.gates {
            if let Gate::Dedup { key, ttl, token } = g
                && *ttl > lease
            {
                let confirmation = DedupConfirm {
                    key: key.clone(),
                    token: token.clone(),
                    extend: *ttl - lease,
                };
                self.confirmer
                    .enqueue(&self.state, &self.metrics, confirmation);
            }
        }
    }

    /// Releases this dispatch's dedup marks so a retry of the same key can be delivered.
    async fn release_dedup(&self, eval: &Evaluation) {
        for g in &eval.gates {
            if let Gate::Dedup { key, token, .. } = g {
                let released = tokio::time::timeout(
                    self.options.state_timeout,
                    self.state.release_dedup(key, token),
                )
                .await;
                if !matches!(released, Ok(Ok(_))) {
                    self.metrics
                        .state_errors
                        .with_label_values(&["release_dedup"])
                        .inc();
                    tracing::warn!(key = ?key, "could not release a dedup mark; it expires with its TTL");
                }
            }
        }
    }
}

/// How long a dedup mark may block retries before its delivery is confirmed: the
/// provider's worst-case delivery time plus a margin, at least [`DEDUP_LEASE_FLOOR`].
fn dedup_lease(handle: &ProviderHandle) -> Duration {
    let worst = handle
        .provider
        .max_delivery_time()
        .unwrap_or(Duration::ZERO);
    worst
        .saturating_add(DEDUP_LEASE_MARGIN)
        .max(DEDUP_LEASE_FLOOR)
}

fn not_implemented(rule: &str, kind: &str) -> ActionOutcome {
    ActionOutcome::failed(
        "NOT_IMPLEMENTED",
        format!("rule `{rule}`: action type `{kind}` is not implemented yet"),
        false,
        0,
    )
}

/// The first matched `deduplicate` or `throttle` rule, if any.
fn first_gate_rule(rt: &Runtime, eval: &Evaluation) -> Option<u32> {
    eval.matched
        .iter()
        .copied()
        .find(|pos| rt.rules.rule(*pos).effect.is_gate())
}

/// Acteon's snake_case verdict name for a rule's action type.
fn effect_kind(rt: &Runtime, rule: u32) -> &'static str {
    rt.rules.rule(rule).effect.verdict_name()
}
