//! A chain's step is due: it is delivered, and the run moves on — its result recorded and
//! the next step scheduled in one owner-checked call (`advance_timer`), or the run ends. A
//! next step due at once is run by the same task under the same claim (held: its lease
//! renewed in that call), up to [`STEPS_PER_CLAIM`] in a row: one backend call per step.
//!
//! Exactly once per step while claims hold: a step is recorded only under the claim that
//! ran it; a replica that dies mid-step leaves the claim to expire and the step runs again
//! elsewhere (its delivery carries the same idempotency key, `x-acteon-action-id`:
//! `<chain id>:<step>:<attempt>`, so a receiver can drop the repeat).

use std::time::{Duration, Instant};

use acteon_api::crd::ChainStep;

use super::chain_call::{Call, Delivery, StepError, call_action, deliver, deliver_parallel};
use super::chain_record::{self as record, ChainRecord, record_timer_id};
use super::chain_step::next_step;
use super::task::{ChainRun, ParentChain, StepResult, Task};
use super::{Done, observe_lateness};
use crate::audit::AuditSource;
use crate::config::Runtime;
use crate::dead_letter::{self, DeadLetter, FROM_CHAIN};
use crate::pipeline::Gateway;
use crate::providers::ProviderError;
use crate::state::{ClaimedTimer, unix_ms};

/// Attempts of a step whose provider failed in a way worth retrying (its own retries
/// are inside each attempt), unless the step's `retry` says otherwise.
const STEP_ATTEMPTS: u32 = 3;
/// Pause before the next attempt of a failed step, times the attempt number (unless the
/// step's `retry.backoffSeconds` says otherwise).
const STEP_BACKOFF: Duration = Duration::from_secs(1);

/// Sub-chains nested deeper than this fail the step that would start one.
const MAX_SUB_CHAIN_DEPTH: usize = 8;

/// Steps one claim runs at most in a row (those due at once), before the run goes back to
/// the timers for any replica to take.
const STEPS_PER_CLAIM: usize = 32;

/// What running one step left to do.
enum Step {
    /// The next step is due now and this task holds the claim: run it.
    Next(Box<ChainRun>),
    Done(Done),
}

impl From<Done> for Step {
    fn from(done: Done) -> Step {
        Step::Done(done)
    }
}

/// Runs the run's due step, and the steps after it that are due at once under the same
/// claim (held `lease` at a time, so a replica dying in between leaves them to the next).
pub(super) async fn advance(
    gateway: &Gateway,
    mut run: Box<ChainRun>,
    timer: &ClaimedTimer,
    lease: Duration,
) -> Done {
    observe_lateness(gateway, "advance_chain", timer.due_ms);
    for round in 1..=STEPS_PER_CLAIM {
        let hold = (round < STEPS_PER_CLAIM).then_some(lease);
        match step_once(gateway, run, timer, hold).await {
            Step::Next(next) => run = next,
            Step::Done(done) => return done,
        }
    }
    // The last round holds nothing: it always ends in `Done`.
    Done::Settled
}

