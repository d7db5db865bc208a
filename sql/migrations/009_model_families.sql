-- Model families: a `models` row whose id ends in `-*` (e.g. `claude-sonnet-*`) prices
-- and limits every id that starts with what precedes the `*`, so a model the upstream
-- ships tomorrow is billed today. A client's id resolves to the most specific row
-- (billing.resolve_model, sql/functions/billing_models.sql): the exact id, then a
-- dated snapshot (`...-YYYYMMDD`) to its base id, then the family with the longest
-- prefix. A family is a priced row, never an alias, and no alias points at one (the
-- trigger models_check_alias).
ALTER TABLE models ADD CONSTRAINT models_family_pattern CHECK (
    position('*' IN id) = 0
    OR (id ~ '^[a-z0-9][a-z0-9.-]*-\*$' AND alias_of IS NULL)
);

-- Seed: the families of the current models, at the prices of their newest seeded
-- member (Anthropic's list prices; `alicode-gw price set` changes them). Each line
-- also has a family without a version (`claude-opus-*`): the next generation is
-- served the day it ships (Claude Code's default may be a model newer than any
-- price), billed at the current generation's price until the operator sets its own;
-- its output ceiling is the largest a current model has (128k: Claude Code asks the
-- newest models for that much), the upstream enforces the model's real one.
INSERT INTO models (id, display_name, created_at, context_window, max_output_tokens,
                    supports_vision, supports_thinking, input_price, output_price,
                    cache_write_5m_price, cache_write_1h_price, cache_read_price,
                    batch_discount_pct)
VALUES
    ('claude-opus-4-*',  'Claude Opus 4 family',  '2026-04-16T00:00:00Z', 200000, 128000,
     true, true, 5000000, 25000000, 6250000, 10000000, 500000, 50),
    ('claude-sonnet-4-*', 'Claude Sonnet 4 family', '2026-02-17T00:00:00Z', 200000, 64000,
     true, true, 3000000, 15000000, 3750000,  6000000, 300000, 50),
    ('claude-haiku-4-*', 'Claude Haiku 4 family', '2025-10-15T00:00:00Z', 200000,  64000,
     true, true, 1000000,  5000000, 1250000,  2000000, 100000, 50),
    ('claude-opus-*',    'Claude Opus family',    '2026-04-16T00:00:00Z', 200000, 128000,
     true, true, 5000000, 25000000, 6250000, 10000000, 500000, 50),
    ('claude-sonnet-*',  'Claude Sonnet family',  '2026-02-17T00:00:00Z', 200000, 128000,
     true, true, 3000000, 15000000, 3750000,  6000000, 300000, 50),
    ('claude-haiku-*',   'Claude Haiku family',   '2025-10-15T00:00:00Z', 200000, 128000,
     true, true, 1000000,  5000000, 1250000,  2000000, 100000, 50);

-- The upstream's own model list (GET /v1/models), as the gateway last fetched it with a
-- pooled credential (alicode_gw/upstream/models.py). /v1/models shows those of them that
-- have a price; `alicode-gw price list --missing` those that have none.
CREATE TABLE upstream_models (
    id           text PRIMARY KEY,
    display_name text NOT NULL,
    created_at   timestamptz NOT NULL,
    seen_at      timestamptz NOT NULL DEFAULT now()
);
