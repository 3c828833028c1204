//! Who may call the gateway: authentication of bearer tokens and the caller's scope.
//!
//! Two kinds of credentials, tried in this order:
//! - **API tokens** ([`api_tokens`]): bearer tokens from a file (standalone) or from labelled
//!   Kubernetes Secrets, each with a role and namespace/tenant patterns; held as SHA-256
//!   digests only, swapped in place when their source changes.
//! - **Kubernetes ServiceAccount tokens** ([`service_accounts`]): verified with a TokenReview
//!   for the configured audience and cached briefly; a ServiceAccount of namespace N may
//!   dispatch into N and read what N owns — so RBAC over a namespace is power over its
//!   actions at runtime too.
//!
//! The HTTP layer (`http/auth.rs`) decides what each endpoint needs ([`Need`]) and asks
//! [`Caller::allows`]; dispatch handlers check the namespace of each action they read.

pub mod api_tokens;
pub mod header;
pub mod scope;
pub mod service_accounts;

use std::sync::Arc;

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

pub use scope::{Pattern, Scope};

use crate::http::error::ApiError;

/// What a credential may do. Admin includes read and dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Dispatch,
    Read,
    Admin,
    /// A ServiceAccount: dispatch and read, in its own namespace.
    #[serde(skip)]
    Workload,
}

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        match text.trim().to_ascii_lowercase().as_str() {
            "dispatch" => Some(Role::Dispatch),
            "read" => Some(Role::Read),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    fn grants(self, need: Need) -> bool {
        matches!(
            (self, need),
            (Role::Admin, _)
                | (Role::Dispatch, Need::Dispatch)
                | (Role::Read, Need::Read | Need::ReadAll)
                | (Role::Workload, Need::Dispatch | Need::Read)
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Dispatch => "dispatch",
            Role::Read => "read",
            Role::Admin => "admin",
            Role::Workload => "serviceaccount",
        }
    }
}

/// What an endpoint needs of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Dispatching actions (each action's namespace and tenant checked by the handler).
    Dispatch,
    /// Inspecting what one namespace owns.
    Read,
    /// Inspecting everything at once (configuration, metrics): only callers not limited to
    /// some namespaces.
    ReadAll,
    /// Changing state (replays, flushes, cancels, transitions, circuit trips).
    Admin,
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Who, as audit records and logs name it (`token:<name>`,
    /// `system:serviceaccount:<ns>:<name>`); never the credential.
    pub identity: String,
    pub role: Role,
    pub scope: Scope,
}

impl Caller {
    /// Whether this caller may do `need` (scope aside).
    pub fn may(&self, need: Need) -> bool {
        self.role.grants(need) && (need != Need::ReadAll || self.scope.is_unlimited())
    }

    /// `Ok` when this caller may act on `namespace`/`tenant`; the 403 otherwise.
    pub fn check_scope(&self, namespace: &str, tenant: Option<&str>) -> Result<(), ApiError> {
        if !self.scope.covers_namespace(namespace) {
            return Err(forbidden(format!(
                "{} may not act in namespace {namespace:?}",
                self.identity
            )));
        }
        if let Some(tenant) = tenant
            && !self.scope.covers_tenant(tenant)
        {
            return Err(forbidden(format!(
                "{} may not act for tenant {tenant:?}",
                self.identity
            )));
        }
        Ok(())
    }
}

/// Why a request is refused.
#[derive(Debug)]
pub enum AuthError {
    /// No usable credentials (401).
    Unauthenticated(String),
    /// The credentials could not be checked now (503: the API server is unreachable).
    Unverifiable(String),
}

impl AuthError {
    pub fn into_api(self) -> ApiError {
        match self {
            AuthError::Unauthenticated(message) => ApiError {
                status: axum::http::StatusCode::UNAUTHORIZED,
                code: "UNAUTHORIZED",
                message,
            },
            AuthError::Unverifiable(message) => ApiError {
                status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
                code: "AUTH_UNAVAILABLE",
                message,
            },
        }
    }
}

/// The 403 of a caller outside its role or scope.
pub fn forbidden(message: String) -> ApiError {
    ApiError {
        status: axum::http::StatusCode::FORBIDDEN,
        code: "FORBIDDEN",
        message,
    }
}

/// SHA-256 of a token: how tokens are held and looked up (never the token itself).
pub type TokenDigest = [u8; 32];

pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Authenticates requests from their `Authorization` header.
pub struct Authenticator {
    pub api_tokens: Arc<api_tokens::ApiTokens>,
    pub service_accounts: Option<service_accounts::ServiceAccounts>,
}

impl Authenticator {
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Caller>, AuthError> {
        let token = header::bearer_token(headers).map_err(AuthError::Unauthenticated)?;
        let digest = digest(token);
        if let Some(caller) = self.api_tokens.get(&digest) {
            return Ok(caller);
        }
        match &self.service_accounts {
            Some(sa) if header::looks_like_jwt(token) => sa.authenticate(token, digest).await,
            _ => Err(AuthError::Unauthenticated("unknown token".into())),
        }
    }
}
