"""Migrations: in order, each in a transaction, recorded, idempotent, concurrency-safe;
the functions re-applied on every run; a database made by the layout before
``sql/migrations`` + ``sql/functions`` migrates to the same database as a new one."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import asyncpg
import pytest

from alicode_gw.store import migrate


def write(root: Path, name: str, sql: str, folder: str = "migrations") -> None:
    (root / folder).mkdir(exist_ok=True)
    (root / folder / name).write_text(sql)


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


def test_a_migration_may_only_hold_comments(tmp_path: Path) -> None:
    write(tmp_path, "001_nothing.sql", "-- nothing in the schema\n")
    assert [m.name for m in migrate.load_migrations(tmp_path)] == ["001_nothing.sql"]


async def test_a_rewritten_migration_naming_the_text_it_replaces_is_recorded(
    scratch_database_url: str, tmp_path: Path
) -> None:
    old = "CREATE TABLE a (v int); CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';"
    write(tmp_path, "001_a.sql", old)
    await migrate.run(scratch_database_url, tmp_path)
    (tmp_path / "migrations" / "001_a.sql").unlink()
    new = f"CREATE TABLE a (v int);\n-- replaces: {migrate.checksum(old)}\n"
    write(tmp_path, "001_renamed.sql", new)
    assert await migrate.run(scratch_database_url, tmp_path) == []  # not run again
    conn = await asyncpg.connect(scratch_database_url)
    try:
        row = await conn.fetchrow("SELECT name, checksum FROM schema_migrations")
    finally:
        await conn.close()
    assert (row["name"], row["checksum"]) == ("001_renamed.sql", migrate.checksum(new))
    # A rewrite naming another text is refused like any edit.
    write(tmp_path, "001_renamed.sql", f"-- replaces: {migrate.checksum('other')}\n")
    with pytest.raises(migrate.MigrationError, match="has changed"):
        await migrate.run(scratch_database_url, tmp_path)


async def test_functions_are_applied_again_on_every_run(
    scratch_database_url: str, tmp_path: Path
) -> None:
    write(tmp_path, "001_t.sql", "CREATE TABLE t (v int);")
    body = "CREATE OR REPLACE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT {}';"
    write(tmp_path, "answer.sql", body.format(1), folder="functions")
    assert await migrate.run(scratch_database_url, tmp_path) == ["001_t.sql"]
    write(tmp_path, "answer.sql", body.format(2), folder="functions")
    assert await migrate.run(scratch_database_url, tmp_path) == []
    conn = await asyncpg.connect(scratch_database_url)
    try:
        assert await conn.fetchval("SELECT answer()") == 2
    finally:
        await conn.close()


async def test_a_changed_signature_without_a_migration_dropping_it_is_explained(
    scratch_database_url: str, tmp_path: Path
) -> None:
    write(tmp_path, "001_t.sql", "CREATE TABLE t (v int);")
    body = "CREATE OR REPLACE FUNCTION twice({} int) RETURNS int LANGUAGE sql AS 'SELECT 2 * $1';"
    write(tmp_path, "twice.sql", body.format("p_n"), folder="functions")
    await migrate.run(scratch_database_url, tmp_path)
    write(tmp_path, "twice.sql", body.format("p_tokens"), folder="functions")
    with pytest.raises(migrate.MigrationError, match="drops its old signature"):
        await migrate.run(scratch_database_url, tmp_path)
    write(tmp_path, "002_drop_twice.sql", "DROP FUNCTION IF EXISTS twice(int);")
    assert await migrate.run(scratch_database_url, tmp_path) == ["002_drop_twice.sql"]


async def test_the_functions_commit_with_the_last_migration_of_the_run(
    scratch_database_url: str, tmp_path: Path
) -> None:
    """So a migration dropping an old signature is never seen without its replacement."""
    write(tmp_path, "001_t.sql", "CREATE TABLE t (v int);")
    write(tmp_path, "002_u.sql", "CREATE TABLE u (v int);")
    write(tmp_path, "broken.sql", "CREATE OR REPLACE FUNCTION f( RETURNS int", folder="functions")
    with pytest.raises(asyncpg.PostgresSyntaxError):
        await migrate.run(scratch_database_url, tmp_path)
    conn = await asyncpg.connect(scratch_database_url)
    try:
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")]
        assert versions == [1]
        assert await conn.fetchval("SELECT to_regclass('u') IS NULL")
    finally:
        await conn.close()


def test_each_function_is_defined_once_in_the_tree_and_only_in_functions() -> None:
    root = migrate.sql_dir()
    create = re.compile(r"CREATE\s+(OR\s+REPLACE\s+)?FUNCTION\s+([\w.]+)", re.IGNORECASE)
    for migration in migrate.load_migrations(root):
        assert create.search(migration.sql) is None, migration.name
    defined = [
        (match.group(1), match.group(2))
        for functions in migrate.load_functions(root)
        for match in create.finditer(functions.sql)
    ]
    names = [name for _, name in defined]
    assert len(names) == len(set(names)), sorted(names)
    assert all(replace for replace, _ in defined), "CREATE OR REPLACE: applied on every run"
    assert "billing.apply_batch" in names and "billing.settle_leased" in names


# The schema as the catalogs see it: what a database made one way must share with one
# made another way (function bodies included, so a stale definition shows).
SCHEMA_QUERY = """
SELECT 'function' AS kind, n.nspname || '.' || p.proname AS name,
       pg_get_function_arguments(p.oid) || ' -> ' || pg_get_function_result(p.oid)
       || ' ' || md5(p.prosrc) AS detail
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname IN ('public', 'billing')
UNION ALL
SELECT 'column', c.table_schema || '.' || c.table_name || '.' || c.column_name,
       c.data_type || ' ' || c.is_nullable || ' ' || coalesce(c.column_default, '')
  FROM information_schema.columns c
 WHERE c.table_schema IN ('public', 'billing') AND c.table_name <> 'schema_migrations'
