-- Notifications of state-machine moves are registered in the move's own call (see defer.rs,
-- `Transition::notice`): a timer the worker runs, so a notification is sent at least once
-- even when the gateway that made the move dies or the provider fails.
--
-- acteon_transition as in 0004, plus `notice`: {from: [states], id, due, p}. A call without
-- it (a replica of the previous release) behaves as before. Applied migrations are never
-- edited, hence the whole function again.

CREATE OR REPLACE FUNCTION acteon_transition(
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
    notice   jsonb := d->'notice';
    stored   boolean;
    live     boolean;
    expiry   bigint;
    set_name text;
BEGIN
    SELECT * INTO e FROM acteon_events WHERE key = k;
    stored := FOUND AND e.expires_at > now_ms;
    -- An event in a terminal state is finished: a move starts a new lifecycle.
    live := stored AND NOT (COALESCE(d->'finals', '[]'::jsonb) ? e.state);
    r_state := CASE WHEN live THEN e.state ELSE d->>'initial' END;
    IF target IS NULL THEN
        r_kind := 3;
        RETURN;
    END IF;
    IF required IS NOT NULL AND (NOT live OR e.timeout_id IS DISTINCT FROM required) THEN
        r_kind := 3;
        RETURN;
    END IF;
    IF target = r_state THEN
        -- Recorded in the initial state only when it has no record (or a finished one).
        IF live THEN
            r_kind := 3;
            RETURN;
        END IF;
    ELSIF NOT ((d->'from') ? r_state) THEN
        r_kind := 4;
        RETURN;
    END IF;
    -- The timer that fired (`required`) is its claimant's to complete.
    IF stored AND e.timeout_id IS NOT NULL AND required IS NULL THEN
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
        -- Members are event keys (fingerprints may repeat across tenants).
        IF (d->>'terminal')::boolean THEN
            DELETE FROM acteon_set_members m WHERE m.set_key = set_name AND m.member = k;
        ELSE
            INSERT INTO acteon_set_members AS m (set_key, member, expires_at)
            VALUES (set_name, k, expiry)
            ON CONFLICT ON CONSTRAINT acteon_set_members_pkey
            DO UPDATE SET expires_at = EXCLUDED.expires_at;
        END IF;
    END LOOP;
    -- The move's notification, sent by the worker: only for a change from a state whose
    -- transition to the target notifies.
    IF jsonb_typeof(notice) = 'object' AND target <> r_state AND (notice->'from') ? r_state THEN
        PERFORM acteon_timer_put(notice->>'id', (notice->>'due')::bigint,
                                 decode(notice->>'p', 'hex'));
    END IF;
    r_kind := 2;
END;
$$;
