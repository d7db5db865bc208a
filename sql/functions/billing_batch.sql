-- Group commit for the request path. (Re-applied by `alicode-gw migrate` on every run:
-- CREATE OR REPLACE only.)
--
-- The holds, settlements and releases that a node's concurrent requests queue up during
-- one database round trip are applied together in the next one (one call, one
-- transaction, one commit). Each operation is the very function a lone request would
-- call (billing.hold / settle / release, billing.settle_leased), so the money rules are
-- unchanged; this only spares the round trips and the per-call costs.
--
-- p_ops: a JSON array of billing.batch_op objects (sql/migrations/006_credit_leases.sql),
-- each with "i" (its position, echoed back as ord) and
--   "op": "hold"          + request_id, key_id, model, estimated_input, max_tokens,
--                           client_ip, batch
--         "settle"        + request_id, input_tokens, output_tokens, cache_creation_5m,
--                           cache_creation_1h, cache_read, estimated, and hit_pct for
--                           a response cache hit (settle_leased too)
--         "settle_leased" + request_id, lease_id, key_id, requested_model, model,
--                           client_ip, reserved (nanos), the five prices (input_price ...
--                           cache_read_price, micro-USD per MTok), the five token counts
--                           and estimated (see billing.settle_leased)
--         "release"       + request_id
-- These keys are also the settlement journal's format (alicode_gw/money/contract.py
-- encodes and decodes them), so a journal written by an older node replays unchanged.
-- Its holds belong to node p_node (see billing.hold). Returns one row per operation. For a hold (outcome held or duplicate) the price
-- snapshot taken by the hold comes back too, so the node can state a request's cost
-- the moment its usage is known, by the same rule as billing.request_cost. The price
-- columns are named as in model_catalog; batch_discount_pct is the discount the hold
-- resolved (0 unless it is a batch request).
--
-- Locking, always in this order: the existing holds the batch settles or releases (by
-- request id), then the leases it settles against (by id), then every account it
-- touches (by id). Two batches (from any nodes) thus never wait on each other in a
-- cycle, nor on the sweeper (billing.expire_holds locks holds, skipping locked ones, then
-- accounts). Settlements and releases run before holds, so money a finished request
-- gives back is available to the next ones.
CREATE OR REPLACE FUNCTION billing.apply_batch(
    p_ops jsonb, p_ttl_seconds double precision, p_node text DEFAULT NULL)
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
            SELECT * INTO h FROM billing.hold(
                p_request_id => r.request_id,
                p_key_id => r.key_id,
                p_model => r.model,
                p_estimated_input_tokens => r.estimated_input,
                p_max_tokens => r.max_tokens,
                p_client_ip => r.client_ip,
                p_batch => coalesce(r.batch, false),
                p_ttl_seconds => p_ttl_seconds,
                p_node => p_node);
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
            SELECT * INTO s FROM billing.settle(
                p_request_id => r.request_id,
                p_tokens_input => r.input_tokens,
                p_tokens_output => r.output_tokens,
                p_tokens_cache_creation_5m => r.cache_creation_5m,
                p_tokens_cache_creation_1h => r.cache_creation_1h,
                p_tokens_cache_read => r.cache_read,
                p_estimated => coalesce(r.estimated, false),
                p_hit_pct => r.hit_pct);
            RETURN QUERY SELECT r.i, s.outcome, NULL::text, s.charged_nanos,
                s.revoked_public_id, NULL::bigint, NULL::bigint, NULL::bigint,
                NULL::bigint, NULL::bigint, NULL::smallint;
        ELSIF r.op = 'settle_leased' THEN
            SELECT * INTO s FROM billing.settle_leased(
                p_lease_id => r.lease_id,
                p_request_id => r.request_id,
                p_key_id => r.key_id,
                p_requested_model => r.requested_model,
                p_model => r.model,
                p_client_ip => r.client_ip,
                p_reserved_nanos => r.reserved,
                p_price_input_micro => r.input_price,
                p_price_output_micro => r.output_price,
                p_price_cache_write_5m_micro => r.cache_write_5m_price,
                p_price_cache_write_1h_micro => r.cache_write_1h_price,
                p_price_cache_read_micro => r.cache_read_price,
                p_tokens_input => r.input_tokens,
                p_tokens_output => r.output_tokens,
                p_tokens_cache_creation_5m => r.cache_creation_5m,
                p_tokens_cache_creation_1h => r.cache_creation_1h,
                p_tokens_cache_read => r.cache_read,
                p_estimated => coalesce(r.estimated, false),
                p_hit_pct => r.hit_pct);
            RETURN QUERY SELECT r.i, s.outcome, NULL::text, s.charged_nanos,
                s.revoked_public_id, NULL::bigint, NULL::bigint, NULL::bigint,
                NULL::bigint, NULL::bigint, NULL::smallint;
        ELSIF r.op = 'release' THEN
            RETURN QUERY SELECT r.i, billing.release(p_request_id => r.request_id), NULL::text, 0::bigint,
                NULL::text, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint,
                NULL::bigint, NULL::smallint;
        ELSE
            RAISE EXCEPTION 'unknown billing operation %', r.op
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
END $$;
