//! The conformance suite on Redis, plus the subscription's reconnect path.
//!
//! The server is `ACTEON_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`; see
//! scripts/test-services.sh). Every test uses its own key prefix and deletes its keys.

use std::sync::Arc;
use std::time::Duration;

use acteon_channel::conformance::{Fixture, NOTIFY_WITHIN, notified, publish_new, run_check};
use acteon_channel::redis::RedisChannel;
use acteon_channel::{ChannelError, ConfigChannel};
use async_trait::async_trait;

const TIMEOUT: Duration = Duration::from_secs(2);

fn url() -> String {
    std::env::var("ACTEON_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

struct Redis {
    prefix: String,
}

#[async_trait]
impl Fixture for Redis {
    async fn open(&self) -> Arc<dyn ConfigChannel> {
        Arc::new(connect(&self.prefix).await)
    }

    async fn cleanup(&self) {
        let client = redis::Client::open(url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }

    async fn write_directly(&self, digest: &str, body: &[u8]) -> bool {
        let client = redis::Client::open(url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("HSET")
            .arg(format!("{}:config", self.prefix))
            .arg("digest")
            .arg(digest)
            .arg("body")
            .arg(body)
            .query_async(&mut conn)
            .await
            .unwrap();
        true
    }
}

async fn connect(prefix: &str) -> RedisChannel {
    RedisChannel::connect(&url(), prefix, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("Redis at {} is needed: {e}", url()))
}

async fn fixture() -> Redis {
    Redis {
        prefix: format!("acteon-channel-test-{}", uuid::Uuid::new_v4().simple()),
    }
}

acteon_channel::channel_conformance_tests!(fixture());

/// Records land under the prefix, in the documented keys.
#[tokio::test]
async fn keys_are_the_documented_ones() {
    run_check(fixture().await, |f| async move {
        let ch = f.open().await;
        publish_new(&*ch, "d1", b"body").await;
        ch.report(
            &acteon_channel::conformance::report("gw", 1),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        let client = redis::Client::open(url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", f.prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.sort();
        assert_eq!(
            keys,
            [
                format!("{}:config", f.prefix),
                format!("{}:config:gateways", f.prefix)
            ]
        );
    })
    .await;
}

/// The server drops every pub/sub client: the subscription comes back by itself, a version
/// published meanwhile is announced, and later ones are notified as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_survives_client_kill() {
    run_check(fixture().await, |f| async move {
        let (publisher, follower) = (f.open().await, f.open().await);
        let mut rx = follower.notifications();
        publish_new(&*publisher, "d1", b"1").await;
        assert!(notified(&mut rx, 1, NOTIFY_WITHIN).await);

        let client = redis::Client::open(url()).unwrap();
        let mut admin = client.get_multiplexed_async_connection().await.unwrap();
        let killed: u64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut admin)
            .await
            .unwrap();
        assert!(
            killed >= 2,
            "expected both subscriptions to be killed, got {killed}"
        );

        publish_new(&*publisher, "d2", b"2").await;
        assert!(
            notified(&mut rx, 2, Duration::from_secs(5)).await,
            "no notification after the pub/sub connection was killed"
        );
        // Live again (not only the head read after reconnecting): the next one is prompt.
        tokio::time::sleep(Duration::from_millis(200)).await;
        publish_new(&*publisher, "d3", b"3").await;
        assert!(notified(&mut rx, 3, NOTIFY_WITHIN).await);
    })
    .await;
}

#[tokio::test]
async fn errors_do_not_show_the_password() {
    // Nothing listens on port 1: the connection is refused.
    for url in [
        "redis://:hunter2@127.0.0.1:1/",
        "redis://user:hunter2@127.0.0.1:1/0",
    ] {
        let err = RedisChannel::connect(url, "p", TIMEOUT).await.unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(
            matches!(err, ChannelError::Unavailable(_) | ChannelError::Timeout(_)),
            "{msg}"
        );
    }
}

#[tokio::test]
async fn connect_chooses_redis_by_scheme() {
    let f = fixture().await;
    let ch = acteon_channel::connect(&url(), &f.prefix, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(ch.kind(), "redis");
    assert_eq!(ch.head().await.unwrap(), None);
}
