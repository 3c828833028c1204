//! `GET /v1/audit`, `GET /v1/audit/{action_id}`, `POST /v1/audit/{action_id}/replay`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;

use crate::auth::Caller;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::dispatch::params;
use super::error::{ApiError, ErrorBody};
use super::extract::PathParam;
use super::json::JsonBody;
use crate::action::{self, Action};
use crate::audit::{
    AuditQuery, AuditRecord, AuditSink, CallerIdentity, Cursor, DEFAULT_LIMIT, MAX_LIMIT,
};
use crate::outcome::ActionOutcome;

/// Longest filter value accepted (names are far shorter).
const MAX_FILTER_LEN: usize = 512;

/// Query parameters of `GET /v1/audit`, all optional. `from` inclusive, `to` exclusive.
#[derive(Debug, Default, Deserialize, IntoParams)]
pub struct AuditParams {
    pub namespace: Option<String>,
    pub tenant: Option<String>,
    pub provider: Option<String>,
    pub action_type: Option<String>,
    /// An outcome label: executed, suppressed, failed, throttled, deduplicated, …
    pub outcome: Option<String>,
    pub matched_rule: Option<String>,
    pub caller: Option<String>,
    /// RFC 3339.
    pub from: Option<String>,
    /// RFC 3339.
    pub to: Option<String>,
    /// 1 to 1000, default 50.
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Records to skip first (Acteon's paging; `offset` + `limit` at most 1000, use
    /// `cursor` beyond).
    pub offset: Option<String>,
}

/// A page of audit records, newest first; `total`, `limit` and `offset` are the fields
/// Acteon's SDKs page with.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    pub records: Vec<AuditRecord>,
    pub count: usize,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<String>,
    /// Records matching up to the end of this page (`offset` + `count`, plus one when a
    /// next page exists): the exact total on the last page, a lower bound before it.
    pub total: usize,
    pub limit: usize,
    pub offset: usize,
}

/// The records of one action id, newest first, with the newest one's fields at the top
/// level (Acteon's SDKs read one record there).
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditOfAction {
    #[serde(flatten)]
    pub latest: AuditRecord,
    pub records: Vec<AuditRecord>,
    pub count: usize,
}

/// What a replay did (`original_action_id`, `new_action_id`, `success`: Acteon's names).
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditReplay {
    /// The new action's id.
    pub action_id: String,
    pub replayed_from: String,
    pub outcome: ActionOutcome,
    pub original_action_id: String,
    pub new_action_id: String,
    /// Whether the replayed action was delivered or parked (not stopped or failed).
    pub success: bool,
}

fn sink(app: &AppState) -> Result<&Arc<AuditSink>, ApiError> {
    app.gateway.audit.as_ref().ok_or(ApiError {
        status: StatusCode::NOT_FOUND,
        code: "AUDIT_DISABLED",
        message: "the audit trail is off on this gateway (--audit off)".into(),
    })
}

fn filter(name: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if v.len() > MAX_FILTER_LEN => Err(ApiError::invalid(format!(
            "{name}: longer than {MAX_FILTER_LEN} bytes"
        ))),
        Some(v) if v.is_empty() => Ok(None),
        v => Ok(v),
    }
}

fn time(name: &str, value: Option<String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .filter(|v| !v.is_empty())
        .map(|v| {
            DateTime::parse_from_rfc3339(&v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::invalid(format!(
                        "{name}: expected an RFC 3339 time (2026-01-31T12:00:00Z)"
                    ))
                })
        })
        .transpose()
}

