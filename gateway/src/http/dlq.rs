//! Dead letters (`/v1/dlq`): list, read, replay (one or by filter), delete; and Acteon's
//! `GET /v1/dlq/stats` and `POST /v1/dlq/drain`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::dispatch::{namespace_ok, params};
use super::error::ApiError;
use super::extract::PathParam;
use crate::dead_letter::{self, DeadLetter, list_prefix, replay_lock, timer_id};
use crate::outcome::ActionOutcome;
use crate::pipeline::Gateway;
use crate::worker::task::Task;

/// Entries one listing (or one bulk replay, or one drain) handles at most.
const MAX_LIMIT: usize = 1000;
/// Entries `stats` counts at most.
const MAX_COUNTED: usize = 100_000;
/// How long a replay holds its entry against a second replay.
const REPLAY_LOCK: Duration = Duration::from_secs(120);

/// Which entries.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default)]
pub struct DlqFilter {
    /// All namespaces when absent (then `tenant` is ignored).
    pub namespace: Option<String>,
    pub tenant: Option<String>,
    pub provider: Option<String>,
    pub action_type: Option<String>,
    /// `dispatch` or `chain`.
    pub source: Option<String>,
    /// At most this many (default and maximum 1000).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl DlqFilter {
    fn prefix(&self) -> Result<String, ApiError> {
        if let Some(ns) = &self.namespace {
            namespace_ok(ns)?;
        }
        let tenant = self.namespace.as_ref().and(self.tenant.as_deref());
        Ok(list_prefix(self.namespace.as_deref(), tenant))
    }

    fn keeps(&self, e: &DeadLetter) -> bool {
        let is = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        is(&self.provider, &e.provider)
            && is(&self.action_type, &e.action_type)
            && is(&self.source, &e.source)
    }

