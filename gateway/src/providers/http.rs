//! What the providers that speak HTTP (and SMTP) share: one attempt's failure, the retry
//! loop around attempts (exponential backoff with jitter, honouring a peer's retry hint),
//! transport errors without their URL, and `Retry-After`.
//!
//! Error codes are a closed set (they label metrics); what the peer said goes in the
//! message, bounded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::HeaderMap;
use tracing::Instrument;

use super::response::{Read, ResponsePolicy, read_bounded};
use acteon_api::crd::ProviderSpec;

use super::{ProviderError, Retry};

/// One answered request: its status, the peer's retry hint, the headers the response
/// policy keeps, and the body read within bounds.
pub struct Answer {
    pub status: reqwest::StatusCode,
    pub retry_after: Option<Duration>,
    pub headers: HashMap<String, String>,
    pub read: Read,
}

/// Sends `req` with the JSON `body` (as `content_type`) under `timeout` and reads the
/// answer within bounds; a transport failure names `target`, never the URL. The request
/// carries the trace context of the work in progress (`traceparent`, a new span id).
pub async fn send_json(
    req: reqwest::RequestBuilder,
    timeout: Duration,
    content_type: &'static str,
    body: &[u8],
    policy: &ResponsePolicy,
    target: &str,
) -> Result<Answer, Attempt> {
    let (req, span) = crate::trace::inject(req, None);
    let answer = exchange(req, timeout, content_type, body, policy, target)
        .instrument(span.clone())
        .await;
    crate::trace::record_answer(&span, answer.as_ref().ok().map(|a| a.status.as_u16()));
    answer
}

async fn exchange(
    req: reqwest::RequestBuilder,
    timeout: Duration,
    content_type: &'static str,
    body: &[u8],
    policy: &ResponsePolicy,
    target: &str,
) -> Result<Answer, Attempt> {
    let resp = req
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| Attempt::transport(target, &e))?;
    let status = resp.status();
    let retry_after = retry_after(resp.headers());
    let headers = policy.headers(resp.headers());
    let read = read_bounded(resp)
        .await
        .map_err(|e| Attempt::transport(target, &e))?;
    Ok(Answer {
        status,
        retry_after,
        headers,
        read,
    })
}

/// One attempt's failure, and whether another attempt may help.
#[derive(Debug)]
pub struct Attempt {
    pub code: &'static str,
    pub message: String,
    pub retryable: bool,
    /// The peer asked not to be called again before this long (`Retry-After`, Discord's
    /// `retry_after`).
    pub retry_after: Option<Duration>,
}

impl Attempt {
    pub fn new(code: &'static str, message: impl Into<String>, retryable: bool) -> Attempt {
        Attempt {
            code,
            message: message.into(),
            retryable,
            retry_after: None,
        }
    }

    /// A transport error of reqwest (no answer, or an unreadable one), naming `target`
    /// (already redacted) and never reqwest's own URL.
    pub fn transport(target: &str, e: &reqwest::Error) -> Attempt {
        Attempt::new(
            if e.is_timeout() {
                "TIMEOUT"
            } else {
                "CONNECTION"
            },
            format!("{target}: {}", transport_error_text(e)),
            // No answer at all, or a body cut short: nothing was (knowingly) accepted.
            e.is_timeout() || e.is_connect() || e.is_request() || e.is_body(),
        )
    }
}

/// Runs `attempt` until it succeeds, fails for good, or `retry.maxAttempts` attempts have
/// failed retryably. Between attempts: exponential backoff with jitter, or the peer's retry
/// hint when it gives one. A hint longer than `retry.maxBackoffMs` ends the delivery at once
/// (retryable): waiting that long would hold the caller past every bound the delivery
/// promises, and calling sooner is what the peer asked us not to do.
pub async fn with_retries<T, F, Fut>(retry: Retry, mut attempt: F) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Attempt>>,
{
    let attempts = AtomicU32::new(0);
    let backoff = ExponentialBuilder::default()
        .with_min_delay(retry.initial_backoff)
        .with_max_delay(retry.max_backoff)
        .with_max_times(retry.max_attempts.saturating_sub(1) as usize)
        .with_jitter();
    let result = (|| {
        attempts.fetch_add(1, Ordering::Relaxed);
        attempt()
    })
    .retry(backoff)
    .when(|e: &Attempt| e.retryable)
    .adjust(|e: &Attempt, planned| {
        let planned = planned?;
        match e.retry_after {
            Some(hint) if hint > retry.max_backoff => None,
            Some(hint) => Some(hint.max(planned)),
            None => Some(planned),
        }
    })
    .await;
    let attempts = attempts.load(Ordering::Relaxed);
    result.map_err(|e| {
        let message = match e.retry_after {
            Some(hint) if e.retryable => {
                format!(
                    "{} (asked to retry after {} s)",
                    e.message,
                    hint.as_secs_f64()
                )
            }
            _ => e.message,
        };
        ProviderError::new(e.code, message, e.retryable, attempts)
    })
}

