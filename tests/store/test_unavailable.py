"""The one definition of "the store failed": which exceptions count, and the 503."""

from __future__ import annotations

import asyncpg
import pytest
import redis.exceptions

from alicode_gw.errors import ServiceUnavailableError
from alicode_gw.store.batching import Closed
from alicode_gw.store.unavailable import (
    DATABASE_FAILED,
    DATABASE_UNREACHABLE,
    REDIS_FAILED,
    unavailable,
)


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "refused"),
        TimeoutError(),  # asyncpg's command_timeout, an asyncio.timeout
        asyncpg.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.InterfaceError("pool is closing"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.AdminShutdownError("terminating connection"),
        asyncpg.TooManyConnectionsError("too many clients"),
    ],
)
def test_what_means_the_database_cannot_be_reached(exc: BaseException) -> None:
    assert isinstance(exc, DATABASE_UNREACHABLE)
    assert isinstance(exc, DATABASE_FAILED)


@pytest.mark.parametrize(
    "exc",
    [asyncpg.UniqueViolationError("dup"), asyncpg.TransactionRollbackError("deadlock")],
)
def test_a_statement_of_its_own_failing_is_no_outage(exc: BaseException) -> None:
    """The settlement journal parks such an entry instead of waiting for the database."""
    assert not isinstance(exc, DATABASE_UNREACHABLE)
    assert isinstance(exc, DATABASE_FAILED)


@pytest.mark.parametrize(
    "exc",
    [
        redis.exceptions.ConnectionError("Connection refused"),
        redis.exceptions.TimeoutError("Timeout reading from socket"),
        redis.exceptions.BusyLoadingError("LOADING"),
        redis.exceptions.ResponseError("OOM command not allowed"),
        ConnectionResetError(104, "reset"),
        TimeoutError(),  # the limits pipeline's own timeout (asyncio.timeout)
    ],
)
def test_what_means_redis_failed(exc: BaseException) -> None:
    assert isinstance(exc, REDIS_FAILED)


@pytest.mark.parametrize("exc", [RuntimeError("a bug"), ValueError("bad"), Closed("shut down")])
def test_bugs_and_shutdown_are_no_store_failure(exc: BaseException) -> None:
    for errors in (DATABASE_UNREACHABLE, DATABASE_FAILED, REDIS_FAILED):
        assert not isinstance(exc, errors)


def test_unavailable_turns_a_store_failure_into_a_503_with_its_cause() -> None:
    cause = redis.exceptions.TimeoutError("Timeout reading from socket")
    with pytest.raises(ServiceUnavailableError) as info, unavailable("store down", REDIS_FAILED):
        raise cause
    assert info.value.status == 503
    assert info.value.message == "store down"
    assert info.value.__cause__ is cause
    assert "Timeout" not in info.value.message  # the client sees the message only


def test_unavailable_lets_anything_else_through() -> None:
    with pytest.raises(ValueError, match="a bug"), unavailable("store down", DATABASE_FAILED):
        raise ValueError("a bug")
    with unavailable("store down", DATABASE_FAILED):
        pass  # nothing raised, nothing done
