-- Credit leases: a node reserves a slice of an account's free balance once, then admits
-- that account's requests against it in memory, with no database round trip before the
-- request goes upstream. Every request still gets its own hold row (with the price
-- snapshot) and is settled or released as before; only where the money of its hold comes
-- from, and goes back to, changes.
--
-- A lease is counted in accounts.held_nanos, like a hold, so the books still add up:
--     held_nanos = sum(open holds) + sum(open leases)         (billing.audit below)
-- and nothing a lease reserves can be spent by another node or request. A request's hold
-- taken "from a lease" moves money from the lease to the hold (held_nanos unchanged);
-- its settlement or release gives the rest back to the lease while the lease is open, and
-- to the free balance once it is not. A node renews its leases while it runs and closes
-- them when it stops; the sweeper expires the leases of a node that died (their money goes
-- back to the free balance; the holds taken from them are settled or expire as usual).
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

-- The lease a hold was taken from (NULL: from the free balance).
ALTER TABLE billing_holds ADD COLUMN lease_id bigint REFERENCES billing_leases (id);

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

-- lease_grow: add least(p_add, max_pct % of the free balance) to an open lease and renew
-- it; returns what was added (0 when the lease is no longer open or nothing is free).
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
        RETURN 0;
    END IF;
    SELECT greatest(least(p_add, (a.balance_nanos - a.held_nanos) * p_max_pct / 100), 0)
      INTO v_amount
      FROM accounts a WHERE a.id = l.account_id FOR UPDATE;
    UPDATE accounts a SET held_nanos = a.held_nanos + v_amount WHERE a.id = l.account_id;
    UPDATE billing_leases b
       SET amount_nanos = b.amount_nanos + v_amount,
           expires_at = now() + make_interval(secs => p_ttl_seconds)
     WHERE b.id = p_lease_id;
    RETURN v_amount;
END $$;

-- lease_renew: push back the expiry of the given leases that are still open; returns
-- those, with what each has in it (a node stops using any lease not returned).
CREATE FUNCTION billing.lease_renew(p_lease_ids bigint[], p_ttl_seconds double precision)
RETURNS TABLE (id bigint, amount_nanos bigint)
LANGUAGE sql AS $$
    UPDATE billing_leases b SET expires_at = now() + make_interval(secs => p_ttl_seconds)
     WHERE b.id = ANY (p_lease_ids) AND b.status = 'open'
    RETURNING b.id, b.amount_nanos
$$;

-- lease_close: give an open lease's money back to the free balance. Holds taken from it
-- stay open; their remainders go to the free balance when they close. Returns the amount
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
-- renewing them: it died, or lost the database) give their money back.
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

