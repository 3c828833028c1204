//! Circuit breakers shared by all replicas.
//!
//! The record of each breaker lives in the state backend (see [`Record`]); every gateway
//! keeps a view of them, refreshed by one `get_many` per poll interval (and by its own
//! writes). So a closed, healthy circuit costs a delivery no backend call; a gateway
//! writes only when something changes: a retryable failure, the first success after
//! failures, taking or reporting the probe. When the backend cannot be reached, breakers
//! fail open: deliveries go on and the error is counted.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use acteon_api::crd::CircuitBreaker;

use super::record::{CircuitState, Record};
use crate::pipeline::Gateway;
use crate::providers::ProviderHandle;
use crate::state::{StateError, Versioned, unix_ms};

/// Compare-and-swap attempts before a breaker write gives up (counted, fails open).
const CAS_ATTEMPTS: usize = 16;
/// Bound of a probe whose provider sets no delivery bound.
const PROBE_LEASE_FLOOR: Duration = Duration::from_secs(30);

/// The state backend key of a provider's breaker.
pub fn key(provider_id: &str) -> String {
    format!("circuit/{provider_id}")
}

/// What the breaker lets a delivery do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Deliver, as `Ticket` says.
    Go(Ticket),
    /// The circuit is open: do not call the provider.
    Open,
}

/// How an admitted delivery reports back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ticket {
    /// No breaker configured.
    Unguarded,
    /// Closed; `failures_seen`: the record counts failures that a success must reset.
    Closed { failures_seen: bool },
    /// This delivery is the one probe of a half-open circuit.
    Probe,
}

/// How a delivery ended, for the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    Success,
    /// The peer answered with a permanent error: it is up.
    Refused,
    /// A retryable failure (timeout, 5xx, 429 …), retries exhausted.
    Failed,
}

#[derive(Clone, Copy, Debug, Default)]
struct View {
    record: Record,
    /// Version of the record read or written; newer versions replace older ones.
    version: Option<u64>,
}

/// This gateway's view of every breaker.
#[derive(Default)]
pub struct Breakers {
    views: RwLock<HashMap<String, View>>,
}

impl Breakers {
    /// The record as this gateway last saw it.
    pub fn record(&self, provider_id: &str) -> Record {
        self.views
            .read()
            .ok()
            .and_then(|v| v.get(provider_id).map(|v| v.record))
            .unwrap_or_default()
    }

    /// Replaces the view of `provider_id` unless it holds a newer version.
    fn store(&self, provider_id: &str, record: Record, version: Option<u64>) {
        let Ok(mut views) = self.views.write() else {
            return;
        };
        let view = views.entry(provider_id.to_owned()).or_default();
        if version >= view.version {
            *view = View { record, version };
        }
    }

    /// Decides whether a delivery to `handle` may call its provider.
    pub async fn admit(&self, gw: &Gateway, handle: &ProviderHandle) -> Admit {
        let Some(cb) = &handle.circuit else {
            return Admit::Go(Ticket::Unguarded);
        };
        let record = self.record(&handle.id);
        let now = unix_ms();
        match record.state(now, recovery_ms(cb)) {
            CircuitState::Closed => Admit::Go(Ticket::Closed {
                failures_seen: record.failures > 0,
            }),
            CircuitState::Open => Admit::Open,
            CircuitState::HalfOpen if record.probe_until_ms > now => Admit::Open,
            CircuitState::HalfOpen => {
                let lease = probe_lease(handle);
                match self
                    .update(gw, handle, |r| {
                        r.take_probe(unix_ms(), recovery_ms(cb), lease)
                    })
                    .await
                {
                    Ok(true) => Admit::Go(Ticket::Probe),
                    Ok(false) => Admit::Open,
                    // Fail open: without the backend no replica can agree on a probe,
                    // and refusing every delivery would be worse than probing.
                    Err(_) => Admit::Go(Ticket::Probe),
                }
            }
        }
    }

    /// Records how an admitted delivery ended.
    pub async fn report(&self, gw: &Gateway, handle: &ProviderHandle, ticket: Ticket, how: Report) {
        let Some(cb) = &handle.circuit else {
            return;
        };
        let threshold = cb.failure_threshold.max(1);
        let result = match (ticket, how) {
            (Ticket::Unguarded, _) => return,
            // A permanent error may be ours (a payload the provider cannot map): it
            // neither counts nor resets; only a probe takes it as the peer being up.
            (Ticket::Closed { .. }, Report::Refused) => return,
            (Ticket::Closed { failures_seen }, Report::Success) => {
                if !failures_seen {
                    return;
                }
                self.update(gw, handle, Record::succeeded).await
            }
            (Ticket::Closed { .. }, Report::Failed) => {
                self.update(gw, handle, |r| r.failed(threshold, unix_ms()))
                    .await
            }
            (Ticket::Probe, Report::Success | Report::Refused) => {
                self.update(gw, handle, Record::succeeded).await
            }
            (Ticket::Probe, Report::Failed) => {
                self.update(gw, handle, |r| r.probe_failed(unix_ms())).await
            }
        };
        if let Err(e) = result {
            tracing::warn!(provider = %handle.id, error = %e, "circuit breaker: could not record a delivery; the circuit fails open");
        }
    }

