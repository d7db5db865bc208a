-- The billing functions' parameters are named by what they hold and in which unit
-- (p_price_input_micro, p_tokens_input, p_reserved_nanos, ...), and their callers name
-- them. CREATE OR REPLACE cannot rename a parameter, so the signatures as
-- 003/005/006 first defined them are dropped here; sql/functions/ creates them again
-- right after the migrations (same argument types, same result columns). On a new
-- database none of them exists yet.
DROP FUNCTION IF EXISTS billing.request_cost(
    bigint, bigint, bigint, bigint, bigint, integer, bigint, bigint, bigint, bigint, bigint);
DROP FUNCTION IF EXISTS billing.hold(
    text, bigint, text, bigint, bigint, text, boolean, double precision);
DROP FUNCTION IF EXISTS billing.settle(text, bigint, bigint, bigint, bigint, bigint, boolean);
DROP FUNCTION IF EXISTS billing.key_spend(bigint, bigint);
DROP FUNCTION IF EXISTS billing.settle_leased(
    bigint, text, bigint, text, text, text, bigint,
    bigint, bigint, bigint, bigint, bigint,
    bigint, bigint, bigint, bigint, bigint,
    boolean);
DROP FUNCTION IF EXISTS billing.lease_open(bigint, text, bigint, bigint, integer, double precision);
DROP FUNCTION IF EXISTS billing.lease_grow(bigint, bigint, integer, double precision);
DROP FUNCTION IF EXISTS billing.lease_shrink(bigint, bigint);
