"""Migrations: in order, each in a transaction, recorded, idempotent, concurrency-safe."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from alicode_gw.store import migrate


def write(directory: Path, name: str, sql: str) -> None:
    (directory / name).write_text(sql)


async def test_real_migrations_apply_then_rerun_is_noop(scratch_database_url: str) -> None:
    first = await migrate.run(scratch_database_url)
    assert first == [m.name for m in migrate.load_migrations(migrate.sql_dir())]
    assert first, "the project has migrations"
    assert await migrate.run(scratch_database_url) == []
    conn = await asyncpg.connect(scratch_database_url)
    try:
        recorded = await conn.fetch("SELECT name FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    assert [r["name"] for r in recorded] == first


async def test_applied_in_numeric_order(scratch_database_url: str, tmp_path: Path) -> None:
    write(tmp_path, "010_second.sql", "INSERT INTO t VALUES (2);")
    write(tmp_path, "002_first.sql", "CREATE TABLE t (v int); INSERT INTO t VALUES (1);")
    assert await migrate.run(scratch_database_url, tmp_path) == ["002_first.sql", "010_second.sql"]
    conn = await asyncpg.connect(scratch_database_url)
    try:
        assert [r["v"] for r in await conn.fetch("SELECT v FROM t ORDER BY v")] == [1, 2]
    finally:
        await conn.close()


async def test_failing_migration_rolls_back_only_itself(
    scratch_database_url: str, tmp_path: Path
) -> None:
    write(tmp_path, "001_ok.sql", "CREATE TABLE ok (v int);")
    write(tmp_path, "002_bad.sql", "CREATE TABLE half (v int); SELECT no_such_function();")
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await migrate.run(scratch_database_url, tmp_path)
    conn = await asyncpg.connect(scratch_database_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('ok') IS NOT NULL")
        assert await conn.fetchval("SELECT to_regclass('half') IS NULL")
        versions = await conn.fetch("SELECT version FROM schema_migrations")
        assert [r["version"] for r in versions] == [1]
    finally:
        await conn.close()


async def test_changed_applied_migration_is_refused(
    scratch_database_url: str, tmp_path: Path
) -> None:
    write(tmp_path, "001_a.sql", "CREATE TABLE a (v int);")
    await migrate.run(scratch_database_url, tmp_path)
    write(tmp_path, "001_a.sql", "CREATE TABLE a (v int, w int);")
    with pytest.raises(migrate.MigrationError, match="has changed"):
        await migrate.run(scratch_database_url, tmp_path)


async def test_concurrent_runs_apply_each_migration_once(
    scratch_database_url: str, tmp_path: Path
) -> None:
    # pg_sleep keeps the first runner inside the lock while the others queue up;
    # without the advisory lock the CREATE TABLE would fail on the second runner.
    write(tmp_path, "001_slow.sql", "SELECT pg_sleep(0.5); CREATE TABLE once (v int);")
    write(tmp_path, "002_next.sql", "INSERT INTO once VALUES (1);")
    results = await asyncio.gather(*(migrate.run(scratch_database_url, tmp_path) for _ in range(4)))
    assert sorted(len(r) for r in results) == [0, 0, 0, 2]
    conn = await asyncpg.connect(scratch_database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM once") == 1
    finally:
        await conn.close()


def test_bad_file_name_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "first.sql", "SELECT 1;")
    with pytest.raises(migrate.MigrationError, match=r"NNN_name\.sql"):
        migrate.load_migrations(tmp_path)
