-- The one rounding rule. (Re-applied by `alicode-gw migrate` on every run: CREATE OR
-- REPLACE only.)
--
-- A request's cost is computed once, here, as
--     cost_nanos = ceil( sum_k(tokens_k * price_k) * (100 - discount_pct) / 100 / 1000 )
-- where prices are micro-USD per million tokens, so sum_k(tokens_k * price_k) is exact
-- pico-USD, and discount_pct is the model's batch discount for batch requests and 0
-- otherwise. The single ceil rounds up to the next whole nano-USD. A hold uses the same
-- rule on the worst-case token counts. alicode_gw.money.catalog.Prices.cost_nanos is the
-- same rule in Python.
--
-- Callers name every argument (p_price_input_micro => ..., p_tokens_input => ...): eleven
-- numbers of two units are not told apart by position.
CREATE OR REPLACE FUNCTION billing.request_cost(
    p_price_input_micro bigint,
    p_price_output_micro bigint,
    p_price_cache_write_5m_micro bigint,
    p_price_cache_write_1h_micro bigint,
    p_price_cache_read_micro bigint,
    p_discount_pct integer,
    p_tokens_input bigint,
    p_tokens_output bigint,
    p_tokens_cache_creation_5m bigint,
    p_tokens_cache_creation_1h bigint,
    p_tokens_cache_read bigint
) RETURNS bigint LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT ceil(
        (p_tokens_input::numeric * p_price_input_micro
         + p_tokens_output::numeric * p_price_output_micro
         + p_tokens_cache_creation_5m::numeric * p_price_cache_write_5m_micro
         + p_tokens_cache_creation_1h::numeric * p_price_cache_write_1h_micro
         + p_tokens_cache_read::numeric * p_price_cache_read_micro)
        * (100 - p_discount_pct) / 100000
    )::bigint
$$;
