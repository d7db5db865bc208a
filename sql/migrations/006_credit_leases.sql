-- Credit leases: a node reserves a slice of an account's free balance once, then admits
-- that account's requests against it in memory, with no database round trip before the
-- request goes upstream, and bills each one with a single call when it ends.
--
-- The books: a lease is counted in accounts.held_nanos like a hold, so
--     held_nanos = sum(open holds) + sum(open leases)                (billing.audit)
-- The node admits a request only when its lease still has the request's worst case free
-- (alicode_gw/money/leases.py keeps that count: the same hold amount billing.hold reserves);
-- the database makes sure nothing is spent twice whatever a node believes: a leased
-- request's charge takes at most its worst case from the lease, and any remainder only
-- from the free balance (balance - held), never from a hold or another lease; what the
-- balance cannot cover is the ledger row's shortfall, as for any settlement.
--
-- A leased request has no billing_holds row: its hold lives in the node's memory. It is
-- billed at the prices the node had when it accepted it (the node's copy of the model
-- table, refreshed every few seconds), which settle_leased records exactly as
-- billing.request_cost computes them; a request that produced nothing costs no database
-- call at all. When a lease closes (its node stopped) or expires (its node died, or lost
-- the database), its money goes back to the free balance; a leased request settled
-- later (e.g. from the journal) is charged from the free balance.
--
-- The functions are in sql/functions/billing_leases.sql. Locking, always in this order,
-- in each of them and in apply_batch: hold rows, then lease rows, then accounts (each
-- group by id).
-- replaces: 5da15c8573589aba7cc622a4086ab69bd5c5a9b25da0010a123ea49225315c67

CREATE TABLE billing_leases (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id   bigint NOT NULL REFERENCES accounts (id),
    owner        text NOT NULL,                       -- the node (host:pid:nonce)
    amount_nanos bigint NOT NULL CHECK (amount_nanos >= 0),  -- reserved right now
    status       text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed', 'expired')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    closed_at    timestamptz
);
CREATE INDEX billing_leases_open_idx ON billing_leases (expires_at) WHERE status = 'open';
CREATE INDEX billing_leases_account_idx ON billing_leases (account_id) WHERE status = 'open';

-- One operation of billing.apply_batch's jsonb array (sql/functions/billing_batch.sql).
CREATE TYPE billing.batch_op AS (
    i integer, op text, request_id text, key_id bigint, model text, estimated_input bigint,
    max_tokens bigint, client_ip text, batch boolean, input_tokens bigint,
    output_tokens bigint, cache_creation_5m bigint, cache_creation_1h bigint,
    cache_read bigint, estimated boolean, lease_id bigint, requested_model text,
    reserved bigint, input_price bigint, output_price bigint, cache_write_5m_price bigint,
    cache_write_1h_price bigint, cache_read_price bigint);