-- hold_from_lease: billing.hold, with the money taken from the open lease p_lease_id first
-- and from the free balance for any part the lease lacks. The node admitted the request
-- against its lease in memory and it may already be upstream, so this never refuses:
-- when neither lease nor free balance can cover it (the lease expired under a node that
-- lost the database, or a price rose since the node's copy), the hold reserves 0 and its
-- settlement is charged from what is free then (any uncovered cost is the ledger row's
-- shortfall). outcome: held | held_short | duplicate | unknown_model | unknown_key
CREATE FUNCTION billing.hold_from_lease(
    p_lease_id bigint, p_request_id text, p_key_id bigint, p_model text,
    p_estimated_input bigint, p_max_tokens bigint, p_client_ip text,
    p_ttl_seconds double precision
) RETURNS TABLE (outcome text, priced_model text, hold_nanos bigint)
LANGUAGE plpgsql AS $$
DECLARE
    l       billing_leases;
    h       record;
    v_open  boolean := false;
    v_lease bigint := 0;
BEGIN
    IF EXISTS (SELECT 1 FROM billing_holds b WHERE b.request_id = p_request_id) THEN
        RETURN QUERY SELECT * FROM billing.hold(p_request_id, p_key_id, p_model,
            p_estimated_input, p_max_tokens, p_client_ip, false, p_ttl_seconds);
        RETURN;
    END IF;
    SELECT * INTO l FROM billing_leases b WHERE b.id = p_lease_id FOR UPDATE;
    v_open := FOUND AND l.status = 'open'
              AND l.account_id = (SELECT k.account_id FROM api_keys k WHERE k.id = p_key_id);
    IF v_open THEN
        PERFORM 1 FROM accounts a WHERE a.id = l.account_id FOR UPDATE;
        -- The lease's money counts as free for this one hold ...
        UPDATE accounts a SET held_nanos = a.held_nanos - l.amount_nanos
         WHERE a.id = l.account_id;
    END IF;
    SELECT * INTO h FROM billing.hold(p_request_id, p_key_id, p_model, p_estimated_input,
        p_max_tokens, p_client_ip, false, p_ttl_seconds);
    IF h.outcome = 'insufficient' THEN
        SELECT * INTO h FROM billing.hold(p_request_id, p_key_id, p_model, 0, 0,
            p_client_ip, false, p_ttl_seconds);
        IF h.outcome = 'held' THEN
            h.outcome := 'held_short';
        END IF;
    END IF;
    IF v_open THEN
        -- ... and what the hold did not take goes back into the lease.
        v_lease := l.amount_nanos;
        IF h.outcome IN ('held', 'held_short') THEN
            v_lease := greatest(v_lease - h.hold_nanos, 0);
            UPDATE billing_holds b SET lease_id = p_lease_id WHERE b.request_id = p_request_id;
        END IF;
        UPDATE accounts a SET held_nanos = a.held_nanos + v_lease WHERE a.id = l.account_id;
        UPDATE billing_leases b SET amount_nanos = v_lease WHERE b.id = p_lease_id;
    END IF;
    RETURN QUERY SELECT h.outcome, h.priced_model, h.hold_nanos;
END $$;

-- refill_lease: part of a closed hold taken from a lease goes back into the lease, if it
-- is still open (the caller already gave it back to the free balance). Lock order: the
-- caller holds the lease row and the account row already.
CREATE FUNCTION billing.refill_lease(p_lease_id bigint, p_amount bigint) RETURNS void
LANGUAGE sql AS $$
    WITH refilled AS (
        UPDATE billing_leases b SET amount_nanos = b.amount_nanos + p_amount
         WHERE b.id = p_lease_id AND b.status = 'open' AND p_amount > 0
        RETURNING b.account_id)
    UPDATE accounts a SET held_nanos = a.held_nanos + p_amount
      FROM refilled WHERE a.id = refilled.account_id
$$;

-- apply_batch, as in 005, with leases:
--   "hold"    may carry lease_id: the hold is taken from that lease (hold_from_lease).
--   "settle"  of a request admitted against a lease carries its hold's parameters
--             (key_id, model, estimated_input, max_tokens, client_ip, lease_id): if its
--             hold never reached the database (the hold's batch failed, and the settlement
--             was journaled), the hold is taken first, so the request is still billed.
--   settle / release of a hold taken from a lease give its remainder back to the lease.
DROP FUNCTION billing.apply_batch(jsonb, double precision);
CREATE TYPE billing.batch_op AS (
    i integer, op text, request_id text, key_id bigint, model text, estimated_input bigint,
    max_tokens bigint, client_ip text, batch boolean, lease_id bigint, input_tokens bigint,
    output_tokens bigint, cache_creation_5m bigint, cache_creation_1h bigint,
    cache_read bigint, estimated boolean);
CREATE FUNCTION billing.apply_batch(p_ops jsonb, p_ttl_seconds double precision)
RETURNS TABLE (ord integer, outcome text, priced_model text, amount_nanos bigint,
               revoked_public_id text, input_price bigint, output_price bigint,
               cache_write_5m_price bigint, cache_write_1h_price bigint,
               cache_read_price bigint, batch_discount_pct smallint)
LANGUAGE plpgsql AS $$
DECLARE
    r    record;
    h    record;
    s    record;
    b    billing_holds;
    prev billing_holds;
    v_back bigint;
    v_ops  billing.batch_op[] := ARRAY(
               SELECT jsonb_populate_recordset(NULL::billing.batch_op, p_ops));
BEGIN
    PERFORM 1 FROM billing_holds bh
     WHERE bh.request_id IN (SELECT o.request_id FROM unnest(v_ops) o
                              WHERE o.op <> 'hold')
     ORDER BY bh.request_id
       FOR UPDATE;
    PERFORM 1 FROM billing_leases bl
     WHERE bl.id IN (SELECT o.lease_id FROM unnest(v_ops) o
                     UNION
                     SELECT bh.lease_id FROM unnest(v_ops) o
                       JOIN billing_holds bh ON bh.request_id = o.request_id
                      WHERE o.op <> 'hold')
     ORDER BY bl.id
       FOR UPDATE;
    PERFORM 1 FROM accounts a
     WHERE a.id IN (
            SELECT k.account_id FROM unnest(v_ops) o
              JOIN api_keys k ON k.id = o.key_id
            UNION
            SELECT bh.account_id FROM unnest(v_ops) o
              JOIN billing_holds bh ON bh.request_id = o.request_id
             WHERE o.op <> 'hold')
     ORDER BY a.id
       FOR UPDATE;
    -- Settlements and releases first, so money they give back is free for the holds
    -- from the free balance; a hold from a lease goes in its place in the queue (before
    -- its own settlement or release, which may share its batch).
    FOR r IN SELECT * FROM unnest(v_ops) o
              ORDER BY o.op = 'hold' AND o.lease_id IS NULL, o.i
    LOOP
        IF r.op = 'hold' THEN
            IF r.lease_id IS NULL THEN
                SELECT * INTO h FROM billing.hold(r.request_id, r.key_id, r.model,
                    r.estimated_input, r.max_tokens, r.client_ip, coalesce(r.batch, false),
                    p_ttl_seconds);
            ELSE
                SELECT * INTO h FROM billing.hold_from_lease(r.lease_id, r.request_id,
                    r.key_id, r.model, r.estimated_input, r.max_tokens, r.client_ip,
                    p_ttl_seconds);
            END IF;
            IF h.outcome IN ('held', 'held_short', 'duplicate') THEN
                SELECT * INTO b FROM billing_holds bh WHERE bh.request_id = r.request_id;
                RETURN QUERY SELECT r.i, h.outcome, h.priced_model, h.hold_nanos, NULL::text,
                    b.input_price, b.output_price, b.cache_write_5m_price,
                    b.cache_write_1h_price, b.cache_read_price, b.discount_pct;
            ELSE
                RETURN QUERY SELECT r.i, h.outcome, h.priced_model, h.hold_nanos, NULL::text,
                    NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint,
                    NULL::smallint;
            END IF;
            CONTINUE;
        END IF;
        SELECT * INTO prev FROM billing_holds bh WHERE bh.request_id = r.request_id;
        IF NOT FOUND AND r.op = 'settle' AND r.key_id IS NOT NULL THEN
            PERFORM billing.hold_from_lease(r.lease_id, r.request_id, r.key_id, r.model,
                r.estimated_input, r.max_tokens, r.client_ip, p_ttl_seconds);
            SELECT * INTO prev FROM billing_holds bh WHERE bh.request_id = r.request_id;
        END IF;
        IF r.op = 'settle' THEN
            SELECT * INTO s FROM billing.settle(r.request_id, r.input_tokens, r.output_tokens,
                r.cache_creation_5m, r.cache_creation_1h, r.cache_read,
                coalesce(r.estimated, false));
            v_back := CASE WHEN s.outcome = 'settled' AND prev.status = 'held'
                           THEN greatest(prev.amount_nanos - s.charged_nanos, 0) ELSE 0 END;
            RETURN QUERY SELECT r.i, s.outcome, NULL::text, s.charged_nanos,
                s.revoked_public_id, NULL::bigint, NULL::bigint, NULL::bigint,
                NULL::bigint, NULL::bigint, NULL::smallint;
        ELSIF r.op = 'release' THEN
            SELECT billing.release(r.request_id) AS outcome INTO s;
            v_back := CASE WHEN s.outcome = 'released' AND prev.status = 'held'
                           THEN prev.amount_nanos ELSE 0 END;
            RETURN QUERY SELECT r.i, s.outcome, NULL::text, 0::bigint,
                NULL::text, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint,
                NULL::bigint, NULL::smallint;
        ELSE
            RAISE EXCEPTION 'unknown billing operation %', r.op
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF prev.lease_id IS NOT NULL THEN
            PERFORM billing.refill_lease(prev.lease_id, v_back);
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
