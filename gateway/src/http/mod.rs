//! The HTTP API (axum), wire-compatible with Acteon's server.

pub mod dispatch;
pub mod error;
pub mod json;
pub mod ops;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use utoipa::OpenApi;

use crate::pipeline::Gateway;

/// Default limit on request bodies (1 MiB).
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// Shared state of the handlers.
pub struct AppState {
    pub gateway: Arc<Gateway>,
    pub body_limit: usize,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Acteon for Kubernetes gateway",
        description = "Acteon-compatible action dispatch API"
    ),
    paths(
        dispatch::dispatch,
        dispatch::dispatch_batch,
        ops::rules,
        ops::config,
        ops::healthz,
        ops::readyz,
        ops::metrics
    ),
    components(schemas(
        crate::action::Action,
        crate::outcome::ActionOutcome,
        error::ErrorBody,
        dispatch::BatchItem,
        ops::RuleInfo,
        ops::ConfigInfo
    ))
)]
pub struct ApiDoc;

async fn openapi() -> impl IntoResponse {
    axum::Json(ApiDoc::openapi())
}

async fn not_found() -> error::ApiError {
    error::ApiError {
        status: axum::http::StatusCode::NOT_FOUND,
        code: "NOT_FOUND",
        message: "no such endpoint".into(),
    }
}

/// The router with every endpoint.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.body_limit;
    Router::new()
        .route("/v1/dispatch", post(dispatch::dispatch))
        .route("/v1/dispatch/batch", post(dispatch::dispatch_batch))
        .route("/v1/rules", get(ops::rules))
        .route("/v1/config", get(ops::config))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/api-doc/openapi.json", get(openapi))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}
