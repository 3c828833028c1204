//! The configuration channel: how the operator hands compiled snapshots to gateways.
//!
//! The operator [`ConfigChannel::publish`]es a serialized snapshot; the backend assigns it
//! the next version (monotonic across operator restarts and leader changes) and notifies
//! subscribers. Gateways follow [`ConfigChannel::notifications`] (with a periodic
//! [`ConfigChannel::head`] check as a safety net), [`ConfigChannel::fetch`] the body, apply
//! it, and [`ConfigChannel::report`] the version they serve; the operator reads
//! [`ConfigChannel::gateways`] to show convergence in status.
//!
//! Credentials inside a snapshot are sealed with [`seal`] before publishing, and the
//! snapshot itself is authenticated with [`auth`] (gateways refuse what does not verify).

pub mod auth;
pub mod backend;
pub mod conformance;
pub mod memory;
pub mod postgres;
pub mod redis;
pub mod seal;
mod util;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Errors of the channel. All of them mean the backend could not be used right now.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("config channel unavailable: {0}")]
    Unavailable(String),
    #[error("config channel timed out after {0:?}")]
    Timeout(Duration),
    #[error("config channel holds corrupt data: {0}")]
    Corrupt(String),
}

/// Version and digest of the newest published snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub version: u64,
    pub digest: String,
}

/// A published snapshot as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub version: u64,
    pub digest: String,
    /// The serialized snapshot (JSON of `acteon_api::Snapshot`).
    pub body: Vec<u8>,
}

impl Published {
    /// Its version and digest.
    pub fn head(&self) -> Head {
        Head {
            version: self.version,
            digest: self.digest.clone(),
        }
    }
}

/// What [`ConfigChannel::publish`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Stored as a new version; subscribers were notified.
    Published(Head),
    /// The newest version already has this digest: nothing written, nobody notified.
    Unchanged(Head),
}

impl PublishOutcome {
    pub fn head(&self) -> &Head {
        match self {
            PublishOutcome::Published(h) | PublishOutcome::Unchanged(h) => h,
        }
    }
}

/// What one gateway serves, as it last reported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayReport {
    /// Unique per gateway process (pod name plus a random suffix).
    pub gateway: String,
    /// Version of the snapshot it serves (0 = none yet).
    pub version: u64,
    pub digest: String,
    /// The newest version it failed to apply, if newer than `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_version: Option<u64>,
    /// Why that version failed (no credentials in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Chain activity by Chain (`namespace/name`): running runs as of this gateway's last
    /// census (one gateway at a time takes it), the last failure this gateway saw.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub chains: BTreeMap<String, ChainActivity>,
    /// When this gateway took the census in `chains` (unix ms), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_census_ms: Option<u64>,
}

/// What a gateway reports about one Chain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainActivity {
    /// Runs running (census gateways only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<u64>,
    /// Why the last run that failed or timed out on this gateway did (bounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// When it ended (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_ms: Option<u64>,
}

/// The channel contract; Redis, Postgres and an in-process memory channel implement it.
#[async_trait]
pub trait ConfigChannel: Send + Sync + 'static {
    /// Backend name for logs and metrics.
    fn kind(&self) -> &'static str;

    /// Stores `body` as the next version unless the newest version has the same `digest`.
    /// Atomic (one round trip); notifies subscribers when it stores.
    async fn publish(&self, digest: &str, body: &[u8]) -> Result<PublishOutcome, ChannelError>;

    /// The newest version, if any (cheap: no body).
    async fn head(&self) -> Result<Option<Head>, ChannelError>;

    /// The newest snapshot with its version, read consistently.
    async fn fetch(&self) -> Result<Option<Published>, ChannelError>;

    /// Versions announced by publishers, latest first (a watch channel coalesces bursts).
    /// Best effort: a notification can be lost while the subscription reconnects, so
    /// followers also poll [`ConfigChannel::head`]. After a reconnect the implementation
    /// sends the current head so nothing published meanwhile waits for the next poll.
    fn notifications(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Records what `report.gateway` serves; the record expires after `ttl` unless renewed.
    async fn report(&self, report: &GatewayReport, ttl: Duration) -> Result<(), ChannelError>;

    /// Every unexpired report, sorted by gateway id.
    async fn gateways(&self) -> Result<Vec<GatewayReport>, ChannelError>;
}

/// Connects the channel named by `url`: `redis://` or `rediss://` (keys under `prefix`), or
/// `postgres://` or `postgresql://` (tables in schema `prefix`).
///
/// There is deliberately no `memory` here: the operator and the gateways are separate
/// processes, and an in-process channel would silently connect nobody. Use
/// [`memory::MemoryChannel`] directly in tests and single-process setups.
pub async fn connect(
    url: &str,
    prefix: &str,
    timeout: Duration,
) -> Result<Arc<dyn ConfigChannel>, ChannelError> {
    // Only the scheme is ever quoted back: the rest of the URL may hold a password.
    let scheme = url
        .split_once("://")
        .map(|(scheme, _)| scheme.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("redis" | "rediss") => Ok(Arc::new(
            redis::RedisChannel::connect(url, prefix, timeout).await?,
        )),
        Some("postgres" | "postgresql") => Ok(Arc::new(
            postgres::PostgresChannel::connect(url, prefix, timeout).await?,
        )),
        _ => Err(ChannelError::Unavailable(format!(
            "unsupported config channel URL{}: use redis://, rediss://, postgres:// or postgresql:// \
             (the operator and the gateways are separate processes, so there is no in-memory channel)",
            match &scheme {
                Some(s)
                    if s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
                {
                    format!(" scheme {s:?}")
                }
                _ => String::new(),
            }
        ))),
    }
}
