-- The dashboard's queries (alicode_gw/dashboard/store.py calls them with named
-- arguments). (Re-applied by `alicode-gw migrate` on every run: CREATE OR REPLACE only.)

-- ---------------------------------------------------------------------- logins, sessions

-- login_row: what a login needs about an email (no row: no such account).
CREATE OR REPLACE FUNCTION dashboard.login_row(p_email text)
RETURNS TABLE (account_id bigint, password_hash text, status text)
LANGUAGE sql STABLE AS $$
    SELECT a.id, a.password_hash, a.status FROM accounts a
     WHERE lower(a.email) = lower(p_email) AND a.status <> 'deleted'
$$;

-- session_open: a new session of an account; returns its expiry.
CREATE OR REPLACE FUNCTION dashboard.session_open(
    p_token_hash bytea, p_account_id bigint, p_lifetime_s double precision)
RETURNS timestamptz LANGUAGE sql AS $$
    INSERT INTO dashboard_sessions (token_hash, account_id, expires_at)
    VALUES (p_token_hash, p_account_id, now() + make_interval(secs => p_lifetime_s))
    RETURNING expires_at
$$;

-- session_account: the account of a live session (no row: none, expired or ended, or
-- the account suspended or deleted).
CREATE OR REPLACE FUNCTION dashboard.session_account(p_token_hash bytea)
RETURNS TABLE (account_id bigint, email text, status text, is_operator boolean,
               balance_nanos bigint, held_nanos bigint)
LANGUAGE sql STABLE AS $$
    SELECT a.id, a.email, a.status, a.is_operator, a.balance_nanos, a.held_nanos
      FROM dashboard_sessions s JOIN accounts a ON a.id = s.account_id
     WHERE s.token_hash = p_token_hash AND s.expires_at > now()
       AND a.status NOT IN ('deleted', 'suspended')
$$;

-- session_end: end one session (logout).
CREATE OR REPLACE FUNCTION dashboard.session_end(p_token_hash bytea)
RETURNS void LANGUAGE sql AS $$
    DELETE FROM dashboard_sessions WHERE token_hash = p_token_hash;
    DELETE FROM dashboard_sessions WHERE expires_at < now() - interval '1 day';
$$;

-- set_password: a new password hash; every session of the account ends, and every
-- unused password link is spent.
CREATE OR REPLACE FUNCTION dashboard.set_password(p_account_id bigint, p_password_hash text)
RETURNS void LANGUAGE sql AS $$
    UPDATE accounts SET password_hash = p_password_hash WHERE id = p_account_id;
    DELETE FROM dashboard_sessions WHERE account_id = p_account_id;
    UPDATE dashboard_password_links SET used_at = now()
     WHERE account_id = p_account_id AND used_at IS NULL;
$$;

-- password_link_open: a one-time password-setup link for an account.
CREATE OR REPLACE FUNCTION dashboard.password_link_open(
    p_token_hash bytea, p_account_id bigint, p_lifetime_s double precision)
RETURNS timestamptz LANGUAGE sql AS $$
    INSERT INTO dashboard_password_links (token_hash, account_id, expires_at)
    VALUES (p_token_hash, p_account_id, now() + make_interval(secs => p_lifetime_s))
    RETURNING expires_at
$$;

-- password_link_account: the account a live, unused link is for (no row: none).
CREATE OR REPLACE FUNCTION dashboard.password_link_account(p_token_hash bytea)
RETURNS TABLE (account_id bigint, email text)
LANGUAGE sql STABLE AS $$
    SELECT a.id, a.email FROM dashboard_password_links p JOIN accounts a ON a.id = p.account_id
     WHERE p.token_hash = p_token_hash AND p.used_at IS NULL AND p.expires_at > now()
       AND a.status <> 'deleted'
$$;

-- ---------------------------------------------------------------------- the account

