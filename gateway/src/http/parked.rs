//! Inspection and control of parked work: groups (`/v1/groups`) and state-machine events
//! (`/v1/events`).

use std::sync::Arc;

use crate::auth::Caller;
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::dispatch::{namespace_ok, params};
use super::error::ApiError;
use super::extract::PathParam;
use super::{AppState, json};
use crate::outcome::ActionOutcome;
use crate::pipeline::park::{TRANSITION_NOT_ALLOWED, transition_outcome};
use crate::rules::group::{self, GroupMeta};
use crate::rules::state_machine::EventRecord;
use crate::state::{EventInfo, GroupInfo, unix_ms};
use crate::worker::task::{FlushGroup, Task};

/// Most entries one listing returns.
const LIST_LIMIT: usize = 1000;

#[derive(Debug, Deserialize, IntoParams)]
pub struct Scope {
    /// Required for events; groups of every namespace when absent (a caller limited to
    /// some namespaces must name one).
    pub namespace: Option<String>,
    pub tenant: Option<String>,
    /// Events only: keep those in this state (Acteon's name: `status`).
    #[serde(alias = "status")]
    pub state: Option<String>,
    /// Most entries returned (1–1000; default 1000).
    pub limit: Option<usize>,
}

impl Scope {
    fn limit(&self) -> Result<usize, ApiError> {
        match self.limit {
            None => Ok(LIST_LIMIT),
            Some(n @ 1..=LIST_LIMIT) => Ok(n),
            Some(n) => Err(ApiError::invalid(format!(
                "limit: {n} is not between 1 and {LIST_LIMIT}"
            ))),
        }
    }

    fn namespace(&self) -> Result<&str, ApiError> {
        let ns = self
            .namespace
            .as_deref()
            .ok_or_else(|| ApiError::invalid("namespace: missing"))?;
        namespace_ok(ns)?;
        Ok(ns)
    }
}

/// An instant as Acteon's API writes it (RFC 3339, UTC).
fn rfc3339(ms: u64) -> String {
    crate::state::time_of_ms(ms).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A group, with the fields Acteon's SDKs read (`group_id`, `group_key`, `event_count`,
/// `state`, `notify_at` as RFC 3339) and this gateway's own (times in Unix ms).
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupView {
    pub group_key: String,
    pub group_id: String,
    #[schema(value_type = Object)]
    pub labels: Value,
    pub namespace: String,
    pub tenant: String,
    pub provider: String,
    /// Events waiting for the next notification.
    pub event_count: u64,
    /// `pending` while events wait for a notification, `notified` once sent.
    pub state: &'static str,
    /// When the next notification goes out (RFC 3339).
    pub notify_at: Option<String>,
    pub pending: u64,
    pub notify_at_ms: Option<u64>,
    pub last_flush: Option<u64>,
    pub last_event: u64,
}

/// The `group_key` the API shows: the backend key in hex. Backend keys hold `/`, `:` and
/// percent escapes, and Acteon's SDKs put the key into the URL path as it is.
fn api_group_key(key: &str) -> String {
    hex::encode(key)
}

/// The backend key of a `group_key` from a URL: the hex the API shows, or (as earlier
/// versions showed it) the backend key itself.
fn backend_group_key(param: &str) -> String {
    hex::decode(param)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|k| k.starts_with(group::ALL_GROUPS))
        .unwrap_or_else(|| param.to_owned())
}

/// `GET /v1/groups`, in Acteon's shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupList {
    pub groups: Vec<GroupView>,
    pub total: usize,
}

/// `GET /v1/groups/{key}`, in Acteon's shape: the group and its labels.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupDetail {
    pub group: GroupView,
    #[schema(value_type = Object)]
    pub labels: Value,
}

/// `DELETE /v1/groups/{key}`, in Acteon's shape, with the group as it was.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupFlushed {
    pub group_id: String,
    pub event_count: u64,
    /// The notification was scheduled for now (the worker sends it).
    pub notified: bool,
    pub group: GroupView,
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
        group_key: api_group_key(&info.key),
        group_id: info.group_id,
        event_count: info.pending,
        state: if info.pending > 0 {
            "pending"
        } else {
            "notified"
        },
        notify_at: info.notify_at_ms.map(rfc3339),
        pending: info.pending,
        notify_at_ms: info.notify_at_ms,
        last_flush: info.last_flush_ms,
        last_event: info.last_event_ms,
    }
}

