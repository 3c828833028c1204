//! Health, readiness, metrics, and configuration inspection.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use crate::config::ConfigSource;
use crate::pipeline::NOT_LOADED;

/// Process is alive.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive")))]
pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready to serve: not draining, a configuration is loaded, and the state backend has been
/// reached once. A backend that goes away later does not make the gateway unready (all
/// replicas share it): requests needing it answer 503, and `/health` reports it.
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "ready"), (status = 503, body = ErrorBody)))]
pub async fn readyz(State(app): State<Arc<AppState>>) -> Result<impl IntoResponse, ApiError> {
    if app.lifecycle.is_draining() {
        return Err(ApiError::unavailable("shutting down"));
    }
    let gw = &app.gateway;
    let version = {
        let rt = gw.config.load();
        if !rt.loaded {
            let status = gw.config.status();
            return Err(ApiError::unavailable(match status.failed_version {
                Some(v) => format!(
                    "{NOT_LOADED} (version {v} was refused: {})",
                    status.error.unwrap_or_default()
                ),
                None => NOT_LOADED.to_owned(),
            }));
        }
        rt.snapshot.version
    };
    if !app.lifecycle.backend_reached() {
        return Err(ApiError::unavailable(format!(
            "state backend not reached yet: {}",
            app.lifecycle.last_error().unwrap_or_default()
        )));
    }
    let mut body = json!({
        "status": "ready",
        "snapshot_version": version,
        "state_backend_up": app.lifecycle.backend_up(),
    });
    // Still ready (the last good snapshot serves), but a newer one was refused — a tampered
    // or unauthenticated publication, or one that does not build — and the probe says so.
    let status = gw.config.status();
    if let Some(refused) = status.failed_version {
        body["refused_version"] = json!(refused);
        body["refused_because"] = json!(status.error.unwrap_or_default());
    }
    Ok(Json(body))
}

/// What `GET /health` reports.
#[derive(Serialize, ToSchema)]
pub struct HealthInfo {
    /// Always `ok`: the process serves (Acteon's SDKs call this).
    pub status: &'static str,
    /// Whether `/readyz` would answer 200.
    pub ready: bool,
    pub draining: bool,
    pub state_backend: BackendHealth,
}

#[derive(Serialize, ToSchema)]
pub struct BackendHealth {
    pub kind: &'static str,
    /// Result of the last periodic check.
    pub up: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Health for Acteon's SDKs (`health()`): 200 while the process serves, with details.
#[utoipa::path(get, path = "/health", responses((status = 200, body = HealthInfo)))]
pub async fn health(State(app): State<Arc<AppState>>) -> Json<HealthInfo> {
    let lc = &app.lifecycle;
    let loaded = app.gateway.config.load().loaded;
    Json(HealthInfo {
        status: "ok",
        ready: loaded && lc.backend_reached() && !lc.is_draining(),
        draining: lc.is_draining(),
        state_backend: BackendHealth {
            kind: app.gateway.state.kind(),
            up: lc.backend_up(),
            error: lc.last_error(),
        },
    })
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.gateway.metrics.render(),
    )
}

/// A rule as listed by `GET /v1/rules`.
#[derive(Serialize, ToSchema)]
pub struct RuleInfo {
    pub name: String,
    /// `null` for rules shared by all namespaces.
    pub namespace: Option<String>,
    pub priority: i32,
    pub description: Option<String>,
    pub enabled: bool,
    /// The action's `type`.
    pub action: String,
    pub source: String,
}

/// The rules of the served configuration, in evaluation order.
#[utoipa::path(get, path = "/v1/rules", responses((status = 200, body = Vec<RuleInfo>)))]
pub async fn rules(State(app): State<Arc<AppState>>) -> Json<Vec<RuleInfo>> {
    let rt = app.gateway.config.load();
    let mut out: Vec<RuleInfo> = rt
        .snapshot
        .rules
        .iter()
        .map(|e| RuleInfo {
            name: e.name.clone(),
            namespace: e.namespace.clone(),
            priority: e.spec.priority,
            description: e.spec.description.clone(),
            enabled: e.spec.enabled,
            action: e.spec.action.type_name().to_owned(),
            source: e.source.clone(),
        })
        .collect();
    out.sort_by(|a, b| {
        (a.priority, &a.namespace, &a.name).cmp(&(b.priority, &b.namespace, &b.name))
    });
    Json(out)
}

/// Summary of the served configuration. Never includes credentials, sealed or not.
#[derive(Serialize, ToSchema)]
pub struct ConfigInfo {
    /// Whether a configuration is served (false until a gateway following the operator
    /// receives its first snapshot; version is then 0).
    pub loaded: bool,
    pub version: u64,
    pub digest: String,
    /// `files` (compiled from `--config` at start) or `channel` (followed from the operator).
    pub source: &'static str,
    /// Backend of the config channel (`redis`, `postgres`) when `source` is `channel`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel_backend: Option<&'static str>,
    /// This gateway's id in its reports to the operator (channel mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_id: Option<String>,
    /// The newest published version that failed to apply; the previous one is still served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_version: Option<u64>,
    /// Why `failed_version` failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub state_backend: String,
    pub rules: usize,
    pub enabled_rules: usize,
    /// Rules with no equality constraint to index on: every dispatch looks at them.
    pub unindexed_rules: usize,
    pub providers: Vec<String>,
    pub chains: Vec<String>,
    pub state_machines: Vec<String>,
    pub quotas: Vec<String>,
}

fn qualified<S>(entries: &[acteon_api::Entry<S>]) -> Vec<String> {
    entries
        .iter()
        .map(|e| match &e.namespace {
            Some(ns) => format!("{ns}/{}", e.name),
            None => e.name.clone(),
        })
        .collect()
}

/// What the gateway serves: snapshot version and contents.
#[utoipa::path(get, path = "/v1/config", responses((status = 200, body = ConfigInfo)))]
pub async fn config(State(app): State<Arc<AppState>>) -> Json<ConfigInfo> {
    let rt = app.gateway.config.load();
    let status = app.gateway.config.status();
    let s = &rt.snapshot;
    let (source, channel_backend) = match status.source {
        ConfigSource::Files => ("files", None),
        ConfigSource::Channel { backend } => ("channel", Some(backend)),
    };
    Json(ConfigInfo {
        loaded: rt.loaded,
        version: s.version,
        digest: s.digest.clone(),
        source,
        channel_backend,
        gateway_id: status.gateway_id,
        failed_version: status.failed_version,
        error: status.error,
        state_backend: app.gateway.state.kind().to_owned(),
        rules: s.rules.len(),
        enabled_rules: rt.rules.len(),
        unindexed_rules: rt.rules.unindexed(),
        providers: qualified(&s.providers),
        chains: qualified(&s.chains),
        state_machines: qualified(&s.state_machines),
        quotas: qualified(&s.quotas),
    })
}
