-- Rate limits of providers (see gateway/src/delivery/rate_limit.rs): each rate-limited
-- stream keeps the next free start slot, in Unix microseconds on the database clock. One
-- row per rate-limited provider, so the table is never swept.
CREATE TABLE acteon_rate_slots (
    key     text   PRIMARY KEY,
    next_us bigint NOT NULL
);

-- Reserves the next slot of `k`: slots are `interval_us` apart and never in the past.
-- Answers the wait in µs, or -1 (nothing reserved) when it would exceed `max_wait_us`.
-- The row lock of ON CONFLICT serializes concurrent callers; one who waited for it read
-- the clock before, so its wait is overestimated by that time, never under.
CREATE FUNCTION acteon_reserve_slot(k text, interval_us bigint, max_wait_us bigint)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    now_us   bigint := floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    start_us bigint;
BEGIN
    INSERT INTO acteon_rate_slots AS r (key, next_us) VALUES (k, now_us + interval_us)
    ON CONFLICT (key) DO UPDATE
        SET next_us = greatest(r.next_us, now_us) + interval_us
        WHERE greatest(r.next_us, now_us) - now_us <= max_wait_us
    RETURNING next_us - interval_us INTO start_us;
    IF start_us IS NULL THEN
        RETURN -1;
    END IF;
    RETURN greatest(start_us - now_us, 0);
END;
$$;
