"""``alicode-gw worker``: the background-only process applies journaled settlements
(the same replay the gateways run) and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from alicode_gw.money.billing import Billing
from tests.support import procs
from tests.support.money import USD, assert_audit_clean, new_account

pytestmark = pytest.mark.slow


async def test_worker_process_replays_the_journal(
    tmp_path: Path, database_url: str, redis: Redis, redis_url: str, redis_prefix: str
) -> None:
    prefix = f"{redis_prefix}bgworker-{secrets.token_hex(3)}:"
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    log = tmp_path / "worker.log"
    proc = None
    try:
        billing = Billing(pool, redis, redis_prefix=prefix, data_dir=tmp_path / "gateway")
        account = await new_account(pool, nanos=USD)
        settled, released = f"req_{secrets.token_hex(8)}", f"req_{secrets.token_hex(8)}"
        for request_id in (settled, released):
            await billing.hold(request_id, account.key_id, "claude-sonnet-4-5", 1000, 1000, "::1")
        # What a gateway journals when PostgreSQL is unreachable at settle/release time.
        await billing.journal.append({"op": "settle", "request_id": settled, "estimated": False,
                                "input_tokens": 1000, "output_tokens": 500,
                                "cache_creation_5m": 0, "cache_creation_1h": 0,
                                "cache_read": 0})  # fmt: skip
        await billing.journal.append({"op": "release", "request_id": released})
        assert await billing.journal_length() == 2

        env = procs.gateway_env(
            database_url, redis_url, prefix, ALICODE_DATA_DIR=str(tmp_path / "worker")
        )
        proc = procs.start(env, "worker", log=log)
        statuses: dict[str, str] = {}
        for _ in range(300):  # the replay loop runs every 5 s
            rows = await pool.fetch(
                "SELECT request_id, status FROM billing_holds WHERE request_id = ANY($1)",
                [settled, released],
            )
            statuses = {row["request_id"]: row["status"] for row in rows}
            if statuses == {settled: "settled", released: "released"}:
                break
            assert proc.poll() is None, log.read_text()
            await asyncio.sleep(0.05)
        assert statuses == {settled: "settled", released: "released"}
        assert await billing.journal_length() == 0
        # sonnet-4-5: 1000 in x $3 + 500 out x $15 = $0.0105
        charged = await pool.fetchval(
            "SELECT -amount_nanos FROM ledger WHERE request_id = $1", settled
        )
        assert charged == 10_500_000
        assert await asyncio.to_thread(procs.stop, proc) == 0
        assert "background worker running" in log.read_text()
        await assert_audit_clean(database_url, redis_url)
    finally:
        if proc is not None and proc.poll() is None:
            await asyncio.to_thread(procs.stop, proc)
        await pool.close()
