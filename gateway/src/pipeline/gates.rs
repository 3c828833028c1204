//! Gates: the dispatch's dedup / throttle / quota checks in one atomic backend call, and
//! what happens to dedup marks after delivery (confirmed, or released for a retry).

use std::time::{Duration, Instant};

use acteon_api::crd::Overage;
use smallvec::SmallVec;

use super::{DEDUP_LEASE_FLOOR, DEDUP_LEASE_MARGIN, Delivery, DispatchError, Gateway};
use crate::action::Action;
use crate::config::Runtime;
use crate::outcome::ActionOutcome;
use crate::providers::ProviderHandle;
use crate::rules::Evaluation;
use crate::state::{
    DedupConfirm, DeferResult, Deferral, Gate, GateMode, GateResult, GateStop, StateError,
    dedup_token_time,
};

/// The result of checking a dispatch's gates.
pub(super) enum GateCheck {
    Passed,
    Stopped(ActionOutcome),
    /// Quota gate number `index` (among the quota gates) stopped it.
    Quota {
        index: usize,
        used: u64,
        resets_in: Duration,
    },
}

impl Gateway {
    /// The rule gates checked, nothing applied (one call): the outcome of the first that
    /// stops, if any.
    pub(super) async fn check_only(
        &self,
        eval: &Evaluation,
    ) -> Result<Option<ActionOutcome>, DispatchError> {
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
        let (result, _) = self.apply_gates(gates, mode, &[]).await?;
        Ok(gate_check(eval, result))
    }

    /// The rule gates with `deferrals`, in one atomic call: the deferrals' results when
    /// every gate passed.
    pub(super) async fn check_gates_deferring(
        &self,
        eval: &Evaluation,
        mode: GateMode,
        deferrals: &[Deferral],
    ) -> Result<(GateCheck, Vec<DeferResult>), DispatchError> {
        let (result, deferred) = self.apply_gates(&eval.gates, mode, deferrals).await?;
        Ok((gate_check(eval, result), deferred))
    }

    /// Rule gates and quota gates together. A quota whose overage is `warn` or `degrade`
    /// does not stop the action: it is dropped from the check (and for `degrade` the action
    /// goes to the fallback provider), and the remaining gates are checked again.
    pub(super) async fn check_quota_gates(
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
                    // `applies` matched the action's tenant to the quota's.
                    key: q.counter_key(&action.namespace),
                    limit: q.spec.limit,
                    window: q.window(),
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

    async fn apply_gates(
        &self,
        gates: &[Gate],
        mode: GateMode,
        deferrals: &[Deferral],
    ) -> Result<(GateResult, Vec<DeferResult>), StateError> {
        if let Some(Gate::Dedup { key, .. }) = gates.first()
            && self.delivered.holds(key, crate::state::unix_ms())
        {
            // Our own delivered mark: the backend would answer the same, and apply nothing.
            self.metrics.dedup_local.inc();
            let stop = GateResult::Stopped {
                index: 0,
                reason: GateStop::Duplicate,
            };
            return Ok((stop, Vec::new()));
        }
        let started = Instant::now();
        let call = self.state.run_gates_and_defer(gates, mode, deferrals);
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

    /// The delivery succeeded: queues the confirmations that make this dispatch's dedup
    /// marks, set for the in-flight lease, last their full TTL. Never waits on the backend.
    pub(super) fn confirm_dedup(&self, eval: &Evaluation, lease: Duration) {
        for g in &eval.gates {
            if let Gate::Dedup { key, ttl, token } = g
                && let Some(set_ms) = dedup_token_time(token)
            {
                self.delivered.remember(key, set_ms, *ttl);
            }
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
    pub(super) async fn release_dedup(&self, eval: &Evaluation) {
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
pub(super) fn dedup_lease(handle: &ProviderHandle) -> Duration {
    let worst = handle.max_delivery_time().unwrap_or(Duration::ZERO);
    worst
        .saturating_add(DEDUP_LEASE_MARGIN)
        .max(DEDUP_LEASE_FLOOR)
}

/// What a gate result means for the dispatch.
fn gate_check(eval: &Evaluation, result: GateResult) -> GateCheck {
    match result {
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
    }
}
