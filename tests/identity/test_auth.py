"""Authentication over real HTTP with the official anthropic SDK (GET /v1/key-status)."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from collections.abc import AsyncIterator

import aiohttp
import anthropic
import asyncpg
import httpx2
import pytest
from aiohttp.test_utils import make_mocked_request

from alicode_gw import app
from alicode_gw.errors import AuthenticationError, RateLimitError, ServiceUnavailableError
from alicode_gw.identity import accounts, keys
from alicode_gw.identity.auth import (
    INVALID_MESSAGE,
    KEY_STORE_UNAVAILABLE,
    ApiKey,
    Authenticator,
    announce_revoked,
)
from alicode_gw.store.backends import create_pool, create_redis
from alicode_gw.store.unavailable import DATABASE_UNREACHABLE
from tests.support import rawhttp
from tests.support.gateway import start_gateway, stop_gateway
from tests.support.keys import PostgresProxy, RedisProxy, new_key, unique_ip

LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)


@pytest.fixture
async def gw(make_config) -> AsyncIterator[app.Gateway]:
    """A gateway that believes X-Forwarded-For from loopback, so each test can speak
    from an address of its own (the failed-auth throttle is per IP)."""
    gateway = await start_gateway(make_config(trusted_proxies=LOOPBACK))
    try:
        yield gateway
    finally:
        await stop_gateway(gateway)


def sdk(gateway: app.Gateway, ip: str, **kwargs: object) -> anthropic.AsyncAnthropic:
    headers = {"X-Forwarded-For": ip, **kwargs.pop("default_headers", {})}  # type: ignore[dict-item]
    return anthropic.AsyncAnthropic(
        base_url=gateway.url, max_retries=0, default_headers=headers, **kwargs
    )


async def status_error(client: anthropic.AsyncAnthropic) -> anthropic.APIStatusError:
    async with client:
        with pytest.raises(anthropic.APIStatusError) as info:
            await client.get("/v1/key-status", cast_to=object)
    return info.value


def assert_auth_error(err: anthropic.APIStatusError, message: str = INVALID_MESSAGE) -> None:
    assert isinstance(err, anthropic.AuthenticationError)
    assert err.status_code == 401
    assert err.request_id and err.request_id.startswith("req_")
    assert err.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": message},
        "request_id": err.request_id,
    }


async def test_valid_key_on_x_api_key(gw: app.Gateway, db: asyncpg.Connection) -> None:
    record, secret = await new_key(db, rpm=60, concurrency=5, budget_tokens=5_000_000)
    async with sdk(gw, unique_ip(), api_key=secret) as client:
        raw = await client.get("/v1/key-status", cast_to=httpx2.Response)
    body = raw.json()
    assert raw.headers["request-id"].startswith("req_")
    assert body["key"] == f"sk-ali-{record.public_id}-…"
    assert record.public_id in body["key"] and secret.rsplit("-", 1)[1] not in str(body)
    assert body["status"] == "active"
    assert body["rate_limit"] == {"rpm": 60, "concurrent": 5}
    assert body["budget"]["total_tokens"] == 5_000_000
    assert body["usage"] == {"requests_last_minute": 0, "in_flight": 0}  # counted: none yet


async def test_valid_key_on_authorization_bearer(
    gw: app.Gateway, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    record, secret = await new_key(db)
    async with sdk(gw, unique_ip(), api_key=None, auth_token=secret) as client:
        raw = await client.get("/v1/key-status", cast_to=httpx2.Response)
    assert "x-api-key" not in raw.request.headers
    assert raw.request.headers["authorization"] == f"Bearer {secret}"
    assert raw.json()["key"] == record.masked
    assert raw.json()["usage"] == {"requests_last_minute": None, "in_flight": None}  # no limits


async def test_missing_key_is_401(gw: app.Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(
            gw.url + "/v1/key-status", headers={"X-Forwarded-For": unique_ip()}
        ) as resp:
            assert resp.status == 401
            body = await resp.json()
            request_id = resp.headers["request-id"]
    assert body["type"] == "error" and body["request_id"] == request_id
    assert body["error"]["type"] == "authentication_error"
    assert "Missing API key" in body["error"]["message"]
    # Another Authorization scheme is not a key either.
    err = await status_error(
        sdk(
            gw,
            unique_ip(),
            api_key=None,
            auth_token=None,
            default_headers={"Authorization": "Basic eA=="},
        )
    )
    assert_auth_error(err)


@pytest.mark.parametrize(
    "presented",
    [
        "sk-ali-x",
        "sk-ant-api03-not-ours",
        "sk-ali-abcdefghijkl-tooShort",
        "sk-ali-ABCDEFGHIJKL-" + "A" * 32,  # uppercase public id
    ],
)
async def test_malformed_key_is_401_without_lookup(gw: app.Gateway, presented: str) -> None:
    err = await status_error(sdk(gw, unique_ip(), api_key=presented))
    assert_auth_error(err)
    assert gw.state.auth.bcrypt_runs == 0


async def test_unknown_key_is_401_without_bcrypt(gw: app.Gateway) -> None:
    unknown = keys.format_key(keys.new_public_id(), keys.new_secret())
    err = await status_error(sdk(gw, unique_ip(), api_key=unknown))
    assert_auth_error(err)
    assert gw.state.auth.bcrypt_runs == 0


async def test_wrong_secret_is_401_and_costs_one_bcrypt(
    gw: app.Gateway, db: asyncpg.Connection
) -> None:
    record, _ = await new_key(db)
    wrong = keys.format_key(record.public_id, keys.new_secret())
    ip = unique_ip()
    for _ in range(3):  # the same wrong secret again: remembered, no new bcrypt
        assert_auth_error(await status_error(sdk(gw, ip, api_key=wrong)))
    assert gw.state.auth.bcrypt_runs == 1


async def test_cached_key_never_accepts_another_secret(
    gw: app.Gateway, db: asyncpg.Connection
) -> None:
    record, secret = await new_key(db)
    ip = unique_ip()
    async with sdk(gw, ip, api_key=secret) as client:
        await client.get("/v1/key-status", cast_to=object)
    runs = gw.state.auth.bcrypt_runs
    for _ in range(3):
        wrong = keys.format_key(record.public_id, keys.new_secret())
        assert_auth_error(await status_error(sdk(gw, ip, api_key=wrong)))
    assert gw.state.auth.bcrypt_runs == runs  # rejected against the cached digest
    async with sdk(gw, ip, api_key=secret) as client:  # the right one still works
        assert (await client.get("/v1/key-status", cast_to=object))["status"] == "active"


async def test_warm_key_costs_no_bcrypt(gw: app.Gateway, db: asyncpg.Connection) -> None:
    _, secret = await new_key(db)
    async with sdk(gw, unique_ip(), api_key=secret) as client:
        await asyncio.gather(*(client.get("/v1/key-status", cast_to=object) for _ in range(20)))
        assert gw.state.auth.bcrypt_runs == 1  # 20 concurrent first uses share one check
        for _ in range(10):
            await client.get("/v1/key-status", cast_to=object)
    assert gw.state.auth.bcrypt_runs == 1


async def test_revoked_key_and_stopped_account_are_401(
    gw: app.Gateway, db: asyncpg.Connection, redis: object, redis_prefix: str
) -> None:
    record, secret = await new_key(db)
    ip = unique_ip()
    async with sdk(gw, ip, api_key=secret) as client:
        await client.get("/v1/key-status", cast_to=object)
    await accounts.revoke_key(db, record.public_id)
    await announce_revoked(redis, redis_prefix, [record.public_id])  # type: ignore[arg-type]
    await asyncio.sleep(0.2)
    assert_auth_error(await status_error(sdk(gw, ip, api_key=secret)))

    account = await accounts.create_account(db, f"stop-{record.public_id}@example.com")
    _, other = await accounts.create_key(db, account.id, "x", cost=4)
    async with sdk(gw, ip, api_key=other) as client:
        await client.get("/v1/key-status", cast_to=object)
    revoked = await accounts.stop_account(db, account.email)
    await announce_revoked(redis, redis_prefix, revoked)  # type: ignore[arg-type]
    await asyncio.sleep(0.2)
    assert_auth_error(await status_error(sdk(gw, ip, api_key=other)))


async def test_failures_look_alike_in_shape_and_timing(
    gw: app.Gateway, db: asyncpg.Connection
) -> None:
    record, secret = await new_key(db)
    await accounts.revoke_key(db, record.id)
    floor = gw.state.auth.failure_floor
    presented = {
        "malformed": "sk-ali-nope",
        "unknown": keys.format_key(keys.new_public_id(), keys.new_secret()),
        "revoked": secret,
    }
    timings = {}
    for label, value in presented.items():
        started = time.perf_counter()
        err = await status_error(sdk(gw, unique_ip(), api_key=value))
        timings[label] = time.perf_counter() - started
        assert_auth_error(err)
    assert gw.state.auth.bcrypt_runs == 0
    assert all(floor <= t < floor + 0.25 for t in timings.values()), timings


async def test_repeated_failures_from_one_ip_are_throttled(gw: app.Gateway) -> None:
    ip = unique_ip()
    limit = gw.state.auth.fail_limit
    bad = sdk(gw, ip, api_key="sk-ali-bad")
    async with bad:
        for _ in range(limit):
            with pytest.raises(anthropic.AuthenticationError):
                await bad.get("/v1/key-status", cast_to=object)
        with pytest.raises(anthropic.RateLimitError) as info:
            await bad.get("/v1/key-status", cast_to=object)
    err = info.value
    assert err.body["error"]["type"] == "rate_limit_error"
    assert err.request_id and err.request_id.startswith("req_")
    assert 1 <= int(err.response.headers["retry-after"]) <= gw.state.auth.fail_window
    # Another address is not affected.
    assert_auth_error(await status_error(sdk(gw, unique_ip(), api_key="sk-ali-bad")))


async def test_forwarded_for_is_ignored_from_an_untrusted_peer(
    gateway: app.Gateway, db: asyncpg.Connection, redis: object, redis_prefix: str
) -> None:
    """The default gateway trusts no proxy: a client cannot pick its throttle bucket."""
    ip = unique_ip()
    async with sdk(gateway, ip, api_key="sk-ali-bad") as client:
        with pytest.raises(anthropic.AuthenticationError):
            await client.get("/v1/key-status", cast_to=object)
    assert await redis.exists(f"{redis_prefix}authfail:127.0.0.1")  # type: ignore[attr-defined]
    assert not await redis.exists(f"{redis_prefix}authfail:{ipaddress.ip_address(ip)}")  # type: ignore[attr-defined]
    await redis.delete(f"{redis_prefix}authfail:127.0.0.1")  # type: ignore[attr-defined]


def _request(secret: str) -> object:
    return make_mocked_request("GET", "/v1/key-status", headers={"x-api-key": secret})


async def test_warm_path_needs_no_database_nor_redis(
    database_url: str, redis_url: str, redis_prefix: str, db: asyncpg.Connection
) -> None:
    _, secret = await new_key(db)
    pool = await create_pool(database_url, 2)
    async with RedisProxy(redis_url) as proxy:
        redis = create_redis(proxy.url)
        authenticator = Authenticator(pool, redis, redis_prefix)
        try:
            key = await authenticator.authenticate(_request(secret), unique_ip())  # type: ignore[arg-type]
            await proxy.cut()
            await pool.close()
            again = await authenticator.authenticate(_request(secret), unique_ip())  # type: ignore[arg-type]
            assert again == key
            # A cold key now fails closed: 503, not 500 and not a pass.
            with pytest.raises(ServiceUnavailableError):
                other = keys.format_key(keys.new_public_id(), keys.new_secret())
                await authenticator.authenticate(_request(other), unique_ip())  # type: ignore[arg-type]
        finally:
            await authenticator.close()
            await redis.aclose()
            if not pool.is_closing():
                await pool.close()


@pytest.mark.parametrize("failure", ["unreachable", "timing out"])
async def test_a_cold_key_without_the_database_is_503(
    database_url: str, redis: object, redis_prefix: str, failure: str
) -> None:
    async with PostgresProxy(database_url) as proxy:
        pool = await asyncpg.create_pool(proxy.url, min_size=1, max_size=1, command_timeout=0.3)
        assert pool is not None
        authenticator = Authenticator(pool, redis, redis_prefix)  # type: ignore[arg-type]
        try:
            if failure == "unreachable":
                await proxy.cut()
            else:
                proxy.stall()
            other = keys.format_key(keys.new_public_id(), keys.new_secret())
            with pytest.raises(ServiceUnavailableError) as info:
                await authenticator.authenticate(_request(other), unique_ip())  # type: ignore[arg-type]
            assert info.value.message == KEY_STORE_UNAVAILABLE
            assert isinstance(info.value.__cause__, DATABASE_UNREACHABLE)
        finally:
            proxy.resume()
            await authenticator.close()
            pool.terminate()


def test_a_key_allows_a_model_by_its_name_or_its_alias_target() -> None:
    def key(allowed: frozenset[str] | None) -> ApiKey:
        return ApiKey(1, "pub", 1, "k", None, None, None, None, allowed)

    assert key(None).allows("anything")
    limited = key(frozenset({"claude-sonnet-4-5"}))
    assert limited.allows("claude-sonnet-4-5")
    assert limited.allows("sonnet", "claude-sonnet-4-5")  # an alias of an allowed model
    assert not limited.allows("claude-opus-4-1")
    assert not limited.allows("opus", "claude-opus-4-1")
    assert not key(frozenset()).allows("claude-sonnet-4-5")


async def test_cache_ttl_rereads_the_database_without_bcrypt(
    database_url: str, redis: object, redis_prefix: str, db: asyncpg.Connection
) -> None:
    """The safety net: with no announcement at all, a revoked key stops working once
    its cache entry is older than the TTL, and a live key is re-read without bcrypt."""
    revoked_record, revoked_secret = await new_key(db)
    _, live_secret = await new_key(db)
    pool = await create_pool(database_url, 2)
    authenticator = Authenticator(pool, redis, redis_prefix, cache_ttl=0.3)  # type: ignore[arg-type]
    try:
        ip = unique_ip()
        await authenticator.authenticate(_request(revoked_secret), ip)  # type: ignore[arg-type]
        await authenticator.authenticate(_request(live_secret), ip)  # type: ignore[arg-type]
        await accounts.revoke_key(db, revoked_record.id)  # not announced
        await authenticator.authenticate(_request(revoked_secret), ip)  # type: ignore[arg-type]
        await asyncio.sleep(0.4)
        with pytest.raises(AuthenticationError):
            await authenticator.authenticate(_request(revoked_secret), ip)  # type: ignore[arg-type]
        await authenticator.authenticate(_request(live_secret), ip)  # type: ignore[arg-type]
        assert authenticator.bcrypt_runs == 2
    finally:
        await authenticator.close()
        await pool.close()


async def test_last_used_is_recorded_in_batches(
    database_url: str, redis: object, redis_prefix: str, db: asyncpg.Connection
) -> None:
    record, secret = await new_key(db)
    pool = await create_pool(database_url, 2)
    authenticator = Authenticator(pool, redis, redis_prefix)  # type: ignore[arg-type]
    try:
        await authenticator.authenticate(_request(secret), unique_ip())  # type: ignore[arg-type]
        assert (await accounts.get_key(db, record.id)).last_used_at is None  # type: ignore[union-attr]
        await authenticator.flush_last_used()
        assert (await accounts.get_key(db, record.id)).last_used_at is not None  # type: ignore[union-attr]
    finally:
        await authenticator.close()
        await pool.close()


async def test_concurrent_bad_attempts_pass_the_throttle_at_most_its_limit(
    gw: app.Gateway, db: asyncpg.Connection
) -> None:
    """The attempt is counted before the check, atomically: 100 concurrent wrong secrets
    for a real key from one address cost at most ``fail_limit`` bcrypt runs; the rest
    are refused at once with 429."""
    _, secret = await new_key(db)
    ip = unique_ip()
    limit = gw.state.auth.fail_limit
    runs = gw.state.auth.bcrypt_runs

    async def attempt(number: int) -> int:
        wrong = secret[:-6] + f"{number:06d}"
        headers = {"x-api-key": wrong, "X-Forwarded-For": ip}
        async with http.get(gw.url + "/v1/key-status", headers=headers) as resp:
            return resp.status

    async with aiohttp.ClientSession() as http:
        statuses = await asyncio.gather(*(attempt(n) for n in range(100)))
    assert set(statuses) == {401, 429}
    assert statuses.count(401) <= limit
    assert gw.state.auth.bcrypt_runs - runs <= limit


async def test_one_address_takes_its_share_of_bcrypt_threads(
    database_url: str, redis: object, redis_prefix: str, db: asyncpg.Connection, monkeypatch
) -> None:
    """One client IP runs at most ``bcrypt_per_ip`` checks at a time, however many
    threads there are: the other addresses always find one free."""
    _, secret = await new_key(db)
    running = 0
    most = 0
    lock = threading.Lock()
    check_secret = keys.check_secret

    def slow_check(presented: str, secret_hash: str) -> bool:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return check_secret(presented, secret_hash)

    monkeypatch.setattr(keys, "check_secret", slow_check)
    pool = await create_pool(database_url, 2)
    try:
        authenticator = Authenticator(
            pool,  # type: ignore[arg-type]
            redis,  # type: ignore[arg-type]
            redis_prefix,
            bcrypt_threads=4,
            bcrypt_per_ip=1,
        )
        try:
            ip = unique_ip()
            results = await asyncio.gather(
                *(
                    authenticator.authenticate(_request(secret[:-6] + f"{n:06d}"), ip)  # type: ignore[arg-type]
                    for n in range(8)
                ),
                return_exceptions=True,
            )
            assert all(isinstance(r, AuthenticationError) for r in results)
            assert authenticator.bcrypt_runs == 8 and most == 1
        finally:
            await authenticator.close()
    finally:
        await pool.close()


@pytest.mark.parametrize(
    "path", ["/v1/messages", "/v1/chat/completions", "/v1/messages/count_tokens"]
)
async def test_a_request_without_a_valid_key_is_refused_before_its_body_is_read(
    gw: app.Gateway, path: str
) -> None:
    """Authentication is declared on the route and runs before the handler reads the
    body: a 45 MB body announced without a key is answered 401 from its headers alone."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"X-Forwarded-For: {unique_ip()}\r\nContent-Length: {45 * 1024 * 1024}\r\n\r\n"
    ).encode()
    exchange = await rawhttp.exchange(gw.port, head + b'{"model": "x"', wait=5.0, responses=1)
    (response,) = exchange.responses
    assert response.status == 401 and response.headers["request-id"].startswith("req_")


