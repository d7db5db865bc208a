"""Money helpers of the tests: accounts made by plain SQL, balances, the audit run as the
operator runs it (``alicode-gw audit`` in a real process)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from dataclasses import dataclass

import asyncpg

from alicode_gw.money import ledger

USD = 1_000_000_000


@dataclass(frozen=True, slots=True)
class TestAccount:
    __test__ = False

    id: int
    email: str
    key_id: int
    public_id: str


async def new_account(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    nanos: int = 0,
    spend_cap_nanos: int | None = None,
) -> TestAccount:
    """An account with one key (plain INSERTs), topped up through the ledger."""
    email = f"billing-{secrets.token_hex(5)}@example.test"
    account_id = await conn.fetchval("INSERT INTO accounts (email) VALUES ($1) RETURNING id", email)
    public_id = secrets.token_hex(6)
    key_id = await conn.fetchval(
        "INSERT INTO api_keys (account_id, public_id, name, secret_hash, spend_cap_nanos)"
        " VALUES ($1, $2, 'billing test', 'not-a-real-hash', $3) RETURNING id",
        account_id,
        public_id,
        spend_cap_nanos,
    )
    if nanos:
        if isinstance(conn, asyncpg.Pool):
            async with conn.acquire() as c:
                await ledger.topup(c, email, nanos, "test top-up")
        else:
            await ledger.topup(conn, email, nanos, "test top-up")
    return TestAccount(account_id, email, key_id, public_id)


async def balances(conn: asyncpg.Connection | asyncpg.Pool, account_id: int) -> tuple[int, int]:
    """(balance_nanos, held_nanos)."""
    row = await conn.fetchrow(
        "SELECT balance_nanos, held_nanos FROM accounts WHERE id = $1", account_id
    )
    assert row is not None
    return int(row["balance_nanos"]), int(row["held_nanos"])


async def run_cli(*args: str, database_url: str, redis_url: str) -> tuple[int, str, str]:
    """``alicode-gw ARGS`` in a real process; (exit status, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALICODE_")}
    env.update(ALICODE_DATABASE_URL=database_url, ALICODE_REDIS_URL=redis_url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alicode_gw",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def assert_audit_clean(database_url: str, redis_url: str) -> None:
    status, out, err = await run_cli(
        "audit", "--json", database_url=database_url, redis_url=redis_url
    )
    report = json.loads(out) if out.strip() else None
    assert status == 0 and report == {"ok": True, "differences": []}, (status, out, err)
