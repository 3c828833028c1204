//! The Postgres backend: the shared conformance suite on a real server, each test in a fresh
//! schema of its own, plus the sweeper and recovery.
//!
//! The server is `ACTEON_TEST_POSTGRES_URL` (default `postgres://root@127.0.0.1:5432/test`;
//! `scripts/test-services.sh` provides one). Without a server these tests fail: they never
//! pass silently.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use acteon_gateway::state::postgres::{CLAIM_DUE_TIMERS_SQL, GateBatches, PostgresOptions};
use acteon_gateway::state::{
    ClaimedTimer, DedupConfirm, DeferResult, Deferral, EventInfo, Gate, GateMode, GateResult,
    GroupAppend, GroupBatch, GroupInfo, PostgresStore, StateAnswers, StateError, StateRead,
    StateStore, Transition, Versioned,
};
use async_trait::async_trait;
use sqlx::Connection;
use tokio::sync::{Semaphore, SemaphorePermit};

const DEFAULT_URL: &str = "postgres://root@127.0.0.1:5432/test";
/// Test schemas are named `acteon_test_<unix seconds>_<random>`; those older than this are
/// dropped by later runs.
const STALE_AFTER_SECS: u64 = 900;

fn url() -> String {
    std::env::var("ACTEON_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

fn unix_secs() -> u64 {
    acteon_gateway::state::unix_ms() / 1_000
}

/// A fresh schema name: `acteon_test_<unix seconds>_<random>`.
fn test_schema_name() -> String {
    format!(
        "acteon_test_{}_{}",
        unix_secs(),
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A store on a fresh, migrated schema.
async fn fresh_store() -> PostgresStore {
    let url = url();
    drop_stale_schemas(&url).await;
    let schema = test_schema_name();
    let options = PostgresOptions {
        max_connections: CONNECTIONS,
        ..PostgresOptions::default()
    };
    let store = PostgresStore::connect_with(&url, &schema, options)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the Postgres state tests need a Postgres server at {url} \
                 (set ACTEON_TEST_POSTGRES_URL, or run scripts/test-services.sh): {e}"
            )
        });
    store
        .migrate()
        .await
        .unwrap_or_else(|e| panic!("migrating schema {schema} on {url}: {e}"));
    store
}

/// Drops the schemas that earlier runs left behind (once per process).
async fn drop_stale_schemas(url: &str) {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    let Ok(mut conn) = sqlx::PgConnection::connect(url).await else {
        return; // connect_with reports the problem
    };
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'acteon\\_test\\_%'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default();
    let cutoff = unix_secs().saturating_sub(STALE_AFTER_SECS);
    for name in names {
        let created = name
            .strip_prefix("acteon_test_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|c| c < cutoff) {
            let sql = format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE");
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await;
        }
    }
    let _ = conn.close().await;
}

/// Drops the schema of a test that ran to its end.
async fn drop_schema(store: &PostgresStore) {
    let mut conn = sqlx::PgConnection::connect(&url()).await.unwrap();
    let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", store.schema());
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .unwrap();
}

/// Tests of this binary that use Postgres at once. With a pool of [`CONNECTIONS`] each they
/// stay far below the server's connection limit (100 by default) however many test
/// threads the machine runs.
static SLOTS: Semaphore = Semaphore::const_new(6);
/// Pool size of a test store.
const CONNECTIONS: u32 = 8;

async fn slot() -> SemaphorePermit<'static> {
    SLOTS.acquire().await.expect("never closed")
}

/// A store that holds its test's slot for as long as it lives.
struct Slotted {
    store: PostgresStore,
    _slot: SemaphorePermit<'static>,
}

/// Conformance checks cannot clean up after themselves: their store drops its schema.
impl Drop for Slotted {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.store.schema());
        // On a thread of its own: this runs inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&url()).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

