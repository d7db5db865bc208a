"""What "the store is unavailable" means, in one place, and its translation into a 503.

Code that handles the store failing names one of these tuples (a catch-all such as a
health check's is the exception); :func:`unavailable` turns them into
:class:`~alicode_gw.errors.ServiceUnavailableError` (``raise ... from exc``) where a
request is waiting for the answer. ``TimeoutError`` (which ``asyncio.TimeoutError`` is)
is an ``OSError`` subclass; the tuples name it anyway, so nobody has to know that.

PostgreSQL (asyncpg):

- :data:`DATABASE_UNREACHABLE`: the server cannot be reached or is not taking work —
  the connection was refused, lost or timed out (``OSError``, ``TimeoutError`` from the
  pool's ``command_timeout`` or an ``asyncio.timeout``, asyncpg's connection and
  interface errors), the server is starting or shutting down, or it has no connection
  slot left. An operation that failed so may simply be tried again later (the
  settlement journal keeps it); any other ``PostgresError`` is the statement's own.
- :data:`DATABASE_FAILED`: unreachable, or the server refused the statement. For
  callers where every failure means the same: a 503, or a log line and the next round.

Redis (redis-py, and the limits connection of :mod:`~alicode_gw.limits.resp`):

- :data:`REDIS_FAILED`: redis-py raises ``ConnectionError`` / ``TimeoutError`` (both
  ``RedisError``) when Redis is gone or slow, a ``ResponseError`` when it refuses a
  command (out of memory, a read-only replica, still loading); a socket error may come
  through as ``OSError``, and a caller's own timeout as ``TimeoutError``. Every caller
  treats these alike, so there is one tuple.

The group-commit batcher's shutdown (:class:`~alicode_gw.store.batching.Closed`) is not
a store failure and is caught by name where it is expected.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import asyncpg
from redis.exceptions import RedisError

from alicode_gw.errors import ServiceUnavailableError

Errors = tuple[type[BaseException], ...]

DATABASE_UNREACHABLE: Errors = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)

DATABASE_FAILED: Errors = (*DATABASE_UNREACHABLE, asyncpg.PostgresError)

REDIS_FAILED: Errors = (RedisError, OSError, TimeoutError)


@contextlib.contextmanager
def unavailable(message: str, errors: Errors) -> Iterator[None]:
    """Raise :class:`ServiceUnavailableError` (503) with ``message`` when the block
    fails with one of ``errors``; the store's exception is its ``__cause__``."""
    try:
        yield
    except errors as exc:
        raise ServiceUnavailableError(message) from exc
