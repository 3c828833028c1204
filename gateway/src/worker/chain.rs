//! A chain's step is due: it is delivered, and the run moves on — its result recorded and
//! the next step scheduled in one owner-checked call (`advance_timer`), or the run ends.
//!
//! Exactly once per step while claims hold: a step is recorded only under the claim that
//! ran it; a replica that dies mid-step leaves the claim to expire and the step runs again
//! elsewhere (its delivery carries the same idempotency key, `x-acteon-action-id`:
//! `<chain id>:<step>:<attempt>`, so a receiver can drop the repeat).

use std::time::{Duration, Instant};

use acteon_api::crd::ChainStep;

use super::chain_step::{context, next_step, render};
use super::task::{ChainRun, ParentChain, StepResult, Task};
use super::{Done, observe_lateness};
use crate::action::Action;
use crate::config::Runtime;
use crate::outcome::ProviderResponse;
use crate::pipeline::Gateway;
use crate::rules::chain::{ChainRecord, RETENTION, record_key};
use crate::state::{ClaimedTimer, unix_ms};

/// Attempts of a step whose provider failed in a way worth retrying (its own retries
/// are inside each attempt).
const STEP_ATTEMPTS: u32 = 3;
/// Pause before the next attempt of a failed step, times the attempt number.
const STEP_BACKOFF: Duration = Duration::from_secs(1);

/// Why a step failed.
struct StepError {
    message: String,
    retryable: bool,
}

/// Sub-chains nested deeper than this fail the step that would start one.
const MAX_SUB_CHAIN_DEPTH: usize = 8;

pub(super) async fn advance(
    gateway: &Gateway,
    mut run: Box<ChainRun>,
    timer: &ClaimedTimer,
) -> Done {
    observe_lateness(gateway, "advance_chain", timer.due_ms);
    let rt = gateway.config.load();
    if !rt.loaded {
        return Done::Retry("no configuration snapshot yet".into());
    }
    if run.cancelled {
        return finish(gateway, &run, "cancelled").await;
    }
    if unix_ms() >= run.deadline_ms {
        return finish(gateway, &run, "timed_out").await;
    }
    let Some(step) = run.definition.steps.get(run.step).cloned() else {
        return finish(gateway, &run, "completed").await;
    };
    if let Some(name) = &step.sub_chain {
        return match enter_sub_chain(&rt, &mut run, name) {
            Ok(()) => {
                let due = unix_ms() + delay_ms(&run);
                move_on(gateway, run, timer, due).await
            }
            Err(error) => {
                let failed = step_result(&step, &run, Err(error));
                settle(gateway, run, timer, failed).await
            }
        };
    }
    let started = Instant::now();
    let outcome = deliver(&rt, &run, &step).await;
    gateway
        .metrics
        .chain_step_seconds
        .with_label_values(&[&run.chain])
        .observe(started.elapsed().as_secs_f64());
    let label = match &outcome {
        Ok(_) => "ok",
        Err(e) if e.retryable && run.attempt + 1 < STEP_ATTEMPTS => "retry",
        Err(_) => "failed",
    };
    gateway
        .metrics
        .chain_steps
        .with_label_values(&[&run.chain, label])
        .inc();
    if label == "retry" {
        run.attempt += 1;
        let due = unix_ms() + (STEP_BACKOFF * run.attempt).as_millis() as u64;
        return move_on(gateway, run, timer, due).await;
    }
    let result = step_result(&step, &run, outcome.map(|r| r.body).map_err(|e| e.message));
    if let Some(error) = &result.error {
        tracing::warn!(chain = %run.chain, chain_id = %run.chain_id, step = %step.name, %error, "chain step failed");
    }
    settle(gateway, run, timer, result).await
}

/// The `delaySeconds` of the step the run is at.
fn delay_ms(run: &ChainRun) -> u64 {
    let step = run.definition.steps.get(run.step);
    step.and_then(|s| s.delay_seconds)
        .unwrap_or(0)
        .saturating_mul(1000)
}

fn step_result(
    step: &ChainStep,
    run: &ChainRun,
    outcome: Result<serde_json::Value, String>,
) -> StepResult {
    let (success, body, error) = match outcome {
        Ok(body) => (true, body, None),
        Err(e) => (false, serde_json::Value::Null, Some(e)),
    };
    StepResult {
        name: step.name.clone(),
        success,
        body,
        error,
        attempts: run.attempt + 1,
        finished_ms: unix_ms(),
    }
}

/// Starts the sub-chain `name` in place of the current step: the current chain waits for
/// it (the sub-chain's definition is the one served now, kept from here on).
fn enter_sub_chain(rt: &Runtime, run: &mut ChainRun, name: &str) -> Result<(), String> {
    if run.parents.len() >= MAX_SUB_CHAIN_DEPTH {
        return Err(format!(
            "sub-chain `{name}`: nested deeper than {MAX_SUB_CHAIN_DEPTH}"
        ));
    }
    let def = rt
        .chains
        .resolve(&run.origin.namespace, name)
        .ok_or_else(|| format!("no Chain `{name}` for the sub-chain"))?;
    run.parents.push(ParentChain {
        chain: std::mem::replace(&mut run.chain, def.id.clone()),
        definition: std::mem::replace(&mut run.definition, def.spec.clone()),
        step: run.step,
        results_before: run.results.len(),
    });
    run.step = 0;
    run.attempt = 0;
    Ok(())
}

