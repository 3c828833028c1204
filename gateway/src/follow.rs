//! Following the operator: a gateway started with a shared `--state` backend and no
//! `--config` serves the snapshots the operator publishes on the config channel.
//!
//! The follower fetches the current snapshot at start, then wakes on the channel's
//! notifications and on a periodic `head()` check (notifications are best effort). When the
//! head's digest is not the served one it fetches the body, compiles it into a [`Runtime`]
//! and swaps it in — whatever its version number: a backend that lost its data numbers the
//! operator's next publication 1 again, and the newest publication is what to serve. A body
//! that does not parse or does not build is not served: the previous runtime stays, the
//! failure is logged, counted and reported, and that publication is not tried again (only
//! another one is). When the backend is unreachable the
//! gateway keeps serving what it has and retries with backoff; it never exits for it.
//!
//! After every apply (or failure), and every `report_interval`, the follower reports what it
//! serves so the operator can show convergence.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use acteon_api::Snapshot;
use acteon_channel::{ChannelError, ConfigChannel, GatewayReport, Head, Published};
use tokio::time::MissedTickBehavior;

use crate::config::Runtime;
use crate::pipeline::Gateway;
use crate::seal_keys::SealKeys;

/// Settings of a follower.
#[derive(Clone, Debug)]
pub struct FollowOptions {
    /// This gateway's id in reports.
    pub gateway_id: String,
    /// Period of the `head()` check (the safety net under notifications).
    pub poll_interval: Duration,
    /// Period of the heartbeat report; reports live for three periods.
    pub report_interval: Duration,
    /// Open the credentials sealed into snapshots and say which snapshots are authentic
    /// (one that is not is refused like one that does not build: the previous one keeps
    /// serving); re-read on every poll.
    pub keys: Arc<SealKeys>,
    /// Shared by the providers of every snapshot (connection pooling across reloads).
    pub http: reqwest::Client,
}

/// What one check did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// Nothing published yet.
    Empty,
    /// The served version is the newest (or the newest already failed).
    UpToDate,
    /// This version is now served.
    Applied(u64),
    /// This version could not be applied; the previous one is still served.
    Failed { version: u64, error: String },
}

/// Follows a config channel into a gateway's live configuration.
pub struct Follower {
    channel: Arc<dyn ConfigChannel>,
    gateway: Arc<Gateway>,
    options: FollowOptions,
    /// The seal keys changed since a publication failed: try the failed one again (it may
    /// have been refused for want of the new key).
    retry_failed: AtomicBool,
}

/// Exponential backoff between failed attempts to reach the channel.
struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            next: min,
            min,
            max: max.max(min),
        }
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

impl Follower {
    pub fn new(
        channel: Arc<dyn ConfigChannel>,
        gateway: Arc<Gateway>,
        options: FollowOptions,
    ) -> Follower {
        Follower {
            channel,
            gateway,
            options,
            retry_failed: AtomicBool::new(false),
        }
    }

    /// Runs the follower on the current tokio runtime until the process ends.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }

    /// Whether the publication `head` is worth fetching: it is not what is served (by
    /// digest: a backend that lost its data numbers publications from 1 again, and the
    /// newest publication is served whatever its number), and not the one that failed (a
    /// failed publication is not retried).
    fn wants(&self, head: &Head) -> bool {
        let rt = self.gateway.config.load();
        if rt.loaded && rt.snapshot.digest == head.digest {
            return false;
        }
        let status = self.gateway.config.status();
        let failed = status.failed_version == Some(head.version)
            && status.failed_digest.as_deref() == Some(head.digest.as_str());
        !failed || self.retry_failed.load(Ordering::Relaxed)
    }