/// Groups of a namespace (and tenant), or of every namespace.
#[utoipa::path(get, path = "/v1/groups", params(Scope), responses((status = 200, body = GroupList)))]
pub async fn list_groups(
    State(app): State<Arc<AppState>>,
    scope: Result<Query<Scope>, QueryRejection>,
) -> Result<Json<GroupList>, ApiError> {
    let scope = params(scope)?;
    let limit = scope.limit()?;
    let prefix = match &scope.namespace {
        Some(_) => group::key_prefix(scope.namespace()?, scope.tenant.as_deref()),
        None if scope.tenant.is_some() => {
            return Err(ApiError::invalid("namespace: missing (a tenant was named)"));
        }
        None => group::ALL_GROUPS.to_owned(),
    };
    let gw = &app.gateway;
    let groups: Vec<GroupView> = gw
        .state_call(gw.state.list_groups(&prefix, limit))
        .await?
        .into_iter()
        .map(group_view)
        .collect();
    Ok(Json(GroupList {
        total: groups.len(),
        groups,
    }))
}

/// One group, by the `group_key` a listing shows.
#[utoipa::path(get, path = "/v1/groups/{key}", responses((status = 200, body = GroupDetail), (status = 404)))]
pub async fn get_group(
    State(app): State<Arc<AppState>>,
    PathParam(key): PathParam,
) -> Result<Json<GroupDetail>, ApiError> {
    let gw = &app.gateway;
    match gw
        .state_call(gw.state.get_group(&backend_group_key(&key)))
        .await
    {
        Ok(Some(info)) => {
            let group = group_view(info);
            Ok(Json(GroupDetail {
                labels: group.labels.clone(),
                group,
            }))
        }
        Ok(None) => Err(no_group(&key)),
        Err(e) => Err(e.into()),
    }
}

fn no_group(key: &str) -> ApiError {
    ApiError::missing(format!("no group {key:?}"))
}

/// Sends a group's notification now (its flush timer is made due at once).
#[utoipa::path(delete, path = "/v1/groups/{key}", responses((status = 200, body = GroupFlushed), (status = 404)))]
pub async fn flush_group(
    State(app): State<Arc<AppState>>,
    PathParam(key): PathParam,
    headers: HeaderMap,
) -> Result<Json<GroupFlushed>, ApiError> {
    let gw = &app.gateway;
    let shown = key;
    let key = backend_group_key(&shown);
    let info = match gw.state_call(gw.state.get_group(&key)).await {
        Ok(Some(info)) => info,
        Ok(None) => return Err(no_group(&shown)),
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
    let group = group_view(info);
    Ok(Json(GroupFlushed {
        group_id: group.group_id.clone(),
        event_count: group.event_count,
        notified: true,
        group,
    }))
}

/// An event, with the fields Acteon's SDKs read (`fingerprint`, `state`, `action_type`,
/// `updated_at` as RFC 3339) and this gateway's own (times in Unix ms).
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub fingerprint: String,
    pub state: String,
    pub action_type: Option<String>,
    /// When it entered its state (RFC 3339).
    pub updated_at: String,
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
        action_type: record
            .as_ref()
            .map(|r| r.action_type.clone())
            .filter(|t| !t.is_empty()),
        updated_at: rfc3339(info.changed_ms),
        payload: record.map_or(Value::Null, |r| r.payload),
        changed_at: info.changed_ms,
        timeout_at: info.timeout.map(|(_, due)| due),
    }
}

/// `GET /v1/events`, in Acteon's shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    pub events: Vec<EventView>,
    pub count: usize,
}

