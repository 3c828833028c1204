//! The Postgres store: table `acteon_audit` in the installation's schema
//! (`migrations/postgres/0008_audit.sql`).
//!
//! A pool of its own, created lazily: the audit store being down at start (or later) never
//! stops the gateway; the writer retries, then counts the records as lost. A batch (up to
//! [`super::writer::BATCH`] rows) is one binary `COPY` ([`super::pg_copy`]): one statement
//! and one WAL flush per batch; a batch that meets stored ids (a retry) is inserted
//! `UNNEST`-style with `ON CONFLICT DO NOTHING` instead. Times cross the wire as integer
//! microseconds, so that a cursor compares exactly equal to the stored value.

use std::str::FromStr;
use std::time::Duration;

use acteon_channel::backend::{Redactor, check_schema, db_message};
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolCopyExt, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, ConnectOptions, Postgres, QueryBuilder, Row};
use tokio::sync::OnceCell;

use super::pg_copy;
use super::{
    AuditError, AuditPage, AuditQuery, AuditRecord, AuditStore, MAX_LIMIT, MAX_PER_ACTION,
    Retention,
};

/// Rows one retention `DELETE` removes: short statements, short locks.
const SWEEP_BATCH: i64 = 5000;
/// Most `DELETE` statements per sweep and scope: a sweep ends even far behind.
const SWEEP_ROUNDS: usize = 200;

const MIGRATION: &str = include_str!("../../migrations/postgres/0008_audit.sql");

const COLUMNS: &str = "id::text AS id, action_id, namespace, tenant, provider, action_type, \
    verdict, matched_rule, outcome, error, caller, source, \
    (extract(epoch FROM dispatched_at) * 1000000)::bigint AS at_us, duration_ms, \
    payload::text AS payload, metadata::text AS metadata";

pub struct PostgresAuditStore {
    pool: PgPool,
    schema: String,
    redactor: Redactor,
    op_timeout: Duration,
    /// The table is created on first use (idempotent), not at start: a database that is down
    /// at start must not stop the gateway.
    ready: OnceCell<()>,
}

