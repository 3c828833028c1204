//! Request bodies: size-limited, parsed with the path of the offending field in errors.
//! JSON response bodies.

use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::FutureExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Reads a request body: 413 past `limit` (at once when the declared length says so), 408
/// when the client does not deliver it within `timeout` (a slow body must not hold a
/// connection and a task forever). Generic over the body so that the server's dispatch
/// fast path reads hyper's body without boxing it (see `serve.rs`).
pub async fn read_body<B>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let too_large = || {
        ApiError::too_large(format!(
            "request body is larger than the limit of {limit} bytes"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut collect = std::pin::pin!(Limited::new(body, limit).collect());
    // hyper has usually handed the whole body over before the handler first runs: then
    // no timer is needed (setting one up reads the clock; ~1.5% of an ungated dispatch).
    let collected = match collect.as_mut().now_or_never() {
        Some(result) => Ok(result),
        None => tokio::time::timeout(timeout, collect).await,
    };
    match collected {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::invalid(format!(
            "could not read the request body: {e}"
        ))),
        Err(_) => Err(ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            code: "REQUEST_TIMEOUT",
            message: format!("the request body did not arrive within {timeout:?}"),
        }),
    }
}

/// Parses one JSON value; the message names the field (`payload`, `[3].tenant`, …) and the
/// problem. Anything but whitespace after the value is an error: `{A}{B}` is not `{A}`.
pub fn parse<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    // Fast path for valid input: plain serde_json. Tracking the path costs about as much
    // as the parse itself and is only needed for an error message, so any failure here is
    // parsed again by `parse_tracked`, which gives the error. Checking the whole body as
    // UTF-8 once lets serde_json read it as `&str` instead of checking string by string.
    if let Ok(text) = std::str::from_utf8(bytes) {
        let de = &mut serde_json::Deserializer::from_str(text);
        if let Ok(value) = T::deserialize(&mut *de)
            && de.end().is_ok()
        {
            return Ok(value);
        }
    }
    parse_tracked(bytes, what)
}

/// [`parse`] with the path of the offending field tracked (serde_path_to_error).
fn parse_tracked<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
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
    })?;
    de.end().map_err(|e| {
        ApiError::invalid(format!("malformed JSON {what}: data after the value: {e}"))
    })?;
    Ok(value)
}

/// Parses a JSON object: serde would also read a struct from a positional array
/// (`["ns","t",…]`), which no client means and which hides mistakes.
pub fn parse_object<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => parse(bytes, what),
        Some(b'[') => Err(ApiError::invalid(format!(
            "invalid {what}: expected a JSON object, got an array"
        ))),
        _ => parse::<serde::de::IgnoredAny>(bytes, what).and_then(|_| {
            Err(ApiError::invalid(format!(
                "invalid {what}: expected a JSON object"
            )))
        }),
    }
}

/// A JSON response, as `axum::Json` answers (`content-type: application/json`, a 500 with
/// the error as text if serialization fails), serialized into a `Vec` rather than through
/// `BytesMut`'s writer: serde_json writes in many small pieces, and the `Vec` writer makes
/// the dispatch answer about a third cheaper to serialize.
pub struct JsonBody<T>(pub T);

impl<T: Serialize> IntoResponse for JsonBody<T> {
    fn into_response(self) -> Response {
        let mut buf = Vec::with_capacity(128);
        match serde_json::to_writer(&mut buf, &self.0) {
            Ok(()) => {
                let mut response = Response::new(Body::from(buf));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                )],
                e.to_string(),
            )
                .into_response(),
        }
    }
}
