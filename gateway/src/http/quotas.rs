//! `GET /v1/quotas`: the Quotas that apply in a namespace and how much of each window is
//! used.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::dispatch::{namespace_ok, params};
use super::error::ApiError;
use crate::config::QuotaRule;

#[derive(Debug, Deserialize, IntoParams)]
pub struct QuotaScope {
    /// Quotas of this namespace and the shared ones (counted for it); without it, every
    /// namespace's own Quotas (a shared Quota counts per namespace, so it needs one).
    pub namespace: Option<String>,
    /// Only the quotas of this tenant.
    pub tenant: Option<String>,
}

/// One quota and its current window.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaUsage {
    /// `namespace/name`, or `name` for a shared Quota.
    pub id: String,
    /// The namespace whose actions `used` counts.
    pub namespace: String,
    pub tenant: String,
    pub provider: Option<String>,
    pub action_type: Option<String>,
    pub limit: u64,
    pub window_seconds: u64,
    /// `block`, `warn` or `degrade`.
    pub overage: String,
    /// Deliveries counted in the current window.
    pub used: u64,
    pub remaining: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaList {
    pub quotas: Vec<QuotaUsage>,
    pub count: usize,
}

/// The quotas in scope with their usage, one backend read each.
#[utoipa::path(get, path = "/v1/quotas", params(QuotaScope), responses((status = 200, body = QuotaList)))]
pub async fn list_quotas(
    State(app): State<Arc<AppState>>,
    scope: Result<Query<QuotaScope>, QueryRejection>,
) -> Result<Json<QuotaList>, ApiError> {
    let scope = params(scope)?;
    if let Some(ns) = &scope.namespace {
        namespace_ok(ns)?;
    }
    let gw = &app.gateway;
    let rt = gw.config.load();
    let mut quotas = Vec::new();
    for q in rt.quotas.iter() {
        let Some(namespace) = counted_in(q, scope.namespace.as_deref()) else {
            continue;
        };
        if scope.tenant.as_ref().is_some_and(|t| *t != q.spec.tenant) {
            continue;
        }
        let key = q.counter_key(namespace);
        let used = gw
            .state_call(gw.state.quota_usage(&key, q.window()))
            .await?;
        quotas.push(QuotaUsage {
            id: q.id.clone(),
            namespace: namespace.to_owned(),
            tenant: q.spec.tenant.clone(),
            provider: q.spec.provider.clone(),
            action_type: q.spec.action_type.clone(),
            limit: q.spec.limit,
            window_seconds: q.window_seconds,
            overage: overage_name(q),
            used,
            remaining: q.spec.limit.saturating_sub(used),
        });
    }
    Ok(Json(QuotaList {
        count: quotas.len(),
        quotas,
    }))
}

/// The namespace whose counter of `q` to show: the asked one if `q` applies there (its
/// own or shared), else with none asked its own namespace (a shared one has none).
fn counted_in<'a>(q: &'a QuotaRule, asked: Option<&'a str>) -> Option<&'a str> {
    match (asked, q.namespace.as_deref()) {
        (Some(ns), Some(own)) => (ns == own).then_some(ns),
        (Some(ns), None) => Some(ns),
        (None, own) => own,
    }
}

fn overage_name(q: &QuotaRule) -> String {
    serde_json::to_value(q.spec.overage)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
