-- Holds: reserve a request's worst case, settle its real usage once, release it, expire
-- the ones a crashed node left. (Re-applied by `alicode-gw migrate` on every run: CREATE
-- OR REPLACE only.) Units: see sql/migrations/003_billing.sql; the cost rule:
-- billing.request_cost (billing_cost.sql).

-- hold: reserve the worst-case cost (every estimated input token at the dearest input-side
-- rate, i.e. a 1-hour cache write, plus max_tokens of output) from the account's
-- available balance. The UPDATE ... WHERE available >= amount takes the account row
-- lock, so concurrent holds are serialised and can never together exceed the balance.
-- A key with a spend cap is held against it too (billing.reserve).
-- The hold belongs to node p_node (billing_nodes): when that node stops beating, the
-- sweeper gives it back (billing.expire_dead_nodes); p_ttl_seconds is the backstop.
-- outcome: held | duplicate (same request id already held) | insufficient |
--          over_cap | unknown_model | unknown_key
CREATE OR REPLACE FUNCTION billing.hold(
    p_request_id text, p_key_id bigint, p_model text, p_estimated_input_tokens bigint,
    p_max_tokens bigint, p_client_ip text, p_batch boolean, p_ttl_seconds double precision,
    p_node text DEFAULT NULL
) RETURNS TABLE (outcome text, priced_model text, hold_nanos bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_prev    billing_holds;
    v_model   models;
    v_account bigint;
    v_cap     bigint;
    v_disc    integer;
    v_amount  bigint;
    v_status  text;
BEGIN
    SELECT * INTO v_prev FROM billing_holds h WHERE h.request_id = p_request_id;
    IF FOUND THEN
        RETURN QUERY SELECT 'duplicate'::text, v_prev.model, v_prev.amount_nanos;
        RETURN;
    END IF;
    SELECT * INTO v_model FROM billing.resolve_model(p_name => p_model);
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown_model'::text, NULL::text, 0::bigint;
        RETURN;
    END IF;
    SELECT k.account_id, k.spend_cap_nanos INTO v_account, v_cap
      FROM api_keys k WHERE k.id = p_key_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown_key'::text, v_model.id, 0::bigint;
        RETURN;
    END IF;
    v_disc := CASE WHEN p_batch THEN v_model.batch_discount_pct ELSE 0 END;
    v_amount := billing.request_cost(
        p_price_input_micro => greatest(v_model.input_price, v_model.cache_write_5m_price,
                                        v_model.cache_write_1h_price, v_model.cache_read_price),
        p_price_output_micro => v_model.output_price,
        p_price_cache_write_5m_micro => 0,
        p_price_cache_write_1h_micro => 0,
        p_price_cache_read_micro => 0,
        p_discount_pct => v_disc,
        p_tokens_input => greatest(p_estimated_input_tokens, 0),
        p_tokens_output => greatest(p_max_tokens, 0),
        p_tokens_cache_creation_5m => 0,
        p_tokens_cache_creation_1h => 0,
        p_tokens_cache_read => 0);
    RETURN QUERY SELECT billing.reserve(
        p_request_id => p_request_id, p_key_id => p_key_id, p_account_id => v_account,
        p_cap_nanos => v_cap, p_requested_model => p_model, p_model => v_model,
        p_client_ip => p_client_ip, p_batch => p_batch, p_discount_pct => v_disc,
        p_amount_nanos => v_amount, p_ttl_seconds => p_ttl_seconds, p_node => p_node),
        v_model.id, v_amount;
END $$;

-- reserve (the end of billing.hold and billing.batch_open): hold p_amount_nanos of the
-- account's available balance for request p_request_id of key p_key_id, priced as
-- p_model with p_discount_pct off, and record the hold. A key with a spend cap
-- (p_cap_nanos) is held against it too, under the same account row lock: the hold is
-- refused while the key's spend plus its open holds has reached the cap, so its
-- concurrent requests together exceed the cap by at most one request's worst case.
-- outcome: held | insufficient | over_cap
CREATE OR REPLACE FUNCTION billing.reserve(
    p_request_id text, p_key_id bigint, p_account_id bigint, p_cap_nanos bigint,
    p_requested_model text, p_model models, p_client_ip text, p_batch boolean,
    p_discount_pct integer, p_amount_nanos bigint, p_ttl_seconds double precision,
    p_node text
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_status text;
BEGIN
    IF p_cap_nanos IS NOT NULL THEN
        -- The account row lock (every hold, settlement and release of the key's account
        -- takes it; billing.apply_batch already holds it) serialises the key's holds and
        -- spend, so the spend and open holds read next cannot change until this commits.
        PERFORM 1 FROM accounts a WHERE a.id = p_account_id FOR UPDATE;
        IF (SELECT k.spent_nanos FROM api_keys k WHERE k.id = p_key_id)
           + (SELECT coalesce(sum(b.amount_nanos), 0) FROM billing_holds b
               WHERE b.account_id = p_account_id AND b.status = 'held'
                 AND b.key_id = p_key_id) >= p_cap_nanos THEN
            RETURN 'over_cap';
        END IF;
    END IF;
    UPDATE accounts a SET held_nanos = a.held_nanos + p_amount_nanos
     WHERE a.id = p_account_id AND a.balance_nanos - a.held_nanos >= p_amount_nanos
    RETURNING a.status INTO v_status;
    IF NOT FOUND THEN
        RETURN 'insufficient';
    END IF;
    INSERT INTO billing_holds (request_id, account_id, key_id, requested_model, model,
                               client_ip, batch, amount_nanos, input_price, output_price,
                               cache_write_5m_price, cache_write_1h_price, cache_read_price,
                               discount_pct, expires_at, node)
    VALUES (p_request_id, p_account_id, p_key_id, p_requested_model, p_model.id,
            -- a deleted account's IPs are erased (dashboard.delete_account): a node that
            -- has not heard of the deletion yet stores none either
            CASE WHEN v_status = 'deleted' THEN NULL ELSE p_client_ip END,
            p_batch, p_amount_nanos, p_model.input_price, p_model.output_price,
            p_model.cache_write_5m_price, p_model.cache_write_1h_price,
            p_model.cache_read_price, p_discount_pct,
            now() + make_interval(secs => p_ttl_seconds), p_node);
    RETURN 'held';
END $$;

-- settle: bill the real usage exactly once. Converts the hold into one ledger row,
-- releases the rest of the hold, adds to the key's spend and revokes the key when its
-- spend cap is reached. A hold the sweeper already expired is still billed (the usage
-- is real); a released hold is not. The charge never exceeds what the account has left
-- outside its other holds; any uncovered part is recorded as shortfall_nanos.
-- p_hit_pct: a response cache hit (the usage is the original's): billed at that percent
-- of its cost, i.e. with a discount of 100 - p_hit_pct, and marked cache_hit.
-- outcome: settled | already_settled | released | unknown
CREATE OR REPLACE FUNCTION billing.settle(
    p_request_id text,
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
    h        billing_holds;
    v_cost   bigint;
    v_charge bigint;
BEGIN
    SELECT * INTO h FROM billing_holds b WHERE b.request_id = p_request_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown'::text, 0::bigint, NULL::text;
        RETURN;
    END IF;
    IF h.status = 'settled' THEN
        RETURN QUERY SELECT 'already_settled'::text, -l.amount_nanos, NULL::text
                       FROM ledger l WHERE l.request_id = p_request_id;
        RETURN;
    ELSIF h.status = 'released' THEN
        RETURN QUERY SELECT 'released'::text, 0::bigint, NULL::text;
        RETURN;
    END IF;
    v_cost := billing.request_cost(
        p_price_input_micro => h.input_price,
        p_price_output_micro => h.output_price,
        p_price_cache_write_5m_micro => h.cache_write_5m_price,
        p_price_cache_write_1h_micro => h.cache_write_1h_price,
        p_price_cache_read_micro => h.cache_read_price,
        p_discount_pct => CASE WHEN p_hit_pct IS NULL THEN h.discount_pct
                              ELSE 100 - least(greatest(p_hit_pct, 0), 100) END,
        p_tokens_input => greatest(p_tokens_input, 0),
        p_tokens_output => greatest(p_tokens_output, 0),
        p_tokens_cache_creation_5m => greatest(p_tokens_cache_creation_5m, 0),
        p_tokens_cache_creation_1h => greatest(p_tokens_cache_creation_1h, 0),
        p_tokens_cache_read => greatest(p_tokens_cache_read, 0));
    v_charge := billing.charge_hold(p_hold => h, p_cost_nanos => v_cost);
    INSERT INTO ledger (account_id, kind, amount_nanos, request_id, key_id, client_ip,
                        requested_model, model, input_tokens, output_tokens,
                        cache_creation_5m, cache_creation_1h, cache_read, batch,
                        cost_nanos, shortfall_nanos, status, cache_hit)
    VALUES (h.account_id, 'charge', -v_charge, p_request_id, h.key_id, h.client_ip,
            h.requested_model, h.model, greatest(p_tokens_input, 0),
            greatest(p_tokens_output, 0), greatest(p_tokens_cache_creation_5m, 0),
            greatest(p_tokens_cache_creation_1h, 0), greatest(p_tokens_cache_read, 0), h.batch,
            v_cost, v_cost - v_charge,
            CASE WHEN p_estimated THEN 'estimated' ELSE 'complete' END, p_hit_pct IS NOT NULL);
    RETURN QUERY SELECT 'settled'::text, v_charge,
        billing.key_spend(p_key_id => h.key_id, p_charge_nanos => v_charge);
END $$;

-- charge_hold (billing.settle and billing.batch_settle): close the locked hold h as
-- settled, charging p_cost_nanos to its account (its reservation given back), never more
-- than the account has outside its other holds. Returns the charge.
CREATE OR REPLACE FUNCTION billing.charge_hold(p_hold billing_holds, p_cost_nanos bigint)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_reserved  bigint := CASE WHEN p_hold.status = 'held' THEN p_hold.amount_nanos ELSE 0 END;
    v_available bigint;
    v_charge    bigint;
BEGIN
    SELECT a.balance_nanos - a.held_nanos + v_reserved INTO v_available
      FROM accounts a WHERE a.id = p_hold.account_id FOR UPDATE;
    v_charge := least(p_cost_nanos, greatest(v_available, 0));
    UPDATE accounts a
       SET balance_nanos = a.balance_nanos - v_charge,
           held_nanos = a.held_nanos - v_reserved
     WHERE a.id = p_hold.account_id;
    UPDATE billing_holds b SET status = 'settled', closed_at = now()
     WHERE b.request_id = p_hold.request_id;
    RETURN v_charge;
END $$;

-- release: the request produced nothing billable (upstream failed before any token).
-- outcome: released | already_released | settled | unknown
CREATE OR REPLACE FUNCTION billing.release(p_request_id text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    h billing_holds;
BEGIN
    SELECT * INTO h FROM billing_holds b WHERE b.request_id = p_request_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'unknown';
    ELSIF h.status = 'settled' THEN
        RETURN 'settled';
    ELSIF h.status = 'released' THEN
        RETURN 'already_released';
    END IF;
    IF h.status = 'held' THEN
        UPDATE accounts a SET held_nanos = a.held_nanos - h.amount_nanos
         WHERE a.id = h.account_id;
    END IF;
    UPDATE billing_holds b SET status = 'released', closed_at = now()
     WHERE b.request_id = p_request_id;
    RETURN 'released';
END $$;

-- expire_holds: the sweeper's expiry half (the node half: billing.expire_dead_nodes).
-- Holds past their expiry (a crashed node never settled or released them) give their reservation back; the hold row stays, marked 'expired', so
-- a late settlement (e.g. from the journal) is still billed once. One sweeper at a time
-- (transaction advisory lock); holds being settled right now are skipped.
CREATE OR REPLACE FUNCTION billing.expire_holds(p_limit integer DEFAULT 1000) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r       record;
    v_count integer := 0;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('alicode_gw.billing.expire_holds')) THEN
        RETURN 0;
    END IF;
    FOR r IN
        SELECT b.request_id, b.account_id, b.amount_nanos
          FROM billing_holds b
         WHERE b.status = 'held' AND b.expires_at < now()
         ORDER BY b.account_id, b.request_id
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    LOOP
        UPDATE accounts a SET held_nanos = a.held_nanos - r.amount_nanos
         WHERE a.id = r.account_id;
        UPDATE billing_holds b SET status = 'expired', closed_at = now()
         WHERE b.request_id = r.request_id;
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END $$;

-- key_spend (the end of billing.settle and billing.settle_leased): add a charge to the
-- key's spend; reaching its spend cap revokes the key. Returns the public id when this
-- charge is the one that revoked it.
CREATE OR REPLACE FUNCTION billing.key_spend(p_key_id bigint, p_charge_nanos bigint)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_key    api_keys;
    v_status text;
BEGIN
    -- The status before the charge tells whether this charge is the one that revokes it
    -- (a key revoked for another reason stays as it is).
    SELECT k.status INTO v_status FROM api_keys k WHERE k.id = p_key_id FOR UPDATE;
    UPDATE api_keys k SET spent_nanos = k.spent_nanos + p_charge_nanos
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
