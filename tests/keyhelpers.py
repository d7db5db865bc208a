"""Helpers of the auth / limits tests: accounts and keys in the test database, and a
TCP proxy in front of Redis that a test can cut to make Redis unreachable."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

from alicode_gw import accounts

LOW_COST = 4  # bcrypt cost for tests where speed matters (keys.py tests the real cost)


def unique_email() -> str:
    return f"user-{secrets.token_hex(6)}@example.com"


def unique_ip() -> str:
    """A documentation-range IPv6 address of this test's own (per-IP counters never
    collide between tests)."""
    return "2001:db8::" + ":".join(secrets.token_hex(2) for _ in range(3))


async def new_key(
    db: asyncpg.Connection, cost: int = LOW_COST, **limits: Any
) -> tuple[accounts.KeyRecord, str]:
    account = await accounts.create_account(db, unique_email())
    return await accounts.create_key(db, account.id, "test", cost=cost, **limits)


class RedisProxy:
    """Forwards loopback TCP connections to the test Redis until :meth:`cut`."""

    def __init__(self, redis_url: str) -> None:
        parts = urlsplit(redis_url)
        self._unix = parts.path if parts.scheme == "unix" else None
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        db = parse_qs(parts.query).get("db", ["0"])[0] if self._unix else parts.path.strip("/")
        self._db = db or "0"
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/{self._db}"

    async def __aenter__(self) -> RedisProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cut()

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._unix:
            return await asyncio.open_unix_connection(self._unix)
        return await asyncio.open_connection(self._host, self._port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await self._open()
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.close()

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones: Redis is now unreachable."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in self._writers:
            writer.close()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
