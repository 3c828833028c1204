//! The `webhook` provider: the payload as a JSON body to a URL.
//!
//! Each attempt has the provider's timeout. Connect errors, timeouts and 5xx answers are
//! retried with exponential backoff (with jitter) up to `retry.maxAttempts`; any other
//! non-2xx answer fails at once. A non-2xx answer is never reported as success.
//!
//! The URL may hold credentials (`user:password@`, `?api_key=`): messages show it only
//! redacted, and transport errors are taken without their URL. What of the answer reaches
//! the caller is bounded and filtered by [`super::response`].

use std::time::Duration;

use acteon_api::crd::ProviderSpec;
use acteon_api::crd::provider::WebhookProvider as WebhookSpec;
use acteon_api::redact::redact_url;
use async_trait::async_trait;
use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};
use tracing::Instrument;

use super::http::{Attempt, HttpSettings, with_retries};
use super::response::read_bounded;
use super::{Provider, ProviderError};
use crate::action::Action;
use crate::outcome::ProviderResponse;

const ACTION_ID: HeaderName = HeaderName::from_static("x-acteon-action-id");
const NAMESPACE: HeaderName = HeaderName::from_static("x-acteon-namespace");
const TENANT: HeaderName = HeaderName::from_static("x-acteon-tenant");
const ACTION_TYPE: HeaderName = HeaderName::from_static("x-acteon-action-type");

pub struct WebhookProvider {
    url: String,
    /// `url` parsed once (otherwise parsed again by every request); `None` when it does not
    /// parse, and each attempt then fails with reqwest's error as it would.
    parsed_url: Option<reqwest::Url>,
    /// `url` redacted: what messages and logs show.
    url_shown: String,
    method: Method,
    headers: Vec<(String, String)>,
    /// Headers from Secrets (`secretHeaders`), marked sensitive; never logged or shown.
    secret_headers: Vec<(HeaderName, HeaderValue)>,
    settings: HttpSettings,
    http: reqwest::Client,
}

impl std::fmt::Debug for WebhookProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookProvider")
            .field("url", &self.url_shown)
            .field("method", &self.method)
            .field("headers", &self.headers)
            .field(
                "secret_headers",
                &self
                    .secret_headers
                    .iter()
                    .map(|(k, _)| (k.as_str(), "***"))
                    .collect::<Vec<_>>(),
            )
            .field("timeout", &self.settings.timeout)
            .field("retry", &self.settings.retry)
            .finish_non_exhaustive()
    }
}

impl WebhookProvider {
    pub fn new(w: &WebhookSpec, spec: &ProviderSpec, http: reqwest::Client) -> WebhookProvider {
        WebhookProvider {
            url: w.url.clone(),
            parsed_url: reqwest::Url::parse(&w.url).ok(),
            url_shown: redact_url(&w.url),
            settings: HttpSettings::from_spec(spec),
            method: w
                .method
                .as_deref()
                .and_then(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
                .unwrap_or(Method::POST),
            headers: w
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            secret_headers: Vec::new(),
            http,
        }
    }

    /// Adds headers whose values come from Secrets, sent on every request; a plain header
    /// of the same name is dropped (the secret one wins).
    pub fn with_secret_headers(mut self, headers: Vec<(HeaderName, HeaderValue)>) -> Self {
        self.headers.retain(|(k, _)| {
            !headers
                .iter()
                .any(|(s, _)| s.as_str().eq_ignore_ascii_case(k))
        });
        self.secret_headers = headers;
        self
    }

    async fn attempt(&self, a: &Action) -> Result<ProviderResponse, Attempt> {
        let req = match &self.parsed_url {
            Some(url) => self.http.request(self.method.clone(), url.clone()),
            None => self.http.request(self.method.clone(), &self.url),
        };
        let mut req = req
            .timeout(self.settings.timeout)
            .header(ACTION_ID, &a.id)
            .header(NAMESPACE, &a.namespace)
            .header(TENANT, &a.tenant)
            .header(ACTION_TYPE, &a.action_type)
            .json(&a.payload);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        for (k, v) in &self.secret_headers {
            // Cheap clones: a static name or shared bytes.
            req = req.header(k.clone(), v.clone());
        }
        // Last: a configured header cannot replace the trace context of this request.
        let (req, span) = crate::trace::inject(req, a.trace.as_ref());
        self.exchange(req, &span).instrument(span.clone()).await
    }

    /// Sends one request and reads its answer; the answer's status goes on `span`.
    async fn exchange(
        &self,
        req: reqwest::RequestBuilder,
        span: &tracing::Span,
    ) -> Result<ProviderResponse, Attempt> {
        let resp = req.send().await.map_err(|e| {
            crate::trace::record_answer(span, None);
            let mut a = Attempt::transport(&self.target(), &e);
            // An answer cut short is retried; a request that failed before any answer
            // only when it may not have reached the server (as `transport` decides).
            a.retryable = e.is_timeout() || e.is_connect() || e.is_request();
            a
        })?;
        let status = resp.status();
        crate::trace::record_answer(span, Some(status.as_u16()));
        let headers = self.settings.response.headers(resp.headers());
        let read = read_bounded(resp).await.map_err(|e| {
            let mut a = Attempt::transport(&self.target(), &e);
            a.code = "CONNECTION";
            a.retryable = true;
            a
        })?;
        if !status.is_success() {
            return Err(Attempt::new(
                if status.is_server_error() {
                    "HTTP_5XX"
                } else {
                    "HTTP_4XX"
                },
                format!(
                    "{} answered {status}{}",
                    self.target(),
                    self.settings.response.excerpt(&read)
                ),
                status.is_server_error() || status.as_u16() == 429,
            ));
        }
        let mut r = ProviderResponse::success(self.settings.response.body(status.as_u16(), &read));
        r.headers = headers;
        Ok(r)
    }

    /// What messages call the request: method and redacted URL.
    fn target(&self) -> String {
        format!("{} {}", self.method, self.url_shown)
    }
}

#[async_trait]
impl Provider for WebhookProvider {
    async fn execute(&self, a: &Action) -> Result<ProviderResponse, ProviderError> {
        with_retries(self.settings.retry, || self.attempt(a)).await
    }

    fn max_delivery_time(&self) -> Option<Duration> {
        Some(self.settings.max_delivery_time())
    }
}
