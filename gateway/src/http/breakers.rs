//! Circuit breakers (`/v1/circuit-breakers`, and Acteon's `/admin/circuit-breakers`) and
//! provider health (`/v1/providers/health`). States are read from the state backend on
//! each request, so every replica answers the same.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::dispatch::namespace_ok;
use super::error::ApiError;
use super::extract::PathParam;
use acteon_api::crd::CircuitBreaker;

use crate::auth::Caller;
use crate::delivery::breaker::{self, recovery_ms};
use crate::delivery::record::Record;
use crate::delivery::stats::Summary;
use crate::providers::ProviderHandle;
use crate::state::unix_ms;

/// Which providers.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default)]
pub struct ProviderScope {
    /// The providers serving this namespace (its own and the shared ones); all when absent.
    pub namespace: Option<String>,
}

/// One circuit breaker.
#[derive(Debug, Serialize, ToSchema)]
pub struct CircuitBreakerStatus {
    pub provider: String,
    /// Namespace of the Provider; absent for a shared one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `closed`, `open` or `half_open`.
    pub state: &'static str,
    pub failure_threshold: u32,
    /// One successful probe closes the circuit.
    pub success_threshold: u32,
    pub recovery_timeout_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_provider: Option<String>,
    /// Retryable failures in a row counted so far.
    pub consecutive_failures: u32,
    /// When the circuit last opened (Unix ms); absent when it never did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opened_at: Option<u64>,
    /// Times it opened.
    pub trips: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CircuitBreakerList {
    pub circuit_breakers: Vec<CircuitBreakerStatus>,
}

/// The answer to a trip or reset.
#[derive(Debug, Serialize, ToSchema)]
pub struct CircuitBreakerAction {
    pub provider: String,
    pub state: &'static str,
    pub message: String,
}

/// One provider's health.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderHealth {
    pub provider: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// False while its circuit is open.
    pub healthy: bool,
    /// Circuit state; null without a circuit breaker.
    pub circuit_breaker_state: Option<&'static str>,
    /// Deliveries by this gateway since it started.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub deliveries: Summary,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderHealthList {
    pub providers: Vec<ProviderHealth>,
}

/// Lists the circuit breakers of the providers in scope.
#[utoipa::path(get, path = "/v1/circuit-breakers", params(ProviderScope), responses((status = 200, body = CircuitBreakerList)))]
pub async fn list(
    State(app): State<Arc<AppState>>,
    Query(scope): Query<ProviderScope>,
) -> Result<Json<CircuitBreakerList>, ApiError> {
    let rt = app.gateway.config.load();
    let guarded: Vec<(&ProviderHandle, &CircuitBreaker)> = in_scope(&rt.providers, &scope)?
        .filter_map(|h| h.circuit.as_ref().map(|cb| (h, cb)))
        .collect();
    let handles: Vec<&ProviderHandle> = guarded.iter().map(|(h, _)| *h).collect();
    let records = read_records(&app, &handles).await?;
    let circuit_breakers = guarded
        .iter()
        .zip(records)
        .map(|((h, cb), r)| status(h, cb, &r))
        .collect();
    Ok(Json(CircuitBreakerList { circuit_breakers }))
}

/// Opens a circuit by hand (every replica follows within its poll interval).
#[utoipa::path(post, path = "/v1/circuit-breakers/{provider}/trip", params(("provider" = String, Path), ProviderScope), responses((status = 200, body = CircuitBreakerAction)))]
pub async fn trip(
    State(app): State<Arc<AppState>>,
    PathParam(provider): PathParam,
    Query(scope): Query<ProviderScope>,
    caller: Option<Extension<Arc<Caller>>>,
) -> Result<Json<CircuitBreakerAction>, ApiError> {
    set(&app, &provider, &scope, caller, true).await
}

/// Closes a circuit by hand.
#[utoipa::path(post, path = "/v1/circuit-breakers/{provider}/reset", params(("provider" = String, Path), ProviderScope), responses((status = 200, body = CircuitBreakerAction)))]
pub async fn reset(
    State(app): State<Arc<AppState>>,
    PathParam(provider): PathParam,
    Query(scope): Query<ProviderScope>,
    caller: Option<Extension<Arc<Caller>>>,
) -> Result<Json<CircuitBreakerAction>, ApiError> {
    set(&app, &provider, &scope, caller, false).await
}

async fn set(
    app: &AppState,
    provider: &str,
    scope: &ProviderScope,
    caller: Option<Extension<Arc<Caller>>>,
    open: bool,
) -> Result<Json<CircuitBreakerAction>, ApiError> {
    let rt = app.gateway.config.load();
    let handle = find(&rt.providers, provider, scope)?;
    if let Some(Extension(caller)) = &caller {
        match &handle.namespace {
            Some(ns) => caller.check_scope(ns, None)?,
            // A shared provider serves every namespace: only a caller of all may switch it.
            None if !caller.scope.all_namespaces() => {
                return Err(crate::auth::forbidden(format!(
                    "{} may not switch the breaker of shared provider `{provider}`",
                    caller.identity
                )));
            }
            None => {}
        }
    }
    let Some(cb) = &handle.circuit else {
        return Err(ApiError::missing(format!(
            "provider `{}` has no circuit breaker",
            handle.id
        )));
    };
    let gw = &app.gateway;
    let record = gw.guards.breakers.set(gw, handle, open).await?;
    let state = record.state(unix_ms(), recovery_ms(cb)).as_str();
    tracing::info!(provider = %handle.id, state, "circuit breaker switched by hand");
    Ok(Json(CircuitBreakerAction {
        provider: handle.name.clone(),
        state,
        message: format!(
            "circuit breaker of `{}` {}",
            handle.id,
            if open { "tripped" } else { "reset" }
        ),
    }))
}

