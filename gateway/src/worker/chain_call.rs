//! The provider calls of a chain step: one call, or the calls of a `parallel` step made at
//! once and joined; each carries an idempotency key (`<chain id>:<call>:<attempt>`) as its
//! action id (the `x-acteon-action-id` header of webhooks).

use std::time::Duration;

use acteon_api::crd::{ChainStep, Parallel, ParallelStep};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::{Map, Value, json};

use super::chain_step::{context, render};
use super::task::ChainRun;
use crate::action::Action;
use crate::config::Runtime;
use crate::pipeline::Gateway;
use crate::state::unix_ms;

/// Why a step failed.
pub(super) struct StepError {
    pub message: String,
    pub retryable: bool,
}

impl StepError {
    fn fatal(message: String) -> StepError {
        StepError {
            message,
            retryable: false,
        }
    }
}

/// One provider call: a step's, a parallel step's, or `onCancel`.
pub(super) struct Call<'a> {
    pub name: &'a str,
    pub provider: &'a str,
    pub action_type: Option<&'a str>,
    pub payload_template: Option<&'a Value>,
}

impl<'a> Call<'a> {
    pub fn of_step(step: &'a ChainStep) -> Option<Call<'a>> {
        Some(Call {
            name: &step.name,
            provider: step.provider.as_deref()?,
            action_type: step.action_type.as_deref(),
            payload_template: step.payload_template.as_ref(),
        })
    }

    pub fn of(step: &'a ParallelStep) -> Call<'a> {
        Call {
            name: &step.name,
            provider: &step.provider,
            action_type: step.action_type.as_deref(),
            payload_template: step.payload_template.as_ref(),
        }
    }
}

/// What a step's calls sent and got.
pub(super) struct Delivery {
    /// The rendered payload (per call name, for a parallel step); null if none was rendered.
    pub request: Value,
    /// The answer's body.
    pub outcome: Result<Value, StepError>,
}

/// Renders the call's payload from the run and delivers it.
pub(super) async fn deliver(
    gw: &Gateway,
    rt: &Runtime,
    run: &ChainRun,
    call: &Call<'_>,
) -> Delivery {
    let template = call.payload_template.unwrap_or(&run.origin.payload);
    let payload = match render(template, &context(run)) {
        Ok(payload) => payload,
        Err(e) => {
            return Delivery {
                request: Value::Null,
                outcome: Err(StepError::fatal(format!("step `{}`: {e}", call.name))),
            };
        }
    };
    if rt
        .providers
        .get(&run.origin.namespace, call.provider)
        .is_none()
    {
        return Delivery {
            request: payload,
            outcome: Err(StepError::fatal(format!(
                "step `{}`: no provider `{}`",
                call.name, call.provider
            ))),
        };
    }
    let action = call_action(run, call, payload);
    let called = gw
        .call_provider(rt, &run.origin.namespace, call.provider, &action)
        .await;
    let outcome = match called.into_result(call.provider) {
        Ok(response) => Ok(response.body),
        Err(e) => Err(StepError {
            message: format!("step `{}`: {}: {}", call.name, e.code, e.message),
            retryable: e.retryable,
        }),
    };
    Delivery {
        request: action.payload,
        outcome,
    }
}

/// A `parallel` step: its calls made at once, joined (`all`: every call succeeded; `any`:
/// one did). `failFast` stops waiting once the join is decided; `bestEffort` waits for
/// every call (bounded by `timeoutSeconds`, else the run's remaining time). The body is
/// `{"results": {NAME: {"success", "body", "error"}}}` (calls not waited for are absent).
pub(super) async fn deliver_parallel(
    gw: &Gateway,
    rt: &Runtime,
    run: &ChainRun,
    step_name: &str,
    parallel: &Parallel,
) -> Delivery {
    let any = parallel.join.as_deref() == Some("any");
    let fail_fast = parallel.on_failure.as_deref() != Some("bestEffort");
    let remaining = Duration::from_millis(run.deadline_ms.saturating_sub(unix_ms()));
    let limit = parallel
        .timeout_seconds
        .map_or(remaining, |s| Duration::from_secs(s).min(remaining));
    let mut pending: FuturesUnordered<_> = parallel
        .steps
        .iter()
        .map(|s| async move { (s.name.as_str(), deliver(gw, rt, run, &Call::of(s)).await) })
        .collect();
    let mut results = Map::new();
    let mut requests = Map::new();
    let (mut ok, mut failed) = (0usize, 0usize);
    let total = parallel.steps.len();
    let collect = async {
        while let Some((name, delivery)) = pending.next().await {
            requests.insert(name.to_owned(), delivery.request);
            let entry = match delivery.outcome {
                Ok(body) => {
                    ok += 1;
                    json!({"success": true, "body": body})
                }
                Err(e) => {
                    failed += 1;
                    json!({"success": false, "error": e.message})
                }
            };
            results.insert(name.to_owned(), entry);
            let decided = if any {
                ok > 0 || failed == total
            } else {
                failed > 0 || ok == total
            };
            if fail_fast && decided {
                break;
            }
        }
    };
    let timed_out = tokio::time::timeout(limit, collect).await.is_err();
    let success = if any { ok > 0 } else { ok == total };
    let body = json!({"results": results});
    let request = Value::Object(requests);
    if success {
        return Delivery {
            request,
            outcome: Ok(body),
        };
    }
    let why = if timed_out { "timed out" } else { "failed" };
    Delivery {
        request,
        outcome: Err(StepError::fatal(format!(
            "parallel step `{step_name}` {why}: {ok} of {total} calls succeeded ({body})"
        ))),
    }
}

/// The action a call delivers: the origin's namespace and tenant; its id is the call's
/// idempotency key.
pub(super) fn call_action(run: &ChainRun, call: &Call<'_>, payload: Value) -> Action {
    let mut metadata = run.origin.metadata.clone();
    metadata.insert("chain_id".into(), run.chain_id.clone());
    metadata.insert("chain_step".into(), call.name.to_owned());
    Action {
        id: format!("{}:{}:{}", run.chain_id, call.name, run.attempt),
        namespace: run.origin.namespace.clone(),
        tenant: run.origin.tenant.clone(),
        provider: call.provider.to_owned(),
        action_type: call
            .action_type
            .map_or_else(|| run.origin.action_type.clone(), str::to_owned),
        payload,
        created_at: Some(chrono::Utc::now()),
        metadata,
        dedup_key: None,
        status: None,
        fingerprint: None,
        trace: run.origin.trace.clone(),
    }
}
