-- Parked actions: groups, state-machine events and their active sets, made in the gates'
-- atomic call (see gateway/src/state/postgres.rs and gateway/src/state/defer.rs).
-- Additive: replicas of the previous release keep calling the functions of 0001/0002.
--
-- Keys are compared byte by byte (COLLATE "C"), so listing by a key prefix is an index
-- range [prefix, next string after the prefix), whatever the database's collation.
-- Writes of one group (or one event) are serialized by a transaction-scoped advisory lock
-- on (key, 11) for groups and (key, 12) for events; timers are rows of acteon_timers.

-- A group of events waiting for one notification. It is armed while notify_at is set and
-- its flush timer (timer_id) exists; an armed group never expires, an idle one expires at
-- expires_at (idle_ttl after its last append or its last flush).
CREATE TABLE acteon_groups (
    key           text COLLATE "C" PRIMARY KEY,
    group_id      text    NOT NULL,
    meta          bytea   NOT NULL,
    timer_id      text    NOT NULL,
    notify_at     bigint,
    -- The newest kept pending events, oldest first, and how many arrived (kept or not).
    pending       bytea[] NOT NULL,
    pending_count bigint  NOT NULL,
    -- The batch being sent (between group_flush_begin and group_flush_end).
    flight        bytea[],
    flight_count  bigint,
    flight_last   bigint,
    -- The last notification sent, kept to be repeated.
    last_batch    bytea[],
    last_count    bigint,
    last_last     bigint,
    last_flush_ms bigint,
    last_event_ms bigint  NOT NULL,
    idle_ttl      bigint  NOT NULL,
    expires_at    bigint  NOT NULL
);
CREATE INDEX acteon_groups_expires ON acteon_groups (expires_at);

-- A state-machine event; it reads as absent once expires_at has passed.
CREATE TABLE acteon_events (
    key         text COLLATE "C" PRIMARY KEY,
    fingerprint text   NOT NULL,
    state       text   NOT NULL,
    record      bytea  NOT NULL,
    changed_ms  bigint NOT NULL,
    timeout_id  text,
    timeout_due bigint,
    expires_at  bigint NOT NULL
);
CREATE INDEX acteon_events_expires ON acteon_events (expires_at);

-- Members (event fingerprints) of active sets, each until its event expires.
CREATE TABLE acteon_set_members (
    set_key    text   NOT NULL,
    member     text   NOT NULL,
    expires_at bigint NOT NULL,
    PRIMARY KEY (set_key, member)
);
CREATE INDEX acteon_set_members_expires ON acteon_set_members (expires_at);

-- Registers or replaces a timer (a claim on the old one ends).
CREATE FUNCTION acteon_timer_put(timer_id text, due bigint, timer_payload bytea) RETURNS void
LANGUAGE sql VOLATILE
AS $$
    INSERT INTO acteon_timers (id, due_ms, payload) VALUES (timer_id, due, timer_payload)
    ON CONFLICT (id) DO UPDATE
    SET due_ms = EXCLUDED.due_ms, payload = EXCLUDED.payload, claim = NULL, lease_until = NULL
$$;

CREATE FUNCTION acteon_group_armed(g acteon_groups) RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT g.notify_at IS NOT NULL
       AND EXISTS (SELECT 1 FROM acteon_timers t WHERE t.id = g.timer_id)
$$;

CREATE FUNCTION acteon_group_live(g acteon_groups, now_ms bigint) RETURNS boolean
LANGUAGE sql STABLE
AS $$ SELECT g.expires_at > now_ms OR acteon_group_armed(g) $$;

-- Appends one event (a GroupAppend as JSON, bytes hex-encoded; see postgres.rs) to its
-- group. The caller holds the group's advisory lock.
CREATE FUNCTION acteon_group_append(
    d jsonb,
    now_ms bigint,
    OUT out_group_id  text,
    OUT out_size      bigint,
    OUT out_notify_at bigint
)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    g     acteon_groups;
    k     text := d->>'key';
    keep  integer := greatest((d->>'max')::integer, 1);
    idle  bigint := (d->>'idle')::bigint;
    armed boolean := false;
