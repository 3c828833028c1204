//! Recent delivery statistics per provider for `GET /v1/providers/health`: counts since
//! start and latency percentiles over the newest samples. In memory, per gateway: the
//! Prometheus metrics are the durable record. Recording is lock-free (atomics, a ring of
//! samples), so the hot path never waits on a reader.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Latency samples kept per provider.
const SAMPLES: usize = 1024;
/// Longest error text kept.
const ERROR_BYTES: usize = 512;

/// Counters and latency samples of one provider.
pub struct Stats {
    successes: AtomicU64,
    failures: AtomicU64,
    last_request_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Latencies in µs (saturating at ~71 min); `next` counts samples ever written.
    samples: Box<[AtomicU32]>,
    next: AtomicUsize,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_request_ms: AtomicU64::new(0),
            last_error: Mutex::new(None),
            samples: (0..SAMPLES).map(|_| AtomicU32::new(0)).collect(),
            next: AtomicUsize::new(0),
        }
    }
}

/// What `GET /v1/providers/health` shows of one provider's deliveries.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    pub total_requests: u64,
    pub successes: u64,
    pub failures: u64,
    /// Percent, 100 when nothing was delivered yet.
    pub success_rate: f64,
    pub avg_latency_ms: f64,
    pub p50_latency_ms: f64,
    pub p95_latency_ms: f64,
    pub p99_latency_ms: f64,
    pub last_request_at: Option<u64>,
    pub last_error: Option<String>,
}

impl Stats {
    pub fn record(&self, took: Duration, now_ms: u64, error: Option<&str>) {
        match error {
            None => self.successes.fetch_add(1, Ordering::Relaxed),
            Some(e) => {
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(crate::providers::http::bounded(e, ERROR_BYTES));
                }
                self.failures.fetch_add(1, Ordering::Relaxed)
            }
        };
        self.last_request_ms.fetch_max(now_ms, Ordering::Relaxed);
        let micros = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % SAMPLES;
        self.samples[slot].store(micros, Ordering::Relaxed);
    }

    pub fn summary(&self) -> Summary {
        let successes = self.successes.load(Ordering::Relaxed);
        let failures = self.failures.load(Ordering::Relaxed);
        let total = successes + failures;
        let kept = self.next.load(Ordering::Relaxed).min(SAMPLES);
        let mut samples: Vec<u32> = self.samples[..kept]
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .collect();
        samples.sort_unstable();
        let ms = |micros: u32| f64::from(micros) / 1000.0;
        let at = |q: f64| {
            samples
                .get(((samples.len() as f64 * q).ceil() as usize).saturating_sub(1))
                .map_or(0.0, |s| ms(*s))
        };
        let avg = if samples.is_empty() {
            0.0
        } else {
            samples.iter().map(|s| f64::from(*s)).sum::<f64>() / samples.len() as f64 / 1000.0
        };
        let last = self.last_request_ms.load(Ordering::Relaxed);
        Summary {
            total_requests: total,
            successes,
            failures,
            success_rate: if total == 0 {
                100.0
            } else {
                successes as f64 * 100.0 / total as f64
            },
            avg_latency_ms: avg,
            p50_latency_ms: at(0.50),
            p95_latency_ms: at(0.95),
            p99_latency_ms: at(0.99),
            last_request_at: (last > 0).then_some(last),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }
}

/// Statistics of every provider this gateway delivered to, by provider id. Entries are
/// created by deliveries to configured providers only, so the map is bounded by the
/// configuration.
#[derive(Default)]
pub struct ProviderStats {
    by_provider: RwLock<HashMap<String, Arc<Stats>>>,
}

impl ProviderStats {
    pub fn of(&self, provider_id: &str) -> Arc<Stats> {
        if let Some(s) = self
            .by_provider
            .read()
            .ok()
            .and_then(|m| m.get(provider_id).cloned())
        {
            return s;
        }
        match self.by_provider.write() {
            Ok(mut m) => m.entry(provider_id.to_owned()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    /// The summary of `provider_id`, zero when it delivered nothing yet.
    pub fn summary(&self, provider_id: &str) -> Summary {
        self.by_provider
            .read()
            .ok()
            .and_then(|m| m.get(provider_id).map(|s| s.summary()))
            .unwrap_or_else(|| Stats::default().summary())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_rates_and_percentiles() {
        let s = Stats::default();
        for i in 1..=100u64 {
            let error = (i % 10 == 0).then_some("boom");
            s.record(Duration::from_millis(i), 1_000 + i, error);
        }
        let sum = s.summary();
        assert_eq!(
            (sum.total_requests, sum.successes, sum.failures),
            (100, 90, 10)
        );
        assert!((sum.success_rate - 90.0).abs() < 1e-9);
        assert_eq!(sum.p50_latency_ms, 50.0);
        assert_eq!(sum.p99_latency_ms, 99.0);
        assert!((sum.avg_latency_ms - 50.5).abs() < 1e-9);
        assert_eq!(sum.last_request_at, Some(1_100));
        assert_eq!(sum.last_error.as_deref(), Some("boom"));
    }

    #[test]
    fn keeps_the_newest_samples_only() {
        let s = Stats::default();
        for _ in 0..SAMPLES {
            s.record(Duration::from_secs(1), 1, None);
        }
        for _ in 0..SAMPLES {
            s.record(Duration::from_millis(1), 2, None);
        }
        assert_eq!(s.summary().p99_latency_ms, 1.0);
        assert_eq!(s.summary().total_requests, 2 * SAMPLES as u64);
    }

    #[test]
    fn nothing_delivered_yet() {
        let sum = ProviderStats::default().summary("x");
        assert_eq!(sum.total_requests, 0);
        assert_eq!(sum.success_rate, 100.0);
        assert_eq!(sum.last_request_at, None);
    }
}
