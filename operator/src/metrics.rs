//! Prometheus metrics of the operator, served with `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::controller::index::Index;

pub struct Metrics {
    pub registry: Registry,
    /// Reconcile passes (build + publish + status), by result.
    pub reconciles: IntCounterVec,
    pub reconcile_errors: IntCounterVec,
    pub reconcile_seconds: HistogramVec,
    /// Objects currently rejected, by kind.
    pub rejected: IntGaugeVec,
    /// Objects watched, by kind.
    pub objects: IntGaugeVec,
    pub status_writes: IntCounterVec,
    pub events: IntCounterVec,
    pub published_version: IntGauge,
    pub republished: IntCounter,
    /// Seal keys put in force after the key source changed (rotations).
    pub seal_key_changes: IntCounter,
    pub gateways: IntGauge,
    pub leader: IntGauge,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("static metric"),
            )
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric"),
            )
        };
        let gauge = |name: &str, help: &str| {
            register(&r, IntGauge::new(name, help).expect("static metric"))
        };
        Metrics {
            reconciles: counter(
                "acteon_operator_reconciles_total",
                "Reconcile passes (compile, publish, status), by result",
                &["result"],
            ),
            reconcile_errors: counter(
                "acteon_operator_reconcile_errors_total",
                "Failed reconcile passes, by reason",
                &["reason"],
            ),
            reconcile_seconds: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "acteon_operator_reconcile_duration_seconds",
                        "Duration of reconcile passes, by stage",
                    )
                    .buckets(vec![
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0,
                    ]),
                    &["stage"],
                )
                .expect("static metric"),
            ),
            rejected: gauge_vec(
                "acteon_operator_rejected_objects",
                "Objects rejected by validation, by kind",
                &["kind"],
            ),
            objects: gauge_vec(
                "acteon_operator_objects",
                "Objects watched, by kind",
                &["kind"],
            ),
            status_writes: counter(
                "acteon_operator_status_writes_total",
                "Status patches, by kind and result",
                &["kind", "result"],
            ),
            events: counter(
                "acteon_operator_events_total",
                "Kubernetes Events emitted, by reason",
                &["reason"],
            ),
            republished: register(
                &r,
                IntCounter::new(
                    "acteon_operator_republished_total",
                    "Snapshots published again because the state backend no longer held the published one",
                )
                .expect("static metric"),
            ),
            seal_key_changes: register(
                &r,
                IntCounter::new(
                    "acteon_operator_seal_key_changes_total",
                    "Seal keys put in force after their file or Secret changed",
                )
                .expect("static metric"),
            ),
            published_version: gauge(
                "acteon_operator_published_snapshot_version",
                "Version of the newest configuration snapshot in the state backend",
            ),
            gateways: gauge(
                "acteon_operator_gateways",
                "Gateways reporting what they serve",
            ),
            leader: gauge("acteon_operator_leader", "1 while this replica leads"),
            registry: r,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

struct Probe {
    metrics: Arc<Metrics>,
    index: Arc<Index>,
}

/// Serves `/metrics`, `/healthz` and `/readyz` (ready once every watch has listed).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    index: Arc<Index>,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(p): State<Arc<Probe>>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    p.metrics.render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(p): State<Arc<Probe>>| async move {
                if p.index.is_synced() {
                    (StatusCode::OK, "ready").into_response()
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "caches not synced").into_response()
                }
            }),
        )
        .with_state(Arc::new(Probe { metrics, index }));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: {e}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}
