//! Trace context end to end: a W3C `traceparent` on a dispatch is continued by the
//! dispatch's span, by every request to a provider's peer, and by deferred work (groups,
//! schedules, chains, state-machine timeouts, dead-letter replays), whose stored payload
//! keeps the context in effect when it was deferred.
//!
//! Two carriers, on purpose:
//! - the [`Action`](crate::action::Action) holds its context (`trace_context`), so whatever
//!   stores an action (a timer task, a dead letter, a chain run) stores the context too;
//! - the context of the work in progress (a dispatch, a worker task) is task-local
//!   ([`current`]), so the shared HTTP helper can add the header without the action, and
//!   provider call sites need no change.
//!
//! A request to a peer is a child of [`current`], else of its action's context.

pub mod context;
pub mod otel;

use std::future::Future;

use reqwest::header::{HeaderMap, HeaderValue};
use tracing::Instrument;

pub use context::TraceContext;
pub use otel::Kind;

/// What the gateway does with trace context (`--trace-propagation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Propagation {
    /// Continue an incoming `traceparent`, else start a new trace per dispatch.
    #[default]
    Always,
    /// Only continue an incoming `traceparent`; without one, nothing is propagated.
    Incoming,
    /// Ignore incoming headers and send none.
    Off,
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// The context of the work in progress, if any.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(TraceContext::clone).ok()
}

/// Whether some work in progress has a context.
pub fn has_current() -> bool {
    CURRENT.try_with(|_| ()).is_ok()
}

/// Runs `f` as work under `ctx` (as itself when `None`).
pub async fn within<F: Future>(ctx: Option<TraceContext>, f: F) -> F::Output {
    match ctx {
        Some(ctx) => CURRENT.scope(ctx, f).await,
        None => f.await,
    }
}

/// A span that was opened: exported when an OTLP endpoint is configured (else disabled),
/// and the context work under it continues (`None`: no trace).
pub struct Opened {
    pub span: tracing::Span,
    pub ctx: Option<TraceContext>,
}

impl Opened {
    fn none() -> Opened {
        Opened {
            span: tracing::Span::none(),
            ctx: None,
        }
    }

    /// Runs `f` inside the span, as work under its context.
    pub async fn run<F: Future>(self, f: F) -> F::Output {
        within(self.ctx, f).instrument(self.span).await
    }
}

/// Opens a span of `kind` under `parent` (a new trace when `None`). Without an exporter
/// this only draws a new span id (and a trace id for a new trace).
pub fn open(kind: Kind, parent: Option<&TraceContext>) -> Opened {
    if otel::enabled() {
        let (span, ctx) = otel::span(kind, parent);
        return Opened { span, ctx };
    }
    Opened {
        span: tracing::Span::none(),
        ctx: Some(parent.map_or_else(TraceContext::new_root, TraceContext::child)),
    }
}

/// The span of a request arriving with `headers` (a dispatch, a batch): continues a valid
/// incoming `traceparent`, else starts a new trace, as `policy` says.
pub fn incoming(headers: &HeaderMap, kind: Kind, policy: Propagation) -> Opened {
    match policy {
        Propagation::Off => Opened::none(),
        Propagation::Always => open(kind, TraceContext::from_headers(headers).as_ref()),
        Propagation::Incoming => match TraceContext::from_headers(headers) {
            Some(parent) => open(kind, Some(&parent)),
            None => Opened::none(),
        },
    }
}

/// The caller's valid `traceparent`, for work a request defers without a span of its own
/// (a group flushed or an event moved by hand); `None` with propagation off.
pub fn caller_context(headers: &HeaderMap, policy: Propagation) -> Option<TraceContext> {
    match policy {
        Propagation::Off => None,
        Propagation::Always | Propagation::Incoming => TraceContext::from_headers(headers),
    }
}

/// The span of deferred work that stored `stored` when it was deferred. Work stored
/// without a context (before this existed, or with propagation off) starts a new trace
/// only when `policy` is `always`.
pub fn resumed(stored: Option<&TraceContext>, kind: Kind, policy: Propagation) -> Opened {
    match (stored, policy) {
        (_, Propagation::Off) => Opened::none(),
        (Some(parent), _) => open(kind, Some(parent)),
        (None, Propagation::Always) => open(kind, None),
        (None, Propagation::Incoming) => Opened::none(),
    }
}

/// The span of a dead letter's replay: it continues the trace of the failed delivery.
pub fn replay_of(action: &crate::action::Action, policy: Propagation) -> Opened {
    let opened = resumed(action.trace.as_ref(), Kind::Replay, policy);
    if !opened.span.is_disabled() {
        opened
            .span
            .record("acteon.provider", action.provider.as_str());
    }
    opened
}

/// A span of `kind` under `parent`; none when there is no trace.
pub fn under(kind: Kind, parent: Option<&TraceContext>) -> Opened {
    match parent {
        Some(p) => open(kind, Some(p)),
        None => Opened::none(),
    }
}

/// Names the action on its dispatch span: namespace, provider, type and id (no payload,
/// metadata or headers: they may hold secrets).
pub fn record_action(span: &tracing::Span, a: &crate::action::Action) {
    if span.is_disabled() {
        return;
    }
    span.record("acteon.namespace", a.namespace.as_str());
    span.record("acteon.provider", a.provider.as_str());
    span.record("acteon.action_type", a.action_type.as_str());
    span.record("acteon.action_id", a.id.as_str());
}

/// The outcome of a dispatch on its span; `None`: the request was refused (an error).
pub fn record_outcome(span: &tracing::Span, outcome: Option<&'static str>) {
    if span.is_disabled() {
        return;
    }
    match outcome {
        Some(label) => span.record("acteon.outcome", label),
        None => span.record("otel.status_code", "error"),
    };
}

