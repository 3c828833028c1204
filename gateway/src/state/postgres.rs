//! Postgres state: every replica of a gateway shares one schema and behaves like one process.
//!
//! - **One clock.** Every time decision (TTLs, windows, leases) reads the database clock
//!   (`clock_timestamp()` in ms, via `acteon_now_ms()`), so replicas with skewed clocks agree.
//!   The one exception is timer due-ness: `schedule_timer` and `claim_due_timers` take the
//!   caller's times, as the trait says; leases run on the database clock.
//! - **One round trip per dispatch.** [`StateStore::apply_gates`] is one call of the PL/pgSQL
//!   function `acteon_apply_gates` (see `migrations/postgres/0001_state.sql`), which locks the
//!   gate keys with transaction-scoped advisory locks in sorted order, checks every gate,
//!   reports the first that stops and applies them all only if all pass. Every other
//!   operation is one statement too. Under load the gate calls of concurrent dispatches
//!   share one transaction (group commit, see [`batch`]).
//! - **One connection per operation, one round trip per statement.** A small pool of our own
//!   (not `sqlx::Pool`, whose check-in always pings the server, an extra round trip per
//!   operation): an operation takes an idle connection (LIFO), runs its statement (prepared
//!   once per connection, then cached by sqlx) and gives it back. A connection whose operation
//!   was cancelled or failed with anything but a database error is closed, and every idle
//!   connection is then pinged before its next use, so the pool recovers by itself when the
//!   server comes back.
//! - **Bounded time.** Each operation (waiting for a connection, connecting, the statement)
//!   must finish within [`PostgresOptions::op_timeout`] (2 s), else [`StateError::Timeout`];
//!   the server aborts statements a little earlier (`statement_timeout`), so a slow statement
//!   usually ends as a clean error (nothing applied) rather than a client-side timeout.
//! - **Isolation by schema.** Every connection starts with `search_path` set to the schema of
//!   the installation (a startup parameter, no extra round trip), so installations and tests
//!   share a database without sharing state.
//! - **Parked actions.** Groups, state-machine events and their active sets are tables of
//!   `migrations/postgres/0003_parked_actions.sql`, keyed by text compared byte by byte
//!   (`COLLATE "C"`), so a listing by key prefix is an index range whatever the database's
//!   collation, never a `LIKE` pattern. [`StateStore::run_gates_and_defer`] is one call of
//!   `acteon_run_gates_and_defer`: the gates as above, then, only if all passed, the
//!   deferrals (passed as one JSON array, bytes hex-encoded) in the same transaction.
//! - **Bounded growth.** [`PostgresStore::start_sweeper`] deletes expired rows in batches.
//!
//! [`PostgresStore::connect`] does not touch the schema; [`PostgresStore::migrate`] creates it
//! and applies the embedded migrations, and `serve` calls it at start (it is idempotent and
//! safe to run from several replicas at once).

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use acteon_channel::backend::{Redactor, check_schema, db_message};
use async_trait::async_trait;
use parking_lot::Mutex;
use smallvec::SmallVec;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgDatabaseError, PgSeverity};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::Instrument;

mod batch;

use batch::GateBatcher;
pub use batch::GateBatches;

use super::{
    ClaimedTimer, DedupConfirm, DeferResult, Deferral, EventInfo, Gate, GateBatchCounts, GateMode,
    GateResult, GateStop, GroupAppend, GroupBatch, GroupInfo, ListedTimer, StateAnswers,
    StateError, StateRead, StateStore, TimerWrite, Transition, TransitionResult, Versioned,
};

/// Table that records the applied migrations (in the installation's schema).
const MIGRATIONS_TABLE: &str = "acteon_migrations";
/// Longest time [`PostgresStore::migrate`] may take, waiting for another replica included.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(60);
/// Rows deleted per table and statement by the sweeper.
const SWEEP_BATCH: i32 = 1_000;
/// Sweep statements per sweeper tick at most (so one tick deletes at most 50 000 rows per table).
const SWEEP_MAX_BATCHES: u32 = 50;
/// Durations are clamped to this many ms so that `now + ttl` never overflows a bigint.
const MAX_MS: u64 = (i64::MAX / 4) as u64;

/// Tuning of a [`PostgresStore`]. The defaults suit a gateway replica.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// Connections at most.
    pub max_connections: u32,
    /// Deadline of one operation: waiting for a connection, connecting and the statement.
    pub op_timeout: Duration,
    /// An idle connection unused for this long is pinged before use.
    pub ping_idle_after: Duration,
    /// A connection older than this is closed when it comes back (so connections move to a
    /// failed-over server or a changed DNS answer in time).
    pub max_lifetime: Duration,
    /// `application_name` of the connections (shows in `pg_stat_activity`).
    pub application_name: String,
    /// Whether a commit waits for its WAL to be flushed (`synchronous_commit`). `true` (the
    /// default) keeps every applied gate through a crash of the server. `false` returns
    /// before the flush: a crash of the server (not of a gateway) may then lose the gates
    /// applied in its last few hundred ms, in exchange for shorter calls (calls on one hot
    /// key run one after the other, each holding the key's lock until its commit).
    pub synchronous_commit: bool,
    /// Group commit of concurrent gate calls (see [`GateBatches`]).
    pub gate_batches: GateBatches,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            max_connections: 16,
            op_timeout: Duration::from_secs(2),
            ping_idle_after: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(30 * 60),
            application_name: "acteon-gateway".to_owned(),
            synchronous_commit: true,
            gate_batches: GateBatches::default(),
        }
    }
}

/// The Postgres [`StateStore`].
pub struct PostgresStore {
    db: Arc<Db>,
    schema: String,
    /// Connection options of [`PostgresStore::migrate`] (no statement timeout).
    migrate_options: PgConnectOptions,
    /// Combines concurrent gate calls into one transaction.
    gates: GateBatcher,
}

/// The pool and how operations on it are bounded and reported; shared with the
/// [`GateBatcher`]'s task.
struct Db {
    pool: Pool,
    op_timeout: Duration,
    /// Keeps the URL's password out of errors.
    redactor: Redactor,
}

struct IdleConn {
    conn: PgConnection,
    created: Instant,
    idle_since: Instant,
    /// Value of [`Pool::generation`] when the connection was last known good.
    generation: u64,
}

/// A minimal connection pool; see the module documentation for why not `sqlx::Pool`.
struct Pool {
    options: PgConnectOptions,
    idle: Mutex<Vec<IdleConn>>,
    permits: Semaphore,
    /// Bumped when a connection breaks: idle connections older than that are pinged first.
    generation: AtomicU64,
    ping_idle_after: Duration,
    max_lifetime: Duration,
}