BEGIN
    SELECT * INTO g FROM acteon_groups WHERE key = k;
    IF FOUND THEN
        armed := acteon_group_armed(g);
    END IF;
    IF NOT FOUND OR NOT (armed OR g.expires_at > now_ms) THEN
        -- Absent or expired: a new group starts.
        g.key := k;
        g.group_id := d->>'gid';
        g.meta := decode(d->>'meta', 'hex');
        g.notify_at := NULL;
        g.pending := '{}';
        g.pending_count := 0;
        g.flight := NULL;
        g.flight_count := NULL;
        g.flight_last := NULL;
        g.last_batch := NULL;
        g.last_count := NULL;
        g.last_last := NULL;
        g.last_flush_ms := NULL;
    END IF;
    IF NOT armed THEN
        -- New, flushed since, or its timer vanished: the next notification waits for
        -- `wait` (new) or for `interval` after the last one.
        g.notify_at := CASE WHEN g.last_flush_ms IS NULL
                            THEN now_ms + (d->>'wait')::bigint
                            ELSE greatest(now_ms, g.last_flush_ms + (d->>'interval')::bigint) END;
        g.timer_id := d->>'tid';
        PERFORM acteon_timer_put(g.timer_id, g.notify_at, decode(d->>'tp', 'hex'));
    END IF;
    g.pending := array_append(g.pending, decode(d->>'ev', 'hex'));
    IF cardinality(g.pending) > keep THEN
        g.pending := g.pending[cardinality(g.pending) - keep + 1:];
    END IF;
    g.pending_count := g.pending_count + 1;
    g.last_event_ms := now_ms;
    g.idle_ttl := idle;
    g.expires_at := now_ms + idle;
    -- Every column: a group that started anew replaces the expired one.
    UPDATE acteon_groups AS t SET
        group_id = g.group_id, meta = g.meta, timer_id = g.timer_id, notify_at = g.notify_at,
        pending = g.pending, pending_count = g.pending_count, flight = g.flight,
        flight_count = g.flight_count, flight_last = g.flight_last, last_batch = g.last_batch,
        last_count = g.last_count, last_last = g.last_last, last_flush_ms = g.last_flush_ms,
        last_event_ms = g.last_event_ms, idle_ttl = g.idle_ttl, expires_at = g.expires_at
    WHERE t.key = k;
    IF NOT FOUND THEN
        INSERT INTO acteon_groups SELECT (g).*;
    END IF;
    out_group_id := g.group_id;
    out_size := g.pending_count;
    out_notify_at := g.notify_at;
END;
$$;

-- Moves one state-machine event (a Transition as JSON; see postgres.rs and defer.rs).
-- Returns r_kind 2 = changed (r_state = the previous state), 3 = unchanged, 4 = refused
-- (r_state = the current state). The caller holds the event's advisory lock.
CREATE FUNCTION acteon_transition(
    d jsonb,
    now_ms bigint,
    OUT r_kind  smallint,
    OUT r_state text
)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    e        acteon_events;
    k        text := d->>'key';
    fp       text := d->>'fp';
    target   text := d->>'to';
    required text := d->>'req';
    timeout  jsonb := d->'timeout';
    live     boolean;
    expiry   bigint;
    set_name text;
BEGIN
    SELECT * INTO e FROM acteon_events WHERE key = k;
    live := FOUND AND e.expires_at > now_ms;
    r_state := CASE WHEN live THEN e.state ELSE d->>'initial' END;
    IF target IS NULL OR target = r_state THEN
        r_kind := 3;
        RETURN;
    END IF;
    IF required IS NOT NULL AND (NOT live OR e.timeout_id IS DISTINCT FROM required) THEN
        r_kind := 3;
        RETURN;
    END IF;
    IF NOT ((d->'from') ? r_state) THEN
        r_kind := 4;
        RETURN;
    END IF;
    -- The timer that fired (`required`) is its claimant's to complete.
    IF live AND e.timeout_id IS NOT NULL AND required IS NULL THEN
        DELETE FROM acteon_timers WHERE id = e.timeout_id;
    END IF;
    IF jsonb_typeof(timeout) = 'object' THEN
        PERFORM acteon_timer_put(timeout->>'id', (timeout->>'due')::bigint,
                                 decode(timeout->>'p', 'hex'));
    ELSE
        timeout := NULL;
    END IF;
    expiry := now_ms + (d->>'ttl')::bigint;
    INSERT INTO acteon_events AS t
        (key, fingerprint, state, record, changed_ms, timeout_id, timeout_due, expires_at)
    VALUES (k, fp, target, decode(d->>'record', 'hex'), now_ms, timeout->>'id',
            (timeout->>'due')::bigint, expiry)
    ON CONFLICT (key) DO UPDATE SET
        fingerprint = EXCLUDED.fingerprint, state = EXCLUDED.state, record = EXCLUDED.record,
        changed_ms = EXCLUDED.changed_ms, timeout_id = EXCLUDED.timeout_id,
        timeout_due = EXCLUDED.timeout_due, expires_at = EXCLUDED.expires_at;
    FOR set_name IN SELECT jsonb_array_elements_text(d->'sets') LOOP
        IF (d->>'terminal')::boolean THEN
            DELETE FROM acteon_set_members m WHERE m.set_key = set_name AND m.member = fp;
        ELSE
            INSERT INTO acteon_set_members AS m (set_key, member, expires_at)
            VALUES (set_name, fp, expiry)
            ON CONFLICT ON CONSTRAINT acteon_set_members_pkey
            DO UPDATE SET expires_at = EXCLUDED.expires_at;
        END IF;
    END LOOP;
    r_kind := 2;
