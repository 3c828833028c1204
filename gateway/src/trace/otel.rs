//! Export of the gateway's spans with OpenTelemetry (OTLP over HTTP), only when an
//! endpoint is configured.
//!
//! The spans are `tracing` spans of one target ([`TARGET`]), bridged by
//! `tracing-opentelemetry` and seen by no other layer (the log lines stay as they were).
//! Without an exporter none is created at all: [`enabled`] is one relaxed load, and ids
//! are then drawn at random (see [`super::context`]).
//!
//! The SDK's batch processor exports from a thread of its own; its HTTP requests are
//! handed to the gateway's Tokio runtime (see [`OnRuntime`]) so that the exporter needs no
//! client stack of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::TraceContext;

/// The `tracing` target of every exported span; the log output filters it out.
pub const TARGET: &str = "acteon_otel";

/// Set once an exporter is installed.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OTLP endpoint is configured).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The OTLP encoding over HTTP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    #[default]
    #[value(name = "http/protobuf")]
    HttpProtobuf,
    #[value(name = "http/json")]
    HttpJson,
}

/// Where and how spans go.
#[derive(Clone, Debug)]
pub struct OtlpOptions {
    /// The collector's base URL (`http://collector:4318`); `/v1/traces` is appended unless
    /// the URL already ends with it.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// `service.instance.id` (the gateway id).
    pub instance: Option<String>,
}

/// The installed exporter; [`Exporter::shutdown`] sends what is still queued.
pub struct Exporter {
    provider: SdkTracerProvider,
}

/// Longest wait for the last spans to be sent at shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one export request (connect to last byte).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest collector answer read (it is a small protobuf or JSON message).
const MAX_ANSWER: usize = 64 * 1024;

impl Exporter {
    /// Flushes the queue and stops the export thread. Blocks: call it outside the runtime's
    /// worker threads (the export requests still need the runtime).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %e, "trace export: shutdown incomplete");
        }
        ENABLED.store(false, Ordering::Relaxed);
    }
}

/// The tracer layer for `options` and its exporter. Spans are sampled as their parent
/// was (an incoming `traceparent` without `sampled` is not recorded), new traces always.
pub fn layer<S>(
    options: &OtlpOptions,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<(impl tracing_subscriber::Layer<S>, Exporter)>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let client = reqwest::Client::builder().timeout(EXPORT_TIMEOUT).build()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(OnRuntime { client, runtime })
        .with_endpoint(traces_url(&options.endpoint))
        .with_protocol(match options.protocol {
            OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
            OtlpProtocol::HttpJson => Protocol::HttpJson,
        })
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| anyhow::anyhow!("--otlp-endpoint: {e}"))?;
    // The OTEL_BSP_* variables tune the batches (queue size, delay).
    let batch = BatchSpanProcessor::builder(exporter)
        .with_batch_config(BatchConfigBuilder::default().build())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(resource(options))
        .build();
    let tracer = provider.tracer("acteon-gateway");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        // Parents are always given explicitly; no thread-local context across awaits.
        .with_context_activation(false)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_level(false)
        .with_target(false);
    ENABLED.store(true, Ordering::Relaxed);
    Ok((layer, Exporter { provider }))
}

/// `service.name` is `acteon-gateway` unless `OTEL_SERVICE_NAME` says otherwise;
/// `OTEL_RESOURCE_ATTRIBUTES` adds to it (the chart puts the pod and namespace there).
fn resource(options: &OtlpOptions) -> Resource {
    let mut builder = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        builder = builder.with_service_name("acteon-gateway");
    }
    builder = builder.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if let Some(id) = &options.instance {
        builder = builder.with_attribute(KeyValue::new("service.instance.id", id.clone()));
    }
    builder.build()
}

/// The OTLP/HTTP traces URL of a collector's base URL.
pub fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Sends the exporter's requests on the gateway's runtime: the SDK's export thread has no
/// reactor, and a task on the runtime can be awaited from any executor.
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        self.runtime
            .spawn(async move { exchange(client, request).await })
            .await?
    }
}

async fn exchange(
    client: reqwest::Client,
    request: reqwest::Request,
) -> Result<Response<Bytes>, HttpError> {
    let mut resp = client.execute(request).await?;
    let mut answer = Response::builder().status(resp.status());
    if let Some(headers) = answer.headers_mut() {
        // Retry-After and the content type are what the exporter may look at.
        headers.extend(resp.headers().iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > MAX_ANSWER {
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(answer.body(Bytes::from(body))?)
}

/// What kind of span to open.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// `POST /v1/dispatch` (one per action of a batch too).
    Dispatch,
    /// `POST /v1/dispatch/batch`: the parent of its actions' spans.
    Batch,
    /// A worker task (the label names it).
    Worker(&'static str),
    /// `POST /v1/dlq/{id}/replay` and the bulk replay, per entry.
    Replay,
    /// One HTTP request (or SMTP message) to a provider's peer.
    Request,
}

/// Opens an exported span of `kind` under `parent` (a new trace without one) and returns
/// it with its context. Only called when [`enabled`].
pub fn span(kind: Kind, parent: Option<&TraceContext>) -> (tracing::Span, Option<TraceContext>) {
    use tracing::field::Empty;
    let span = match kind {
        Kind::Dispatch => tracing::info_span!(target: TARGET, parent: None, "dispatch",
            otel.kind = "server", acteon.namespace = Empty, acteon.provider = Empty,
            acteon.action_type = Empty, acteon.action_id = Empty, acteon.outcome = Empty,
            otel.status_code = Empty),
        Kind::Batch => tracing::info_span!(target: TARGET, parent: None, "dispatch batch",
            otel.kind = "server", acteon.batch_size = Empty, otel.status_code = Empty),
        Kind::Worker(task) => tracing::info_span!(target: TARGET, parent: None, "worker task",
            otel.name = task, acteon.task = task, otel.status_code = Empty),
        Kind::Replay => tracing::info_span!(target: TARGET, parent: None, "dlq replay",
            acteon.provider = Empty, otel.status_code = Empty),
        Kind::Request => tracing::info_span!(target: TARGET, parent: None, "provider request",
            otel.kind = "client", http.response.status_code = Empty, otel.status_code = Empty),
    };
    if let Some(p) = parent {
        let _ = span.set_parent(remote(p));
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        // The layer did not see the span (filtered): carry on without it.
        return (span, parent.map(TraceContext::child));
    }
    let ctx = TraceContext {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        flags: sc.trace_flags().to_u8(),
        state: parent.and_then(|p| p.state.clone()),
    };
    (span, Some(ctx))
}

/// `ctx` as an OpenTelemetry parent. It may be a span of this process (by its ids) or
/// another's: either way only the ids matter to the child.
fn remote(ctx: &TraceContext) -> Context {
    let sc = SpanContext::new(
        TraceId::from_bytes(ctx.trace_id),
        SpanId::from_bytes(ctx.span_id),
        TraceFlags::new(ctx.flags),
        true,
        TraceState::NONE,
    );
    Context::new().with_remote_span_context(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_url_appends_the_path_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c/otlp/v1/traces"),
            "http://c/otlp/v1/traces"
        );
    }
}
