//! Authentication and scope at the HTTP edge (when `--auth on`).
//!
//! Every route but the probes and the API document needs a caller. What it needs of the
//! caller follows from the method and path ([`need_of`]); the namespace and tenant it
//! touches come from its query (`namespace`, `tenant`), checked here, or from its body
//! (dispatches, chain cancels, event transitions), checked by the handler through the
//! [`Caller`] this layer puts in the request's extensions. A caller limited to some
//! namespaces (or tenants) must name one for endpoints that would otherwise show them all.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::auth::{AuthError, Caller, Need, Role, forbidden};

/// Routes open to anyone: probes, the SDKs' health check, the API document.
fn is_open(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/health" | "/api-doc/openapi.json"
    )
}

/// What `method path` needs of its caller.
pub fn need_of(method: &Method, path: &str) -> Need {
    match (method, path) {
        (&Method::POST, "/v1/dispatch" | "/v1/dispatch/batch") => Need::Dispatch,
        (&Method::GET, "/metrics" | "/v1/config" | "/v1/rules" | "/v1/dlq/stats") => Need::ReadAll,
        (&Method::GET | &Method::HEAD, _) => Need::Read,
        _ => Need::Admin,
    }
}

/// Routes whose namespace and tenant are in the body: the handler checks them.
fn scoped_by_body(method: &Method, path: &str) -> bool {
    (method == Method::POST && path.starts_with("/v1/chains/") && path.ends_with("/cancel"))
        || (method == Method::PUT
            && path.starts_with("/v1/events/")
            && path.ends_with("/transition"))
}

/// The middleware: authenticates, checks role and query scope, hands the caller on.
pub async fn authorize(
    State(app): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(auth) = &app.auth else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    if is_open(path) || need_of(request.method(), path) == Need::Dispatch {
        // Dispatch handlers authenticate themselves (the hot path skips this router).
        return next.run(request).await;
    }
    let caller = match authenticate(&app, auth, request.headers()).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let need = need_of(request.method(), path);
    let checked = check_role(&app, &caller, need).and_then(|()| {
        if scoped_by_body(request.method(), path) {
            Ok(())
        } else {
            check_query_scope(&caller, request.uri().query())
        }
    });
    if let Err(e) = checked {
        return e.into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// The caller of a dispatch request, allowed to dispatch (its actions' scope is checked
/// one by one); `None` when authentication is off.
pub async fn dispatch_caller(
    app: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Arc<Caller>>, ApiError> {
    let Some(auth) = &app.auth else {
        return Ok(None);
    };
    let caller = authenticate(app, auth, headers).await?;
    check_role(app, &caller, Need::Dispatch)?;
    Ok(Some(caller))
}

async fn authenticate(
    app: &AppState,
    auth: &crate::auth::Authenticator,
    headers: &HeaderMap,
) -> Result<Arc<Caller>, ApiError> {
    let result = auth.authenticate(headers).await;
    let label = match &result {
        Ok(_) => "ok",
        Err(AuthError::Unauthenticated(_)) => "unauthenticated",
        Err(AuthError::Unverifiable(_)) => "unavailable",
    };
    app.gateway.metrics.auth.with_label_values(&[label]).inc();
    result.map_err(|e| {
        let mut e = e.into_api();
        e.message = format!("authentication: {}", e.message);
        e
    })
}

fn check_role(app: &AppState, caller: &Caller, need: Need) -> Result<(), ApiError> {
    if caller.may(need) {
        return Ok(());
    }
    app.gateway
        .metrics
        .auth
        .with_label_values(&["forbidden"])
        .inc();
    Err(forbidden(match need {
        Need::ReadAll if caller.role != Role::Dispatch => format!(
            "{} is limited to some namespaces; this endpoint shows every namespace",
            caller.identity
        ),
        _ => format!(
            "{} (role {}) may not {}",
            caller.identity,
            caller.role.as_str(),
            match need {
                Need::Dispatch => "dispatch",
                Need::Read | Need::ReadAll => "read",
                Need::Admin => "administer",
            }
        ),
    }))
}

/// The `namespace` and `tenant` of the query must be in the caller's scope; a caller
/// limited to some must name them.
fn check_query_scope(caller: &Caller, query: Option<&str>) -> Result<(), ApiError> {
    let (mut namespace, mut tenant) = (None, None);
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "namespace" => namespace = Some(v),
            "tenant" => tenant = Some(v),
            _ => {}
        }
    }
    let who = &caller.identity;
    match &namespace {
        Some(ns) if !caller.scope.covers_namespace(ns) => {
            return Err(forbidden(format!("{who} may not act in namespace {ns:?}")));
        }
        None if !caller.scope.all_namespaces() => {
            return Err(forbidden(format!(
                "{who} is limited to some namespaces: name one (`namespace=`)"
            )));
        }
        _ => {}
    }
    match &tenant {
        Some(t) if !caller.scope.covers_tenant(t) => {
            Err(forbidden(format!("{who} may not act for tenant {t:?}")))
        }
        None if !caller.scope.all_tenants() => Err(forbidden(format!(
            "{who} is limited to some tenants: name one (`tenant=`)"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Role, Scope};

    fn caller(namespaces: &str, tenants: &str) -> Caller {
        Caller {
            identity: "token:t".into(),
            role: Role::Read,
            scope: Scope {
                namespaces: Scope::patterns(namespaces),
                tenants: Scope::patterns(tenants),
            },
        }
    }

    #[test]
    fn endpoints_need_what_they_do() {
        assert_eq!(need_of(&Method::POST, "/v1/dispatch"), Need::Dispatch);
        assert_eq!(need_of(&Method::GET, "/v1/groups"), Need::Read);
        assert_eq!(need_of(&Method::GET, "/v1/config"), Need::ReadAll);
        assert_eq!(need_of(&Method::POST, "/v1/dlq/x/replay"), Need::Admin);
        assert_eq!(need_of(&Method::DELETE, "/v1/groups/k"), Need::Admin);
        assert!(scoped_by_body(&Method::POST, "/v1/chains/abc/cancel"));
        assert!(!scoped_by_body(&Method::POST, "/v1/dlq/replay"));
    }

    #[test]
    fn the_query_must_stay_in_scope_and_limited_callers_must_name_it() {
        let team = caller("team-*", "*");
        assert!(check_query_scope(&team, Some("namespace=team-a&tenant=x")).is_ok());
        assert!(check_query_scope(&team, Some("namespace=ops")).is_err());
        let e = check_query_scope(&team, None).unwrap_err();
        assert!(e.message.contains("name one"), "{}", e.message);
        let acme = caller("*", "acme");
        assert!(check_query_scope(&acme, Some("tenant=acme")).is_ok());
        assert!(check_query_scope(&acme, Some("tenant=globex")).is_err());
        assert!(
            check_query_scope(&acme, Some("namespace=x")).is_err(),
            "tenant required"
        );
        assert!(check_query_scope(&caller("*", "*"), None).is_ok());
        // Percent-encoded names are decoded before the check.
        assert!(check_query_scope(&team, Some("namespace=team%2Da")).is_ok());
    }
}
