"""GET /v1/health: ok / degraded / down from live checks and the pool, over real HTTP;
Redis stopped and started again under a running gateway; PostgreSQL cut off."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from alicode_gw import __version__, app
from alicode_gw.dev.embedded import EmbeddedRedis
from tests.support.customers import reset_pool
from tests.support.gateway import UPSTREAM_KEYS, start_gateway, stop_gateway
from tests.support.keys import PostgresProxy


async def health(gateway: app.Gateway) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/v1/health") as resp:
            assert resp.headers["cache-control"] == "no-store"
            return resp.status, await resp.json()


async def wait_for(gateway: app.Gateway, status: str, within: float = 15.0) -> dict:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        code, body = await health(gateway)
        if body["status"] == status:
            assert code == (503 if status == "down" else 200)
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"health stayed {body}")
        await asyncio.sleep(0.2)


@pytest.fixture
async def node(db: asyncpg.Connection, make_config) -> AsyncIterator[app.Gateway]:
    await reset_pool(db)
    gateway = await start_gateway(make_config(redis_prefix=f"health-{secrets.token_hex(4)}:"))
    try:
        yield gateway
    finally:
        await stop_gateway(gateway)


async def test_ok_report_without_secrets(node: app.Gateway) -> None:
    code, body = await health(node)
    assert code == 200 and body["status"] == "ok" and body["reasons"] == []
    assert body["version"] == __version__
    assert body["uptime_seconds"] >= 0
    assert body["database"]["ok"] and body["database"]["latency_ms"] >= 0
    assert body["redis"]["ok"] and body["redis"]["latency_ms"] >= 0
    upstream = body["upstream"]
    assert (upstream["healthy"], upstream["total"]) == (3, 3)
    assert upstream["recent"]["window_seconds"] == 60
    text = json.dumps(body)
    for secret in UPSTREAM_KEYS:
        assert secret not in text and secret[-4:] not in text


async def test_degraded_and_down_from_the_pool(node: app.Gateway, db: asyncpg.Connection) -> None:
    await db.execute(
        "UPDATE upstream_credentials SET status = 'disabled', disabled_at = now() "
        "WHERE name = 'cred-0'"
    )
    await node.state.keypool.refresh(reload=True)
    body = await wait_for(node, "degraded")
    assert body["upstream"] == {**body["upstream"], "healthy": 2, "total": 3, "disabled": 1}
    assert body["reasons"] == ["some upstream credentials are not healthy"]
    await db.execute("UPDATE upstream_credentials SET status = 'disabled', disabled_at = now()")
    await node.state.keypool.refresh(reload=True)
    body = await wait_for(node, "down")
    assert "no enabled upstream credential" in body["reasons"]
    await db.execute("DELETE FROM upstream_credentials")
    await node.state.keypool.refresh(reload=True)
    body = await wait_for(node, "down")
    assert body["upstream"]["total"] == 0


async def test_high_upstream_error_rate_degrades(node: app.Gateway) -> None:
    metrics = node.state.metrics
    for _ in range(13):
        metrics.upstream_attempt("cred-1", "client_error")  # the client's fault: not an error
    code, body = await health(node)
    assert code == 200 and body["status"] == "ok" and body["upstream"]["recent"]["errors"] == 0
    for _ in range(13):
        metrics.upstream_attempt("cred-2", "server_error")
    body = await wait_for(node, "degraded")
    assert body["reasons"] == ["high upstream error rate"]
    recent = body["upstream"]["recent"]
    assert (recent["attempts"], recent["errors"], recent["error_rate"]) == (26, 13, 0.5)


async def test_draining_is_down(node: app.Gateway) -> None:
    node.state.draining = True
    try:
        body = await wait_for(node, "down")
        assert body["reasons"] == ["draining"]
    finally:
        node.state.draining = False


async def test_live_checks_are_cached_and_shared(node: app.Gateway) -> None:
    state = node.state
    state.health.invalidate()
    results = await asyncio.gather(*(state.health.checks(state.db, state.redis) for _ in range(20)))
    assert all(r is results[0] for r in results)  # one check served 20 concurrent polls
    assert await state.health.checks(state.db, state.redis) is results[0]
    await asyncio.sleep(1.05)
    assert await state.health.checks(state.db, state.redis) is not results[0]
    # Polling every 50 ms for a second costs a handful of live checks at most.
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(20):
        await health(node)
        await asyncio.sleep(0.05)
    assert loop.time() - started < 5


async def test_degraded_when_redis_stops_and_back_when_it_returns(
    db: asyncpg.Connection, make_config, tmp_path: Path
) -> None:
    await reset_pool(db)
    own_redis = EmbeddedRedis(tmp_path / "own-redis")
    url = await asyncio.to_thread(own_redis.start)
    gateway = await start_gateway(make_config(redis_url=url, redis_prefix="health-redis:"))
    try:
        assert (await wait_for(gateway, "ok"))["redis"]["ok"]
        await asyncio.to_thread(own_redis.stop)
        body = await wait_for(gateway, "degraded")
        assert body["redis"]["ok"] is False and "error" in body["redis"]
        assert body["reasons"] == ["redis unreachable"] and body["database"]["ok"]
        assert await asyncio.to_thread(own_redis.start) == url
        body = await wait_for(gateway, "ok")
        assert body["redis"]["ok"]
    finally:
        await stop_gateway(gateway)
        await asyncio.to_thread(own_redis.stop)


async def test_down_when_the_database_is_unreachable(
    db: asyncpg.Connection, make_config, database_url: str
) -> None:
    await reset_pool(db)
    async with PostgresProxy(database_url) as proxy:
        gateway = await start_gateway(
            make_config(database_url=proxy.url, redis_prefix=f"health-{secrets.token_hex(4)}:")
        )
        try:
            assert (await wait_for(gateway, "ok"))["database"]["ok"]
            await proxy.cut()
            body = await wait_for(gateway, "down")
            assert body["database"]["ok"] is False
            assert "database unreachable" in body["reasons"]
        finally:
            await stop_gateway(gateway)