/// Records a step's result and moves on: to the next step (branches, `defaultNext`, next
/// in order), or out of a finished sub-chain into its parent, or to the end of the run. A
/// failed step ends its chain unless its `onFailure` is `skip` (`dlq` ends it too: dead
/// letters come with the delivery work); a failed sub-chain is a failed step of its parent.
async fn settle(
    gateway: &Gateway,
    mut run: Box<ChainRun>,
    timer: &ClaimedTimer,
    mut result: StepResult,
) -> Done {
    loop {
        let skips = run
            .definition
            .steps
            .get(run.step)
            .is_some_and(|s| s.on_failure.as_deref() == Some("skip"));
        let next = if result.success || skips {
            next_step(&run.definition, run.step, &result)
        } else {
            None
        };
        let chain_failed = !result.success && !skips;
        let body = result.body.clone();
        run.results.push(result);
        if let Some(index) = next {
            run.step = index;
            run.attempt = 0;
            let due = unix_ms() + delay_ms(&run);
            return move_on(gateway, run, timer, due).await;
        }
        let Some(parent) = run.parents.pop() else {
            let event = if chain_failed { "failed" } else { "completed" };
            return finish(gateway, &run, event).await;
        };
        // The sub-chain ended: it is the result of its step in the parent.
        let sub_steps = run.results.len() - parent.results_before;
        run.chain = parent.chain;
        run.definition = parent.definition;
        run.step = parent.step;
        run.attempt = 0;
        let name = run
            .definition
            .steps
            .get(run.step)
            .map_or_else(String::new, |s| s.name.clone());
        result = StepResult {
            name,
            success: !chain_failed,
            body: if chain_failed {
                serde_json::Value::Null
            } else {
                body
            },
            error: chain_failed.then(|| format!("the sub-chain failed after {sub_steps} steps")),
            attempts: 1,
            finished_ms: unix_ms(),
        };
    }
}

/// The step's delivery: its payload rendered, sent to its provider.
async fn deliver(
    rt: &Runtime,
    run: &ChainRun,
    step: &ChainStep,
) -> Result<ProviderResponse, StepError> {
    let fail = |message: String| StepError {
        message,
        retryable: false,
    };
    let Some(provider) = &step.provider else {
        return Err(fail(format!(
            "step `{}`: sub-chains are not run yet",
            step.name
        )));
    };
    let template = step
        .payload_template
        .clone()
        .unwrap_or_else(|| run.origin.payload.clone());
    let payload =
        render(&template, &context(run)).map_err(|e| fail(format!("step `{}`: {e}", step.name)))?;
    let Some(handle) = rt.providers.get(&run.origin.namespace, provider) else {
        return Err(fail(format!(
            "step `{}`: no provider `{provider}`",
            step.name
        )));
    };
    let action = step_action(run, step, provider, payload);
    handle
        .provider
        .execute(&action)
        .await
        .map_err(|e| StepError {
            message: format!("step `{}`: {}: {}", step.name, e.code, e.message),
            retryable: e.retryable,
        })
}

/// The action a step delivers: the origin's namespace and tenant; its id is the step's
/// idempotency key.
fn step_action(
    run: &ChainRun,
    step: &ChainStep,
    provider: &str,
    payload: serde_json::Value,
) -> Action {
    let mut metadata = run.origin.metadata.clone();
    metadata.insert("chain_id".into(), run.chain_id.clone());
    metadata.insert("chain_step".into(), step.name.clone());
    Action {
        id: format!("{}:{}:{}", run.chain_id, step.name, run.attempt),
        namespace: run.origin.namespace.clone(),
        tenant: run.origin.tenant.clone(),
        provider: provider.to_owned(),
        action_type: step
            .action_type
            .clone()
            .unwrap_or_else(|| run.origin.action_type.clone()),
        payload,
        created_at: Some(chrono::Utc::now()),
        metadata,
        dedup_key: None,
        status: None,
        fingerprint: None,
    }
}

/// Records the run and schedules its next step at `due`, under this claim.
async fn move_on(gateway: &Gateway, run: Box<ChainRun>, timer: &ClaimedTimer, due: u64) -> Done {
    let payload = Task::AdvanceChain(run).encode();
    let call = gateway
        .state
        .advance_timer(&timer.id, &timer.claim, due, payload);
    match gateway.state_call(call).await {
        Ok(true) => Done::Settled,
        Ok(false) => {
            gateway.metrics.worker_claims_lost.inc();
            tracing::warn!(timer = %timer.id, "chain claim lost after a step: another replica may run it again");
            Done::Settled
        }
        // The step ran but is not recorded: it runs again after the lease.
        Err(e) => e.into(),
    }
}

/// The run ended: its record is kept for [`RETENTION`] (written once: a repeat of the
/// last step after a lost claim finds it there), the timer completed.
async fn finish(gateway: &Gateway, run: &ChainRun, event: &str) -> Done {
    let record = ChainRecord::of(run, event, Some(unix_ms()));
    let key = record_key(&run.origin.namespace, &run.origin.tenant, &run.chain_id);
    let bytes = serde_json::to_vec(&record).unwrap_or_default();
    let write = gateway
        .state
        .compare_and_swap(&key, None, bytes, Some(RETENTION));
    if let Err(e) = gateway.state_call(write).await {
        return e.into();
    }
    gateway
        .metrics
        .chains
        .with_label_values(&[&record.chain, event])
        .inc();
    tracing::info!(chain = %record.chain, chain_id = %run.chain_id, steps = run.results.len(), event, "chain run ended");
    Done::Complete
}
