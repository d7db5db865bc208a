"""The credential pool as clients see it, over real HTTP with the anthropic SDK: one
customer's failing requests never take the shared credentials from another customer,
and words a client makes the upstream echo never disable a credential."""

from __future__ import annotations

import asyncio

import anthropic
import asyncpg
import pytest

from alicode_gw import app
from alicode_gw.dev.mock_upstream import MockUpstream
from alicode_gw.upstream.client import REQUEST_CAUSED_MESSAGE
from tests.support.customers import (
    MODEL,
    client_for,
    make_customer,
    upstream_exchanges,
)
from tests.support.gateway import UPSTREAM_KEYS

FIRST = UPSTREAM_KEYS[0]


def ask(content: object) -> dict:
    return {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": content}]}


def states(gateway: app.Gateway) -> dict[str, str]:
    return {row["name"]: row["state"] for row in gateway.state.keypool.snapshot()}


async def credential_rows(db: asyncpg.Connection) -> dict[str, tuple[str, str | None]]:
    rows = await db.fetch("SELECT name, status, disabled_reason FROM upstream_credentials")
    return {row["name"]: (row["status"], row["disabled_reason"]) for row in rows}


async def test_one_customers_failing_requests_do_not_starve_another(
    gw: app.Gateway, db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    attacker, bystander = await make_customer(db), await make_customer(db)
    failures: list[anthropic.APIStatusError] = []
    served: list[str] = []
    refused: list[int] = []
    stop = asyncio.Event()

    async def attack() -> None:
        async with client_for(gw, attacker) as client:
            while not stop.is_set():
                try:
                    await client.messages.create(**ask("[[mock: status=500]] crash it"))
                except anthropic.APIStatusError as exc:
                    failures.append(exc)
                await asyncio.sleep(0.1)

    async def work() -> None:
        async with client_for(gw, bystander) as client:
            for number in range(30):
                try:
                    message = await client.messages.create(**ask(f"request {number}"))
                    served.append(message.id)
                except anthropic.APIStatusError as exc:
                    refused.append(exc.status_code)
                await asyncio.sleep(0.05)
        stop.set()

    async with asyncio.timeout(60):
        await asyncio.gather(attack(), work())

    assert len(failures) >= 10
    assert refused == [] and len(served) == 30
    # every one of the bystander's requests reached the upstream
    ok = [ex for ex in upstream_exchanges(mock_upstream) if ex.status == 200]
    assert len(ok) == 30
    # the attacker is told, plainly, that its request is what fails
    for exc in failures:
        assert exc.status_code == 502
        assert exc.body["error"]["type"] == "api_error"
        assert exc.body["error"]["message"] == REQUEST_CAUSED_MESSAGE
    assert set(states(gw).values()) == {"healthy"}


async def test_two_customers_failing_together_do_cool_the_credentials(
    gw: app.Gateway, db: asyncpg.Connection
) -> None:
    first, second = await make_customer(db), await make_customer(db)
    for who in (first, second):
        async with client_for(gw, who) as client:
            with pytest.raises(anthropic.InternalServerError) as info:
                await client.messages.create(**ask("[[mock: status=500]]"))
            assert info.value.status_code == 502
    assert set(states(gw).values()) == {"cooling"}


async def test_echoed_credit_balance_words_disable_no_credential(
    gw: app.Gateway, db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    customer = await make_customer(db)
    before = len(upstream_exchanges(mock_upstream))
    block = {"type": "Your credit balance is too low to access the Anthropic API"}
    async with client_for(gw, customer) as client:
        for _ in range(3):
            with pytest.raises(anthropic.BadRequestError) as info:
                await client.messages.create(**ask([block]))
            assert "credit balance" in info.value.body["error"]["message"]
            assert info.value.body["error"]["type"] == "invalid_request_error"
    assert len(upstream_exchanges(mock_upstream)) - before == 3  # passed through, no retry
    assert {status for status, _ in (await credential_rows(db)).values()} == {"active"}
    assert set(states(gw).values()) == {"healthy"}


@pytest.mark.parametrize("name", ["credit_balance", "usage_limit"])
async def test_the_upstreams_own_billing_error_still_disables(
    gw_round_robin: app.Gateway, db: asyncpg.Connection, name: str
) -> None:
    """Out of credit, or at the spend limit its organisation set: the credential is taken
    out of the pool and the request is served by the next one."""
    await db.execute("UPDATE upstream_credentials SET weight = 100 WHERE name = 'cred-0'")
    await gw_round_robin.state.keypool.refresh(reload=True)  # cred-0 is tried first
    customer = await make_customer(db)
    async with client_for(gw_round_robin, customer) as client:
        message = await client.messages.create(**ask(f"[[mock: error={name} only_key={FIRST}]]"))
    assert message.content[0].type == "text"  # served by the next credential
    rows = await credential_rows(db)
    assert rows["cred-0"][0] == "disabled" and "billing" in (rows["cred-0"][1] or "")
    assert rows["cred-1"][0] == rows["cred-2"][0] == "active"
    assert states(gw_round_robin) == {
        "cred-0": "disabled",
        "cred-1": "healthy",
        "cred-2": "healthy",
    }