impl PostgresAuditStore {
    /// Configures the pool (no connection yet). `schema` is the installation's schema.
    pub fn new(
        url: &str,
        schema: &str,
        op_timeout: Duration,
    ) -> Result<PostgresAuditStore, String> {
        check_schema(schema)?;
        let redactor = Redactor::new(url);
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| redactor.clean(db_message(&e)))?
            .application_name("acteon-gateway-audit")
            .disable_statement_logging()
            .options([
                ("search_path", format!("\"{schema}\"")),
                (
                    "statement_timeout",
                    op_timeout.as_millis().max(100).to_string(),
                ),
            ]);
        let pool = PgPoolOptions::new()
            // The writer uses one connection; queries, sweeps and the bench the others.
            .max_connections(4)
            .acquire_timeout(op_timeout)
            .connect_lazy_with(options);
        Ok(PostgresAuditStore {
            pool,
            schema: schema.to_owned(),
            redactor,
            op_timeout,
            ready: OnceCell::new(),
        })
    }

    fn err(&self, what: &str, e: &sqlx::Error) -> AuditError {
        AuditError::Unavailable(format!("{what}: {}", self.redactor.clean(db_message(e))))
    }

    async fn bounded<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, AuditError> {
        self.bounded_raw(f).await.map_err(|e| match e {
            Some(e) => self.err(what, &e),
            None => self.timed_out(what),
        })
    }

    /// Creates the schema and table if missing; once per process (retried until it works).
    async fn ensure(&self) -> Result<(), AuditError> {
        self.ready
            .get_or_try_init(|| async {
                let schema = self.schema.clone();
                self.bounded("create audit table", async {
                    let mut tx = self.pool.begin().await?;
                    // Replicas starting together: one creates, the others wait and find it.
                    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                        .bind(format!("acteon-audit:{schema}"))
                        .execute(&mut *tx)
                        .await?;
                    // The schema name passed `check_schema` (plain characters only).
                    sqlx::raw_sql(AssertSqlSafe(format!(
                        "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
                    )))
                    .execute(&mut *tx)
                    .await?;
                    sqlx::raw_sql(MIGRATION).execute(&mut *tx).await?;
                    tx.commit().await
                })
                .await
            })
            .await
            .map(|_| ())
    }

    /// Streams an encoded batch with `COPY` (one statement, committed on its own).
    async fn copy_in(&self, rows: &[u8]) -> Result<(), sqlx::Error> {
        let statement = format!(
            "COPY acteon_audit ({}) FROM STDIN (FORMAT binary)",
            pg_copy::COLUMNS
        );
        let mut copy = self.pool.copy_in_raw(&statement).await?;
        copy.send(rows).await?;
        copy.finish().await.map(|_| ())
    }

    /// `f` bounded by the operation timeout: `Err(None)` when it took longer.
    async fn bounded_raw<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, Option<sqlx::Error>> {
        match tokio::time::timeout(self.op_timeout, f).await {
            Ok(r) => r.map_err(Some),
            Err(_) => Err(None),
        }
    }

    fn timed_out(&self, what: &str) -> AuditError {
        AuditError::Unavailable(format!("{what}: no answer within {:?}", self.op_timeout))
    }

    /// The batch as one `INSERT … SELECT FROM UNNEST … ON CONFLICT (id) DO NOTHING`.
    async fn insert_batch(&self, records: &[AuditRecord]) -> Result<(), AuditError> {
        // Columns borrowed from the records: nothing is copied but the JSON texts.
        let col = |f: fn(&AuditRecord) -> &str| records.iter().map(f).collect::<Vec<&str>>();
        let opt = |f: fn(&AuditRecord) -> Option<&str>| {
            records.iter().map(f).collect::<Vec<Option<&str>>>()
        };
        let id = col(|r| &r.id);
        let action_id = col(|r| &r.action_id);
        let namespace = col(|r| &r.namespace);
        let tenant = col(|r| &r.tenant);
        let provider = col(|r| &r.provider);
        let action_type = col(|r| &r.action_type);
        let verdict = col(|r| &r.verdict);
        let outcome = col(|r| &r.outcome);
        let source = col(|r| &r.source);
        let rule = opt(|r| r.matched_rule.as_deref());
        let error = opt(|r| r.error.as_deref());
        let caller = opt(|r| r.caller.as_deref());
        let payload: Vec<Option<String>> = records
            .iter()
            .map(|r| r.payload.as_ref().map(|p| p.to_string()))
            .collect();
        let at: Vec<i64> = records
            .iter()
            .map(|r| r.dispatched_at.timestamp_micros())
            .collect();
        let duration: Vec<i64> = records
            .iter()
            .map(|r| i64::try_from(r.duration_ms).unwrap_or(i64::MAX))
            .collect();
        let metadata: Vec<String> = records
            .iter()
            .map(|r| serde_json::to_string(&r.metadata).unwrap_or_else(|_| "{}".into()))
            .collect();
        let sql = format!(
            "INSERT INTO acteon_audit (id, action_id, namespace, tenant, provider, action_type, \
               verdict, matched_rule, outcome, error, caller, source, dispatched_at, duration_ms, \
               payload, metadata) \
             SELECT u.id::uuid, u.action_id, u.namespace, u.tenant, u.provider, u.action_type, \
               u.verdict, u.matched_rule, u.outcome, u.error, u.caller, u.source, {}, u.duration_ms, \
               u.payload::jsonb, u.metadata::jsonb \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
               $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], \
               $13::int8[], $14::int8[], $15::text[], $16::text[]) \
               AS u(id, action_id, namespace, tenant, provider, action_type, verdict, matched_rule, \
                    outcome, error, caller, source, at_us, duration_ms, payload, metadata) \
             ON CONFLICT (id) DO NOTHING",
            micros_sql("u.at_us")
        );
        // Only constants are formatted into the statements of this file; values are bound.
        let query = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .bind(action_id)
            .bind(namespace)
            .bind(tenant)
            .bind(provider)
            .bind(action_type)
            .bind(verdict)
            .bind(rule)
            .bind(outcome)
            .bind(error)
            .bind(caller)
            .bind(source)
            .bind(at)
            .bind(duration)
            .bind(payload)
            .bind(metadata);
        self.bounded("write audit batch", query.execute(&self.pool))
            .await
            .map(|_| ())
    }

    /// Whole-table count (tests and the bench).
    pub async fn count(&self) -> Result<i64, AuditError> {
        self.ensure().await?;
        self.bounded(
            "count",
            sqlx::query_scalar("SELECT count(*) FROM acteon_audit").fetch_one(&self.pool),
        )
        .await
    }
}

