//! What of a provider's HTTP answer reaches the caller: bounded, filtered, redacted.
//!
//! A provider's answer is not ours to pass on whole: it can be huge, set cookies, or echo
//! the request (with the API key of its URL). So an outcome carries at most
//! [`MAX_BODY`] bytes of the body (longer ones become a truncated string), only the
//! headers of [`SAFE_HEADERS`], and any URL in the body redacted; a failure message quotes
//! at most [`MAX_EXCERPT`] characters. At most [`MAX_READ`] bytes are read at all. With
//! the Provider's `redactResponse`, nothing of the answer but its status is returned.

use std::collections::HashMap;

use acteon_api::redact::redact_urls_in;
use reqwest::header::HeaderMap;
use serde_json::Value;

/// Longest body kept in an outcome, in bytes.
pub const MAX_BODY: usize = 4096;
/// Longest body excerpt in a failure message, in characters.
pub const MAX_EXCERPT: usize = 256;
/// Bytes read from an answer at most; the rest is left unread (the connection is dropped).
pub const MAX_READ: usize = 64 * 1024;
/// Longest header value kept, in bytes.
const MAX_HEADER_VALUE: usize = 256;
/// Headers an outcome may carry: what a caller needs to act on the answer (its type, when
/// to retry) or to trace it with the provider. Anything else (cookies, auth challenges,
/// internal hosts) stays here.
pub const SAFE_HEADERS: &[&str] = &[
    "content-type",
    "retry-after",
    "x-request-id",
    "request-id",
    "x-correlation-id",
    "x-amzn-requestid",
    "x-github-request-id",
];

/// How much of answers a provider returns (the Provider's `redactResponse`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponsePolicy {
    /// Return nothing of the answer but its status.
    pub redact: bool,
}

/// An answer's body as read: at most [`MAX_READ`] bytes.
pub struct Read {
    pub bytes: Vec<u8>,
    /// More was sent than was read.
    pub cut: bool,
}

/// Reads at most [`MAX_READ`] bytes of `resp`'s body.
pub async fn read_bounded(mut resp: reqwest::Response) -> reqwest::Result<Read> {
    let mut bytes = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = MAX_READ - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            return Ok(Read { bytes, cut: true });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Read { bytes, cut: false })
}

impl ResponsePolicy {
    /// The headers an outcome carries.
    pub fn headers(&self, headers: &HeaderMap) -> HashMap<String, String> {
        if self.redact {
            return HashMap::new();
        }
        headers
            .iter()
            .filter(|(name, _)| SAFE_HEADERS.contains(&name.as_str()))
            .filter_map(|(name, value)| {
                let value = value.to_str().ok()?;
                Some((
                    name.as_str().to_owned(),
                    truncate(value, MAX_HEADER_VALUE).to_owned(),
                ))
            })
            .collect()
    }

    /// The body an outcome carries: the answer's JSON when it is JSON and fits; otherwise
    /// (plain text, empty, cut to [`MAX_BODY`] bytes) Acteon's envelope
    /// `{"status_code": 200, "body": "<text>"}`, so a client that decodes `body` as a JSON
    /// object (Acteon's Go SDK does) never fails on an action that was delivered. URLs in
    /// it redacted; an empty object when redacted.
    pub fn body(&self, status: u16, read: &Read) -> Value {
        if self.redact {
            return Value::Object(Default::default());
        }
        let fits = !read.cut && read.bytes.len() <= MAX_BODY;
        let text = String::from_utf8_lossy(&read.bytes[..read.bytes.len().min(MAX_BODY)]);
        let text = redacted(&text);
        if fits && let Ok(value) = serde_json::from_str(&text) {
            return value;
        }
        let text = if fits {
            text
        } else {
            format!("{text}… (truncated)")
        };
        serde_json::json!({"status_code": status, "body": text})
    }

    /// What a failure message says of the answer after its status: a short excerpt of the
    /// body, URLs redacted, or nothing when redacted or empty.
    pub fn excerpt(&self, read: &Read) -> String {
        if self.redact || read.bytes.is_empty() {
            return String::new();
        }
        let head = &read.bytes[..read.bytes.len().min(MAX_EXCERPT * 4)];
        let text = String::from_utf8_lossy(head);
        let text = truncate(&text, MAX_EXCERPT).to_owned();
        let cut = text.len() < read.bytes.len();
        format!(": {}{}", redacted(&text), if cut { "…" } else { "" })
    }
}

/// The parts of a webhook URL that are its credential, cut out of anything the peer says
/// back (an error page of a proxy, or a peer that echoes the request line, quotes the path
/// without `://`, so URL redaction alone misses it): the path, its long segments (Discord's
/// and Slack's tokens, a Teams workflow id) and its long query values (a Workflows `sig`).
#[derive(Clone, Debug, Default)]
pub struct UrlSecrets(Vec<String>);

/// Shorter path segments and query values are words (`api`, `webhooks`, `services`).
const MIN_SECRET_SEGMENT: usize = 12;
const MIN_SECRET_QUERY_VALUE: usize = 8;

/// A webhook URL read from a Secret, with its secret parts: fails naming what is wrong,
/// never the value.
pub fn secret_webhook_url(value: &str) -> Result<(reqwest::Url, UrlSecrets), String> {
    let url = reqwest::Url::parse(value.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| "the Secret's value is not an http(s) URL".to_owned())?;
    let secrets = UrlSecrets::of(&url);
    Ok((url, secrets))
}

