"""Fault test: an ``alicode-gw serve`` process killed with SIGKILL under load, then
restarted on the same data dir. The customer's money its holds and lease locked comes
back before the restarted node admits anything (it knows its predecessor is dead), no
request after the restart is refused for money that is free, and the books are exact:
``alicode-gw audit`` clean, and the balance change equals the ledger's charges and the
``x-alicode-cost-usd`` of the answers that completed."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from pathlib import Path

import anthropic
import asyncpg
import pytest

from alicode_gw.dev.mock_upstream import MockUpstream
from alicode_gw.money.usd import parse_usd
from tests.support import procs
from tests.support.customers import MODEL, Customer, make_customer, reset_pool
from tests.support.money import assert_audit_clean

pytestmark = pytest.mark.slow

BALANCE = 50_000_000  # $0.05: about 60 holds of the requests below
SLOW = "[[mock: first_byte_delay_ms=30000]]"  # in flight when the node is killed
WAVE = 150
WINDOW = 3.0  # seconds without a heartbeat after which a node is dead


def client(url: str, customer: Customer) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key=customer.key, base_url=url, max_retries=0, timeout=60)


async def ask(c: anthropic.AsyncAnthropic, text: str) -> tuple[int, int]:
    """(HTTP status, cost in nanos from ``x-alicode-cost-usd``)."""
    try:
        raw = await c.messages.with_raw_response.create(
            model=MODEL, max_tokens=50, messages=[{"role": "user", "content": text}]
        )
    except anthropic.APIStatusError as err:
        return err.status_code, 0
    return raw.status_code, parse_usd(raw.headers["x-alicode-cost-usd"])


async def account_row(db: asyncpg.Connection, account_id: int) -> asyncpg.Record:
    row = await db.fetchrow(
        "SELECT balance_nanos, held_nanos,"
        " (SELECT count(*) FROM ledger l WHERE l.account_id = a.id AND l.kind = 'charge')"
        "   AS charges,"
        " (SELECT coalesce(-sum(l.amount_nanos), 0) FROM ledger l"
        "   WHERE l.account_id = a.id AND l.kind = 'charge') AS charged"
        " FROM accounts a WHERE a.id = $1",
        account_id,
    )
    assert row is not None
    return row


async def eventually(condition, limit: float) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``condition()`` (async) held; fails after ``limit``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not await condition():
        assert loop.time() - started < limit, "condition not reached in time"
        await asyncio.sleep(0.05)
    return loop.time() - started


async def test_kill_9_under_load_then_restart(
    db: asyncpg.Connection,
    database_url: str,
    redis_url: str,
    mock_upstream: MockUpstream,
    tmp_path: Path,
) -> None:
    await reset_pool(db)
    customer = await make_customer(db, usd=0)
    await db.execute("SELECT billing.topup($1, $2, 'fault test')", customer.account_id, BALANCE)
    port = procs.free_port()
    url = f"http://127.0.0.1:{port}"
    env = procs.gateway_env(
        database_url,
        redis_url,
        f"faults-{secrets.token_hex(4)}:",
        ALICODE_LISTEN=f"127.0.0.1:{port}",
        ALICODE_UPSTREAM_URL=mock_upstream.url,
        ALICODE_DATA_DIR=str(tmp_path / "data"),
        ALICODE_LOG_LEVEL="WARNING",
        ALICODE_IP_RPM="0",
        ALICODE_IP_CONCURRENCY="0",
        ALICODE_NODE_HEARTBEAT_INTERVAL="0.5",
        ALICODE_NODE_DEAD_AFTER=str(WINDOW),
        ALICODE_HOLD_SWEEP_INTERVAL="1",
        ALICODE_SHUTDOWN_TIMEOUT="5",
    )
    costs: list[int] = []  # of the answers that completed
    procs_started: list[subprocess.Popen[bytes]] = []
    try:
        first = procs.start(env, "serve", log=tmp_path / "first.log")
        procs_started.append(first)
        await procs.wait_serving(url, first)
        dead_node = (tmp_path / "data" / "nodes" / "slot-0").read_text()

        async with client(url, customer) as c:
            # Answers that complete, settled before the kill. (The first alone: concurrent
            # first uses of a key on a node all count as authentication attempts.)
            done = [await ask(c, "warm")]
            done += await asyncio.gather(*(ask(c, f"before {n}") for n in range(40)))
            assert {status for status, _ in done} == {200}
            costs += [cost for _, cost in done]
            await eventually(lambda: _charges_are(db, customer.account_id, len(costs)), limit=10)

            # Requests in flight (held, or admitted against the node's lease) when the
            # node dies; those the balance cannot cover are refused (402) meanwhile.
            seen = len(mock_upstream.exchanges)
            load = [asyncio.create_task(ask(c, f"slow {n} {SLOW}")) for n in range(WAVE)]

            async def all_in_flight() -> bool:
                refused = sum(1 for t in load if t.done())
                return refused + len(mock_upstream.exchanges) - seen >= WAVE

            await eventually(all_in_flight, limit=30)
            locked = await account_row(db, customer.account_id)
            assert locked["held_nanos"] > BALANCE // 2  # most of the money is locked

            first.kill()  # SIGKILL: no drain, no lease closed, nothing settled
            await asyncio.to_thread(first.wait)
            outcomes = await asyncio.gather(*load, return_exceptions=True)
            assert all(
                isinstance(o, anthropic.APIConnectionError) or o == (402, 0) for o in outcomes
            ), outcomes

        second = procs.start(env, "serve", log=tmp_path / "second.log")
        procs_started.append(second)
        await procs.wait_serving(url, second)

        async def balance_free() -> bool:
            return (await account_row(db, customer.account_id))["held_nanos"] == 0

        # The customer's full balance is available again (at once: the restarted node
        # knew its predecessor was dead), and nothing of the dead node is left held.
        await eventually(balance_free, limit=60)
        left = await db.fetchval(
            "SELECT (SELECT count(*) FROM billing_holds WHERE node = $1 AND status = 'held')"
            " + (SELECT count(*) FROM billing_leases WHERE owner = $1 AND status = 'open')",
            dead_node,
        )
        assert left == 0
        async with client(url, customer) as c:
            after = [await ask(c, "warm")]
            after += await asyncio.gather(*(ask(c, f"after {n}") for n in range(30)))
        # No request refused (402) for money that is free.
        assert [status for status, _ in after] == [200] * 31
        costs += [cost for _, cost in after]
        assert (
            await db.fetchval(
                "SELECT count(*) FROM billing_holds WHERE node = $1 AND status = 'expired'",
                dead_node,
            )
            + await db.fetchval(
                "SELECT count(*) FROM billing_leases WHERE owner = $1 AND status = 'expired'",
                dead_node,
            )
            > 0
        )  # it did hold money when it died
    finally:
        for proc in procs_started:
            if proc.poll() is None:
                await asyncio.to_thread(procs.stop, proc)

    # The restarted node stopped gracefully: its settlements landed, its lease closed.
    final = await account_row(db, customer.account_id)
    assert final["held_nanos"] == 0  # the customer's full balance is available
    assert final["charges"] == len(costs)
    assert BALANCE - final["balance_nanos"] == final["charged"] == sum(costs)
    await assert_audit_clean(database_url, redis_url)


async def _charges_are(db: asyncpg.Connection, account_id: int, count: int) -> bool:
    return (await account_row(db, account_id))["charges"] == count
