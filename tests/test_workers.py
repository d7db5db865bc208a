"""``alicode-gw serve --workers 2`` as a real process tree: two workers on one port,
graceful reload on SIGHUP (a stream that started before it finishes intact, new
requests are served throughout), graceful SIGTERM, and a dead worker stopping the
service with a non-zero status instead of being restarted silently."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import asyncpg
import pytest

from alicode_gw import app, workers
from alicode_gw.config import ConfigError
from alicode_gw.dev.mock_upstream import MockUpstream
from alicode_gw.money import ledger
from tests.support import procs
from tests.support.customers import MODEL, Customer, ledger_rows, reset_pool
from tests.support.gateway import start_gateway, stop_gateway

pytestmark = pytest.mark.slow

SLOW = "[[mock: words=30 chunk_delay_ms=100]]"  # about 3 s of stream


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path


@pytest.fixture
async def served(
    db: asyncpg.Connection,
    database_url: str,
    redis_url: str,
    mock_upstream: MockUpstream,
    tmp_path: Path,
) -> AsyncIterator[Served]:
    await reset_pool(db)
    port = procs.free_port()
    env = procs.gateway_env(
        database_url,
        redis_url,
        f"workers-{secrets.token_hex(4)}:",
        ALICODE_LISTEN=f"127.0.0.1:{port}",
        ALICODE_UPSTREAM_URL=mock_upstream.url,
        ALICODE_DATA_DIR=str(tmp_path / "data"),
        ALICODE_SHUTDOWN_TIMEOUT="20",
    )
    log = tmp_path / "serve.log"
    proc = procs.start(env, "serve", "--workers", "2", log=log)
    url = f"http://127.0.0.1:{port}"
    try:
        await procs.wait_serving(url, proc)
        for _ in range(100):  # both workers listen before the parent says so
            if "with 2 workers" in log.read_text():
                break
            await asyncio.sleep(0.05)
        yield Served(proc, url, log)
    finally:
        await asyncio.to_thread(procs.stop, proc)
    problems = await ledger.audit(db)
    assert not problems, [p.as_dict() for p in problems]


def client(url: str, customer: Customer) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key=customer.key, base_url=url, max_retries=0)


def ask(text: str) -> dict:
    return {"model": MODEL, "max_tokens": 300, "messages": [{"role": "user", "content": text}]}


async def slow_stream(url: str, customer: Customer, started: asyncio.Event) -> tuple[str, str]:
    """A ~3 s stream; sets ``started`` at its first text. Returns (text, request id)."""
    async with client(url, customer) as c:
        async with c.messages.stream(**ask(SLOW)) as stream:
            async for event in stream:
                if event.type == "content_block_delta":
                    started.set()
            message = await stream.get_final_message()
            assert message.stop_reason == "end_turn"
            return message.content[0].text, stream.response.headers["request-id"]


async def quick(url: str, customer: Customer) -> int:
    """One short request on a connection of its own; its HTTP status."""
    async with client(url, customer) as c:
        message = await c.messages.with_raw_response.create(**ask("hi"))
        return message.status_code


async def test_two_workers_share_the_port(served: Served, customer: Customer) -> None:
    pids = procs.worker_pids(served.proc.pid)
    assert len(pids) == 2
    statuses = await asyncio.gather(*(quick(served.url, customer) for _ in range(8)))
    assert statuses == [200] * 8


async def test_sighup_reloads_without_dropping_a_stream(
    served: Served, customer: Customer, db: asyncpg.Connection
) -> None:
    old = procs.worker_pids(served.proc.pid)
    assert len(old) == 2
    started = asyncio.Event()
    stream = asyncio.create_task(slow_stream(served.url, customer, started))
    await asyncio.wait_for(started.wait(), 10)
    os.kill(served.proc.pid, signal.SIGHUP)

    # New requests are answered while the reload happens and after it.
    statuses: list[int] = []
    while not stream.done():
        statuses.append(await quick(served.url, customer))
        await asyncio.sleep(0.05)
    text, request_id = await stream
    assert len(text.split()) == 30  # the whole stream, from the old worker
    assert statuses and all(status == 200 for status in statuses)
    rows = await ledger_rows(db, request_id)
    assert [row["status"] for row in rows] == ["complete"]

    for _ in range(200):
        if not any(procs.alive(pid) for pid in old):
            break
        await asyncio.sleep(0.1)
    assert not any(procs.alive(pid) for pid in old), "old workers did not exit"
    new = procs.worker_pids(served.proc.pid)
    assert len(new) == 2 and not new & old
    assert [await quick(served.url, customer) for _ in range(4)] == [200] * 4
    log = served.log.read_text()
    assert "reload: new workers listen; draining 2 old worker(s)" in log
    assert served.proc.poll() is None


async def test_sigterm_drains_streams_then_exits_zero(served: Served, customer: Customer) -> None:
    started = asyncio.Event()
    stream = asyncio.create_task(slow_stream(served.url, customer, started))
    await asyncio.wait_for(started.wait(), 10)
    served.proc.send_signal(signal.SIGTERM)
    text, _ = await stream
    assert len(text.split()) == 30
    assert await asyncio.to_thread(served.proc.wait, 30) == 0


async def test_a_dead_worker_stops_the_service_non_zero(served: Served) -> None:
    pids = procs.worker_pids(served.proc.pid)
    victim, other = sorted(pids)
    os.kill(victim, signal.SIGKILL)
    assert await asyncio.to_thread(served.proc.wait, 30) == 1
    assert not procs.alive(other)
    assert f"worker {victim} exited unexpectedly" in served.log.read_text()


async def test_only_the_supervisors_workers_share_a_port(gateway: app.Gateway, make_config) -> None:
    """Gateways with ``share_port`` (a supervisor's workers) bind next to each other;
    nothing binds next to a plain ``serve``, nor a plain ``serve`` next to them."""
    worker = await start_gateway(make_config(share_port=True))
    siblings = [app.Gateway(worker.state), app.Gateway(worker.state), app.Gateway(gateway.state)]
    try:
        port = worker.port
        await siblings[0].start(port=port)
        assert siblings[0].port == port
        in_use = f"ALICODE_LISTEN: 127.0.0.1:{port}: address already in use"
        with pytest.raises(ConfigError, match=in_use):
            await siblings[2].start(port=port)  # a plain serve
        with pytest.raises(ConfigError, match=in_use):
            workers.check_port_free("127.0.0.1", port)  # another supervisor
        with pytest.raises(ConfigError, match=f"127.0.0.1:{gateway.port}: address already"):
            await siblings[1].start(port=gateway.port)  # a worker next to a plain serve
        workers.check_port_free("127.0.0.1", procs.free_port())
    finally:
        for sibling in siblings:
            await sibling.stop()
        await stop_gateway(worker)