    /// Re-reads the seal keys; when they changed, a publication refused under the old ones
    /// is tried again.
    fn reload_keys(&self) {
        if self.options.keys.reload() {
            self.gateway.metrics.seal_key_reloads.inc();
            self.retry_failed.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a notified version may be news (its digest is checked on the head).
    fn may_want(&self, version: u64) -> bool {
        let rt = self.gateway.config.load();
        !rt.loaded || rt.snapshot.version != version
    }

    /// Compares the channel's head with the served version and applies a newer snapshot.
    pub async fn check(&self) -> Result<Checked, ChannelError> {
        let Some(head) = self.channel.head().await? else {
            return Ok(Checked::Empty);
        };
        if !self.wants(&head) {
            return Ok(Checked::UpToDate);
        }
        let Some(published) = self.channel.fetch().await? else {
            return Ok(Checked::Empty);
        };
        if !self.wants(&published.head()) {
            return Ok(Checked::UpToDate);
        }
        let checked = self.apply(published).await;
        self.report().await;
        Ok(checked)
    }

    /// Compiles a published snapshot and serves it, or records why it cannot be served.
    async fn apply(&self, published: Published) -> Checked {
        let started = Instant::now();
        let Published {
            version,
            digest,
            body,
        } = published;
        let http = self.options.http.clone();
        let keys = self.options.keys.current();
        self.retry_failed.store(false, Ordering::Relaxed);
        let digest_for_build = digest.clone();
        // Compiling regexes, CEL and the rule index is CPU work: keep it off the I/O threads.
        let built = tokio::task::spawn_blocking(move || {
            let body = keys
                .auth
                .open(&digest_for_build, &body)
                .map_err(|e| e.to_string())?;
            let mut snapshot: Snapshot = serde_json::from_slice(body)
                .map_err(|e| format!("the snapshot body does not parse: {e}"))?;
            snapshot.version = version;
            snapshot.digest = digest_for_build;
            Runtime::build(snapshot, &http, keys.key.as_ref()).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("building the snapshot failed: {e}")));
        let metrics = &self.gateway.metrics;
        match built {
            Ok(runtime) => {
                let (rules, providers) = (runtime.rules.len(), runtime.providers.len());
                self.gateway.metrics.zero_provider_series(&runtime.snapshot);
                self.gateway.config.swap(runtime);
                metrics
                    .config_version
                    .set(i64::try_from(version).unwrap_or(i64::MAX));
                metrics
                    .config_rules
                    .set(i64::try_from(rules).unwrap_or(i64::MAX));
                metrics.config_reloads.inc();
                tracing::info!(
                    version,
                    digest = %digest,
                    rules,
                    providers,
                    duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "configuration snapshot applied"
                );
                Checked::Applied(version)
            }
            Err(error) => {
                self.gateway
                    .config
                    .record_failure(version, &digest, error.clone());
                metrics.config_reload_failures.inc();
                let served = self.gateway.config.load().snapshot.version;
                tracing::warn!(
                    version,
                    digest = %digest,
                    served,
                    error = %error,
                    duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "configuration snapshot rejected; still serving the previous one"
                );
                Checked::Failed { version, error }
            }
        }
    }

    /// What this gateway serves, as reported to the operator.
    pub fn current_report(&self) -> GatewayReport {
        let rt = self.gateway.config.load();
        let status = self.gateway.config.status();
        let (chains, chain_census_ms) = self.gateway.chain_activity.report();
        GatewayReport {
            gateway: self.options.gateway_id.clone(),
            version: if rt.loaded { rt.snapshot.version } else { 0 },
            digest: rt.snapshot.digest.clone(),
            failed_version: status.failed_version,
            error: status.error,
            chains,
            chain_census_ms,
        }
    }

    /// Reports what this gateway serves; failures are logged and left to the next beat.
    pub async fn report(&self) {
        let report = self.current_report();
        let ttl = self.options.report_interval * 3;
        match self.channel.report(&report, ttl).await {
            Ok(()) => {
                tracing::debug!(gateway = %report.gateway, version = report.version, "reported")
            }
            Err(e) => tracing::debug!(error = %e, "report to the config channel failed"),
        }
    }

    /// The follow loop: never returns.
    pub async fn run(self) {
        let mut notifications = self.channel.notifications();
        let mut notifications_open = true;
        let mut poll = tokio::time::interval(self.options.poll_interval.max(MIN_INTERVAL));
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval(self.options.report_interval.max(MIN_INTERVAL));
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut backoff = Backoff::new(
            Duration::from_millis(200),
            self.options.poll_interval.max(MIN_INTERVAL),
        );
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut failing = false;
        tracing::info!(
            gateway = %self.options.gateway_id,
            backend = self.channel.kind(),
            "following the operator's configuration snapshots"
        );
        loop {
            // The first poll tick fires at once: that is the check at start.
            tokio::select! {
                changed = notifications.changed(), if notifications_open => {
                    if changed.is_err() {
                        tracing::warn!("config channel notifications ended; polling only");
                        notifications_open = false;
                        continue;
                    }
                    let version = *notifications.borrow_and_update();
                    if !self.may_want(version) {
                        continue;
                    }
                }
                _ = poll.tick() => self.reload_keys(),
                _ = sleep_until(retry_at), if retry_at.is_some() => {}
                _ = heartbeat.tick() => {
                    self.report().await;
                    continue;
                }
            }
            match self.check().await {
                Ok(_) => {
                    retry_at = None;
                    backoff.reset();
                    if failing {
                        failing = false;
                        tracing::info!("config channel reachable again");
                    }
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    retry_at = Some(tokio::time::Instant::now() + delay);
                    if failing {
                        tracing::debug!(error = %e, retry_in = ?delay, "config channel still unavailable");
                    } else {
                        failing = true;
                        tracing::warn!(error = %e, retry_in = ?delay,
                            "config channel unavailable; serving the last snapshot and retrying");
                    }
                }
            }
        }
    }
}

/// Shortest poll and report period (guards against a zero interval, which tokio rejects).
const MIN_INTERVAL: Duration = Duration::from_millis(100);

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A default gateway id: the host name (the pod name in Kubernetes) and 6 random hex
/// characters, so restarted or co-located processes never share an id.
/// The config channel's backend for a `--state` URL (`redis`, `postgres`); other schemes
/// have no channel and are refused at start.
pub fn channel_kind(url: &str) -> Result<&'static str, String> {
    match url
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase())
        .as_deref()
    {
        Some("redis" | "rediss") => Ok("redis"),
        Some("postgres" | "postgresql") => Ok("postgres"),
        _ => Err("use redis://, rediss://, postgres:// or postgresql://".into()),
    }
}

