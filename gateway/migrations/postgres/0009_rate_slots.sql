-- Rate limits of providers (see gateway/src/delivery/rate_limit.rs): each rate-limited
-- stream keeps the next free start slot, in Unix microseconds on the database clock. One
-- row per rate-limited provider, so the table is never swept.
CREATE TABLE acteon_rate_slots (
    key     text   PRIMARY KEY,
    next_us bigint NOT NULL
);

-- Reserves the next slot of `k`: slots are `interval_us` apart and never in the past.
-- Answers the wait in µs, or -1 (nothing reserved) when it would exceed `max_wait_us`.
-- The clock is read once the row is locked: a caller that queued for the lock must not
-- count that time as waited, or it would start late and crowd the slots after it. For
-- the same reason the commit does not wait for the WAL flush: that time would be spent
-- between reading the clock and the caller's sleep. A slot lost in a crash is harmless.
CREATE FUNCTION acteon_reserve_slot(k text, interval_us bigint, max_wait_us bigint)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    next_free bigint;
    now_us    bigint;
    start_us  bigint;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    INSERT INTO acteon_rate_slots (key, next_us) VALUES (k, 0) ON CONFLICT (key) DO NOTHING;
    SELECT next_us INTO next_free FROM acteon_rate_slots WHERE key = k FOR UPDATE;
    now_us := floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    start_us := greatest(next_free, now_us);
    IF start_us - now_us > max_wait_us THEN
        RETURN -1;
    END IF;
    UPDATE acteon_rate_slots SET next_us = start_us + interval_us WHERE key = k;
    RETURN start_us - now_us;
END;
$$;
