"""The lean Redis connection of the limits path, against the real Redis: encoding,
pipelined replies in order, error replies in place, database selection, reconnects."""

from __future__ import annotations

import asyncio
import secrets
import ssl
from urllib.parse import urlsplit, urlunsplit

import pytest
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from alicode_gw.limits.resp import RespConnection, encode
from alicode_gw.store.backends import create_redis


def test_encode_is_resp2_bulk_strings() -> None:
    assert encode(["SET", b"k\r\n", 12]) == b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n12\r\n"


def on_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":  # urlunsplit would write "unix:/path", which redis-py refuses
        return f"unix://{parts.path}?db={db}"
    return urlunsplit(parts._replace(path=f"/{db}"))


async def test_pipelined_replies_in_order_with_errors_in_place(redis_url: str) -> None:
    client = create_redis(on_db(redis_url, 3))  # AUTH-free; SELECT 3 on connect
    connection = RespConnection.like(client)
    key = f"resp-test:{secrets.token_hex(4)}"
    try:
        replies = await connection.execute(
            [
                ("SET", key, "v"),
                ("LPUSH", key, "x"),  # wrong type: an error reply for this command only
                ("GET", key),
                ("EVALSHA", "0" * 40, 0),
                ("INCRBY", key + ":n", 5),
            ]
        )
        assert replies[0] == b"OK" and replies[2] == b"v" and replies[4] == 5
        assert isinstance(replies[1], ResponseError) and "WRONGTYPE" in str(replies[1])
        assert isinstance(replies[3], NoScriptError)
        assert await client.get(key) == b"v"  # the same database as the redis-py client
        assert await client.get(key + ":n") == b"5"
    finally:
        await client.delete(key, key + ":n")
        connection.close()
        await client.aclose()


async def test_reconnects_after_the_server_drops_it(redis_url: str) -> None:
    client = create_redis(redis_url)
    connection = RespConnection.like(client)
    try:
        (client_id,) = await connection.execute([("CLIENT", "ID")])
        assert await client.client_kill_filter(_id=client_id) == 1
        assert await connection.execute([("PING",)]) == [b"PONG"]
        connection.close()
        assert not connection.connected
        assert await connection.execute([("PING",)]) == [b"PONG"]
    finally:
        connection.close()
        await client.aclose()


async def test_unreachable_server_is_a_redis_connection_error() -> None:
    connection = RespConnection(host="127.0.0.1", port=1)
    with pytest.raises(RedisConnectionError):
        await connection.execute([("PING",)])


async def test_the_suite_runs_on_uvloop_as_the_gateway_does() -> None:
    """uvloop's transports are not asyncio's classes; code that assumed so passed on
    the default loop and failed in production."""
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


BUSY_LUA = """
local t0 = redis.call('TIME')
local start = tonumber(t0[1]) + tonumber(t0[2]) / 1e6
while true do
  local t = redis.call('TIME')
  if tonumber(t[1]) + tonumber(t[2]) / 1e6 - start > 0.5 then break end
end
return 1
"""


async def test_a_batch_behind_a_failed_one_is_not_sent_twice(redis_url: str) -> None:
    """Batch A times out and its connection is dropped; batch B, written behind it on
    the same connection, may already have run: it fails rather than run again."""
    client, other = create_redis(redis_url), create_redis(redis_url)
    connection = RespConnection.like(client)
    key = f"resp-test:{secrets.token_hex(4)}"
    try:
        await connection.execute([("PING",)])
        busy = asyncio.ensure_future(other.eval(BUSY_LUA, 0))  # Redis stalls 0.5 s
        await asyncio.sleep(0.05)

        async def first() -> None:
            async with asyncio.timeout(0.2):
                await connection.execute([("PING",)])

        a = asyncio.ensure_future(first())
        await asyncio.sleep(0)
        b = asyncio.ensure_future(connection.execute([("INCR", key)]))
        with pytest.raises(TimeoutError):
            await a
        with pytest.raises(RedisConnectionError):
            await b
        await busy
        assert await client.get(key) in (None, b"1")  # at most once
    finally:
        await client.delete(key)
        connection.close()
        await client.aclose()
        await other.aclose()


def test_tls_settings_come_from_the_redis_py_client() -> None:
    """A rediss:// URL gets redis-py's own TLS context (its certificate options);
    plain and Unix-socket URLs get none."""
    strict = RespConnection.like(create_redis("rediss://redis.example:6380/0"))
    assert strict._tls is not None and strict._tls.verify_mode == ssl.CERT_REQUIRED
    assert strict._tls.check_hostname
    lax = RespConnection.like(create_redis("rediss://redis.example:6380/0?ssl_cert_reqs=none"))
    assert lax._tls is not None and lax._tls.verify_mode == ssl.CERT_NONE
    assert RespConnection.like(create_redis("redis://127.0.0.1:6379/0"))._tls is None
