"""``alicode-gw worker`` runs the batch loop: a batch created by a gateway that runs
none is settled by the worker process, once."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import asyncpg
import pytest

from alicode_gw.dev.mock_upstream import MockUpstream
from alicode_gw.money import ledger
from tests.support import procs
from tests.support.customers import client_for, make_customer, reset_pool
from tests.support.gateway import start_gateway, stop_gateway

pytestmark = pytest.mark.slow


async def test_the_worker_process_settles_a_batch(
    tmp_path: Path,
    db: asyncpg.Connection,
    make_config,
    mock_upstream: MockUpstream,
    database_url: str,
    redis_url: str,
) -> None:
    await reset_pool(db)
    mock_upstream.batches.process_seconds = 0.2
    gateway = await start_gateway(
        make_config(batch_poll_interval=0.0, redis_prefix=f"bw-gw-{secrets.token_hex(4)}:")
    )
    customer = await make_customer(db)
    params = {"model": "claude-sonnet-4-6", "max_tokens": 32}
    requests = [
        {
            "custom_id": f"w-{i}",
            "params": {**params, "messages": [{"role": "user", "content": "hi"}]},
        }
        for i in range(2)
    ]
    async with client_for(gateway, customer) as client:
        created = await client.messages.batches.create(requests=requests)
    await stop_gateway(gateway)
    log = tmp_path / "worker.log"
    env = procs.gateway_env(
        database_url,
        redis_url,
        f"bw-worker-{secrets.token_hex(4)}:",
        ALICODE_DATA_DIR=str(tmp_path / "worker"),
        ALICODE_UPSTREAM_URL=mock_upstream.url,
        ALICODE_BATCH_POLL_INTERVAL="0.1",
        ALICODE_BATCH_POLL_MAX_INTERVAL="0.2",
    )
    proc = procs.start(env, "worker", log=log)
    try:
        for _ in range(300):
            status = await db.fetchval(
                "SELECT settlement FROM message_batches WHERE id = $1", created.id
            )
            if status == "settled":
                break
            assert proc.poll() is None, log.read_text()
            await asyncio.sleep(0.05)
        assert status == "settled", log.read_text()
    finally:
        assert await asyncio.to_thread(procs.stop, proc) == 0
    rows = await db.fetch("SELECT amount_nanos FROM ledger WHERE request_id = $1", created.id)
    assert len(rows) == 1 and rows[0]["amount_nanos"] < 0
    assert "message batches" in log.read_text()
    assert not await ledger.audit(db)
