-- Credit leases (the table and the books: sql/migrations/006_credit_leases.sql): open,
-- grow, shrink, renew, close and expire a node's lease, and bill a request admitted
-- against one. (Re-applied by `alicode-gw migrate` on every run: CREATE OR REPLACE only.)
-- Locking, always in this order: hold rows, then lease rows, then accounts (each group
-- by id).

-- lease_open: reserve least(p_want_nanos, p_max_pct % of the free balance) for p_owner,
-- if that is at least p_min_nanos; returns the lease id and amount (no row: nothing
-- leased).
CREATE OR REPLACE FUNCTION billing.lease_open(
    p_account_id bigint, p_owner text, p_want_nanos bigint, p_min_nanos bigint,
    p_max_pct integer,
    p_ttl_seconds double precision
) RETURNS TABLE (lease_id bigint, amount_nanos bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_amount bigint;
    v_id     bigint;
BEGIN
    SELECT least(p_want_nanos, (a.balance_nanos - a.held_nanos) * p_max_pct / 100) INTO v_amount
      FROM accounts a WHERE a.id = p_account_id FOR UPDATE;
    IF NOT FOUND OR v_amount < greatest(p_min_nanos, 1) THEN
        RETURN;
    END IF;
    UPDATE accounts a SET held_nanos = a.held_nanos + v_amount WHERE a.id = p_account_id;
    INSERT INTO billing_leases (account_id, owner, amount_nanos, expires_at)
    VALUES (p_account_id, p_owner, v_amount, now() + make_interval(secs => p_ttl_seconds))
    RETURNING id INTO v_id;
    RETURN QUERY SELECT v_id, v_amount;
END $$;

-- lease_grow: add up to p_add_nanos to an open lease, so that it holds at most max_pct % of
-- what it and the free balance hold together, and renew it; returns what was added (0:
-- it is that large already, or nothing is free), NULL when the lease is no longer open.
CREATE OR REPLACE FUNCTION billing.lease_grow(
    p_lease_id bigint, p_add_nanos bigint, p_max_pct integer, p_ttl_seconds double precision
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    l        billing_leases;
    v_amount bigint;
BEGIN
    SELECT * INTO l FROM billing_leases b WHERE b.id = p_lease_id FOR UPDATE;
    IF NOT FOUND OR l.status <> 'open' THEN
        RETURN NULL;
    END IF;
    SELECT greatest(least(p_add_nanos, (a.balance_nanos - a.held_nanos + l.amount_nanos)
                                       * p_max_pct / 100 - l.amount_nanos), 0)
      INTO v_amount
      FROM accounts a WHERE a.id = l.account_id FOR UPDATE;
    UPDATE accounts a SET held_nanos = a.held_nanos + v_amount WHERE a.id = l.account_id;
    UPDATE billing_leases b
       SET amount_nanos = b.amount_nanos + v_amount,
           expires_at = now() + make_interval(secs => p_ttl_seconds)
     WHERE b.id = p_lease_id;
    RETURN v_amount;
END $$;

-- lease_shrink: give up to p_amount_nanos of an open lease back to the free balance (its node
-- had that much unused in it); returns what was given back.
CREATE OR REPLACE FUNCTION billing.lease_shrink(p_lease_id bigint, p_amount_nanos bigint)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    l        billing_leases;
    v_amount bigint;
BEGIN
    SELECT * INTO l FROM billing_leases b WHERE b.id = p_lease_id FOR UPDATE;
    IF NOT FOUND OR l.status <> 'open' THEN
        RETURN 0;
    END IF;
    v_amount := least(greatest(p_amount_nanos, 0), l.amount_nanos);
    PERFORM 1 FROM accounts a WHERE a.id = l.account_id FOR UPDATE;
    UPDATE accounts a SET held_nanos = a.held_nanos - v_amount WHERE a.id = l.account_id;
    UPDATE billing_leases b SET amount_nanos = b.amount_nanos - v_amount
     WHERE b.id = p_lease_id;
    RETURN v_amount;
END $$;

-- lease_renew: push back the expiry of the given leases that are still open; returns
-- those, with what each has in it (a node stops using any lease not returned). Rows are
-- locked in id order, like everywhere else.
CREATE OR REPLACE FUNCTION billing.lease_renew(
    p_lease_ids bigint[], p_ttl_seconds double precision
)
RETURNS TABLE (id bigint, amount_nanos bigint)
LANGUAGE sql AS $$
    WITH locked AS (
        SELECT l.id FROM billing_leases l
         WHERE l.id = ANY (p_lease_ids) AND l.status = 'open'
         ORDER BY l.id
           FOR UPDATE)
    UPDATE billing_leases b SET expires_at = now() + make_interval(secs => p_ttl_seconds)
      FROM locked WHERE b.id = locked.id
    RETURNING b.id, b.amount_nanos
$$;

-- lease_close: give an open lease's money back to the free balance. Returns the amount
-- given back (0 if it was not open).
CREATE OR REPLACE FUNCTION billing.lease_close(p_lease_id bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    l billing_leases;
BEGIN
    SELECT * INTO l FROM billing_leases b WHERE b.id = p_lease_id FOR UPDATE;
    IF NOT FOUND OR l.status <> 'open' THEN
        RETURN 0;
    END IF;
    PERFORM 1 FROM accounts a WHERE a.id = l.account_id FOR UPDATE;
    UPDATE accounts a SET held_nanos = a.held_nanos - l.amount_nanos WHERE a.id = l.account_id;
    UPDATE billing_leases b SET status = 'closed', amount_nanos = 0, closed_at = now()
     WHERE b.id = p_lease_id;
    RETURN l.amount_nanos;
END $$;

-- expire_leases: the sweeper's second half. Leases past their expiry (their node stopped
-- renewing them: it died, or lost the database) give their money back. A separate call
-- from expire_holds, so that each keeps the lock order.
CREATE OR REPLACE FUNCTION billing.expire_leases(p_limit integer DEFAULT 1000) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_ids   bigint[];
    r       record;
    v_count integer := 0;
BEGIN
    SELECT array_agg(b.id ORDER BY b.id) INTO v_ids FROM (
        SELECT l.id FROM billing_leases l
         WHERE l.status = 'open' AND l.expires_at < now()
         ORDER BY l.id LIMIT p_limit
           FOR UPDATE SKIP LOCKED) b;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM 1 FROM accounts a
     WHERE a.id IN (SELECT l.account_id FROM billing_leases l WHERE l.id = ANY (v_ids))
     ORDER BY a.id FOR UPDATE;
    FOR r IN SELECT l.id, l.account_id, l.amount_nanos FROM billing_leases l
              WHERE l.id = ANY (v_ids) ORDER BY l.id
    LOOP
        UPDATE accounts a SET held_nanos = a.held_nanos - r.amount_nanos
         WHERE a.id = r.account_id;
        UPDATE billing_leases l SET status = 'expired', amount_nanos = 0, closed_at = now()
         WHERE l.id = r.id;
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END $$;

-- settle_leased: bill a request the node admitted against lease p_lease_id, exactly once
-- (the ledger's unique request id). p_reserved_nanos is the request's worst case, which the
-- node counted against the lease; the charge comes out of the lease up to that (while
-- the lease is open and belongs to the key's account), then out of the free balance.
-- Prices are the node's snapshot (micro-USD per MTok, no discount: never a batch).
-- Called with named arguments (billing_batch.sql): eighteen of them, of three units.
-- p_hit_pct: a response cache hit, as in billing.settle.
-- outcome: settled | already_settled | unknown_key
CREATE OR REPLACE FUNCTION billing.settle_leased(
    p_lease_id bigint,
    p_request_id text,
    p_key_id bigint,
    p_requested_model text,
    p_model text,
    p_client_ip text,
    p_reserved_nanos bigint,
    p_price_input_micro bigint,
    p_price_output_micro bigint,
    p_price_cache_write_5m_micro bigint,
    p_price_cache_write_1h_micro bigint,
    p_price_cache_read_micro bigint,
    p_tokens_input bigint,
    p_tokens_output bigint,
    p_tokens_cache_creation_5m bigint,
    p_tokens_cache_creation_1h bigint,
    p_tokens_cache_read bigint,
    p_estimated boolean,
    p_hit_pct integer DEFAULT NULL
) RETURNS TABLE (outcome text, charged_nanos bigint, revoked_public_id text)
LANGUAGE plpgsql AS $$
DECLARE
    v_account   bigint;
    v_cost      bigint;
    v_reserved  bigint;
    v_available bigint;
    v_charge    bigint;
    v_lease     bigint;
    v_status    text;
BEGIN
    SELECT k.account_id INTO v_account FROM api_keys k WHERE k.id = p_key_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown_key'::text, 0::bigint, NULL::text;
        RETURN;
    END IF;
    SELECT l.amount_nanos INTO v_lease FROM billing_leases l
     WHERE l.id = p_lease_id AND l.status = 'open' AND l.account_id = v_account
       FOR UPDATE;
    SELECT a.balance_nanos - a.held_nanos, a.status INTO v_available, v_status
      FROM accounts a WHERE a.id = v_account FOR UPDATE;
    -- After the account lock: a second settlement of this request waits for the first
    -- and then sees its ledger row.
    PERFORM 1 FROM ledger l WHERE l.request_id = p_request_id;
    IF FOUND THEN
        RETURN QUERY SELECT 'already_settled'::text, -l.amount_nanos, NULL::text
                       FROM ledger l WHERE l.request_id = p_request_id;
        RETURN;
    END IF;
    v_cost := billing.request_cost(
        p_price_input_micro => p_price_input_micro,
        p_price_output_micro => p_price_output_micro,
        p_price_cache_write_5m_micro => p_price_cache_write_5m_micro,
        p_price_cache_write_1h_micro => p_price_cache_write_1h_micro,
        p_price_cache_read_micro => p_price_cache_read_micro,
        p_discount_pct => CASE WHEN p_hit_pct IS NULL THEN 0
                              ELSE 100 - least(greatest(p_hit_pct, 0), 100) END,
        p_tokens_input => greatest(p_tokens_input, 0),
        p_tokens_output => greatest(p_tokens_output, 0),
        p_tokens_cache_creation_5m => greatest(p_tokens_cache_creation_5m, 0),
        p_tokens_cache_creation_1h => greatest(p_tokens_cache_creation_1h, 0),
        p_tokens_cache_read => greatest(p_tokens_cache_read, 0));
    v_reserved := least(greatest(p_reserved_nanos, 0), coalesce(v_lease, 0));
    v_charge := least(v_cost, greatest(v_available + v_reserved, 0));
    v_reserved := least(v_reserved, v_charge);  -- the part the lease pays
    IF v_reserved > 0 THEN
        UPDATE billing_leases l SET amount_nanos = l.amount_nanos - v_reserved
         WHERE l.id = p_lease_id;
    END IF;
    UPDATE accounts a
       SET balance_nanos = a.balance_nanos - v_charge,
           held_nanos = a.held_nanos - v_reserved
     WHERE a.id = v_account;
    INSERT INTO ledger (account_id, kind, amount_nanos, request_id, key_id, client_ip,
                        requested_model, model, input_tokens, output_tokens,
                        cache_creation_5m, cache_creation_1h, cache_read, batch,
                        cost_nanos, shortfall_nanos, status, cache_hit)
    VALUES (v_account, 'charge', -v_charge, p_request_id, p_key_id,
            -- a deleted account's IPs are erased (dashboard.delete_account), also from
            -- the requests that were in flight when it was deleted
            CASE WHEN v_status = 'deleted' THEN NULL ELSE p_client_ip END,
            p_requested_model, p_model, greatest(p_tokens_input, 0),
            greatest(p_tokens_output, 0), greatest(p_tokens_cache_creation_5m, 0),
            greatest(p_tokens_cache_creation_1h, 0), greatest(p_tokens_cache_read, 0), false,
            v_cost, v_cost - v_charge,
            CASE WHEN p_estimated THEN 'estimated' ELSE 'complete' END, p_hit_pct IS NOT NULL);
    RETURN QUERY SELECT 'settled'::text, v_charge,
        billing.key_spend(p_key_id => p_key_id, p_charge_nanos => v_charge);
END $$;
