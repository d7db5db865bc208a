"""The files' SQL (tables in ``sql/migrations/010_files.sql``, functions in
``sql/functions/files.sql``). Every read names the account: a file is visible only to
the account that uploaded it, and never once deleted.

Each call takes a pool connection for one statement, so a slow client (an upload or a
download crawling along) never holds a connection between two chunks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

import asyncpg

from alicode_gw.files.objects import FileRecord, ListQuery

CHUNK_BYTES = 1024 * 1024  # one row of file_chunks
STALE_UPLOAD_SECONDS = 6 * 3600.0  # an upload row this old belongs to a dead process
PURGE_BATCH = 100

_LIVE = "status = 'ready' AND deleted_at IS NULL"
_COLUMNS = "id, filename, mime_type, size_bytes, created_at"


class Finish(StrEnum):
    CREATED = "created"
    DUPLICATE = "duplicate"
    COUNT_QUOTA = "count_quota"
    BYTES_QUOTA = "bytes_quota"
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class Finished:
    file_id: str  # the new file, or the live file with the same content
    outcome: Finish


@dataclass(frozen=True, slots=True)
class Usage:
    count: int
    bytes: int


def _record(row: asyncpg.Record) -> FileRecord:
    return FileRecord(
        id=row["id"],
        filename=row["filename"],
        mime_type=row["mime_type"],
        size_bytes=row["size_bytes"],
        created_at=row["created_at"],
    )


async def usage(db: asyncpg.Pool, account_id: int) -> Usage:
    row = await db.fetchrow(
        f"SELECT count(*) AS n, COALESCE(sum(size_bytes), 0) AS b FROM files"
        f" WHERE account_id = $1 AND {_LIVE}",
        account_id,
    )
    return Usage(int(row["n"]), int(row["b"]))


async def begin_upload(
    db: asyncpg.Pool, file_id: str, account_id: int, filename: str, mime_type: str
) -> None:
    await db.execute(
        "INSERT INTO files (id, account_id, filename, mime_type) VALUES ($1, $2, $3, $4)",
        file_id,
        account_id,
        filename,
        mime_type,
    )


async def put_chunk(db: asyncpg.Pool, file_id: str, seq: int, data: bytes) -> None:
    await db.execute(
        "INSERT INTO file_chunks (file_id, seq, data) VALUES ($1, $2, $3)", file_id, seq, data
    )


async def finish_upload(
    db: asyncpg.Pool, file_id: str, sha256: bytes, size: int, max_count: int, max_bytes: int
) -> Finished:
    row = await db.fetchrow(
        "SELECT file_id, outcome FROM files_finish(p_id => $1, p_sha256 => $2,"
        " p_size_bytes => $3, p_max_count => $4, p_max_bytes => $5)",
        file_id,
        sha256,
        size,
        max_count,
        max_bytes,
    )
    return Finished(row["file_id"], Finish(row["outcome"]))


async def abort_upload(db: asyncpg.Pool, file_id: str) -> None:
    """Drop a staged upload and its chunks (the purge catches what this misses)."""
    await db.execute("DELETE FROM files WHERE id = $1 AND status = 'uploading'", file_id)


async def get(db: asyncpg.Pool, account_id: int, file_id: str) -> FileRecord | None:
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM files WHERE id = $1 AND account_id = $2 AND {_LIVE}",
        file_id,
        account_id,
    )
    return None if row is None else _record(row)


async def get_many(
    db: asyncpg.Pool, account_id: int, file_ids: Sequence[str]
) -> dict[str, FileRecord]:
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM files WHERE id = ANY($1::text[]) AND account_id = $2 AND {_LIVE}",
        list(file_ids),
        account_id,
    )
    return {row["id"]: _record(row) for row in rows}


async def list_page(
    db: asyncpg.Pool, account_id: int, query: ListQuery
) -> tuple[list[FileRecord], bool] | None:
    """One page, newest first, and whether more lie in its direction; None when the
    cursor is not one of the account's files (a deleted one still serves, until purged)."""
    if query.scope_id is not None:
        return [], False  # no file of the gateway's belongs to a scope (a session)
    if query.ids is not None:
        rows = await db.fetch(
            f"SELECT {_COLUMNS} FROM files WHERE id = ANY($1::text[]) AND account_id = $2"
            f" AND {_LIVE} ORDER BY seq DESC",
            list(query.ids),
            account_id,
        )
        return [_record(r) for r in rows], False
    cursor = query.before_id or query.after_id
    limit = query.limit + 1
    if cursor is None:
        rows = await db.fetch(
            f"SELECT {_COLUMNS} FROM files WHERE account_id = $1 AND {_LIVE}"
            " ORDER BY seq DESC LIMIT $2",
            account_id,
            limit,
        )
    else:
        older = query.after_id is not None
        rows = await db.fetch(
            f"WITH c AS (SELECT seq FROM files WHERE id = $2 AND account_id = $1)"
            f" SELECT {_COLUMNS} FROM files"
            f" WHERE account_id = $1 AND {_LIVE}"
            f" AND seq {'<' if older else '>'} (SELECT seq FROM c)"
            f" ORDER BY seq {'DESC' if older else 'ASC'} LIMIT $3",
            account_id,
            cursor,
            limit,
        )
        if not rows:
            found = await db.fetchval(
                "SELECT 1 FROM files WHERE id = $1 AND account_id = $2", cursor, account_id
            )
            if found is None:
                return None
        if not older:  # the files just newer than the cursor, nearest first
            has_more = len(rows) > query.limit
            return [_record(r) for r in reversed(rows[: query.limit])], has_more
    has_more = len(rows) > query.limit
    return [_record(r) for r in rows[: query.limit]], has_more