/// A connection taken from the pool. Dropped without [`Lease::finish`] (the operation was
/// cancelled mid-statement), the connection is closed rather than reused.
struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<(PgConnection, Instant)>,
    _permit: SemaphorePermit<'a>,
}

impl Pool {
    async fn lease(&self) -> Result<Lease<'_>, sqlx::Error> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        loop {
            let idle = self.idle.lock().pop();
            let Some(mut idle) = idle else {
                let conn = self.options.connect().await?;
                return Ok(Lease {
                    pool: self,
                    conn: Some((conn, Instant::now())),
                    _permit: permit,
                });
            };
            let suspect = idle.generation != self.generation.load(Ordering::Acquire)
                || idle.idle_since.elapsed() >= self.ping_idle_after;
            if suspect && idle.conn.ping().await.is_err() {
                // Broken: drop it (closing the socket) and try the next one.
                continue;
            }
            return Ok(Lease {
                pool: self,
                conn: Some((idle.conn, idle.created)),
                _permit: permit,
            });
        }
    }
}

impl Lease<'_> {
    fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn.as_mut().expect("a lease holds its connection").0
    }

    /// Ends the operation: the connection goes back to the pool unless the error says it
    /// may be broken.
    fn finish<T>(mut self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        let (conn, created) = self.conn.take().expect("a lease holds its connection");
        let healthy = match &result {
            Ok(_) => true,
            // The server answered with an error of the statement: the connection is in a
            // known state. A FATAL error (the backend was terminated, the server shuts down)
            // ends the session.
            Err(sqlx::Error::Database(db)) => db
                .try_downcast_ref::<PgDatabaseError>()
                .is_some_and(|e| !matches!(e.severity(), PgSeverity::Fatal | PgSeverity::Panic)),
            Err(sqlx::Error::RowNotFound | sqlx::Error::Decode(_)) => true,
            Err(_) => false,
        };
        if !healthy {
            // Whatever broke this connection (a restart, a network cut) likely broke the
            // others too: check each before its next use.
            self.pool.generation.fetch_add(1, Ordering::AcqRel);
        } else if created.elapsed() < self.pool.max_lifetime {
            self.pool.idle.lock().push(IdleConn {
                conn,
                created,
                idle_since: Instant::now(),
                generation: self.pool.generation.load(Ordering::Acquire),
            });
        }
        result
    }
}

/// Clamps a duration to whole milliseconds that fit a bigint with room for `now + d`.
fn ms(d: Duration) -> i64 {
    d.as_millis().min(u128::from(MAX_MS)) as i64
}

fn clamp(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

fn duration_ms(v: Option<i64>) -> Duration {
    Duration::from_millis(v.unwrap_or(0).max(0) as u64)
}

impl PostgresStore {
    /// Connects to the server at `url` (e.g. `postgres://user@host:5432/db`), with state in
    /// `schema`, using the default [`PostgresOptions`]. Opens one connection to check the
    /// server; does not create or migrate the schema (see [`PostgresStore::migrate`]).
    pub async fn connect(url: &str, schema: &str) -> Result<PostgresStore, StateError> {
        Self::connect_with(url, schema, PostgresOptions::default()).await
    }

    /// [`PostgresStore::connect`] with explicit options.
    pub async fn connect_with(
        url: &str,
        schema: &str,
        options: PostgresOptions,
    ) -> Result<PostgresStore, StateError> {
        check_schema(schema).map_err(StateError::Unavailable)?;
        let redactor = Redactor::new(url);
        let redact = |e: sqlx::Error| unavailable_msg(&redactor, "connect", &e);
        let base = PgConnectOptions::from_str(url)
            .map_err(redact)?
            .application_name(&options.application_name)
            // Operations have spans of their own; no per-statement events.
            .disable_statement_logging();
        let search_path = format!("\"{schema}\"");
        // The server gives up a little before the client does, so that a slow statement ends
        // as an error the client sees (nothing applied) rather than an ambiguous timeout.
        let statement_timeout = options
            .op_timeout
            .saturating_sub(Duration::from_millis(250))
            .max(Duration::from_millis(100))
            .as_millis();
        let pool_options = base.clone().options([
            ("search_path", search_path.clone()),
            ("statement_timeout", statement_timeout.to_string()),
            (
                "synchronous_commit",
                if options.synchronous_commit {
                    "on"
                } else {
                    "off"
                }
                .to_owned(),
            ),
        ]);
        let migrate_options = base.options([("search_path", search_path)]);
        let pool = Pool {
            options: pool_options,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(options.max_connections.max(1) as usize),
            generation: AtomicU64::new(0),
            ping_idle_after: options.ping_idle_after,
            max_lifetime: options.max_lifetime,
        };
        let db = Arc::new(Db {
            pool,
            op_timeout: options.op_timeout,
            redactor,
        });
        let store = PostgresStore {
            gates: GateBatcher::start(db.clone(), options.gate_batches),
            db,
            schema: schema.to_owned(),
            migrate_options,
        };
        store
            .run("connect", async |conn: &mut PgConnection| conn.ping().await)
            .await?;
        Ok(store)
    }

    /// The schema holding this installation's state.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Creates the schema if missing and applies the embedded migrations
    /// (`gateway/migrations/postgres/`). Idempotent; concurrent calls (replicas starting
    /// together) are serialized by an advisory lock per schema. `serve` calls it at start.
    pub async fn migrate(&self) -> Result<(), StateError> {
        let span = tracing::debug_span!("state.postgres", op = "migrate", schema = %self.schema);
        let work = async {
            // A connection of its own, closed at the end, so the session lock never leaks
            // into the pool.
            let mut conn = self.migrate_options.connect().await?;
            sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
                .bind(format!("acteon-migrate:{}", self.schema))
                .execute(&mut conn)
                .await?;
            let created = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS \"{}\"",
                self.schema
            )))
            .execute(&mut conn)
            .await;
            // `IF NOT EXISTS` still fails with a unique violation when another session (the
            // operator's config channel, under its own lock) creates the schema at the same
            // moment; the schema then exists, which is all we need.
            match created {
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {}
                other => {
                    other?;
                }
            }
            let mut migrator = sqlx::migrate!("./migrations/postgres");
            migrator.set_locking(false);
            // During a rolling upgrade the older replicas start against a schema that newer
            // ones already migrated: migrations must therefore stay backward compatible
            // (additive), and a migration this build does not know is not an error.
            migrator.set_ignore_missing(true);
            migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
            migrator
                .run(&mut conn)
                .await
                .map_err(|e| sqlx::Error::Migrate(Box::new(e)))?;
            conn.close().await
        };
        match tokio::time::timeout(MIGRATE_TIMEOUT, work)
            .instrument(span)
            .await
        {
            Ok(result) => result.map_err(|e| self.unavailable("migrate", &e)),
            Err(_) => Err(StateError::Timeout(MIGRATE_TIMEOUT)),
        }
    }

    /// Deletes expired rows every `every`, in batches, for as long as the store lives.
    /// Several replicas may sweep the same schema; they skip each other's rows.
    pub fn start_sweeper(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { break };
                if let Err(e) = store.sweep_now().await {
                    tracing::warn!(error = %e, "postgres state sweep failed");
                }
            }
        });
    }

    /// Deletes expired rows now, in batches of up to 1 000 per table, 50 batches at most;
    /// returns the number of statements run.
    pub async fn sweep_now(&self) -> Result<u32, StateError> {
        for round in 1..=SWEEP_MAX_BATCHES {
            let most: i32 = self
                .run("sweep", async |conn: &mut PgConnection| {
                    sqlx::query_scalar("SELECT greatest(acteon_sweep($1), acteon_sweep_parked($1))")
                        .bind(SWEEP_BATCH)
                        .fetch_one(conn)
                        .await
                })
                .await?;
            if most < SWEEP_BATCH {
                return Ok(round);
            }
        }
        Ok(SWEEP_MAX_BATCHES)
    }

    fn unavailable(&self, op: &str, e: &sqlx::Error) -> StateError {
        self.db.unavailable(op, e)
    }

    /// Runs one operation on a pooled connection within the operation deadline.
    async fn run<T>(
        &self,
        op: &'static str,
        f: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, StateError> {
        self.db.run(op, f).await
    }
}

