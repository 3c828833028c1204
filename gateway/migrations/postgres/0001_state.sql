-- Shared state of the Acteon gateway (see gateway/src/state/postgres.rs).
--
-- Everything lives in the schema of one installation: the gateway connects with
-- `search_path` set to that schema, so the names below are unqualified.
-- All times are Unix milliseconds read from the database clock (`acteon_now_ms()`), so that
-- every replica takes its time decisions on one clock.
-- Expired rows are removed by `acteon_sweep` in bounded batches.

CREATE FUNCTION acteon_now_ms() RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL SAFE
AS $$ SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

-- Dedup marks: at most one live mark per key, owned by `token`.
CREATE TABLE acteon_dedup (
    key        text   PRIMARY KEY,
    token      text   NOT NULL,
    expires_at bigint NOT NULL
);
CREATE INDEX acteon_dedup_expires ON acteon_dedup (expires_at);

-- Sliding windows, kept as a ring of the newest `size` passes per key (size = the limit).
-- The head holds the number of passes ever recorded (`seq`); pass number j sits in slot
-- j % size. The pass that must leave the window before another may pass is the one
-- `limit` places from the newest, which is exactly the one in slot seq % size: checking a
-- window is two index lookups whatever the limit, and a key never holds more than `limit`
-- rows. A limit change re-lays the live passes into a ring of the new size.
-- expires_at = at_ms + window (slots) and the newest pass + window (head), for the sweeper.
CREATE TABLE acteon_throttle_head (
    key        text   PRIMARY KEY,
    seq        bigint NOT NULL,
    size       bigint NOT NULL,
    expires_at bigint NOT NULL
);
CREATE INDEX acteon_throttle_head_expires ON acteon_throttle_head (expires_at);

CREATE TABLE acteon_throttle (
    key        text   NOT NULL,
    slot       bigint NOT NULL,
    at_ms      bigint NOT NULL,
    expires_at bigint NOT NULL,
    PRIMARY KEY (key, slot)
);
CREATE INDEX acteon_throttle_expires ON acteon_throttle (expires_at);

-- Fixed-window quotas: one row per key for its current window [window_start, window_end),
-- windows aligned to multiples of their length since the epoch.
CREATE TABLE acteon_quota (
    key          text   PRIMARY KEY,
    window_start bigint NOT NULL,
    window_end   bigint NOT NULL,
    count        bigint NOT NULL
);
CREATE INDEX acteon_quota_end ON acteon_quota (window_end);

-- Compare-and-swap values. Versions come from one sequence, so they never repeat for a key,
-- even across delete and re-create.
CREATE SEQUENCE acteon_kv_version AS bigint;
CREATE TABLE acteon_kv (
    key        text   PRIMARY KEY,
    value      bytea  NOT NULL,
    version    bigint NOT NULL,
    expires_at bigint
);
CREATE INDEX acteon_kv_expires ON acteon_kv (expires_at) WHERE expires_at IS NOT NULL;

-- Leases held by an owner until expires_at.
CREATE TABLE acteon_locks (
    key        text   PRIMARY KEY,
    owner      text   NOT NULL,
    expires_at bigint NOT NULL
);
CREATE INDEX acteon_locks_expires ON acteon_locks (expires_at);

