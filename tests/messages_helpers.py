"""Fixtures shared by the /v1/messages tests: a funded customer, the upstream pool set
to the mock's credentials, and a gateway with a Redis prefix of the test's own (so
cooldowns and limits never leak between tests)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from alicode_gw import accounts, app, ledger
from alicode_gw.mock_upstream import MockUpstream
from tests.conftest import UPSTREAM_KEYS, start_gateway, stop_gateway
from tests.keyhelpers import LOW_COST, unique_email

MODEL = "claude-sonnet-4-6"
NANOS = 1_000_000_000


@dataclass
class Customer:
    email: str
    account_id: int
    key_id: int
    public_id: str
    key: str


async def make_customer(db: asyncpg.Connection, usd: int = 100, **limits: object) -> Customer:
    email = unique_email()
    account = await accounts.create_account(db, email)
    if usd:
        await ledger.topup(db, email, usd * NANOS)
    record, key = await accounts.create_key(db, account.id, "test", cost=LOW_COST, **limits)
    return Customer(email, account.id, record.id, record.public_id, key)


async def balance(gw: app.Gateway, db: asyncpg.Connection, email: str) -> int:
    """The account's balance once its finished requests are settled: settlement runs as
    a tracked task just after each answer is relayed, so wait for the gateway's
    background work first."""
    assert not await gw.state.tasks.settle(5.0), "settlements still running after 5 s"
    return int((await ledger.account_summary(db, email))["balance_nanos"])


async def reset_pool(db: asyncpg.Connection, secrets_: tuple[str, ...] = UPSTREAM_KEYS) -> None:
    await db.execute("DELETE FROM upstream_credentials")
    for number, secret in enumerate(secrets_):
        await db.execute(
            "INSERT INTO upstream_credentials (name, secret) VALUES ($1, $2)",
            f"cred-{number}",
            secret,
        )


async def own_gateway(
    db: asyncpg.Connection, make_config, tag: str, **changes: object
) -> app.Gateway:
    """A gateway of the test's own (stop it with ``stop_gateway``): a fresh pool of
    upstream credentials, its own Redis prefix, and ``changes`` to the test config."""
    await reset_pool(db)
    return await start_gateway(
        make_config(redis_prefix=f"{tag}-{secrets.token_hex(4)}:", **changes)
    )


@pytest.fixture
async def customer(db: asyncpg.Connection) -> Customer:
    return await make_customer(db)


@pytest.fixture
async def gw(db: asyncpg.Connection, make_config) -> AsyncIterator[app.Gateway]:
    await reset_pool(db)
    gateway = await start_gateway(make_config(redis_prefix=f"msg-{secrets.token_hex(4)}:"))
    try:
        yield gateway
    finally:
        await stop_gateway(gateway)
    problems = await ledger.audit(db)
    assert not problems, [p.as_dict() for p in problems]


def upstream_exchanges(mock: MockUpstream, path: str = "/v1/messages") -> list:
    return [ex for ex in mock.exchanges if ex.path == path]
