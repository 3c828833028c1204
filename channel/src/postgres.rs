//! The Postgres channel.
//!
//! Tables, in the installation's schema (next to the gateway's `acteon_*` state tables,
//! whose names they do not share):
//! - `config_snapshot` — one row (`id = true`): `version`, `digest`, `body`, `published_at`.
//!   Version 0 means "nothing published yet"; the row exists from the start so that
//!   [`ConfigChannel::publish`] is a plain `UPDATE` that concurrent publishers serialize on.
//! - `config_gateways` — `gateway` → `report` (jsonb) and `expires_at` (database clock).
//!
//! [`PostgresChannel::connect`] creates them idempotently, under a transaction-scoped
//! advisory lock so that replicas connecting together do not race on `CREATE … IF NOT
//! EXISTS` (which can fail with a unique violation when run concurrently).
//!
//! Notifications travel with `pg_notify` on a channel named after the schema (see
//! [`notify_channel`]), sent by the publishing statement itself, so a version is announced
//! exactly when it commits. A background task holds a `LISTEN` connection (`Follower` below).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::Instrument;

mod sql;

use sql::Sql;
pub use sql::notify_channel;

use crate::backend::{Redactor, check_schema, db_message};
use crate::util::{Backoff, announce, bounded};
use crate::{ChannelError, ConfigChannel, GatewayReport, Head, PublishOutcome, Published};

/// Connections at most: one for `LISTEN`, the rest for the (rare, short) operations.
const MAX_CONNECTIONS: u32 = 3;
/// Attempts at creating the schema objects (a concurrent `CREATE SCHEMA` by the gateway's
/// own migration can still collide with ours).
const SETUP_ATTEMPTS: u32 = 3;
/// Report TTLs are capped (10 years).
const MAX_TTL_MS: u64 = 10 * 365 * 86_400 * 1000;

/// The Postgres [`ConfigChannel`]. Dropping it stops its `LISTEN` task.
pub struct PostgresChannel {
    pool: PgPool,
    sql: Sql,
    channel: String,
    timeout: Duration,
    redactor: Arc<Redactor>,
    notify: Arc<watch::Sender<u64>>,
    follower: Option<tokio::task::AbortHandle>,
}

impl Drop for PostgresChannel {
    fn drop(&mut self) {
        if let Some(follower) = &self.follower {
            follower.abort();
        }
    }
}

impl std::fmt::Debug for PostgresChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresChannel")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

fn is_duplicate_object(e: &sqlx::Error) -> bool {
    // unique_violation, duplicate_schema, duplicate_table
    let code = e.as_database_error().and_then(|d| d.code());
    matches!(code.as_deref(), Some("23505" | "42P06" | "42P07"))
}

