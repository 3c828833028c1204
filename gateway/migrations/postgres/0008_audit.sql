-- The audit trail (see gateway/src/audit/): one row per dispatch and background delivery.
-- Written in batches by one task per gateway; read by `/v1/audit` with keyset paging on
-- (dispatched_at, id), newest first; deleted in bounded batches by the retention sweeper.
--
-- Idempotent (IF NOT EXISTS): a gateway whose state is on Redis applies this same file to
-- the database of `--audit-postgres-url`, outside the migration table.

CREATE TABLE IF NOT EXISTS acteon_audit (
    id            uuid        PRIMARY KEY,
    action_id     text        NOT NULL,
    namespace     text        NOT NULL,
    tenant        text        NOT NULL,
    provider      text        NOT NULL,
    action_type   text        NOT NULL,
    verdict       text        NOT NULL,
    matched_rule  text,
    outcome       text        NOT NULL,
    error         text,
    caller        text,
    source        text        NOT NULL,
    dispatched_at timestamptz NOT NULL,
    duration_ms   bigint      NOT NULL,
    payload       jsonb,
    metadata      jsonb       NOT NULL DEFAULT '{}'
);

-- Few indexes on purpose: the table is written far more than it is read, and every index
-- costs each insert (measured: 6 indexes → 3 made bulk inserts ~30% cheaper). Queries scan
-- one of these newest-first and filter the rest (tenant, outcome, caller, …) as they go, so
-- a page of frequent matches reads little; a rare filter across a whole namespace is slower.
-- Unfiltered pages, time ranges and the default-retention sweep.
CREATE INDEX IF NOT EXISTS acteon_audit_time ON acteon_audit (dispatched_at DESC, id DESC);
-- `GET /v1/audit/{action_id}` and replays.
CREATE INDEX IF NOT EXISTS acteon_audit_action ON acteon_audit (action_id);
-- The usual filter (a namespace, with or without more), and per-namespace retention.
CREATE INDEX IF NOT EXISTS acteon_audit_ns_time
    ON acteon_audit (namespace, dispatched_at DESC, id DESC);