async fn step_once(
    gateway: &Gateway,
    mut run: Box<ChainRun>,
    timer: &ClaimedTimer,
    hold: Option<Duration>,
) -> Step {
    let rt = gateway.config.load();
    if !rt.loaded {
        return Done::Retry("no configuration snapshot yet".into()).into();
    }
    if run.cancelled {
        on_cancel(gateway, &rt, &run).await;
        return finish(gateway, &run, record::CANCELLED).await.into();
    }
    if unix_ms() >= run.deadline_ms {
        return finish(gateway, &run, record::TIMED_OUT).await.into();
    }
    let Some(step) = run.definition.steps.get(run.step).cloned() else {
        return finish(gateway, &run, record::COMPLETED).await.into();
    };
    if let Some(name) = &step.sub_chain {
        return match enter_sub_chain(&rt, &mut run, name) {
            Ok(()) => {
                let due = unix_ms() + delay_ms(&run);
                move_on(gateway, run, timer, due, hold).await
            }
            Err(error) => {
                let failed = step_result(&step, &run, Err(error));
                settle(gateway, run, timer, failed, hold).await
            }
        };
    }
    let started_ms = unix_ms();
    let started = Instant::now();
    let delivery = match (&step.parallel, Call::of_step(&step)) {
        (Some(parallel), _) => deliver_parallel(gateway, &rt, &run, &step.name, parallel).await,
        (None, Some(call)) => deliver(gateway, &rt, &run, &call).await,
        (None, None) => Delivery {
            request: serde_json::Value::Null,
            outcome: Err(StepError {
                message: format!("step `{}` has nothing to run", step.name),
                retryable: false,
            }),
        },
    };
    let outcome = delivery.outcome;
    gateway
        .metrics
        .chain_step_seconds
        .with_label_values(&[&run.chain])
        .observe(started.elapsed().as_secs_f64());
    let (attempts, backoff) = retry_of(&step);
    let label = match &outcome {
        Ok(_) => "ok",
        Err(e) if e.retryable && run.attempt + 1 < attempts => "retry",
        Err(_) => "failed",
    };
    gateway
        .metrics
        .chain_steps
        .with_label_values(&[&run.chain, label])
        .inc();
    if label == "retry" {
        run.attempt += 1;
        let due = unix_ms() + (backoff * run.attempt).as_millis() as u64;
        return move_on(gateway, run, timer, due, None).await;
    }
    audit_step(gateway, &run, &step, &delivery.request, &outcome, started).await;
    if let Err(e) = &outcome
        && step.on_failure.as_deref() == Some("dlq")
    {
        dead_letter_step(gateway, &run, &step, &delivery.request, e).await;
    }
    let result = StepResult {
        started_ms,
        request: delivery.request,
        ..step_result(&step, &run, outcome.map_err(|e| e.message))
    };
    if let Some(error) = &result.error {
        tracing::warn!(chain = %run.chain, chain_id = %run.chain_id, step = %step.name, %error, "chain step failed");
    }
    settle(gateway, run, timer, result, hold).await
}

/// The audit record of a step's last attempt (a retried attempt is followed by another).
async fn audit_step(
    gateway: &Gateway,
    run: &ChainRun,
    step: &ChainStep,
    request: &serde_json::Value,
    outcome: &Result<serde_json::Value, StepError>,
    started: Instant,
) {
    if gateway.audit.is_none() {
        return;
    }
    // A parallel step has no one provider: its record names `parallel` and carries the
    // rendered payloads of every call.
    let call = Call::of_step(step).unwrap_or(Call {
        name: &step.name,
        provider: "parallel",
        action_type: None,
        payload_template: None,
    });
    let action = call_action(run, &call, request.clone());
    let dispatched_at =
        chrono::Utc::now() - chrono::Duration::from_std(started.elapsed()).unwrap_or_default();
    let dispatched_at = chrono::DateTime::from_timestamp_micros(dispatched_at.timestamp_micros())
        .unwrap_or(dispatched_at);
    let result = outcome.as_ref().map(|_| ()).map_err(|e| e.message.clone());
    gateway
        .audit_delivery(
            &action,
            result,
            "chain",
            AuditSource::Chain,
            dispatched_at,
            started,
        )
        .await;
}

/// A failed step with `onFailure: dlq`: its call is kept as a dead letter (replayable with
/// the same idempotency key); the run then ends failed, as with `abort`. A parallel step
/// has no one call to keep: it only ends the run.
async fn dead_letter_step(
    gateway: &Gateway,
    run: &ChainRun,
    step: &ChainStep,
    request: &serde_json::Value,
    error: &StepError,
) {
    let retention = gateway.options.dead_letter_retention;
    let Some(call) = Call::of_step(step).filter(|_| !retention.is_zero()) else {
        return;
    };
    let action = call_action(run, &call, request.clone());
    let failure = ProviderError::new(
        "CHAIN_STEP_FAILED",
        error.message.clone(),
        error.retryable,
        run.attempt + 1,
    );
    let mut entry = DeadLetter::new(&action, &failure, FROM_CHAIN, retention);
    entry.chain_id = Some(run.chain_id.clone());
    entry.chain_step = Some(step.name.clone());
    // Counted and logged inside; the run's record names the failure either way.
    let _ = dead_letter::store(gateway, &entry).await;
}

/// The step's attempts in all and the pause unit between them.
fn retry_of(step: &ChainStep) -> (u32, Duration) {
    match &step.retry {
        Some(r) => (
            r.max_attempts.max(1),
            r.backoff_seconds.map_or(STEP_BACKOFF, Duration::from_secs),
        ),
        None => (STEP_ATTEMPTS, STEP_BACKOFF),
    }
}

