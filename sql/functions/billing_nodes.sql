-- Nodes and their heartbeats (the table: sql/migrations/008_billing_nodes.sql). (Re-applied
-- by `alicode-gw migrate` on every run: CREATE OR REPLACE only.)

-- node_beat: node p_node is alive (its first beat registers it). One small UPSERT, sent
-- every ALICODE_NODE_HEARTBEAT_INTERVAL seconds off the request path.
CREATE OR REPLACE FUNCTION billing.node_beat(p_node text) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO billing_nodes AS n (id) VALUES (p_node)
    ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()
$$;

-- node_retire: node p_node is known to be dead (its successor on the same data dir found
-- its lock released by the kernel): the next billing.expire_dead_nodes gives back its
-- holds and leases without waiting for the window. Returns whether the node was known.
CREATE OR REPLACE FUNCTION billing.node_retire(p_node text) RETURNS boolean
LANGUAGE sql AS $$
    WITH retired AS (
        INSERT INTO billing_nodes AS n (id, heartbeat_at) VALUES (p_node, '-infinity')
        ON CONFLICT (id) DO UPDATE SET heartbeat_at = '-infinity'
        RETURNING (xmax <> 0) AS known)
    SELECT known FROM retired
$$;

-- expire_dead_nodes: the sweeper's node half. A node is dead when its heartbeat is older
-- than p_window_seconds (or it never beat and its hold or lease is that old). Its holds
-- become 'expired' (a late settlement is still billed once, from the free balance; a
-- late release changes nothing) and its open leases 'expired'; their money goes back to
-- the free balance. Returns how many holds and leases it gave back. Rows being settled
-- right now are skipped (the next sweep takes them). Locking, as everywhere: hold rows,
-- then lease rows, then accounts (each by id). Nodes dead for a day are forgotten.
CREATE OR REPLACE FUNCTION billing.expire_dead_nodes(
    p_window_seconds double precision, p_limit integer DEFAULT 1000
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_since  timestamptz := now() - make_interval(secs => p_window_seconds);
    v_holds  text[];
    v_leases bigint[];
BEGIN
    SELECT coalesce(array_agg(b.request_id ORDER BY b.request_id), '{}') INTO v_holds FROM (
        SELECT h.request_id FROM billing_holds h
         WHERE h.status = 'held' AND h.node IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM billing_nodes n
                            WHERE n.id = h.node AND n.heartbeat_at >= v_since)
           AND (h.created_at < v_since
                OR EXISTS (SELECT 1 FROM billing_nodes n WHERE n.id = h.node))
         ORDER BY h.request_id LIMIT p_limit
           FOR UPDATE SKIP LOCKED) b;
    SELECT coalesce(array_agg(b.id ORDER BY b.id), '{}') INTO v_leases FROM (
        SELECT l.id FROM billing_leases l
         WHERE l.status = 'open'
           AND NOT EXISTS (SELECT 1 FROM billing_nodes n
                            WHERE n.id = l.owner AND n.heartbeat_at >= v_since)
           AND (l.created_at < v_since
                OR EXISTS (SELECT 1 FROM billing_nodes n WHERE n.id = l.owner))
         ORDER BY l.id LIMIT p_limit
           FOR UPDATE SKIP LOCKED) b;
    DELETE FROM billing_nodes n WHERE n.heartbeat_at < now() - interval '1 day';
    IF cardinality(v_holds) = 0 AND cardinality(v_leases) = 0 THEN
        RETURN 0;
    END IF;
    PERFORM 1 FROM accounts a
     WHERE a.id IN (SELECT h.account_id FROM billing_holds h WHERE h.request_id = ANY (v_holds)
                    UNION
                    SELECT l.account_id FROM billing_leases l WHERE l.id = ANY (v_leases))
     ORDER BY a.id FOR UPDATE;
    UPDATE accounts a SET held_nanos = a.held_nanos - t.total
      FROM (SELECT x.account_id, sum(x.amount_nanos)::bigint AS total FROM (
                SELECT h.account_id, h.amount_nanos FROM billing_holds h
                 WHERE h.request_id = ANY (v_holds)
                UNION ALL
                SELECT l.account_id, l.amount_nanos FROM billing_leases l
                 WHERE l.id = ANY (v_leases)) x
             GROUP BY x.account_id) t
     WHERE a.id = t.account_id;
    UPDATE billing_holds h SET status = 'expired', closed_at = now()
     WHERE h.request_id = ANY (v_holds);
    UPDATE billing_leases l SET status = 'expired', amount_nanos = 0, closed_at = now()
     WHERE l.id = ANY (v_leases);
    RETURN cardinality(v_holds) + cardinality(v_leases);
END $$;
