//! Prometheus metrics of the gateway. Label values are bounded: rule and provider names
//! come from the configuration, never from requests.

use acteon_api::snapshot::SHARED_SCOPE;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The `operation` labels of `acteon_state_errors_total`.
pub const STATE_OPERATIONS: [&str; 5] = [
    "apply_gates",
    "release_dedup",
    "read_state",
    "claim_timers",
    "complete_timer",
];

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
    /// Dispatches answered `Deduplicated` from this gateway's own delivered marks.
    pub dedup_local: IntCounter,
    pub config_version: IntGauge,
    pub config_rules: IntGauge,
    /// Snapshots applied from the config channel (the first one included).
    pub config_reloads: IntCounter,
    /// Published snapshots that could not be applied (the previous one kept serving).
    pub config_reload_failures: IntCounter,
    /// Authentication decisions (`--auth on`): ok, unauthenticated, forbidden, unavailable.
    pub auth: IntCounterVec,
    /// Seal key files found changed and reloaded (a key rotation reaching this gateway).
    pub seal_key_reloads: IntCounter,
    /// Actions parked by kind (group, schedule).
    pub parked: IntCounterVec,
    /// Parked actions released by the worker, by kind and outcome.
    pub released: IntCounterVec,
    pub worker_claims: IntCounter,
    /// Claims that ran out before their task completed (another replica may repeat it).
    pub worker_claims_lost: IntCounter,
    pub worker_tasks: IntCounterVec,
    pub worker_task_seconds: HistogramVec,
    pub timer_lateness_seconds: HistogramVec,
    pub timers_pending: IntGauge,
    pub group_flushes: IntCounterVec,
    pub transitions: IntCounterVec,
    pub transition_notifications: IntCounterVec,
    /// Chain runs by chain and event: started, completed, failed, timed_out.
    pub chains: IntCounterVec,
    pub chains_running: IntGaugeVec,
    pub dead_letters: IntCounterVec,
    pub dead_letters_pending: IntGaugeVec,
    /// Chain steps by chain and result: ok, failed, retry.
    pub chain_steps: IntCounterVec,
    pub chain_step_seconds: HistogramVec,
    /// Circuit state per provider with a breaker: 0 closed, 1 open, 2 half-open.
    pub circuit_state: IntGaugeVec,
    /// Breaker changes made by this gateway, by provider and new state (open, closed).
    pub circuit_transitions: IntCounterVec,
    /// Deliveries an open circuit kept from its provider, by result (fallback, rejected).
    pub circuit_rejections: IntCounterVec,
    /// State backend calls of the circuit breakers, by kind: read and write (a delivery
    /// that changed a breaker, or the probe), poll (the periodic read of all).
    pub circuit_backend_calls: IntCounterVec,
    /// Time deliveries waited for a rate-limit slot.
    pub rate_limit_wait_seconds: HistogramVec,
    /// Deliveries refused a slot within their bound (`RATE_LIMITED`).
    pub rate_limited: IntCounterVec,
}

/// Timer lateness buckets from 10 ms to 5 min.
const LATENESS_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

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
    histogram_with(registry, name, help, labels, LATENCY_BUCKETS)
}