/// A cancelled run's `onCancel` call (of the chain that was started), once; its failure
/// is logged, the run ends cancelled either way.
async fn on_cancel(gw: &Gateway, rt: &Runtime, run: &ChainRun) {
    let root = run
        .parents
        .first()
        .map_or(&run.definition, |p| &p.definition);
    let Some(step) = &root.on_cancel else {
        return;
    };
    if let Err(e) = deliver(gw, rt, run, &Call::of(step)).await.outcome {
        tracing::warn!(chain_id = %run.chain_id, error = %e.message, "chain onCancel failed");
    }
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
        provider: step.provider.clone(),
        ..StepResult::default()
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
/// failed step ends its chain unless its `onFailure` is `skip` (`dlq` ends it too, its call
/// kept as a dead letter); a failed sub-chain is a failed step of its parent.
async fn settle(
    gateway: &Gateway,
    mut run: Box<ChainRun>,
    timer: &ClaimedTimer,
    mut result: StepResult,
    hold: Option<Duration>,
) -> Step {
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
        result.skipped = !result.success && skips;
        let body = result.body.clone();
        run.results.push(result);
        if let Some(index) = next {
            run.step = index;
            run.attempt = 0;
            let due = unix_ms() + delay_ms(&run);
            return move_on(gateway, run, timer, due, hold).await;
        }
        let Some(parent) = run.parents.pop() else {
            let event = if chain_failed {
                record::FAILED
            } else {
                record::COMPLETED
            };
            return finish(gateway, &run, event).await.into();
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
            ..StepResult::default()
        };
    }
}

/// Records the run and schedules its next step at `due`, under this claim: held (and run
/// here next) when it is due at once and `hold` is given, else left to the timers.
async fn move_on(
    gateway: &Gateway,
    run: Box<ChainRun>,
    timer: &ClaimedTimer,
    due: u64,
    hold: Option<Duration>,
) -> Step {
    let hold = hold.filter(|_| due <= unix_ms());
    let task = Task::AdvanceChain(run);
    let call = gateway
        .state
        .advance_timer(&timer.id, &timer.claim, due, task.encode(), hold);
    match gateway.state_call(call).await {
        Ok(true) => match (hold, task) {
            (Some(_), Task::AdvanceChain(run)) => Step::Next(run),
            _ => Done::Settled.into(),
        },
        Ok(false) => {
            gateway.metrics.worker_claims_lost.inc();
            tracing::warn!(timer = %timer.id, "chain claim lost after a step: another replica may run it again");
            Done::Settled.into()
        }
        // The step ran but is not recorded: it runs again after the lease.
        Err(e) => Done::from(e).into(),
    }
}

/// The run ended: its record is kept for the configured retention as a timer of its own (due when
/// the retention ends: the worker then removes it), the run's timer completed. A repeat of
/// the last step after a lost claim writes the same record again.
async fn finish(gateway: &Gateway, run: &ChainRun, event: &str) -> Done {
    let now = unix_ms();
    let due = now.saturating_add(gateway.options.chain_retention.as_millis() as u64);
    let record = ChainRecord {
        expires_at: Some(record::time(due)),
        ..ChainRecord::of(run, event, Some(now))
    };
    let chain = record.chain.clone();
    let id = record_timer_id(&run.origin.namespace, &run.origin.tenant, &run.chain_id);
    let task = Task::ChainEnded(Box::new(record));
    let write = gateway.state.schedule_timer(&id, due, task.encode());
    if let Err(e) = gateway.state_call(write).await {
        return e.into();
    }
    gateway
        .metrics
        .chains
        .with_label_values(&[&chain, event])
        .inc();
    if event == record::FAILED || event == record::TIMED_OUT {
        let reason = failure_reason(run, event);
        gateway.chain_activity.failed(&chain, &reason, now);
    }
    tracing::info!(%chain, chain_id = %run.chain_id, steps = run.results.len(), event, "chain run ended");
    Done::Complete
}

/// Why a run failed: its failed step's error, or that it timed out.
fn failure_reason(run: &ChainRun, event: &str) -> String {
    if event == record::TIMED_OUT {
        let step = run
            .definition
            .steps
            .get(run.step)
            .map_or("", |s| s.name.as_str());
        return format!("timed out before step `{step}`");
    }
    run.results
        .iter()
        .rev()
        .find_map(|r| r.error.clone())
        .unwrap_or_else(|| "a step failed".into())
}
