//! Prometheus metrics of the gateway. Label values are bounded: rule and provider names
//! come from the configuration, never from requests.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// All gateway metrics, registered on their own registry.
pub struct Metrics {
    pub registry: Registry,
    pub dispatches: IntCounterVec,
    pub dispatch_seconds: HistogramVec,
    pub rule_matches: IntCounterVec,
    pub rule_errors: IntCounterVec,
    pub provider_seconds: HistogramVec,
    pub provider_failures: IntCounterVec,
    pub state_seconds: Histogram,
    pub state_errors: IntCounterVec,
    pub bad_requests: IntCounterVec,
    /// Backend calls confirming in-flight dedup marks, by result (`ok`, `error`).
    pub dedup_confirm_batches: IntCounterVec,
    /// Dedup marks of successful deliveries to extend, by result: `confirmed`, `stale`
    /// (expired or changed hands first), `failed` (their batch's call failed), `dropped`
    /// (queue full).
    pub dedup_confirmations: IntCounterVec,
    pub config_version: IntGauge,
    pub config_rules: IntGauge,
    /// Snapshots applied from the config channel (the first one included).
    pub config_reloads: IntCounter,
    /// Published snapshots that could not be applied (the previous one kept serving).
    pub config_reload_failures: IntCounter,
}

/// Latency buckets from 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("static metric definition");
    registry
        .register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

fn int_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("static metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("static metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let state_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "acteon_state_operation_seconds",
                "Latency of state backend calls",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("static metric definition");
        r.register(Box::new(state_seconds.clone()))
            .expect("metric registered once");
        Metrics {
            dispatches: counter(
                &r,
                "acteon_dispatches_total",
                "Dispatched actions by outcome, namespace and provider",
                &["outcome", "namespace", "provider"],
            ),
            dispatch_seconds: histogram(
                &r,
                "acteon_dispatch_duration_seconds",
                "Time to answer a dispatch, by outcome",
                &["outcome"],
            ),
            rule_matches: counter(
                &r,
                "acteon_rule_matches_total",
                "Rules that matched an action",
                &["rule"],
            ),
            rule_errors: counter(
                &r,
                "acteon_rule_errors_total",
                "Rule evaluations that failed (the rule did not match)",
                &["rule", "reason"],
            ),
            provider_seconds: histogram(
                &r,
                "acteon_provider_duration_seconds",
                "Provider delivery latency, retries included",
                &["provider", "result"],
            ),
            provider_failures: counter(
                &r,
                "acteon_provider_failures_total",
                "Failed deliveries by provider and code",
                &["provider", "code"],
            ),
            state_seconds,
            state_errors: counter(
                &r,
                "acteon_state_errors_total",
                "State backend errors by operation",
                &["operation"],
            ),
            bad_requests: counter(
                &r,
                "acteon_bad_requests_total",
                "Requests rejected as invalid, by reason",
                &["reason"],
            ),
            dedup_confirm_batches: counter(
                &r,
                "acteon_dedup_confirm_batches_total",
                "Backend calls confirming in-flight dedup marks, by result",
                &["result"],
            ),
            dedup_confirmations: counter(
                &r,
                "acteon_dedup_confirmations_total",
                "Dedup marks of successful deliveries to extend to their full TTL, by result",
                &["result"],
            ),
            config_version: gauge(
                &r,
                "acteon_config_snapshot_version",
                "Version of the configuration snapshot being served",
            ),
            config_rules: gauge(
                &r,
                "acteon_config_rules",
                "Enabled rules in the served snapshot",
            ),
            config_reloads: int_counter(
                &r,
                "acteon_config_reloads_total",
                "Configuration snapshots applied from the config channel",
            ),
            config_reload_failures: int_counter(
                &r,
                "acteon_config_reload_failures_total",
                "Published configuration snapshots that could not be applied",
            ),
            registry: r,
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