impl Db {
    fn unavailable(&self, op: &str, e: &sqlx::Error) -> StateError {
        unavailable_msg(&self.redactor, op, e)
    }

    /// Runs one operation on a pooled connection within the operation deadline.
    async fn run<T>(
        &self,
        op: &'static str,
        f: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, StateError> {
        let span = tracing::debug_span!("state.postgres", op);
        let work = async {
            let mut lease = self.pool.lease().await?;
            let result = f(lease.conn()).await;
            lease.finish(result)
        };
        match tokio::time::timeout(self.op_timeout, work)
            .instrument(span)
            .await
        {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                tracing::debug!(op, error = %e, "postgres state operation failed");
                Err(self.unavailable(op, &e))
            }
            Err(_) => {
                // The lease was dropped mid-operation: its connection is closed, not reused.
                self.pool.generation.fetch_add(1, Ordering::AcqRel);
                tracing::debug!(op, "postgres state operation timed out");
                Err(StateError::Timeout(self.op_timeout))
            }
        }
    }
}

fn unavailable_msg(redactor: &Redactor, op: &str, e: &sqlx::Error) -> StateError {
    StateError::Unavailable(redactor.clean(format!("postgres {op}: {}", db_message(e))))
}

/// Claims due timers: `$1` now (the caller's clock), `$2` max, `$3` lease ms. SKIP LOCKED:
/// concurrent claimers take disjoint timers; a timer claimed and committed meanwhile fails
/// the re-check of the WHERE clause on its new version. The due index
/// (`acteon_timers_due`) is read in order and the scan stops after `$2` claimable rows, so
/// an idle poll costs an index probe however many timers are pending. Public for the
/// plan test only.
#[doc(hidden)]
pub const CLAIM_DUE_TIMERS_SQL: &str = "WITH c AS (SELECT acteon_now_ms() AS now), \
     due AS ( \
       SELECT t.id FROM acteon_timers t, c \
       WHERE t.due_ms <= $1 AND (t.lease_until IS NULL OR t.lease_until <= c.now) \
       ORDER BY t.due_ms, t.id LIMIT $2 \
       FOR UPDATE OF t SKIP LOCKED), \
     claimed AS ( \
       UPDATE acteon_timers t \
       SET claim = nextval('acteon_timer_claim')::text, \
           lease_until = (SELECT now FROM c) + $3 \
       FROM due WHERE t.id = due.id \
       RETURNING t.id, t.due_ms, t.payload, t.claim) \
     SELECT id, payload, claim, due_ms FROM claimed ORDER BY due_ms, id";

/// A group as `GroupInfo` reads it: notify_at only while armed, expired groups skipped.
/// `$1` the key.
const GET_GROUP: &str = "SELECT g.key, g.group_id, g.meta, g.pending_count, \
       CASE WHEN a.armed THEN g.notify_at END, g.last_flush_ms, g.last_event_ms \
     FROM acteon_groups g \
     CROSS JOIN (SELECT acteon_now_ms() AS now) c \
     CROSS JOIN LATERAL (SELECT acteon_group_armed(g) AS armed) a \
     WHERE g.key = $1 AND (g.expires_at > c.now OR a.armed)";

/// [`GET_GROUP`] for the keys from `$1` that start with `$1`, in key order, with an upper
/// bound (`$bound`, so the index scan stops at the end of the prefix) and a limit.
macro_rules! list_groups_sql {
    ($bound:literal, $limit:literal) => {
        concat!(
            "SELECT g.key, g.group_id, g.meta, g.pending_count, \
               CASE WHEN a.armed THEN g.notify_at END, g.last_flush_ms, g.last_event_ms \
             FROM acteon_groups g \
             CROSS JOIN (SELECT acteon_now_ms() AS now) c \
             CROSS JOIN LATERAL (SELECT acteon_group_armed(g) AS armed) a \
             WHERE g.key >= $1 AND starts_with(g.key, $1) ",
            $bound,
            " AND (g.expires_at > c.now OR a.armed) ORDER BY g.key LIMIT ",
            $limit
        )
    };
}

/// Groups with keys in [`$1`, `$2`) that start with `$1`, at most `$3`.
const LIST_GROUPS: &str = list_groups_sql!("AND g.key < $2", "$3");
/// Groups with keys from `$1` that start with `$1` (a prefix without upper bound), at most `$2`.
const LIST_GROUPS_FROM: &str = list_groups_sql!("", "$2");

const GET_EVENT: &str = "SELECT e.key, e.fingerprint, e.state, e.record, e.changed_ms, \
       e.timeout_id, e.timeout_due \
     FROM acteon_events e CROSS JOIN (SELECT acteon_now_ms() AS now) c \
     WHERE e.key = $1 AND e.expires_at > c.now";

