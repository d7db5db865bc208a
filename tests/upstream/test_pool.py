"""The upstream credential pool: classify (pure, and on real mock-upstream answers),
weighted spread, cooldowns shared through Redis, half-open probes, disabling.

Every test gets a database of this module's own (the pool's table is emptied per
test) and a Redis prefix of its own; nodes are separate :class:`KeyPool` instances
with their own Redis connections, as on separate machines.
"""

from __future__ import annotations

import asyncio
import collections
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import aiohttp
import asyncpg
import pytest
from multidict import CIMultiDict
from redis.asyncio import Redis

from alicode_gw.dev.mock_upstream import MockUpstream
from alicode_gw.errors import ServiceUnavailableError
from alicode_gw.store.backends import create_redis
from alicode_gw.tasks import TaskTracker
from alicode_gw.upstream.credentials import (
    Credential,
    PoolError,
    add_credential,
    disable_credential,
    ensure_credentials,
    mask_secret,
)
from alicode_gw.upstream.health import health_keys
from alicode_gw.upstream.outcome import RATE_LIMIT_COOLDOWN_CAP, Outcome, classify
from alicode_gw.upstream.pool import KeyPool
from tests.support.gateway import migrated_database
from tests.support.keys import PostgresProxy, RedisProxy

NOW = 1_800_000_000.0
CREDIT_BALANCE = (
    "Your credit balance is too low to access the Anthropic API. "
    "Please go to Plans & Billing to upgrade or purchase credits."
)
USAGE_LIMIT = (
    "You have reached your specified API usage limits. "
    "You will regain access on 2026-04-01 at 00:00 UTC."
)
ECHOED_CREDIT_BALANCE = (
    "messages.0.content.0: Input tag 'Your credit balance is too low' found using 'type'"
    " does not match any of the expected tags: 'text', 'image'"
)


def rfc3339(seconds_from_now: float) -> str:
    when = datetime.fromtimestamp(NOW + seconds_from_now, UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def error(kind: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


# ---------------------------------------------------------------- classify (pure)


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        (200, {}, b"{}", (Outcome.OK, None)),
        (None, None, None, (Outcome.CONNECT_ERROR, None)),
        (429, {"retry-after": "7"}, None, (Outcome.RATE_LIMITED, 7.0)),
        (429, {"Retry-After": "2.5"}, None, (Outcome.RATE_LIMITED, 2.5)),
        (429, {"retry-after": "86400"}, None, (Outcome.RATE_LIMITED, RATE_LIMIT_COOLDOWN_CAP)),
        (429, {"retry-after": "-3"}, None, (Outcome.RATE_LIMITED, 0.0)),
        (429, {"retry-after": "soon"}, None, (Outcome.RATE_LIMITED, None)),
        (429, {}, None, (Outcome.RATE_LIMITED, None)),
        (529, {}, error("overloaded_error", "Overloaded"), (Outcome.OVERLOADED, None)),
        (503, {}, error("overloaded_error", "Overloaded"), (Outcome.OVERLOADED, None)),
        (500, {}, error("api_error", "Internal server error"), (Outcome.SERVER_ERROR, None)),
        (502, {}, b"<html>bad gateway</html>", (Outcome.SERVER_ERROR, None)),
        (401, {}, error("authentication_error", "invalid x-api-key"), (Outcome.AUTH_FAILED, None)),
        (403, {}, error("permission_error", "no"), (Outcome.CLIENT_ERROR, None)),
        (402, {}, error("billing_error", "pay up"), (Outcome.BILLING_FAILED, None)),
        (
            400,
            {},
            error(
                "invalid_request_error",
                "Your credit balance is too low to access the Anthropic API. "
                "Please go to Plans & Billing to upgrade or purchase credits.",
            ),
            (Outcome.BILLING_FAILED, None),
        ),
        (400, {}, error("billing_error", "x"), (Outcome.BILLING_FAILED, None)),
        (400, {}, error("invalid_request_error", USAGE_LIMIT), (Outcome.BILLING_FAILED, None)),
        # the upstream quoting a client's words: a client error, whatever the words
        (400, {}, error("invalid_request_error", ECHOED_CREDIT_BALANCE), None),
        (400, {}, error("invalid_request_error", CREDIT_BALANCE + " (echoed)"), None),
        (400, {}, error("not_found_error", CREDIT_BALANCE), None),
        (413, {}, error("invalid_request_error", CREDIT_BALANCE), None),
        (400, {}, error("invalid_request_error", f"messages.0: '{USAGE_LIMIT}'"), None),
        (400, {}, error("invalid_request_error", USAGE_LIMIT + " Also this."), None),
        (400, {}, error("invalid_request_error", USAGE_LIMIT.replace("2026", "soon")), None),
        (429, {}, error("invalid_request_error", USAGE_LIMIT), (Outcome.RATE_LIMITED, None)),
        (400, {}, error("invalid_request_error", "max_tokens: Field required"), None),
        (404, {}, error("not_found_error", "model: claude-x"), None),
        (413, {}, error("request_too_large", "too large"), None),
        (400, {}, b"not json at all", None),
        (400, {}, b'["error"]', None),
        (302, {}, None, (Outcome.SERVER_ERROR, None)),
    ],
)
def test_classify(
    status: int | None,
    headers: dict[str, str] | None,
    body: bytes | None,
    expected: tuple[Outcome, float | None] | None,
) -> None:
    assert classify(status, headers, body, now=NOW) == (expected or (Outcome.CLIENT_ERROR, None))


