-- Files API (/v1/files): files uploaded by customers, stored in PostgreSQL so every
-- node serves every file (alicode_gw/files/). A file's bytes are rows of `file_chunks`
-- (at most 1 MiB each), written while the upload is read and read back one row at a
-- time, so neither direction holds a whole file in memory.
--
-- A row is `uploading` while its chunks arrive (invisible to every read), then `ready`
-- (files_finish, sql/functions/files.sql). A deleted file keeps its rows, invisible,
-- until the purge removes them after ALICODE_FILES_PURGE_GRACE.
CREATE TABLE files (
    seq         bigint GENERATED ALWAYS AS IDENTITY,     -- list order (newest first)
    id          text PRIMARY KEY,                        -- file_…
    account_id  bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    filename    text NOT NULL,
    mime_type   text NOT NULL,
    size_bytes  bigint NOT NULL DEFAULT 0 CHECK (size_bytes >= 0),
    sha256      bytea,                                   -- set when ready
    status      text NOT NULL DEFAULT 'uploading' CHECK (status IN ('uploading', 'ready')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz,
    CHECK (status = 'uploading' OR sha256 IS NOT NULL)
);
CREATE UNIQUE INDEX files_seq_key ON files (seq);
-- Dedup per account (never across accounts): one live file per content.
CREATE UNIQUE INDEX files_account_sha256_key ON files (account_id, sha256)
    WHERE status = 'ready' AND deleted_at IS NULL;
CREATE INDEX files_account_seq_idx ON files (account_id, seq);
CREATE INDEX files_purge_idx ON files (deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX files_uploading_idx ON files (created_at) WHERE status = 'uploading';

CREATE TABLE file_chunks (
    file_id  text NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    seq      integer NOT NULL CHECK (seq >= 0),
    data     bytea NOT NULL,
    PRIMARY KEY (file_id, seq)
);
-- Images and PDFs are compressed already: stored out of line without another try.
ALTER TABLE file_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
