-- Billing: the model/price table, prepaid balances, holds, the ledger, and the PL/pgSQL
-- functions that move money. Python only passes numbers in and reads results.
--
-- Units (all integers, no floats anywhere money flows):
--   * money:  nano-USD, bigint (1 USD = 1 000 000 000 nanos)
--   * prices: micro-USD per million tokens, bigint ($3.00 / MTok = 3 000 000)
--
-- The ONE rounding rule: a request's cost is computed once, in billing.request_cost, as
--     cost_nanos = ceil( sum_k(tokens_k * price_k) * (100 - discount_pct) / 100 / 1000 )
-- where discount_pct is the model's batch discount for batch requests and 0 otherwise.
-- sum_k(tokens_k * price_k) is exact (pico-USD); the single ceil rounds up to the next
-- whole nano-USD. The hold uses the same formula on the worst-case token counts.

CREATE SCHEMA billing;

-- ---------------------------------------------------------------------------------------
-- Models and prices. A priced row has prices and capabilities; an alias row has neither
-- and points at a priced row (alias_of). Aliases are listed as their own entries.
-- ---------------------------------------------------------------------------------------
CREATE TABLE models (
    id                   text PRIMARY KEY,
    display_name         text NOT NULL,
    created_at           timestamptz NOT NULL,
    alias_of             text REFERENCES models (id),
    context_window       integer CHECK (context_window > 0),
    max_output_tokens    integer CHECK (max_output_tokens > 0),
    supports_vision      boolean,
    supports_thinking    boolean,
    -- micro-USD per million tokens
    input_price          bigint CHECK (input_price >= 0),
    output_price         bigint CHECK (output_price >= 0),
    cache_write_5m_price bigint CHECK (cache_write_5m_price >= 0),
    cache_write_1h_price bigint CHECK (cache_write_1h_price >= 0),
    cache_read_price     bigint CHECK (cache_read_price >= 0),
    batch_discount_pct   smallint CHECK (batch_discount_pct BETWEEN 0 AND 100),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CHECK (alias_of IS NULL OR alias_of <> id),
    CONSTRAINT models_priced_or_alias CHECK (
        CASE WHEN alias_of IS NULL THEN
            num_nulls(context_window, max_output_tokens, supports_vision, supports_thinking,
                      input_price, output_price, cache_write_5m_price, cache_write_1h_price,
                      cache_read_price, batch_discount_pct) = 0
        ELSE
            num_nonnulls(context_window, max_output_tokens, supports_vision, supports_thinking,
                         input_price, output_price, cache_write_5m_price,
                         cache_write_1h_price, cache_read_price, batch_discount_pct) = 0
        END
    )
);

-- An alias must point at a priced model (one level), and a priced model that aliases
-- point at cannot itself become an alias.
CREATE FUNCTION billing.check_alias() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.alias_of IS NOT NULL THEN
        IF EXISTS (SELECT 1 FROM models m WHERE m.id = NEW.alias_of AND m.alias_of IS NOT NULL)
        THEN
            RAISE EXCEPTION 'model % is itself an alias; point % at a priced model',
                NEW.alias_of, NEW.id USING ERRCODE = 'check_violation';
        END IF;
        IF EXISTS (SELECT 1 FROM models m WHERE m.alias_of = NEW.id) THEN
            RAISE EXCEPTION 'model % has aliases pointing at it and cannot become an alias',
                NEW.id USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER models_check_alias BEFORE INSERT OR UPDATE ON models
    FOR EACH ROW EXECUTE FUNCTION billing.check_alias();

-- Every name a client may send, resolved to the priced model it is billed as.
CREATE VIEW model_catalog AS
SELECT a.id,
       t.id AS target,
       a.display_name,
       a.created_at,
       a.alias_of IS NOT NULL AS is_alias,
       t.context_window,
       t.max_output_tokens,
       t.supports_vision,
       t.supports_thinking,
       t.input_price,
       t.output_price,
       t.cache_write_5m_price,
       t.cache_write_1h_price,
       t.cache_read_price,
       t.batch_discount_pct,
       greatest(a.updated_at, t.updated_at) AS updated_at
  FROM models a
  JOIN models t ON t.id = coalesce(a.alias_of, a.id);

