//! `POST /v1/dispatch` and `POST /v1/dispatch/batch`.

use std::sync::Arc;

use axum::body::HttpBody;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use utoipa::IntoParams;

use super::AppState;
use super::auth;
use super::error::{ApiError, ErrorBody, ItemError};
use super::json::{self, JsonBody};
use crate::action::{self, Action};
use crate::audit::CallerIdentity;
use crate::auth::Caller;
use crate::outcome::ActionOutcome;
use crate::trace::{self, TraceContext};

/// Largest batch accepted.
pub const MAX_BATCH: usize = 1000;

/// Batch items dispatched at once.
const BATCH_CONCURRENCY: usize = 64;

#[derive(Debug, Deserialize, IntoParams)]
pub struct DispatchParams {
    /// Evaluate rules and report the verdict without side effects.
    #[serde(default)]
    pub dry_run: bool,
}

/// Query parameters, or the JSON error naming the bad one (`?dry_run=maybe`).
/// A query string, or a 400 naming what is wrong with it.
/// A namespace parameter, checked as a dispatch's would be.
pub(super) fn namespace_ok(namespace: &str) -> Result<(), ApiError> {
    crate::action::check_namespace(namespace)
        .map_err(|e| ApiError::invalid(format!("namespace: {e}")))
}

pub(super) fn params<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(p)| p)
        .map_err(|r| ApiError::invalid(format!("invalid query: {}", r.body_text())))
}

fn parse_action(bytes: &[u8], what: &str, app: &AppState) -> Result<Action, ApiError> {
    let action: Action = json::parse_object(bytes, what).inspect_err(|_| {
        app.gateway
            .metrics
            .bad_requests
            .with_label_values(&["invalid_json"])
            .inc()
    })?;
    action::validate(&action).map_err(|m| {
        app.gateway
            .metrics
            .bad_requests
            .with_label_values(&["invalid_action"])
            .inc();
        ApiError::invalid(format!("invalid {what}: {m}"))
    })?;
    Ok(action)
}

/// Dispatch one action.
#[utoipa::path(post, path = "/v1/dispatch", params(DispatchParams), request_body = Action,
    responses((status = 200, body = ActionOutcome), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn dispatch(
    State(app): State<Arc<AppState>>,
    query: Result<Query<DispatchParams>, QueryRejection>,
    request: Request,
) -> Result<JsonBody<ActionOutcome>, ApiError> {
    dispatch_request(&app, query, request).await
}

/// The handler above on a whole request. The server calls it directly for
/// `POST /v1/dispatch`, without the router (see `serve.rs`), so it must keep to what the
/// handler may see: the query (parsed as axum's `Query` does), the headers and the body.
pub async fn dispatch_request<B>(
    app: &AppState,
    query: Result<Query<DispatchParams>, QueryRejection>,
    request: Request<B>,
) -> Result<JsonBody<ActionOutcome>, ApiError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let policy = app.gateway.options.trace;
    let opened = trace::incoming(request.headers(), trace::Kind::Dispatch, policy);
    let (span, ctx) = (opened.span.clone(), opened.ctx.clone());
    let result = opened
        .run(dispatch_traced(app, query, request, ctx, &span))
        .await;
    trace::record_outcome(&span, result.as_ref().ok().map(|o| o.0.label()));
    result
}

/// [`dispatch_request`] inside the dispatch's span: the action carries the span's context.
async fn dispatch_traced<B>(
    app: &AppState,
    query: Result<Query<DispatchParams>, QueryRejection>,
    request: Request<B>,
    ctx: Option<TraceContext>,
    span: &tracing::Span,
) -> Result<JsonBody<ActionOutcome>, ApiError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let params = params(query)?;
    let (parts, body) = request.into_parts();
    let caller = auth::dispatch_caller(app, &parts.headers).await?;
    let bytes = json::read_body(&parts.headers, body, app.body_limit, app.body_timeout).await?;
    let mut action = parse_action(&bytes, "action", app)?;
    action.trace = ctx;
    trace::record_action(span, &action);
    in_scope(app, caller.as_deref(), &action)?;
    let identity = caller.as_ref().map(|c| CallerIdentity(c.identity.clone()));
    Ok(JsonBody(
        app.gateway
            .dispatch_as(action, params.dry_run, identity.as_ref())
            .await?,
    ))
}

