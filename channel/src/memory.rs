//! An in-process [`ConfigChannel`]: one mutex over the newest snapshot and the reports.
//!
//! For unit tests and a single process (the standalone gateway). Share it with `Arc`: every
//! clone of the `Arc` is "another process" on the same channel. Expiry uses
//! [`tokio::time::Instant`], so tests with a paused clock can advance past a report's TTL.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{ChannelError, ConfigChannel, GatewayReport, Head, PublishOutcome, Published};

/// The in-process channel. See the module documentation.
pub struct MemoryChannel {
    state: Mutex<State>,
    notify: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    current: Option<Published>,
    /// Gateway id → report and when it expires.
    reports: BTreeMap<String, (GatewayReport, Instant)>,
}

impl MemoryChannel {
    /// An empty channel: no snapshot, no reports, notifications at 0.
    pub fn new() -> MemoryChannel {
        MemoryChannel {
            state: Mutex::new(State::default()),
            notify: watch::Sender::new(0),
        }
    }
}

impl Default for MemoryChannel {
    fn default() -> Self {
        MemoryChannel::new()
    }
}

impl std::fmt::Debug for MemoryChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock();
        f.debug_struct("MemoryChannel")
            .field("version", &state.current.as_ref().map(|p| p.version))
            .field("reports", &state.reports.len())
            .finish()
    }
}

fn head_of(p: &Published) -> Head {
    Head {
        version: p.version,
        digest: p.digest.clone(),
    }
}

#[async_trait]
impl ConfigChannel for MemoryChannel {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn publish(&self, digest: &str, body: &[u8]) -> Result<PublishOutcome, ChannelError> {
        let head = {
            let mut state = self.state.lock();
            if let Some(cur) = state.current.as_ref().filter(|c| c.digest == digest) {
                return Ok(PublishOutcome::Unchanged(head_of(cur)));
            }
            let version = state.current.as_ref().map_or(0, |c| c.version) + 1;
            let published = Published {
                version,
                digest: digest.to_owned(),
                body: body.to_vec(),
            };
            let head = head_of(&published);
            state.current = Some(published);
            head
        };
        // Outside the lock; `send_replace` never fails, even without receivers.
        self.notify.send_replace(head.version);
        tracing::debug!(version = head.version, digest, "memory channel: published");
        Ok(PublishOutcome::Published(head))
    }

    async fn head(&self) -> Result<Option<Head>, ChannelError> {
        Ok(self.state.lock().current.as_ref().map(head_of))
    }

    async fn fetch(&self) -> Result<Option<Published>, ChannelError> {
        Ok(self.state.lock().current.clone())
    }

    fn notifications(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    async fn report(&self, report: &GatewayReport, ttl: Duration) -> Result<(), ChannelError> {
        // A TTL too large for the clock means "practically forever".
        let now = Instant::now();
        let expires = now
            .checked_add(ttl)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        self.state
            .lock()
            .reports
            .insert(report.gateway.clone(), (report.clone(), expires));
        Ok(())
    }

    async fn gateways(&self) -> Result<Vec<GatewayReport>, ChannelError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        state.reports.retain(|_, (_, expires)| *expires > now);
        // A BTreeMap iterates in key order: sorted by gateway id.
        Ok(state.reports.values().map(|(r, _)| r.clone()).collect())
    }
}