-- Seed. Prices are Anthropic's official list prices. The AliCode document's price table
-- disagrees (haiku-4-5 $0.80/$4.00, sonnet-4-5 $2.50/$12.00, cache write $3.13, and an
-- "opus-4-8" at $3/$14): those are a reseller's discounted or stale figures, so the
-- official ones are seeded and an operator changes them with `alicode-gw price set`.
-- Cache writes: 5-minute = 1.25 x input, 1-hour = 2 x input; cache read = 0.1 x input;
-- batch = 50 % off. Context / max output follow the AliCode model table where it lists
-- the model and the official model page otherwise (claude-opus-4-6).
INSERT INTO models (id, display_name, created_at, context_window, max_output_tokens,
                    supports_vision, supports_thinking, input_price, output_price,
                    cache_write_5m_price, cache_write_1h_price, cache_read_price,
                    batch_discount_pct)
VALUES
    ('claude-haiku-4-5',  'Claude Haiku 4.5',  '2025-10-15T00:00:00Z', 200000,  64000,
     true, true, 1000000,  5000000, 1250000,  2000000, 100000, 50),
    ('claude-sonnet-4-5', 'Claude Sonnet 4.5', '2025-09-29T00:00:00Z', 200000,  64000,
     true, true, 3000000, 15000000, 3750000,  6000000, 300000, 50),
    ('claude-sonnet-4-6', 'Claude Sonnet 4.6', '2026-02-17T00:00:00Z', 200000,  64000,
     true, true, 3000000, 15000000, 3750000,  6000000, 300000, 50),
    ('claude-opus-4-5',   'Claude Opus 4.5',   '2025-11-24T00:00:00Z', 200000,  64000,
     true, true, 5000000, 25000000, 6250000, 10000000, 500000, 50),
    ('claude-opus-4-6',   'Claude Opus 4.6',   '2026-02-05T00:00:00Z', 1000000, 128000,
     true, true, 5000000, 25000000, 6250000, 10000000, 500000, 50),
    ('claude-opus-4-7',   'Claude Opus 4.7',   '2026-04-16T00:00:00Z', 200000,  128000,
     true, true, 5000000, 25000000, 6250000, 10000000, 500000, 50);

-- Aliases named by the AliCode document: earlier Claude ids, and the OpenAI model names
-- Cursor's free plan allows ("gpt-4o or gpt-4-turbo"). Each maps to the nearest current
-- model; the mapping is listed by `alicode-gw price list` and /v1/models.
INSERT INTO models (id, display_name, created_at, alias_of) VALUES
    ('claude-3-7-sonnet-latest', 'Alias of Claude Sonnet 4.5', '2025-02-24T00:00:00Z',
     'claude-sonnet-4-5'),
    ('claude-3-5-haiku-latest',  'Alias of Claude Haiku 4.5',  '2024-10-22T00:00:00Z',
     'claude-haiku-4-5'),
    ('claude-opus-4-1',          'Alias of Claude Opus 4.5',   '2025-08-05T00:00:00Z',
     'claude-opus-4-5'),
    ('gpt-4o',                   'Alias of Claude Sonnet 4.5', '2024-05-13T00:00:00Z',
     'claude-sonnet-4-5'),
    ('gpt-4-turbo',              'Alias of Claude Sonnet 4.5', '2024-04-09T00:00:00Z',
     'claude-sonnet-4-5');

-- ---------------------------------------------------------------------------------------
-- Balances. balance = top-ups - charges (what the account owns); held = reserved by
-- open holds; available = balance - held. Neither may go below zero.
-- ---------------------------------------------------------------------------------------
ALTER TABLE accounts
    ADD COLUMN balance_nanos bigint NOT NULL DEFAULT 0,
    ADD COLUMN held_nanos    bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT accounts_balance_nonnegative CHECK (balance_nanos >= 0),
    ADD CONSTRAINT accounts_held_covered CHECK (held_nanos >= 0 AND held_nanos <= balance_nanos);