/// What every HTTP provider takes from its Provider spec: how much of answers it returns,
/// the timeout of one attempt, and the retries around attempts.
#[derive(Clone, Copy, Debug)]
pub struct HttpSettings {
    pub response: ResponsePolicy,
    pub timeout: Duration,
    pub retry: Retry,
}

impl HttpSettings {
    pub fn from_spec(spec: &ProviderSpec) -> HttpSettings {
        HttpSettings {
            response: ResponsePolicy {
                redact: spec.redact_response.unwrap_or(false),
            },
            timeout: Duration::from_secs(spec.timeout_seconds.unwrap_or(10)),
            retry: Retry::from_spec(spec),
        }
    }

    /// [`send_json`] with these settings' timeout and response policy.
    pub async fn send_json(
        &self,
        req: reqwest::RequestBuilder,
        content_type: &'static str,
        body: &[u8],
        target: &str,
    ) -> Result<Answer, Attempt> {
        send_json(
            req,
            self.timeout,
            content_type,
            body,
            &self.response,
            target,
        )
        .await
    }

    /// The longest one delivery takes, retries included.
    pub fn max_delivery_time(&self) -> Duration {
        self.retry.worst_case(self.timeout)
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by the peers we speak to and
/// counts as absent).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get("retry-after")?.to_str().ok()?;
    let secs: f64 = text.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

/// The text of `e` without its URL. reqwest's own text quotes the full URL (which may
/// hold credentials); `without_url` takes the error by value and errors are not `Clone`,
/// so the text is rebuilt from the error kind and its sources, and any URL left in them
/// is redacted.
pub fn transport_error_text(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    if e.url().is_none() {
        return acteon_api::redact::redact_urls_in(&e.to_string());
    }
    let kind = if e.is_timeout() {
        "operation timed out"
    } else if e.is_connect() {
        "error connecting"
    } else if e.is_request() {
        "error sending request"
    } else if e.is_body() || e.is_decode() {
        "error reading the answer"
    } else {
        "request failed"
    };
    let mut text = kind.to_owned();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    acteon_api::redact::redact_urls_in(&text)
}

/// At most `max` characters of a peer's text, for a message.
pub fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_is_read_in_seconds_and_bounded() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after", HeaderValue::from_static("0.25"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        for bad in ["-1", "NaN", "Wed, 21 Oct 2015 07:28:00 GMT", "inf"] {
            h.insert("retry-after", HeaderValue::from_static(bad));
            assert_eq!(retry_after(&h), None, "{bad}");
        }
        h.insert("retry-after", HeaderValue::from_static("1e300"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(86_400)));
    }

    fn retry(max_attempts: u32, max_backoff_ms: u64) -> Retry {
        Retry {
            max_attempts,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(max_backoff_ms),
        }
    }

    #[tokio::test]
    async fn a_short_hint_is_waited_for_and_a_long_one_ends_the_delivery() {
        let hinted = |ms| {
            move || async move {
                let mut a = Attempt::new("RATE_LIMITED", "slow down", true);
                a.retry_after = Some(Duration::from_millis(ms));
                Err::<(), _>(a)
            }
        };
        let start = std::time::Instant::now();
        let e = with_retries(retry(3, 500), hinted(100)).await.unwrap_err();
        assert_eq!(e.attempts, 3);
        assert!(start.elapsed() >= Duration::from_millis(200));
        let e = with_retries(retry(3, 50), hinted(5000)).await.unwrap_err();
        assert_eq!((e.attempts, e.retryable), (1, true));
        assert!(e.message.contains("retry after 5 s"), "{}", e.message);
    }

    #[test]
    fn long_text_is_cut() {
        assert_eq!(bounded("abc", 5), "abc");
        assert_eq!(bounded("ééééé", 2), "éé…");
    }
}
