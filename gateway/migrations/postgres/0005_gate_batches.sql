-- Group commit of gate calls (see gateway/src/state/postgres/batch.rs). Additive: replicas
-- of the previous release keep calling acteon_apply_gates unchanged.

-- Runs the gate calls of several dispatches in one transaction, each exactly as
-- acteon_apply_gates would alone, in the order given: call c has the next counts[c] gates
-- of the flattened arrays and sees what the calls before it applied. Returns one row per
-- call, `call` numbered from 0.
--
-- Every advisory lock of the batch is taken first, in ascending order of the ids (the
-- order acteon_apply_gates and acteon_run_gates_and_defer use), so batches and single calls
-- never wait on each other in a cycle; acteon_apply_gates then takes its own again, which
-- a holder gets at once.
CREATE FUNCTION acteon_apply_gates_batch(
    counts integer[],
    kinds  smallint[],
    keys   text[],
    spans  bigint[],
    limits bigint[],
    tokens text[]
)
RETURNS TABLE (call integer, stop_index integer, stop_kind smallint, stop_a bigint, stop_b bigint)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    lock_id bigint;
    first   integer := 1;
    last    integer;
BEGIN
    FOR lock_id IN
        SELECT DISTINCT hashtextextended(g.key, g.kind)
        FROM unnest(keys, kinds) AS g(key, kind)
        ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(lock_id);
    END LOOP;

    FOR c IN 1..coalesce(array_length(counts, 1), 0) LOOP
        last := first + counts[c] - 1;
        call := c - 1;
        SELECT g.stop_index, g.stop_kind, g.stop_a, g.stop_b
        INTO stop_index, stop_kind, stop_a, stop_b
        FROM acteon_apply_gates(kinds[first:last], keys[first:last], spans[first:last],
                                limits[first:last], tokens[first:last]) g;
        RETURN NEXT;
        first := last + 1;
    END LOOP;
END;
$$;

-- The most common batch, every call one dedup gate, as set operations: one statement locks
-- the keys (ascending ids, as above), one reads which keys hold a live mark and writes the
-- others. The same answers as acteon_apply_gates_batch: of the calls with one key, only the
-- first can pass, and only if the key holds no live mark. Returns one row per call.
CREATE FUNCTION acteon_apply_dedup_batch(keys text[], spans bigint[], tokens text[])
RETURNS TABLE (call integer, passed boolean)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    now_ms bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(l.id)
    FROM (SELECT DISTINCT hashtextextended(k, 0) AS id FROM unnest(keys) AS k ORDER BY 1) l;
    now_ms := acteon_now_ms();
    RETURN QUERY
    WITH calls AS (
        SELECT u.k, u.s, u.t, u.n::integer AS n
        FROM unnest(keys, spans, tokens) WITH ORDINALITY AS u(k, s, t, n)
    ), firsts AS (
        SELECT DISTINCT ON (c.k) c.k, c.s, c.t, c.n FROM calls c ORDER BY c.k, c.n
    ), live AS (
        -- One index probe per key. As a join or `key = ANY (keys)`, the cached plan of
        -- this statement could be a scan of the whole table (planned while it was small).
        SELECT f.k AS key FROM firsts f
        CROSS JOIN LATERAL (
            SELECT 1 FROM acteon_dedup d
            WHERE d.key = f.k AND d.expires_at > now_ms
            OFFSET 0
        ) mark
    ), marked AS (
        INSERT INTO acteon_dedup AS d (key, token, expires_at)
        SELECT f.k, f.t, now_ms + f.s FROM firsts f
        WHERE NOT EXISTS (SELECT 1 FROM live l WHERE l.key = f.k)
        ON CONFLICT (key) DO UPDATE
            SET token = EXCLUDED.token, expires_at = EXCLUDED.expires_at
    )
    SELECT c.n - 1, f.n IS NOT NULL AND l.key IS NULL
    FROM calls c
    LEFT JOIN firsts f ON f.n = c.n
    LEFT JOIN live l ON l.key = c.k
    ORDER BY c.n;
END;
$$;