def test_classify_retry_after_http_date() -> None:
    when = datetime.fromtimestamp(NOW + 42, UTC)
    outcome = classify(429, {"retry-after": format_datetime(when, usegmt=True)}, None, now=NOW)
    assert outcome == (Outcome.RATE_LIMITED, 42.0)


def test_classify_rfc3339_reset_of_the_exhausted_limit_wins() -> None:
    headers = CIMultiDict(
        {
            "Anthropic-RateLimit-Requests-Remaining": "3999",
            "Anthropic-RateLimit-Requests-Reset": rfc3339(1),
            "anthropic-ratelimit-tokens-remaining": "0",
            "anthropic-ratelimit-tokens-reset": rfc3339(37),
            "anthropic-ratelimit-output-tokens-remaining": "100",
            "anthropic-ratelimit-output-tokens-reset": rfc3339(59),
        }
    )
    assert classify(429, headers, None, now=NOW) == (Outcome.RATE_LIMITED, 37.0)


def test_classify_rfc3339_without_remaining_takes_the_latest_and_caps() -> None:
    assert rfc3339(0) == "2027-01-15T08:00:00Z"  # NOW
    headers = {
        "anthropic-ratelimit-requests-reset": rfc3339(3),
        "anthropic-ratelimit-tokens-reset": "2027-01-15T08:00:05.5+00:00",
        "anthropic-ratelimit-input-tokens-reset": "garbage",
    }
    assert classify(429, headers, None, now=NOW) == (Outcome.RATE_LIMITED, 5.5)
    far = {"anthropic-ratelimit-tokens-reset": rfc3339(3600)}
    assert classify(429, far, None, now=NOW) == (Outcome.RATE_LIMITED, RATE_LIMIT_COOLDOWN_CAP)


def test_classify_prefers_retry_after_over_reset_headers() -> None:
    headers = {"retry-after": "4", "anthropic-ratelimit-tokens-reset": rfc3339(30)}
    assert classify(429, headers, None, now=NOW) == (Outcome.RATE_LIMITED, 4.0)


MOCK_KEY = "sk-ant-mock-classify-0001"
MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user"}]}


