-- Files API. (Re-applied by `alicode-gw migrate` on every run: CREATE OR REPLACE only.)

-- files_finish: an upload whose chunks are all stored becomes a ready file, unless the
-- account already has a live file with the same content (the staged rows are dropped
-- and that file is the answer: 'duplicate') or a quota would be passed ('count_quota',
-- 'bytes_quota': the staged rows are dropped). The finishes of one account are
-- serialised by a transaction advisory lock, so concurrent uploads never both pass a
-- quota or both store the same content. 'missing': no such upload (already purged).
CREATE OR REPLACE FUNCTION files_finish(
    p_id text, p_sha256 bytea, p_size_bytes bigint, p_max_count bigint, p_max_bytes bigint
) RETURNS TABLE (file_id text, outcome text)
LANGUAGE plpgsql AS $$
DECLARE
    v_account bigint;
    v_existing text;
    v_count bigint;
    v_bytes bigint;
BEGIN
    SELECT f.account_id INTO v_account FROM files f
     WHERE f.id = p_id AND f.status = 'uploading';
    IF v_account IS NULL THEN
        RETURN QUERY SELECT p_id, 'missing'::text;
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('alicode_gw.files:' || v_account, 0));
    SELECT f.id INTO v_existing FROM files f
     WHERE f.account_id = v_account AND f.sha256 = p_sha256
       AND f.status = 'ready' AND f.deleted_at IS NULL;
    IF v_existing IS NOT NULL THEN
        DELETE FROM files f WHERE f.id = p_id;
        RETURN QUERY SELECT v_existing, 'duplicate'::text;
        RETURN;
    END IF;
    SELECT count(*), COALESCE(sum(f.size_bytes), 0) INTO v_count, v_bytes FROM files f
     WHERE f.account_id = v_account AND f.status = 'ready' AND f.deleted_at IS NULL;
    IF p_max_count > 0 AND v_count + 1 > p_max_count THEN
        DELETE FROM files f WHERE f.id = p_id;
        RETURN QUERY SELECT p_id, 'count_quota'::text;
        RETURN;
    END IF;
    IF p_max_bytes > 0 AND v_bytes + p_size_bytes > p_max_bytes THEN
        DELETE FROM files f WHERE f.id = p_id;
        RETURN QUERY SELECT p_id, 'bytes_quota'::text;
        RETURN;
    END IF;
    UPDATE files f
       SET status = 'ready', sha256 = p_sha256, size_bytes = p_size_bytes, created_at = now()
     WHERE f.id = p_id;
    RETURN QUERY SELECT p_id, 'created'::text;
END;
$$;

-- files_purge: remove the rows of files deleted more than p_grace_seconds ago and of
-- uploads abandoned more than p_stale_seconds ago (a process that died mid-upload), at
-- most p_limit files per call; returns how many files went. Rows another purge is
-- removing are skipped, so every process may run it.
CREATE OR REPLACE FUNCTION files_purge(
    p_grace_seconds double precision, p_stale_seconds double precision, p_limit integer
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
BEGIN
    WITH doomed AS (
        SELECT f.id FROM files f
         WHERE (f.deleted_at IS NOT NULL
                AND f.deleted_at < now() - make_interval(secs => p_grace_seconds))
            OR (f.status = 'uploading'
                AND f.created_at < now() - make_interval(secs => p_stale_seconds))
         LIMIT p_limit
         FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM files f USING doomed d WHERE f.id = d.id RETURNING 1
    )
    SELECT count(*) INTO v_count FROM gone;
    RETURN v_count;
END;
$$;
