//! The dispatch pipeline: rules → gates (one atomic backend call) → provider → outcome.

mod deliver;
pub mod delivered;
mod dry_run;
mod gates;
pub mod park;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use smallvec::SmallVec;

use crate::action::Action;
use crate::audit::writer::Finished;
use crate::audit::{AuditSource, CallerIdentity};
use crate::config::{LiveConfig, QuotaRule, Runtime};

use crate::metrics::Metrics;
use crate::outcome::ActionOutcome;
use crate::rules::state_read::StateView;
use crate::rules::{Decision, Evaluation, RulePlace};
use crate::state::confirm::DedupConfirmer;
use crate::state::{StateError, StateStore};
pub use delivered::DeliveredMarks;

/// Settings of the pipeline.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Bound on every state backend call; past it the dispatch answers 503.
    pub state_timeout: Duration,
    /// When no terminal rule matches: execute (default) or deny.
    pub default_deny: bool,
    /// How long an ended chain run stays listed and readable.
    pub chain_retention: Duration,
    /// How long a dead letter is kept; zero: failed deliveries are not kept.
    pub dead_letter_retention: Duration,
    /// Whether dispatches continue or start traces (`--trace-propagation`).
    pub trace: crate::trace::Propagation,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            state_timeout: Duration::from_secs(2),
            default_deny: false,
            chain_retention: crate::worker::chain_record::DEFAULT_RETENTION,
            dead_letter_retention: crate::dead_letter::DEFAULT_RETENTION,
            trace: crate::trace::Propagation::default(),
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
    /// The dedup marks of this gateway's successful deliveries (off by default).
    pub delivered: DeliveredMarks,
    /// Running chains (census) and chain failures, for the report to the operator.
    pub chain_activity: crate::worker::census::ChainActivityLog,
    /// The audit trail (`--audit on`); `None`: nothing is recorded.
    pub audit: Option<Arc<crate::audit::AuditSink>>,
    /// Circuit breakers and statistics of the delivery layer.
    pub guards: crate::delivery::Guards,
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
    pub async fn dispatch(
        &self,
        action: Action,
        dry_run: bool,
    ) -> Result<ActionOutcome, DispatchError> {
        self.dispatch_as(action, dry_run, None).await
    }

    /// [`Gateway::dispatch`] on behalf of an authenticated caller (recorded in the audit
    /// trail). Dry runs are not recorded: they change nothing.
    #[tracing::instrument(level = "debug", skip_all, fields(ns = ?action.namespace, tenant = ?action.tenant, provider = ?action.provider))]
    pub async fn dispatch_as(
        &self,
        action: Action,
        dry_run: bool,
        caller: Option<&CallerIdentity>,
    ) -> Result<ActionOutcome, DispatchError> {
        // The HTTP handlers make the dispatch's context the work's; a caller in process
        // (a tool, a test) may only have put it in the action.
        if action.trace.is_some() && !crate::trace::has_current() {
            let ctx = action.trace.clone();
            let dispatched = self.dispatch_now(action, dry_run, caller);
            return crate::trace::within(ctx, dispatched).await;
        }
        self.dispatch_now(action, dry_run, caller).await
    }

    async fn dispatch_now(
        &self,
        mut action: Action,
        dry_run: bool,
        caller: Option<&CallerIdentity>,
    ) -> Result<ActionOutcome, DispatchError> {
        let started = Instant::now();
        let dispatched_at = crate::audit::now_micros();
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
            let outcome = ActionOutcome::failed(
                "PROVIDER_NOT_FOUND",
                format!(
                    "unknown provider {:?} for namespace {:?}",
                    action.provider, action.namespace
                ),
                false,
                0,
            );
            if let (Some(audit), false) = (&self.audit, dry_run) {
                let (label, error) = Finished::outcome_of(&outcome);
                audit
                    .record(Finished {
                        action: &action,
                        original_payload: None,
                        outcome: label,
                        error,
                        verdict: "none",
                        matched_rule: None,
                        caller,
                        source: AuditSource::Dispatch,
                        dispatched_at,
                        started,
                    })
                    .await;
            }
            return Ok(outcome);
        }
        let now = Utc::now();
        let state = self.read_state(&rt, &action, now, None).await?;
        let mut eval = rt.rules.evaluate_with(&action, now, state.as_ref());
        self.record_rules(&rt, &eval);
        // The payload as received is what the audit trail keeps (a replay runs the `modify`
        // rules again).
        let original_payload = eval
            .payload
            .take()
            .map(|p| std::mem::replace(&mut action.payload, p));
        let outcome = if dry_run {
            self.dry_run(&rt, &action, &eval)
        } else {
            self.run(&rt, &action, &eval).await?
        };
        if !dry_run {
            self.audit(
                &rt,
                &eval,
                &action,
                original_payload,
                &outcome,
                caller,
                AuditSource::Dispatch,
                dispatched_at,
                started,
            )
            .await;
        }
        let label = outcome.label();
        let ns = if rt.providers.has_namespace(&action.namespace) {
            action.namespace.as_str()
        } else {
            acteon_api::snapshot::SHARED_SCOPE
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

    /// Runs a released parked action (a scheduled action that is due, a group's
    /// notification) on through the rules after `after`, in the configuration of this
    /// moment, then gates, parks again or delivers it like a dispatch.
    #[tracing::instrument(level = "debug", skip_all, fields(ns = ?action.namespace, kind))]
    pub async fn resume(
        &self,
        mut action: Action,
        after: &RulePlace,
        kind: &'static str,
    ) -> Result<ActionOutcome, DispatchError> {
        let started = Instant::now();
        let dispatched_at = crate::audit::now_micros();
        let rt = self.config.load();
        if !rt.loaded {
            return Err(DispatchError::NotLoaded);
        }
        let now = Utc::now();
        let state = self.read_state(&rt, &action, now, Some(after)).await?;
        let mut eval = rt.rules.evaluate_after(&action, now, after, state.as_ref());
        self.record_rules(&rt, &eval);
        let original_payload = eval
            .payload
            .take()
            .map(|p| std::mem::replace(&mut action.payload, p));
        let outcome = self.run(&rt, &action, &eval).await?;
        let source = AuditSource::of_release(kind);
        self.audit(
            &rt,
            &eval,
            &action,
            original_payload,
            &outcome,
            None,
            source,
            dispatched_at,
            started,
        )
        .await;
        self.metrics
            .released
            .with_label_values(&[kind, outcome.label()])
            .inc();
        Ok(outcome)
    }

    /// The state the candidate rules' conditions read (inhibitions, `stateSeen`,
    /// `stateCounter`), in one backend call bounded by the state timeout; `None`, with no
    /// call, when they read none. A failure is the dispatch's (503), as for gates.
    async fn read_state(
        &self,
        rt: &Runtime,
        action: &Action,
        now: chrono::DateTime<Utc>,
        after: Option<&RulePlace>,
    ) -> Result<Option<StateView>, DispatchError> {
        let reads = rt.rules.state_reads(action, now, after);
        if reads.is_empty() {
            return Ok(None);
        }
        let started = Instant::now();
        let answers = self.state_call(self.state.read_state(&reads)).await;
        self.metrics
            .state_seconds
            .observe(started.elapsed().as_secs_f64());
        match answers {
            Ok(answers) => Ok(Some(StateView::new(reads, answers))),
            Err(e) => {
                self.metrics
                    .state_errors
                    .with_label_values(&["read_state"])
                    .inc();
                Err(e.into())
            }
        }
    }

    /// A state backend call bounded by the state timeout.
    pub async fn state_call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StateError>>,
    ) -> Result<T, StateError> {
        match tokio::time::timeout(self.options.state_timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(StateError::Timeout(self.options.state_timeout)),
        }
    }

    /// Hands the record of a finished dispatch or release to the audit trail, if on.
    #[allow(clippy::too_many_arguments)]
    async fn audit(
        &self,
        rt: &Runtime,
        eval: &Evaluation,
        action: &Action,
        original_payload: Option<serde_json::Value>,
        outcome: &ActionOutcome,
        caller: Option<&CallerIdentity>,
        source: AuditSource,
        dispatched_at: chrono::DateTime<Utc>,
        started: Instant,
    ) {
        let Some(audit) = &self.audit else {
            return;
        };
        let (verdict, matched_rule) = self.verdict(rt, eval);
        let (label, error) = Finished::outcome_of(outcome);
        audit
            .record(Finished {
                action,
                original_payload,
                outcome: label,
                error,
                verdict,
                matched_rule,
                caller,
                source,
                dispatched_at,
                started,
            })
            .await;
    }

    /// The record of a provider call made by the worker outside the pipeline (a chain
    /// step, a state timeout's notification): `verdict` names the rule type behind it.
    pub async fn audit_delivery(
        &self,
        action: &Action,
        result: Result<(), String>,
        verdict: &str,
        source: AuditSource,
        dispatched_at: chrono::DateTime<Utc>,
        started: Instant,
    ) {
        let Some(audit) = &self.audit else {
            return;
        };
        let (outcome, error) = match result {
            Ok(()) => ("executed", None),
            Err(e) => ("failed", Some(e)),
        };
        audit
            .record(Finished {
                action,
                original_payload: None,
                outcome,
                error,
                verdict,
                matched_rule: None,
                caller: None,
                source,
                dispatched_at,
                started,
            })
            .await;
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
            Decision::Park { rule, park } => {
                return self
                    .park(rt, action, eval, rt.rules.rule(*rule), park)
                    .await;
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
        delivery.lease = gates::dedup_lease(handle);
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
}

fn not_implemented(rule: &str, kind: &str) -> ActionOutcome {
    ActionOutcome::failed(
        "NOT_IMPLEMENTED",
        format!("rule `{rule}`: action type `{kind}` is not implemented yet"),
        false,
        0,
    )
}
