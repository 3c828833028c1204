//! Request bodies: size-limited, parsed with the path of the offending field in errors.

use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Turns a body-reading failure into a JSON error (413 past the size limit).
pub fn body(result: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    result.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!(
                "request body is larger than the limit of {limit} bytes"
            ))
        } else {
            ApiError::invalid(format!("could not read the request body: {r}"))
        }
    })
}

/// Parses JSON; the message names the field (`payload`, `[3].tenant`, …) and the problem.
pub fn parse<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let mut path = e.path().to_string();
        if path.len() > 80 {
            // Deeply nested input: the start of the path is enough to find it.
            path = format!("{}…", &path[..path.floor_char_boundary(80)]);
        }
        let inner = e.into_inner();
        let kind = match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "malformed JSON"
            }
            _ => "invalid",
        };
        if path == "." || path.is_empty() || path.contains('?') {
            ApiError::invalid(format!("{kind} {what}: {inner}"))
        } else {
            ApiError::invalid(format!("{kind} {what}: field `{path}`: {inner}"))
        }
    })
}