/// The size of a batch on its span; `None`: the batch was refused.
pub fn record_batch(span: &tracing::Span, size: Option<usize>) {
    if span.is_disabled() {
        return;
    }
    match size {
        Some(n) => span.record("acteon.batch_size", n),
        None => span.record("otel.status_code", "error"),
    };
}

/// Adds `traceparent` (and `tracestate`) for one request to a peer, made for the work in
/// progress (else for `fallback`, the action's own context), and returns the request's
/// span. Nothing is added without a trace.
pub fn inject(
    req: reqwest::RequestBuilder,
    fallback: Option<&TraceContext>,
) -> (reqwest::RequestBuilder, tracing::Span) {
    let Some(opened) = outgoing(fallback) else {
        return (req, tracing::Span::none());
    };
    let Some((parent, state)) = opened.ctx.as_ref().and_then(headers_of) else {
        return (req, opened.span);
    };
    // `headers` replaces what is there: two `traceparent` lines would make both invalid.
    let mut headers = HeaderMap::with_capacity(2);
    headers.insert(context::TRACEPARENT.clone(), parent);
    if let Some(state) = state {
        headers.insert(context::TRACESTATE.clone(), state);
    }
    (req.headers(headers), opened.span)
}

/// The span (and context) of one request to a peer, under the work in progress or
/// `fallback`.
pub fn outgoing(fallback: Option<&TraceContext>) -> Option<Opened> {
    CURRENT
        .try_with(|c| open(Kind::Request, Some(c)))
        .ok()
        .or_else(|| fallback.map(|f| open(Kind::Request, Some(f))))
}

/// `traceparent` and `tracestate` header values of `ctx`.
pub fn headers_of(ctx: &TraceContext) -> Option<(HeaderValue, Option<HeaderValue>)> {
    let parent = HeaderValue::try_from(ctx.traceparent()).ok()?;
    let state = ctx
        .state
        .as_deref()
        .and_then(|s| HeaderValue::from_str(s).ok());
    Some((parent, state))
}

/// Records a peer's answer on a request span: its status, and an error status when there
/// was no 2xx answer. Free on a disabled span.
pub fn record_answer(span: &tracing::Span, status: Option<u16>) {
    if span.is_disabled() {
        return;
    }
    if let Some(code) = status {
        span.record("http.response.status_code", code);
    }
    if !status.is_some_and(|c| (200..300).contains(&c)) {
        span.record("otel.status_code", "error");
    }
}

/// Marks a span failed (a task or replay that did not succeed).
pub fn record_failure(span: &tracing::Span) {
    if !span.is_disabled() {
        span.record("otel.status_code", "error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(tp: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_str(tp).unwrap());
        h
    }

    #[test]
    fn policies() {
        let good = headers(PARENT);
        let bad = headers("00-zz");
        let continued = incoming(&good, Kind::Dispatch, Propagation::Always)
            .ctx
            .unwrap();
        assert_eq!(continued.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(continued.traceparent(), PARENT, "a new span id");
        let fresh = incoming(&bad, Kind::Dispatch, Propagation::Always)
            .ctx
            .unwrap();
        assert_ne!(fresh.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(
            incoming(&bad, Kind::Dispatch, Propagation::Incoming)
                .ctx
                .is_none()
        );
        assert!(
            incoming(&good, Kind::Dispatch, Propagation::Incoming)
                .ctx
                .is_some()
        );
        assert!(
            incoming(&good, Kind::Dispatch, Propagation::Off)
                .ctx
                .is_none()
        );
        assert!(
            resumed(None, Kind::Worker("x"), Propagation::Always)
                .ctx
                .is_some()
        );
        assert!(
            resumed(None, Kind::Worker("x"), Propagation::Incoming)
                .ctx
                .is_none()
        );
        assert!(
            resumed(Some(&continued), Kind::Worker("x"), Propagation::Off)
                .ctx
                .is_none()
        );
    }

    #[tokio::test]
    async fn requests_are_children_of_the_current_work_else_of_the_action() {
        let action_ctx = TraceContext::new_root();
        let work = TraceContext::new_root();
        let (req, _) = inject(reqwest::Client::new().get("http://x/"), Some(&action_ctx));
        let sent = req.build().unwrap();
        let tp = sent.headers()["traceparent"].to_str().unwrap().to_owned();
        assert!(tp.contains(&action_ctx.trace_id_hex()));
        let under_work = within(Some(work.clone()), async {
            let (req, _) = inject(reqwest::Client::new().get("http://x/"), Some(&action_ctx));
            req.build().unwrap().headers()["traceparent"]
                .to_str()
                .unwrap()
                .to_owned()
        })
        .await;
        assert!(under_work.contains(&work.trace_id_hex()));
        let (req, _) = inject(reqwest::Client::new().get("http://x/"), None);
        assert!(req.build().unwrap().headers().get("traceparent").is_none());
        // A header already set (a webhook's configured one) is replaced, not doubled.
        let req = reqwest::Client::new()
            .get("http://x/")
            .header("traceparent", "00-configured")
            .header("tracestate", "configured=1");
        let (req, _) = inject(req, Some(&action_ctx));
        let sent = req.build().unwrap();
        let all: Vec<_> = sent.headers().get_all("traceparent").iter().collect();
        assert_eq!(all.len(), 1);
        assert!(
            all[0]
                .to_str()
                .unwrap()
                .contains(&action_ctx.trace_id_hex())
        );
        // The trace had no state: a configured one is left as it is.
        assert_eq!(sent.headers()["tracestate"], "configured=1");
    }
}
