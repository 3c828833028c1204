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

-- Unfiltered pages and the default-retention sweep.
CREATE INDEX IF NOT EXISTS acteon_audit_time ON acteon_audit (dispatched_at DESC, id DESC);
-- `GET /v1/audit/{action_id}` and replays.
CREATE INDEX IF NOT EXISTS acteon_audit_action ON acteon_audit (action_id);
-- The usual filter (a namespace, often a tenant), and per-namespace retention.
CREATE INDEX IF NOT EXISTS acteon_audit_ns_time
    ON acteon_audit (namespace, tenant, dispatched_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS acteon_audit_ns_outcome_time
    ON acteon_audit (namespace, outcome, dispatched_at DESC, id DESC);
-- Filters across namespaces that are selective on their own.
CREATE INDEX IF NOT EXISTS acteon_audit_caller_time
    ON acteon_audit (caller, dispatched_at DESC, id DESC) WHERE caller IS NOT NULL;
CREATE INDEX IF NOT EXISTS acteon_audit_rule_time
    ON acteon_audit (matched_rule, dispatched_at DESC, id DESC) WHERE matched_rule IS NOT NULL;
