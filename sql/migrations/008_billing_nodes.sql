-- Nodes: holds and credit leases belong to the node (gateway process) that made them,
-- and a node proves it is alive by renewing its row here every few seconds
-- (billing.node_beat, sql/functions/billing_nodes.sql). The sweeper
-- (billing.expire_dead_nodes) gives back the holds and closes the leases of a node whose
-- heartbeat is older than the window (ALICODE_NODE_DEAD_AFTER), so a node that died
-- (kill -9, a lost host) locks no customer's money for longer than that, instead of
-- until the hold's expiry. A node that was only paused or cut from the database and
-- comes back settles its requests as a late settlement of an expired hold: billed once,
-- from the free balance.
--
-- billing_holds.node is NULL for a hold made without a node (by a process of an older
-- version, or by a tool): such a hold is given back at its expiry only, as before.
-- billing_leases.owner is the node's id.

CREATE TABLE billing_nodes (
    id           text PRIMARY KEY,                   -- host:pid:nonce
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()  -- -infinity: retired (known dead)
);

ALTER TABLE billing_holds ADD COLUMN node text;
CREATE INDEX billing_holds_node_idx ON billing_holds (node) WHERE status = 'held';
CREATE INDEX billing_leases_owner_idx ON billing_leases (owner) WHERE status = 'open';

-- billing.hold and billing.apply_batch take the node (p_node): CREATE OR REPLACE cannot
-- add a parameter, so their earlier signatures go; sql/functions/ creates them again.
DROP FUNCTION IF EXISTS billing.hold(
    text, bigint, text, bigint, bigint, text, boolean, double precision);
DROP FUNCTION IF EXISTS billing.apply_batch(jsonb, double precision);
