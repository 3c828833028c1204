//! Inspection and control of parked work: groups (`/v1/groups`) and state-machine events
//! (`/v1/events`).

use std::sync::Arc;

use crate::auth::Caller;
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::dispatch::{namespace_ok, params};
use super::error::ApiError;
use super::extract::PathParam;
use super::{AppState, json};
use crate::outcome::ActionOutcome;
use crate::pipeline::park::transition_outcome;
use crate::rules::group::{self, GroupMeta};
use crate::rules::state_machine::EventRecord;
use crate::state::{EventInfo, GroupInfo, unix_ms};
use crate::worker::task::{FlushGroup, Task};

/// Most entries one listing returns.
const LIST_LIMIT: usize = 1000;

#[derive(Debug, Deserialize, IntoParams)]
pub struct Scope {
    pub namespace: String,
    pub tenant: Option<String>,
    /// Events only: keep those in this state.
    pub state: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GroupView {
    pub group_key: String,
    pub group_id: String,
    #[schema(value_type = Object)]
    pub labels: Value,
    pub namespace: String,
    pub tenant: String,
    pub provider: String,
    pub pending: u64,
    pub notify_at: Option<u64>,
    pub last_flush: Option<u64>,
    pub last_event: u64,
}

fn group_view(info: GroupInfo) -> GroupView {
    let meta: Option<GroupMeta> = serde_json::from_slice(&info.meta).ok();
    GroupView {
        labels: meta
            .as_ref()
            .map_or(Value::Null, |m| Value::Object(m.labels.clone())),
        namespace: meta
            .as_ref()
            .map(|m| m.namespace.clone())
            .unwrap_or_default(),
        tenant: meta.as_ref().map(|m| m.tenant.clone()).unwrap_or_default(),
        provider: meta.map(|m| m.provider).unwrap_or_default(),
        group_key: info.key,
        group_id: info.group_id,
        pending: info.pending,
        notify_at: info.notify_at_ms,
        last_flush: info.last_flush_ms,
        last_event: info.last_event_ms,
    }
}

/// Groups of a namespace (and tenant).
#[utoipa::path(get, path = "/v1/groups", params(Scope), responses((status = 200, body = [GroupView])))]
pub async fn list_groups(
    State(app): State<Arc<AppState>>,
    scope: Result<Query<Scope>, QueryRejection>,
) -> Result<Json<Vec<GroupView>>, ApiError> {
    let scope = params(scope)?;
    namespace_ok(&scope.namespace)?;
    let gw = &app.gateway;
    let prefix = group::key_prefix(&scope.namespace, scope.tenant.as_deref());
    let groups = gw
        .state_call(gw.state.list_groups(&prefix, LIST_LIMIT))
        .await?;
    Ok(Json(groups.into_iter().map(group_view).collect()))
}

/// One group, by the `group_key` a listing shows.
#[utoipa::path(get, path = "/v1/groups/{key}", responses((status = 200, body = GroupView), (status = 404)))]
pub async fn get_group(
    State(app): State<Arc<AppState>>,
    PathParam(key): PathParam,
) -> Result<Json<GroupView>, ApiError> {
    let gw = &app.gateway;
    match gw.state_call(gw.state.get_group(&key)).await {
        Ok(Some(info)) => Ok(Json(group_view(info))),
        Ok(None) => Err(no_group(&key)),
        Err(e) => Err(e.into()),
    }
}

fn no_group(key: &str) -> ApiError {
    ApiError::missing(format!("no group {key:?}"))
}

/// Sends a group's notification now (its flush timer is made due at once).
#[utoipa::path(delete, path = "/v1/groups/{key}", responses((status = 200, body = GroupView), (status = 404)))]
pub async fn flush_group(
    State(app): State<Arc<AppState>>,
    PathParam(key): PathParam,
    headers: HeaderMap,
) -> Result<Json<GroupView>, ApiError> {
    let gw = &app.gateway;
    let info = match gw.state_call(gw.state.get_group(&key)).await {
        Ok(Some(info)) => info,
        Ok(None) => return Err(no_group(&key)),
        Err(e) => return Err(e.into()),
    };
    let meta: GroupMeta = serde_json::from_slice(&info.meta)
        .map_err(|_| ApiError::unavailable("group metadata unreadable"))?;
    let task = Task::FlushGroup(FlushGroup {
        key: key.clone(),
        interval_ms: meta.interval_ms,
        repeat_ms: None,
        // Made due by this request: the notification continues the caller's trace.
        trace: crate::trace::caller_context(&headers, gw.options.trace),
    });
    let timer_id = group::timer_id(&key);
    let call = gw.state.schedule_timer(&timer_id, unix_ms(), task.encode());
    gw.state_call(call).await?;
    Ok(Json(group_view(info)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub fingerprint: String,
    pub state: String,
    pub machine: String,
    pub namespace: String,
    pub tenant: String,
    pub changed_at: u64,
    pub timeout_at: Option<u64>,
    #[schema(value_type = Object)]
    pub payload: Value,
}

fn event_view(info: EventInfo) -> EventView {
    let record: Option<EventRecord> = serde_json::from_slice(&info.record).ok();
    EventView {
        fingerprint: info.fingerprint,
        state: info.state,
        machine: record
            .as_ref()
            .map(|r| r.machine.clone())
            .unwrap_or_default(),
        namespace: record
            .as_ref()
            .map(|r| r.namespace.clone())
            .unwrap_or_default(),
        tenant: record
            .as_ref()
            .map(|r| r.tenant.clone())
            .unwrap_or_default(),
        payload: record.map_or(Value::Null, |r| r.payload),
        changed_at: info.changed_ms,
        timeout_at: info.timeout.map(|(_, due)| due),
    }
}

/// State-machine events of a namespace (and tenant, and state).
#[utoipa::path(get, path = "/v1/events", params(Scope), responses((status = 200, body = [EventView])))]
pub async fn list_events(
    State(app): State<Arc<AppState>>,
    scope: Result<Query<Scope>, QueryRejection>,
) -> Result<Json<Vec<EventView>>, ApiError> {
    let scope = params(scope)?;
    namespace_ok(&scope.namespace)?;
    let gw = &app.gateway;
    let prefix = crate::rules::state_machine::key_prefix(&scope.namespace, scope.tenant.as_deref());
    let events = gw
        .state_call(gw.state.list_events(&prefix, LIST_LIMIT))
        .await?;
    Ok(Json(
        events
            .into_iter()
            .filter(|e| scope.state.as_ref().is_none_or(|s| *s == e.state))
            .map(event_view)
            .collect(),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct EventRef {
    pub namespace: String,
    pub tenant: String,
    /// The StateMachine's name.
    pub machine: String,
}

fn event_key(
    app: &AppState,
    r: &EventRef,
    fingerprint: &str,
) -> Result<(String, Arc<crate::rules::state_machine::Machine>), ApiError> {
    namespace_ok(&r.namespace)?;
    let rt = app.gateway.config.load();
    let machine = rt
        .machines
        .resolve(&r.namespace, &r.machine)
        .cloned()
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "machine: no StateMachine `{}` for namespace `{}`",
                r.machine, r.namespace
            ))
        })?;
    Ok((
        machine.event_key(&r.namespace, &r.tenant, fingerprint),
        machine,
    ))
}

/// One event.
#[utoipa::path(get, path = "/v1/events/{fingerprint}", params(EventRef), responses((status = 200, body = EventView), (status = 404)))]
pub async fn get_event(
    State(app): State<Arc<AppState>>,
    PathParam(fingerprint): PathParam,
    r: Result<Query<EventRef>, QueryRejection>,
) -> Result<Json<EventView>, ApiError> {
    let r = params(r)?;
    let (key, _) = event_key(&app, &r, &fingerprint)?;
    let gw = &app.gateway;
    match gw.state_call(gw.state.get_event(&key)).await {
        Ok(Some(info)) => Ok(Json(event_view(info))),
        Ok(None) => Err(ApiError::missing(format!(
            "no event {fingerprint:?} in {}/{}",
            r.namespace, r.tenant
        ))),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionRequest {
    pub namespace: String,
    pub tenant: String,
    pub machine: String,
    /// The state to move to (Acteon's name: `to_state`).
    #[serde(alias = "to_state")]
    pub to: String,
}

/// Moves an event by hand, under the machine's rules (as a dispatch would).
#[utoipa::path(put, path = "/v1/events/{fingerprint}/transition", request_body = TransitionRequest, responses((status = 200, body = ActionOutcome)))]
pub async fn transition(
    State(app): State<Arc<AppState>>,
    PathParam(fingerprint): PathParam,
    caller: Option<Extension<Arc<Caller>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ActionOutcome>, ApiError> {
    let bytes = json::read_body(&headers, body, app.body_limit, app.body_timeout).await?;
    let req: TransitionRequest = json::parse_object(&bytes, "transition")?;
    if let Some(Extension(caller)) = &caller {
        caller.check_scope(&req.namespace, Some(&req.tenant))?;
    }
    let r = EventRef {
        namespace: req.namespace.clone(),
        tenant: req.tenant.clone(),
        machine: req.machine.clone(),
    };
    let (key, machine) = event_key(&app, &r, &fingerprint)?;
    let gw = &app.gateway;
    let current = gw.state_call(gw.state.get_event(&key)).await?;
    let record = current
        .as_ref()
        .and_then(|e| serde_json::from_slice::<EventRecord>(&e.record).ok())
        .unwrap_or(EventRecord {
            namespace: req.namespace.clone(),
            tenant: req.tenant.clone(),
            machine: machine.id.clone(),
            provider: String::new(),
            action_type: String::new(),
            payload: Value::Null,
            metadata: Default::default(),
            dedup_key: None,
        });
    // The inhibition sets of the move, from the fields of the action that last moved it.
    let sets = gw
        .config
        .load()
        .rules
        .inhibitions()
        .active_sets(&machine.id, &record.action(&fingerprint));
    let cause = uuid::Uuid::now_v7().to_string();
    let now_ms = unix_ms();
    let t = machine.moving(
        key,
        &fingerprint,
        Some(req.to.clone()),
        &record,
        &cause,
        now_ms,
        sets,
    );
    // A notifying move by hand notifies like a dispatch: the event's recorded action, with
    // the requested state as its status (no recorded provider and no notifyProvider: none).
    let mut notification = record.action(&fingerprint);
    notification.id = cause.clone();
    notification.status = Some(req.to.clone());
    notification.trace = crate::trace::caller_context(&headers, gw.options.trace);
    let provider = machine.notify_target(&record.provider).to_owned();
    let t = machine.with_notice(t, notification, &provider, &cause, now_ms);
    let result = gw.move_event(t).await?;
    let outcome = transition_outcome(&machine, &fingerprint, Some(&req.to), &result);
    gw.count_transition(&machine, &req.to, &result);
    Ok(Json(outcome))
}
