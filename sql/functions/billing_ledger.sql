-- Top-ups and the audit. (Re-applied by `alicode-gw migrate` on every run: CREATE OR
-- REPLACE only.)

-- topup: credit an account; one ledger row. Returns the new balance.
CREATE OR REPLACE FUNCTION billing.topup(p_account_id bigint, p_amount_nanos bigint, p_note text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_balance bigint;
BEGIN
    IF p_amount_nanos <= 0 THEN
        RAISE EXCEPTION 'a top-up must be positive' USING ERRCODE = 'check_violation';
    END IF;
    UPDATE accounts a SET balance_nanos = a.balance_nanos + p_amount_nanos
     WHERE a.id = p_account_id
    RETURNING a.balance_nanos INTO v_balance;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no account %', p_account_id USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO ledger (account_id, kind, amount_nanos, status, note)
    VALUES (p_account_id, 'topup', p_amount_nanos, 'credited', p_note);
    RETURN v_balance;
END $$;

-- audit: every account whose balance differs from top-ups - charges, or whose held
-- amount differs from the sum of its open holds and open credit leases
-- (open_holds_nanos). No rows = the books add up.
CREATE OR REPLACE FUNCTION billing.audit()
RETURNS TABLE (account_id bigint, email text, balance_nanos bigint, ledger_nanos bigint,
               held_nanos bigint, open_holds_nanos bigint)
LANGUAGE sql STABLE AS $$
    WITH books AS (
        SELECT a.id, a.email, a.balance_nanos, a.held_nanos,
               coalesce((SELECT sum(l.amount_nanos) FROM ledger l
                          WHERE l.account_id = a.id), 0)::bigint AS ledger_nanos,
               (coalesce((SELECT sum(h.amount_nanos) FROM billing_holds h
                           WHERE h.account_id = a.id AND h.status = 'held'), 0)
                + coalesce((SELECT sum(l.amount_nanos) FROM billing_leases l
                             WHERE l.account_id = a.id AND l.status = 'open'), 0))::bigint
                   AS open_nanos
          FROM accounts a)
    SELECT b.id, b.email, b.balance_nanos, b.ledger_nanos, b.held_nanos, b.open_nanos
      FROM books b
     WHERE b.balance_nanos <> b.ledger_nanos OR b.held_nanos <> b.open_nanos
     ORDER BY b.id
$$;
