"""Two gateway nodes: two ``alicode-gw serve`` PROCESSES on different ports sharing
one PostgreSQL and one Redis (and nothing else: each has its own data dir). Per-key
limits, revocation and upstream cooldowns taken on one node hold on the other."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anthropic
import asyncpg
import pytest

from alicode_gw.dev.mock_upstream import MockUpstream
from alicode_gw.identity import accounts
from alicode_gw.identity.auth import announce_revoked
from alicode_gw.money import ledger
from alicode_gw.store.backends import create_redis
from tests.support import procs
from tests.support.customers import MODEL, Customer, make_customer, reset_pool
from tests.support.gateway import UPSTREAM_KEYS

pytestmark = pytest.mark.slow

K0, K1, K2 = UPSTREAM_KEYS


class Nodes:
    def __init__(self, urls: list[str], prefix: str) -> None:
        self.a, self.b = urls
        self.prefix = prefix


@pytest.fixture
async def nodes(
    db: asyncpg.Connection,
    database_url: str,
    redis_url: str,
    mock_upstream: MockUpstream,
    tmp_path: Path,
) -> AsyncIterator[Nodes]:
    await reset_pool(db)
    # cred-0 is picked first by every node (smooth weighted round-robin), unless cooling.
    await db.execute("UPDATE upstream_credentials SET weight = 100 WHERE name = 'cred-0'")
    async with serving(db, database_url, redis_url, mock_upstream, tmp_path, "round_robin") as two:
        yield two


@contextlib.asynccontextmanager
async def serving(
    db: asyncpg.Connection,
    database_url: str,
    redis_url: str,
    mock_upstream: MockUpstream,
    tmp_path: Path,
    routing: str,
) -> AsyncIterator[Nodes]:
    prefix = f"two-{secrets.token_hex(4)}:"
    async with procs.serve_nodes(
        ("a", "b"),
        database_url,
        redis_url,
        prefix,
        tmp_path,
        ALICODE_UPSTREAM_URL=mock_upstream.url,
        ALICODE_ROUTING=routing,
    ) as started:
        await asyncio.sleep(0.3)  # both subscribed to the revocation and upstream channels
        yield Nodes([node.url for node in started], prefix)
    problems = await ledger.audit(db)
    assert not problems, [p.as_dict() for p in problems]


def client(url: str, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key=key, base_url=url, max_retries=0)


def ask(text: str = "hi") -> dict:
    return {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": text}]}


async def status_of(url: str, key: str, text: str = "hi") -> int:
    async with client(url, key) as c:
        try:
            await c.messages.create(**ask(text))
        except anthropic.APIStatusError as err:
            return err.status_code
    return 200


async def test_per_key_rpm_is_shared(nodes: Nodes, db: asyncpg.Connection) -> None:
    customer: Customer = await make_customer(db, rpm=5)
    statuses = [
        await status_of(url, customer.key) for url in [nodes.a, nodes.b] * 4
    ]  # A, B, A, B, ...
    # Five requests a minute across both nodes, not five per node.
    assert statuses == [200] * 5 + [429] * 3


async def test_limit_shares_never_admit_beyond_the_limit(
    nodes: Nodes, db: asyncpg.Connection
) -> None:
    """Runs of requests on each node in turn: each node admits from its own share of
    the key's minute window, and the two together admit exactly the limit. Shares a
    node no longer uses go back within seconds, so the other node gets the rest."""
    customer: Customer = await make_customer(db, rpm=30)
    served = 0
    refused_in_a_row = 0
    async with client(nodes.a, customer.key) as a, client(nodes.b, customer.key) as b:
        while refused_in_a_row < 2:
            for node in (a, b):
                ran = 0
                for _ in range(12):
                    try:
                        await node.messages.create(**ask())
                    except anthropic.RateLimitError:
                        break
                    ran += 1
                served += ran
                refused_in_a_row = refused_in_a_row + 1 if ran == 0 else 0
                assert served <= 30
                await asyncio.sleep(4)  # what the other node reserved goes back
    assert served == 30


async def test_revocation_on_one_node_is_seen_on_the_other(
    nodes: Nodes, db: asyncpg.Connection, redis_url: str
) -> None:
    customer = await make_customer(db)
    for url in (nodes.a, nodes.b):
        assert await status_of(url, customer.key) == 200  # cached on both nodes
    # What `alicode-gw key revoke` does: the row, then the announcement on Redis.
    redis = create_redis(redis_url)
    try:
        await accounts.revoke_key(db, customer.public_id)
        await announce_revoked(redis, nodes.prefix, [customer.public_id])
    finally:
        await redis.aclose()
    loop = asyncio.get_running_loop()
    started = loop.time()
    pending = {nodes.a, nodes.b}
    while pending and loop.time() - started < 5:
        for url in list(pending):
            if await status_of(url, customer.key) == 401:
                pending.discard(url)
        await asyncio.sleep(0.02)
    assert not pending
    assert loop.time() - started <= 2.0


async def cooling_on(url: str) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/v1/health") as resp:
            return int((await resp.json())["upstream"]["cooling"])


async def test_upstream_cooldown_taken_on_a_is_respected_on_b(
    nodes: Nodes, db: asyncpg.Connection, mock_upstream: MockUpstream, redis_url: str
) -> None:
    customer = await make_customer(db)
    rate_limit_k0 = f"[[mock: status=429 retry_after=30 only_key={K0}]]"
    before = len(mock_upstream.exchanges)
    assert await status_of(nodes.a, customer.key, rate_limit_k0) == 200
    on_a = [ex.api_key for ex in list(mock_upstream.exchanges)[before:]]
    assert on_a == [K0, K1]  # A tried cred-0, got 429, cooled it, retried on cred-1

    for _ in range(100):  # announced on Redis at once; B's view follows
        if await cooling_on(nodes.b) == 1:
            break
        await asyncio.sleep(0.02)
    assert await cooling_on(nodes.b) == 1
    row_id = await db.fetchval("SELECT id FROM upstream_credentials WHERE name = 'cred-0'")
    redis = create_redis(redis_url)
    try:
        ttl = await redis.ttl(f"{nodes.prefix}upstream:cool:{row_id}")
    finally:
        await redis.aclose()
    assert 20 < ttl <= 30

    before = len(mock_upstream.exchanges)
    for _ in range(5):  # cred-0 would be B's first pick (weight 100) if B ignored A
        assert await status_of(nodes.b, customer.key, rate_limit_k0) == 200
    on_b = [ex.api_key for ex in list(mock_upstream.exchanges)[before:]]
    assert len(on_b) == 5 and K0 not in on_b


async def test_both_nodes_bill_one_account_exactly_with_their_own_leases(
    nodes: Nodes, db: asyncpg.Connection
) -> None:
    customer: Customer = await make_customer(db, usd=50)
    before = await db.fetchval(
        "SELECT balance_nanos FROM accounts WHERE id = $1", customer.account_id
    )
    async with client(nodes.a, customer.key) as a, client(nodes.b, customer.key) as b:
        for wave in range(4):  # later waves are admitted against each node's lease
            await asyncio.gather(
                *(c.messages.create(**ask(f"wave {wave} {n}")) for n in range(10) for c in (a, b))
            )
    owners = await db.fetch(
        "SELECT DISTINCT owner FROM billing_leases WHERE account_id = $1 AND status = 'open'",
        customer.account_id,
    )
    assert len(owners) == 2  # one lease per node
    for _ in range(100):  # settlements land within 50 ms of each answer
        billed = await db.fetchval(
            "SELECT count(*) FROM ledger WHERE account_id = $1 AND kind = 'charge'",
            customer.account_id,
        )
        if billed == 80:
            break
        await asyncio.sleep(0.05)
    assert billed == 80
    after, charged = await db.fetchrow(
        "SELECT a.balance_nanos, (SELECT -sum(amount_nanos) FROM ledger l"
        " WHERE l.account_id = a.id AND l.kind = 'charge') FROM accounts a WHERE a.id = $1",
        customer.account_id,
    )
    assert before - after == charged > 0


async def test_both_nodes_route_a_conversation_to_the_same_credential(
    db: asyncpg.Connection,
    database_url: str,
    redis_url: str,
    mock_upstream: MockUpstream,
    tmp_path: Path,
) -> None:
    """No shared state: rendezvous hashing gives each conversation the same credential
    on every node (the one holding its prompt cache), and spreads conversations."""
    await reset_pool(db)  # three credentials of equal weight
    customer = await make_customer(db)
    homes: dict[int, set[str | None]] = {}
    async with (
        serving(db, database_url, redis_url, mock_upstream, tmp_path, "affinity") as two,
        client(two.a, customer.key) as a,
        client(two.b, customer.key) as b,
    ):
        for turn in range(3):
            for conversation in range(12):
                node = (a, b)[(turn + conversation) % 2]
                system = f"Conversation {conversation} of the two-node test. " * 3
                before = len(mock_upstream.exchanges)
                await node.messages.create(
                    model=MODEL,
                    max_tokens=20,
                    system=system,
                    messages=[
                        {"role": "user", "content": "start"},
                        {"role": "assistant", "content": "ok"},
                        {"role": "user", "content": f"turn {turn}"},
                    ][: 1 + 2 * min(turn, 1)],
                )
                served = [ex.api_key for ex in list(mock_upstream.exchanges)[before:]]
                homes.setdefault(conversation, set()).update(served)
    assert all(len(keys) == 1 for keys in homes.values()), homes
    assert len(set().union(*homes.values())) >= 2  # conversations spread over credentials
