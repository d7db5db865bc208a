"""A lean Redis connection for the request path: RESP2 pipelined over one asyncio
protocol, replies parsed by hiredis (a dependency of ours already, redis-py's parser).

Why not redis-py for these calls: every request makes one limits round trip, and on
this machine a redis-py asyncio round trip costs about 280 µs of client CPU where the
same exchange over a bare protocol costs about 75 µs (see docs/benchmarks.md). The
connection settings come from the redis-py client the rest of the gateway uses
(pub/sub, streams, the key pool), so there is one configuration.

Replies come back in order; an error reply is returned as a
:class:`redis.exceptions.ResponseError` (:class:`~redis.exceptions.NoScriptError` for
``NOSCRIPT``) in its place, not raised. A lost connection fails every waiting batch
with :class:`redis.exceptions.ConnectionError`; the next batch reconnects.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from alicode_gw.store.unavailable import REDIS_FAILED

Arg = bytes | str | int
PIPELINE_TIMEOUT = 5.0  # seconds for one pipeline's write and replies


def encode(command: Sequence[Arg]) -> bytes:
    """One command as a RESP2 array of bulk strings."""
    out = [b"*%d\r\n" % len(command)]
    for arg in command:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(out)


def _error(message: str) -> ResponseError:
    return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.lost: BaseException | None = None
        self.aborted = False  # we dropped it (a batch failed): its other batches may have run

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if isinstance(reply, ResponseError):
                reply = _error(str(reply))
            future = self.waiting.popleft()
            if not future.done():
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        self.transport = None
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(self.lost)


class RespConnection:
    """One connection, opened on first use and again after a loss."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        connect_timeout: float = 2.0,
    ) -> None:
        self._host, self._port, self._path = host, port, path
        self._db, self._username, self._password = db, username, password
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._protocol: _Protocol | None = None
        self._connecting = asyncio.Lock()  # concurrent batches open one connection

    @classmethod
    def like(cls, redis: Redis) -> RespConnection:
        """A connection to the server (and database, credentials, TLS) ``redis`` uses."""
        pool = redis.connection_pool
        kw = pool.connection_kwargs
        tls = None
        if issubclass(pool.connection_class, SSLConnection):
            # redis-py's own context from the same settings (building the connection
            # object opens nothing).
            tls = pool.connection_class(**kw).ssl_context.get()
        return cls(
            host=kw.get("host", "127.0.0.1"),
            port=int(kw.get("port", 6379)),
            path=kw.get("path"),
            db=int(kw.get("db") or 0),
            username=kw.get("username"),
            password=kw.get("password"),
            tls=tls,
            connect_timeout=float(kw.get("socket_connect_timeout") or 2.0),
        )

    @property
    def connected(self) -> bool:
        return self._protocol is not None and self._protocol.transport is not None

    async def execute(self, commands: Iterable[Sequence[Arg]]) -> list[Any]:
        """Send ``commands`` in one write; their replies, in order. A kept connection
        the server dropped meanwhile (restart, idle timeout) fails before the first
        reply: then, and only then, the batch is sent once more on a new connection."""
        batch = list(commands)
        attempts = 2 if self.connected else 1
        for attempt in range(1, attempts + 1):
            try:
                return await self._send(await self._connect(), batch)
            except _NothingRead as failed:
                if attempt == attempts:
                    raise failed.error from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None

    async def _connect(self) -> _Protocol:
        if not self.connected:
            async with self._connecting:
                if not self.connected:
                    self._protocol = await self._open()
        assert self._protocol is not None
        return self._protocol

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._path is not None:
                    _, protocol = await loop.create_unix_connection(_Protocol, self._path)
                else:
                    _, protocol = await loop.create_connection(
                        _Protocol, self._host, self._port, ssl=self._tls
                    )
                setup: list[Sequence[Arg]] = []
                if self._password is not None:
                    auth = [self._username, self._password] if self._username else [self._password]
                    setup.append(["AUTH", *auth])
                if self._db:
                    setup.append(["SELECT", self._db])
                for reply in await self._send(protocol, setup) if setup else []:
                    if isinstance(reply, ResponseError):
                        protocol.transport.close()  # type: ignore[union-attr]
                        raise reply
        except _NothingRead as exc:
            raise exc.error from None
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        return protocol

    @staticmethod
    async def _send(protocol: _Protocol, commands: list[Sequence[Arg]]) -> list[Any]:
        if protocol.transport is None:
            raise _NothingRead(protocol.lost or RedisConnectionError("not connected to Redis"))
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        protocol.waiting.extend(futures)
        protocol.transport.write(b"".join(encode(command) for command in commands))
        replies: list[Any] = []
        try:
            for future in futures:
                replies.append(await future)
        except BaseException as exc:
            # Replies still due would be matched to the wrong requests: start over.
            if protocol.transport is not None:
                protocol.aborted = True
                protocol.transport.abort()
            for future in futures:  # consume the failures nobody awaits any more
                if future.done() and not future.cancelled():
                    future.exception()
                else:
                    future.cancel()
            # Sending again is safe only when the server closed the connection before
            # answering anything of this batch: a connection we aborted ourselves (a
            # batch before this one timed out) may have run these commands already.
            if not replies and not protocol.aborted and isinstance(exc, RedisConnectionError):
                raise _NothingRead(exc) from exc
            raise
        return replies


class _NothingRead(Exception):
    """The connection failed (``error``) before any reply of the batch arrived."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One EVALSHA waiting in the pipeline."""

    script: AsyncScript
    keys: Sequence[str]
    args: Sequence[str | int]


class ScriptPipe:
    """Runs batches of script calls as one pipelined write on a lean connection of its
    own (:class:`~alicode_gw.limits.resp.RespConnection`). The limiter's
    :class:`~alicode_gw.store.batching.Coalescer` may have two batches in flight on it
    at once (``max_in_flight=2``): each goes out in one write, and since Redis answers in
    order, each batch gets its own replies."""

    def __init__(self, redis: Redis, timeout: float = PIPELINE_TIMEOUT) -> None:
        self._redis = redis
        self._timeout = timeout
        self.connection = RespConnection.like(redis)

    async def run(self, calls: list[ScriptCall]) -> list[Any]:
        """One outcome per call: its reply, or the error of that call. Calls whose
        script the server does not know (after a restart or ``SCRIPT FLUSH``) are run
        again once it is loaded."""
        outcomes = await self._send(calls)
        missing = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, NoScriptError)]
        if missing:
            try:
                for script in {calls[i].script for i in missing}:
                    await self._redis.script_load(script.script)
                retried = await self._send([calls[i] for i in missing])
            except REDIS_FAILED as exc:  # only the calls still to do fail
                retried = [exc] * len(missing)
            for i, outcome in zip(missing, retried, strict=True):
                outcomes[i] = outcome
        return outcomes

    async def _send(self, calls: list[ScriptCall]) -> list[Any]:
        async with asyncio.timeout(self._timeout):
            return await self.connection.execute(
                ("EVALSHA", c.script.sha, len(c.keys), *c.keys, *c.args) for c in calls
            )
