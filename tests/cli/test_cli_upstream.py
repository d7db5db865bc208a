"""``alicode-gw upstream ...`` as an operator runs it (real processes), and running
nodes (KeyPool instances) reacting to it at once."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator

import asyncpg
import pytest

from alicode_gw.store.backends import create_redis
from alicode_gw.tasks import TaskTracker
from alicode_gw.upstream.outcome import Outcome
from alicode_gw.upstream.pool import KeyPool
from tests.support.cli import run_cli
from tests.support.gateway import migrated_database


@pytest.fixture(scope="module")
def pool_db_url(server_database_url: str) -> Iterator[str]:
    with migrated_database(server_database_url, "alicode_cli_upstream") as url:
        yield url


@pytest.fixture
def env(pool_db_url: str, redis_url: str) -> Iterator[dict[str, str]]:
    async def empty() -> None:
        conn = await asyncpg.connect(pool_db_url)
        try:
            await conn.execute("TRUNCATE upstream_credentials")
        finally:
            await conn.close()

    asyncio.run(empty())
    yield {
        "ALICODE_DATABASE_URL": pool_db_url,
        "ALICODE_REDIS_URL": redis_url,
        "ALICODE_REDIS_PREFIX": f"cli-up-{secrets.token_hex(4)}:",
    }


def new_secret() -> str:
    return "sk-ant-api03-" + secrets.token_urlsafe(48)


def assert_never_printed(secret: str, *results: subprocess.CompletedProcess[str]) -> None:
    for result in results:
        for text in (result.stdout, result.stderr):
            assert secret not in text
            assert secret[13:40] not in text


def test_add_list_remove_never_print_the_secret(env: dict[str, str]) -> None:
    first, second = new_secret(), new_secret()
    added = run_cli("upstream", "add", "--key", first, "--name", "main", "--weight", "3", env=env)
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == f"added main (sk-ant-…{first[-4:]}, weight 3)"

    piped = subprocess.run(
        [
            sys.executable,
            "-m",
            "alicode_gw",
            "upstream",
            "add",
            "--key-stdin",
            "--cache-group",
            "org-west",
            "--json",
        ],
        input=second + "\n",
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout) == {
        "id": json.loads(piped.stdout)["id"],
        "name": f"key-{second[-4:]}",
        "key": f"sk-ant-…{second[-4:]}",
        "weight": 1,
        "cache_group": "org-west",
    }

    listed = run_cli("upstream", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert lines[0].split() == ["ID", "NAME", "KEY", "WEIGHT", "CACHE", "GROUP", "HEALTH"]
    assert lines[1].split()[1:] == ["main", f"sk-ant-…{first[-4:]}", "3", "-", "healthy"]
    assert lines[2].split()[1:] == [
        f"key-{second[-4:]}",
        f"sk-ant-…{second[-4:]}",
        "1",
        "org-west",
        "healthy",
    ]
    as_json = run_cli("upstream", "list", "--json", env=env)
    rows = json.loads(as_json.stdout)
    assert [(r["name"], r["key"], r["cache_group"], r["health"]) for r in rows] == [
        ("main", f"sk-ant-…{first[-4:]}", None, "healthy"),
        (f"key-{second[-4:]}", f"sk-ant-…{second[-4:]}", "org-west", "healthy"),
    ]
    assert all("secret" not in row for row in rows)

    removed = run_cli("upstream", "remove", "main", env=env)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.strip() == f"removed main (sk-ant-…{first[-4:]})"
    by_id = run_cli("upstream", "remove", str(rows[1]["id"]), env=env)
    assert by_id.returncode == 0, by_id.stderr
    empty = run_cli("upstream", "list", env=env)
    assert empty.stdout.strip() == "the upstream pool is empty"
    for secret in (first, second):
        assert_never_printed(secret, added, piped, listed, as_json, removed, by_id)


def test_mistakes_fail_cleanly_without_echoing_the_key(env: dict[str, str]) -> None:
    secret = new_secret()
    assert run_cli("upstream", "add", "--key", secret, env=env).returncode == 0
    again = run_cli("upstream", "add", "--key", secret, "--name", "again", env=env)
    assert again.returncode == 1
    assert again.stderr.strip() == (
        f"alicode-gw: this key is already in the pool as 'key-{secret[-4:]}'"
    )
    zero = run_cli("upstream", "add", "--key", new_secret(), "--weight", "0", env=env)
    assert zero.returncode == 2 and "--weight" in zero.stderr
    missing = run_cli("upstream", "remove", "nobody", env=env)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "alicode-gw: no upstream credential named or numbered 'nobody'"
    grouped = run_cli("upstream", "add", "--key", new_secret(), "--cache-group", "a b", env=env)
    assert grouped.returncode == 1
    assert grouped.stderr.strip() == "alicode-gw: the cache group must not contain spaces"
    spaced = run_cli("upstream", "add", "--key", "sk ant with spaces", env=env)
    assert spaced.returncode == 1 and "Traceback" not in spaced.stderr
    assert_never_printed(secret, again)


@pytest.fixture
async def node(pool_db_url: str, redis_url: str, env: dict[str, str]) -> AsyncIterator[KeyPool]:
    db = await asyncpg.create_pool(pool_db_url, min_size=1, max_size=2)
    assert db is not None
    redis = create_redis(redis_url)
    tasks = TaskTracker()
    pool = await KeyPool.open(db, redis, env["ALICODE_REDIS_PREFIX"], tasks)
    try:
        yield pool
    finally:
        await tasks.drain(1.0)
        await pool.close()
        await redis.aclose()
        await db.close()


async def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = await asyncio.to_thread(run_cli, "upstream", *args, env=env)
    assert result.returncode == 0, result.stderr
    return result


async def until(check: Callable[[], bool], within: float = 1.0) -> None:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, "not seen in time"
        await asyncio.sleep(0.01)


def names(pool: KeyPool) -> dict[str, str]:
    return {row["name"]: row["state"] for row in pool.snapshot()}


async def test_running_node_follows_the_cli(env: dict[str, str], node: KeyPool) -> None:
    await cli(env, "add", "--key", new_secret(), "--name", "a")
    await cli(env, "add", "--key", new_secret(), "--name", "b")
    # the CLI announces the change: the node sees it at once, not at its next reload
    await until(lambda: names(node) == {"a": "healthy", "b": "healthy"})
    a = next(c for c in (node.pick(), node.pick()) if c.name == "a")

    await node.report(a, Outcome.AUTH_FAILED)
    listed = json.loads((await cli(env, "list", "--json")).stdout)
    assert [(r["name"], r["health"]) for r in listed] == [("a", "disabled"), ("b", "healthy")]
    assert "(401)" in listed[0]["disabled_reason"]
    assert {node.pick().name for _ in range(10)} == {"b"}

    enabled = await cli(env, "enable", "a")
    assert enabled.stdout.startswith("enabled a (sk-ant-…")
    await until(lambda: names(node) == {"a": "healthy", "b": "healthy"})
    assert {node.pick().name for _ in range(10)} == {"a", "b"}

    # enable also ends a cooldown at once
    await node.report(a, Outcome.RATE_LIMITED, 120.0)
    assert "cooling" in (await cli(env, "list")).stdout
    await cli(env, "enable", "a")
    await until(lambda: names(node)["a"] == "healthy")

    await cli(env, "disable", "b", "--reason", "rotating it")
    await until(lambda: names(node)["b"] == "disabled")
    assert "disabled (rotating it)" in (await cli(env, "list")).stdout
    assert {node.pick().name for _ in range(10)} == {"a"}
    await cli(env, "remove", "a")
    await until(lambda: "a" not in names(node))
