//! Errors as HTTP responses: `{"error", "code", "message", "retryable"}` — `error` for
//! Acteon's server clients, `code`/`message`/`retryable` for its SDKs.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::pipeline::DispatchError;
use crate::state::StateError;

/// Body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    pub code: &'static str,
    pub message: String,
    pub retryable: bool,
}

/// An error with its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "INVALID_REQUEST",
            message: message.into(),
        }
    }

    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "PAYLOAD_TOO_LARGE",
            message: message.into(),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "UNAVAILABLE",
            message: message.into(),
        }
    }

    /// A path no route serves (a missing resource is [`ApiError::missing`]).
    pub fn no_such_endpoint() -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "NOT_FOUND",
            message: "no such endpoint".into(),
        }
    }

    /// A resource that does not exist (the endpoint does).
    pub fn missing(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "NOT_FOUND",
            message: message.into(),
        }
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::CONFLICT,
            code: "CONFLICT",
            message: message.into(),
        }
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: "METHOD_NOT_ALLOWED",
            message: "method not allowed on this endpoint".into(),
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.message.clone(),
            code: self.code,
            message: self.message.clone(),
            retryable: self.status == StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// An error inside a batch answer, as Acteon's SDKs parse it:
/// `{"error": {"code", "message", "retryable"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemError {
    pub code: &'static str,
    pub message: String,
    pub retryable: bool,
}

impl ApiError {
    pub fn item(self) -> ItemError {
        ItemError {
            code: self.code,
            retryable: self.status == StatusCode::SERVICE_UNAVAILABLE,
            message: self.message,
        }
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> ApiError {
        ApiError::unavailable(e.to_string())
    }
}

impl From<DispatchError> for ApiError {
    fn from(e: DispatchError) -> ApiError {
        match e {
            DispatchError::State(e) => e.into(),
            DispatchError::NotLoaded => ApiError::unavailable(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}