-- One row per request that passed the hold. The prices are a snapshot taken at hold
-- time: a request is billed at the price in force when it was accepted.
CREATE TABLE billing_holds (
    request_id           text PRIMARY KEY,
    account_id           bigint NOT NULL REFERENCES accounts (id),
    key_id               bigint NOT NULL REFERENCES api_keys (id),
    requested_model      text NOT NULL,
    model                text NOT NULL REFERENCES models (id),
    client_ip            text,
    batch                boolean NOT NULL,
    amount_nanos         bigint NOT NULL CHECK (amount_nanos >= 0),
    input_price          bigint NOT NULL,
    output_price         bigint NOT NULL,
    cache_write_5m_price bigint NOT NULL,
    cache_write_1h_price bigint NOT NULL,
    cache_read_price     bigint NOT NULL,
    discount_pct         smallint NOT NULL,
    status               text NOT NULL DEFAULT 'held'
                         CHECK (status IN ('held', 'settled', 'released', 'expired')),
    created_at           timestamptz NOT NULL DEFAULT now(),
    expires_at           timestamptz NOT NULL,
    closed_at            timestamptz
);
CREATE INDEX billing_holds_open_idx ON billing_holds (expires_at) WHERE status = 'held';
CREATE INDEX billing_holds_account_idx ON billing_holds (account_id) WHERE status = 'held';

-- The ledger: one row per billed request and one per top-up. Metadata only: never a
-- prompt or a response. amount_nanos is signed (+ top-up, - charge), so an account's
-- balance always equals the sum of its ledger amounts.
CREATE TABLE ledger (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at        timestamptz NOT NULL DEFAULT now(),
    account_id        bigint NOT NULL REFERENCES accounts (id),
    kind              text NOT NULL CHECK (kind IN ('charge', 'topup')),
    amount_nanos      bigint NOT NULL,
    request_id        text UNIQUE,
    key_id            bigint REFERENCES api_keys (id),
    client_ip         text,
    requested_model   text,
    model             text,
    input_tokens      bigint,
    output_tokens     bigint,
    cache_creation_5m bigint,
    cache_creation_1h bigint,
    cache_read        bigint,
    batch             boolean,
    cost_nanos        bigint,            -- price of the usage
    shortfall_nanos   bigint NOT NULL DEFAULT 0,  -- cost the balance could not cover
    status            text NOT NULL
                      CHECK (status IN ('complete', 'estimated', 'credited')),
    note              text,
    CHECK ((kind = 'charge') = (request_id IS NOT NULL)),
    CHECK (kind <> 'charge' OR (amount_nanos <= 0 AND cost_nanos = shortfall_nanos - amount_nanos)),
    CHECK (kind <> 'topup' OR (amount_nanos > 0 AND status = 'credited'))
);
CREATE INDEX ledger_account_idx ON ledger (account_id, created_at);

-- ---------------------------------------------------------------------------------------
-- The rounding rule (see the top of this file). Exact numeric arithmetic, one ceil.
-- ---------------------------------------------------------------------------------------
CREATE FUNCTION billing.request_cost(
    p_input bigint, p_output bigint, p_cw5m bigint, p_cw1h bigint, p_cread bigint,
    p_discount_pct integer,
    t_input bigint, t_output bigint, t_cw5m bigint, t_cw1h bigint, t_cread bigint
) RETURNS bigint LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT ceil(
        (t_input::numeric * p_input + t_output::numeric * p_output
         + t_cw5m::numeric * p_cw5m + t_cw1h::numeric * p_cw1h + t_cread::numeric * p_cread)
        * (100 - p_discount_pct) / 100000
    )::bigint
$$;

