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
//!   operation is one statement too.
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

use super::{
    ClaimedTimer, DedupConfirm, Gate, GateMode, GateResult, GateStop, StateError, StateStore,
    Versioned,
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
        }
    }
}

/// The Postgres [`StateStore`].
pub struct PostgresStore {
    pool: Pool,
    schema: String,
    /// Connection options of [`PostgresStore::migrate`] (no statement timeout).
    migrate_options: PgConnectOptions,
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
        let store = PostgresStore {
            pool,
            schema: schema.to_owned(),
            migrate_options,
            op_timeout: options.op_timeout,
            redactor,
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
                    sqlx::query_scalar("SELECT acteon_sweep($1)")
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

    async fn apply_gates(&self, gates: &[Gate]) -> Result<GateResult, StateError> {
        self.run_gates(gates, GateMode::APPLY).await
    }

    async fn run_gates(&self, gates: &[Gate], mode: GateMode) -> Result<GateResult, StateError> {
        if gates.is_empty() {
            return Ok(GateResult::Passed);
        }
        let arrays = GateArrays::new(gates, mode);
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
        let (index, kind, a, b): (i32, Option<i16>, Option<i64>, Option<i64>) = self
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
        let rows: Vec<(String, Vec<u8>, String)> = self
            .run("claim_due_timers", async |conn: &mut PgConnection| {
                // SKIP LOCKED: concurrent claimers take disjoint timers; a timer claimed and
                // committed meanwhile fails the re-check of the WHERE clause on its new version.
                sqlx::query_as(
                    "WITH c AS (SELECT acteon_now_ms() AS now), \
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
                     SELECT id, payload, claim FROM claimed ORDER BY due_ms, id",
                )
                .bind(clamp(now_unix_ms))
                .bind(clamp(max as u64))
                .bind(ms(lease))
                .fetch_all(conn)
                .await
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, payload, claim)| ClaimedTimer { id, payload, claim })
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
}
