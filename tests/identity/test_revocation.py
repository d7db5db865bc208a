"""Revocation reaches every node within 2 s: two gateway PROCESSES on one database and
Redis; a key is revoked (in SQL + announced, or by the operator CLI) and the other
node answers 401 within 2 seconds."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anthropic
import asyncpg
import pytest

from alicode_gw.identity import accounts
from alicode_gw.identity.auth import announce_revoked
from alicode_gw.store.backends import create_redis
from tests.support.customers import reset_pool
from tests.support.keys import new_key

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(database_url: str, redis_url: str, redis_prefix: str, **more: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ALICODE_")}
    return {
        **base,
        "ALICODE_DATABASE_URL": database_url,
        "ALICODE_REDIS_URL": redis_url,
        "ALICODE_REDIS_PREFIX": redis_prefix,
        **more,
    }


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/v1/health", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("gateway did not become healthy")


@pytest.fixture(scope="module")
def nodes(
    database_url: str, redis_url: str, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[str]]:
    """Two ``alicode-gw serve`` processes; yields their base URLs."""

    async def provision() -> None:  # health is "down" without an enabled credential
        conn = await asyncpg.connect(database_url)
        try:
            await reset_pool(conn)
        finally:
            await conn.close()

    asyncio.run(provision())
    procs: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for index in range(2):
            port = _free_port()
            data_dir: Path = tmp_path_factory.mktemp(f"node{index}")
            env = _env(
                database_url,
                redis_url,
                redis_prefix,
                ALICODE_LISTEN=f"127.0.0.1:{port}",
                ALICODE_DATA_DIR=str(data_dir),
                ALICODE_LOG_LEVEL="WARNING",
            )
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "alicode_gw", "serve"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            urls.append(f"http://127.0.0.1:{port}")
        for url, proc in zip(urls, procs, strict=True):
            _wait_healthy(url, proc)
        time.sleep(0.5)  # let both subscribe to the revocation channel
        yield urls
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _status(url: str, key: str) -> int:
    client = anthropic.AsyncAnthropic(api_key=key, base_url=url, max_retries=0)
    async with client:
        try:
            await client.get("/v1/key-status", cast_to=object)
        except anthropic.APIStatusError as err:
            return err.status_code
    return 200


async def _seconds_until_401(urls: list[str], key: str, limit: float = 5.0) -> float:
    """Poll every node until each answers 401; the time the slowest took."""
    started = time.monotonic()
    pending = set(urls)
    while pending:
        for url in list(pending):
            if await _status(url, key) == 401:
                pending.discard(url)
        if time.monotonic() - started > limit:
            break
        await asyncio.sleep(0.02)
    assert not pending, f"still accepted after {limit} s by {pending}"
    return time.monotonic() - started


async def _warm(urls: list[str], key: str) -> None:
    for url in urls:
        for _ in range(3):  # cached on each node
            assert await _status(url, key) == 200


async def test_revoke_reaches_the_other_node_within_2s(
    nodes: list[str], db: asyncpg.Connection, redis_url: str, redis_prefix: str
) -> None:
    record, secret = await new_key(db)
    await _warm(nodes, secret)
    redis = create_redis(redis_url)
    try:
        await accounts.revoke_key(db, record.public_id)
        await announce_revoked(redis, redis_prefix, [record.public_id])
        elapsed = await _seconds_until_401(nodes, secret)
    finally:
        await redis.aclose()
    assert elapsed <= 2.0, elapsed


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alicode_gw", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_cli_revoke_and_emergency_stop_reach_every_node(
    nodes: list[str], db: asyncpg.Connection, database_url: str, redis_url: str, redis_prefix: str
) -> None:
    env = _env(database_url, redis_url, redis_prefix)
    record, secret = await new_key(db)
    await _warm(nodes, secret)
    result = await asyncio.to_thread(_cli, env, "key", "revoke", record.public_id, "--json")
    assert result.returncode == 0, result.stderr
    assert await _seconds_until_401(nodes, secret) <= 2.0

    account = await accounts.create_account(db, f"stop-{record.public_id}@example.com")
    secrets_ = [(await accounts.create_key(db, account.id, f"k{i}", cost=4))[1] for i in range(3)]
    for secret in secrets_:
        await _warm(nodes, secret)
    result = await asyncio.to_thread(_cli, env, "account", "stop", "--email", account.email)
    assert result.returncode == 0, result.stderr
    for secret in secrets_:
        assert await _seconds_until_401(nodes, secret) <= 2.0