fn histogram_with(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
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

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
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
    /// Creates, at zero, the per-provider series that alerts rate or divide (dispatch
    /// outcomes, dead letters stored) for every provider of `snapshot`, so that the first
    /// failure is an increase `rate()` sees rather than a series born at 1. Label values as
    /// the pipeline writes them (own namespace, or the shared scope).
    pub fn zero_provider_series(&self, snapshot: &acteon_api::Snapshot) {
        for p in &snapshot.providers {
            let ns = p.namespace.as_deref().unwrap_or(SHARED_SCOPE);
            for outcome in ["executed", "failed"] {
                self.dispatches
                    .with_label_values(&[outcome, ns, p.name.as_str()]);
            }
            self.dead_letters
                .with_label_values(&[p.name.as_str(), "dispatch", "stored"]);
        }
    }

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
        let m = Metrics {
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
            dedup_local: int_counter(
                &r,
                "acteon_dedup_local_total",
                "Dispatches answered Deduplicated from this gateway's own delivered marks, without a backend call",
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
            auth: counter(
                &r,
                "acteon_auth_decisions_total",
                "Authentication and authorization decisions, by result",
                &["result"],
            ),
            seal_key_reloads: int_counter(
                &r,
                "acteon_seal_key_reloads_total",
                "Seal key files found changed on disk and reloaded",
            ),
            config_reload_failures: int_counter(
                &r,
                "acteon_config_reload_failures_total",
                "Published configuration snapshots that could not be applied",
            ),
            parked: counter(
                &r,
                "acteon_parked_total",
                "Actions parked in a group or schedule",
                &["kind"],
            ),
            released: counter(
                &r,
                "acteon_released_total",
                "Parked actions released by the worker (group notifications, scheduled actions), by outcome",
                &["kind", "outcome"],
            ),
            worker_claims: int_counter(
                &r,
                "acteon_worker_claims_total",
                "Due timers claimed by this replica's worker",
            ),
            worker_claims_lost: int_counter(
                &r,
                "acteon_worker_claims_lost_total",
                "Claims that ran out before their task completed (the task may run again elsewhere)",
            ),
            worker_tasks: counter(
                &r,
                "acteon_worker_tasks_total",
                "Timer tasks run, by task and result (done, retry)",
                &["task", "result"],
            ),
            worker_task_seconds: histogram(
                &r,
                "acteon_worker_task_duration_seconds",
                "Time to run a timer task",
                &["task"],
            ),
            timer_lateness_seconds: histogram_with(
                &r,
                "acteon_timer_lateness_seconds",
                "Fire time minus due time of timers",
                &["task"],
                LATENESS_BUCKETS,
            ),
            timers_pending: gauge(
                &r,
                "acteon_timers_pending",
                "Timers registered and not completed (groups, schedules, state timeouts, chain runs, and ended chain runs kept for inspection), all replicas",
            ),
            group_flushes: counter(
                &r,
                "acteon_group_flushes_total",
                "Group notifications sent",
                &["kind"],
            ),
            transitions: counter(
                &r,
                "acteon_state_transitions_total",
                "State machine moves by machine, requested state and result (changed, unchanged, refused)",
                &["machine", "state", "result"],
            ),
            chains: counter(
                &r,
                "acteon_chains_total",
                "Chain runs by chain and event (started, completed, failed, timed_out)",
                &["chain", "event"],
            ),
            chains_running: gauge_vec(
                &r,
                "acteon_chains_running",
                "Chain runs running, by chain, as of the last census (exported by the one replica that takes it: sum over replicas)",
                &["chain"],
            ),
            dead_letters: counter(
                &r,
                "acteon_dead_letters_total",
                "Dead letters by provider, source (dispatch, chain) and result (stored, error, replayed, replay_failed, deleted)",
                &["provider", "source", "result"],
            ),
            dead_letters_pending: gauge_vec(
                &r,
                "acteon_dead_letters_pending",
                "Dead letters kept, by namespace/provider, as of the last census (exported by the one replica that takes it: sum over replicas)",
                &["provider"],
            ),
            chain_steps: counter(
                &r,
                "acteon_chain_steps_total",
                "Chain steps run by chain and result (ok, failed, retry)",
                &["chain", "result"],
            ),
            chain_step_seconds: histogram(
                &r,
                "acteon_chain_step_duration_seconds",
                "Time to deliver one chain step (the provider call, its own retries included)",
                &["chain"],
            ),
            circuit_state: gauge_vec(
                &r,
                "acteon_circuit_state",
                "Circuit breaker state as this gateway sees it: 0 closed, 1 open, 2 half-open",
                &["provider"],
            ),
            circuit_transitions: counter(
                &r,
                "acteon_circuit_transitions_total",
                "Circuit breaker changes made by this gateway, by new state",
                &["provider", "to"],
            ),
            circuit_rejections: counter(
                &r,
                "acteon_circuit_rejections_total",
                "Deliveries an open circuit kept from its provider: sent to the fallback, or rejected",
                &["provider", "result"],
            ),
            circuit_backend_calls: counter(
                &r,
                "acteon_circuit_backend_calls_total",
                "State backend calls made by circuit breakers (none while circuits are closed and healthy)",
                &["op"],
            ),
            rate_limit_wait_seconds: histogram_with(
                &r,
                "acteon_rate_limit_wait_seconds",
                "Time deliveries waited for their provider's rate-limit slot",
                &["provider"],
                LATENESS_BUCKETS,
            ),
            rate_limited: counter(
                &r,
                "acteon_rate_limited_total",
                "Deliveries refused a rate-limit slot within their bound",
                &["provider"],
            ),
            transition_notifications: counter(
                &r,
                "acteon_state_notifications_total",
                "Notifications of notify transitions, by result",
                &["result"],
            ),
            registry: r,
        };
        m.zero_initialise();
        m
    }

    /// The series alerts read (the chart's PrometheusRule) exist from start at 0, so the
    /// first error after a restart shows in a `rate` (a series that appears at 1 does not).
    fn zero_initialise(&self) {
        for op in STATE_OPERATIONS {
            self.state_errors.with_label_values(&[op]);
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// `acteon_state_gate_batches_total{what}`: what the group commit of gate calls did, read
/// from the state backend at each scrape (`batches`: Postgres statements or Redis pipelines
/// that carried two calls or more; `calls_together`: the calls they answered;
/// `retried_alone`: Postgres calls run alone after the server refused their batch). Absent
/// on the memory backend.
pub struct GateBatchCollector {
    state: std::sync::Arc<dyn crate::state::StateStore>,
    template: IntCounterVec,
}

impl GateBatchCollector {
    pub fn register(registry: &Registry, state: std::sync::Arc<dyn crate::state::StateStore>) {
        let template = Self::family();
        // A second registration on one registry (tests) is left out.
        let _ = registry.register(Box::new(GateBatchCollector { state, template }));
    }

    fn family() -> IntCounterVec {
        IntCounterVec::new(
            Opts::new(
                "acteon_state_gate_batches_total",
                "Group commit of gate calls (Postgres statements, Redis pipelines): batches, calls sent together, calls retried alone",
            ),
            &["what"],
        )
        .expect("static metric definition")
    }
}

impl prometheus::core::Collector for GateBatchCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.template.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let Some(counts) = self.state.gate_batch_counts() else {
            return Vec::new();
        };
        // A fresh family per scrape: concurrent scrapes never see each other's values.
        let metric = Self::family();
        for (what, n) in [
            ("batches", counts.batches),
            ("calls_together", counts.calls_together),
            ("retried_alone", counts.retried_alone),
        ] {
            metric.with_label_values(&[what]).inc_by(n);
        }
        metric.collect()
    }
}

#[cfg(test)]
mod zero_tests {
    use super::*;

    #[test]
    fn alerted_error_series_exist_at_zero_from_start() {
        let text = Metrics::new().render();
        for op in STATE_OPERATIONS {
            let line = format!("acteon_state_errors_total{{operation=\"{op}\"}} 0");
            assert!(text.lines().any(|l| l == line), "no `{line}`");
        }
    }

    #[test]
    fn every_configured_provider_has_its_alerted_series_at_zero() {
        let docs = acteon_api::compile::parse_text(
            "p.yaml",
            "apiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {name: hook, namespace: team}\nspec: {type: noop}\n\
             ---\napiVersion: acteon.dev/v1alpha1\nkind: Provider\nmetadata: {name: common, namespace: acteon-system}\nspec: {type: noop}\n",
        )
        .expect("parses");
        let compiled = acteon_api::compile::compile(&docs, &Default::default());
        let metrics = Metrics::new();
        metrics.zero_provider_series(&compiled.snapshot);
        let text = metrics.render();
        for line in [
            r#"acteon_dispatches_total{namespace="team",outcome="failed",provider="hook"} 0"#,
            r#"acteon_dispatches_total{namespace="_shared",outcome="executed",provider="common"} 0"#,
            r#"acteon_dead_letters_total{provider="hook",result="stored",source="dispatch"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
    }
}