-- delete_account: the customer's own deletion. Every key revoked (the public ids are
-- returned, to announce), sessions and links gone, the email replaced, the password and
-- the client IPs erased (ledger, holds, rollup); the money rows stay, so the books still
-- balance. The account's row stays, status 'deleted'.
CREATE OR REPLACE FUNCTION dashboard.delete_account(p_account_id bigint)
RETURNS TABLE (public_id text) LANGUAGE plpgsql AS $$
BEGIN
    UPDATE accounts a
       SET status = 'deleted', deleted_at = now(), password_hash = NULL, is_operator = false,
           email = 'deleted-' || a.id || '@deleted.invalid'
     WHERE a.id = p_account_id AND a.status <> 'deleted';
    IF NOT FOUND THEN
        RETURN;
    END IF;
    DELETE FROM dashboard_sessions s WHERE s.account_id = p_account_id;
    DELETE FROM dashboard_password_links p WHERE p.account_id = p_account_id;
    UPDATE ledger l SET client_ip = NULL
     WHERE l.account_id = p_account_id AND l.client_ip IS NOT NULL;
    UPDATE billing_holds h SET client_ip = NULL
     WHERE h.account_id = p_account_id AND h.client_ip IS NOT NULL;
    DELETE FROM dashboard.usage_daily u WHERE u.account_id = p_account_id;
    DELETE FROM dashboard.rollup_state r WHERE r.account_id = p_account_id;
    RETURN QUERY
        UPDATE api_keys k
           SET status = CASE WHEN k.status = 'active' THEN 'revoked' ELSE k.status END,
               revoked_at = coalesce(k.revoked_at, now()),
               revoked_reason = coalesce(k.revoked_reason, 'account deleted'),
               name = 'deleted'
         WHERE k.account_id = p_account_id
        RETURNING k.public_id;
END $$;

-- set_key_spend_cap: a key's spend cap (NULL: none). No row: not this account's key.
CREATE OR REPLACE FUNCTION dashboard.set_key_spend_cap(
    p_account_id bigint, p_key_id bigint, p_spend_cap_nanos bigint)
RETURNS TABLE (public_id text) LANGUAGE sql AS $$
    UPDATE api_keys k SET spend_cap_nanos = p_spend_cap_nanos
     WHERE k.id = p_key_id AND k.account_id = p_account_id
    RETURNING k.public_id
$$;

-- ---------------------------------------------------------------------- usage

-- roll_up: add the account's closed days (UTC; a day closes 10 minutes after its end)
-- to dashboard.usage_daily; returns the first day not rolled up. Nothing to add (the
-- usual case: every page load after the first of the day) costs one indexed read.
CREATE OR REPLACE FUNCTION dashboard.roll_up(p_account_id bigint)
RETURNS date LANGUAGE plpgsql AS $$
DECLARE
    v_from date;
    v_until date := ((now() - interval '10 minutes') AT TIME ZONE 'UTC')::date;
BEGIN
    SELECT r.rolled_until INTO v_from FROM dashboard.rollup_state r
     WHERE r.account_id = p_account_id;
    IF v_from >= v_until THEN
        RETURN v_from;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('dashboard.roll_up', p_account_id));
    SELECT r.rolled_until INTO v_from FROM dashboard.rollup_state r  -- again, locked
     WHERE r.account_id = p_account_id;
    IF v_from IS NULL THEN
        SELECT (min(l.created_at) AT TIME ZONE 'UTC')::date INTO v_from FROM ledger l
         WHERE l.account_id = p_account_id;
        v_from := least(coalesce(v_from, v_until), v_until);
    END IF;
    IF v_from < v_until THEN
        INSERT INTO dashboard.usage_daily
        SELECT p_account_id, (l.created_at AT TIME ZONE 'UTC')::date, l.key_id, l.model,
               l.client_ip, count(*),
               -- a response cache hit (cache_hit) carries the original's token counts
               -- for its price but used none: a request with no tokens, as the limits
               -- count it (likewise in usage_rows)
               coalesce(sum(l.input_tokens) FILTER (WHERE l.cache_hit IS NOT TRUE), 0),
               coalesce(sum(l.output_tokens) FILTER (WHERE l.cache_hit IS NOT TRUE), 0),
               coalesce(sum(l.cache_read) FILTER (WHERE l.cache_hit IS NOT TRUE), 0),
               coalesce(sum(coalesce(l.cache_creation_5m, 0) + coalesce(l.cache_creation_1h, 0))
                        FILTER (WHERE l.cache_hit IS NOT TRUE), 0),
               sum(coalesce(l.cost_nanos, 0)), sum(-l.amount_nanos)
          FROM ledger l
         WHERE l.account_id = p_account_id AND l.kind = 'charge'
           AND l.created_at >= v_from::timestamp AT TIME ZONE 'UTC'
           AND l.created_at < v_until::timestamp AT TIME ZONE 'UTC'
         GROUP BY 2, 3, 4, 5;
    END IF;
    INSERT INTO dashboard.rollup_state AS r (account_id, rolled_until)
    VALUES (p_account_id, greatest(v_from, v_until))
    ON CONFLICT (account_id) DO UPDATE SET rolled_until = EXCLUDED.rolled_until;
    RETURN greatest(v_from, v_until);
