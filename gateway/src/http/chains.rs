//! Chain runs: `GET /v1/chains/{id}` (a running run from its timer, a finished one from
//! its record) and `POST /v1/chains/{id}/cancel`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::dispatch::params;
use super::error::ApiError;
use crate::pipeline::Gateway;
use crate::rules::chain::{ChainRecord, record_key, timer_id};
use crate::state::unix_ms;
use crate::worker::task::{ChainRun, Task};

/// Where a run lives: chain ids are unique, runs are kept per namespace and tenant.
#[derive(Debug, Deserialize, IntoParams)]
pub struct RunScope {
    pub namespace: String,
    pub tenant: String,
}

/// One chain run: definition version, status, current step, each step's result.
#[utoipa::path(get, path = "/v1/chains/{chain_id}", params(RunScope), responses((status = 200, body = ChainRecord), (status = 404)))]
pub async fn get_chain(
    State(app): State<Arc<AppState>>,
    Path(chain_id): Path<String>,
    scope: Result<Query<RunScope>, QueryRejection>,
) -> Result<Json<ChainRecord>, ApiError> {
    let scope = checked(params(scope)?)?;
    let gw = &app.gateway;
    if let Some(run) = running(gw, &scope, &chain_id).await? {
        let status = if run.cancelled {
            "cancelling"
        } else {
            "running"
        };
        return Ok(Json(ChainRecord::of(&run, status, None)));
    }
    finished(gw, &scope, &chain_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::missing(format!("no chain run `{chain_id}`")))
}

/// Cancels a running chain: no further step runs (a step being delivered finishes).
#[utoipa::path(post, path = "/v1/chains/{chain_id}/cancel", params(RunScope), responses((status = 200, body = ChainRecord), (status = 404), (status = 409)))]
pub async fn cancel_chain(
    State(app): State<Arc<AppState>>,
    Path(chain_id): Path<String>,
    scope: Result<Query<RunScope>, QueryRejection>,
) -> Result<Json<ChainRecord>, ApiError> {
    let scope = checked(params(scope)?)?;
    let gw = &app.gateway;
    let Some(mut run) = running(gw, &scope, &chain_id).await? else {
        return match finished(gw, &scope, &chain_id).await? {
            Some(record) => Err(ApiError::conflict(format!(
                "chain run `{chain_id}` already ended: {}",
                record.status
            ))),
            None => Err(ApiError::missing(format!("no chain run `{chain_id}`"))),
        };
    };
    run.cancelled = true;
    let record = ChainRecord::of(&run, "cancelling", None);
    // Replacing the timer ends any claim on it: a worker in the middle of a step cannot
    // record it, and the next claim ends the run as cancelled.
    let id = timer_id(&scope.namespace, &scope.tenant, &chain_id);
    let payload = Task::AdvanceChain(run).encode();
    gw.state_call(gw.state.schedule_timer(&id, unix_ms(), payload))
        .await?;
    Ok(Json(record))
}

fn checked(scope: RunScope) -> Result<RunScope, ApiError> {
    crate::action::check_namespace(&scope.namespace)
        .map_err(|e| ApiError::invalid(format!("namespace: {e}")))?;
    Ok(scope)
}

async fn running(
    gw: &Gateway,
    scope: &RunScope,
    chain_id: &str,
) -> Result<Option<Box<ChainRun>>, ApiError> {
    let id = timer_id(&scope.namespace, &scope.tenant, chain_id);
    let Some((_, payload)) = gw.state_call(gw.state.get_timer(&id)).await? else {
        return Ok(None);
    };
    match Task::decode(&payload) {
        Ok(Task::AdvanceChain(run)) => Ok(Some(run)),
        _ => Ok(None),
    }
}

async fn finished(
    gw: &Gateway,
    scope: &RunScope,
    chain_id: &str,
) -> Result<Option<ChainRecord>, ApiError> {
    let key = record_key(&scope.namespace, &scope.tenant, chain_id);
    let Some(stored) = gw.state_call(gw.state.get(&key)).await? else {
        return Ok(None);
    };
    Ok(serde_json::from_slice(&stored.value).ok())
}
