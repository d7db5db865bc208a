-- Authentication support. (Spend caps: billing's settle revokes a key in the same
-- transaction that raises spent_nanos to its cap; authentication also refuses a key
-- whose spent_nanos has reached its cap, whatever wrote it.)

-- Revoking every active key of an account (emergency stop) in one statement.
CREATE FUNCTION stop_account(p_email text) RETURNS TABLE (public_id text)
LANGUAGE plpgsql AS $$
DECLARE
    v_account bigint;
BEGIN
    UPDATE accounts a
       SET status = 'stopped', stopped_at = COALESCE(a.stopped_at, now())
     WHERE lower(a.email) = lower(p_email)
    RETURNING a.id INTO v_account;
    IF v_account IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
        UPDATE api_keys k
           SET status = 'revoked', revoked_at = now(), revoked_reason = 'account stopped'
         WHERE k.account_id = v_account AND k.status = 'active'
        RETURNING k.public_id;
END;
$$;