END $$;

-- usage_rows: the account's usage from p_first to p_last (UTC days, inclusive) at the
-- rollup's grain: the rollup for rolled-up days, the ledger's charge rows after them.
CREATE OR REPLACE FUNCTION dashboard.usage_rows(
    p_account_id bigint, p_first date, p_last date)
RETURNS TABLE (day date, key_id bigint, model text, client_ip text, requests bigint,
               input_tokens bigint, output_tokens bigint, cache_read bigint,
               cache_write bigint, cost_nanos bigint, charged_nanos bigint)
LANGUAGE sql STABLE AS $$
    SELECT u.day, u.key_id, u.model, u.client_ip, u.requests, u.input_tokens,
           u.output_tokens, u.cache_read, u.cache_write, u.cost_nanos, u.charged_nanos
      FROM dashboard.usage_daily u
     WHERE u.account_id = p_account_id AND u.day BETWEEN p_first AND p_last
    UNION ALL
    SELECT (l.created_at AT TIME ZONE 'UTC')::date, l.key_id, l.model, l.client_ip, 1,
           h.used * coalesce(l.input_tokens, 0), h.used * coalesce(l.output_tokens, 0),
           h.used * coalesce(l.cache_read, 0),
           h.used * (coalesce(l.cache_creation_5m, 0) + coalesce(l.cache_creation_1h, 0)),
           coalesce(l.cost_nanos, 0), -l.amount_nanos
      FROM ledger l
     CROSS JOIN LATERAL (SELECT CASE WHEN l.cache_hit THEN 0 ELSE 1 END AS used) h
     WHERE l.account_id = p_account_id AND l.kind = 'charge'
       AND l.created_at >= greatest(p_first, coalesce(
               (SELECT r.rolled_until FROM dashboard.rollup_state r
                 WHERE r.account_id = p_account_id), '-infinity'::date))::timestamp
               AT TIME ZONE 'UTC'
       AND l.created_at < (p_last + 1)::timestamp AT TIME ZONE 'UTC'
$$;

-- usage_by: usage_rows summed by each of the dimensions in p_by ('day', 'key', 'model',
-- 'ip'): one scan for all of them (grouping sets). Rows are (dimension, label, sums).
CREATE OR REPLACE FUNCTION dashboard.usage_by(
    p_account_id bigint, p_first date, p_last date, p_by text[])
RETURNS TABLE (dimension text, label text, requests bigint, input_tokens bigint,
               output_tokens bigint, cache_read bigint, cache_write bigint,
               cost_nanos bigint, charged_nanos bigint)
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN GROUPING(u.day) = 0 THEN 'day' WHEN GROUPING(u.key_id) = 0 THEN 'key'
                WHEN GROUPING(u.model) = 0 THEN 'model' ELSE 'ip' END,
           coalesce(u.day::text, u.key_id::text, u.model, u.client_ip),
           sum(u.requests)::bigint, sum(u.input_tokens)::bigint,
           sum(u.output_tokens)::bigint, sum(u.cache_read)::bigint,
           sum(u.cache_write)::bigint, sum(u.cost_nanos)::bigint,
           sum(u.charged_nanos)::bigint
      FROM dashboard.usage_rows(p_account_id, p_first, p_last) u
     GROUP BY GROUPING SETS ((u.day), (u.key_id), (u.model), (u.client_ip))
    HAVING CASE WHEN GROUPING(u.day) = 0 THEN 'day' WHEN GROUPING(u.key_id) = 0 THEN 'key'
                WHEN GROUPING(u.model) = 0 THEN 'model' ELSE 'ip' END = ANY (p_by)
     ORDER BY 1, 2