/// State-machine events of a namespace (and tenant, and state).
#[utoipa::path(get, path = "/v1/events", params(Scope), responses((status = 200, body = EventList)))]
pub async fn list_events(
    State(app): State<Arc<AppState>>,
    scope: Result<Query<Scope>, QueryRejection>,
) -> Result<Json<EventList>, ApiError> {
    let scope = params(scope)?;
    let limit = scope.limit()?;
    let prefix =
        crate::rules::state_machine::key_prefix(scope.namespace()?, scope.tenant.as_deref());
    let gw = &app.gateway;
    // The state filter applies after the backend's bound: a listing reads at most
    // LIST_LIMIT events, whatever their state.
    let events: Vec<EventView> = gw
        .state_call(gw.state.list_events(&prefix, LIST_LIMIT))
        .await?
        .into_iter()
        .filter(|e| scope.state.as_ref().is_none_or(|s| *s == e.state))
        .take(limit)
        .map(event_view)
        .collect();
    Ok(Json(EventList {
        count: events.len(),
        events,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct EventRef {
    pub namespace: String,
    pub tenant: String,
    /// The StateMachine's name; when absent, the machine that holds the event (Acteon's
    /// SDKs name none).
    pub machine: Option<String>,
}

type MachineRef = Arc<crate::rules::state_machine::Machine>;

/// The machine `r` names, or none if it names none; 400 naming `machine` when unknown.
fn named_machine(app: &AppState, r: &EventRef) -> Result<Option<MachineRef>, ApiError> {
    namespace_ok(&r.namespace)?;
    let Some(name) = &r.machine else {
        return Ok(None);
    };
    let rt = app.gateway.config.load();
    let machine = rt.machines.resolve(&r.namespace, name).cloned();
    machine.map(Some).ok_or_else(|| {
        ApiError::invalid(format!(
            "machine: no StateMachine `{name}` for namespace `{}`",
            r.namespace
        ))
    })
}

/// The event `fingerprint` of `r`: under `named` (the machine `r` names), else under
/// whichever machine of the namespace holds it (the most recently moved one if several do).
async fn find_event(
    app: &AppState,
    r: &EventRef,
    named: Option<MachineRef>,
    fingerprint: &str,
) -> Result<Option<(EventInfo, MachineRef)>, ApiError> {
    let machines = match named {
        Some(machine) => vec![machine],
        None => app
            .gateway
            .config
            .load()
            .machines
            .visible_from(&r.namespace),
    };
    let gw = &app.gateway;
    let mut found: Option<(EventInfo, MachineRef)> = None;
    for machine in machines {
        let key = machine.event_key(&r.namespace, &r.tenant, fingerprint);
        if let Some(info) = gw.state_call(gw.state.get_event(&key)).await?
            && found
                .as_ref()
                .is_none_or(|(f, _)| f.changed_ms < info.changed_ms)
        {
            found = Some((info, machine));
        }
    }
    Ok(found)
}

fn no_event(fingerprint: &str, r: &EventRef) -> ApiError {
    ApiError::missing(format!(
        "no event {fingerprint:?} in {}/{}",
        r.namespace, r.tenant
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
    let named = named_machine(&app, &r)?;
    match find_event(&app, &r, named, &fingerprint).await? {
        Some((info, _)) => Ok(Json(event_view(info))),
        None => Err(no_event(&fingerprint, &r)),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionRequest {
    pub namespace: String,
    pub tenant: String,
    /// The StateMachine's name; when absent, the machine that holds the event, which must
    /// then exist (404 otherwise).
    pub machine: Option<String>,
    /// The state to move to (Acteon's name: `to_state`).
    #[serde(alias = "to_state")]
    pub to: String,
}

/// `PUT /v1/events/{fingerprint}/transition`, in Acteon's shape (a move the machine does
/// not allow is a 409 `TRANSITION_NOT_ALLOWED`; staying in the current state is a 200 with
/// `previous_state` = `new_state`).
#[derive(Debug, Serialize, ToSchema)]
pub struct TransitionView {
    pub fingerprint: String,
    pub previous_state: String,
    pub new_state: String,
    pub notify: bool,
    /// The StateMachine's id (`namespace/name`, or `name` for a shared one).
    pub machine: String,
}

/// Moves an event by hand, under the machine's rules (as a dispatch would).
#[utoipa::path(put, path = "/v1/events/{fingerprint}/transition", request_body = TransitionRequest, responses((status = 200, body = TransitionView), (status = 404), (status = 409)))]
pub async fn transition(
    State(app): State<Arc<AppState>>,
    PathParam(fingerprint): PathParam,
    caller: Option<Extension<Arc<Caller>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<TransitionView>, ApiError> {
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
    let named = named_machine(&app, &r)?;
    let (current, machine) = match find_event(&app, &r, named.clone(), &fingerprint).await? {
        Some((info, machine)) => (Some(info), machine),
        // A named machine may start an event's lifecycle by hand; without one there is
        // nothing to move.
        None => match named {
            Some(machine) => (None, machine),
            None => return Err(no_event(&fingerprint, &r)),
        },
    };
    let key = machine.event_key(&r.namespace, &r.tenant, &fingerprint);
    let gw = &app.gateway;
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
    gw.count_transition(&machine, &req.to, &result);
    match transition_outcome(&machine, &fingerprint, Some(&req.to), &result) {
        ActionOutcome::StateChanged {
            fingerprint,
            previous_state,
            new_state,
            notify,
        } => Ok(Json(TransitionView {
            fingerprint,
            previous_state,
            new_state,
            notify,
            machine: machine.id.clone(),
        })),
        ActionOutcome::Failed(e) => Err(ApiError {
            status: StatusCode::CONFLICT,
            code: TRANSITION_NOT_ALLOWED,
            message: e.message,
        }),
        other => Err(ApiError::unavailable(format!(
            "unexpected transition outcome {}",
            other.label()
        ))),
    }
}
