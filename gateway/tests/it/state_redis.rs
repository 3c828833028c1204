//! The state conformance suite on a real Redis (`ACTEON_TEST_REDIS_URL`, default the local
//! server), each test under its own key prefix.

use std::sync::Arc;
use std::time::Duration;

use acteon_gateway::state::{RedisStore, StateStore};

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
