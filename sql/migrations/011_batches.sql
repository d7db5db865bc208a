-- Message Batches (POST /v1/messages/batches): one row per batch a customer created.
-- The functions are in sql/functions/batches.sql; the rules in docs/batches.md.
--
-- The gateway's id (msgbatch_…) is the only one a customer sees. upstream_id and
-- credential_id (the pooled credential that submitted the batch, the only one that can
-- read it back) never leave the gateway. No content is stored: prompts and answers stay
-- upstream; the results are relayed from there on each request.
--
-- status: submitting (held, not yet accepted upstream) → in_progress → canceling →
-- ended. A batch shows `ended` once it is settled (or released), in the same
-- transaction, so its counts and its ledger row never disagree.
-- settlement: open (its hold is in billing_holds under request_id = id) → settled (one
-- ledger row, request_id = id) | released (nothing billed: submission failed).

CREATE TABLE message_batches (
    id                  text PRIMARY KEY,
    account_id          bigint NOT NULL REFERENCES accounts (id),
    key_id              bigint NOT NULL REFERENCES api_keys (id),
    upstream_id         text UNIQUE,
    -- upstream_credentials.id, without a foreign key: an operator may remove a credential
    -- (the batch then answers that its credential is gone), and the table is truncated
    -- freely by tests and tools
    credential_id       bigint,
    status              text NOT NULL DEFAULT 'submitting'
                        CHECK (status IN ('submitting', 'in_progress', 'canceling', 'ended')),
    request_count       integer NOT NULL CHECK (request_count > 0),
    succeeded           integer NOT NULL DEFAULT 0,
    errored             integer NOT NULL DEFAULT 0,
    canceled            integer NOT NULL DEFAULT 0,
    expired             integer NOT NULL DEFAULT 0,
    -- price snapshot at creation, by priced model: {"model": {"input": micro, ...,
    -- "discount_pct": n}}; and which priced model each custom_id asked for
    prices              jsonb NOT NULL,
    request_models      jsonb NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL,
    ended_at            timestamptz,
    cancel_initiated_at timestamptz,
    archived_at         timestamptz,
    deleted_at          timestamptz,
    polls               integer NOT NULL DEFAULT 0,
    next_poll_at        timestamptz NOT NULL DEFAULT now(),
    settlement          text NOT NULL DEFAULT 'open'
                        CHECK (settlement IN ('open', 'settled', 'released')),
    settled_at          timestamptz,
    CHECK ((status = 'ended') = (settlement <> 'open')),
    CHECK (status = 'submitting' OR settlement = 'released' OR upstream_id IS NOT NULL)
);
CREATE INDEX message_batches_account_idx
    ON message_batches (account_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX message_batches_due_idx ON message_batches (next_poll_at) WHERE settlement = 'open';

-- A batch's ledger row carries its request counts (NULL on other rows).
ALTER TABLE ledger
    ADD COLUMN batch_requests  integer,
    ADD COLUMN batch_succeeded integer,
    ADD COLUMN batch_errored   integer,
    ADD COLUMN batch_canceled  integer,
    ADD COLUMN batch_expired   integer;