impl UrlSecrets {
    pub fn of(url: &reqwest::Url) -> UrlSecrets {
        let mut parts = Vec::new();
        if url.path().len() > 1 {
            parts.push(url.path().to_owned());
        }
        parts.extend(
            url.path_segments()
                .into_iter()
                .flatten()
                .filter(|s| s.len() >= MIN_SECRET_SEGMENT)
                .map(str::to_owned),
        );
        parts.extend(
            url.query_pairs()
                .map(|(_, v)| v.into_owned())
                .filter(|v| v.len() >= MIN_SECRET_QUERY_VALUE),
        );
        UrlSecrets(parts)
    }

    /// `text` with URLs redacted and every secret part replaced by `***` (the whole path
    /// first, so a quoted path reads `***` rather than `/api/***/***`).
    pub fn scrub(&self, text: &str) -> String {
        let mut text = redacted(text);
        for part in &self.0 {
            if text.contains(part.as_str()) {
                text = text.replace(part.as_str(), "***");
            }
        }
        text
    }
}

/// `text` with its URLs redacted (quick path when there is none).
fn redacted(text: &str) -> String {
    if text.contains("://") {
        redact_urls_in(text)
    } else {
        text.to_owned()
    }
}

/// The first `max` characters of `s` (never cut inside a character).
pub fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn read(bytes: &[u8], cut: bool) -> Read {
        Read {
            bytes: bytes.to_vec(),
            cut,
        }
    }

    #[test]
    fn url_secrets_cut_the_path_its_tokens_and_long_query_values() {
        let url = reqwest::Url::parse(
            "https://discord.com/api/webhooks/1234/Zx9tokenTOKENtoken_-42?wait=true&sig=s1gnatur3",
        )
        .expect("url");
        let secrets = UrlSecrets::of(&url);
        let said = secrets.scrub(
            "Cannot POST /api/webhooks/1234/Zx9tokenTOKENtoken_-42; token Zx9tokenTOKENtoken_-42, \
             sig s1gnatur3, see https://u:p@x.example/a?k=v",
        );
        for secret in ["Zx9tokenTOKENtoken_-42", "s1gnatur3", "u:p@"] {
            assert!(!said.contains(secret), "{secret} in {said}");
        }
        assert!(said.starts_with("Cannot POST ***; token ***"), "{said}");
        // Words of the path and short values stay: the message still reads.
        assert_eq!(secrets.scrub("webhooks api true"), "webhooks api true");
        assert_eq!(UrlSecrets::default().scrub("plain"), "plain");
    }

    #[test]
    fn only_safe_headers_pass_and_redact_passes_none() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("retry-after", HeaderValue::from_static("3"));
        h.insert("x-request-id", HeaderValue::from_static("r-1"));
        h.insert("set-cookie", HeaderValue::from_static("session=s3cr3t"));
        h.insert("x-internal-host", HeaderValue::from_static("db-7.internal"));
        h.insert(
            "www-authenticate",
            HeaderValue::from_static("Bearer realm=x"),
        );
        let got = ResponsePolicy::default().headers(&h);
        let mut names: Vec<_> = got.keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["content-type", "retry-after", "x-request-id"]);
        assert!(ResponsePolicy { redact: true }.headers(&h).is_empty());
    }

    #[test]
    fn bodies_are_bounded_and_redacted() {
        let p = ResponsePolicy::default();
        assert_eq!(
            p.body(200, &read(br#"{"ok":true}"#, false)),
            serde_json::json!({"ok": true})
        );
        let echo = br#"{"url":"http://u:pw@h/p?api_key=k"}"#;
        assert_eq!(
            p.body(200, &read(echo, false)),
            serde_json::json!({"url": "http://***@h/p?api_key=***"})
        );
        assert_eq!(
            p.body(200, &read(b"ok", false)),
            serde_json::json!({"status_code": 200, "body": "ok"}),
            "text is wrapped, as Acteon does"
        );
        assert_eq!(
            p.body(204, &read(b"", false)),
            serde_json::json!({"status_code": 204, "body": ""})
        );
        let big = vec![b'a'; MAX_BODY * 3];
        let cut = p.body(200, &read(&big, false));
        let s = cut["body"].as_str().expect("the text in the envelope");
        assert!(
            s.len() <= MAX_BODY + 20 && s.ends_with("(truncated)"),
            "{}",
            s.len()
        );
        let cut = p.body(200, &read(b"{}", true));
        assert_eq!(
            cut,
            serde_json::json!({"status_code": 200, "body": "{}… (truncated)"}),
            "a cut body is never passed as complete JSON"
        );
        assert_eq!(
            ResponsePolicy { redact: true }.body(200, &read(echo, false)),
            serde_json::json!({})
        );
    }

    #[test]
    fn excerpts_are_short_redacted_or_absent() {
        let p = ResponsePolicy::default();
        assert_eq!(p.excerpt(&read(b"", false)), "");
        assert_eq!(p.excerpt(&read(b"bad key", false)), ": bad key");
        let long = "é".repeat(1000);
        let e = p.excerpt(&read(long.as_bytes(), false));
        assert_eq!(e.chars().count(), 2 + MAX_EXCERPT + 1, "{e}");
        let e = p.excerpt(&read(b"invalid http://x/?api_key=k3y given", false));
        assert!(!e.contains("k3y"), "{e}");
        assert_eq!(
            ResponsePolicy { redact: true }.excerpt(&read(b"body", false)),
            ""
        );
    }
}