impl PostgresChannel {
    /// Connects to `url`, creates the channel's tables in `schema` if missing, and starts
    /// listening; each step within `timeout`, as is every later call.
    #[tracing::instrument(
        name = "config_channel_connect",
        skip(url, timeout),
        fields(backend = "postgres")
    )]
    pub async fn connect(
        url: &str,
        schema: &str,
        timeout: Duration,
    ) -> Result<PostgresChannel, ChannelError> {
        check_schema(schema).map_err(ChannelError::Unavailable)?;
        let redactor = Arc::new(Redactor::new(url));
        let fail = |e: sqlx::Error| redactor.unavailable("postgres", "connect", db_message(&e));
        // The server gives up a little before the client, so a slow statement ends as an
        // error the client sees rather than an ambiguous timeout.
        let statement_timeout = timeout
            .saturating_sub(Duration::from_millis(250))
            .max(Duration::from_millis(100))
            .as_millis()
            .to_string();
        let options = PgConnectOptions::from_str(url)
            .map_err(fail)?
            .application_name("acteon-config-channel")
            .options([("statement_timeout", statement_timeout)])
            .disable_statement_logging();
        // No ping before each use (one round trip per operation): sqlx pings a connection
        // when it is given back instead, and drops it if broken.
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .min_connections(0)
            .acquire_timeout(timeout)
            .test_before_acquire(false)
            .connect_lazy_with(options);
        let mut channel = PostgresChannel {
            pool,
            sql: Sql::new(schema),
            channel: notify_channel(schema),
            timeout,
            redactor,
            notify: Arc::new(watch::Sender::new(0)),
            follower: None,
        };
        channel.setup().await?;
        channel.follower = Some(channel.start_follower().await?);
        tracing::info!(channel = %channel.channel, "config channel connected");
        Ok(channel)
    }

    /// Creates the schema objects: one multi-statement query, which Postgres runs as one
    /// transaction, so the advisory lock is held until the objects exist.
    async fn setup(&self) -> Result<(), ChannelError> {
        let mut attempt = 1;
        loop {
            let query = sqlx::raw_sql(AssertSqlSafe(self.sql.setup.as_str())).execute(&self.pool);
            match tokio::time::timeout(self.timeout, query).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) if attempt < SETUP_ATTEMPTS && is_duplicate_object(&e) => {
                    tracing::debug!(error = %e, attempt, "schema created concurrently; retrying");
                    attempt += 1;
                }
                Ok(Err(e)) => return Err(self.unavailable("setup", &e)),
                Err(_) => return Err(ChannelError::Timeout(self.timeout)),
            }
        }
    }

    async fn start_follower(&self) -> Result<tokio::task::AbortHandle, ChannelError> {
        let follower = Follower {
            pool: self.pool.clone(),
            head_sql: self.sql.head.clone(),
            channel: self.channel.clone(),
            timeout: self.timeout,
            redactor: self.redactor.clone(),
            tx: self.notify.clone(),
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        let span = tracing::info_span!("config_channel_follow", backend = "postgres", channel = %self.channel);
        let task = tokio::spawn(follower.run(ready_tx).instrument(span));
        let abort = task.abort_handle();
        let ready = tokio::time::timeout(self.timeout, ready_rx).await;
        match ready {
            Ok(Ok(Ok(()))) => Ok(abort),
            outcome => {
                abort.abort();
                Err(match outcome {
                    Ok(Ok(Err(e))) => e,
                    Err(_) => ChannelError::Timeout(self.timeout),
                    _ => ChannelError::Unavailable("postgres listen: task ended".into()),
                })
            }
        }
    }

    fn unavailable(&self, op: &str, e: &sqlx::Error) -> ChannelError {
        self.redactor.unavailable("postgres", op, db_message(e))
    }

    async fn run<T>(
        &self,
        op: &str,
        fut: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, ChannelError> {
        bounded(self.timeout, fut, |e| self.unavailable(op, &e)).await
    }
}

/// The server's message for database errors (without the driver's wrapping), else the error.
fn to_u64(version: i64) -> Result<u64, ChannelError> {
    u64::try_from(version).map_err(|_| ChannelError::Corrupt(format!("negative version {version}")))
}

#[async_trait]
impl ConfigChannel for PostgresChannel {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    /// One statement; retried only when it lost a race with a concurrent publisher of the
    /// same digest (its fallback read then shows the row from before that publish).
    async fn publish(&self, digest: &str, body: &[u8]) -> Result<PublishOutcome, ChannelError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let query =
                sqlx::query_as::<_, (i64, String, bool)>(AssertSqlSafe(self.sql.publish.clone()))
                    .bind(digest)
                    .bind(body)
                    .bind(&self.channel)
                    .fetch_optional(&self.pool);
            let row = match tokio::time::timeout_at(deadline, query).await {
                Ok(row) => row.map_err(|e| self.unavailable("publish", &e))?,
                Err(_) => return Err(ChannelError::Timeout(self.timeout)),
            };
            let Some((version, stored, published)) = row else {
                return Err(ChannelError::Corrupt(
                    "config_snapshot row is missing".into(),
                ));
            };
            let head = Head {
                version: to_u64(version)?,
                digest: digest.to_owned(),
            };
            if published {
                tracing::info!(
                    version,
                    digest,
                    bytes = body.len(),
                    "config snapshot published"
                );
                return Ok(PublishOutcome::Published(head));
            }
            if stored == digest {
                tracing::debug!(version, digest, "config snapshot unchanged");
                return Ok(PublishOutcome::Unchanged(head));
            }
        }
    }

    async fn head(&self) -> Result<Option<Head>, ChannelError> {
        read_head(&self.pool, &self.sql.head, self.timeout, &self.redactor).await
    }

    async fn fetch(&self) -> Result<Option<Published>, ChannelError> {
        let query =
            sqlx::query_as::<_, (i64, String, Vec<u8>)>(AssertSqlSafe(self.sql.fetch.clone()))
                .fetch_optional(&self.pool);
        match self.run("fetch", query).await? {
            None => Ok(None),
            Some((version, digest, body)) => Ok(Some(Published {
                version: to_u64(version)?,
                digest,
                body,
            })),
        }
    }

    fn notifications(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    async fn report(&self, report: &GatewayReport, ttl: Duration) -> Result<(), ChannelError> {
        let json = serde_json::to_string(report)
            .map_err(|e| ChannelError::Corrupt(format!("report does not serialize: {e}")))?;
        let ttl_ms = (ttl.as_millis().min(u128::from(MAX_TTL_MS)) as i64).max(1);
        let query = sqlx::query(AssertSqlSafe(self.sql.report.clone()))
            .bind(&report.gateway)
            .bind(json)
            .bind(ttl_ms)
            .execute(&self.pool);
        self.run("report", query).await?;
        Ok(())
    }

    async fn gateways(&self) -> Result<Vec<GatewayReport>, ChannelError> {
        let query = sqlx::query_as::<_, (String, String)>(AssertSqlSafe(self.sql.gateways.clone()))
            .fetch_all(&self.pool);
        let rows = self.run("gateways", query).await?;
        let mut reports: Vec<GatewayReport> = rows
            .into_iter()
            .filter_map(|(gateway, json)| match serde_json::from_str(&json) {
                Ok(report) => Some(report),
                Err(error) => {
                    // One bad row must not hide every gateway from the operator's status.
                    tracing::warn!(%error, gateway, "skipping an undecodable gateway report");
                    None
                }
            })
            .collect();
        // In Rust, not ORDER BY: the database collation may not sort by bytes.
        reports.sort_by(|a, b| a.gateway.cmp(&b.gateway));
        Ok(reports)
    }
}

