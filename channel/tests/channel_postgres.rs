//! The conformance suite on Postgres, plus concurrent setup and the LISTEN reconnect path.
//!
//! The server is `ACTEON_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`;
//! see scripts/test-services.sh). Every test uses its own schema and drops it.

use std::sync::Arc;
use std::time::Duration;

use acteon_channel::conformance::{Fixture, NOTIFY_WITHIN, notified, publish_new, run_check};
use acteon_channel::postgres::{PostgresChannel, notify_channel};
use acteon_channel::{ChannelError, ConfigChannel};
use async_trait::async_trait;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

const TIMEOUT: Duration = Duration::from_secs(2);

fn url() -> String {
    std::env::var("ACTEON_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

struct Postgres {
    schema: String,
}

#[async_trait]
impl Fixture for Postgres {
    async fn open(&self) -> Arc<dyn ConfigChannel> {
        Arc::new(connect(&self.schema).await)
    }

    async fn cleanup(&self) {
        let mut conn = admin().await;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.schema
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }

    async fn write_directly(&self, digest: &str, body: &[u8]) -> bool {
        let mut conn = admin().await;
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE \"{}\".config_snapshot SET digest = $1, body = $2 WHERE id",
            self.schema
        )))
        .bind(digest)
        .bind(body)
        .execute(&mut conn)
        .await
        .unwrap();
        true
    }
}

async fn admin() -> PgConnection {
    PgConnection::connect(&url()).await.unwrap()
}

async fn connect(schema: &str) -> PostgresChannel {
    PostgresChannel::connect(&url(), schema, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("Postgres at {} is needed: {e}", url()))
}

async fn fixture() -> Postgres {
    Postgres {
        schema: format!("acteon-channel-test-{}", uuid::Uuid::new_v4().simple()),
    }
}

acteon_channel::channel_conformance_tests!(fixture());

/// Replicas starting together on a fresh schema all connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connects_on_a_fresh_schema_succeed() {
    for _ in 0..3 {
        run_check(fixture().await, |f| async move {
            let url = url();
            let connects = (0..4).map(|_| PostgresChannel::connect(&url, &f.schema, TIMEOUT));
            let channels = futures::future::join_all(connects).await;
            for ch in &channels {
                assert!(ch.is_ok(), "{:?}", ch.as_ref().err());
            }
            let first = channels.into_iter().next().unwrap().unwrap();
            assert_eq!(publish_new(&first, "d", b"x").await, 1);
        })
        .await;
    }
}

/// The channel's tables are the documented ones, and connecting again keeps the data.
#[tokio::test]
async fn tables_are_the_documented_ones_and_setup_is_idempotent() {
    run_check(fixture().await, |f| async move {
        publish_new(&connect(&f.schema).await, "d1", b"1").await;
        let again = connect(&f.schema).await;
        assert_eq!(again.head().await.unwrap().map(|h| h.version), Some(1));
        let mut conn = admin().await;
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 \
         ORDER BY 1",
        )
        .bind(&f.schema)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert_eq!(tables, ["config_gateways", "config_snapshot"]);
    })
    .await;
}

/// The server ends the LISTEN session: the listener comes back by itself, a version
/// published meanwhile is announced, and later ones are notified as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_survives_a_terminated_backend() {
    run_check(fixture().await, |f| async move {
        let (publisher, follower) = (f.open().await, f.open().await);
        let mut rx = follower.notifications();
        publish_new(&*publisher, "d1", b"1").await;
        assert!(notified(&mut rx, 1, NOTIFY_WITHIN).await);

        let mut conn = admin().await;
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1",
        )
        .bind(format!("LISTEN \"{}\"", notify_channel(&f.schema)))
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert!(
            killed.len() >= 2,
            "expected both listeners to be terminated: {killed:?}"
        );

        publish_new(&*publisher, "d2", b"2").await;
        assert!(
            notified(&mut rx, 2, Duration::from_secs(5)).await,
            "no notification after the LISTEN session was terminated"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        publish_new(&*publisher, "d3", b"3").await;
        assert!(notified(&mut rx, 3, NOTIFY_WITHIN).await);
        drop((publisher, follower));
    })
    .await;
}

#[tokio::test]
async fn errors_do_not_show_the_password() {
    let err = PostgresChannel::connect("postgres://u:hunter2@127.0.0.1:1/db", "s", TIMEOUT)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(!msg.contains("hunter2"), "{msg}");
    assert!(
        matches!(err, ChannelError::Unavailable(_) | ChannelError::Timeout(_)),
        "{msg}"
    );
    let bad_schema = PostgresChannel::connect(&url(), "bad\"schema", TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        bad_schema
            .to_string()
            .contains("invalid postgres schema name")
    );
}

#[tokio::test]
async fn connect_chooses_postgres_by_scheme() {
    run_check(fixture().await, |f| async move {
        let alt = url().replacen("postgres://", "postgresql://", 1);
        for url in [url(), alt] {
            let ch = acteon_channel::connect(&url, &f.schema, TIMEOUT)
                .await
                .unwrap();
            assert_eq!(ch.kind(), "postgres");
            assert_eq!(ch.head().await.unwrap(), None);
        }
    })
    .await;
}