async def test_a_stampede_of_one_keys_first_requests_is_one_attempt(
    gw: app.Gateway, db: asyncpg.Connection
) -> None:
    """Counting attempts first must not refuse a valid key: 100 concurrent first requests
    of one key from one address (a cold cache after a restart) share one check — one
    counted attempt, one bcrypt run — and all succeed."""
    _, secret = await new_key(db)
    ip = unique_ip()
    runs = gw.state.auth.bcrypt_runs

    async def attempt() -> int:
        headers = {"x-api-key": secret, "X-Forwarded-For": ip}
        async with http.get(gw.url + "/v1/key-status", headers=headers) as resp:
            return resp.status

    async with aiohttp.ClientSession() as http:
        statuses = await asyncio.gather(*(attempt() for _ in range(100)))
    assert statuses == [200] * 100
    assert gw.state.auth.bcrypt_runs - runs == 1


async def test_a_stale_entry_is_reread_even_when_the_address_is_throttled(
    database_url: str, redis: object, redis_prefix: str, db: asyncpg.Connection
) -> None:
    """A busy client's own key: once its entry is older than the TTL, re-reading it is
    no guess and is not counted, so an address past its failure limit (here: many
    connections opening at once on a cold key) keeps using the key it proved."""
    _, secret = await new_key(db)
    pool = await create_pool(database_url, 2)
    authenticator = Authenticator(pool, redis, redis_prefix, cache_ttl=0.2, fail_limit=3)  # type: ignore[arg-type]
    try:
        ip = unique_ip()
        await authenticator.authenticate(_request(secret), ip)  # type: ignore[arg-type]
        for _ in range(5):  # the address goes past its limit
            with pytest.raises((AuthenticationError, RateLimitError)):
                await authenticator.authenticate(_request("sk-ali-nope"), ip)  # type: ignore[arg-type]
        await asyncio.sleep(0.3)
        keys_seen = await asyncio.gather(
            *(authenticator.authenticate(_request(secret), ip) for _ in range(20))  # type: ignore[arg-type]
        )
        assert len({k.id for k in keys_seen}) == 1
        assert authenticator.bcrypt_runs == 1
    finally:
        await authenticator.close()
        await pool.close()
