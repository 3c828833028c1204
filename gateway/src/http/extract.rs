//! Extractors whose rejections speak the API's JSON error shape.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

use super::error::ApiError;

/// A route's one path parameter (an id, a key, a provider name) as text. Axum's own
/// rejection of it (invalid UTF-8 after percent-decoding) is a plain-text body; this one is
/// the usual JSON 400 that names the parameter.
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| PathParam(value))
            .map_err(|r| ApiError::invalid(format!("invalid path: {}", r.body_text())))
    }
}