@pytest.mark.parametrize(
    ("key", "fault", "body", "expected"),
    [
        (MOCK_KEY, None, None, Outcome.OK),
        (MOCK_KEY, "status=429 retry_after=3", None, Outcome.RATE_LIMITED),
        (MOCK_KEY, "status=529", None, Outcome.OVERLOADED),
        (MOCK_KEY, "status=500", None, Outcome.SERVER_ERROR),
        ("sk-ant-not-a-mock-key-0009", None, None, Outcome.AUTH_FAILED),
        (MOCK_KEY, "status=403", None, Outcome.CLIENT_ERROR),
        (MOCK_KEY, None, {"model": "claude-sonnet-4-5"}, Outcome.CLIENT_ERROR),
        (MOCK_KEY, "status=413", None, Outcome.CLIENT_ERROR),
        (MOCK_KEY, "error=credit_balance", None, Outcome.BILLING_FAILED),
        (
            MOCK_KEY,
            None,
            {
                **MESSAGE,
                "messages": [
                    {"role": "user", "content": [{"type": "Your credit balance is too low"}]}
                ],
            },
            Outcome.CLIENT_ERROR,
        ),
    ],
)
async def test_classify_real_mock_upstream_answers(
    key: str, fault: str | None, body: dict[str, Any] | None, expected: Outcome
) -> None:
    payload = body or {**MESSAGE, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    if fault:
        headers["x-mock-fault"] = fault
    async with MockUpstream([MOCK_KEY]) as mock, aiohttp.ClientSession() as http:
        async with http.post(mock.url + "/v1/messages", json=payload, headers=headers) as resp:
            outcome, hint = classify(resp.status, resp.headers, await resp.read())
    assert outcome is expected
    if expected is Outcome.RATE_LIMITED:
        assert hint == 3.0
    else:
        assert hint is None


async def test_classify_connection_refused_is_connect_error() -> None:
    async with MockUpstream([MOCK_KEY]) as mock:
        url = mock.url
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(url + "/v1/models")
    assert classify(None, None, None) == (Outcome.CONNECT_ERROR, None)


# ---------------------------------------------------------------- credentials


def test_secret_is_never_in_repr_or_str() -> None:
    secret = "sk-ant-api03-" + secrets.token_urlsafe(40)
    cred = Credential(1, "primary", 2, secret)
    for text in (repr(cred), str(cred), f"{cred}", repr([cred]), repr({"c": cred})):
        assert secret not in text
        assert secret[13:30] not in text
    assert cred.display == f"sk-ant-…{secret[-4:]}"
    assert mask_secret("short") == "…"
    assert mask_secret("xai-0123456789abcdef") == "xai…cdef"


# ---------------------------------------------------------------- pools on real servers


@pytest.fixture(scope="module")
def pool_database_url(server_database_url: str) -> Iterator[str]:
    """A migrated database of this module's own: tests here empty the pool table."""
    with migrated_database(server_database_url, "alicode_keypool") as url:
        yield url


@dataclass
class Cluster:
    """Nodes sharing one database and one Redis prefix."""

    db: asyncpg.Pool
    redis: Redis
    redis_url: str
    prefix: str
    opened: list[tuple[KeyPool, TaskTracker, Redis]] = field(default_factory=list)

    async def node(
        self,
        redis_url: str | None = None,
        *,
        redis_timeout: float | None = None,
        db: asyncpg.Pool | None = None,
        **options: Any,
    ) -> KeyPool:
        """A node; ``redis_timeout``: its Redis client's socket timeouts (seconds)."""
        url = redis_url or self.redis_url
        if redis_timeout is None:
            redis = create_redis(url)
        else:
            redis = Redis.from_url(
                url, socket_timeout=redis_timeout, socket_connect_timeout=redis_timeout
            )
        tasks = TaskTracker()
        pool = await KeyPool.open(db or self.db, redis, self.prefix, tasks, **options)
        self.opened.append((pool, tasks, redis))
        return pool

    async def add(self, name: str, weight: int = 1) -> Credential:
        secret = f"sk-ant-test-{name}-{secrets.token_hex(8)}"
        return await add_credential(self.db, secret, name=name, weight=weight)

    async def ttl(self, cred: Credential) -> int:
        return int(await self.redis.pttl(health_keys(self.prefix, cred.id)[0]))


@pytest.fixture
async def cluster(pool_database_url: str, redis_url: str) -> AsyncIterator[Cluster]:
    db = await asyncpg.create_pool(pool_database_url, min_size=1, max_size=4)
    assert db is not None
    await db.execute("TRUNCATE upstream_credentials")
    redis = create_redis(redis_url)
    found = Cluster(db, redis, redis_url, f"kp-test-{secrets.token_hex(4)}:")
    try:
        yield found
    finally:
        for pool, tasks, node_redis in found.opened:
            await tasks.drain(1.0)
            await pool.close()
            await node_redis.aclose()
        keys = [key async for key in redis.scan_iter(match=found.prefix + "*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
        await db.close()


async def eventually(check: Callable[[], bool | Awaitable[bool]], within: float = 2.0) -> float:
    """Wait until ``check()`` holds; returns how long it took."""
    started = time.monotonic()
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.01)


def state_of(pool: KeyPool, cred: Credential) -> dict[str, Any]:
    return next(row for row in pool.snapshot() if row["id"] == cred.id)


def picks(pool: KeyPool, count: int, exclude: frozenset[int] = frozenset()) -> collections.Counter:
    return collections.Counter(pool.pick(exclude).name for _ in range(count))


async def test_weighted_spread_is_exact_and_smooth(cluster: Cluster) -> None:
    a, b, c = await cluster.add("a", 1), await cluster.add("b", 2), await cluster.add("c", 3)
    pool = await cluster.node()
    order = [pool.pick().name for _ in range(600)]
    assert collections.Counter(order) == {"a": 100, "b": 200, "c": 300}
    # smooth: the heaviest never runs more than twice in a row, the others never twice
    runs = [order[i] for i in range(1, len(order)) if order[i] == order[i - 1]]
    assert set(runs) <= {"c"}
    assert picks(pool, 300, exclude=frozenset({c.id})) == {"a": 100, "b": 200}
    assert picks(pool, 10, exclude=frozenset({a.id, c.id})) == {"b": 10}
    with pytest.raises(ServiceUnavailableError):
        pool.pick(exclude=frozenset({a.id, b.id, c.id}))


async def test_empty_pool_is_503_overloaded(cluster: Cluster) -> None:
    pool = await cluster.node()
    with pytest.raises(ServiceUnavailableError) as info:
        pool.pick()
    assert info.value.status == 503
    assert info.value.error_type == "overloaded_error"
    assert info.value.message == "no healthy upstream credential"


async def test_429_cools_for_retry_after_then_one_probe_decides(cluster: Cluster) -> None:
    a, _ = await cluster.add("a"), await cluster.add("b")
    pool = await cluster.node()
    outcome, hint = classify(429, {"retry-after": "1"}, None)
    reported = time.monotonic()
    await pool.report(a, outcome, hint)
    assert 900 < await cluster.ttl(a) <= 1000
    assert state_of(pool, a)["state"] == "cooling"
    assert picks(pool, 50) == {"b": 50}
    # a success of a request that started before the 429 does not end the cooldown
    await pool.report(a, Outcome.OK)
    assert picks(pool, 20) == {"b": 20}

    # half-open: once the cooldown is over, exactly one request may use "a"
    await eventually(lambda: pool.pick().name == "a", within=2.0)
    assert time.monotonic() - reported >= 1.0
    assert state_of(pool, a)["half_open"] is True
    assert picks(pool, 100) == {"b": 100}
    # the probe fails again: a new cooldown, and the streak grows
    await pool.report(a, Outcome.RATE_LIMITED, 1.0)
    assert state_of(pool, a)["cooldown_remaining"] > 0.8
    assert int(await cluster.redis.get(health_keys(cluster.prefix, a.id)[1])) == 2
    await eventually(lambda: pool.pick().name == "a", within=2.0)
    # the probe succeeds: healthy again, back in the rotation
    await pool.report(a, Outcome.OK)
    assert state_of(pool, a)["state"] == "healthy"
    assert picks(pool, 100) == {"a": 50, "b": 50}
    assert not await cluster.redis.exists(*health_keys(cluster.prefix, a.id))


async def test_5xx_backoff_grows_and_ok_resets_it(cluster: Cluster) -> None:
    a, _ = await cluster.add("a"), await cluster.add("b")
    pool = await cluster.node(backoff_base=0.2, backoff_cap=0.7)
    expected_ms = [200, 400, 700, 700]  # capped
    for outcome, ms in zip(
        (Outcome.SERVER_ERROR, Outcome.OVERLOADED, Outcome.CONNECT_ERROR, Outcome.SERVER_ERROR),
        expected_ms,
        strict=True,
    ):
        await pool.report(a, outcome)
        assert ms // 2 < await cluster.ttl(a) <= ms
        # more failures of the same episode (concurrent requests) do not grow it
        await pool.report(a, outcome)
        assert await cluster.ttl(a) <= ms
        assert picks(pool, 10) == {"b": 10}
        await eventually(lambda: pool.pick().name == "a", within=2.0)
    await pool.report(a, Outcome.OK)
    assert state_of(pool, a)["state"] == "healthy"
    await pool.report(a, Outcome.SERVER_ERROR)
    assert 100 < await cluster.ttl(a) <= 200  # back to the base


async def test_one_customers_failures_cool_nothing_on_any_node(cluster: Cluster) -> None:
    a, _ = await cluster.add("a"), await cluster.add("b")
    one, two = await cluster.node(), await cluster.node()
    for node in (one, two, one, two):
        for outcome in (Outcome.SERVER_ERROR, Outcome.OVERLOADED, Outcome.CONNECT_ERROR):
            assert await node.report(a, outcome, customer="account:1") is True  # left to it
    for node in (one, two):
        assert state_of(node, a)["state"] == "healthy"
        assert picks(node, 10) == {"a": 5, "b": 5}
    assert not await cluster.redis.exists(*health_keys(cluster.prefix, a.id)[:2])
    # a second customer's failure, on the other node, makes it the credential's
    assert await two.report(a, Outcome.SERVER_ERROR, customer="account:2") is False
    assert 500 < await cluster.ttl(a) <= 1000
    await eventually(lambda: state_of(one, a)["state"] == "cooling", within=1.0)


async def test_other_customers_failures_count_only_within_the_window(cluster: Cluster) -> None:
    a, _ = await cluster.add("a"), await cluster.add("b")
    pool = await cluster.node(blame_window=0.3)
    assert await pool.report(a, Outcome.SERVER_ERROR, customer="account:1")
    await asyncio.sleep(0.4)
    assert await pool.report(a, Outcome.SERVER_ERROR, customer="account:2")
    assert state_of(pool, a)["state"] == "healthy"
    assert not await pool.report(a, Outcome.SERVER_ERROR, customer="account:1")
    assert state_of(pool, a)["state"] == "cooling"


async def test_a_failure_confirmed_by_a_success_elsewhere_cools(cluster: Cluster) -> None:
    a, _ = await cluster.add("a"), await cluster.add("b")
    pool = await cluster.node()
    assert await pool.report(a, Outcome.SERVER_ERROR, customer="account:1")
    assert state_of(pool, a)["state"] == "healthy"
    await pool.confirm(a)
    assert state_of(pool, a)["state"] == "cooling"
    assert 500 < await cluster.ttl(a) <= 1000


async def test_one_customers_failure_of_the_probe_lets_another_probe(cluster: Cluster) -> None:
    a, _ = await cluster.add("a"), await cluster.add("b")
    pool = await cluster.node()
    await pool.report(a, Outcome.RATE_LIMITED, 1.0)
    await eventually(lambda: pool.pick().name == "a", within=2.0)  # the probe
    assert await pool.report(a, Outcome.SERVER_ERROR, customer="account:1")
    assert pool.pick().name == "a"  # still half-open: the next request probes
    await pool.report(a, Outcome.OK)
    assert state_of(pool, a)["state"] == "healthy"


async def test_without_redis_one_customer_still_cools_nothing(cluster: Cluster) -> None:
    a, _ = await cluster.add("a"), await cluster.add("b")
    async with RedisProxy(cluster.redis_url) as proxy:
        pool = await cluster.node(proxy.url)
        await proxy.cut()
        for _ in range(5):
            assert await pool.report(a, Outcome.SERVER_ERROR, customer="account:1")
        assert state_of(pool, a)["state"] == "healthy"
        assert not await pool.report(a, Outcome.SERVER_ERROR, customer="account:2")
        assert state_of(pool, a)["state"] == "cooling"


async def test_client_errors_never_cool_a_key(cluster: Cluster) -> None:
    a = await cluster.add("a")
    pool = await cluster.node()
    for _ in range(20):
        await pool.report(a, Outcome.CLIENT_ERROR)
    assert state_of(pool, a)["state"] == "healthy"
    assert picks(pool, 5) == {"a": 5}
    assert not await cluster.redis.exists(*health_keys(cluster.prefix, a.id))


async def test_all_cooling_is_503(cluster: Cluster) -> None:
    a, b = await cluster.add("a"), await cluster.add("b")
    pool = await cluster.node()
    await pool.report(a, Outcome.RATE_LIMITED, 30.0)
    await pool.report(b, Outcome.OVERLOADED)
    with pytest.raises(ServiceUnavailableError, match="no healthy upstream credential"):
        pool.pick()
    assert {row["state"] for row in pool.snapshot()} == {"cooling"}


async def test_two_nodes_share_cooldowns_within_a_second(cluster: Cluster) -> None:
    a, _ = await cluster.add("a"), await cluster.add("b")
    one, two = await cluster.node(), await cluster.node()
    await one.report(a, Outcome.RATE_LIMITED, 5.0)
    took = await eventually(lambda: state_of(two, a)["state"] == "cooling", within=1.0)
    assert took < 1.0
    assert picks(two, 30) == {"b": 30}
    assert 4.0 < state_of(two, a)["cooldown_remaining"] <= 5.0


async def test_refresh_loop_catches_a_missed_announcement(cluster: Cluster) -> None:
    a, _ = await cluster.add("a"), await cluster.add("b")
    pool = await cluster.node()
    cool, trip, _ = health_keys(cluster.prefix, a.id)
    # as if the pub/sub message had been lost: only the keys change
    await cluster.redis.set(cool, 4000, px=4000)
    await cluster.redis.set(trip, 1, px=60_000)
    await eventually(lambda: state_of(pool, a)["state"] == "cooling", within=1.5)
    assert picks(pool, 10) == {"b": 10}


async def test_half_open_probe_is_single_across_nodes(cluster: Cluster) -> None:
    a, _ = await cluster.add("a"), await cluster.add("b")
    nodes = [await cluster.node() for _ in range(3)]
    await nodes[0].report(a, Outcome.RATE_LIMITED, 1.0)
    await eventually(lambda: all(state_of(n, a)["state"] == "cooling" for n in nodes), 1.0)
    probes = 0
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        for node in nodes:
            probes += node.pick().name == "a"
        await asyncio.sleep(0.005)
    assert probes == 1
    holder = next(n for n in nodes if state_of(n, a)["half_open"])
    await holder.report(a, Outcome.OK)
    await eventually(lambda: all(state_of(n, a)["state"] == "healthy" for n in nodes), 1.0)


@pytest.mark.parametrize("outcome", [Outcome.AUTH_FAILED, Outcome.BILLING_FAILED])
async def test_auth_or_billing_failure_disables_on_every_node(
    cluster: Cluster, outcome: Outcome
) -> None:
    a, _ = await cluster.add("a"), await cluster.add("b")
    one, two = await cluster.node(), await cluster.node()
    await one.report(a, outcome)
    assert picks(one, 10) == {"b": 10}
    row = await cluster.db.fetchrow(
        "SELECT status, disabled_reason, disabled_at FROM upstream_credentials WHERE id = $1", a.id
    )
    assert row["status"] == "disabled" and row["disabled_at"] is not None
    assert ("billing" in row["disabled_reason"]) is (outcome is Outcome.BILLING_FAILED)
    await eventually(lambda: state_of(two, a)["state"] == "disabled", within=1.0)
    await eventually(lambda: state_of(two, a)["disabled_reason"] == row["disabled_reason"])
    # a disabled key stays out, whatever the time: only an operator brings it back
    await one.report(a, Outcome.OK)
    assert picks(two, 10) == {"b": 10}


async def test_new_credentials_and_removals_are_seen_by_reload(cluster: Cluster) -> None:
    pool = await cluster.node(reload_interval=0.3)
    a = await cluster.add("a")
    await eventually(lambda: {r["name"] for r in pool.snapshot()} == {"a"}, within=1.5)
    await cluster.db.execute("UPDATE upstream_credentials SET weight = 5 WHERE id = $1", a.id)
    await cluster.add("b")
    await eventually(lambda: {r["name"]: r["weight"] for r in pool.snapshot()} == {"a": 5, "b": 1})
    assert picks(pool, 60) == {"a": 50, "b": 10}
    await cluster.db.execute("DELETE FROM upstream_credentials WHERE id = $1", a.id)
    await eventually(lambda: {r["name"] for r in pool.snapshot()} == {"b"}, within=1.5)


@pytest.mark.parametrize("failure", ["unreachable", "timing out"])
async def test_without_redis_cooldowns_still_apply_locally(cluster: Cluster, failure: str) -> None:
    """A Redis that no longer answers (its calls time out) is treated like one that
    cannot be reached."""
    a, _ = await cluster.add("a"), await cluster.add("b")
    async with RedisProxy(cluster.redis_url) as proxy:
        pool = await cluster.node(proxy.url, backoff_base=0.2, redis_timeout=0.3)
        if failure == "unreachable":
            await proxy.cut()
        else:
            proxy.stall()
        started = time.monotonic()
        await pool.report(a, Outcome.OVERLOADED)  # must not raise
        assert time.monotonic() - started < 2.0
        assert state_of(pool, a)["state"] == "cooling"
        assert picks(pool, 10) == {"b": 10}
        # the probe is then granted locally, without coordination
        await eventually(lambda: pool.pick().name == "a", within=2.5)
        await pool.report(a, Outcome.OK)
        assert state_of(pool, a)["state"] == "healthy"


async def test_a_database_that_times_out_leaves_the_disable_local(
    cluster: Cluster, pool_database_url: str
) -> None:
    """asyncpg's command timeout (a TimeoutError) while recording a disable is a
    database failure like any other: the report returns, the node stops using the key."""
    a, _ = await cluster.add("a"), await cluster.add("b")
    async with PostgresProxy(pool_database_url) as proxy:
        slow = await asyncpg.create_pool(proxy.url, min_size=1, max_size=1, command_timeout=0.3)
        assert slow is not None
        try:
            pool = await cluster.node(db=slow)
            proxy.stall()
            started = time.monotonic()
            await pool.report(a, Outcome.AUTH_FAILED)  # must not raise
            assert time.monotonic() - started < 2.0
            assert state_of(pool, a)["state"] == "disabled"
            assert picks(pool, 5) == {"b": 5}
            await pool.close()
        finally:
            proxy.resume()
            slow.terminate()
    # it was not recorded: the table still has the key active
    status = await cluster.db.fetchval(
        "SELECT status FROM upstream_credentials WHERE id = $1", a.id
    )
    assert status == "active"


async def test_add_credential_rules(cluster: Cluster) -> None:
    secret = "sk-ant-test-" + secrets.token_hex(10)
    cred = await add_credential(cluster.db, secret)
    assert cred.name == f"key-{secret[-4:]}" and cred.weight == 1
    with pytest.raises(PoolError) as info:
        await add_credential(cluster.db, secret, name="other")
    assert secret not in str(info.value) and cred.name in str(info.value)
    same_tail = secret[:-6] + "ab" + secret[-4:]
    assert (await add_credential(cluster.db, same_tail)).name == f"key-{secret[-4:]}-2"
    for bad, kwargs in (("has space 12345", {}), ("short", {}), (secret + "x", {"weight": 0})):
        with pytest.raises(PoolError):
            await add_credential(cluster.db, bad, **kwargs)
    await ensure_credentials(cluster.db, [secret, "sk-ant-test-ensure-000000001"])
    await disable_credential(cluster.db, secret, "rotating")
    assert (
        await cluster.db.fetchval(
            "SELECT disabled_reason FROM upstream_credentials WHERE secret = $1", secret
        )
        == "rotating"
    )
    await ensure_credentials(cluster.db, [secret, "sk-ant-test-ensure-000000001"])
    assert await cluster.db.fetchval("SELECT count(*) FROM upstream_credentials") == 3
    assert (
        await cluster.db.fetchval(
            "SELECT status FROM upstream_credentials WHERE secret = $1", secret
        )
        == "active"
    )


# ---------------------------------------------------------------- cache-affine picks

AFFINITY_KEYS = [i.to_bytes(16, "big") for i in range(300)]


def affine(pool: KeyPool, exclude: frozenset[int] = frozenset()) -> list[str]:
    return [pool.pick(exclude, key).name for key in AFFINITY_KEYS]


async def test_affinity_same_on_every_node_and_only_a_cooled_ones_keys_move(
    cluster: Cluster,
) -> None:
    a, b, c = await cluster.add("a"), await cluster.add("b"), await cluster.add("c")
    one, two = await cluster.node(), await cluster.node()
    before = affine(one)
    assert affine(two) == before == affine(one)  # no shared state, no drift
    assert set(before) == {"a", "b", "c"}
    # A key without affinity (or affinity off) keeps the weighted round-robin.
    assert picks(one, 30) == {"a": 10, "b": 10, "c": 10}
    rr = await cluster.node(affinity=False)
    assert collections.Counter(affine(rr)) == {"a": 100, "b": 100, "c": 100}

    await one.report(b, Outcome.RATE_LIMITED, 1.0)
    await eventually(lambda: state_of(two, b)["state"] == "cooling")
    during = affine(one)
    assert affine(two) == during
    assert "b" not in during
    assert all(x == y for x, y in zip(before, during, strict=True) if x != "b")
    # Retries (exclude) take the next choice the same way.
    assert affine(one, frozenset({b.id})) == during
    # Cooldown over: the first request of one of b's own conversations is the probe ...
    # (the node that won the shared probe lock sends it)
    b_key = AFFINITY_KEYS[before.index("b")]
    prober: list[KeyPool] = []

    def probed() -> bool:
        prober.extend(n for n in (one, two, rr) if n.pick(frozenset(), b_key).name == "b")
        return bool(prober)

    await eventually(probed, within=3.0)
    await prober[0].report(b, Outcome.OK)
    # ... and once it succeeded, b's conversations return.
    await eventually(lambda: affine(one) == affine(two) == before, within=3.0)
    del a, c


async def test_affinity_passes_over_busy_credentials(cluster: Cluster) -> None:
    await cluster.add("a"), await cluster.add("b"), await cluster.add("c")
    pool = await cluster.node(inflight_cap=2)
    key = AFFINITY_KEYS[0]
    first = pool.pick(frozenset(), key)
    pool.started(first)
    assert pool.pick(frozenset(), key) == first
    pool.started(first)
    second = pool.pick(frozenset(), key)  # first is at its cap: the next choice
    assert second != first
    assert state_of(pool, first)["in_flight"] == 2
    pool.finished(first)
    assert pool.pick(frozenset(), key) == first
    pool.started(first)
    # Every credential at its cap: the first choice still (no queueing here).
    for cred in (second, third := pool.pick(frozenset({first.id, second.id}), key)):
        pool.started(cred)
        pool.started(cred)
    assert third not in (first, second)
    assert pool.pick(frozenset(), key) == first
    # Near its own upstream rate limit: passed over until the limit resets.
    for cred in (first, second, third):
        pool.finished(cred)
        pool.finished(cred)
    low = {
        "anthropic-ratelimit-requests-limit": "100",
        "anthropic-ratelimit-requests-remaining": "1",
        "anthropic-ratelimit-requests-reset": rfc3339(30 + time.time() - NOW),
    }
    pool.observe_limits(first, low)
    assert pool.pick(frozenset(), key) == second
    pool.observe_limits(first, {**low, "anthropic-ratelimit-requests-remaining": "50"})
    assert pool.pick(frozenset(), key) == first
