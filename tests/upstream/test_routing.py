"""Cache-affine routing end to end: the official SDK over real HTTP through the gateway,
to a mock upstream whose prompt cache is per cache group (one organization per key)."""

from __future__ import annotations

import asyncio
import collections
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import anthropic
import asyncpg
import pytest

from alicode_gw import app
from alicode_gw.dev.mock_upstream import MockUpstream
from alicode_gw.money import ledger
from alicode_gw.upstream.credentials import Credential
from alicode_gw.upstream.health import health_keys
from alicode_gw.upstream.outcome import Outcome
from tests.support.customers import (
    MODEL,
    NANOS,
    balance,
    client_for,
    make_customer,
    reset_pool,
)
from tests.support.gateway import UPSTREAM_KEYS, start_gateway, stop_gateway
from tests.support.logs import AccessLines

GROUPS = {key: f"org-{n}" for n, key in enumerate(UPSTREAM_KEYS)}
TURNS = 30
CC: Any = {"type": "ephemeral"}
TOOLS: Any = [
    {
        "name": name,
        "description": f"The {name} tool of a coding agent. " * 20,
        "input_schema": {"type": "object", "properties": {"arg": {"type": "string"}}},
    }
    for name in ("Read", "Edit", "Bash", "Grep")
]


@pytest.fixture
async def grouped_mock() -> AsyncIterator[MockUpstream]:
    async with MockUpstream(UPSTREAM_KEYS, groups=GROUPS) as mock:
        yield mock


async def grouped_gateway(
    db: asyncpg.Connection, make_config, mock: MockUpstream, keys: int = 3, **changes: Any
) -> app.Gateway:
    """A gateway of the test's own over the first ``keys`` credentials, one cache group
    each (as labelled with ``upstream add --cache-group``)."""
    await reset_pool(db, UPSTREAM_KEYS[:keys])
    for key in UPSTREAM_KEYS[:keys]:
        await db.execute(
            "UPDATE upstream_credentials SET cache_group = $2 WHERE secret = $1", key, GROUPS[key]
        )
    config = make_config(
        redis_prefix=f"route-{secrets.token_hex(4)}:", upstream_url=mock.url, **changes
    )
    # A data dir of its own: /metrics sums the processes that share one.
    return await start_gateway(replace(config, data_dir=config.data_dir / secrets.token_hex(4)))


class Session:
    """A coding session as Claude Code sends it: tools, a long system prompt marked for
    caching, and a growing history whose last user message carries a breakpoint."""

    def __init__(self, seed: str) -> None:
        self.system: Any = [
            {"type": "text", "text": f"You are a coding agent ({seed}). "},
            {"type": "text", "text": "Project conventions follow. " * 1200, "cache_control": CC},
        ]
        self.history: list[dict[str, Any]] = []

    def next_request(self, turn: int, note: str = "") -> dict[str, Any]:
        for message in self.history:  # only the newest user message keeps its mark
            if message["role"] == "user":
                for block in message["content"]:
                    block.pop("cache_control", None)
        # What a tool returned (a file read, a test run: ~1,000 tokens), then the prompt.
        output = f"tool output of turn {turn}: " + "def parse(line): return line.split()\n" * 100
        text = f"Turn {turn}: change the parser, then run the tests. {note}"
        self.history.append(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": output},
                    {"type": "text", "text": text, "cache_control": CC},
                ],
            }
        )
        return {
            "model": MODEL,
            "max_tokens": 200,
            "tools": TOOLS,
            "system": self.system,
            "messages": self.history,
        }

    def answered(self, message: anthropic.types.Message) -> None:
        content = [block.model_dump(exclude_none=True) for block in message.content]
        self.history.append({"role": "assistant", "content": content})


async def run_session(sdk: anthropic.AsyncAnthropic, seed: str, turns: int = TURNS) -> Any:
    session = Session(seed)
    totals: collections.Counter[str] = collections.Counter()
    for turn in range(turns):
        message = await sdk.messages.create(**session.next_request(turn))
        usage = message.usage
        totals["read"] += usage.cache_read_input_tokens or 0
        totals["write"] += usage.cache_creation_input_tokens or 0
        totals["input"] += usage.input_tokens
        session.answered(message)
    return totals


ALL_RATIO = 'alicode_upstream_cache_hit_ratio{credential="all"}'


def read_share(totals: collections.Counter[str]) -> float:
    return totals["read"] / (totals["read"] + totals["write"] + totals["input"])


