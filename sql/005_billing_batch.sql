-- Group commit for the request path: the holds, settlements and releases that a node's
-- concurrent requests queue up during one database round trip are applied together in
-- the next one (one call, one transaction, one commit). Each operation is the very
-- function a lone request would call (billing.hold / settle / release in 003), so the
-- money rules are unchanged; this only spares the round trips and the per-call costs.
--
-- p_ops: a JSON array of objects, each with "i" (its position, echoed back as ord) and
--   "op": "hold"    + request_id, key_id, model, estimated_input, max_tokens, client_ip,
--                     batch
--         "settle"  + request_id, input_tokens, output_tokens, cache_creation_5m,
--                     cache_creation_1h, cache_read, estimated
--         "release" + request_id
-- Returns one row per operation. For a hold (outcome held or duplicate) the price
-- snapshot taken by the hold comes back too, so the node can state a request's cost
-- the moment its usage is known, by the same rule as billing.request_cost. The price
-- columns are named as in model_catalog; batch_discount_pct is the discount the hold
-- resolved (0 unless it is a batch request).
--
-- Locking, always in this order: the existing holds the batch settles or releases (by
-- request id), then every account it touches (by id). Two batches (from any nodes) thus
-- never wait on each other in a cycle, nor on the sweeper (billing.expire_holds locks
-- holds, skipping locked ones, then accounts). Settlements and releases run before
-- holds, so money a finished request gives back is available to the next ones.
CREATE FUNCTION billing.apply_batch(p_ops jsonb, p_ttl_seconds double precision)
RETURNS TABLE (ord integer, outcome text, priced_model text, amount_nanos bigint,
               revoked_public_id text, input_price bigint, output_price bigint,
               cache_write_5m_price bigint, cache_write_1h_price bigint,
               cache_read_price bigint, batch_discount_pct smallint)
LANGUAGE plpgsql AS $$
DECLARE
    r  record;
    h  record;
    s  record;
    b  billing_holds;
BEGIN
    PERFORM 1 FROM billing_holds bh
     WHERE bh.request_id IN (
            SELECT o.request_id
              FROM jsonb_to_recordset(p_ops) AS o(op text, request_id text)
             WHERE o.op <> 'hold')
     ORDER BY bh.request_id
       FOR UPDATE;
    PERFORM 1 FROM accounts a
     WHERE a.id IN (
            SELECT k.account_id
              FROM jsonb_to_recordset(p_ops) AS o(op text, key_id bigint)
              JOIN api_keys k ON k.id = o.key_id
             WHERE o.op = 'hold'
            UNION
            SELECT bh.account_id
              FROM jsonb_to_recordset(p_ops) AS o(op text, request_id text)
              JOIN billing_holds bh ON bh.request_id = o.request_id
             WHERE o.op <> 'hold')
     ORDER BY a.id
       FOR UPDATE;
    FOR r IN
        SELECT *
          FROM jsonb_to_recordset(p_ops) AS o(
               i integer, op text, request_id text, key_id bigint, model text,
               estimated_input bigint, max_tokens bigint, client_ip text, batch boolean,
               input_tokens bigint, output_tokens bigint, cache_creation_5m bigint,
               cache_creation_1h bigint, cache_read bigint, estimated boolean)
         ORDER BY o.op = 'hold', o.i
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
