"""Helpers of the auth / limits tests: accounts and keys in the test database, and a
TCP proxy in front of Redis that a test can cut to make Redis unreachable."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg

from alicode_gw.identity import accounts

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


class TcpProxy:
    """Forwards loopback TCP connections to a server (over TCP or a Unix socket) until
    :meth:`cut`, so a test can make that server unreachable without stopping it, or
    while not :meth:`stall`-ed, so a test can make it stop answering."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, unix: str | None = None):
        self._host, self._port, self._unix = host, port, unix
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> TcpProxy:
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
                await self._flowing.wait()
                dst.write(data)
                await dst.drain()
        dst.close()

    def stall(self) -> None:
        """Keep every connection open but forward nothing (held until :meth:`resume`):
        the server now looks alive and never answers."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones: the server is now unreachable."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in self._writers:
            writer.close()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)


class RedisProxy(TcpProxy):
    """A :class:`TcpProxy` in front of the test Redis; :attr:`url` points at the proxy."""

    def __init__(self, redis_url: str) -> None:
        parts = urlsplit(redis_url)
        unix = parts.path if parts.scheme == "unix" else None
        super().__init__(host=parts.hostname or "127.0.0.1", port=parts.port or 6379, unix=unix)
        db = parse_qs(parts.query).get("db", ["0"])[0] if unix else parts.path.strip("/")
        self._db = db or "0"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{self._db}"


class PostgresProxy(TcpProxy):
    """A :class:`TcpProxy` in front of the test PostgreSQL (host or socket DSN)."""

    def __init__(self, dsn: str) -> None:
        self._parts = urlsplit(dsn)
        host = parse_qs(self._parts.query).get("host", [self._parts.hostname or "127.0.0.1"])[0]
        port = self._parts.port or 5432
        unix = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else None
        super().__init__(host=host, port=port, unix=unix)

    @property
    def url(self) -> str:
        user = self._parts.username or "postgres"
        auth = f"{user}:{self._parts.password}" if self._parts.password else user
        return urlunsplit(("postgresql", f"{auth}@127.0.0.1:{self.port}", self._parts.path, "", ""))