UNION ALL
SELECT 'index', schemaname || '.' || indexname, indexdef FROM pg_indexes
 WHERE schemaname IN ('public', 'billing')
UNION ALL
SELECT 'trigger', tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t WHERE NOT tgisinternal
UNION ALL
SELECT 'constraint', conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace IN ('public'::regnamespace, 'billing'::regnamespace)
 ORDER BY 1, 2, 3
"""

BEFORE_SPLIT = Path(__file__).parents[1] / "fixtures" / "sql_before_split"


async def schema(url: str) -> list[tuple[str, str, str]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await conn.fetch(SCHEMA_QUERY)]
    finally:
        await conn.close()


async def test_a_database_of_the_layout_before_the_split_migrates_to_a_new_ones_schema(
    scratch_database_url: str, database_url: str, tmp_path: Path
) -> None:
    """``tests/fixtures/sql_before_split`` are ``sql/001_…006_*.sql`` as they were when the
    migrations still defined the functions (and 006 redefined apply_batch whole)."""
    (tmp_path / "migrations").symlink_to(BEFORE_SPLIT)
    old = await migrate.run(scratch_database_url, tmp_path)
    assert len(old) == 6
    conn = await asyncpg.connect(scratch_database_url)
    try:  # the old functions, positional parameters and all
        assert "t_input bigint" in await conn.fetchval(
            "SELECT pg_get_function_arguments('billing.settle_leased'::regproc)"
        )
    finally:
        await conn.close()

    later = [m.name for m in migrate.load_migrations(migrate.sql_dir()) if m.version > 6]
    assert later[:3] == [
        "007_named_parameters.sql",
        "008_billing_nodes.sql",
        "009_model_families.sql",
    ]
    assert await migrate.run(scratch_database_url) == later  # and every one added since
    assert await schema(scratch_database_url) == await schema(database_url)
    conn = await asyncpg.connect(scratch_database_url)
    try:
        recorded = await conn.fetch(
            "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
        )
    finally:
        await conn.close()
    current = migrate.load_migrations(migrate.sql_dir())
    assert [tuple(r) for r in recorded] == [(m.version, m.name, m.checksum) for m in current]
    assert await migrate.run(scratch_database_url) == []


async def test_a_database_of_the_layout_before_013_loses_the_old_settle_signatures(
    scratch_database_url: str, database_url: str, tmp_path: Path
) -> None:
    """A database migrated to 012 with the functions of then (settle and settle_leased
    without ``p_hit_pct``) ends with the new signatures only: 013 drops the old ones
    (an overload left behind would make every named call without p_hit_pct ambiguous)."""
    root = migrate.sql_dir()
    (tmp_path / "migrations").mkdir()
    for migration in migrate.load_migrations(root):
        if migration.version < 13:
            (tmp_path / "migrations" / migration.name).symlink_to(
                root / "migrations" / migration.name
            )
    hit = re.compile(r",\s*p_hit_pct integer DEFAULT NULL")
    for functions in migrate.load_functions(root):
        # The functions of then: no p_hit_pct, and no ledger.cache_hit (013's column,
        # which the dashboard's usage queries read) in the SQL-language bodies.
        then = hit.sub("", functions.sql).replace("l.cache_hit", "false")
        write(tmp_path, functions.name, then, folder="functions")
    await migrate.run(scratch_database_url, tmp_path)
    conn = await asyncpg.connect(scratch_database_url)
    try:  # the old layout: no p_hit_pct
        old = await conn.fetchval("SELECT pg_get_function_arguments('billing.settle'::regproc)")
        assert "p_estimated boolean" in old and "p_hit_pct" not in old
    finally:
        await conn.close()

    newer = [m.name for m in migrate.load_migrations(root) if m.version >= 13]
    assert await migrate.run(scratch_database_url) == newer
    assert await schema(scratch_database_url) == await schema(database_url)
