//! Chain runs: `GET /v1/chains` (the runs of a namespace and tenant, running first, then
//! ended ones kept for their retention), `GET /v1/chains/{id}` (a running run from its
//! timer, an ended one from its record) and `POST /v1/chains/{id}/cancel`.

use std::sync::Arc;

use crate::auth::Caller;
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::dispatch::{namespace_ok, params};
use super::error::ApiError;
use super::extract::PathParam;
use super::json;
use crate::pipeline::Gateway;
use crate::state::unix_ms;
use crate::worker::chain_record::{
    self as record, ChainRecord, list_prefix, record_timer_id, run_timer_id,
};
use crate::worker::task::{ChainRun, Task};

/// Runs one listing returns at most.
const MAX_LIMIT: usize = 1000;
/// Longest `reason` / `cancelled_by` kept.
const MAX_CANCEL_TEXT: usize = 1024;

/// Where a run lives: chain ids are unique, runs are kept per namespace and tenant.
#[derive(Debug, Default, Deserialize, IntoParams)]
pub struct RunScope {
    pub namespace: String,
    pub tenant: String,
}

/// Which runs to list.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    pub namespace: String,
    /// All tenants of the namespace when absent.
    pub tenant: Option<String>,
    /// running (with cancelling), completed, failed, cancelled or timed_out.
    pub status: Option<String>,
    /// Only runs of this Chain (its name).
    pub chain: Option<String>,
    /// At most this many (default and maximum 1000).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChainList {
    pub chains: Vec<ChainRecord>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Acteon's cancel body (`namespace`/`tenant` may come as query parameters instead).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct CancelRequest {
    pub namespace: Option<String>,
    pub tenant: Option<String>,
    pub reason: Option<String>,
    pub cancelled_by: Option<String>,
}

/// Chain runs of a namespace (and tenant): running ones first, then ended ones.
#[utoipa::path(get, path = "/v1/chains", params(ListQuery), responses((status = 200, body = ChainList), (status = 400)))]
pub async fn list_chains(
    State(app): State<Arc<AppState>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ChainList>, ApiError> {
    let q = params(query)?;
    namespace_ok(&q.namespace)?;
    let wanted = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) if record::STATUSES.contains(&s) => Some(s),
        Some(s) => {
            return Err(ApiError::invalid(format!(
                "status: `{s}` is not one of {}",
                record::STATUSES.join(", ")
            )));
        }
    };
    let limit = q.limit.unwrap_or(MAX_LIMIT).clamp(1, MAX_LIMIT);
    let (mut phase, mut after) = Cursor::parse(q.cursor.as_deref())?;
    let gw = &app.gateway;
    let mut chains = Vec::new();
    let mut next_cursor = None;
    while let Some(running) = phase {
        let wants_phase = match wanted {
            None => true,
            Some(s) => (s == record::RUNNING || s == record::CANCELLING) == running,
        };
        if wants_phase {
            let prefix = list_prefix(running, &q.namespace, q.tenant.as_deref());
            let room = limit - chains.len();
            let page = gw
                .state_call(gw.state.list_timers(&prefix, after.as_deref(), room))
                .await?;
            let full = page.len() == room;
            let last = page.last().map(|t| t.id.clone());
            chains.extend(
                page.iter()
                    .filter_map(|t| view(&t.payload))
                    .filter(|r| wanted.is_none_or(|s| status_matches(s, &r.status)))
                    .filter(|r| q.chain.as_deref().is_none_or(|c| r.chain_name == c)),
            );
            if full {
                next_cursor = last.map(|id| Cursor::encode(running, &id));
                break;
            }
        }
        phase = running.then_some(false);
        after = None;
    }
    Ok(Json(ChainList {
        chains,
        next_cursor,
    }))
}

/// `running` covers runs being cancelled.
fn status_matches(wanted: &str, status: &str) -> bool {
    wanted == status || (wanted == record::RUNNING && status == record::CANCELLING)
}

/// A page's position: which list (running, then ended) and the last id read.
struct Cursor;

impl Cursor {
    fn encode(running: bool, id: &str) -> String {
        format!("{}{id}", if running { "r:" } else { "e:" })
    }

    /// (list to read from — `Some(true)` running, `Some(false)` ended — and id to start after).
    fn parse(cursor: Option<&str>) -> Result<(Option<bool>, Option<String>), ApiError> {
        let Some(cursor) = cursor.filter(|c| !c.is_empty()) else {
            return Ok((Some(true), None));
        };
        match cursor.split_at_checked(2) {
            Some(("r:", id)) => Ok((Some(true), Some(id.to_owned()))),
            Some(("e:", id)) => Ok((Some(false), Some(id.to_owned()))),
            _ => Err(ApiError::invalid(
                "cursor: not a `next_cursor` of this endpoint",
            )),
        }
    }
}