/// The 403 of an action outside its caller's scope (nothing to check without auth).
fn in_scope(app: &AppState, caller: Option<&Caller>, action: &Action) -> Result<(), ApiError> {
    let Some(caller) = caller else {
        return Ok(());
    };
    caller
        .check_scope(&action.namespace, Some(&action.tenant))
        .inspect_err(|_| {
            app.gateway
                .metrics
                .auth
                .with_label_values(&["forbidden"])
                .inc();
        })
}

/// One batch result: an outcome, or `{"error": {"code", "message", "retryable"}}` for that
/// item, as Acteon's SDKs parse it.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum BatchItem {
    Outcome(ActionOutcome),
    Error { error: ItemError },
}

impl From<ApiError> for BatchItem {
    fn from(e: ApiError) -> BatchItem {
        BatchItem::Error { error: e.item() }
    }
}

/// Dispatch up to 1000 actions; results come back in request order.
#[utoipa::path(post, path = "/v1/dispatch/batch", params(DispatchParams), request_body = Vec<Action>,
    responses((status = 200, body = Vec<BatchItem>), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn dispatch_batch(
    State(app): State<Arc<AppState>>,
    query: Result<Query<DispatchParams>, QueryRejection>,
    request: Request,
) -> Result<JsonBody<Vec<BatchItem>>, ApiError> {
    let policy = app.gateway.options.trace;
    let opened = trace::incoming(request.headers(), trace::Kind::Batch, policy);
    let (span, ctx) = (opened.span.clone(), opened.ctx.clone());
    let result = opened.run(batch_traced(&app, query, request, ctx)).await;
    trace::record_batch(&span, result.as_ref().ok().map(|r| r.0.len()));
    result
}

/// [`dispatch_batch`] inside the batch's span: each action gets a span of its own under it.
async fn batch_traced(
    app: &AppState,
    query: Result<Query<DispatchParams>, QueryRejection>,
    request: Request,
    batch: Option<TraceContext>,
) -> Result<JsonBody<Vec<BatchItem>>, ApiError> {
    let params = params(query)?;
    let (parts, body) = request.into_parts();
    let caller = auth::dispatch_caller(app, &parts.headers).await?;
    let bytes = json::read_body(&parts.headers, body, app.body_limit, app.body_timeout).await?;
    let items: Vec<Box<RawValue>> =
        json::parse(&bytes, "batch (expected a JSON array of actions)")?;
    if items.len() > MAX_BATCH {
        app.gateway
            .metrics
            .bad_requests
            .with_label_values(&["batch_too_large"])
            .inc();
        return Err(ApiError::invalid(format!(
            "batch has {} actions; the limit is {MAX_BATCH}",
            items.len()
        )));
    }
    let identity = caller.as_ref().map(|c| CallerIdentity(c.identity.clone()));
    let (caller, identity) = (caller.as_deref(), identity.as_ref());
    let dry_run = params.dry_run;
    let batch = batch.as_ref();
    let results: Vec<BatchItem> = futures::stream::iter(items.into_iter().enumerate())
        .map(|(i, raw)| async move {
            let mut action = match parse_action(raw.get().as_bytes(), &format!("action [{i}]"), app)
                .and_then(|a| in_scope(app, caller, &a).map(|()| a))
            {
                Ok(a) => a,
                Err(e) => return BatchItem::from(e),
            };
            let opened = trace::under(trace::Kind::Dispatch, batch);
            let span = opened.span.clone();
            action.trace = opened.ctx.clone();
            trace::record_action(&span, &action);
            let dispatched = opened.run(app.gateway.dispatch_as(action, dry_run, identity));
            let item = match dispatched.await {
                Ok(o) => BatchItem::Outcome(o),
                Err(e) => BatchItem::from(ApiError::from(e)),
            };
            let label = match &item {
                BatchItem::Outcome(o) => Some(o.label()),
                BatchItem::Error { .. } => None,
            };
            trace::record_outcome(&span, label);
            item
        })
        .buffered(BATCH_CONCURRENCY)
        .collect()
        .await;
    Ok(JsonBody(results))
}
