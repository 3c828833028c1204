-- Repeating groups (`repeatIntervalSeconds`; see GroupAppend in gateway/src/state/defer.rs):
-- a group remembers the fingerprints of its events; a known one arriving again is a refresh
-- (not pending), and the last notification is repeated only if a refresh arrived since the
-- last flush ended (`refreshed`, cleared by acteon_group_flush_end). A new event brings forward a flush timer that waits for a repeat.
-- Additive: appends without "fp"/"rep" (the previous release) behave as before.

ALTER TABLE acteon_groups
    ADD COLUMN seen         text[] NOT NULL DEFAULT '{}',
    ADD COLUMN refreshed    boolean NOT NULL DEFAULT false;

-- Most fingerprints a repeating group remembers (MAX_GROUP_FINGERPRINTS).
CREATE OR REPLACE FUNCTION acteon_group_max_fingerprints() RETURNS integer
LANGUAGE sql IMMUTABLE
AS $$ SELECT 1000 $$;

CREATE OR REPLACE FUNCTION acteon_group_append(
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
    fp    text := d->>'fp';
    armed boolean := false;
    known boolean := false;
    due   bigint;
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
        g.seen := '{}';
        g.refreshed := false;
        armed := false;
    END IF;
    IF fp IS NOT NULL THEN
        known := fp = ANY (g.seen);
        IF NOT known AND cardinality(g.seen) < acteon_group_max_fingerprints() THEN
            g.seen := array_append(g.seen, fp);
        END IF;
    END IF;
    IF known THEN
        -- A repeating group's known event is a refresh: the group is still active.
        g.refreshed := true;
        IF NOT armed THEN
            g.notify_at := CASE WHEN g.last_flush_ms IS NULL
                                THEN now_ms + (d->>'wait')::bigint
                                ELSE greatest(now_ms, g.last_flush_ms + (d->>'rep')::bigint) END;
            g.timer_id := d->>'tid';
            PERFORM acteon_timer_put(g.timer_id, g.notify_at, decode(d->>'tp', 'hex'));
        END IF;
    ELSE
        due := CASE WHEN g.last_flush_ms IS NULL
                    THEN now_ms + (d->>'wait')::bigint
                    ELSE greatest(now_ms, g.last_flush_ms + (d->>'interval')::bigint) END;
        IF NOT armed THEN
            -- New, flushed since, or its timer vanished.
            g.notify_at := due;
            g.timer_id := d->>'tid';
            PERFORM acteon_timer_put(g.timer_id, g.notify_at, decode(d->>'tp', 'hex'));
        ELSIF g.last_flush_ms IS NOT NULL AND g.notify_at > due AND g.flight IS NULL THEN
            -- Waiting for a repeat: news go out after `interval` (unless a worker holds it).
            UPDATE acteon_timers SET due_ms = due WHERE id = g.timer_id AND claim IS NULL;
            IF FOUND THEN
                g.notify_at := due;
            END IF;
        END IF;
        g.pending := array_append(g.pending, decode(d->>'ev', 'hex'));
        IF cardinality(g.pending) > keep THEN
            g.pending := g.pending[cardinality(g.pending) - keep + 1:];
        END IF;
        g.pending_count := g.pending_count + 1;
    END IF;
    g.last_event_ms := now_ms;
    g.idle_ttl := idle;
    g.expires_at := now_ms + idle;
    -- Every column: a group that started anew replaces the expired one.
    UPDATE acteon_groups AS t SET
        group_id = g.group_id, meta = g.meta, timer_id = g.timer_id, notify_at = g.notify_at,
        pending = g.pending, pending_count = g.pending_count, flight = g.flight,
        flight_count = g.flight_count, flight_last = g.flight_last, last_batch = g.last_batch,
        last_count = g.last_count, last_last = g.last_last, last_flush_ms = g.last_flush_ms,
        last_event_ms = g.last_event_ms, idle_ttl = g.idle_ttl, expires_at = g.expires_at,
        seen = g.seen, refreshed = g.refreshed
    WHERE t.key = k;
    IF NOT FOUND THEN
        INSERT INTO acteon_groups SELECT (g).*;
    END IF;
    out_group_id := g.group_id;
    out_size := g.pending_count;
    out_notify_at := g.notify_at;
END;
$$;

-- As in 0003, except that the last notification is repeated only when a refresh arrived
-- since the last flush (a group not repeating has no last notification).
CREATE OR REPLACE FUNCTION acteon_group_flush_begin(
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
    ELSIF g.last_batch IS NOT NULL AND g.refreshed THEN
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

-- As in 0003, and a flush that ends clears `refreshed`.
CREATE OR REPLACE FUNCTION acteon_group_flush_end(
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
        last_flush_ms = now_ms, refreshed = false, timer_id = flush_timer, notify_at = next_at,
        expires_at = g.expires_at
    WHERE key = group_key;
    RETURN true;
END;
$$;
