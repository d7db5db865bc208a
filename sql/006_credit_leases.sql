-- Credit leases: a node reserves a slice of an account's free balance once, then admits
-- that account's requests against it in memory, with no database round trip before the
-- request goes upstream, and bills each one with a single call when it ends.
--
-- The books: a lease is counted in accounts.held_nanos like a hold, so
--     held_nanos = sum(open holds) + sum(open leases)                (billing.audit)
-- The node admits a request only when its lease still has the request's worst case free
-- (alicode_gw/credit.py keeps that count: the same hold amount billing.hold reserves);
-- the database makes sure nothing is spent twice whatever a node believes: a leased
-- request's charge takes at most its worst case from the lease, and any remainder only
-- from the free balance (balance - held), never from a hold or another lease; what the
-- balance cannot cover is the ledger row's shortfall, as for any settlement.
--
-- A leased request has no billing_holds row: its hold lives in the node's memory. It is
-- billed at the prices the node had when it accepted it (the node's copy of the model
-- table, refreshed every few seconds), which settle_leased records exactly as
-- billing.request_cost computes them; a request that produced nothing costs no database
-- call at all. When a lease closes (its node stopped) or expires (its node died, or lost
-- the database), its money goes back to the free balance; a leased request settled
-- later (e.g. from the journal) is charged from the free balance.
--
-- Locking, always in this order, in every function here and in apply_batch: hold rows,
-- then lease rows, then accounts (each group by id).

CREATE TABLE billing_leases (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id   bigint NOT NULL REFERENCES accounts (id),
    owner        text NOT NULL,                       -- the node (host:pid:nonce)
    amount_nanos bigint NOT NULL CHECK (amount_nanos >= 0),  -- reserved right now
    status       text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed', 'expired')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    closed_at    timestamptz
);
CREATE INDEX billing_leases_open_idx ON billing_leases (expires_at) WHERE status = 'open';
CREATE INDEX billing_leases_account_idx ON billing_leases (account_id) WHERE status = 'open';