/// Events as `list_groups_sql` lists groups.
macro_rules! list_events_sql {
    ($bound:literal, $limit:literal) => {
        concat!(
            "SELECT e.key, e.fingerprint, e.state, e.record, e.changed_ms, \
               e.timeout_id, e.timeout_due \
             FROM acteon_events e CROSS JOIN (SELECT acteon_now_ms() AS now) c \
             WHERE e.key >= $1 AND starts_with(e.key, $1) ",
            $bound,
            " AND e.expires_at > c.now ORDER BY e.key LIMIT ",
            $limit
        )
    };
}

const LIST_EVENTS: &str = list_events_sql!("AND e.key < $2", "$3");
const LIST_EVENTS_FROM: &str = list_events_sql!("", "$2");

/// Answers reads (`$1` kinds: 0 set not empty, 1 dedup seen, 2 window count; `$2` keys;
/// `$3` windows ms) in order, on one clock reading.
const READ_STATE: &str = "SELECT coalesce(array_agg(CASE r.kind \
       WHEN 0 THEN (SELECT count(*) FROM (SELECT 1 FROM acteon_set_members m \
                    WHERE m.set_key = r.key AND m.expires_at > c.now LIMIT 1) x) \
       WHEN 1 THEN (SELECT count(*) FROM acteon_dedup d \
                    WHERE d.key = r.key AND d.expires_at > c.now) \
       WHEN 4 THEN (SELECT count(*) FROM acteon_dedup d \
                    WHERE d.key = r.key AND d.expires_at > c.now \
                      AND (d.token !~ '^[0-9]+:' \
                           OR split_part(d.token, ':', 1)::bigint > c.now - r.w)) \
       WHEN 3 THEN (SELECT count(*) FROM acteon_events e \
                    WHERE e.key = r.key AND e.state = r.st AND e.expires_at > c.now) \
       ELSE (SELECT count(*) FROM acteon_throttle t \
             WHERE t.key = r.key AND t.at_ms > c.now - r.w) END ORDER BY r.n), '{}') \
     FROM unnest($1::smallint[], $2::text[], $3::bigint[], $4::text[]) \
          WITH ORDINALITY AS r(kind, key, w, st, n) \
     CROSS JOIN (SELECT acteon_now_ms() AS now) c";

/// The row of `acteon_run_gates_and_defer`.
type DeferRow = (
    i32,
    Option<i16>,
    Option<i64>,
    Option<i64>,
    Option<Vec<i16>>,
    Option<Vec<Option<String>>>,
    Option<Vec<Option<i64>>>,
    Option<Vec<Option<i64>>>,
);

/// The row of `acteon_group_flush_begin` (all NULL: nothing to send).
type BatchRow = (
    Option<String>,
    Option<Vec<u8>>,
    Option<Vec<Vec<u8>>>,
    Option<i64>,
    Option<bool>,
    Option<i64>,
);

type GroupRow = (String, String, Vec<u8>, i64, Option<i64>, Option<i64>, i64);

type EventRow = (
    String,
    String,
    String,
    Vec<u8>,
    i64,
    Option<String>,
    Option<i64>,
);

/// Reads the stop columns of the gate functions.
fn gate_result(
    op: &str,
    index: i32,
    kind: Option<i16>,
    a: Option<i64>,
    b: Option<i64>,
) -> Result<GateResult, StateError> {
    let Ok(index) = usize::try_from(index) else {
        return Ok(GateResult::Passed);
    };
    let reason = match kind {
        Some(0) => GateStop::Duplicate,
        Some(1) => GateStop::Throttled {
            retry_after: duration_ms(a),
        },
        Some(2) => GateStop::QuotaExceeded {
            used: a.unwrap_or(0).max(0) as u64,
            resets_in: duration_ms(b),
        },
        other => {
            return Err(StateError::Unavailable(format!(
                "postgres {op}: unexpected stop kind {other:?} (schema from a newer gateway?)"
            )));
        }
    };
    Ok(GateResult::Stopped { index, reason })
}

/// Reads the parallel result arrays of `acteon_run_gates_and_defer`.
fn defer_results(
    kinds: &Option<Vec<i16>>,
    texts: &Option<Vec<Option<String>>>,
    sizes: &Option<Vec<Option<i64>>>,
    times: &Option<Vec<Option<i64>>>,
) -> Result<Vec<DeferResult>, StateError> {
    let kinds = kinds.as_deref().unwrap_or_default();
    let text = |i: usize| -> String {
        texts
            .as_ref()
            .and_then(|t| t.get(i).cloned().flatten())
            .unwrap_or_default()
    };
    let num = |v: &Option<Vec<Option<i64>>>, i: usize| -> u64 {
        v.as_ref()
            .and_then(|v| v.get(i).copied().flatten())
            .unwrap_or(0)
            .max(0) as u64
    };
    kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| {
            Ok(match kind {
                0 => DeferResult::Timer,
                1 => DeferResult::Grouped {
                    group_id: text(i),
                    size: num(sizes, i),
                    notify_at_ms: num(times, i),
                },
                2 => DeferResult::Transition(TransitionResult::Changed { previous: text(i) }),
                3 => DeferResult::Transition(TransitionResult::Unchanged { current: text(i) }),
                4 => DeferResult::Transition(TransitionResult::Refused { current: text(i) }),
                other => {
                    return Err(StateError::Unavailable(format!(
                        "postgres run_gates_and_defer: unexpected result kind {other}"
                    )));
                }
            })
        })
        .collect()
}

fn group_info(row: GroupRow) -> GroupInfo {
    let (key, group_id, meta, pending, notify_at, last_flush, last_event) = row;
    GroupInfo {
        key,
        group_id,
        meta,
        pending: pending.max(0) as u64,
        notify_at_ms: notify_at.map(|v| v.max(0) as u64),
        last_flush_ms: last_flush.map(|v| v.max(0) as u64),
        last_event_ms: last_event.max(0) as u64,
    }
}

fn event_info(row: EventRow) -> EventInfo {
    let (key, fingerprint, state, record, changed, timeout_id, timeout_due) = row;
    EventInfo {
        key,
        fingerprint,
        state,
        record,
        changed_ms: changed.max(0) as u64,
        timeout: timeout_id.map(|id| (id, timeout_due.unwrap_or(0).max(0) as u64)),
    }
}

/// The least string above every string that starts with `prefix` (`None`: no bound).
/// Keys compare byte by byte (`COLLATE "C"`), and UTF-8 orders as code points do, so the
/// bound is the prefix with its last character (not the highest) made the next one.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match u32::from(last) + 1 {
            0xD800 => Some('\u{E000}'),
            n => char::from_u32(n),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The deferrals as the JSON array `acteon_run_gates_and_defer` reads (bytes in hex).
