//! The Redis channel.
//!
//! Keys (all under the installation's prefix, next to the gateway's state keys):
//! - `<prefix>:config` — hash `version`, `digest`, `body`, `published_ms`: head and body
//!   in one key, so [`ConfigChannel::fetch`] reads them consistently with one `HMGET`.
//! - `<prefix>:config:gateways` — hash gateway id → `{"expires_ms": …, "report": {…}}`,
//!   expiry on the server clock (`TIME`), pruned by the scripts that read or write it.
//! - `<prefix>:config:notify` — pub/sub channel carrying each new version as decimal text.
//!
//! Every compound operation is one Lua script, so it is atomic on the server and costs one
//! round trip. Commands share one multiplexed [`ConnectionManager`]; a background task holds
//! the pub/sub connection (`Follower` below).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::{ConnectionManager, PubSubSink, PubSubStream};
use redis::{Client, Script};
use serde::Deserialize;
use tokio::sync::{oneshot, watch};
use tracing::Instrument;

use crate::backend::{Redactor, redis_client, redis_manager_config};
use crate::util::{Backoff, announce, bounded};
use crate::{ChannelError, ConfigChannel, GatewayReport, Head, PublishOutcome, Published};

/// KEYS: config hash. ARGV: digest, body, notify channel. Returns `{published 0|1, version}`.
const PUBLISH: &str = r"
local cur = redis.call('HGET', KEYS[1], 'digest')
if cur == ARGV[1] then
  return {0, tonumber(redis.call('HGET', KEYS[1], 'version'))}
end
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'digest', ARGV[1], 'body', ARGV[2],
  'published_ms', string.format('%d', now))
redis.call('PUBLISH', ARGV[3], version)
return {1, version}
";

/// Deletes the expired fields of the gateways hash (KEYS[1]); `now` in ms. Returns the
/// values kept (an undecodable value is kept, for the caller to report).
const PRUNE: &str = r"
local function prune(key, now)
  local all = redis.call('HGETALL', key)
  local kept = {}
  for i = 1, #all, 2 do
    local ok, rec = pcall(cjson.decode, all[i + 1])
    local exp = ok and type(rec) == 'table' and tonumber(rec.expires_ms)
    if exp and exp <= now then
      redis.call('HDEL', key, all[i])
    else
      kept[#kept + 1] = all[i + 1]
    end
  end
  return kept
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// KEYS: gateways hash. ARGV: gateway id, report JSON, ttl ms.
const REPORT: &str = r#"
prune(KEYS[1], now)
local exp = string.format('%d', now + tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], ARGV[1], '{"expires_ms":' .. exp .. ',"report":' .. ARGV[2] .. '}')
return 1
"#;

/// KEYS: gateways hash. Returns the unexpired records.
const GATEWAYS: &str = r"
return prune(KEYS[1], now)
";

/// Pub/sub connections are pinged this often, so a silently dead one is replaced.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Report TTLs are capped (10 years), so expiry arithmetic stays exact in Lua numbers.
const MAX_TTL_MS: u64 = 10 * 365 * 86_400 * 1000;

#[derive(Clone)]
struct Keys {
    config: String,
    gateways: String,
    notify: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            config: format!("{prefix}:config"),
            gateways: format!("{prefix}:config:gateways"),
            notify: format!("{prefix}:config:notify"),
        }
    }
}

/// The Redis [`ConfigChannel`]. Dropping it stops its subscription task.
pub struct RedisChannel {
    conn: ConnectionManager,
    keys: Keys,
    publish: Script,
    report: Script,
    gateways: Script,
    timeout: Duration,
    redactor: Arc<Redactor>,
    notify: Arc<watch::Sender<u64>>,
    follower: tokio::task::AbortHandle,
}

impl Drop for RedisChannel {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl std::fmt::Debug for RedisChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisChannel")
            .field("config_key", &self.keys.config)
            .finish_non_exhaustive()
    }
}

