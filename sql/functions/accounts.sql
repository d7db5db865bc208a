-- Accounts. (Re-applied by `alicode-gw migrate` on every run: CREATE OR REPLACE only.)

-- stop_account: revoke every active key of an account (emergency stop) in one statement;
-- returns the public ids revoked. A suspended (or deleted) account keeps its status.
CREATE OR REPLACE FUNCTION stop_account(p_email text) RETURNS TABLE (public_id text)
LANGUAGE plpgsql AS $$
DECLARE
    v_account bigint;
BEGIN
    UPDATE accounts a
       SET status = CASE WHEN a.status = 'active' THEN 'stopped' ELSE a.status END,
           stopped_at = COALESCE(a.stopped_at, now())
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