END;
$$;

-- The gates of acteon_apply_gates (applied when `apply`, else only checked as by
-- acteon_check_gates) and, only if every gate passes, the deferrals, in one transaction.
-- `deferrals` is a JSON array of {"k": "t" | "g" | "s", …} (see postgres.rs). Returns the
-- first gate that stops (as acteon_apply_gates; then nothing is written), else
-- stop_index = -1 and one result per deferral in the parallel arrays res_*:
--   res_kind 0 = timer; 1 = grouped (res_text = group id, res_a = size, res_b = notify_at);
--   2 / 3 / 4 = changed / unchanged / refused (res_text = previous or current state).
-- The advisory locks of the groups and events are taken after the gates' locks, all at
-- once in ascending order, so two calls never wait on each other in a cycle.
CREATE FUNCTION acteon_run_gates_and_defer(
    kinds      smallint[],
    keys       text[],
    spans      bigint[],
    limits     bigint[],
    tokens     text[],
    apply      boolean,
    deferrals  jsonb,
    OUT stop_index integer,
    OUT stop_kind  smallint,
    OUT stop_a     bigint,
    OUT stop_b     bigint,
    OUT res_kind   smallint[],
    OUT res_text   text[],
    OUT res_a      bigint[],
    OUT res_b      bigint[]
)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    d       jsonb;
    lock_id bigint;
    now_ms  bigint;
    g_id    text;
    g_size  bigint;
    g_at    bigint;
    t_kind  smallint;
    t_state text;
BEGIN
    IF apply THEN
        SELECT g.stop_index, g.stop_kind, g.stop_a, g.stop_b
        INTO stop_index, stop_kind, stop_a, stop_b
        FROM acteon_apply_gates(kinds, keys, spans, limits, tokens) g;
    ELSE
        SELECT g.stop_index, g.stop_kind, g.stop_a, g.stop_b
        INTO stop_index, stop_kind, stop_a, stop_b
        FROM acteon_check_gates(kinds, keys, spans, limits, tokens) g;
    END IF;
    IF stop_index >= 0 THEN
        RETURN;
    END IF;

    FOR lock_id IN
        SELECT DISTINCT hashtextextended(x->>'key', CASE x->>'k' WHEN 'g' THEN 11 ELSE 12 END)
        FROM jsonb_array_elements(deferrals) AS x
        WHERE x->>'k' IN ('g', 's')
        ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(lock_id);
    END LOOP;
    -- Read the clock once the locks are held: writes of one key see increasing times.
    now_ms := acteon_now_ms();

    res_kind := '{}';
    res_text := '{}';
    res_a := '{}';
    res_b := '{}';
    FOR d IN SELECT x FROM jsonb_array_elements(deferrals) AS x LOOP
        IF d->>'k' = 't' THEN
            PERFORM acteon_timer_put(d->>'id', (d->>'due')::bigint, decode(d->>'p', 'hex'));
            res_kind := array_append(res_kind, 0::smallint);
            res_text := array_append(res_text, NULL::text);
            res_a := array_append(res_a, NULL::bigint);
            res_b := array_append(res_b, NULL::bigint);
        ELSIF d->>'k' = 'g' THEN
            SELECT a.out_group_id, a.out_size, a.out_notify_at INTO g_id, g_size, g_at
            FROM acteon_group_append(d, now_ms) a;
            res_kind := array_append(res_kind, 1::smallint);
            res_text := array_append(res_text, g_id);
            res_a := array_append(res_a, g_size);
            res_b := array_append(res_b, g_at);
        ELSE
            SELECT t.r_kind, t.r_state INTO t_kind, t_state FROM acteon_transition(d, now_ms) t;
            res_kind := array_append(res_kind, t_kind);
            res_text := array_append(res_text, t_state);
            res_a := array_append(res_a, NULL::bigint);
            res_b := array_append(res_b, NULL::bigint);
        END IF;
    END LOOP;
END;
$$;

