-- Message Batches' money (the table: sql/migrations/011_batches.sql; the rules:
-- docs/batches.md). (Re-applied by `alicode-gw migrate` on every run: CREATE OR REPLACE
-- only.) A batch is held, settled and released like one request of billing_holds.sql,
-- under request_id = the batch's id, at each model's batch price
-- (models.batch_discount_pct, the same billing.request_cost rule).

-- batch_open: record a new batch and hold its worst case: for each request, its
-- estimated input at the dearest input-side rate plus its max_tokens of output, at the
-- batch price of its model. p_items: [{"custom_id", "model" (as sent), "input",
-- "max_tokens"}]. The hold belongs to no node (a batch outlives its process) and
-- expires after p_hold_ttl_seconds (past the batch's own expiry; a later settlement is
-- still billed, as for any expired hold).
-- outcome: held | duplicate | insufficient | over_cap | unknown_model | unknown_key
CREATE OR REPLACE FUNCTION billing.batch_open(
    p_batch_id text, p_key_id bigint, p_client_ip text, p_items jsonb,
    p_expires_at timestamptz, p_hold_ttl_seconds double precision
) RETURNS TABLE (outcome text, hold_nanos bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_item    jsonb;
    v_model   models;
    v_first   models;
    v_account bigint;
    v_cap     bigint;
    v_amount  bigint := 0;
    v_prices  jsonb := '{}'::jsonb;
    v_map     jsonb := '{}'::jsonb;
    v_outcome text;
BEGIN
    IF EXISTS (SELECT 1 FROM billing_holds h WHERE h.request_id = p_batch_id) THEN
        RETURN QUERY SELECT 'duplicate'::text, 0::bigint;
        RETURN;
    END IF;
    SELECT k.account_id, k.spend_cap_nanos INTO v_account, v_cap
      FROM api_keys k WHERE k.id = p_key_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown_key'::text, 0::bigint;
        RETURN;
    END IF;
    FOR v_item IN SELECT * FROM jsonb_array_elements(p_items) LOOP
        SELECT * INTO v_model FROM billing.resolve_model(p_name => v_item ->> 'model');
        IF NOT FOUND THEN
            RETURN QUERY SELECT 'unknown_model'::text, 0::bigint;
            RETURN;
        END IF;
        IF v_first.id IS NULL THEN
            v_first := v_model;
        END IF;
        v_amount := v_amount + billing.request_cost(
            p_price_input_micro => greatest(v_model.input_price, v_model.cache_write_5m_price,
                                            v_model.cache_write_1h_price,
                                            v_model.cache_read_price),
            p_price_output_micro => v_model.output_price,
            p_price_cache_write_5m_micro => 0,
            p_price_cache_write_1h_micro => 0,
            p_price_cache_read_micro => 0,
            p_discount_pct => v_model.batch_discount_pct,
            p_tokens_input => greatest((v_item ->> 'input')::bigint, 0),
            p_tokens_output => greatest((v_item ->> 'max_tokens')::bigint, 0),
            p_tokens_cache_creation_5m => 0,
            p_tokens_cache_creation_1h => 0,
            p_tokens_cache_read => 0);
        v_prices := v_prices || jsonb_build_object(v_model.id, jsonb_build_object(
            'input', v_model.input_price, 'output', v_model.output_price,
            'cache_write_5m', v_model.cache_write_5m_price,
            'cache_write_1h', v_model.cache_write_1h_price,
            'cache_read', v_model.cache_read_price,
            'discount_pct', v_model.batch_discount_pct));
        v_map := v_map || jsonb_build_object(v_item ->> 'custom_id', v_model.id);
    END LOOP;
    IF v_first.id IS NULL THEN
        RETURN QUERY SELECT 'unknown_model'::text, 0::bigint;
        RETURN;
    END IF;
    -- The hold row names the first request's model and prices; the batch's own price
    -- snapshot (all its models) is in message_batches.prices.
    v_outcome := billing.reserve(
        p_request_id => p_batch_id, p_key_id => p_key_id, p_account_id => v_account,
        p_cap_nanos => v_cap, p_requested_model => v_first.id, p_model => v_first,
        p_client_ip => p_client_ip, p_batch => true,
        p_discount_pct => v_first.batch_discount_pct, p_amount_nanos => v_amount,
        p_ttl_seconds => p_hold_ttl_seconds, p_node => NULL);
    IF v_outcome <> 'held' THEN
        RETURN QUERY SELECT v_outcome, v_amount;
        RETURN;
    END IF;
    INSERT INTO message_batches (id, account_id, key_id, request_count, prices,
                                 request_models, expires_at)
    VALUES (p_batch_id, v_account, p_key_id, jsonb_array_length(p_items), v_prices, v_map,
            p_expires_at);
    RETURN QUERY SELECT 'held'::text, v_amount;
END $$;

-- batch_settle: bill an ended batch exactly once: p_usage holds the summed usage of its
-- succeeded requests by priced model ([{"model", "input_tokens", "output_tokens",
-- "cache_creation_5m", "cache_creation_1h", "cache_read"}]); each model's sum is priced
-- with the batch's price snapshot (one billing.request_cost per model). Errored,
-- canceled and expired requests are free. One ledger row (request_id = the batch id)
-- with the request counts; the batch turns `ended` in the same transaction. The batch
-- row lock makes a second call (another node, a rerun) answer already_settled.
-- outcome: settled | already_settled | released | unknown
CREATE OR REPLACE FUNCTION billing.batch_settle(
    p_batch_id text, p_usage jsonb, p_succeeded integer, p_errored integer,
    p_canceled integer, p_expired integer, p_ended_at timestamptz
) RETURNS TABLE (outcome text, charged_nanos bigint, revoked_public_id text)
LANGUAGE plpgsql AS $$
DECLARE
    b           message_batches;
    h           billing_holds;
    v_row       jsonb;
    v_price     jsonb;
    v_cost      bigint := 0;
    v_charge    bigint;
    v_in        bigint := 0;
    v_out       bigint := 0;
    v_w5        bigint := 0;
    v_w1        bigint := 0;
    v_cr        bigint := 0;
    v_models    text;
BEGIN
    SELECT * INTO b FROM message_batches m WHERE m.id = p_batch_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown'::text, 0::bigint, NULL::text;
        RETURN;
    ELSIF b.settlement = 'settled' THEN
        RETURN QUERY SELECT 'already_settled'::text, -l.amount_nanos, NULL::text
                       FROM ledger l WHERE l.request_id = p_batch_id;
        RETURN;
    ELSIF b.settlement = 'released' THEN
        RETURN QUERY SELECT 'released'::text, 0::bigint, NULL::text;
        RETURN;
    END IF;
    SELECT * INTO h FROM billing_holds x WHERE x.request_id = p_batch_id FOR UPDATE;
    FOR v_row IN SELECT * FROM jsonb_array_elements(p_usage) LOOP
        v_price := b.prices -> (v_row ->> 'model');
        IF v_price IS NULL THEN
            RAISE EXCEPTION 'batch %: no price snapshot for model %', p_batch_id,
                v_row ->> 'model' USING ERRCODE = 'data_exception';
        END IF;
        v_cost := v_cost + billing.request_cost(
            p_price_input_micro => (v_price ->> 'input')::bigint,
            p_price_output_micro => (v_price ->> 'output')::bigint,
            p_price_cache_write_5m_micro => (v_price ->> 'cache_write_5m')::bigint,
            p_price_cache_write_1h_micro => (v_price ->> 'cache_write_1h')::bigint,
            p_price_cache_read_micro => (v_price ->> 'cache_read')::bigint,
            p_discount_pct => (v_price ->> 'discount_pct')::integer,
            p_tokens_input => greatest((v_row ->> 'input_tokens')::bigint, 0),
            p_tokens_output => greatest((v_row ->> 'output_tokens')::bigint, 0),
            p_tokens_cache_creation_5m => greatest((v_row ->> 'cache_creation_5m')::bigint, 0),
            p_tokens_cache_creation_1h => greatest((v_row ->> 'cache_creation_1h')::bigint, 0),
            p_tokens_cache_read => greatest((v_row ->> 'cache_read')::bigint, 0));
        v_in := v_in + greatest((v_row ->> 'input_tokens')::bigint, 0);
        v_out := v_out + greatest((v_row ->> 'output_tokens')::bigint, 0);
        v_w5 := v_w5 + greatest((v_row ->> 'cache_creation_5m')::bigint, 0);
        v_w1 := v_w1 + greatest((v_row ->> 'cache_creation_1h')::bigint, 0);
        v_cr := v_cr + greatest((v_row ->> 'cache_read')::bigint, 0);
    END LOOP;
    SELECT string_agg(DISTINCT m.value #>> '{}', ',' ORDER BY m.value #>> '{}') INTO v_models
      FROM jsonb_each(b.request_models) m;
    v_charge := billing.charge_hold(p_hold => h, p_cost_nanos => v_cost);
    INSERT INTO ledger (account_id, kind, amount_nanos, request_id, key_id, client_ip,
                        requested_model, model, input_tokens, output_tokens,
                        cache_creation_5m, cache_creation_1h, cache_read, batch,
                        cost_nanos, shortfall_nanos, status, batch_requests,
                        batch_succeeded, batch_errored, batch_canceled, batch_expired)
    VALUES (b.account_id, 'charge', -v_charge, p_batch_id, b.key_id, h.client_ip,
            'message_batch', v_models, v_in, v_out, v_w5, v_w1, v_cr, true,
            v_cost, v_cost - v_charge, 'complete', b.request_count,
            p_succeeded, p_errored, p_canceled, p_expired);
    UPDATE message_batches m
       SET status = 'ended', settlement = 'settled', settled_at = now(),
           ended_at = coalesce(p_ended_at, now()), succeeded = p_succeeded,
           errored = p_errored, canceled = p_canceled, expired = p_expired
     WHERE m.id = p_batch_id;
    RETURN QUERY SELECT 'settled'::text, v_charge,
        billing.key_spend(p_key_id => b.key_id, p_charge_nanos => v_charge);
END $$;

-- batch_release: a batch that bills nothing (its submission failed for good): ended,
-- every request errored, its hold given back. outcome: released | already_released |
-- settled | unknown
CREATE OR REPLACE FUNCTION billing.batch_release(p_batch_id text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    b message_batches;
BEGIN
    SELECT * INTO b FROM message_batches m WHERE m.id = p_batch_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'unknown';
    ELSIF b.settlement = 'settled' THEN
        RETURN 'settled';
    ELSIF b.settlement = 'released' THEN
        RETURN 'already_released';
    END IF;
    PERFORM billing.release(p_request_id => p_batch_id);
    UPDATE message_batches m
       SET status = 'ended', settlement = 'released', settled_at = now(), ended_at = now(),
           errored = m.request_count, succeeded = 0, canceled = 0, expired = 0
     WHERE m.id = p_batch_id;
    RETURN 'released';
END $$;

-- batch_claim: up to p_limit open batches due for a poll, each pushed back by
-- p_lease_seconds so that no other process polls it meanwhile (SKIP LOCKED: nodes never
-- wait on each other). The poller sets the real next poll time after its poll.
CREATE OR REPLACE FUNCTION billing.batch_claim(p_limit integer, p_lease_seconds double precision)
RETURNS SETOF message_batches
LANGUAGE sql AS $$
    UPDATE message_batches m
       SET next_poll_at = now() + make_interval(secs => p_lease_seconds), polls = m.polls + 1
     WHERE m.id IN (SELECT d.id FROM message_batches d
                     WHERE d.settlement = 'open' AND d.next_poll_at <= now()
                     ORDER BY d.next_poll_at
                     LIMIT p_limit
                       FOR UPDATE SKIP LOCKED)
    RETURNING m.*
$$;
