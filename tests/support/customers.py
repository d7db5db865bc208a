"""Fixtures shared by the /v1/messages tests: a funded customer, the upstream pool set
to the mock's credentials, and a gateway with a Redis prefix of the test's own (so
cooldowns and limits never leak between tests)."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

import anthropic
import asyncpg

from alicode_gw import app
from alicode_gw.dev.mock_upstream import MockUpstream
from alicode_gw.identity import accounts
from alicode_gw.money import ledger
from tests.support.gateway import UPSTREAM_KEYS, start_gateway
from tests.support.keys import LOW_COST, unique_email

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


def client_for(gateway: app.Gateway, customer: Customer, **kw) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key=customer.key, base_url=gateway.url, max_retries=0, **kw)


async def ledger_rows(
    db: asyncpg.Connection, request_id: str, wait: float = 3.0
) -> list[asyncpg.Record]:
    """The request's ledger rows; a stream is settled just after its last byte, so wait
    up to ``wait`` seconds for one to appear."""
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        rows = await db.fetch("SELECT * FROM ledger WHERE request_id = $1", request_id)
        if rows or asyncio.get_running_loop().time() > deadline:
            return rows
        await asyncio.sleep(0.02)


def upstream_exchanges(mock: MockUpstream, path: str = "/v1/messages") -> list:
    return [ex for ex in mock.exchanges if ex.path == path]