fn deferrals_json(deferrals: &[Deferral]) -> String {
    let items: Vec<serde_json::Value> = deferrals
        .iter()
        .map(|d| match d {
            Deferral::Timer(t) => timer_json(t, "t"),
            Deferral::GroupAppend(a) => append_json(a),
            Deferral::Transition(t) => transition_json(t),
        })
        .collect();
    serde_json::Value::Array(items).to_string()
}

fn timer_json(t: &TimerWrite, kind: &str) -> serde_json::Value {
    serde_json::json!({
        "k": kind,
        "id": t.id,
        "due": clamp(t.due_unix_ms),
        "p": hex(&t.payload),
    })
}

fn append_json(a: &GroupAppend) -> serde_json::Value {
    serde_json::json!({
        "k": "g",
        "key": a.key,
        "gid": a.group_id,
        "meta": hex(&a.meta),
        "ev": hex(&a.event),
        "max": a.max_events.clamp(1, i32::MAX as usize),
        "wait": ms(a.wait),
        "interval": ms(a.interval),
        "idle": ms(a.idle_ttl),
        "tid": a.timer_id,
        "tp": hex(&a.timer_payload),
        "fp": a.identity(),
        "rep": a.repeat.map(ms),
    })
}

fn transition_json(t: &Transition) -> serde_json::Value {
    serde_json::json!({
        "k": "s",
        "key": t.key,
        "fp": t.fingerprint,
        "initial": t.initial,
        "to": t.to,
        "from": t.allowed_from,
        "req": t.require_timer,
        "timeout": t.timeout.as_ref().map(|w| timer_json(w, "t")),
        "terminal": t.to_terminal,
        "finals": t.terminal,
        "sets": t.active_sets,
        "record": hex(&t.record),
        "ttl": ms(t.ttl),
        "notice": t.notice.as_ref().map(|n| serde_json::json!({
            "from": n.from,
            "id": n.timer.id,
            "due": clamp(n.timer.due_unix_ms),
            "p": hex(&n.timer.payload),
        })),
    })
}

