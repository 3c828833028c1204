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