#[async_trait]
impl StateStore for Slotted {
    fn kind(&self) -> &'static str {
        self.store.kind()
    }
    async fn ping(&self) -> Result<(), StateError> {
        self.store.ping().await
    }
    async fn apply_gates(&self, gates: &[Gate]) -> Result<GateResult, StateError> {
        self.store.apply_gates(gates).await
    }
    async fn run_gates(&self, gates: &[Gate], mode: GateMode) -> Result<GateResult, StateError> {
        self.store.run_gates(gates, mode).await
    }
    async fn run_gates_and_defer(
        &self,
        gates: &[Gate],
        mode: GateMode,
        deferrals: &[Deferral],
    ) -> Result<(GateResult, Vec<DeferResult>), StateError> {
        self.store.run_gates_and_defer(gates, mode, deferrals).await
    }
    async fn group_flush_begin(&self, key: &str) -> Result<Option<GroupBatch>, StateError> {
        self.store.group_flush_begin(key).await
    }
    async fn group_flush_end(
        &self,
        key: &str,
        timer_id: &str,
        claim: &str,
        interval: Duration,
        repeat_at_ms: Option<u64>,
    ) -> Result<bool, StateError> {
        self.store
            .group_flush_end(key, timer_id, claim, interval, repeat_at_ms)
            .await
    }
    async fn get_group(&self, key: &str) -> Result<Option<GroupInfo>, StateError> {
        self.store.get_group(key).await
    }
    async fn list_groups(&self, prefix: &str, limit: usize) -> Result<Vec<GroupInfo>, StateError> {
        self.store.list_groups(prefix, limit).await
    }
    async fn get_event(&self, key: &str) -> Result<Option<EventInfo>, StateError> {
        self.store.get_event(key).await
    }
    async fn list_events(&self, prefix: &str, limit: usize) -> Result<Vec<EventInfo>, StateError> {
        self.store.list_events(prefix, limit).await
    }
    async fn read_state(&self, reads: &[StateRead]) -> Result<StateAnswers, StateError> {
        self.store.read_state(reads).await
    }
    async fn pending_timers(&self) -> Result<u64, StateError> {
        self.store.pending_timers().await
    }
    async fn release_timers(&self, claims: &[(String, String)]) -> Result<usize, StateError> {
        self.store.release_timers(claims).await
    }
    async fn confirm_dedup(&self, marks: &[DedupConfirm]) -> Result<usize, StateError> {
        self.store.confirm_dedup(marks).await
    }
    async fn release_dedup(&self, key: &str, token: &str) -> Result<bool, StateError> {
        self.store.release_dedup(key, token).await
    }
    async fn dedup_exists(&self, key: &str) -> Result<bool, StateError> {
        self.store.dedup_exists(key).await
    }
    async fn window_count(&self, key: &str, window: Duration) -> Result<u64, StateError> {
        self.store.window_count(key, window).await
    }
    async fn quota_usage(&self, key: &str, window: Duration) -> Result<u64, StateError> {
        self.store.quota_usage(key, window).await
    }
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        self.store.get(key).await
    }
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Versioned>>, StateError> {
        self.store.get_many(keys).await
    }

    async fn reserve_slot(
        &self,
        key: &str,
        interval: Duration,
        max_wait: Duration,
    ) -> Result<Option<Duration>, StateError> {
        self.store.reserve_slot(key, interval, max_wait).await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<Option<u64>, StateError> {
        self.store.compare_and_swap(key, expected, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool, StateError> {
        self.store.delete(key).await
    }
    async fn try_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StateError> {
        self.store.try_lock(key, owner, ttl).await
    }
    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, StateError> {
        self.store.unlock(key, owner).await
    }
    async fn schedule_timer(
        &self,
        id: &str,
        due_unix_ms: u64,
        payload: Vec<u8>,
    ) -> Result<(), StateError> {
        self.store.schedule_timer(id, due_unix_ms, payload).await
    }
    async fn claim_due_timers(
        &self,
        now_unix_ms: u64,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedTimer>, StateError> {
        self.store.claim_due_timers(now_unix_ms, max, lease).await
    }
    async fn complete_timer(&self, id: &str, claim: &str) -> Result<bool, StateError> {
        self.store.complete_timer(id, claim).await
    }
    async fn get_timer(&self, id: &str) -> Result<Option<(u64, Vec<u8>)>, StateError> {
        self.store.get_timer(id).await
    }
    async fn delete_timer(&self, id: &str) -> Result<bool, StateError> {
        self.store.delete_timer(id).await
    }
    async fn list_timers(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<acteon_gateway::state::ListedTimer>, StateError> {
        self.store.list_timers(prefix, after, limit).await
    }
    async fn advance_timer(
        &self,
        id: &str,
        claim: &str,
        due_unix_ms: u64,
        payload: Vec<u8>,
        hold: Option<Duration>,
    ) -> Result<bool, StateError> {
        self.store
            .advance_timer(id, claim, due_unix_ms, payload, hold)
            .await
    }
}

acteon_gateway::conformance_tests!(conformance, async {
    let slot = slot().await;
    Arc::new(Slotted {
        store: fresh_store().await,
        _slot: slot,
    })
});

/// Rows of one state table of `store`'s schema.
async fn rows(store: &PostgresStore, table: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(&url()).await.unwrap();
    let sql = format!("SELECT count(*) FROM \"{}\".{table}", store.schema());
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

const TABLES: [&str; 6] = [
    "acteon_dedup",
    "acteon_throttle",
    "acteon_throttle_head",
    "acteon_quota",
    "acteon_kv",
    "acteon_locks",
];

/// Expired rows of every kind are deleted by a sweep (in batches); live ones, values without
/// TTL and timers stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_deletes_expired_rows_in_batches() {
    let _slot = slot().await;
    let store = fresh_store().await;
    // Long enough that a loaded machine (CI building beside the tests) writes these and
    // sweeps once before any of them expires.
    let short = Duration::from_secs(3);
    let long = Duration::from_secs(3_600);
    for (n, ttl) in [("short", short), ("long", long)] {
        let gates = [
            Gate::Dedup {
                key: format!("d-{n}"),
                ttl,
                token: "tok".into(),
            },
            Gate::Throttle {
                key: format!("t-{n}"),
                limit: 10,
                window: ttl,
            },
            Gate::Quota {
                key: format!("q-{n}"),
                limit: 10,
                window: ttl,
            },
        ];
        assert_eq!(store.apply_gates(&gates).await.unwrap(), GateResult::Passed);
        store
            .compare_and_swap(&format!("v-{n}"), None, b"x".to_vec(), Some(ttl))
            .await
            .unwrap()
            .unwrap();
        assert!(store.try_lock(&format!("l-{n}"), "a", ttl).await.unwrap());
    }
    store
        .compare_and_swap("v-forever", None, b"x".to_vec(), None)
        .await
        .unwrap()
        .unwrap();
    store.schedule_timer("timer", 0, Vec::new()).await.unwrap();
    store.sweep_now().await.unwrap();
    assert_eq!(rows(&store, "acteon_dedup").await, 2, "nothing expired yet");
    assert_eq!(rows(&store, "acteon_kv").await, 3, "nothing expired yet");

    // Far more expired passes than one batch holds.
    let mut admin = sqlx::PgConnection::connect(&url()).await.unwrap();
    let sql = format!(
        "INSERT INTO \"{}\".acteon_throttle (key, slot, at_ms, expires_at) \
         SELECT 'bulk-' || (i % 7), i, i, i + 1 FROM generate_series(1, 2500) i",
        store.schema()
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut admin)
        .await
        .unwrap();

    tokio::time::sleep(short + Duration::from_millis(100)).await;
    let statements = store.sweep_now().await.unwrap();
    assert_eq!(
        statements, 3,
        "2 501 expired passes take three batches of 1 000"
    );
    for table in TABLES {
        assert_eq!(
            rows(&store, table).await,
            if table == "acteon_kv" { 2 } else { 1 },
            "{table}: only the long-lived entries (and the value without TTL) stay"
        );
    }
    assert_eq!(
        rows(&store, "acteon_timers").await,
        1,
        "timers are not swept"
    );
    assert!(store.dedup_exists("d-long").await.unwrap());
    assert_eq!(store.window_count("t-long", long).await.unwrap(), 1);
    assert_eq!(store.quota_usage("q-long", long).await.unwrap(), 1);
    drop_schema(&store).await;
}

/// Expired parked rows are swept: an idle group past its `idle_ttl`, an event past its
/// `ttl` and its set memberships. An armed group stays whatever its expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_deletes_expired_parked_rows() {
    let _slot = slot().await;
    let store = fresh_store().await;
    let (short, long) = (Duration::from_millis(300), Duration::from_secs(3_600));
    let append = |key: &str| {
        Deferral::GroupAppend(GroupAppend {
            key: key.into(),
            group_id: key.into(),
            meta: Vec::new(),
            event: b"e".to_vec(),
            max_events: 10,
            wait: Duration::from_secs(3_600),
            interval: Duration::from_secs(3_600),
            idle_ttl: short,
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
    let deferrals = [
        append("idle"),
        append("armed"),
        event("short", short),
        event("long", long),
    ];
    let (result, _) = store
        .run_gates_and_defer(&[], GateMode::APPLY, &deferrals)
        .await
        .unwrap();
    assert_eq!(result, GateResult::Passed);
    let later = acteon_gateway::state::unix_ms() + 7_200_000;
    let claimed = store
        .claim_due_timers(later, 10, Duration::from_secs(60))
        .await
        .unwrap();
    let idle = claimed.iter().find(|t| t.id == "idle#t").expect("claimed");
    assert!(store.group_flush_begin("idle").await.unwrap().is_some());
    let ended = store.group_flush_end("idle", &idle.id, &idle.claim, short, None);
    assert!(ended.await.unwrap());
    assert_eq!(rows(&store, "acteon_groups").await, 2);
    assert_eq!(rows(&store, "acteon_set_members").await, 2);

    tokio::time::sleep(short + Duration::from_millis(100)).await;
    store.sweep_now().await.unwrap();
    assert_eq!(
        rows(&store, "acteon_groups").await,
        1,
        "the armed group stays"
    );
    assert!(store.get_group("armed").await.unwrap().is_some());
    assert_eq!(
        rows(&store, "acteon_events").await,
        1,
        "the long-lived event stays"
    );
    assert_eq!(
        rows(&store, "acteon_set_members").await,
        1,
        "its membership stays"
    );
    assert_eq!(
        rows(&store, "acteon_timers").await,
        1,
        "the armed group's timer"
    );
    drop_schema(&store).await;
}

/// The claim poll reads the due index and stops: with 100,000 timers pending (none due) its
/// plan is an index scan of `acteon_timers_due`, never a scan of the table, so an idle poll
/// of every replica costs an index probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_poll_reads_the_due_index() {
    let _slot = slot().await;
    let store = fresh_store().await;
    let now = acteon_gateway::state::unix_ms();
    let mut admin = sqlx::PgConnection::connect(&url()).await.unwrap();
    let schema = store.schema();
    let setup = format!(
        "SET search_path = \"{schema}\"; \
         INSERT INTO acteon_timers (id, due_ms, payload) \
         SELECT 't' || i, {now} + 60000 + i, '' FROM generate_series(1, 100000) i; \
         ANALYZE acteon_timers; \
         PREPARE claim(bigint, bigint, bigint) AS {CLAIM_DUE_TIMERS_SQL};"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(setup))
        .execute(&mut admin)
        .await
        .unwrap();
    let explain = format!("EXPLAIN EXECUTE claim({now}, 64, 30000)");
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
        .fetch_all(&mut admin)
        .await
        .unwrap();
    let plan = plan.join("\n");
    assert!(
        plan.contains("acteon_timers_due") && !plan.contains("Seq Scan on acteon_timers"),
        "the claim must read the due index:\n{plan}"
    );
    assert_eq!(store.pending_timers().await.unwrap(), 100_000);
    let started = std::time::Instant::now();
    for _ in 0..200 {
        let claimed = store.claim_due_timers(now, 64, Duration::from_secs(30));
        assert!(claimed.await.unwrap().is_empty());
    }
    eprintln!(
        "200 idle polls over 100,000 timers: {:?}",
        started.elapsed()
    );
    drop_schema(&store).await;
}

/// The background sweeper does the same on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_sweeper_deletes_expired_rows() {
    let _slot = slot().await;
    let store = Arc::new(fresh_store().await);
    let gate = [Gate::Dedup {
        key: "d".into(),
        ttl: Duration::from_millis(100),
        token: "tok".into(),
    }];
    assert_eq!(store.apply_gates(&gate).await.unwrap(), GateResult::Passed);
    store.start_sweeper(Duration::from_millis(50));
    let started = std::time::Instant::now();
    while rows(&store, "acteon_dedup").await != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the sweeper did not delete the expired mark"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop_schema(&store).await;
}

/// Migrating twice, and from several stores at once, is harmless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_and_concurrent_safe() {
    let _slot = slot().await;
    let store = fresh_store().await;
    store.migrate().await.unwrap();
    let mut others = Vec::new();
    for _ in 0..4 {
        others.push(
            PostgresStore::connect(&url(), store.schema())
                .await
                .unwrap(),
        );
    }
    let results = futures::future::join_all(others.iter().map(|s| s.migrate())).await;
    for r in results {
        r.unwrap();
    }
    // A migration from a newer gateway (rolling upgrade) does not stop this one.
    let mut admin = sqlx::PgConnection::connect(&url()).await.unwrap();
    let sql = format!(
        "INSERT INTO \"{}\".acteon_migrations \
         (version, description, success, checksum, execution_time) \
         VALUES (99999999, 'from the future', true, '\\x00', 0)",
        store.schema()
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut admin)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    // A schema created concurrently by several replicas.
    let schema = format!("{}_x", store.schema());
    let mut fresh = Vec::new();
    for _ in 0..3 {
        fresh.push(PostgresStore::connect(&url(), &schema).await.unwrap());
    }
    let results = futures::future::join_all(fresh.iter().map(|s| s.migrate())).await;
    for r in results {
        r.unwrap();
    }
    assert_eq!(
        fresh[0]
            .apply_gates(&[Gate::Dedup {
                key: "k".into(),
                ttl: Duration::from_secs(60),
                token: "t".into()
            }])
            .await
            .unwrap(),
        GateResult::Passed
    );
    drop_schema(&fresh[0]).await;
    drop_schema(&store).await;
}

/// Invalid schema names are refused before anything reaches the server.
#[tokio::test]
async fn schema_names_are_checked() {
    for bad in ["", "a\"b", "a b", "x;drop", &"s".repeat(64)] {
        assert!(
            PostgresStore::connect(&url(), bad).await.is_err(),
            "{bad:?} must be refused"
        );
    }
}

/// An unreachable server gives an error within the operation deadline, never a hang.
#[tokio::test]
async fn unreachable_server_fails_fast() {
    let started = std::time::Instant::now();
    // A port nothing listens on (connection refused) and a blackholed address (timeout).
    for url in [
        "postgres://root@127.0.0.1:1/test",
        "postgres://root:secret-pw@10.255.255.1:5432/test",
    ] {
        let t = std::time::Instant::now();
        let err = match PostgresStore::connect(url, "s").await {
            Ok(_) => panic!("connecting to {url} must fail"),
            Err(e) => e.to_string(),
        };
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{url}: took {:?}",
            t.elapsed()
        );
        assert!(!err.contains("secret-pw"), "credentials leaked: {err}");
    }
    assert!(started.elapsed() < Duration::from_secs(6));
}

/// Connections killed on the server side are replaced: after one failed operation at most,
/// the store works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_after_connections_are_killed() {
    let _slot = slot().await;
    let url = url();
    let app = format!("acteon-test-{}", uuid::Uuid::new_v4().simple());
    let options = PostgresOptions {
        max_connections: 4,
        application_name: app.clone(),
        ..PostgresOptions::default()
    };
    let schema = test_schema_name();
    let store = PostgresStore::connect_with(&url, &schema, options)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    // Several connections in the pool.
    let checks: Vec<_> = (0..8)
        .map(|i| store.dedup_exists(if i % 2 == 0 { "a" } else { "b" }))
        .collect();
    for r in futures::future::join_all(checks).await {
        assert!(!r.unwrap());
    }
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    let kill = "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                WHERE application_name = $1) k";
    let killed: i64 = sqlx::query_scalar(kill)
        .bind(&app)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(killed >= 1, "no connection of the store was found");
    let mut failures = 0;
    for _ in 0..5 {
        if store.dedup_exists("k").await.is_err() {
            failures += 1;
        }
    }
    assert!(failures <= 1, "{failures} failures after the kill");
    store.ping().await.unwrap();
    assert_eq!(
        store
            .apply_gates(&[Gate::Dedup {
                key: "k".into(),
                ttl: Duration::from_secs(60),
                token: "t".into()
            }])
            .await
            .unwrap(),
        GateResult::Passed
    );
    drop_schema(&store).await;
}

/// The same random sequence of gate lists (and releases) on Postgres and on the memory
/// store gives the same answers: pass or stop, the stopping gate, `used`, and `retry_after`
/// / `resets_in` up to the time between the two calls. Limits change between calls (rules
/// are edited), which re-lays the throttle rings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_answers_as_the_memory_store() {
    let _slot = slot().await;
    use acteon_gateway::state::{GateStop, MemoryStore};
    const DAY: Duration = Duration::from_secs(86_400);
    // Quota windows of a day: stay clear of the boundary (UTC midnight).
    let into_day = acteon_gateway::state::unix_ms() % 86_400_000;
    if into_day > 86_400_000 - 30_000 {
        tokio::time::sleep(Duration::from_millis(86_400_000 - into_day + 1_000)).await;
    }
    let pg = fresh_store().await;
    let mem = MemoryStore::new();
    let mut rng: u64 = 0x5eed_1234_abcd_0001;
    let mut next = move |n: u64| {
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (rng >> 33) % n
    };
    let close = |a: Duration, b: Duration| a.abs_diff(b) <= Duration::from_millis(200);
    for step in 0..600 {
        if next(10) == 0 {
            let key = format!("d{}", next(4));
            let token = format!("tok{}", next(3));
            assert_eq!(
                pg.release_dedup(&key, &token).await.unwrap(),
                mem.release_dedup(&key, &token).await.unwrap(),
                "step {step}: release_dedup({key}, {token})"
            );
            continue;
        }
        let gates: Vec<Gate> = (0..1 + next(3))
            .map(|_| match next(3) {
                0 => Gate::Dedup {
                    key: format!("d{}", next(4)),
                    ttl: DAY,
                    token: format!("tok{}", next(3)),
                },
                1 => Gate::Throttle {
                    key: format!("t{}", next(3)),
                    limit: [1, 2, 3, 5, 8][next(5) as usize],
                    window: DAY,
                },
                _ => Gate::Quota {
                    key: format!("q{}", next(2)),
                    limit: 10 + next(30),
                    window: DAY,
                },
            })
            .collect();
        let (a, b) = (
            pg.apply_gates(&gates).await.unwrap(),
            mem.apply_gates(&gates).await.unwrap(),
        );
        let same = match (&a, &b) {
            (GateResult::Passed, GateResult::Passed) => true,
            (
                GateResult::Stopped {
                    index: i,
                    reason: r,
                },
                GateResult::Stopped {
                    index: j,
                    reason: q,
                },
            ) if i == j => match (r, q) {
                (GateStop::Duplicate, GateStop::Duplicate) => true,
                (
                    GateStop::Throttled { retry_after: x },
                    GateStop::Throttled { retry_after: y },
                ) => close(*x, *y),
                (
                    GateStop::QuotaExceeded {
                        used: u,
                        resets_in: x,
                    },
                    GateStop::QuotaExceeded {
                        used: v,
                        resets_in: y,
                    },
                ) => u == v && close(*x, *y),
                _ => false,
            },
            _ => false,
        };
        assert!(
            same,
            "step {step}: {gates:?}\npostgres: {a:?}\nmemory:   {b:?}"
        );
        for key in ["t0", "t1", "t2"] {
            assert_eq!(
                pg.window_count(key, DAY).await.unwrap(),
                mem.window_count(key, DAY).await.unwrap(),
                "step {step}: window_count({key})"
            );
        }
    }
    drop_schema(&pg).await;
}