async def session_through(
    db: asyncpg.Connection, make_config, mock: MockUpstream, keys: int, **changes: Any
) -> tuple[float, int]:
    """(cache-read share of input tokens, billed nano-USD from the ledger) of one
    session through a gateway of its own."""
    gateway = await grouped_gateway(db, make_config, mock, keys, **changes)
    customer = await make_customer(db)
    try:
        async with client_for(gateway, customer) as sdk:
            totals = await run_session(sdk, secrets.token_hex(6))
        billed = 100 * NANOS - await balance(gateway, db, customer.email)
        metrics = (await asyncio.to_thread(gateway.state.metrics.exposition)).decode()
    finally:
        await stop_gateway(gateway)
    # /metrics reports the same cache-hit ratio the session saw.
    line = next(x for x in metrics.splitlines() if x.startswith(ALL_RATIO))
    assert float(line.split()[-1]) == pytest.approx(read_share(totals))
    assert not await ledger.audit(db)
    return read_share(totals), billed


@pytest.mark.slow
async def test_coding_session_reads_its_cache_with_affinity(
    db: asyncpg.Connection, make_config, grouped_mock: MockUpstream
) -> None:
    affine, affine_cost = await session_through(db, make_config, grouped_mock, 3)
    spread, spread_cost = await session_through(
        db, make_config, grouped_mock, 3, routing="round_robin"
    )
    single, single_cost = await session_through(db, make_config, grouped_mock, 1)
    print(
        f"\ncache-read share of input tokens, {TURNS} turns, 3 credentials in 3 cache groups:"
        f" affinity {affine:.1%} (billed ${affine_cost / NANOS:.4f}),"
        f" round-robin {spread:.1%} (billed ${spread_cost / NANOS:.4f});"
        f" one credential {single:.1%} (billed ${single_cost / NANOS:.4f})"
    )
    assert affine >= 0.90
    assert spread < affine
    assert abs(affine_cost - single_cost) <= 0.05 * single_cost
    assert spread_cost > affine_cost


def served_by(mock: MockUpstream, before: int) -> list[str | None]:
    return [ex.api_key for ex in list(mock.exchanges)[before:] if ex.path == "/v1/messages"]


async def turn(sdk: anthropic.AsyncAnthropic, mock: MockUpstream, session: Session, n: int) -> str:
    before = len(mock.exchanges)
    session.answered(await sdk.messages.create(**session.next_request(n)))
    keys = served_by(mock, before)
    assert len(keys) == 1 and keys[0] is not None
    return keys[0]


async def test_a_cooled_credentials_conversations_move_and_return(
    db: asyncpg.Connection, make_config, grouped_mock: MockUpstream, access_lines: AccessLines
) -> None:
    gateway = await grouped_gateway(db, make_config, grouped_mock)
    customer = await make_customer(db)
    try:
        async with client_for(gateway, customer) as sdk:
            sessions = [Session(f"conversation {i}") for i in range(12)]
            home = [await turn(sdk, grouped_mock, s, 0) for s in sessions]
            assert len(set(home)) == 3  # spread over the three credentials
            assert [await turn(sdk, grouped_mock, s, 1) for s in sessions] == home

            pool = gateway.state.keypool
            row = await db.fetchrow(
                "SELECT id, name, weight, secret FROM upstream_credentials WHERE secret = $1",
                home[0],
            )
            cooled = Credential(row["id"], row["name"], row["weight"], row["secret"])
            await pool.report(cooled, Outcome.RATE_LIMITED, 60.0)  # outlasts the phase
            during = [await turn(sdk, grouped_mock, s, 2) for s in sessions]
            for was, now in zip(home, during, strict=True):
                assert now == was if was != cooled.secret else now != cooled.secret
            # Moved conversations stay put on their next choice while it cools.
            assert [await turn(sdk, grouped_mock, s, 3) for s in sessions] == during

            # The cooldown ends (its Redis key expires: here, at once): a probe (the
            # first request of one of its own conversations), then they return.
            cool_key = health_keys(gateway.state.config.redis_prefix, cooled.id)[0]
            assert await gateway.state.redis.delete(cool_key) == 1  # it was still cooling
            await pool.refresh()
            row = next(r for r in pool.snapshot() if r["id"] == cooled.id)
            assert row["cooldown_remaining"] == 0 and row["half_open"]
            after = [await turn(sdk, grouped_mock, s, 4) for s in sessions]
            assert after == home
            assert [await turn(sdk, grouped_mock, s, 5) for s in sessions] == home
    finally:
        await stop_gateway(gateway)
    lines = [line for line in access_lines.lines if line["route"] == "messages"]
    assert len(lines) == 12 * 6 and all(line["status"] == 200 for line in lines)
    assert all(line["affinity"] is True for line in lines)
    assert sum(line["cache_read_tokens"] for line in lines) > 0
    assert not await ledger.audit(db)


