-- Accounts and their API keys. Secrets are stored only as bcrypt hashes.

CREATE TABLE accounts (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email         text NOT NULL,
    password_hash text,                      -- bcrypt; NULL = no dashboard login yet
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'stopped')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    stopped_at    timestamptz
);
CREATE UNIQUE INDEX accounts_email_key ON accounts (lower(email));

CREATE TABLE api_keys (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      bigint NOT NULL REFERENCES accounts (id),
    public_id       text NOT NULL UNIQUE,    -- the non-secret lookup id inside the key
    name            text NOT NULL,
    secret_hash     text NOT NULL,           -- bcrypt of the secret part
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    revoked_reason  text,
    -- limits, each NULL = unlimited
    rpm_limit           integer CHECK (rpm_limit > 0),
    concurrency_limit   integer CHECK (concurrency_limit > 0),
    budget_tokens       bigint  CHECK (budget_tokens > 0),   -- rolling 5-hour window
    spend_cap_nanos     bigint  CHECK (spend_cap_nanos > 0),
    allowed_models      text[],                               -- NULL = every model
    spent_nanos     bigint NOT NULL DEFAULT 0 CHECK (spent_nanos >= 0),
    last_used_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz
);
CREATE INDEX api_keys_account_idx ON api_keys (account_id);