/// The record a listed timer holds: a running run's, or an ended one's.
fn view(payload: &[u8]) -> Option<ChainRecord> {
    match Task::decode(payload).ok()? {
        Task::AdvanceChain(run) => Some(ChainRecord::of(&run, live_status(&run), None)),
        Task::ChainEnded(record) => Some(*record),
        _ => None,
    }
}

fn live_status(run: &ChainRun) -> &'static str {
    if run.cancelled {
        record::CANCELLING
    } else {
        record::RUNNING
    }
}

/// One chain run: definition version, status, current step, each step's request and result.
#[utoipa::path(get, path = "/v1/chains/{chain_id}", params(RunScope), responses((status = 200, body = ChainRecord), (status = 404)))]
pub async fn get_chain(
    State(app): State<Arc<AppState>>,
    PathParam(chain_id): PathParam,
    scope: Result<Query<RunScope>, QueryRejection>,
) -> Result<Json<ChainRecord>, ApiError> {
    let scope = params(scope)?;
    namespace_ok(&scope.namespace)?;
    let gw = &app.gateway;
    if let Some(run) = running(gw, &scope, &chain_id).await? {
        return Ok(Json(ChainRecord::of(&run, live_status(&run), None)));
    }
    ended(gw, &scope, &chain_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::missing(format!("no chain run `{chain_id}`")))
}

/// Cancels a running chain: no further step runs (a step being delivered finishes), the
/// chain's `onCancel` call is made once. Scope from Acteon's JSON body or the query.
#[utoipa::path(post, path = "/v1/chains/{chain_id}/cancel", params(("namespace" = Option<String>, Query), ("tenant" = Option<String>, Query)), request_body = Option<CancelRequest>, responses((status = 200, body = ChainRecord), (status = 404), (status = 409)))]
pub async fn cancel_chain(
    State(app): State<Arc<AppState>>,
    PathParam(chain_id): PathParam,
    query: Result<Query<CancelRequest>, QueryRejection>,
    caller: Option<Extension<Arc<Caller>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ChainRecord>, ApiError> {
    let query = params(query)?;
    let bytes = json::read_body(&headers, body, app.body_limit, app.body_timeout).await?;
    let req: CancelRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        CancelRequest::default()
    } else {
        json::parse_object(&bytes, "cancel request")?
    };
    let scope = RunScope {
        namespace: req
            .namespace
            .or(query.namespace)
            .ok_or_else(|| ApiError::invalid("namespace: required (in the body or the query)"))?,
        tenant: req
            .tenant
            .or(query.tenant)
            .ok_or_else(|| ApiError::invalid("tenant: required (in the body or the query)"))?,
    };
    namespace_ok(&scope.namespace)?;
    if let Some(Extension(caller)) = &caller {
        caller.check_scope(&scope.namespace, Some(&scope.tenant))?;
    }
    let gw = &app.gateway;
    let Some(mut run) = running(gw, &scope, &chain_id).await? else {
        return match ended(gw, &scope, &chain_id).await? {
            Some(record) => Err(ApiError::conflict(format!(
                "chain run `{chain_id}` already ended: {}",
                record.status
            ))),
            None => Err(ApiError::missing(format!("no chain run `{chain_id}`"))),
        };
    };
    run.cancelled = true;
    run.cancel_reason = bounded(req.reason.or(query.reason));
    run.cancelled_by = bounded(req.cancelled_by.or(query.cancelled_by));
    let record = ChainRecord::of(&run, record::CANCELLING, None);
    // Replacing the timer ends any claim on it: a worker in the middle of a step cannot
    // record it, and the next claim ends the run as cancelled.
    let id = run_timer_id(&scope.namespace, &scope.tenant, &chain_id);
    let payload = Task::AdvanceChain(run).encode();
    gw.state_call(gw.state.schedule_timer(&id, unix_ms(), payload))
        .await?;
    Ok(Json(record))
}

fn bounded(text: Option<String>) -> Option<String> {
    text.map(|mut t| {
        t.truncate(t.floor_char_boundary(MAX_CANCEL_TEXT));
        t
    })
}

async fn running(
    gw: &Gateway,
    scope: &RunScope,
    chain_id: &str,
) -> Result<Option<Box<ChainRun>>, ApiError> {
    let id = run_timer_id(&scope.namespace, &scope.tenant, chain_id);
    let Some((_, payload)) = gw.state_call(gw.state.get_timer(&id)).await? else {
        return Ok(None);
    };
    match Task::decode(&payload) {
        Ok(Task::AdvanceChain(run)) => Ok(Some(run)),
        _ => Ok(None),
    }
}

async fn ended(
    gw: &Gateway,
    scope: &RunScope,
    chain_id: &str,
) -> Result<Option<ChainRecord>, ApiError> {
    let id = record_timer_id(&scope.namespace, &scope.tenant, chain_id);
    let Some((_, payload)) = gw.state_call(gw.state.get_timer(&id)).await? else {
        return Ok(None);
    };
    match Task::decode(&payload) {
        Ok(Task::ChainEnded(record)) => Ok(Some(*record)),
        _ => Ok(None),
    }
}