class GatedMock(MockUpstream):
    """Can hold /v1/messages requests at the upstream (:meth:`hold`) until ``gate`` is
    set: a burst is routed in full before any of it is answered, however slow the
    machine."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()
        self.gate.set()
        self.all_held = asyncio.Event()
        self._expected = self._held = 0

    def hold(self, expected: int) -> None:
        """Hold the next requests; ``all_held`` is set once ``expected`` wait."""
        self.gate.clear()
        self.all_held.clear()
        self._expected, self._held = expected, 0

    async def _messages(self, *args: Any, **kwargs: Any) -> Any:
        if not self.gate.is_set():
            self._held += 1
            if self._held == self._expected:
                self.all_held.set()
        await self.gate.wait()
        return await super()._messages(*args, **kwargs)


async def test_skew_spreads_past_the_inflight_cap(db: asyncpg.Connection, make_config) -> None:
    async with GatedMock(UPSTREAM_KEYS, groups=GROUPS) as mock:
        gateway = await grouped_gateway(db, make_config, mock, upstream_inflight_cap=20)
        customer = await make_customer(db)
        try:
            async with client_for(gateway, customer, timeout=30) as sdk:
                session = Session("one huge conversation")
                first = await turn(sdk, mock, session, 0)
                before = len(mock.exchanges)
                request = session.next_request(1)
                mock.hold(50)  # none of the 50 is answered before all are routed
                burst = asyncio.gather(*(sdk.messages.create(**request) for _ in range(50)))
                try:
                    async with asyncio.timeout(20):
                        await mock.all_held.wait()
                    spread = collections.Counter(served_by(mock, before))
                    in_flight = sorted(v["in_flight"] for v in gateway.state.keypool.snapshot())
                finally:
                    mock.gate.set()
                    answers = await burst
            assert len(answers) == 50
            assert spread[first] == 20  # its own credential up to the cap ...
            assert sorted(spread.values()) == [10, 20, 20]  # ... the rest to the next ones
            assert in_flight == [10, 20, 20]
            assert all(v["in_flight"] == 0 for v in gateway.state.keypool.snapshot())
            metrics = (await asyncio.to_thread(gateway.state.metrics.exposition)).decode()
        finally:
            await stop_gateway(gateway)
    assert 'alicode_upstream_cache_hit_ratio{credential="all"}' in metrics
    assert 'alicode_affinity_requests_total{keyed="yes"} 51.0' in metrics
    assert not await ledger.audit(db)


async def test_inflight_counts_return_to_zero_on_every_path(
    db: asyncpg.Connection, make_config, grouped_mock: MockUpstream
) -> None:
    """Failures, refusals and a client that leaves mid-stream all end their upstream
    call's in-flight count (else a capped credential would look busy for ever)."""
    gateway = await grouped_gateway(db, make_config, grouped_mock, upstream_inflight_cap=5)
    customer = await make_customer(db)
    pool = gateway.state.keypool

    def in_flight() -> list[int]:
        return [row["in_flight"] for row in pool.snapshot()]

    try:
        async with client_for(gateway, customer) as sdk:
            session = Session("paths")
            with pytest.raises(anthropic.APIStatusError):  # every attempt fails (529)
                await sdk.messages.create(**session.next_request(0, "[[mock: status=529]]"))
            with pytest.raises(anthropic.BadRequestError):  # the upstream's refusal
                await sdk.messages.create(**session.next_request(1, "[[mock: status=400]]"))
            request = session.next_request(2, "[[mock: words=200 chunk_delay_ms=20]]")
            async with sdk.messages.stream(**request) as stream:
                async for _event in stream:
                    break  # the client leaves mid-stream
            for _ in range(100):  # the gateway still reads the answer to its usage
                if in_flight() == [0, 0, 0]:
                    break
                await asyncio.sleep(0.05)
            assert in_flight() == [0, 0, 0]
            # A request cancelled while it waits for the upstream's first byte.
            slow = sdk.messages.create(
                **session.next_request(3, "[[mock: first_byte_delay_ms=2000]]")
            )
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await slow
            for _ in range(100):
                if in_flight() == [0, 0, 0]:
                    break
                await asyncio.sleep(0.05)
            assert in_flight() == [0, 0, 0]
    finally:
        await stop_gateway(gateway)
    assert not await ledger.audit(db)
