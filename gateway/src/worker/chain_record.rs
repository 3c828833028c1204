//! A chain run as the API shows it (`GET /v1/chains`, `GET /v1/chains/{id}`): built from
//! the run's timer while it runs, and kept as a timer of its own once it ended — due when
//! its retention ends, when the worker removes it. Field names follow Acteon's chain API
//! (`chain_name`, `current_step` index, `total_steps`, `steps[].response_body`, RFC 3339
//! times), so its SDKs read these answers; the rest is this gateway's own detail.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::task::{ChainRun, StepResult};
use crate::rules::key::state_key;

/// How long an ended run stays listed and readable, unless configured otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Statuses of a run. `running` and `cancelling` are live; the rest are ends.
pub const RUNNING: &str = "running";
pub const CANCELLING: &str = "cancelling";
pub const COMPLETED: &str = "completed";
pub const FAILED: &str = "failed";
pub const CANCELLED: &str = "cancelled";
pub const TIMED_OUT: &str = "timed_out";
pub const STATUSES: [&str; 6] = [RUNNING, CANCELLING, COMPLETED, FAILED, CANCELLED, TIMED_OUT];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChainRecord {
    pub chain_id: String,
    /// Name of the Chain that was started.
    pub chain_name: String,
    /// `namespace/name` of that Chain (or `name` when shared).
    pub chain: String,
    pub namespace: String,
    pub tenant: String,
    /// The definition's version the run uses (the Chain's generation, when known).
    pub definition_version: Option<i64>,
    /// running, cancelling, completed, failed, cancelled, timed_out.
    pub status: String,
    /// Index of the started chain's step the run is at (or ended at).
    pub current_step: usize,
    /// Name of the step the run is at (of a sub-chain while one runs), while running.
    pub current_step_name: Option<String>,
    /// Steps of the started chain.
    pub total_steps: usize,
    /// Each step run, in order (sub-chain steps where they ran), then the pending one.
    pub steps: Vec<StepView>,
    /// Names of the steps run, in order: the branch path taken.
    pub execution_path: Vec<String>,
    pub origin_action_id: String,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the run times out (while running) or its record is removed (once ended).
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,
    /// Why the run failed (the failed step's error), when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One step of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    pub name: String,
    pub provider: String,
    /// completed, failed, skipped (failed, `onFailure: skip`), pending.
    pub status: String,
    /// The rendered payload sent.
    #[schema(value_type = Object)]
    pub request: Value,
    #[schema(value_type = Object)]
    pub response_body: Option<Value>,
    pub error: Option<String>,
    pub attempts: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

pub use crate::state::time_of_ms as time;

fn step_view(r: &StepResult) -> StepView {
    let status = match (r.success, r.skipped) {
        (true, _) => "completed",
        (false, true) => "skipped",
        (false, false) => "failed",
    };
    StepView {
        name: r.name.clone(),
        provider: r.provider.clone().unwrap_or_default(),
        status: status.to_owned(),
        request: r.request.clone(),
        response_body: r.success.then(|| r.body.clone()),
        error: r.error.clone(),
        attempts: r.attempts,
        started_at: (r.started_ms > 0).then(|| time(r.started_ms)),
        completed_at: Some(time(r.finished_ms)),
    }
}

impl ChainRecord {
    /// The record of `run` with `status`; `ended_ms` once it ended.
    pub fn of(run: &ChainRun, status: &str, ended_ms: Option<u64>) -> ChainRecord {
        let root = run.parents.first();
        let chain = root.map_or(&run.chain, |p| &p.chain);
        let root_def = root.map_or(&run.definition, |p| &p.definition);
        let current_step = root.map_or(run.step, |p| p.step);
        let mut steps: Vec<StepView> = run.results.iter().map(step_view).collect();
        let pending = run.definition.steps.get(run.step);
        let current_step_name = match (ended_ms, pending) {
            (None, Some(step)) => {
                steps.push(StepView {
                    name: step.name.clone(),
                    provider: step.provider.clone().unwrap_or_default(),
                    status: "pending".into(),
                    request: Value::Null,
                    response_body: None,
                    error: None,
                    attempts: run.attempt,
                    started_at: None,
                    completed_at: None,
                });
                Some(step.name.clone())
            }
            _ => None,
        };
        let updated_ms = ended_ms
            .or_else(|| run.results.last().map(|r| r.finished_ms))
            .unwrap_or(run.started_ms);
        let error = (status == FAILED)
            .then(|| run.results.iter().rev().find_map(|r| r.error.clone()))
            .flatten();
        ChainRecord {
            chain_id: run.chain_id.clone(),
            chain_name: chain.rsplit('/').next().unwrap_or(chain).to_owned(),
            chain: chain.clone(),
            namespace: run.origin.namespace.clone(),
            tenant: run.origin.tenant.clone(),
            definition_version: run.generation,
            status: status.to_owned(),
            current_step,
            current_step_name,
            total_steps: root_def.steps.len(),
            steps,
            execution_path: run.results.iter().map(|r| r.name.clone()).collect(),
            origin_action_id: run.origin.id.clone(),
            started_at: time(run.started_ms),
            updated_at: time(updated_ms),
            // An ended run's: when its record goes (set by whoever keeps it).
            expires_at: ended_ms.is_none().then(|| time(run.deadline_ms)),
            cancel_reason: run.cancel_reason.clone(),
            cancelled_by: run.cancelled_by.clone(),
            error,
        }
    }
}

/// The timer of a running run.
pub fn run_timer_id(namespace: &str, tenant: &str, chain_id: &str) -> String {
    format!("chain:{}", state_key("c", &[namespace, tenant, chain_id]))
}

/// The timer that keeps an ended run's record until its retention ends.
pub fn record_timer_id(namespace: &str, tenant: &str, chain_id: &str) -> String {
    format!(
        "chain-ended:{}",
        state_key("c", &[namespace, tenant, chain_id])
    )
}

/// The id prefix of the running runs (`running: true`) or the ended records of a namespace,
/// and of one tenant when given.
pub fn list_prefix(running: bool, namespace: &str, tenant: Option<&str>) -> String {
    let key = match tenant {
        Some(t) => state_key("c", &[namespace, t]),
        None => state_key("c", &[namespace]),
    };
    let kind = if running { "chain" } else { "chain-ended" };
    format!("{kind}:{key}:")
}

/// Id prefix of every running run (the census of running chains).
pub const ALL_RUNNING: &str = "chain:c:";