/// `offset` of the query, or a 400 naming it: at most 1000 - `limit`, never with `cursor`.
fn audit_offset(p: &AuditParams, limit: usize) -> Result<usize, ApiError> {
    let Some(o) = p.offset.as_deref().filter(|o| !o.is_empty()) else {
        return Ok(0);
    };
    let most = MAX_LIMIT - limit;
    match o.parse::<usize>() {
        Ok(_) if p.cursor.as_deref().is_some_and(|c| !c.is_empty()) => Err(ApiError::invalid(
            "offset: not with cursor (a cursor already says where the page starts)",
        )),
        Ok(n) if n <= most => Ok(n),
        _ => Err(ApiError::invalid(format!(
            "offset: expected a whole number from 0 to {most} (offset + limit ≤ {MAX_LIMIT}; page on with cursor)"
        ))),
    }
}

/// The parameters as a query and the records to skip, or a 400 naming the bad one.
fn audit_query(p: AuditParams) -> Result<(AuditQuery, usize), ApiError> {
    let limit = match p.limit.as_deref().filter(|l| !l.is_empty()) {
        None => DEFAULT_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(format!(
                    "limit: expected a whole number from 1 to {MAX_LIMIT}"
                )));
            }
        },
    };
    let offset = audit_offset(&p, limit)?;
    let cursor = match p.cursor.filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(Cursor::decode(&c).ok_or_else(|| {
            ApiError::invalid("cursor: not a cursor this API answered (use next_cursor as is)")
        })?),
    };
    if let Some(ns) = p.namespace.as_deref().filter(|n| !n.is_empty()) {
        super::dispatch::namespace_ok(ns)?;
    }
    let query = AuditQuery {
        namespace: filter("namespace", p.namespace)?,
        tenant: filter("tenant", p.tenant)?,
        provider: filter("provider", p.provider)?,
        action_type: filter("action_type", p.action_type)?,
        outcome: filter("outcome", p.outcome)?,
        matched_rule: filter("matched_rule", p.matched_rule)?,
        caller: filter("caller", p.caller)?,
        from: time("from", p.from)?,
        to: time("to", p.to)?,
        // The skipped records are read and dropped: offset + limit ≤ MAX_LIMIT.
        limit: offset + limit,
        cursor,
    };
    Ok((query, offset))
}

