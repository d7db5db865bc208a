-- The customer dashboard (docs/dashboard.md): logins, operators, sessions, one-time
-- password-setup links, and the daily usage rollup its pages read. Its functions are in
-- sql/functions/dashboard.sql.

-- accounts.password_hash (bcrypt) exists since 001. New: the operator flag, and the
-- states an operator (suspended) or the customer (deleted) puts an account in. A deleted
-- account keeps its row and its money rows (so `alicode-gw audit` still balances), with
-- its email replaced and its client IPs erased.
ALTER TABLE accounts DROP CONSTRAINT accounts_status_check;
ALTER TABLE accounts
    ADD CONSTRAINT accounts_status_check
        CHECK (status IN ('active', 'stopped', 'suspended', 'deleted')),
    ADD COLUMN is_operator  boolean NOT NULL DEFAULT false,
    ADD COLUMN suspended_at timestamptz,
    ADD COLUMN deleted_at   timestamptz;

-- A login. The cookie carries the token; only its SHA-256 is stored.
CREATE TABLE dashboard_sessions (
    token_hash  bytea PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES accounts (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX dashboard_sessions_account_idx ON dashboard_sessions (account_id);
CREATE INDEX dashboard_sessions_expiry_idx ON dashboard_sessions (expires_at);

-- A one-time link that lets the owner of an account created by the CLI set a password
-- (closed registration). Only the token's SHA-256 is stored.
CREATE TABLE dashboard_password_links (
    token_hash  bytea PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES accounts (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX dashboard_password_links_account_idx ON dashboard_password_links (account_id);

-- Daily usage rollup: the charge rows of closed days (UTC), summed per account, day, key,
-- model and client IP. Derived data: filled on demand by dashboard.roll_up (the pages
-- read it for closed days and the ledger itself for the days not rolled up yet), never
-- written on the request path.
CREATE SCHEMA dashboard;
CREATE TABLE dashboard.usage_daily (
    account_id    bigint NOT NULL REFERENCES accounts (id),
    day           date NOT NULL,
    key_id        bigint,
    model         text,
    client_ip     text,
    requests      bigint NOT NULL,
    input_tokens  bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cache_read    bigint NOT NULL,
    cache_write   bigint NOT NULL,
    cost_nanos    bigint NOT NULL,
    charged_nanos bigint NOT NULL
);
CREATE INDEX usage_daily_account_day_idx ON dashboard.usage_daily (account_id, day);
-- Up to which day (exclusive) an account's charges are in usage_daily.
CREATE TABLE dashboard.rollup_state (
    account_id  bigint PRIMARY KEY REFERENCES accounts (id),
    rolled_until date NOT NULL
);
-- The ledger page pages through an account's rows newest first.
CREATE INDEX ledger_account_id_idx ON ledger (account_id, id);
-- The billing page lists an account's top-ups without walking its charges.
CREATE INDEX ledger_account_topups_idx ON ledger (account_id, id) WHERE kind <> 'charge';