/// A store whose gate calls run one batch at a time, so that concurrent calls queue up
/// behind it and are sent together.
async fn batching_store() -> Slotted {
    let permit = slot().await;
    let url = url();
    let options = PostgresOptions {
        max_connections: CONNECTIONS,
        gate_batches: GateBatches {
            in_flight: 1,
            max_calls: 64,
        },
        ..PostgresOptions::default()
    };
    let store = PostgresStore::connect_with(&url, &test_schema_name(), options)
        .await
        .expect("postgres server");
    store.migrate().await.expect("migrate");
    Slotted {
        store,
        _slot: permit,
    }
}

fn dedup(key: &str) -> Gate {
    Gate::Dedup {
        key: key.to_owned(),
        ttl: Duration::from_secs(60),
        token: uuid::Uuid::new_v4().to_string(),
    }
}

/// Group commit: 300 dedup calls over 50 keys and 100 throttled calls (limit 20), all at
/// once, share transactions and still answer exactly as one call at a time would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gate_calls_share_transactions_and_stay_exact() {
    let s = batching_store().await;
    let store = &s.store;
    let throttle = Gate::Throttle {
        key: "t".to_owned(),
        limit: 20,
        window: Duration::from_secs(60),
    };
    let calls = (0..400).map(|i| {
        let gate = if i % 4 == 3 {
            throttle.clone()
        } else {
            dedup(&format!("k{}", i % 50))
        };
        async move { (i % 4 == 3, store.apply_gates(&[gate]).await) }
    });
    let (mut dedup_passed, mut throttle_passed) = (0, 0);
    for (throttled, answer) in futures::future::join_all(calls).await {
        match answer.expect("no call fails") {
            GateResult::Passed if throttled => throttle_passed += 1,
            GateResult::Passed => dedup_passed += 1,
            GateResult::Stopped { .. } => {}
        }
    }
    assert_eq!(dedup_passed, 50, "one pass per dedup key");
    assert_eq!(throttle_passed, 20, "the throttle's limit");
    let counts = store
        .gate_batch_counts()
        .expect("a Postgres store counts its batches");
    assert!(
        counts.batches > 0 && counts.calls_together > counts.batches,
        "concurrent calls were sent together: {counts:?}"
    );
    assert!(
        counts.calls_together >= 200,
        "most of 400 calls queued behind one batch at a time went together: {counts:?}"
    );
}