$$;

-- ledger_page: the account's ledger rows, newest first, older than p_before_id (NULL:
-- from the newest); p_topups_only: top-ups and other credits only.
CREATE OR REPLACE FUNCTION dashboard.ledger_page(
    p_account_id bigint, p_before_id bigint, p_limit integer, p_topups_only boolean)
RETURNS TABLE (id bigint, created_at timestamptz, kind text, amount_nanos bigint,
               key_id bigint, client_ip text, model text, input_tokens bigint,
               output_tokens bigint, cache_read bigint, cache_write bigint, batch boolean,
               cost_nanos bigint, status text, note text)
LANGUAGE sql STABLE AS $$
    SELECT l.id, l.created_at, l.kind, l.amount_nanos, l.key_id, l.client_ip, l.model,
           l.input_tokens, l.output_tokens, l.cache_read,
           coalesce(l.cache_creation_5m, 0) + coalesce(l.cache_creation_1h, 0), l.batch,
           l.cost_nanos, l.status, l.note
      FROM ledger l
     WHERE l.account_id = p_account_id AND l.id < coalesce(p_before_id, 9223372036854775807)
       AND (NOT p_topups_only OR l.kind <> 'charge')
     ORDER BY l.id DESC LIMIT p_limit
$$;

-- ---------------------------------------------------------------------- operators

-- admin_accounts: accounts whose email contains p_query (all when empty), newest first.
CREATE OR REPLACE FUNCTION dashboard.admin_accounts(p_query text, p_limit integer)
RETURNS TABLE (id bigint, email text, status text, is_operator boolean,
               balance_nanos bigint, held_nanos bigint, created_at timestamptz,
               keys_active bigint)
LANGUAGE sql STABLE AS $$
    SELECT a.id, a.email, a.status, a.is_operator, a.balance_nanos, a.held_nanos,
           a.created_at,
           (SELECT count(*) FROM api_keys k WHERE k.account_id = a.id AND k.status = 'active')
      FROM accounts a
     WHERE p_query = '' OR strpos(lower(a.email), lower(p_query)) > 0
     ORDER BY a.id DESC LIMIT p_limit
$$;

-- set_suspended: suspend an active (or stopped) account, ending its dashboard sessions,
-- or unsuspend a suspended one (back to stopped if it had been stopped, else active);
-- returns its active keys' public ids (to announce, so every node re-reads them), no row
-- when the account was not in the state to change.
CREATE OR REPLACE FUNCTION dashboard.set_suspended(p_account_id bigint, p_suspended boolean)
RETURNS TABLE (public_id text) LANGUAGE plpgsql AS $$
BEGIN
    UPDATE accounts a
       SET status = CASE WHEN p_suspended THEN 'suspended'
                         WHEN a.stopped_at IS NOT NULL THEN 'stopped' ELSE 'active' END,
           suspended_at = CASE WHEN p_suspended THEN now() END
     WHERE a.id = p_account_id
       AND (CASE WHEN p_suspended THEN a.status IN ('active', 'stopped')
                 ELSE a.status = 'suspended' END);
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF p_suspended THEN
        DELETE FROM dashboard_sessions s WHERE s.account_id = p_account_id;
    END IF;
    RETURN QUERY SELECT k.public_id FROM api_keys k
                  WHERE k.account_id = p_account_id AND k.status = 'active';
END $$;

-- set_operator: mark an account (by email) operator or not; returns its id.
CREATE OR REPLACE FUNCTION dashboard.set_operator(p_email text, p_operator boolean)
RETURNS bigint LANGUAGE sql AS $$
    UPDATE accounts a SET is_operator = p_operator
     WHERE lower(a.email) = lower(p_email) AND a.status <> 'deleted'
    RETURNING a.id
$$;