-- hold: reserve the worst-case cost (every estimated input token at the dearest input-side
-- rate, i.e. a 1-hour cache write, plus max_tokens of output) from the account's
-- available balance. The UPDATE ... WHERE available >= amount takes the account row
-- lock, so concurrent holds are serialised and can never together exceed the balance.
-- outcome: held | duplicate (same request id already held) | insufficient |
--          unknown_model | unknown_key
CREATE FUNCTION billing.hold(
    p_request_id text, p_key_id bigint, p_model text, p_estimated_input bigint,
    p_max_tokens bigint, p_client_ip text, p_batch boolean, p_ttl_seconds double precision
) RETURNS TABLE (outcome text, priced_model text, hold_nanos bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_prev    billing_holds;
    v_model   models;
    v_account bigint;
    v_disc    integer;
    v_amount  bigint;
BEGIN
    SELECT * INTO v_prev FROM billing_holds h WHERE h.request_id = p_request_id;
    IF FOUND THEN
        RETURN QUERY SELECT 'duplicate'::text, v_prev.model, v_prev.amount_nanos;
        RETURN;
    END IF;
    SELECT t.* INTO v_model
      FROM models a JOIN models t ON t.id = coalesce(a.alias_of, a.id)
     WHERE a.id = p_model;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown_model'::text, NULL::text, 0::bigint;
        RETURN;
    END IF;
    SELECT k.account_id INTO v_account FROM api_keys k WHERE k.id = p_key_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown_key'::text, v_model.id, 0::bigint;
        RETURN;
    END IF;
    v_disc := CASE WHEN p_batch THEN v_model.batch_discount_pct ELSE 0 END;
    v_amount := billing.request_cost(
        greatest(v_model.input_price, v_model.cache_write_5m_price,
                 v_model.cache_write_1h_price, v_model.cache_read_price),
        v_model.output_price, 0, 0, 0, v_disc,
        greatest(p_estimated_input, 0), greatest(p_max_tokens, 0), 0, 0, 0);
    UPDATE accounts a SET held_nanos = a.held_nanos + v_amount
     WHERE a.id = v_account AND a.balance_nanos - a.held_nanos >= v_amount;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'insufficient'::text, v_model.id, v_amount;
        RETURN;
    END IF;
    INSERT INTO billing_holds (request_id, account_id, key_id, requested_model, model,
                               client_ip, batch, amount_nanos, input_price, output_price,
                               cache_write_5m_price, cache_write_1h_price, cache_read_price,
                               discount_pct, expires_at)
    VALUES (p_request_id, v_account, p_key_id, p_model, v_model.id, p_client_ip, p_batch,
            v_amount, v_model.input_price, v_model.output_price,
            v_model.cache_write_5m_price, v_model.cache_write_1h_price,
            v_model.cache_read_price, v_disc,
            now() + make_interval(secs => p_ttl_seconds));
    RETURN QUERY SELECT 'held'::text, v_model.id, v_amount;
END $$;

-- settle: bill the real usage exactly once. Converts the hold into one ledger row,
-- releases the rest of the hold, adds to the key's spend and revokes the key when its
-- spend cap is reached. A hold the sweeper already expired is still billed (the usage
-- is real); a released hold is not. The charge never exceeds what the account has left
-- outside its other holds; any uncovered part is recorded as shortfall_nanos.
-- outcome: settled | already_settled | released | unknown
CREATE FUNCTION billing.settle(
    p_request_id text, t_input bigint, t_output bigint, t_cw5m bigint, t_cw1h bigint,
    t_cread bigint, p_estimated boolean
) RETURNS TABLE (outcome text, charged_nanos bigint, revoked_public_id text)
LANGUAGE plpgsql AS $$
DECLARE
    h           billing_holds;
    v_cost      bigint;
    v_reserved  bigint;
    v_available bigint;
    v_charge    bigint;
    v_key       api_keys;
    v_status    text;
    v_revoked   text;
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
        h.input_price, h.output_price, h.cache_write_5m_price, h.cache_write_1h_price,
        h.cache_read_price, h.discount_pct,
        greatest(t_input, 0), greatest(t_output, 0), greatest(t_cw5m, 0),
        greatest(t_cw1h, 0), greatest(t_cread, 0));
    v_reserved := CASE WHEN h.status = 'held' THEN h.amount_nanos ELSE 0 END;
    SELECT a.balance_nanos - a.held_nanos + v_reserved INTO v_available
      FROM accounts a WHERE a.id = h.account_id FOR UPDATE;
    v_charge := least(v_cost, greatest(v_available, 0));
    UPDATE accounts a
       SET balance_nanos = a.balance_nanos - v_charge,
           held_nanos = a.held_nanos - v_reserved
     WHERE a.id = h.account_id;
    UPDATE billing_holds b SET status = 'settled', closed_at = now()
     WHERE b.request_id = p_request_id;
    INSERT INTO ledger (account_id, kind, amount_nanos, request_id, key_id, client_ip,
                        requested_model, model, input_tokens, output_tokens,
                        cache_creation_5m, cache_creation_1h, cache_read, batch,
                        cost_nanos, shortfall_nanos, status)
    VALUES (h.account_id, 'charge', -v_charge, p_request_id, h.key_id, h.client_ip,
            h.requested_model, h.model, greatest(t_input, 0), greatest(t_output, 0),
            greatest(t_cw5m, 0), greatest(t_cw1h, 0), greatest(t_cread, 0), h.batch,
            v_cost, v_cost - v_charge,
            CASE WHEN p_estimated THEN 'estimated' ELSE 'complete' END);
    -- 002_auth's trigger revokes a key whose spend reaches its cap in this same UPDATE;
    -- the status before it tells whether this settlement is the one that revoked it.
    SELECT k.status INTO v_status FROM api_keys k WHERE k.id = h.key_id FOR UPDATE;
    UPDATE api_keys k SET spent_nanos = k.spent_nanos + v_charge
     WHERE k.id = h.key_id
    RETURNING * INTO v_key;
    IF v_status = 'active' AND v_key.spend_cap_nanos IS NOT NULL
       AND v_key.spent_nanos >= v_key.spend_cap_nanos THEN
        UPDATE api_keys k
           SET status = 'revoked', revoked_reason = 'spend cap reached', revoked_at = now()
         WHERE k.id = h.key_id AND k.status = 'active';
        v_revoked := v_key.public_id;
    END IF;
    RETURN QUERY SELECT 'settled'::text, v_charge, v_revoked;
