-- Billing: the model/price table, prepaid balances, holds and the ledger. The functions
-- that move money are in sql/functions/billing_*.sql; Python only passes numbers in and
-- reads results.
--
-- Units (all integers, no floats anywhere money flows):
--   * money:  nano-USD, bigint (1 USD = 1 000 000 000 nanos)
--   * prices: micro-USD per million tokens, bigint ($3.00 / MTok = 3 000 000)
-- The one rounding rule that turns them into a request's cost is billing.request_cost
-- (sql/functions/billing_cost.sql).
-- replaces: 988ab0e00cee780c10f6c9de762cb7b7a2a996cfeb77a1f7aa67064baf9fbbbb

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

-- An alias must point at a priced model, one level deep: the trigger models_check_alias
-- (sql/functions/billing_models.sql).

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
