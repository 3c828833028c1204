//! The bearer token of a request, read strictly: exactly one `Authorization` header, the
//! `Bearer` scheme (any case), a non-empty token of visible ASCII no longer than
//! [`MAX_TOKEN_LEN`]. Anything else is a 401 whose message names the problem, never the
//! token.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;

/// Longest token accepted (ServiceAccount JWTs are about 1 KiB; API tokens far less).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

pub fn bearer_token(headers: &HeaderMap) -> Result<&str, String> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err("missing Authorization header (Bearer token)".into());
    };
    if values.next().is_some() {
        return Err("more than one Authorization header".into());
    }
    let text = value
        .to_str()
        .map_err(|_| "the Authorization header is not visible ASCII".to_owned())?;
    let (scheme, token) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("the Authorization header is not a Bearer token".into());
    }
    let token = token.trim();
    if token.is_empty() {
        return Err("empty Bearer token".into());
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(format!("Bearer token longer than {MAX_TOKEN_LEN} bytes"));
    }
    if token.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err("the Bearer token holds characters a token cannot".into());
    }
    Ok(token)
}

/// Whether `token` has a JWT's shape (three base64url parts): only those go to the API
/// server, so random strings cost no TokenReview.
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn a_bearer_token_is_read_in_any_scheme_case() {
        assert_eq!(bearer_token(&with(&[b"Bearer abc"])), Ok("abc"));
        assert_eq!(bearer_token(&with(&[b"bearer  abc "])), Ok("abc"));
    }

    #[test]
    fn everything_else_is_refused_with_a_reason() {
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
        for (headers, why) in [
            (with(&[]), "missing"),
            (with(&[b"Bearer"]), "empty"),
            (with(&[b"Bearer   "]), "empty"),
            (with(&[b"Basic dXNlcjpwdw=="]), "not a Bearer"),
            (with(&[b"Bearer a", b"Bearer b"]), "more than one"),
            (with(&[b"Bearer \xff\xfe"]), "visible ASCII"),
            (with(&[long.as_bytes()]), "longer than"),
            (with(&[b"Bearer a b"]), "cannot"),
        ] {
            let err = bearer_token(&headers).unwrap_err();
            assert!(err.contains(why), "{err} lacks {why}");
        }
    }

    #[test]
    fn only_jwt_shapes_go_to_the_api_server() {
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(!looks_like_jwt("plain-api-token"));
        assert!(!looks_like_jwt("a..b"));
        assert!(!looks_like_jwt("a.b.c.d"));
    }
}