END $$;

-- release: the request produced nothing billable (upstream failed before any token).
-- outcome: released | already_released | settled | unknown
CREATE FUNCTION billing.release(p_request_id text) RETURNS text
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

-- expire_holds: the sweeper. Holds past their expiry (a crashed node never settled or
-- released them) give their reservation back; the hold row stays, marked 'expired', so
-- a late settlement (e.g. from the journal) is still billed once. One sweeper at a time
-- (transaction advisory lock); holds being settled right now are skipped.
CREATE FUNCTION billing.expire_holds(p_limit integer DEFAULT 1000) RETURNS integer
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

-- topup: credit an account; one ledger row. Returns the new balance.
CREATE FUNCTION billing.topup(p_account_id bigint, p_amount_nanos bigint, p_note text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_balance bigint;
BEGIN
    IF p_amount_nanos <= 0 THEN
        RAISE EXCEPTION 'a top-up must be positive' USING ERRCODE = 'check_violation';
    END IF;
    UPDATE accounts a SET balance_nanos = a.balance_nanos + p_amount_nanos
     WHERE a.id = p_account_id
    RETURNING a.balance_nanos INTO v_balance;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no account %', p_account_id USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO ledger (account_id, kind, amount_nanos, status, note)
    VALUES (p_account_id, 'topup', p_amount_nanos, 'credited', p_note);
    RETURN v_balance;
END $$;

-- audit: every account whose balance differs from top-ups - charges, or whose held
-- amount differs from the sum of its open holds. No rows = the books add up.
CREATE FUNCTION billing.audit()
RETURNS TABLE (account_id bigint, email text, balance_nanos bigint, ledger_nanos bigint,
               held_nanos bigint, open_holds_nanos bigint)
LANGUAGE sql STABLE AS $$
    SELECT a.id, a.email, a.balance_nanos,
           coalesce((SELECT sum(l.amount_nanos) FROM ledger l WHERE l.account_id = a.id), 0)::bigint,
           a.held_nanos,
           coalesce((SELECT sum(h.amount_nanos) FROM billing_holds h
                      WHERE h.account_id = a.id AND h.status = 'held'), 0)::bigint
      FROM accounts a
     WHERE a.balance_nanos <> coalesce((SELECT sum(l.amount_nanos) FROM ledger l
                                         WHERE l.account_id = a.id), 0)
        OR a.held_nanos <> coalesce((SELECT sum(h.amount_nanos) FROM billing_holds h
                                      WHERE h.account_id = a.id AND h.status = 'held'), 0)
     ORDER BY a.id
$$;
