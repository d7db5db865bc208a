"""The database's schema and functions, from the ``sql/`` folder.

``sql/migrations/NNN_name.sql`` hold the schema (tables, indexes, types, seed rows). Each
is applied once, in numeric order, in its own transaction, and recorded in
``schema_migrations`` with its checksum. An applied file whose text changed is an error,
never silently re-run, unless the new text names the text it replaces: a line
``-- replaces: <sha256 of the old text>`` marks a rewrite that changes nothing an
applied database has (e.g. its functions moved to ``sql/functions/``); the record then
takes the file's new name and checksum.

``sql/functions/*.sql`` hold the functions (``CREATE OR REPLACE FUNCTION ...``, and the
triggers that call them), each defined once in the tree. They are applied again on every
run, after the migrations, in file-name order, so a database runs the functions of the
code that last migrated it; they commit together with the last migration the run applies
(in a transaction of their own when none was pending). ``CREATE OR REPLACE`` cannot
change a function's argument names or types, nor its result columns: such a change
comes with a migration that drops the old signature (``DROP FUNCTION IF EXISTS``), as
does a function deleted from the tree. When that migration is the last of the run, no
other session ever sees the old signature gone and the new one not yet there.

A session-level advisory lock makes concurrent runs (two nodes starting at once) safe:
the second waits, then finds no migration to apply.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

# An arbitrary constant identifying "alicode_gw migrations" among advisory locks.
ADVISORY_LOCK_ID = 0x41_4C_49_43_4F_44_45  # "ALICODE"
MIGRATIONS = "migrations"
FUNCTIONS = "functions"
_MIGRATION_NAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")
_FUNCTIONS_NAME = re.compile(r"^[a-z0-9_]+\.sql$")
_REPLACES = re.compile(r"^-- replaces: ([0-9a-f]{64})\s*$", re.MULTILINE)
_LINE_COMMENT = re.compile(r"--[^\n]*")


class MigrationError(RuntimeError):
    """The migrations cannot be applied as they are."""


def checksum(sql: str) -> str:
    return hashlib.sha256(sql.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return checksum(self.sql)

    @property
    def replaces(self) -> frozenset[str]:
        """Checksums of earlier texts of this migration that it stands in for."""
        return frozenset(_REPLACES.findall(self.sql))


@dataclass(frozen=True, slots=True)
class FunctionsFile:
    name: str
    sql: str


def sql_dir() -> Path:
    """The ``sql/`` folder: beside the package in a checkout, else the installed copy."""
    for candidate in (
        Path(__file__).resolve().parents[2] / "sql",
        Path(sys.prefix) / "share" / "alicode_gw" / "sql",
    ):
        if (candidate / MIGRATIONS).is_dir():
            return candidate
    raise MigrationError("cannot find the sql/ folder of alicode_gw")


def load_migrations(root: Path) -> list[Migration]:
    """The files of ``root/migrations``, by version."""
    directory = root / MIGRATIONS
    if not directory.is_dir():
        raise MigrationError(f"{directory} is not a folder of migrations")
    migrations: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNN_name.sql")
        migrations.append(Migration(int(match.group(1)), path.name, path.read_text("utf-8")))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a number")
    return sorted(migrations, key=lambda m: m.version)


def load_functions(root: Path) -> list[FunctionsFile]:
    """The files of ``root/functions`` (none when there is no such folder), by name."""
    files: list[FunctionsFile] = []
    for path in sorted((root / FUNCTIONS).glob("*.sql")):
        if _FUNCTIONS_NAME.match(path.name) is None:
            raise MigrationError(f"{path.name}: function files are named name.sql")
        files.append(FunctionsFile(path.name, path.read_text("utf-8")))
    return files


_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def apply(conn: asyncpg.Connection, root: Path | None = None) -> list[str]:
    """Apply the pending migrations on ``conn``, then the functions; returns the names of
    the migrations applied."""
    root = root or sql_dir()
    migrations = load_migrations(root)
    functions = load_functions(root)
    await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_ID)
    try:
        await conn.execute(_BOOKKEEPING)
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        applied = {row["version"]: row for row in rows}
        pending: list[Migration] = []
        for migration in migrations:
            row = applied.get(migration.version)
            if row is None:
                pending.append(migration)
            elif row["checksum"] in migration.replaces:
                await conn.execute(
                    "UPDATE schema_migrations SET name = $2, checksum = $3 WHERE version = $1",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
                log.info("%s (applied as %s) recorded as rewritten", migration.name, row["name"])
            elif row["checksum"] != migration.checksum:
                raise MigrationError(
                    f"{migration.name} was applied but its text has changed since; "
                    "add a new migration instead of editing an applied one"
                )
        done: list[str] = []
        for migration in pending:
            async with conn.transaction():
                if _LINE_COMMENT.sub("", migration.sql).strip():  # not comments only
                    await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
                if migration is pending[-1]:
                    await _apply_functions(conn, functions)
            done.append(migration.name)
        if not pending:
            async with conn.transaction():
                await _apply_functions(conn, functions)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_ID)


async def _apply_functions(conn: asyncpg.Connection, files: list[FunctionsFile]) -> None:
    for functions in files:
        try:
            await conn.execute(functions.sql)
        except asyncpg.InvalidFunctionDefinitionError as exc:
            if not str(exc).startswith(("cannot change", "cannot remove")):
                raise
            raise MigrationError(
                f"functions/{functions.name}: {exc}; a function whose argument names or "
                "types or result columns change needs a migration that drops its old "
                "signature first"
            ) from exc


async def run(database_url: str, root: Path | None = None) -> list[str]:
    """Connect, apply, disconnect."""
    conn = await asyncpg.connect(database_url)
    try:
        return await apply(conn, root)
    finally:
        await conn.close()