    fn limit(&self) -> usize {
        self.limit.unwrap_or(MAX_LIMIT).clamp(1, MAX_LIMIT)
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DlqList {
    pub entries: Vec<DeadLetter>,
    pub count: usize,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Where an entry lives.
#[derive(Debug, Deserialize, IntoParams)]
pub struct EntryScope {
    pub namespace: String,
    pub tenant: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayResult {
    pub id: String,
    /// The provider's answer: `Executed` (the entry is removed) or `Failed` (it is kept,
    /// with the new error and attempts).
    pub outcome: ActionOutcome,
    pub removed: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BulkReplay {
    pub replayed: usize,
    pub failed: usize,
    /// Entries another replay held.
    pub busy: usize,
    pub results: Vec<ReplayResult>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DlqStats {
    pub enabled: bool,
    pub count: usize,
}

/// Dead letters matching the filter, oldest first within a namespace and tenant.
#[utoipa::path(get, path = "/v1/dlq", params(DlqFilter), responses((status = 200, body = DlqList), (status = 400)))]
pub async fn list_dlq(
    State(app): State<Arc<AppState>>,
    query: Result<Query<DlqFilter>, QueryRejection>,
) -> Result<Json<DlqList>, ApiError> {
    let filter = params(query)?;
    let (entries, next_cursor) = page(&app.gateway, &filter).await?;
    Ok(Json(DlqList {
        count: entries.len(),
        entries: entries.into_iter().map(|(_, e)| e).collect(),
        next_cursor,
    }))
}

/// One page: (timer id, entry) of the matching entries, and the cursor after it.
async fn page(
    gw: &Gateway,
    filter: &DlqFilter,
) -> Result<(Vec<(String, DeadLetter)>, Option<String>), ApiError> {
    let prefix = filter.prefix()?;
    let limit = filter.limit();
    let after = filter.cursor.as_deref().filter(|c| !c.is_empty());
    let timers = gw
        .state_call(gw.state.list_timers(&prefix, after, limit))
        .await?;
    let next = (timers.len() == limit)
        .then(|| timers.last().map(|t| t.id.clone()))
        .flatten();
    let entries = timers
        .into_iter()
        .filter_map(|t| Some((t.id, dead_letter::decode(&t.payload)?)))
        .filter(|(_, e)| filter.keeps(e))
        .collect();
    Ok((entries, next))
}

/// One dead letter.
#[utoipa::path(get, path = "/v1/dlq/{id}", params(EntryScope), responses((status = 200, body = DeadLetter), (status = 404)))]
pub async fn get_dlq(
    State(app): State<Arc<AppState>>,
    PathParam(id): PathParam,
    scope: Result<Query<EntryScope>, QueryRejection>,
) -> Result<Json<DeadLetter>, ApiError> {
    let timer = entry_timer(scope, &id)?;
    let gw = &app.gateway;
    read(gw, &timer)
        .await?
        .map(Json)
        .ok_or_else(|| no_entry(&id))
}

/// Removes a dead letter.
#[utoipa::path(delete, path = "/v1/dlq/{id}", params(EntryScope), responses((status = 200, body = DeadLetter), (status = 404)))]
pub async fn delete_dlq(
    State(app): State<Arc<AppState>>,
    PathParam(id): PathParam,
    scope: Result<Query<EntryScope>, QueryRejection>,
) -> Result<Json<DeadLetter>, ApiError> {
    let timer = entry_timer(scope, &id)?;
    let gw = &app.gateway;
    let entry = read(gw, &timer).await?.ok_or_else(|| no_entry(&id))?;
    if !gw.state_call(gw.state.delete_timer(&timer)).await? {
        return Err(no_entry(&id));
    }
    count(gw, &entry, "deleted");
    Ok(Json(entry))
}

/// Delivers a dead letter again through its provider (its retries included): removed on
/// success, kept with the new error otherwise. 409 while another replay of it runs.
#[utoipa::path(post, path = "/v1/dlq/{id}/replay", params(EntryScope), responses((status = 200, body = ReplayResult), (status = 404), (status = 409)))]
pub async fn replay_dlq(
    State(app): State<Arc<AppState>>,
    PathParam(id): PathParam,
    scope: Result<Query<EntryScope>, QueryRejection>,
) -> Result<Json<ReplayResult>, ApiError> {
    let timer = entry_timer(scope, &id)?;
    match replay(&app.gateway, &timer).await? {
        Replayed::Done(result) => Ok(Json(result)),
        Replayed::Busy => Err(ApiError::conflict(format!(
            "dead letter `{id}` is being replayed"
        ))),
        Replayed::Gone => Err(no_entry(&id)),
    }
}

/// Replays the entries matching the filter (one page of them), one after the other.
#[utoipa::path(post, path = "/v1/dlq/replay", params(DlqFilter), responses((status = 200, body = BulkReplay), (status = 400)))]
pub async fn replay_many(
    State(app): State<Arc<AppState>>,
    query: Result<Query<DlqFilter>, QueryRejection>,
) -> Result<Json<BulkReplay>, ApiError> {
    let filter = params(query)?;
    let gw = &app.gateway;
    let (entries, _) = page(gw, &filter).await?;
    let mut out = BulkReplay {
        replayed: 0,
        failed: 0,
        busy: 0,
        results: Vec::new(),
    };
    for (timer, _) in entries {
        match replay(gw, &timer).await? {
            Replayed::Done(r) => {
                if r.removed {
                    out.replayed += 1;
                } else {
                    out.failed += 1;
                }
                out.results.push(r);
            }
            Replayed::Busy => out.busy += 1,
            Replayed::Gone => {}
        }
    }
    Ok(Json(out))
}

/// Acteon's DLQ summary: whether dead letters are kept, and how many there are.
#[utoipa::path(get, path = "/v1/dlq/stats", responses((status = 200, body = DlqStats)))]
pub async fn dlq_stats(State(app): State<Arc<AppState>>) -> Result<Json<DlqStats>, ApiError> {
    let gw = &app.gateway;
    let mut count = 0;
    let mut after: Option<String> = None;
    while count < MAX_COUNTED {
        let page = gw
            .state_call(
                gw.state
                    .list_timers(&list_prefix(None, None), after.as_deref(), MAX_LIMIT),
            )
            .await?;
        count += page.len();
        if page.len() < MAX_LIMIT {
            break;
        }
        after = page.last().map(|t| t.id.clone());
    }
    Ok(Json(DlqStats {
        enabled: !gw.options.dead_letter_retention.is_zero(),
        count,
    }))
}

/// Acteon's drain: removes and returns dead letters (up to 1000 per call).
#[utoipa::path(post, path = "/v1/dlq/drain", responses((status = 200, body = DlqList)))]
pub async fn drain_dlq(State(app): State<Arc<AppState>>) -> Result<Json<DlqList>, ApiError> {
    let gw = &app.gateway;
    let (entries, _) = page(gw, &DlqFilter::default()).await?;
    let mut drained = Vec::with_capacity(entries.len());
    for (timer, entry) in entries {
        if gw.state_call(gw.state.delete_timer(&timer)).await? {
            count(gw, &entry, "deleted");
            drained.push(entry);
        }
    }
    Ok(Json(DlqList {
        count: drained.len(),
        entries: drained,
        next_cursor: None,
    }))
}

enum Replayed {
    Done(ReplayResult),
    Busy,
    Gone,
}

async fn replay(gw: &Gateway, timer: &str) -> Result<Replayed, ApiError> {
    let owner = uuid::Uuid::now_v7().to_string();
    let lock = replay_lock(timer);
    if !gw
        .state_call(gw.state.try_lock(&lock, &owner, REPLAY_LOCK))
        .await?
    {
        return Ok(Replayed::Busy);
    }
    let result = replay_locked(gw, timer).await;
    let _ = gw.state_call(gw.state.unlock(&lock, &owner)).await;
    result
}

/// Under the entry's replay lock: delivers, then removes the entry or records the failure.
async fn replay_locked(gw: &Gateway, timer: &str) -> Result<Replayed, ApiError> {
    let Some(mut entry) = read(gw, timer).await? else {
        return Ok(Replayed::Gone);
    };
    let rt = gw.config.load();
    let trace = crate::trace::replay_of(&entry.action, gw.options.trace);
    let delivered = trace
        .run(gw.call_provider(&rt, &entry.namespace, &entry.provider, &entry.action))
        .await
        .into_result(&entry.provider);
    let id = entry.id.clone();
    match delivered {
        Ok(response) => {
            gw.state_call(gw.state.delete_timer(timer)).await?;
            count(gw, &entry, "replayed");
            Ok(Replayed::Done(ReplayResult {
                id,
                outcome: ActionOutcome::Executed(response),
                removed: true,
            }))
        }
        Err(e) => {
            entry.failed_again(&e);
            let task = Task::DeadLetter(Box::new(entry.clone()));
            gw.state_call(
                gw.state
                    .schedule_timer(timer, entry.expires_ms, task.encode()),
            )
            .await?;
            count(gw, &entry, "replay_failed");
            Ok(Replayed::Done(ReplayResult {
                id,
                outcome: ActionOutcome::failed(&e.code, e.message, e.retryable, e.attempts),
                removed: false,
            }))
        }
    }
}

/// The timer of entry `id` in the (checked) scope of the query.
fn entry_timer(
    scope: Result<Query<EntryScope>, QueryRejection>,
    id: &str,
) -> Result<String, ApiError> {
    let scope = params(scope)?;
    namespace_ok(&scope.namespace)?;
    Ok(timer_id(&scope.namespace, &scope.tenant, id))
}

async fn read(gw: &Gateway, timer: &str) -> Result<Option<DeadLetter>, ApiError> {
    let found = gw.state_call(gw.state.get_timer(timer)).await?;
    Ok(found.and_then(|(_, payload)| dead_letter::decode(&payload)))
}

fn count(gw: &Gateway, entry: &DeadLetter, result: &str) {
    gw.metrics
        .dead_letters
        .with_label_values(&[entry.provider.as_str(), entry.source.as_str(), result])
        .inc();
}

fn no_entry(id: &str) -> ApiError {
    ApiError::missing(format!("no dead letter `{id}`"))
}