-- lease_open: reserve least(want, max_pct % of the free balance) for p_owner, if that is
-- at least p_min; returns the lease id and amount (no row: nothing leased).
CREATE FUNCTION billing.lease_open(
    p_account_id bigint, p_owner text, p_want bigint, p_min bigint, p_max_pct integer,
    p_ttl_seconds double precision
) RETURNS TABLE (lease_id bigint, amount_nanos bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_amount bigint;
    v_id     bigint;
BEGIN
    SELECT least(p_want, (a.balance_nanos - a.held_nanos) * p_max_pct / 100) INTO v_amount
      FROM accounts a WHERE a.id = p_account_id FOR UPDATE;
    IF NOT FOUND OR v_amount < greatest(p_min, 1) THEN
        RETURN;
    END IF;
    UPDATE accounts a SET held_nanos = a.held_nanos + v_amount WHERE a.id = p_account_id;
    INSERT INTO billing_leases (account_id, owner, amount_nanos, expires_at)
    VALUES (p_account_id, p_owner, v_amount, now() + make_interval(secs => p_ttl_seconds))
    RETURNING id INTO v_id;
    RETURN QUERY SELECT v_id, v_amount;
END $$;

-- lease_grow: add up to p_add to an open lease, so that it holds at most max_pct % of
-- what it and the free balance hold together, and renew it; returns what was added (0:
-- it is that large already, or nothing is free), NULL when the lease is no longer open.
CREATE FUNCTION billing.lease_grow(
    p_lease_id bigint, p_add bigint, p_max_pct integer, p_ttl_seconds double precision
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
    SELECT greatest(least(p_add, (a.balance_nanos - a.held_nanos + l.amount_nanos)
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

-- lease_shrink: give up to p_amount of an open lease back to the free balance (its node
-- had that much unused in it); returns what was given back.
CREATE FUNCTION billing.lease_shrink(p_lease_id bigint, p_amount bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    l        billing_leases;
    v_amount bigint;
BEGIN
    SELECT * INTO l FROM billing_leases b WHERE b.id = p_lease_id FOR UPDATE;
    IF NOT FOUND OR l.status <> 'open' THEN
        RETURN 0;
    END IF;
    v_amount := least(greatest(p_amount, 0), l.amount_nanos);
    PERFORM 1 FROM accounts a WHERE a.id = l.account_id FOR UPDATE;
    UPDATE accounts a SET held_nanos = a.held_nanos - v_amount WHERE a.id = l.account_id;
    UPDATE billing_leases b SET amount_nanos = b.amount_nanos - v_amount
     WHERE b.id = p_lease_id;
    RETURN v_amount;
END $$;

-- lease_renew: push back the expiry of the given leases that are still open; returns
-- those, with what each has in it (a node stops using any lease not returned). Rows are
-- locked in id order, like everywhere else.
CREATE FUNCTION billing.lease_renew(p_lease_ids bigint[], p_ttl_seconds double precision)
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
CREATE FUNCTION billing.lease_close(p_lease_id bigint) RETURNS bigint
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
CREATE FUNCTION billing.expire_leases(p_limit integer DEFAULT 1000) RETURNS integer
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

-- key_spend (the end of billing.settle in 003, shared): add a charge to the key's spend;
-- reaching its spend cap revokes the key. Returns the public id when this charge is the
-- one that revoked it.
CREATE FUNCTION billing.key_spend(p_key_id bigint, p_charge bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_key    api_keys;
    v_status text;
BEGIN
    -- 002_auth's trigger revokes a key whose spend reaches its cap in this same UPDATE;
    -- the status before it tells whether this charge is the one that revoked it.
    SELECT k.status INTO v_status FROM api_keys k WHERE k.id = p_key_id FOR UPDATE;
    UPDATE api_keys k SET spent_nanos = k.spent_nanos + p_charge
     WHERE k.id = p_key_id
    RETURNING * INTO v_key;
    IF v_status = 'active' AND v_key.spend_cap_nanos IS NOT NULL
       AND v_key.spent_nanos >= v_key.spend_cap_nanos THEN
        UPDATE api_keys k
           SET status = 'revoked', revoked_reason = 'spend cap reached', revoked_at = now()
         WHERE k.id = p_key_id AND k.status = 'active';
        RETURN v_key.public_id;
    END IF;
    RETURN NULL;
END $$;

-- settle_leased: bill a request the node admitted against lease p_lease_id, exactly once
-- (the ledger's unique request id). p_reserved is the request's worst case, which the
-- node counted against the lease; the charge comes out of the lease up to that (while
-- the lease is open and belongs to the key's account), then out of the free balance.
-- Prices are the node's snapshot (micro-USD per MTok, no discount: never a batch).
-- outcome: settled | already_settled | unknown_key
CREATE FUNCTION billing.settle_leased(
    p_lease_id bigint, p_request_id text, p_key_id bigint, p_requested_model text,
    p_model text, p_client_ip text, p_reserved bigint,
    p_input bigint, p_output bigint, p_cw5m bigint, p_cw1h bigint, p_cread bigint,
    t_input bigint, t_output bigint, t_cw5m bigint, t_cw1h bigint, t_cread bigint,
    p_estimated boolean
) RETURNS TABLE (outcome text, charged_nanos bigint, revoked_public_id text)
LANGUAGE plpgsql AS $$
DECLARE
    v_account   bigint;
    v_cost      bigint;
    v_reserved  bigint;
    v_available bigint;
    v_charge    bigint;
    v_lease     bigint;
BEGIN
    SELECT k.account_id INTO v_account FROM api_keys k WHERE k.id = p_key_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown_key'::text, 0::bigint, NULL::text;
        RETURN;
    END IF;
    SELECT l.amount_nanos INTO v_lease FROM billing_leases l
     WHERE l.id = p_lease_id AND l.status = 'open' AND l.account_id = v_account
       FOR UPDATE;
    SELECT a.balance_nanos - a.held_nanos INTO v_available
      FROM accounts a WHERE a.id = v_account FOR UPDATE;
    -- After the account lock: a second settlement of this request waits for the first
    -- and then sees its ledger row.
    PERFORM 1 FROM ledger l WHERE l.request_id = p_request_id;
    IF FOUND THEN
        RETURN QUERY SELECT 'already_settled'::text, -l.amount_nanos, NULL::text
                       FROM ledger l WHERE l.request_id = p_request_id;
        RETURN;
    END IF;
    v_cost := billing.request_cost(p_input, p_output, p_cw5m, p_cw1h, p_cread, 0,
        greatest(t_input, 0), greatest(t_output, 0), greatest(t_cw5m, 0),
        greatest(t_cw1h, 0), greatest(t_cread, 0));
    v_reserved := least(greatest(p_reserved, 0), coalesce(v_lease, 0));
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
                        cost_nanos, shortfall_nanos, status)
    VALUES (v_account, 'charge', -v_charge, p_request_id, p_key_id, p_client_ip,
            p_requested_model, p_model, greatest(t_input, 0), greatest(t_output, 0),
            greatest(t_cw5m, 0), greatest(t_cw1h, 0), greatest(t_cread, 0), false,
            v_cost, v_cost - v_charge,
            CASE WHEN p_estimated THEN 'estimated' ELSE 'complete' END);
    RETURN QUERY SELECT 'settled'::text, v_charge, billing.key_spend(p_key_id, v_charge);
END $$;

-- apply_batch, as in 005, with one more operation:
--   "settle_leased" + request_id, lease_id, key_id, requested_model, model, client_ip,
--                     reserved, the five prices (input_price ... cache_read_price), the
--                     five token counts and estimated (see settle_leased)
DROP FUNCTION billing.apply_batch(jsonb, double precision);
CREATE TYPE billing.batch_op AS (
    i integer, op text, request_id text, key_id bigint, model text, estimated_input bigint,
    max_tokens bigint, client_ip text, batch boolean, input_tokens bigint,
    output_tokens bigint, cache_creation_5m bigint, cache_creation_1h bigint,
    cache_read bigint, estimated boolean, lease_id bigint, requested_model text,
    reserved bigint, input_price bigint, output_price bigint, cache_write_5m_price bigint,
    cache_write_1h_price bigint, cache_read_price bigint);
CREATE FUNCTION billing.apply_batch(p_ops jsonb, p_ttl_seconds double precision)
RETURNS TABLE (ord integer, outcome text, priced_model text, amount_nanos bigint,
               revoked_public_id text, input_price bigint, output_price bigint,
               cache_write_5m_price bigint, cache_write_1h_price bigint,
               cache_read_price bigint, batch_discount_pct smallint)
LANGUAGE plpgsql AS $$
DECLARE
    r      record;
    h      record;
    s      record;
    b      billing_holds;
    v_ops  billing.batch_op[] := ARRAY(
               SELECT jsonb_populate_recordset(NULL::billing.batch_op, p_ops));
    -- Arrays, so that every lookup below is an index scan (a join with the unnested
    -- operations is planned for 100 of them and may scan the tables).
    v_rids text[] := ARRAY(SELECT o.request_id FROM unnest(v_ops) o
                            WHERE o.op IN ('settle', 'release'));
    v_keys bigint[] := ARRAY(SELECT o.key_id FROM unnest(v_ops) o WHERE o.key_id IS NOT NULL);
BEGIN
    PERFORM 1 FROM billing_holds bh
     WHERE bh.request_id = ANY (v_rids)
     ORDER BY bh.request_id
       FOR UPDATE;
    PERFORM 1 FROM billing_leases bl
     WHERE bl.id = ANY (ARRAY(SELECT o.lease_id FROM unnest(v_ops) o
                               WHERE o.lease_id IS NOT NULL))
     ORDER BY bl.id
       FOR UPDATE;
    PERFORM 1 FROM accounts a
     WHERE a.id = ANY (ARRAY(
            SELECT k.account_id FROM api_keys k WHERE k.id = ANY (v_keys)
            UNION
            SELECT bh.account_id FROM billing_holds bh WHERE bh.request_id = ANY (v_rids)))
     ORDER BY a.id
       FOR UPDATE;
    -- Settlements and releases first, so money they give back is free for the holds.
    FOR r IN SELECT * FROM unnest(v_ops) o ORDER BY o.op = 'hold', o.i
    LOOP
        IF r.op = 'hold' THEN
            SELECT * INTO h FROM billing.hold(r.request_id, r.key_id, r.model,
                r.estimated_input, r.max_tokens, r.client_ip, coalesce(r.batch, false),
                p_ttl_seconds);
            IF h.outcome IN ('held', 'duplicate') THEN
                SELECT * INTO b FROM billing_holds bh WHERE bh.request_id = r.request_id;
                RETURN QUERY SELECT r.i, h.outcome, h.priced_model, h.hold_nanos, NULL::text,
                    b.input_price, b.output_price, b.cache_write_5m_price,
                    b.cache_write_1h_price, b.cache_read_price, b.discount_pct;
            ELSE
                RETURN QUERY SELECT r.i, h.outcome, h.priced_model, h.hold_nanos, NULL::text,
                    NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint,
                    NULL::smallint;
            END IF;
        ELSIF r.op = 'settle' THEN
            SELECT * INTO s FROM billing.settle(r.request_id, r.input_tokens, r.output_tokens,
                r.cache_creation_5m, r.cache_creation_1h, r.cache_read,
                coalesce(r.estimated, false));
            RETURN QUERY SELECT r.i, s.outcome, NULL::text, s.charged_nanos,
                s.revoked_public_id, NULL::bigint, NULL::bigint, NULL::bigint,
                NULL::bigint, NULL::bigint, NULL::smallint;
        ELSIF r.op = 'settle_leased' THEN
            SELECT * INTO s FROM billing.settle_leased(r.lease_id, r.request_id, r.key_id,
                r.requested_model, r.model, r.client_ip, r.reserved, r.input_price,
                r.output_price, r.cache_write_5m_price, r.cache_write_1h_price,
                r.cache_read_price, r.input_tokens, r.output_tokens, r.cache_creation_5m,
                r.cache_creation_1h, r.cache_read, coalesce(r.estimated, false));
            RETURN QUERY SELECT r.i, s.outcome, NULL::text, s.charged_nanos,
                s.revoked_public_id, NULL::bigint, NULL::bigint, NULL::bigint,
                NULL::bigint, NULL::bigint, NULL::smallint;
        ELSIF r.op = 'release' THEN
            RETURN QUERY SELECT r.i, billing.release(r.request_id), NULL::text, 0::bigint,
                NULL::text, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint,
                NULL::bigint, NULL::smallint;
        ELSE
            RAISE EXCEPTION 'unknown billing operation %', r.op
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
END $$;

-- audit: as in 003, with the open leases counted in held_nanos (open_holds_nanos is the
-- sum of open holds and open leases).
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
