-- Check-only gates and confirmation of in-flight dedup marks (see gateway/src/state/postgres.rs).
-- Additive: replicas of the previous release keep calling acteon_apply_gates unchanged.

-- Checks the gates exactly as acteon_apply_gates does and applies nothing: the call runs in
-- a subtransaction that is always rolled back, so whatever it applied (when every gate
-- passed) and the advisory locks it took are undone, while the verdict kept in the
-- variables survives. One round trip, one definition of what a gate means.
CREATE FUNCTION acteon_check_gates(
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
BEGIN
    BEGIN
        SELECT g.stop_index, g.stop_kind, g.stop_a, g.stop_b
        INTO stop_index, stop_kind, stop_a, stop_b
        FROM acteon_apply_gates(kinds, keys, spans, limits, tokens) g;
        RAISE EXCEPTION USING ERRCODE = 'AC001', MESSAGE = 'check only: undo';
    EXCEPTION WHEN SQLSTATE 'AC001' THEN
        NULL;
    END;
END;
$$;