async def soft_delete(db: asyncpg.Pool, account_id: int, file_id: str) -> bool:
    """Mark a live file deleted (404 from now on); False when there is none."""
    done = await db.fetchval(
        f"UPDATE files SET deleted_at = now() WHERE id = $1 AND account_id = $2 AND {_LIVE}"
        " RETURNING true",
        file_id,
        account_id,
    )
    return bool(done)


async def chunk_count(db: asyncpg.Pool, file_id: str) -> int:
    return int(await db.fetchval("SELECT count(*) FROM file_chunks WHERE file_id = $1", file_id))


async def chunks(db: asyncpg.Pool, file_id: str) -> AsyncIterator[bytes]:
    """A file's bytes, one row (at most :data:`CHUNK_BYTES`) at a time."""
    seq = 0
    while True:
        data = await db.fetchval(
            "SELECT data FROM file_chunks WHERE file_id = $1 AND seq = $2", file_id, seq
        )
        if data is None:
            return
        yield data
        seq += 1


async def read_all(db: asyncpg.Pool, file_id: str) -> bytes:
    return b"".join([chunk async for chunk in chunks(db, file_id)])


async def purge(db: asyncpg.Pool, grace_seconds: float) -> int:
    """Remove files deleted more than ``grace_seconds`` ago and abandoned uploads;
    returns how many went."""
    total = 0
    while True:
        gone = await db.fetchval(
            "SELECT files_purge(p_grace_seconds => $1, p_stale_seconds => $2, p_limit => $3)",
            grace_seconds,
            STALE_UPLOAD_SECONDS,
            PURGE_BATCH,
        )
        total += gone
        if gone < PURGE_BATCH:
            return total


async def delete_account_files(db: asyncpg.Pool | asyncpg.Connection, account_id: int) -> int:
    """Remove every file of an account and its bytes at once, with no grace period (what
    deleting the account does); returns how many files went."""
    rows = await db.fetch("DELETE FROM files WHERE account_id = $1 RETURNING 1", account_id)
    return len(rows)