impl RedisChannel {
    /// Connects the command connection and the subscription (both within `timeout`) for the
    /// channel under `prefix`. Every later call is bounded by `timeout` too.
    #[tracing::instrument(
        name = "config_channel_connect",
        skip(url, timeout),
        fields(backend = "redis")
    )]
    pub async fn connect(
        url: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<RedisChannel, ChannelError> {
        let redactor = Arc::new(Redactor::new(url));
        let fail = |e: redis::RedisError| redactor.unavailable("redis", "connect", e);
        let client = redis_client(url).map_err(fail)?;
        let conn = bounded(
            timeout,
            client.get_connection_manager_with_config(redis_manager_config(timeout)),
            fail,
        )
        .await?;
        let keys = Keys::new(prefix);
        let notify = Arc::new(watch::Sender::new(0));
        let follower = Follower {
            client,
            conn: conn.clone(),
            keys: keys.clone(),
            timeout,
            redactor: redactor.clone(),
            tx: notify.clone(),
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        let span = tracing::info_span!("config_channel_follow", backend = "redis", prefix);
        let task = tokio::spawn(follower.run(ready_tx).instrument(span));
        let channel = RedisChannel {
            conn,
            keys,
            publish: Script::new(PUBLISH),
            report: Script::new(&format!("{PRUNE}{REPORT}")),
            gateways: Script::new(&format!("{PRUNE}{GATEWAYS}")),
            timeout,
            redactor,
            notify,
            follower: task.abort_handle(),
        };
        // Dropping `channel` on an error stops the follower.
        match tokio::time::timeout(timeout, ready_rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(_)) => {
                return Err(ChannelError::Unavailable(
                    "redis subscribe: task ended".into(),
                ));
            }
            Err(_) => return Err(ChannelError::Timeout(timeout)),
        }
        tracing::info!("config channel connected");
        Ok(channel)
    }

    fn unavailable(&self, op: &str, e: redis::RedisError) -> ChannelError {
        self.redactor.unavailable("redis", op, e)
    }
}

/// Reads `(version, digest)` of the config hash.
async fn read_head(
    conn: &mut ConnectionManager,
    key: &str,
) -> Result<Option<Head>, redis::RedisError> {
    let (version, digest): (Option<u64>, Option<String>) = redis::cmd("HMGET")
        .arg(key)
        .arg("version")
        .arg("digest")
        .query_async(conn)
        .await?;
    Ok(version.map(|version| Head {
        version,
        digest: digest.unwrap_or_default(),
    }))
}

#[async_trait]
impl ConfigChannel for RedisChannel {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, digest: &str, body: &[u8]) -> Result<PublishOutcome, ChannelError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.publish.key(&self.keys.config);
        invocation.arg(digest).arg(body).arg(&self.keys.notify);
        let (published, version): (u8, Option<u64>) =
            bounded(self.timeout, invocation.invoke_async(&mut conn), |e| {
                self.unavailable("publish", e)
            })
            .await?;
        let version =
            version.ok_or_else(|| ChannelError::Corrupt("config hash has no version".into()))?;
        let head = Head {
            version,
            digest: digest.to_owned(),
        };
        if published == 1 {
            tracing::info!(
                version,
                digest,
                bytes = body.len(),
                "config snapshot published"
            );
            Ok(PublishOutcome::Published(head))
        } else {
            tracing::debug!(version, digest, "config snapshot unchanged");
            Ok(PublishOutcome::Unchanged(head))
        }
    }

    async fn head(&self) -> Result<Option<Head>, ChannelError> {
        let mut conn = self.conn.clone();
        bounded(self.timeout, read_head(&mut conn, &self.keys.config), |e| {
            self.unavailable("head", e)
        })
        .await
    }

    async fn fetch(&self) -> Result<Option<Published>, ChannelError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&self.keys.config)
            .arg("version")
            .arg("digest")
            .arg("body");
        let query = cmd.query_async(&mut conn);
        let (version, digest, body): (Option<u64>, Option<String>, Option<Vec<u8>>) =
            bounded(self.timeout, query, |e| self.unavailable("fetch", e)).await?;
        match (version, digest, body) {
            (None, _, _) => Ok(None),
            (Some(version), Some(digest), Some(body)) => Ok(Some(Published {
                version,
                digest,
                body,
            })),
            (Some(version), _, _) => Err(ChannelError::Corrupt(format!(
                "{} has version {version} but no digest or body",
                self.keys.config
            ))),
        }
    }

    fn notifications(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    async fn report(&self, report: &GatewayReport, ttl: Duration) -> Result<(), ChannelError> {
        let json = serde_json::to_string(report)
            .map_err(|e| ChannelError::Corrupt(format!("report does not serialize: {e}")))?;
        let ttl_ms = (ttl.as_millis().min(u128::from(MAX_TTL_MS)) as u64).max(1);
        let mut conn = self.conn.clone();
        let mut invocation = self.report.key(&self.keys.gateways);
        invocation.arg(&report.gateway).arg(json).arg(ttl_ms);
        let _: i64 = bounded(self.timeout, invocation.invoke_async(&mut conn), |e| {
            self.unavailable("report", e)
        })
        .await?;
        Ok(())
    }

    async fn gateways(&self) -> Result<Vec<GatewayReport>, ChannelError> {
        let mut conn = self.conn.clone();
        let invocation = self.gateways.key(&self.keys.gateways);
        let records: Vec<Vec<u8>> =
            bounded(self.timeout, invocation.invoke_async(&mut conn), |e| {
                self.unavailable("gateways", e)
            })
            .await?;
        Ok(parse_reports(&records))
    }
}

