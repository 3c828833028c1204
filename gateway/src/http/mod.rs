//! The HTTP API (axum), wire-compatible with Acteon's server.

pub mod audit;
pub mod auth;
pub mod breakers;
pub mod chains;
pub mod conn;
pub mod dispatch;
pub mod dlq;
pub mod error;
pub mod extract;
pub mod json;
pub mod lifecycle;
pub mod ops;
pub mod parked;
pub mod quotas;
pub mod serve;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use utoipa::OpenApi;

use crate::pipeline::Gateway;

/// Default limit on request bodies (1 MiB).
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// Default bound on reading a request body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared state of the handlers.
pub struct AppState {
    pub gateway: Arc<Gateway>,
    pub body_limit: usize,
    pub body_timeout: Duration,
    pub lifecycle: Arc<lifecycle::Lifecycle>,
    /// Who may call (`--auth on`); `None` lets everyone in.
    pub auth: Option<Arc<crate::auth::Authenticator>>,
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
        ops::health,
        ops::readyz,
        ops::metrics,
        breakers::list,
        breakers::trip,
        breakers::reset,
        breakers::health,
        parked::list_groups,
        parked::get_group,
        parked::flush_group,
        parked::list_events,
        parked::get_event,
        parked::transition,
        chains::list_chains,
        dlq::list_dlq,
        dlq::get_dlq,
        dlq::delete_dlq,
        dlq::replay_dlq,
        dlq::replay_many,
        dlq::dlq_stats,
        dlq::drain_dlq,
        chains::get_chain,
        chains::cancel_chain,
        audit::list_audit,
        audit::get_audit,
        audit::replay_audit,
        quotas::list_quotas
    ),
    components(schemas(
        crate::action::Action,
        crate::outcome::ActionOutcome,
        error::ErrorBody,
        error::ItemError,
        dispatch::BatchItem,
        ops::HealthInfo,
        ops::BackendHealth,
        ops::RuleInfo,
        ops::ConfigInfo,
        breakers::CircuitBreakerStatus,
        breakers::CircuitBreakerList,
        breakers::CircuitBreakerAction,
        breakers::ProviderHealth,
        breakers::ProviderHealthList,
        parked::GroupView,
        parked::EventView,
        parked::TransitionRequest,
        crate::worker::chain_record::ChainRecord,
        crate::worker::chain_record::StepView,
        chains::ChainList,
        crate::dead_letter::DeadLetter,
        dlq::DlqList,
        dlq::ReplayResult,
        dlq::BulkReplay,
        dlq::DlqStats,
        chains::CancelRequest,
        crate::audit::AuditRecord,
        audit::AuditList,
        audit::AuditOfAction,
        audit::AuditReplay
    ))
)]
pub struct ApiDoc;

async fn openapi() -> impl IntoResponse {
    axum::Json(ApiDoc::openapi())
}

async fn not_found() -> error::ApiError {
    error::ApiError::no_such_endpoint()
}

async fn method_not_allowed() -> error::ApiError {
    error::ApiError::method_not_allowed()
}

/// The probes and metrics alone, never authenticated (`--probes-listen`).
pub fn probes_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/health", get(ops::health))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .with_state(state)
}

/// The router with every endpoint. Bodies are read by the handlers (bounded in size and
/// time, see [`json::read_body`]); every error, 404 and 405 included, is a JSON body.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/dispatch", post(dispatch::dispatch))
        .route("/v1/dispatch/batch", post(dispatch::dispatch_batch))
        .route("/v1/rules", get(ops::rules))
        .route("/v1/groups", get(parked::list_groups))
        .route(
            "/v1/groups/{key}",
            get(parked::get_group).delete(parked::flush_group),
        )
        .route("/v1/events", get(parked::list_events))
        .route("/v1/events/{fingerprint}", get(parked::get_event))
        .route(
            "/v1/events/{fingerprint}/transition",
            axum::routing::put(parked::transition),
        )
        .route("/v1/chains", get(chains::list_chains))
        .route("/v1/dlq", get(dlq::list_dlq))
        .route("/v1/dlq/stats", get(dlq::dlq_stats))
        .route("/v1/dlq/drain", post(dlq::drain_dlq))
        .route("/v1/dlq/replay", post(dlq::replay_many))
        .route("/v1/dlq/{id}", get(dlq::get_dlq).delete(dlq::delete_dlq))
        .route("/v1/dlq/{id}/replay", post(dlq::replay_dlq))
        .route("/v1/chains/{chain_id}", get(chains::get_chain))
        .route("/v1/chains/{chain_id}/cancel", post(chains::cancel_chain))
        .route("/v1/audit", get(audit::list_audit))
        .route("/v1/audit/{action_id}", get(audit::get_audit))
        .route("/v1/audit/{action_id}/replay", post(audit::replay_audit))
        .route("/v1/circuit-breakers", get(breakers::list))
        .route("/v1/circuit-breakers/{provider}/trip", post(breakers::trip))
        .route(
            "/v1/circuit-breakers/{provider}/reset",
            post(breakers::reset),
        )
        // Acteon's paths of the same endpoints (its SDKs call these).
        .route("/admin/circuit-breakers", get(breakers::list))
        .route(
            "/admin/circuit-breakers/{provider}/trip",
            post(breakers::trip),
        )
        .route(
            "/admin/circuit-breakers/{provider}/reset",
            post(breakers::reset),
        )
        .route("/v1/providers/health", get(breakers::health))
        .route("/v1/config", get(ops::config))
        .route("/v1/quotas", get(quotas::list_quotas))
        .route("/healthz", get(ops::healthz))
        .route("/health", get(ops::health))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/api-doc/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .with_state(state)
}
