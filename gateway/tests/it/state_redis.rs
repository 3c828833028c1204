//! The state conformance suite on a real Redis (`ACTEON_TEST_REDIS_URL`, default the local
//! server), each test under its own key prefix.

use std::sync::Arc;
use std::time::Duration;

use acteon_gateway::state::{
    Deferral, GateMode, GateResult, GroupAppend, RedisStore, StateStore, Transition,
};

fn redis_url() -> String {
    std::env::var("ACTEON_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

async fn store() -> Arc<dyn StateStore> {
    let prefix = format!("acteon-test-{}", uuid::Uuid::new_v4().simple());
    let url = redis_url();
    let store = RedisStore::connect(&url, &prefix, Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| {
            panic!("Redis at {url} is needed for these tests (set ACTEON_TEST_REDIS_URL): {e}")
        });
    Arc::new(store)
}

acteon_gateway::conformance_tests!(redis, store());

/// The key indexes of groups and events stay bounded without listings: writes drop the
/// keys whose record expired (an idle group `idle_ttl` after its flush, an event `ttl`
/// after its change), and the records themselves expire in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_indexes_drop_expired_keys() {
    let prefix = format!("acteon-test-{}", uuid::Uuid::new_v4().simple());
    let url = redis_url();
    let store = RedisStore::connect(&url, &prefix, Duration::from_secs(2))
        .await
        .expect("Redis is needed for these tests");
    let short = Duration::from_millis(200);
    let append = |key: &str, idle_ttl: Duration| {
        Deferral::GroupAppend(GroupAppend {
            key: key.into(),
            group_id: key.into(),
            meta: Vec::new(),
            event: b"e".to_vec(),
            max_events: 10,
            wait: Duration::from_secs(3_600),
            interval: Duration::from_secs(3_600),
            idle_ttl,
            timer_id: format!("{key}#t"),
            timer_payload: Vec::new(),
            fingerprint: None,
            repeat: None,
        })
    };
    let event = |key: &str, ttl: Duration| {
        Deferral::Transition(Transition {
            key: key.into(),
            fingerprint: key.into(),
            initial: "new".into(),
            to: Some("on".into()),
            allowed_from: vec!["new".into()],
            require_timer: None,
            timeout: None,
            to_terminal: false,
            terminal: Vec::new(),
            active_sets: vec!["set".into()],
            record: Vec::new(),
            ttl,
            notice: None,
        })
    };
    let defer = |deferrals: Vec<Deferral>| {
        let store = &store;
        async move {
            let (result, _) = store
                .run_gates_and_defer(&[], GateMode::APPLY, &deferrals)
                .await
                .expect("deferrals");
            assert_eq!(result, GateResult::Passed);
        }
    };
    defer(
        (0..20)
            .map(|i| append(&format!("g{i:02}"), short))
            .collect(),
    )
    .await;
    defer((0..20).map(|i| event(&format!("e{i:02}"), short)).collect()).await;
    let later = acteon_gateway::state::unix_ms() + 7_200_000;
    let claimed = store
        .claim_due_timers(later, 100, Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 20);
    for t in &claimed {
        let key = t.id.trim_end_matches("#t");
        assert!(store.group_flush_begin(key).await.expect("begin").is_some());
        let ended = store.group_flush_end(key, &t.id, &t.claim, short, None);
        assert!(ended.await.expect("end"));
    }
    let mut conn = ::redis::Client::open(url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let card = |index: &'static str| {
        let key = format!("{prefix}:{index}:");
        let mut conn = conn.clone();
        async move {
            let n: u64 = ::redis::cmd("ZCARD")
                .arg(key)
                .query_async(&mut conn)
                .await
                .expect("ZCARD");
            n
        }
    };
    assert_eq!((card("gx").await, card("sx").await), (20, 20));

    tokio::time::sleep(short + Duration::from_millis(200)).await;
    // Each write drops up to 16 expired keys of its kind.
    for round in 0..2 {
        let long = Duration::from_secs(3_600);
        defer(vec![append(&format!("live{round}"), long)]).await;
        defer(vec![event(&format!("live{round}"), long)]).await;
    }
    assert_eq!(
        (
            card("gx").await,
            card("gy").await,
            card("sx").await,
            card("sy").await
        ),
        (2, 2, 2, 2),
        "only the live keys stay indexed"
    );
    let gone: u64 = ::redis::cmd("EXISTS")
        .arg(format!("{prefix}:gh:g00"))
        .arg(format!("{prefix}:ge:g00"))
        .arg(format!("{prefix}:sm:e00"))
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert_eq!(gone, 0, "expired records are gone");
    let listed = store.list_groups("", 100).await.expect("list");
    assert_eq!(listed.len(), 2);
}