-- Starts a group's notification (see StateStore::group_flush_begin): the batch in flight,
-- else the pending events (moved into flight), else the last notification to repeat
-- (b_repeat), else nothing (every column NULL).
CREATE FUNCTION acteon_group_flush_begin(
    group_key text,
    OUT b_group_id   text,
    OUT b_meta       bytea,
    OUT b_events     bytea[],
    OUT b_count      bigint,
    OUT b_repeat     boolean,
    OUT b_last_event bigint
)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    g acteon_groups;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(group_key, 11));
    SELECT * INTO g FROM acteon_groups WHERE key = group_key;
    IF NOT FOUND OR NOT acteon_group_live(g, acteon_now_ms()) THEN
        RETURN;
    END IF;
    IF g.flight IS NOT NULL THEN
        b_events := g.flight;
        b_count := g.flight_count;
        b_repeat := false;
        b_last_event := g.flight_last;
    ELSIF g.pending_count > 0 THEN
        UPDATE acteon_groups
        SET flight = pending, flight_count = pending_count, flight_last = last_event_ms,
            pending = '{}', pending_count = 0
        WHERE key = group_key;
        b_events := g.pending;
        b_count := g.pending_count;
        b_repeat := false;
        b_last_event := g.last_event_ms;
    ELSIF g.last_batch IS NOT NULL THEN
        b_events := g.last_batch;
        b_count := g.last_count;
        b_repeat := true;
        b_last_event := g.last_last;
    ELSE
        RETURN;
    END IF;
    b_group_id := g.group_id;
    b_meta := g.meta;
END;
$$;

-- Ends a group's notification under the claim of its timer (see
-- StateStore::group_flush_end). False, with nothing changed, when the claim was lost.
CREATE FUNCTION acteon_group_flush_end(
    group_key   text,
    flush_timer text,
    held_claim  text,
    interval_ms bigint,
    repeat_at   bigint
) RETURNS boolean
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    g       acteon_groups;
    now_ms  bigint;
    next_at bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(group_key, 11));
    PERFORM 1 FROM acteon_timers t WHERE t.id = flush_timer AND t.claim = held_claim FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    now_ms := acteon_now_ms();
    SELECT * INTO g FROM acteon_groups WHERE key = group_key;
    IF NOT FOUND OR NOT acteon_group_live(g, now_ms) THEN
        -- No group behind the timer: nothing to send ever again.
        DELETE FROM acteon_timers WHERE id = flush_timer;
        RETURN true;
    END IF;
    IF repeat_at IS NULL THEN
        g.last_batch := NULL;
        g.last_count := NULL;
        g.last_last := NULL;
    ELSIF g.flight IS NOT NULL THEN
        g.last_batch := g.flight;
        g.last_count := g.flight_count;
        g.last_last := g.flight_last;
    END IF;
    next_at := CASE WHEN g.pending_count > 0 THEN now_ms + interval_ms ELSE repeat_at END;
    IF next_at IS NOT NULL THEN
        UPDATE acteon_timers SET due_ms = next_at, claim = NULL, lease_until = NULL
        WHERE id = flush_timer;
    ELSE
        -- Idle: the group expires idle_ttl after this flush unless an event arrives.
        DELETE FROM acteon_timers WHERE id = flush_timer;
        g.expires_at := now_ms + g.idle_ttl;
    END IF;
    UPDATE acteon_groups
    SET flight = NULL, flight_count = NULL, flight_last = NULL,
        last_batch = g.last_batch, last_count = g.last_count, last_last = g.last_last,
        last_flush_ms = now_ms, timer_id = flush_timer, notify_at = next_at,
        expires_at = g.expires_at
    WHERE key = group_key;
    RETURN true;
END;
$$;

-- Deletes up to `batch` expired rows of each parked table (as acteon_sweep does for the
-- others): idle groups past their expiry, events past theirs, members of active sets.
CREATE FUNCTION acteon_sweep_parked(batch integer) RETURNS integer
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    now_ms bigint := acteon_now_ms();
    n      integer;
    most   integer := 0;
BEGIN
    DELETE FROM acteon_groups
    WHERE ctid = ANY (ARRAY(
            SELECT g.ctid FROM acteon_groups g
            WHERE g.expires_at <= now_ms AND NOT acteon_group_armed(g)
            LIMIT batch FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS n = ROW_COUNT;
    most := greatest(most, n);

    DELETE FROM acteon_events
    WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM acteon_events WHERE expires_at <= now_ms
            LIMIT batch FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS n = ROW_COUNT;
    most := greatest(most, n);

    DELETE FROM acteon_set_members
    WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM acteon_set_members WHERE expires_at <= now_ms
            LIMIT batch FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS n = ROW_COUNT;
    most := greatest(most, n);

    RETURN most;
END;
$$;