/// One value of the gateways hash.
#[derive(Deserialize)]
struct Stored {
    report: GatewayReport,
}

/// Decodes the records, skipping (and logging) any that do not decode: one bad record must
/// not hide every gateway from the operator's status.
fn parse_reports(records: &[Vec<u8>]) -> Vec<GatewayReport> {
    let mut reports: Vec<GatewayReport> = records
        .iter()
        .filter_map(|raw| match serde_json::from_slice::<Stored>(raw) {
            Ok(stored) => Some(stored.report),
            Err(error) => {
                tracing::warn!(%error, "skipping an undecodable gateway report");
                None
            }
        })
        .collect();
    reports.sort_by(|a, b| a.gateway.cmp(&b.gateway));
    reports
}

/// The subscription task: subscribes, announces the current head, forwards every
/// notification, and starts over (with backoff) whenever the connection is lost.
struct Follower {
    client: Client,
    conn: ConnectionManager,
    keys: Keys,
    timeout: Duration,
    redactor: Arc<Redactor>,
    tx: Arc<watch::Sender<u64>>,
}

impl Follower {
    async fn run(self, ready: oneshot::Sender<Result<(), ChannelError>>) {
        let mut ready = Some(ready);
        let mut backoff = Backoff::new();
        loop {
            match self.subscribe().await {
                Ok((sink, stream)) => {
                    match ready.take() {
                        Some(ready) => {
                            let _ = ready.send(Ok(()));
                        }
                        None => tracing::info!("config channel subscription restored"),
                    }
                    backoff.reset();
                    self.listen(sink, stream).await;
                    tracing::warn!("config channel subscription lost; reconnecting");
                }
                // The first attempt fails `connect`, which then drops this task.
                Err(e) => match ready.take() {
                    Some(ready) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                    None => tracing::warn!(error = %e, "config channel resubscribe failed"),
                },
            }
            backoff.wait().await;
        }
    }

    /// Subscribes, then reads and announces the head, so that a version published while the
    /// subscription was down is announced now rather than at the follower's next poll.
    async fn subscribe(&self) -> Result<(PubSubSink, PubSubStream), ChannelError> {
        let fail = |e: redis::RedisError| self.redactor.unavailable("redis", "subscribe", e);
        let pubsub = bounded(self.timeout, self.client.get_async_pubsub(), fail).await?;
        let (mut sink, stream) = pubsub.split();
        bounded(self.timeout, sink.subscribe(&self.keys.notify), fail).await?;
        let mut conn = self.conn.clone();
        let head = bounded(self.timeout, read_head(&mut conn, &self.keys.config), |e| {
            self.redactor.unavailable("redis", "head", e)
        })
        .await?;
        if let Some(head) = head {
            announce(&self.tx, head.version);
        }
        Ok((sink, stream))
    }

    /// Forwards notifications until the connection ends or stops answering pings.
    async fn listen(&self, mut sink: PubSubSink, mut stream: PubSubStream) {
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else { return };
                    match message.get_payload::<String>().ok().and_then(|p| p.parse().ok()) {
                        Some(version) => announce(&self.tx, version),
                        None => tracing::debug!("ignoring a malformed config notification"),
                    }
                }
                _ = keepalive.tick() => {
                    let ping = tokio::time::timeout(self.timeout, sink.ping::<redis::Value>());
                    if !matches!(ping.await, Ok(Ok(_))) {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_parse_sorted_skipping_bad_ones() {
        let rec = |g: &str| {
            format!(r#"{{"expires_ms":1,"report":{{"gateway":"{g}","version":3,"digest":"d"}}}}"#)
                .into_bytes()
        };
        let parsed = parse_reports(&[rec("b"), b"{nope".to_vec(), rec("a")]);
        let ids: Vec<_> = parsed.iter().map(|r| r.gateway.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(parsed[0].version, 3);
    }
}
