-- Cache-affine routing: the upstream's prompt cache is shared by the credentials of one
-- organization or workspace (a cache group). NULL: the credential is a group of its own.
ALTER TABLE upstream_credentials
    ADD COLUMN cache_group text
        CHECK (cache_group IS NULL OR (length(cache_group) BETWEEN 1 AND 100
                                       AND cache_group !~ '\s'));