/// Audit records matching the filters, newest first, with keyset paging.
#[utoipa::path(get, path = "/v1/audit", params(AuditParams),
    responses((status = 200, body = AuditList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn list_audit(
    State(app): State<Arc<AppState>>,
    query: Result<Query<AuditParams>, QueryRejection>,
) -> Result<JsonBody<AuditList>, ApiError> {
    let sink = sink(&app)?;
    let (query, offset) = audit_query(params(query)?)?;
    let page = sink
        .store
        .query(&query)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let records: Vec<AuditRecord> = page.records.into_iter().skip(offset).collect();
    let more = page.next_cursor.is_some();
    Ok(JsonBody(AuditList {
        count: records.len(),
        total: offset + records.len() + usize::from(more),
        limit: query.limit - offset,
        offset,
        records,
        next_cursor: page.next_cursor.map(|c| c.encode()),
    }))
}

async fn records_of(sink: &AuditSink, action_id: &str) -> Result<Vec<AuditRecord>, ApiError> {
    if action_id.is_empty() || action_id.len() > MAX_FILTER_LEN {
        return Err(ApiError::invalid(format!(
            "action_id: 1 to {MAX_FILTER_LEN} bytes"
        )));
    }
    let records = sink
        .store
        .get(action_id)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    if records.is_empty() {
        return Err(ApiError::missing(format!(
            "no audit record for action {action_id:?}"
        )));
    }
    Ok(records)
}

/// The records a caller's scope covers (all without authentication); none is a 404, as if
/// the action did not exist, so ids of other namespaces are not revealed.
fn visible(
    records: Vec<AuditRecord>,
    caller: Option<&Arc<Caller>>,
    action_id: &str,
) -> Result<Vec<AuditRecord>, ApiError> {
    let records: Vec<AuditRecord> = match caller {
        None => records,
        Some(c) => records
            .into_iter()
            .filter(|r| c.scope.covers_namespace(&r.namespace) && c.scope.covers_tenant(&r.tenant))
            .collect(),
    };
    if records.is_empty() {
        return Err(ApiError::missing(format!(
            "no audit record of action {action_id:?}"
        )));
    }
    Ok(records)
}

/// Every audit record of one action id, newest first.
#[utoipa::path(get, path = "/v1/audit/{action_id}",
    responses((status = 200, body = AuditOfAction), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn get_audit(
    State(app): State<Arc<AppState>>,
    PathParam(action_id): PathParam,
    caller: Option<Extension<Arc<Caller>>>,
) -> Result<JsonBody<AuditOfAction>, ApiError> {
    let records = visible(
        records_of(sink(&app)?, &action_id).await?,
        caller.as_deref(),
        &action_id,
    )?;
    // `visible` answers at least one record.
    let latest = records
        .first()
        .cloned()
        .ok_or_else(|| ApiError::missing(format!("no audit record of action {action_id:?}")))?;
    Ok(JsonBody(AuditOfAction {
        latest,
        count: records.len(),
        records,
    }))
}

/// Dispatches the action of an audit record again, through the whole pipeline, with a new
/// id and `metadata.replayed_from`. Needs the stored payload (`--audit-store-payload`);
/// redacted fields are replayed as `[REDACTED]`. No dedup key is sent, so the replay is not
/// answered `Deduplicated` by the original's mark.
#[utoipa::path(post, path = "/v1/audit/{action_id}/replay",
    responses((status = 200, body = AuditReplay), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn replay_audit(
    State(app): State<Arc<AppState>>,
    PathParam(action_id): PathParam,
    caller: Option<Extension<Arc<Caller>>>,
    headers: axum::http::HeaderMap,
) -> Result<JsonBody<AuditReplay>, ApiError> {
    let records = visible(
        records_of(sink(&app)?, &action_id).await?,
        caller.as_deref(),
        &action_id,
    )?;
    // The newest record that kept the payload (an older one may predate the flag).
    let Some(record) = records.into_iter().find(|r| r.payload.is_some()) else {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "PAYLOAD_NOT_STORED",
            message: format!(
                "the audit records of action {action_id:?} hold no payload: replay needs \
                 --audit-store-payload when the action was dispatched"
            ),
        });
    };
    let mut metadata: HashMap<String, String> = record.metadata;
    metadata.insert("replayed_from".into(), action_id.clone());
    let new_id = uuid::Uuid::new_v4().to_string();
    let mut action = Action {
        id: new_id.clone(),
        namespace: record.namespace,
        tenant: record.tenant,
        provider: record.provider,
        action_type: record.action_type,
        payload: record.payload.unwrap_or_default(),
        created_at: None,
        metadata,
        dedup_key: None,
        status: None,
        fingerprint: None,
        trace: None,
    };
    // A dispatch like any other: it continues the replay request's trace, if any.
    let opened = crate::trace::incoming(
        &headers,
        crate::trace::Kind::Dispatch,
        app.gateway.options.trace,
    );
    action.trace = opened.ctx.clone();
    crate::trace::record_action(&opened.span, &action);
    action::validate(&action).map_err(|m| ApiError::invalid(format!("replayed action: {m}")))?;
    let caller = caller.map(|Extension(c)| CallerIdentity(c.identity.clone()));
    let outcome = opened
        .run(app.gateway.dispatch_as(action, false, caller.as_ref()))
        .await?;
    let success = !matches!(
        outcome,
        ActionOutcome::Failed(_)
            | ActionOutcome::Suppressed { .. }
            | ActionOutcome::Throttled { .. }
            | ActionOutcome::QuotaExceeded { .. }
            | ActionOutcome::CircuitOpen { .. }
            | ActionOutcome::Deduplicated
    );
    Ok(JsonBody(AuditReplay {
        original_action_id: action_id.clone(),
        new_action_id: new_id.clone(),
        success,
        action_id: new_id,
        replayed_from: action_id,
        outcome,
    }))
}