/// A call the server refuses (a NUL byte in a key) fails alone: the other calls of its
/// batch are retried one by one and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_call_does_not_fail_its_batch() {
    let s = batching_store().await;
    let store = &s.store;
    let calls = (0..100).map(|i| {
        let key = if i == 50 {
            "bad\0key".to_owned()
        } else {
            format!("ok{i}")
        };
        async move { (i, store.apply_gates(&[dedup(&key)]).await) }
    });
    for (i, answer) in futures::future::join_all(calls).await {
        if i == 50 {
            assert!(answer.is_err(), "the NUL key is refused: {answer:?}");
        } else {
            assert_eq!(answer.expect("a good call is answered"), GateResult::Passed);
        }
    }
    let counts = store
        .gate_batch_counts()
        .expect("a Postgres store counts its batches");
    assert!(
        counts.retried_alone >= 2,
        "the refused call's batch was retried alone: {counts:?}"
    );
}

/// Batches of lone dedup gates take the set-based path: with repeats inside one batch,
/// live marks, expired marks and the in-flight lease, each key passes exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_dedup_batches_answer_like_one_call_at_a_time() {
    let s = batching_store().await;
    let store = &s.store;
    // k0..k9 hold live marks, e0..e9 expired ones.
    for i in 0..10 {
        assert_eq!(
            store.apply_gates(&[dedup(&format!("k{i}"))]).await.unwrap(),
            GateResult::Passed
        );
        let short = Gate::Dedup {
            key: format!("e{i}"),
            ttl: Duration::from_millis(1),
            token: "t".to_owned(),
        };
        assert_eq!(
            store.apply_gates(&[short]).await.unwrap(),
            GateResult::Passed
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let lease = GateMode::Apply {
        dedup_lease: Some(Duration::from_secs(30)),
    };
    let keys: Vec<String> = (0..600)
        .map(|i| match i % 3 {
            0 => format!("k{}", i % 10),
            1 => format!("e{}", i % 10),
            _ => format!("n{}", i % 40),
        })
        .collect();
    let calls = keys.iter().map(|key| async move {
        let answer = store.run_gates(&[dedup(key)], lease).await;
        (key, answer.expect("no call fails"))
    });
    let mut passed: std::collections::HashMap<&String, u32> = Default::default();
    for (key, answer) in futures::future::join_all(calls).await {
        if answer == GateResult::Passed {
            *passed.entry(key).or_default() += 1;
        }
    }
    assert!(
        passed.keys().all(|k| !k.starts_with('k')),
        "live marks stop: {passed:?}"
    );
    assert_eq!(
        passed.len(),
        50,
        "each expired and new key passes: {passed:?}"
    );
    assert!(passed.values().all(|&n| n == 1), "exactly once: {passed:?}");
    let counts = store
        .gate_batch_counts()
        .expect("a Postgres store counts its batches");
    assert!(counts.calls_together >= 300, "{counts:?}");
}