fn record_of(row: &PgRow) -> Result<AuditRecord, sqlx::Error> {
    let at_us: i64 = row.try_get("at_us")?;
    let payload: Option<String> = row.try_get("payload")?;
    let metadata: Option<String> = row.try_get("metadata")?;
    let duration: i64 = row.try_get("duration_ms")?;
    Ok(AuditRecord {
        id: row.try_get("id")?,
        action_id: row.try_get("action_id")?,
        namespace: row.try_get("namespace")?,
        tenant: row.try_get("tenant")?,
        provider: row.try_get("provider")?,
        action_type: row.try_get("action_type")?,
        verdict: row.try_get("verdict")?,
        matched_rule: row.try_get("matched_rule")?,
        outcome: row.try_get("outcome")?,
        error: row.try_get("error")?,
        caller: row.try_get("caller")?,
        source: row.try_get("source")?,
        dispatched_at: DateTime::from_timestamp_micros(at_us).unwrap_or_default(),
        duration_ms: u64::try_from(duration).unwrap_or(0),
        payload: payload.and_then(|p| serde_json::from_str(&p).ok()),
        metadata: metadata
            .and_then(|m| serde_json::from_str(&m).ok())
            .unwrap_or_default(),
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

fn micros_sql(column: &str) -> String {
    format!("'epoch'::timestamptz + {column} * interval '1 microsecond'")
}

#[async_trait::async_trait]
impl AuditStore for PostgresAuditStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn shared(&self) -> bool {
        true
    }

    /// `COPY` first (the cheap path); a batch that meets rows already stored (a retry of a
    /// batch whose commit was not seen) or holds a non-UUID id goes through the `INSERT`,
    /// which skips stored ids and names bad values.
    #[tracing::instrument(level = "debug", name = "audit.postgres.write", skip_all, fields(rows = records.len()))]
    async fn write_batch(&self, records: &[AuditRecord]) -> Result<(), AuditError> {
        if records.is_empty() {
            return Ok(());
        }
        self.ensure().await?;
        let Some(rows) = pg_copy::encode(records) else {
            return self.insert_batch(records).await;
        };
        match self.bounded_raw(self.copy_in(&rows)).await {
            Ok(()) => Ok(()),
            Err(Some(e)) if is_unique_violation(&e) => self.insert_batch(records).await,
            Err(Some(e)) => Err(self.err("copy audit batch", &e)),
            Err(None) => Err(self.timed_out("copy audit batch")),
        }
    }

    #[tracing::instrument(level = "debug", name = "audit.postgres.query", skip_all)]
    async fn query(&self, q: &AuditQuery) -> Result<AuditPage, AuditError> {
        self.ensure().await?;
        let limit = q.limit.clamp(1, MAX_LIMIT);
        let mut b: QueryBuilder<Postgres> =
            QueryBuilder::new(format!("SELECT {COLUMNS} FROM acteon_audit WHERE true"));
        for (column, value) in [
            ("namespace", &q.namespace),
            ("tenant", &q.tenant),
            ("provider", &q.provider),
            ("action_type", &q.action_type),
            ("outcome", &q.outcome),
            ("matched_rule", &q.matched_rule),
            ("caller", &q.caller),
        ] {
            if let Some(v) = value {
                // Column names are the constants above; values are always bound.
                b.push(format!(" AND {column} = "));
                b.push_bind(v.clone());
            }
        }
        let time = |b: &mut QueryBuilder<Postgres>, at: DateTime<Utc>| {
            b.push("('epoch'::timestamptz + ");
            b.push_bind(at.timestamp_micros());
            b.push(" * interval '1 microsecond')");
        };
        if let Some(from) = q.from {
            b.push(" AND dispatched_at >= ");
            time(&mut b, from);
        }
        if let Some(to) = q.to {
            b.push(" AND dispatched_at < ");
            time(&mut b, to);
        }
        if let Some(c) = &q.cursor {
            b.push(" AND (dispatched_at, id) < (");
            time(&mut b, c.at);
            b.push(", ");
            b.push_bind(c.id.clone());
            b.push("::uuid)");
        }
        b.push(" ORDER BY dispatched_at DESC, id DESC LIMIT ");
        b.push_bind((limit + 1) as i64);
        let rows = self
            .bounded("query audit", b.build().fetch_all(&self.pool))
            .await?;
        let records = rows
            .iter()
            .map(record_of)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err("read audit row", &e))?;
        Ok(AuditPage::of(records, limit))
    }

    async fn get(&self, action_id: &str) -> Result<Vec<AuditRecord>, AuditError> {
        self.ensure().await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM acteon_audit WHERE action_id = $1 \
             ORDER BY dispatched_at DESC, id DESC LIMIT $2"
        );
        let rows = self
            .bounded(
                "get audit",
                sqlx::query(AssertSqlSafe(sql))
                    .bind(action_id)
                    .bind(MAX_PER_ACTION as i64)
                    .fetch_all(&self.pool),
            )
            .await?;
        rows.iter()
            .map(record_of)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err("read audit row", &e))
    }

    #[tracing::instrument(level = "debug", name = "audit.postgres.sweep", skip_all)]
    async fn sweep(&self, now: DateTime<Utc>, retention: &Retention) -> Result<u64, AuditError> {
        self.ensure().await?;
        let overridden: Vec<String> = retention
            .namespaces
            .iter()
            .map(|(ns, _)| ns.clone())
            .collect();
        let mut deleted = 0u64;
        // Default retention, namespaces with an override excepted; then each override.
        let default_cut = (now
            - chrono::Duration::from_std(retention.default).unwrap_or(chrono::Duration::MAX))
        .timestamp_micros();
        let mut scopes: Vec<(Option<String>, i64)> = vec![(None, default_cut)];
        for (ns, _) in &retention.namespaces {
            scopes.push((
                Some(ns.clone()),
                retention.cutoff(ns, now).timestamp_micros(),
            ));
        }
        for (ns, cut) in scopes {
            for _ in 0..SWEEP_ROUNDS {
                let query = match &ns {
                    None => sqlx::query(AssertSqlSafe(format!(
                        "DELETE FROM acteon_audit WHERE id IN (SELECT id FROM acteon_audit \
                         WHERE dispatched_at < {} AND NOT (namespace = ANY($2)) LIMIT $3)",
                        micros_sql("$1")
                    )))
                    .bind(cut)
                    .bind(overridden.clone())
                    .bind(SWEEP_BATCH),
                    Some(ns) => sqlx::query(AssertSqlSafe(format!(
                        "DELETE FROM acteon_audit WHERE id IN (SELECT id FROM acteon_audit \
                         WHERE namespace = $2 AND dispatched_at < {} LIMIT $3)",
                        micros_sql("$1")
                    )))
                    .bind(cut)
                    .bind(ns.clone())
                    .bind(SWEEP_BATCH),
                };
                let n = self
                    .bounded("sweep audit", query.execute(&self.pool))
                    .await?
                    .rows_affected();
                deleted += n;
                if n < SWEEP_BATCH as u64 {
                    break;
                }
            }
        }
        Ok(deleted)
    }
}