/// Health of every provider in scope: circuit state and this gateway's deliveries.
#[utoipa::path(get, path = "/v1/providers/health", params(ProviderScope), responses((status = 200, body = ProviderHealthList)))]
pub async fn health(
    State(app): State<Arc<AppState>>,
    Query(scope): Query<ProviderScope>,
) -> Result<Json<ProviderHealthList>, ApiError> {
    let rt = app.gateway.config.load();
    let handles: Vec<&ProviderHandle> = in_scope(&rt.providers, &scope)?.collect();
    let guarded: Vec<&ProviderHandle> = handles
        .iter()
        .copied()
        .filter(|h| h.circuit.is_some())
        .collect();
    let records = read_records(&app, &guarded).await?;
    let now = unix_ms();
    let states: std::collections::HashMap<&str, &'static str> = guarded
        .iter()
        .zip(records)
        .map(|(h, r)| {
            let recovery = h.circuit.as_ref().map_or(0, recovery_ms);
            (h.id.as_str(), r.state(now, recovery).as_str())
        })
        .collect();
    let providers = handles
        .iter()
        .map(|h| {
            let state = states.get(h.id.as_str()).copied();
            ProviderHealth {
                provider: h.name.clone(),
                namespace: h.namespace.clone(),
                kind: h.kind.as_str(),
                healthy: state.is_none_or(|s| s != "open"),
                circuit_breaker_state: state,
                deliveries: app.gateway.guards.stats.summary(&h.id),
            }
        })
        .collect();
    Ok(Json(ProviderHealthList { providers }))
}

/// The providers serving `scope.namespace` (all when absent), in a stable order.
fn in_scope<'r>(
    providers: &'r crate::providers::ProviderRegistry,
    scope: &ProviderScope,
) -> Result<impl Iterator<Item = &'r ProviderHandle>, ApiError> {
    if let Some(ns) = &scope.namespace {
        namespace_ok(ns)?;
    }
    let mut handles: Vec<&ProviderHandle> = providers
        .iter()
        .filter(|h| match (&scope.namespace, &h.namespace) {
            (None, _) | (_, None) => true,
            (Some(want), Some(ns)) => want == ns,
        })
        .collect();
    handles.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(handles.into_iter())
}

/// The provider `name` as `scope` sees it: of its namespace (or shared); without a
/// namespace, a shared one, else the only one of that name.
fn find<'r>(
    providers: &'r crate::providers::ProviderRegistry,
    name: &str,
    scope: &ProviderScope,
) -> Result<&'r ProviderHandle, ApiError> {
    if let Some(ns) = &scope.namespace {
        namespace_ok(ns)?;
        return providers.get(ns, name).ok_or_else(|| {
            ApiError::missing(format!("no provider `{name}` for namespace {ns:?}"))
        });
    }
    let named: Vec<&ProviderHandle> = providers.iter().filter(|h| h.name == name).collect();
    if let Some(shared) = named.iter().find(|h| h.namespace.is_none()) {
        return Ok(shared);
    }
    match named.as_slice() {
        [] => Err(ApiError::missing(format!("no provider `{name}`"))),
        [one] => Ok(one),
        more => Err(ApiError::invalid(format!(
            "provider `{name}` exists in {} namespaces: name one (`namespace=`)",
            more.len()
        ))),
    }
}

async fn read_records(
    app: &AppState,
    handles: &[&ProviderHandle],
) -> Result<Vec<Record>, ApiError> {
    let gw = &app.gateway;
    let keys: Vec<String> = handles.iter().map(|h| breaker::key(&h.id)).collect();
    let values = gw.state_call(gw.state.get_many(&keys)).await?;
    Ok(values.iter().map(|v| breaker::decode(v.as_ref())).collect())
}

fn status(handle: &ProviderHandle, cb: &CircuitBreaker, record: &Record) -> CircuitBreakerStatus {
    CircuitBreakerStatus {
        provider: handle.name.clone(),
        namespace: handle.namespace.clone(),
        state: record.state(unix_ms(), recovery_ms(cb)).as_str(),
        failure_threshold: cb.failure_threshold,
        success_threshold: 1,
        recovery_timeout_seconds: cb.recovery_timeout_seconds,
        fallback_provider: cb.fallback_provider.clone(),
        consecutive_failures: record.failures,
        opened_at: (record.trips > 0).then_some(record.opened_ms),
        trips: record.trips,
    }
}
