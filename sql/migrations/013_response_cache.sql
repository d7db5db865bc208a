-- The response cache (docs/response-cache.md). The cache itself lives in Redis,
-- encrypted; the database only knows which keys use it and which charges were hits.
--
-- api_keys.response_cache: the key's requests may be answered from the cache (and
-- their answers stored); false = every request of the key bypasses it.
ALTER TABLE api_keys ADD COLUMN response_cache boolean NOT NULL DEFAULT true;

-- ledger.cache_hit: a charge answered from the response cache. Its token counts are
-- the original's (what the hit saved), its cost the hit price: the configured percent
-- of the original's cost at the request's prices (billing.settle's p_hit_pct).
ALTER TABLE ledger ADD COLUMN cache_hit boolean NOT NULL DEFAULT false;

-- A settlement of the batch (and of the journal) may be a hit: its percent.
ALTER TYPE billing.batch_op ADD ATTRIBUTE hit_pct integer;

-- billing.settle and billing.settle_leased take p_hit_pct (sql/functions/): the old
-- signatures go, so no call can reach an overload without it.
DROP FUNCTION IF EXISTS billing.settle(text, bigint, bigint, bigint, bigint, bigint, boolean);
DROP FUNCTION IF EXISTS billing.settle_leased(
    bigint, text, bigint, text, text, text, bigint, bigint, bigint, bigint, bigint, bigint,
    bigint, bigint, bigint, bigint, bigint, boolean);