/// Lowercase hex, as `decode(…, 'hex')` reads it.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// The gates of one dispatch as the parallel arrays `acteon_apply_gates` takes.
#[derive(Default)]
struct GateArrays<'a> {
    kinds: SmallVec<[i16; 4]>,
    keys: SmallVec<[&'a str; 4]>,
    spans: SmallVec<[i64; 4]>,
    limits: SmallVec<[i64; 4]>,
    tokens: SmallVec<[&'a str; 4]>,
}

impl<'a> GateArrays<'a> {
    fn new(gates: &'a [Gate], mode: GateMode) -> Self {
        let mut a = GateArrays::default();
        for gate in gates {
            let (kind, key, span, limit, token) = match gate {
                Gate::Dedup { key, ttl, token } => {
                    (0, key, ms(mode.mark_ttl(*ttl)), 0, token.as_str())
                }
                Gate::Throttle { key, limit, window } => (1, key, ms(*window), clamp(*limit), ""),
                Gate::Quota { key, limit, window } => (2, key, ms(*window), clamp(*limit), ""),
            };
            a.kinds.push(kind);
            a.keys.push(key.as_str());
            a.spans.push(span);
            a.limits.push(limit);
            a.tokens.push(token);
        }
        a
    }

    /// Appends the gates of another call (for a batch).
    fn extend(&mut self, other: GateArrays<'a>) {
        self.kinds.extend(other.kinds);
        self.keys.extend(other.keys);
        self.spans.extend(other.spans);
        self.limits.extend(other.limits);
        self.tokens.extend(other.tokens);
    }
}

/// One gate call in a transaction of its own: `acteon_apply_gates` or
/// `acteon_check_gates`.
async fn run_gates_once(
    db: &Db,
    arrays: &GateArrays<'_>,
    mode: GateMode,
) -> Result<GateResult, StateError> {
    let (op, sql) = match mode {
        GateMode::Apply { .. } => (
            "apply_gates",
            "SELECT stop_index, stop_kind, stop_a, stop_b \
             FROM acteon_apply_gates($1, $2, $3, $4, $5)",
        ),
        GateMode::Check => (
            "check_gates",
            "SELECT stop_index, stop_kind, stop_a, stop_b \
             FROM acteon_check_gates($1, $2, $3, $4, $5)",
        ),
    };
    let (index, kind, a, b): (i32, Option<i16>, Option<i64>, Option<i64>) = db
        .run(op, async |conn: &mut PgConnection| {
            sqlx::query_as(sql)
                .bind(&arrays.kinds[..])
                .bind(&arrays.keys[..])
                .bind(&arrays.spans[..])
                .bind(&arrays.limits[..])
                .bind(&arrays.tokens[..])
                .fetch_one(conn)
                .await
        })
        .await?;
    gate_result(op, index, kind, a, b)
}

#[async_trait]
impl StateStore for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<(), StateError> {
        self.run("ping", async |conn: &mut PgConnection| conn.ping().await)
            .await
    }

    fn gate_batch_counts(&self) -> Option<GateBatchCounts> {
        Some(self.gates.counts())
    }

    async fn apply_gates(&self, gates: &[Gate]) -> Result<GateResult, StateError> {
        self.run_gates(gates, GateMode::APPLY).await
    }

    async fn run_gates(&self, gates: &[Gate], mode: GateMode) -> Result<GateResult, StateError> {
        if gates.is_empty() {
            return Ok(GateResult::Passed);
        }
        match mode {
            GateMode::Apply { .. } => self.gates.apply(gates, mode).await,
            GateMode::Check => run_gates_once(&self.db, &GateArrays::new(gates, mode), mode).await,
        }
    }

    async fn run_gates_and_defer(
        &self,
        gates: &[Gate],
        mode: GateMode,
        deferrals: &[Deferral],
    ) -> Result<(GateResult, Vec<DeferResult>), StateError> {
        if deferrals.is_empty() {
            return Ok((self.run_gates(gates, mode).await?, Vec::new()));
        }
        const OP: &str = "run_gates_and_defer";
        let arrays = GateArrays::new(gates, mode);
        let json = deferrals_json(deferrals);
        let row: DeferRow = self
            .run(OP, async |conn: &mut PgConnection| {
                sqlx::query_as(
                    "SELECT stop_index, stop_kind, stop_a, stop_b, \
                            res_kind, res_text, res_a, res_b \
                     FROM acteon_run_gates_and_defer($1, $2, $3, $4, $5, $6, $7::jsonb)",
                )
                .bind(&arrays.kinds[..])
                .bind(&arrays.keys[..])
                .bind(&arrays.spans[..])
                .bind(&arrays.limits[..])
                .bind(&arrays.tokens[..])
                .bind(mode != GateMode::Check)
                .bind(&json)
                .fetch_one(conn)
                .await
            })
            .await?;
        let (index, kind, a, b, kinds, texts, sizes, times) = row;
        let result = gate_result(OP, index, kind, a, b)?;
        if result != GateResult::Passed {
            return Ok((result, Vec::new()));
        }
        let results = defer_results(&kinds, &texts, &sizes, &times)?;
        if results.len() != deferrals.len() {
            return Err(StateError::Unavailable(format!(
                "postgres {OP}: {} results for {} deferrals",
                results.len(),
                deferrals.len()
            )));
        }
        Ok((result, results))
    }

    async fn group_flush_begin(&self, key: &str) -> Result<Option<GroupBatch>, StateError> {
        let row: BatchRow = self
            .run("group_flush_begin", async |conn: &mut PgConnection| {
                sqlx::query_as(
                    "SELECT b_group_id, b_meta, b_events, b_count, b_repeat, b_last_event \
                     FROM acteon_group_flush_begin($1)",
                )
                .bind(key)
                .fetch_one(conn)
                .await
            })
            .await?;
        let (group_id, meta, events, count, repeat, last) = row;
        Ok(group_id.map(|group_id| GroupBatch {
            group_id,
            meta: meta.unwrap_or_default(),
            events: events.unwrap_or_default(),
            event_count: count.unwrap_or(0).max(0) as u64,
            repeat: repeat.unwrap_or(false),
            last_event_ms: last.unwrap_or(0).max(0) as u64,
        }))
    }

    async fn group_flush_end(
        &self,
        key: &str,
        timer_id: &str,
        claim: &str,
        interval: Duration,
        repeat_at_ms: Option<u64>,
    ) -> Result<bool, StateError> {
        self.run("group_flush_end", async |conn: &mut PgConnection| {
            sqlx::query_scalar("SELECT acteon_group_flush_end($1, $2, $3, $4, $5)")
                .bind(key)
                .bind(timer_id)
                .bind(claim)
                .bind(ms(interval))
                .bind(repeat_at_ms.map(clamp))
                .fetch_one(conn)
                .await
        })
        .await
    }

    async fn get_group(&self, key: &str) -> Result<Option<GroupInfo>, StateError> {
        let row: Option<GroupRow> = self
            .run("get_group", async |conn: &mut PgConnection| {
                sqlx::query_as(GET_GROUP)
                    .bind(key)
                    .fetch_optional(conn)
                    .await
            })
            .await?;
        Ok(row.map(group_info))
    }

    async fn list_groups(&self, prefix: &str, limit: usize) -> Result<Vec<GroupInfo>, StateError> {
        let end = prefix_end(prefix);
        let limit = clamp(limit as u64);
        let rows: Vec<GroupRow> = self
            .run("list_groups", async |conn: &mut PgConnection| {
                let query = match &end {
                    Some(end) => sqlx::query_as(LIST_GROUPS).bind(prefix).bind(end),
                    None => sqlx::query_as(LIST_GROUPS_FROM).bind(prefix),
                };
                query.bind(limit).fetch_all(conn).await
            })
            .await?;
        Ok(rows.into_iter().map(group_info).collect())
    }

    async fn get_event(&self, key: &str) -> Result<Option<EventInfo>, StateError> {
        let row: Option<EventRow> = self
            .run("get_event", async |conn: &mut PgConnection| {
                sqlx::query_as(GET_EVENT)
                    .bind(key)
                    .fetch_optional(conn)
                    .await
            })
            .await?;
        Ok(row.map(event_info))
    }

    async fn list_events(&self, prefix: &str, limit: usize) -> Result<Vec<EventInfo>, StateError> {
        let end = prefix_end(prefix);
        let limit = clamp(limit as u64);
        let rows: Vec<EventRow> = self
            .run("list_events", async |conn: &mut PgConnection| {
                let query = match &end {
                    Some(end) => sqlx::query_as(LIST_EVENTS).bind(prefix).bind(end),
                    None => sqlx::query_as(LIST_EVENTS_FROM).bind(prefix),
                };
                query.bind(limit).fetch_all(conn).await
            })
            .await?;
        Ok(rows.into_iter().map(event_info).collect())
    }

    async fn read_state(&self, reads: &[StateRead]) -> Result<StateAnswers, StateError> {
        if reads.is_empty() {
            return Ok(Vec::new());
        }
        let mut kinds: Vec<i16> = Vec::with_capacity(reads.len());
        let mut keys: Vec<&str> = Vec::with_capacity(reads.len());
        let mut windows: Vec<i64> = Vec::with_capacity(reads.len());
        let mut states: Vec<&str> = Vec::with_capacity(reads.len());
        for read in reads {
            let (kind, key, window, state) = match read {
                StateRead::SetNotEmpty { key } => (0, key, 0, ""),
                StateRead::DedupSeen { key } => (1, key, 0, ""),
                StateRead::DedupSeenWithin { key, within } => (4, key, ms(*within), ""),
                StateRead::WindowCount { key, window } => (2, key, ms(*window), ""),
                StateRead::EventInState { key, state } => (3, key, 0, state.as_str()),
            };
            kinds.push(kind);
            keys.push(key);
            windows.push(window);
            states.push(state);
        }
        let answers: Vec<i64> = self
            .run("read_state", async |conn: &mut PgConnection| {
                sqlx::query_scalar(READ_STATE)
                    .bind(&kinds[..])
                    .bind(&keys[..])
                    .bind(&windows[..])
                    .bind(&states[..])
                    .fetch_one(conn)
                    .await
            })
            .await?;
        Ok(answers.into_iter().map(|n| n.max(0) as u64).collect())
    }

    async fn pending_timers(&self) -> Result<u64, StateError> {
        let n: i64 = self
            .run("pending_timers", async |conn: &mut PgConnection| {
                sqlx::query_scalar("SELECT count(*) FROM acteon_timers")
                    .fetch_one(conn)
                    .await
            })
            .await?;
        Ok(n.max(0) as u64)
    }

    async fn release_timers(&self, claims: &[(String, String)]) -> Result<usize, StateError> {
        if claims.is_empty() {
            return Ok(0);
        }
        let ids: Vec<&str> = claims.iter().map(|(id, _)| id.as_str()).collect();
        let held: Vec<&str> = claims.iter().map(|(_, claim)| claim.as_str()).collect();
        self.run("release_timers", async |conn: &mut PgConnection| {
            sqlx::query(
                "UPDATE acteon_timers t SET claim = NULL, lease_until = NULL \
                 FROM unnest($1::text[], $2::text[]) AS r(id, claim) \
                 WHERE t.id = r.id AND t.claim = r.claim",
            )
            .bind(&ids[..])
            .bind(&held[..])
            .execute(conn)
            .await
            .map(|r| r.rows_affected() as usize)
        })
        .await
    }

    async fn confirm_dedup(&self, marks: &[DedupConfirm]) -> Result<usize, StateError> {
        if marks.is_empty() {
            return Ok(0);
        }
        let keys: Vec<&str> = marks.iter().map(|m| m.key.as_str()).collect();
        let tokens: Vec<&str> = marks.iter().map(|m| m.token.as_str()).collect();
        let extends: Vec<i64> = marks.iter().map(|m| ms(m.extend)).collect();
        // One statement for the whole batch; the owner check is in the join. A key twice
        // in a batch (never from one gateway: a mark is confirmed once) extends once.
        self.run("confirm_dedup", async |conn: &mut PgConnection| {
            sqlx::query(
                "UPDATE acteon_dedup d SET expires_at = d.expires_at + c.extend \
                 FROM unnest($1::text[], $2::text[], $3::bigint[]) AS c(key, token, extend) \
                 WHERE d.key = c.key AND d.token = c.token AND d.expires_at > acteon_now_ms()",
            )
            .bind(&keys[..])
            .bind(&tokens[..])
            .bind(&extends[..])
            .execute(conn)
            .await
            .map(|r| r.rows_affected() as usize)
        })
        .await
    }

    async fn release_dedup(&self, key: &str, token: &str) -> Result<bool, StateError> {
        self.run("release_dedup", async |conn: &mut PgConnection| {
            sqlx::query(
                "DELETE FROM acteon_dedup \
                 WHERE key = $1 AND token = $2 AND expires_at > acteon_now_ms()",
            )
            .bind(key)
            .bind(token)
            .execute(conn)
            .await
            .map(|r| r.rows_affected() > 0)
        })
        .await
    }

    async fn dedup_exists(&self, key: &str) -> Result<bool, StateError> {
        self.run("dedup_exists", async |conn: &mut PgConnection| {
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM acteon_dedup \
                 WHERE key = $1 AND expires_at > acteon_now_ms())",
            )
            .bind(key)
            .fetch_one(conn)
            .await
        })
        .await
    }

    async fn window_count(&self, key: &str, window: Duration) -> Result<u64, StateError> {
        let count: i64 = self
            .run("window_count", async |conn: &mut PgConnection| {
                sqlx::query_scalar(
                    "SELECT count(*) FROM acteon_throttle \
                     WHERE key = $1 AND at_ms > acteon_now_ms() - $2",
                )
                .bind(key)
                .bind(ms(window))
                .fetch_one(conn)
                .await
            })
            .await?;
        Ok(count.max(0) as u64)
    }

    async fn quota_usage(&self, key: &str, window: Duration) -> Result<u64, StateError> {
        let used: Option<i64> = self
            .run("quota_usage", async |conn: &mut PgConnection| {
                sqlx::query_scalar(
                    "SELECT q.count FROM acteon_quota q, \
                     (SELECT acteon_now_ms() AS now, greatest($2::bigint, 1) AS w) c \
                     WHERE q.key = $1 AND q.window_start = c.now - c.now % c.w",
                )
                .bind(key)
                .bind(ms(window))
                .fetch_optional(conn)
                .await
            })
            .await?;
        Ok(used.unwrap_or(0).max(0) as u64)
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        let row: Option<(Vec<u8>, i64)> = self
            .run("get", async |conn: &mut PgConnection| {
                sqlx::query_as(
                    "SELECT value, version FROM acteon_kv \
                     WHERE key = $1 AND (expires_at IS NULL OR expires_at > acteon_now_ms())",
                )
                .bind(key)
                .fetch_optional(conn)
                .await
            })
            .await?;
        Ok(row.map(|(value, version)| Versioned {
            value,
            version: version as u64,
        }))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Versioned>>, StateError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, Vec<u8>, i64)> = self
            .run("get_many", async |conn: &mut PgConnection| {
                sqlx::query_as(
                    "SELECT key, value, version FROM acteon_kv \
                     WHERE key = ANY($1) AND (expires_at IS NULL OR expires_at > acteon_now_ms())",
                )
                .bind(keys)
                .fetch_all(conn)
                .await
            })
            .await?;
        let mut found: std::collections::HashMap<String, Versioned> = rows
            .into_iter()
            .map(|(key, value, version)| {
                let version = version as u64;
                (key, Versioned { value, version })
            })
            .collect();
        Ok(keys.iter().map(|k| found.remove(k)).collect())
    }

    async fn reserve_slot(
        &self,
        key: &str,
        interval: Duration,
        max_wait: Duration,
    ) -> Result<Option<Duration>, StateError> {
        let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        let wait: i64 = self
            .run("reserve_slot", async |conn: &mut PgConnection| {
                sqlx::query_scalar("SELECT acteon_reserve_slot($1, $2, $3)")
                    .bind(key)
                    .bind(micros(interval))
                    .bind(micros(max_wait))
                    .fetch_one(conn)
                    .await
            })
            .await?;
        Ok((wait >= 0).then(|| Duration::from_micros(wait as u64)))
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<Option<u64>, StateError> {
        let ttl = ttl.map(ms);
        let version: Option<i64> = self
            .run(
                "compare_and_swap",
                async |conn: &mut PgConnection| match expected {
                    // Create: insert, or take over an expired value. The row lock of ON CONFLICT
                    // makes concurrent creators see each other's value.
                    None => {
                        sqlx::query_scalar(
                            "INSERT INTO acteon_kv AS kv (key, value, version, expires_at) \
                         VALUES ($1, $2, nextval('acteon_kv_version'), acteon_now_ms() + $3) \
                         ON CONFLICT (key) DO UPDATE \
                         SET value = EXCLUDED.value, version = EXCLUDED.version, \
                             expires_at = EXCLUDED.expires_at \
                         WHERE kv.expires_at IS NOT NULL AND kv.expires_at <= acteon_now_ms() \
                         RETURNING version",
                        )
                        .bind(key)
                        .bind(&value[..])
                        .bind(ttl)
                        .fetch_optional(conn)
                        .await
                    }
                    // Update: a concurrent winner changes the version, which the re-check of the
                    // WHERE clause on the updated row then rejects.
                    Some(expected) => {
                        sqlx::query_scalar(
                            "UPDATE acteon_kv \
                         SET value = $2, version = nextval('acteon_kv_version'), \
                             expires_at = acteon_now_ms() + $3 \
                         WHERE key = $1 AND version = $4 \
                           AND (expires_at IS NULL OR expires_at > acteon_now_ms()) \
                         RETURNING version",
                        )
                        .bind(key)
                        .bind(&value[..])
                        .bind(ttl)
                        .bind(clamp(expected))
                        .fetch_optional(conn)
                        .await
                    }
                },
            )
            .await?;
        Ok(version.map(|v| v as u64))
    }

    async fn delete(&self, key: &str) -> Result<bool, StateError> {
        // An expired value is removed too, but reported as absent (as `get` sees it).
        let live: Option<bool> = self
            .run("delete", async |conn: &mut PgConnection| {
                sqlx::query_scalar(
                    "DELETE FROM acteon_kv WHERE key = $1 \
                     RETURNING expires_at IS NULL OR expires_at > acteon_now_ms()",
                )
                .bind(key)
                .fetch_optional(conn)
                .await
            })
            .await?;
        Ok(live.unwrap_or(false))
    }

    async fn try_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StateError> {
        let taken: Option<i32> = self
            .run("try_lock", async |conn: &mut PgConnection| {
                sqlx::query_scalar(
                    "INSERT INTO acteon_locks AS l (key, owner, expires_at) \
                     VALUES ($1, $2, acteon_now_ms() + $3) \
                     ON CONFLICT (key) DO UPDATE \
                     SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at \
                     WHERE l.owner = EXCLUDED.owner OR l.expires_at <= EXCLUDED.expires_at - $3 \
                     RETURNING 1",
                )
                .bind(key)
                .bind(owner)
                .bind(ms(ttl))
                .fetch_optional(conn)
                .await
            })
            .await?;
        Ok(taken.is_some())
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, StateError> {
        self.run("unlock", async |conn: &mut PgConnection| {
            sqlx::query(
                "DELETE FROM acteon_locks \
                 WHERE key = $1 AND owner = $2 AND expires_at > acteon_now_ms()",
            )
            .bind(key)
            .bind(owner)
            .execute(conn)
            .await
            .map(|r| r.rows_affected() > 0)
        })
        .await
    }

    async fn schedule_timer(
        &self,
        id: &str,
        due_unix_ms: u64,
        payload: Vec<u8>,
    ) -> Result<(), StateError> {
        self.run("schedule_timer", async |conn: &mut PgConnection| {
            sqlx::query(
                "INSERT INTO acteon_timers (id, due_ms, payload) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE \
                 SET due_ms = EXCLUDED.due_ms, payload = EXCLUDED.payload, \
                     claim = NULL, lease_until = NULL",
            )
            .bind(id)
            .bind(clamp(due_unix_ms))
            .bind(&payload[..])
            .execute(conn)
            .await
            .map(|_| ())
        })
        .await
    }

    async fn claim_due_timers(
        &self,
        now_unix_ms: u64,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedTimer>, StateError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, Vec<u8>, String, i64)> = self
            .run("claim_due_timers", async |conn: &mut PgConnection| {
                // SKIP LOCKED: concurrent claimers take disjoint timers; a timer claimed and
                // committed meanwhile fails the re-check of the WHERE clause on its new version.
                sqlx::query_as(CLAIM_DUE_TIMERS_SQL)
                    .bind(clamp(now_unix_ms))
                    .bind(clamp(max as u64))
                    .bind(ms(lease))
                    .fetch_all(conn)
                    .await
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, payload, claim, due)| ClaimedTimer {
                id,
                payload,
                claim,
                due_ms: due.max(0) as u64,
            })
            .collect())
    }

    async fn complete_timer(&self, id: &str, claim: &str) -> Result<bool, StateError> {
        self.run("complete_timer", async |conn: &mut PgConnection| {
            sqlx::query("DELETE FROM acteon_timers WHERE id = $1 AND claim = $2")
                .bind(id)
                .bind(claim)
                .execute(conn)
                .await
                .map(|r| r.rows_affected() > 0)
        })
        .await
    }

    async fn get_timer(&self, id: &str) -> Result<Option<(u64, Vec<u8>)>, StateError> {
        let row: Option<(i64, Vec<u8>)> = self
            .run("get_timer", async |conn: &mut PgConnection| {
                sqlx::query_as("SELECT due_ms, payload FROM acteon_timers WHERE id = $1")
                    .bind(id)
                    .fetch_optional(conn)
                    .await
            })
            .await?;
        Ok(row.map(|(due, payload)| (due.max(0) as u64, payload)))
    }

    async fn delete_timer(&self, id: &str) -> Result<bool, StateError> {
        self.run("delete_timer", async |conn: &mut PgConnection| {
            sqlx::query("DELETE FROM acteon_timers WHERE id = $1")
                .bind(id)
                .execute(conn)
                .await
                .map(|r| r.rows_affected() > 0)
        })
        .await
    }

    async fn list_timers(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ListedTimer>, StateError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let after = after.filter(|a| *a >= prefix).unwrap_or(prefix);
        let rows: Vec<(String, i64, Vec<u8>)> = self
            .run("list_timers", async |conn: &mut PgConnection| {
                sqlx::query_as(
                    "SELECT id, due_ms, payload FROM acteon_timers \
                     WHERE id >= $1 AND starts_with(id, $1) AND (id > $2 OR $2 = $1) \
                     ORDER BY id LIMIT $3",
                )
                .bind(prefix)
                .bind(after)
                .bind(limit)
                .fetch_all(conn)
                .await
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, due, payload)| ListedTimer {
                id,
                due_ms: due.max(0) as u64,
                payload,
            })
            .collect())
    }

    async fn advance_timer(
        &self,
        id: &str,
        claim: &str,
        due_unix_ms: u64,
        payload: Vec<u8>,
        hold: Option<Duration>,
    ) -> Result<bool, StateError> {
        let due = i64::try_from(due_unix_ms).unwrap_or(i64::MAX);
        // Held: the claim stays, its lease renewed on the database clock; else it ends.
        self.run("advance_timer", async |conn: &mut PgConnection| {
            sqlx::query(
                "UPDATE acteon_timers SET due_ms = $3, payload = $4, \
                 claim = CASE WHEN $5::bigint IS NULL THEN NULL ELSE claim END, \
                 lease_until = acteon_now_ms() + $5::bigint \
                 WHERE id = $1 AND claim = $2",
            )
            .bind(id)
            .bind(claim)
            .bind(due)
            .bind(&payload)
            .bind(hold.map(ms))
            .execute(conn)
            .await
            .map(|r| r.rows_affected() > 0)
        })
        .await
    }
}