    /// Opens (`open`) or closes a circuit by hand; the record written.
    pub async fn set(
        &self,
        gw: &Gateway,
        handle: &ProviderHandle,
        open: bool,
    ) -> Result<Record, StateError> {
        let result = if open {
            self.update(gw, handle, |r| r.trip(unix_ms())).await
        } else {
            self.update(gw, handle, Record::succeeded).await
        };
        result?;
        Ok(self.record(&handle.id))
    }

    /// Applies `change` to the shared record of `handle` (compare-and-swap, retried on
    /// conflict); whether it changed anything. The view follows what was read or written.
    async fn update(
        &self,
        gw: &Gateway,
        handle: &ProviderHandle,
        change: impl Fn(&mut Record) -> bool,
    ) -> Result<bool, StateError> {
        let key = key(&handle.id);
        let calls = |op: &str| {
            gw.metrics
                .circuit_backend_calls
                .with_label_values(&[op])
                .inc()
        };
        for _ in 0..CAS_ATTEMPTS {
            calls("read");
            let current = gw.state_call(gw.state.get(&key)).await?;
            let version = current.as_ref().map(|v| v.version);
            let before = decode(current.as_ref());
            let mut record = before;
            if !change(&mut record) {
                self.store(&handle.id, before, version);
                return Ok(false);
            }
            let value = serde_json::to_vec(&record).unwrap_or_default();
            calls("write");
            let written = gw
                .state_call(gw.state.compare_and_swap(&key, version, value, None))
                .await?;
            if let Some(version) = written {
                self.store(&handle.id, record, Some(version));
                self.count_change(gw, handle, before, record);
                return Ok(true);
            }
        }
        Err(StateError::Unavailable(format!(
            "circuit breaker of `{}`: {CAS_ATTEMPTS} conflicting writes in a row",
            handle.id
        )))
    }

    fn count_change(&self, gw: &Gateway, handle: &ProviderHandle, before: Record, after: Record) {
        let to = match (before.open, after.open) {
            (false, true) => "open",
            (true, false) => "closed",
            _ => return,
        };
        tracing::info!(provider = %handle.id, to, failures = before.failures, "circuit breaker changed");
        gw.metrics
            .circuit_transitions
            .with_label_values(&[handle.name.as_str(), to])
            .inc();
    }

    /// Reads every configured breaker in one backend call and refreshes the views and the
    /// state gauge. No call when no provider has a breaker.
    pub async fn poll(&self, gw: &Gateway) -> Result<(), StateError> {
        let rt = gw.config.load();
        let guarded: Vec<&ProviderHandle> = rt
            .providers
            .iter()
            .filter(|h| h.circuit.is_some())
            .collect();
        if guarded.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = guarded.iter().map(|h| key(&h.id)).collect();
        gw.metrics
            .circuit_backend_calls
            .with_label_values(&["poll"])
            .inc();
        let values = gw.state_call(gw.state.get_many(&keys)).await?;
        let now = unix_ms();
        for (handle, value) in guarded.iter().zip(values) {
            let record = decode(value.as_ref());
            self.store(&handle.id, record, value.map(|v| v.version));
            if let Some(cb) = &handle.circuit {
                let shown = self.record(&handle.id).state(now, recovery_ms(cb));
                gw.metrics
                    .circuit_state
                    .with_label_values(&[handle.name.as_str()])
                    .set(shown.gauge());
            }
        }
        Ok(())
    }
}

/// Polls the breakers every `every` for as long as the gateway lives.
pub fn spawn_poll(gw: std::sync::Arc<Gateway>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = gw.guards.breakers.poll(&gw).await {
                tracing::debug!(error = %e, "circuit breaker poll failed; views kept");
            }
        }
    })
}

pub fn recovery_ms(cb: &CircuitBreaker) -> u64 {
    cb.recovery_timeout_seconds.saturating_mul(1000)
}

/// How long a probe may run before another replica may take over.
fn probe_lease(handle: &ProviderHandle) -> u64 {
    let bound = handle
        .max_delivery_time()
        .unwrap_or(PROBE_LEASE_FLOOR)
        .max(PROBE_LEASE_FLOOR);
    u64::try_from(bound.as_millis()).unwrap_or(u64::MAX)
}

/// A record as stored; an unreadable one counts as closed (it is rewritten on change).
pub fn decode(value: Option<&Versioned>) -> Record {
    value
        .and_then(|v| serde_json::from_slice(&v.value).ok())
        .unwrap_or_default()
}