async fn read_head(
    pool: &PgPool,
    sql: &Arc<str>,
    timeout: Duration,
    redactor: &Redactor,
) -> Result<Option<Head>, ChannelError> {
    let query = sqlx::query_as::<_, (i64, String)>(AssertSqlSafe(sql.clone())).fetch_optional(pool);
    let row = bounded(timeout, query, |e| {
        redactor.unavailable("postgres", "head", db_message(&e))
    })
    .await?;
    match row {
        None => Ok(None),
        Some((version, digest)) => Ok(Some(Head {
            version: to_u64(version)?,
            digest,
        })),
    }
}

/// The `LISTEN` task: listens, announces the current head, forwards every notification,
/// and starts over (with backoff) whenever the connection is lost.
struct Follower {
    pool: PgPool,
    head_sql: Arc<str>,
    channel: String,
    timeout: Duration,
    redactor: Arc<Redactor>,
    tx: Arc<watch::Sender<u64>>,
}

impl Follower {
    async fn run(self, ready: oneshot::Sender<Result<(), ChannelError>>) {
        let mut ready = Some(ready);
        let mut backoff = Backoff::new();
        loop {
            match self.listen().await {
                Ok(listener) => {
                    match ready.take() {
                        Some(ready) => {
                            let _ = ready.send(Ok(()));
                        }
                        None => tracing::info!("config channel subscription restored"),
                    }
                    backoff.reset();
                    self.forward(listener).await;
                }
                // The first attempt fails `connect`, which then stops this task.
                Err(e) => match ready.take() {
                    Some(ready) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                    None => tracing::warn!(error = %e, "config channel re-listen failed"),
                },
            }
            backoff.wait().await;
        }
    }

    /// Starts listening, then reads and announces the head, so that a version published
    /// while the connection was down is announced now rather than at the next poll.
    async fn listen(&self) -> Result<PgListener, ChannelError> {
        let fail = |e: sqlx::Error| {
            self.redactor
                .unavailable("postgres", "listen", db_message(&e))
        };
        let mut listener =
            bounded(self.timeout, PgListener::connect_with(&self.pool), fail).await?;
        // A lost connection ends `forward`; `run` then builds a new listener and reads the
        // head again, rather than sqlx reconnecting silently.
        listener.eager_reconnect(false);
        bounded(self.timeout, listener.listen(&self.channel), fail).await?;
        if let Some(head) =
            read_head(&self.pool, &self.head_sql, self.timeout, &self.redactor).await?
        {
            announce(&self.tx, head.version);
        }
        Ok(listener)
    }

    async fn forward(&self, mut listener: PgListener) {
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => match notification.payload().parse() {
                    Ok(version) => announce(&self.tx, version),
                    Err(_) => tracing::debug!("ignoring a malformed config notification"),
                },
                Ok(None) => {
                    tracing::warn!("config channel listen connection lost; reconnecting");
                    return;
                }
                Err(e) => {
                    let error = self.redactor.clean(db_message(&e));
                    tracing::warn!(%error, "config channel listen failed; reconnecting");
                    return;
                }
            }
        }
    }
}