-- Timers: due at due_ms (the caller's clock, as given to schedule_timer); a claim holds a
-- timer until lease_until (database clock).
CREATE SEQUENCE acteon_timer_claim AS bigint;
CREATE TABLE acteon_timers (
    id          text   PRIMARY KEY,
    due_ms      bigint NOT NULL,
    payload     bytea  NOT NULL,
    claim       text,
    lease_until bigint
);
CREATE INDEX acteon_timers_due ON acteon_timers (due_ms, id);

-- Checks every gate in order and applies them all only if all pass, in one round trip.
--
-- Gate i is (kinds[i], keys[i], spans[i], limits[i], tokens[i]):
--   kind 0 = dedup    (span = TTL ms, token = owner of the mark)
--   kind 1 = throttle (span = window ms, limit)
--   kind 2 = quota    (span = window ms, limit)
-- Returns stop_index = -1 when all passed (and were applied), else the 0-based index of the
-- first gate that stops, with stop_kind = its kind and
--   throttle: stop_a = retry_after ms
--   quota:    stop_a = used, stop_b = resets_in ms.
--
-- Concurrency: transaction-scoped advisory locks on (kind, key), taken in ascending order of
-- their ids (so two calls never wait on each other in a cycle), serialize every call that
-- touches one of the same keys. Each statement of a VOLATILE PL/pgSQL function takes a fresh
-- snapshot, and a lock is released only after its holder committed, so the checks below see
-- every earlier pass.
CREATE FUNCTION acteon_apply_gates(
    kinds      smallint[],
    keys       text[],
    spans      bigint[],
    limits     bigint[],
    tokens     text[],
    OUT stop_index integer,
    OUT stop_kind  smallint,
    OUT stop_a     bigint,
    OUT stop_b     bigint
)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    n        integer := coalesce(array_length(kinds, 1), 0);
    now_ms   bigint;
    lock_id  bigint;
    w        bigint;
    start_ms bigint;
    freeing  bigint;
    used     bigint;
    head_seq  bigint;
    ring_size bigint;
    relay_at  bigint[];
    relay_exp bigint[];
BEGIN
    stop_index := -1;
    IF n = 0 THEN
        RETURN;
    END IF;

    IF n = 1 THEN
        PERFORM pg_advisory_xact_lock(hashtextextended(keys[1], kinds[1]));
    ELSE
        FOR lock_id IN
            SELECT DISTINCT hashtextextended(g.key, g.kind)
            FROM unnest(keys, kinds) AS g(key, kind)
            ORDER BY 1
        LOOP
            PERFORM pg_advisory_xact_lock(lock_id);
        END LOOP;
    END IF;

    -- Read the clock once the locks are held: calls on one key then see increasing times.
    now_ms := acteon_now_ms();

    FOR i IN 1..n LOOP
        IF kinds[i] = 0 THEN
            PERFORM 1 FROM acteon_dedup d WHERE d.key = keys[i] AND d.expires_at > now_ms;
            IF FOUND THEN
                stop_index := i - 1;
                stop_kind := 0;
                RETURN;
            END IF;
        ELSIF kinds[i] = 1 THEN
            w := spans[i];
            IF limits[i] <= 0 THEN
                -- Nothing ever passes; no pass leaving the window would free a slot.
                stop_index := i - 1;
                stop_kind := 1;
                stop_a := greatest(w, 1);
                RETURN;
            END IF;
            -- The pass `limit` places from the newest is the one whose leaving frees a
            -- slot; if it is still in the window, the window is full.
            freeing := NULL;
            SELECT h.seq, h.size INTO head_seq, ring_size
            FROM acteon_throttle_head h WHERE h.key = keys[i];
            IF NOT FOUND THEN
                NULL; -- no pass recorded
            ELSIF ring_size = limits[i] THEN
                SELECT t.at_ms INTO freeing
                FROM acteon_throttle t
                WHERE t.key = keys[i] AND t.slot = head_seq % ring_size;
            ELSE
                -- The limit changed: look among the passes of the ring of the old size.
                SELECT t.at_ms INTO freeing
                FROM acteon_throttle t
                WHERE t.key = keys[i] AND t.at_ms > now_ms - w
                ORDER BY t.at_ms DESC
                OFFSET limits[i] - 1 LIMIT 1;
            END IF;
            IF freeing > now_ms - w THEN
                stop_index := i - 1;
                stop_kind := 1;
                stop_a := freeing + w - now_ms;
                RETURN;
            END IF;
        ELSE
            w := greatest(spans[i], 1);
            start_ms := now_ms - now_ms % w;
            used := 0;
            SELECT q.count INTO used
            FROM acteon_quota q
            WHERE q.key = keys[i] AND q.window_start = start_ms;
            used := coalesce(used, 0);
            IF used >= limits[i] THEN
                stop_index := i - 1;
                stop_kind := 2;
                stop_a := used;
                stop_b := start_ms + w - now_ms;
                RETURN;
            END IF;
        END IF;
    END LOOP;

    FOR i IN 1..n LOOP
        IF kinds[i] = 0 THEN
            INSERT INTO acteon_dedup AS d (key, token, expires_at)
            VALUES (keys[i], tokens[i], now_ms + spans[i])
            ON CONFLICT (key) DO UPDATE
                SET token = EXCLUDED.token, expires_at = EXCLUDED.expires_at;
        ELSIF kinds[i] = 1 THEN
            w := spans[i];
            SELECT h.seq, h.size INTO head_seq, ring_size
            FROM acteon_throttle_head h WHERE h.key = keys[i];
            IF NOT FOUND OR ring_size <> limits[i] THEN
                -- A new key or a new limit: re-lay the newest live passes (at most limit - 1,
                -- the new pass makes limit) into slots 0, 1, … oldest first.
                SELECT array_agg(r.at_ms ORDER BY r.at_ms), array_agg(r.expires_at ORDER BY r.at_ms)
                INTO relay_at, relay_exp
                FROM (SELECT t.at_ms, t.expires_at FROM acteon_throttle t
                      WHERE t.key = keys[i] AND t.at_ms > now_ms - w
                      ORDER BY t.at_ms DESC LIMIT limits[i] - 1) r;
                DELETE FROM acteon_throttle t WHERE t.key = keys[i];
                head_seq := coalesce(array_length(relay_at, 1), 0);
                IF head_seq > 0 THEN
                    INSERT INTO acteon_throttle (key, slot, at_ms, expires_at)
                    SELECT keys[i], u.n - 1, u.at_ms, u.expires_at
                    FROM unnest(relay_at, relay_exp) WITH ORDINALITY AS u(at_ms, expires_at, n);
                END IF;
                ring_size := limits[i];
            END IF;
            INSERT INTO acteon_throttle AS t (key, slot, at_ms, expires_at)
            VALUES (keys[i], head_seq % ring_size, now_ms, now_ms + w)
            ON CONFLICT (key, slot) DO UPDATE
                SET at_ms = EXCLUDED.at_ms, expires_at = EXCLUDED.expires_at;
            INSERT INTO acteon_throttle_head AS h (key, seq, size, expires_at)
            VALUES (keys[i], head_seq + 1, ring_size, now_ms + w)
            ON CONFLICT (key) DO UPDATE
                SET seq = EXCLUDED.seq, size = EXCLUDED.size,
                    expires_at = greatest(h.expires_at, EXCLUDED.expires_at);
        ELSE
            w := greatest(spans[i], 1);
            start_ms := now_ms - now_ms % w;
            INSERT INTO acteon_quota AS q (key, window_start, window_end, count)
            VALUES (keys[i], start_ms, start_ms + w, 1)
            ON CONFLICT (key) DO UPDATE
                SET count = CASE WHEN q.window_start = EXCLUDED.window_start
                                 THEN q.count + 1 ELSE 1 END,
                    window_start = EXCLUDED.window_start,
                    window_end = EXCLUDED.window_end;
        END IF;
    END LOOP;
END;
$$;

-- Deletes up to `batch` expired rows from each table; returns the largest number deleted
-- from one table (the caller repeats while that equals `batch`). Rows are locked with
-- SKIP LOCKED, so the sweeper never waits on a row (and never takes part in a deadlock);
-- a row it skips is taken by a later sweep. FOR UPDATE checks the expiry again on the latest
-- version of a row before locking it, so a row renewed meanwhile stays; once locked, a row
-- cannot change before the DELETE (a TID scan, bounded by `batch`).
CREATE FUNCTION acteon_sweep(batch integer) RETURNS integer
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    now_ms bigint := acteon_now_ms();
    n      integer;
    most   integer := 0;
BEGIN
    DELETE FROM acteon_dedup
    WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM acteon_dedup WHERE expires_at <= now_ms
            LIMIT batch FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS n = ROW_COUNT;
    most := greatest(most, n);

    DELETE FROM acteon_throttle
    WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM acteon_throttle WHERE expires_at <= now_ms
            LIMIT batch FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS n = ROW_COUNT;
    most := greatest(most, n);

    DELETE FROM acteon_throttle_head
    WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM acteon_throttle_head WHERE expires_at <= now_ms
            LIMIT batch FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS n = ROW_COUNT;
    most := greatest(most, n);

    DELETE FROM acteon_quota
    WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM acteon_quota WHERE window_end <= now_ms
            LIMIT batch FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS n = ROW_COUNT;
    most := greatest(most, n);

    DELETE FROM acteon_kv
    WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM acteon_kv WHERE expires_at <= now_ms
            LIMIT batch FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS n = ROW_COUNT;
    most := greatest(most, n);

    DELETE FROM acteon_locks
    WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM acteon_locks WHERE expires_at <= now_ms
            LIMIT batch FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS n = ROW_COUNT;
    most := greatest(most, n);

    RETURN most;
END;
$$;
