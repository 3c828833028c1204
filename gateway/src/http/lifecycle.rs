//! What readiness and `/health` report besides the configuration: whether the gateway is
//! draining, and how the state backend is doing.
//!
//! Readiness deliberately does not follow the backend's health once it has been reached:
//! every replica shares the backend, so a blip would take every replica out of the Service
//! at once and turn a short outage into a full one. Requests that need the backend answer
//! 503 on their own while it is away; the backend's health is reported separately (the
//! `acteon_state_backend_up` gauge and `/health`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::IntGauge;

use crate::pipeline::Gateway;

/// Shared by the handlers, the server loop and the backend monitor.
pub struct Lifecycle {
    draining: AtomicBool,
    backend_up: AtomicBool,
    /// Set once the backend has answered: until then the gateway is not ready.
    backend_reached: AtomicBool,
    last_error: Mutex<Option<String>>,
    up_gauge: IntGauge,
}

impl Lifecycle {
    /// Registers `acteon_state_backend_up` on the gateway's registry.
    pub fn new(registry: &prometheus::Registry) -> Lifecycle {
        let up_gauge = IntGauge::new(
            "acteon_state_backend_up",
            "1 when the last check of the state backend succeeded, else 0",
        )
        .expect("static metric definition");
        // A second Lifecycle on one registry (tests) keeps its gauge unregistered.
        let _ = registry.register(Box::new(up_gauge.clone()));
        Lifecycle {
            draining: AtomicBool::new(false),
            backend_up: AtomicBool::new(false),
            backend_reached: AtomicBool::new(false),
            last_error: Mutex::new(None),
            up_gauge,
        }
    }

    /// From now on `/readyz` answers 503 and responses ask clients to reconnect elsewhere.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn backend_up(&self) -> bool {
        self.backend_up.load(Ordering::Relaxed)
    }

    pub fn backend_reached(&self) -> bool {
        self.backend_reached.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    fn record(&self, result: Result<(), String>) {
        let up = result.is_ok();
        let was_up = self.backend_up.swap(up, Ordering::Relaxed);
        self.up_gauge.set(i64::from(up));
        match result {
            Ok(()) => {
                self.backend_reached.store(true, Ordering::Relaxed);
                *self.last_error.lock() = None;
                if !was_up {
                    tracing::info!("state backend reachable");
                }
            }
            Err(e) => {
                if was_up {
                    tracing::warn!(error = ?e, "state backend unreachable");
                }
                *self.last_error.lock() = Some(e);
            }
        }
    }

    /// Checks the backend now and every `interval` (bounded by the state timeout each).
    pub fn spawn_monitor(self: &Arc<Self>, gateway: Arc<Gateway>, interval: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                me.check(&gateway).await;
                tokio::time::sleep(interval).await;
            }
        });
    }

    pub async fn check(&self, gateway: &Gateway) {
        let timeout = gateway.options.state_timeout;
        let result = match tokio::time::timeout(timeout, gateway.state.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("state backend did not answer within {timeout:?}")),
        };
        self.record(result);
    }
}
