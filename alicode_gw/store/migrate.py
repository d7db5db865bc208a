"""Schema migrations: the numbered ``sql/NNN_name.sql`` files, applied in order.

Each file runs in its own transaction and is recorded in ``schema_migrations`` with
its checksum. Re-running is a no-op. A session-level advisory lock makes concurrent
runs (two nodes starting at once) safe: the second waits, then finds nothing to do.
An applied file whose text changed is an error, never silently re-run.
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg

# An arbitrary constant identifying "alicode_gw migrations" among advisory locks.
ADVISORY_LOCK_ID = 0x41_4C_49_43_4F_44_45  # "ALICODE"
_NAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    """The migrations cannot be applied as they are."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def sql_dir() -> Path:
    """The ``sql/`` folder: beside the package in a checkout, else the installed copy."""
    for candidate in (
        Path(__file__).resolve().parents[2] / "sql",
        Path(sys.prefix) / "share" / "alicode_gw" / "sql",
    ):
        if candidate.is_dir():
            return candidate
    raise MigrationError("cannot find the sql/ folder of alicode_gw")


def load_migrations(directory: Path) -> list[Migration]:
    migrations: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNN_name.sql")
        migrations.append(Migration(int(match.group(1)), path.name, path.read_text("utf-8")))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a number")
    return sorted(migrations, key=lambda m: m.version)


_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def apply(conn: asyncpg.Connection, directory: Path | None = None) -> list[str]:
    """Apply the pending migrations on ``conn``; returns the names applied."""
    migrations = load_migrations(directory or sql_dir())
    await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_ID)
    try:
        await conn.execute(_BOOKKEEPING)
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        applied = {row["version"]: row for row in rows}
        done: list[str] = []
        for migration in migrations:
            row = applied.get(migration.version)
            if row is not None:
                if row["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"{migration.name} was applied but its text has changed since; "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            done.append(migration.name)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_ID)


async def run(database_url: str, directory: Path | None = None) -> list[str]:
    """Connect, apply, disconnect."""
    conn = await asyncpg.connect(database_url)
    try:
        return await apply(conn, directory)
    finally:
        await conn.close()