/// Connects the config channel (retrying with backoff while it is unreachable, so a
/// gateway started before its backend waits instead of exiting), then follows it.
pub fn spawn_when_connected(
    url: String,
    prefix: String,
    timeout: Duration,
    gateway: Arc<Gateway>,
    options: FollowOptions,
) {
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
        let channel = loop {
            match acteon_channel::connect(&url, &prefix, timeout).await {
                Ok(channel) => break channel,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = ?e.to_string(), retry_in = ?delay, "config channel unreachable; waiting for it");
                    tokio::time::sleep(delay).await;
                }
            }
        };
        tracing::info!(backend = channel.kind(), "config channel connected");
        Follower::new(channel, gateway, options).run().await;
    });
}

pub fn default_gateway_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "acteon-gateway".to_owned());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &random[..6])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigSource, LiveConfig};
    use crate::metrics::Metrics;
    use crate::pipeline::GatewayOptions;
    use crate::state::MemoryStore;
    use acteon_api::compile::{CompileOptions, compile, parse_text};
    use acteon_channel::memory::MemoryChannel;
    use acteon_channel::seal::SealKey;

    fn snapshot(yaml: &str) -> Snapshot {
        let docs = parse_text("t.yaml", yaml).expect("parses");
        let c = compile(&docs, &CompileOptions::default());
        assert!(c.rejections.is_empty(), "{:?}", c.rejections);
        c.snapshot
    }

    const V1: &str = r#"
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {name: p, namespace: n}
spec: {type: noop}
"#;

    fn setup(key: Option<SealKey>) -> (Arc<MemoryChannel>, Arc<Gateway>, Follower) {
        setup_with(SealKeys::fixed(key, true).expect("allows unsigned"))
    }

    fn setup_with(keys: SealKeys) -> (Arc<MemoryChannel>, Arc<Gateway>, Follower) {
        let channel = Arc::new(MemoryChannel::new());
        let gateway = Arc::new(Gateway {
            config: LiveConfig::waiting(
                ConfigSource::Channel { backend: "memory" },
                Some("gw-test".into()),
            ),
            state: Arc::new(MemoryStore::new()),
            metrics: Arc::new(Metrics::new()),
            options: GatewayOptions::default(),
            confirmer: Default::default(),
            delivered: Default::default(),
            chain_activity: Default::default(),
            guards: Default::default(),
            audit: None,
        });
        let follower = Follower::new(
            channel.clone(),
            gateway.clone(),
            FollowOptions {
                gateway_id: "gw-test".into(),
                poll_interval: Duration::from_secs(5),
                report_interval: Duration::from_secs(5),
                keys: Arc::new(keys),
                http: reqwest::Client::new(),
            },
        );
        (channel, gateway, follower)
    }

    async fn publish(channel: &MemoryChannel, s: &Snapshot) -> u64 {
        let body = serde_json::to_vec(s).expect("serializes");
        channel
            .publish(&s.digest, &body)
            .await
            .expect("publishes")
            .head()
            .version
    }

    #[tokio::test]
    async fn applies_newer_versions_and_skips_a_failed_one() {
        let (channel, gw, f) = setup(None);
        assert_eq!(f.check().await.unwrap(), Checked::Empty);
        assert!(!gw.config.load().loaded);

        let v1 = publish(&channel, &snapshot(V1)).await;
        assert_eq!(f.check().await.unwrap(), Checked::Applied(v1));
        assert!(gw.config.load().loaded);
        assert_eq!(gw.config.load().snapshot.version, v1);
        assert_eq!(f.check().await.unwrap(), Checked::UpToDate);

        let v2 = channel.publish("garbage", b"not json").await.unwrap();
        let v2 = v2.head().version;
        match f.check().await.unwrap() {
            Checked::Failed { version, error } => {
                assert_eq!(version, v2);
                assert!(error.contains("does not parse"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        // Still serving v1; the failed version is not retried.
        assert_eq!(gw.config.load().snapshot.version, v1);
        assert_eq!(f.check().await.unwrap(), Checked::UpToDate);
        assert_eq!(gw.metrics.config_reload_failures.get(), 1);
        let report = channel.gateways().await.unwrap();
        assert_eq!(report.len(), 1);
        assert_eq!(report[0].version, v1);
        assert_eq!(report[0].failed_version, Some(v2));

        // A newer good version clears the failure.
        let mut s = snapshot(V1);
        s.digest = "other".into();
        let v3 = publish(&channel, &s).await;
        assert_eq!(f.check().await.unwrap(), Checked::Applied(v3));
        let status = gw.config.status();
        assert_eq!((status.failed_version, status.error), (None, None));
        assert_eq!(gw.metrics.config_version.get(), v3 as i64);
        assert_eq!(gw.metrics.config_reloads.get(), 2);
        assert_eq!(f.current_report().failed_version, None);
    }

    const WITH_SECRET: &str = r#"
apiVersion: acteon.dev/v1alpha1
kind: Provider
metadata: {name: hook, namespace: n}
spec:
  type: webhook
  webhook:
    url: http://127.0.0.1:9/
    secretHeaders:
      Authorization: {name: creds, key: token}
"#;

    fn sealed(key: &SealKey) -> Snapshot {
        let mut s = snapshot(WITH_SECRET);
        let id = acteon_api::snapshot::secret_id(
            Some("n"),
            &acteon_api::crd::SecretKeyRef {
                name: "creds".into(),
                key: "token".into(),
            },
        );
        s.secrets
            .insert(id.clone(), key.seal(&id, b"Bearer hunter2"));
        s.seal();
        s
    }

    /// A rotated key file reaches a running follower: the publication it refused under the
    /// old key (signed with the new one) is tried again and served.
    #[tokio::test]
    async fn a_publication_refused_for_its_key_is_served_once_the_key_file_changes() {
        let (old, new) = (SealKey::generate(), SealKey::generate());
        let dir = std::env::temp_dir().join(format!("acteon-follow-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let key_file = dir.join("key");
        std::fs::write(&key_file, old.to_text()).unwrap();
        let keys = SealKeys::from_files(key_file.clone(), None, false).unwrap();
        let (channel, gw, f) = setup_with(keys);
        let s = sealed(&new);
        let body = acteon_channel::auth::sign(&new, &s.digest, &serde_json::to_vec(&s).unwrap());
        let v = channel
            .publish(&s.digest, &body)
            .await
            .unwrap()
            .head()
            .version;
        assert!(matches!(f.check().await.unwrap(), Checked::Failed { .. }));
        f.reload_keys();
        assert_eq!(f.check().await.unwrap(), Checked::UpToDate, "not retried");
        std::fs::write(&key_file, new.to_text()).unwrap();
        f.reload_keys();
        assert_eq!(f.check().await.unwrap(), Checked::Applied(v));
        assert!(gw.config.load().loaded);
        assert_eq!(gw.metrics.seal_key_reloads.get(), 1);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn secrets_open_with_the_key_and_never_show() {
        let key = SealKey::generate();
        let (channel, gw, f) = setup(Some(key.clone()));
        let v = publish(&channel, &sealed(&key)).await;
        assert_eq!(f.check().await.unwrap(), Checked::Applied(v));
        let rt = gw.config.load();
        assert!(rt.snapshot.secrets.is_empty(), "sealed values are dropped");
        assert!(!format!("{rt:?}").contains("hunter2"));

        // Another key: the snapshot fails, naming provider and field, not the value.
        let (channel, gw, f) = setup(Some(SealKey::generate()));
        let v = publish(&channel, &sealed(&key)).await;
        match f.check().await.unwrap() {
            Checked::Failed { version, error } => {
                assert_eq!(version, v);
                assert!(error.contains("provider n/hook"), "{error}");
                assert!(
                    error.contains("spec.webhook.secretHeaders.Authorization"),
                    "{error}"
                );
                assert!(!error.contains("hunter2"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!gw.config.load().loaded);

        // No key at all.
        let (channel, _gw, f) = setup(None);
        publish(&channel, &sealed(&key)).await;
        match f.check().await.unwrap() {
            Checked::Failed { error, .. } => assert!(error.contains("no seal key"), "{error}"),
            other => panic!("{other:?}"),
        }

        // Missing from the snapshot.
        let (channel, _gw, f) = setup(Some(key.clone()));
        publish(&channel, &snapshot(WITH_SECRET)).await;
        match f.check().await.unwrap() {
            Checked::Failed { error, .. } => {
                assert!(error.contains("not in the snapshot"), "{error}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn run_follows_notifications() {
        let (channel, gw, f) = setup(None);
        let task = f.spawn();
        let v1 = publish(&channel, &snapshot(V1)).await;
        let deadline = Instant::now() + Duration::from_secs(3);
        while gw.config.load().snapshot.version != v1 {
            assert!(Instant::now() < deadline, "not applied");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task.abort();
    }

    #[test]
    fn default_id_has_a_random_suffix() {
        let (a, b) = (default_gateway_id(), default_gateway_id());
        assert_ne!(a, b);
        let suffix = a.rsplit('-').next().unwrap();
        assert_eq!(suffix.len(), 6);
        assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
