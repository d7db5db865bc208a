"""scripts/bench-dashboard: how fast the dashboard's pages render for a big account.

Creates a throw-away account with a password, 5 keys, a top-up and ``--rows`` charge
rows (default 100,000) spread over the last ``--days`` days (3 models, 50 client IPs;
the balance lowered by their sum, so the books balance), starts a gateway on a loopback
port, logs in over HTTP and loads each page ``--loads`` times. Reports p50 / p95 in
milliseconds per page, the first load of the usage page (which rolls the closed days up
into ``dashboard.usage_daily``), and the usage page's four queries with the rollup and,
for comparison, without it (read from the ledger alone, in a transaction rolled back).
It all happens in a database of its own, created on the configured (or embedded)
PostgreSQL server and dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import uvloop

from alicode_gw import app, config
from alicode_gw.dashboard import store
from alicode_gw.dev.embedded import running_backends
from alicode_gw.identity import accounts
from alicode_gw.money import ledger
from alicode_gw.store import migrate
from alicode_gw.store.backends import Backends
from scripts.benchmark import scratch_database

PASSWORD = "bench dashboard password"
PAGES = (
    "/dashboard",
    "/dashboard/keys",
    "/dashboard/usage",
    "/dashboard/usage?from={ninety}",
    "/dashboard/usage.csv?by=ip",
    "/dashboard/billing",
    "/dashboard/account",
)
# The charge rows: the same columns billing.settle writes (cost = -amount, no shortfall).
FILL = """
INSERT INTO ledger (created_at, account_id, kind, amount_nanos, request_id, key_id,
                    client_ip, requested_model, model, input_tokens, output_tokens,
                    cache_creation_5m, cache_creation_1h, cache_read, batch, cost_nanos,
                    status)
SELECT now() - (n::double precision / $3) * make_interval(days => $4), $1, 'charge',
       -(1000 + n % 5000), 'bench_' || $5 || '_' || n, ($2::bigint[])[1 + n % 5],
       '198.51.100.' || (n % 50), m.model, m.model, 100 + n % 900, 10 + n % 300,
       0, 0, n % 200, false, 1000 + n % 5000, 'complete'
  FROM generate_series(1, $3) AS n,
       LATERAL (SELECT (ARRAY['claude-sonnet-4-6', 'claude-haiku-4-5',
                              'claude-opus-4-6'])[1 + n % 3] AS model) m
"""


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct))]


async def run(backends: Backends, rows: int, days: int, loads: int) -> dict[str, object]:
    await migrate.run(backends.database_url)
    data_dir = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    cfg = config.load(
        database_url=backends.database_url,
        redis_url=backends.redis_url,
        redis_prefix=f"bench-dash-{secrets.token_hex(3)}:",
        listen_port=0,
        data_dir=data_dir,
        upstream_models_interval=0,
    )
    state = await app.open_state(cfg, backends)
    gateway = app.Gateway(state)
    await gateway.start(port=0)
    db = state.db
    email = f"bench-dashboard-{secrets.token_hex(4)}@example.invalid"
    report: dict[str, object] = {"rows": rows, "days": days, "loads_per_page": loads}
    account = await accounts.create_account(db, email, PASSWORD, cost=4)
    try:
        key_ids = [
            (await accounts.create_key(db, account.id, f"key {n}", cost=4))[0].id for n in range(5)
        ]
        await ledger.topup(db, email, 10**15, "bench")
        started = time.perf_counter()
        async with db.acquire() as conn, conn.transaction():
            await conn.execute(FILL, account.id, key_ids, rows, days, secrets.token_hex(4))
            await conn.execute(
                "UPDATE accounts SET balance_nanos = balance_nanos + (SELECT sum(amount_nanos)"
                " FROM ledger WHERE account_id = $1 AND kind = 'charge') WHERE id = $1",
                account.id,
            )
            await conn.execute("ANALYZE ledger")
        report["fill_s"] = round(time.perf_counter() - started, 1)
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            base = gateway.url
            login = await (await http.get(f"{base}/dashboard/login")).text()
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', login)
            assert csrf is not None
            async with http.post(
                f"{base}/dashboard/login",
                data={"email": email, "password": PASSWORD, "csrf_token": csrf.group(1)},
                allow_redirects=False,
            ) as response:
                assert response.status == 303, response.status
            ninety = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 89 * 86400))
            started = time.perf_counter()
            async with http.get(f"{base}/dashboard") as response:
                assert response.status == 200
                await response.read()
            report["first_load_ms_incl_rollup_of_closed_days"] = round(
                (time.perf_counter() - started) * 1000, 1
            )
            pages: dict[str, dict[str, float]] = {}
            for template in PAGES:
                path = template.format(ninety=ninety)
                times = []
                for _ in range(loads):
                    started = time.perf_counter()
                    async with http.get(base + path) as response:
                        assert response.status == 200, (path, response.status)
                        await response.read()
                    times.append((time.perf_counter() - started) * 1000)
                pages[path] = {
                    "p50_ms": round(statistics.median(times), 1),
                    "p95_ms": round(percentile(times, 0.95), 1),
                }
            report["pages"] = pages
        report["usage_queries_ms"] = await usage_queries(db, account.id, days)
    finally:
        await gateway.stop()
        await app.close_state(state)
    return report


async def usage_queries(db, account_id: int, days: int) -> dict[str, float]:
    """The usage page's query (four groupings) over the whole period, with the rollup, and
    without it (the rollup emptied in a transaction that is rolled back)."""
    sql = (
        "SELECT count(*) FROM dashboard.usage_by(p_account_id => $1,"
        " p_first => current_date - $2::int, p_last => current_date, p_by => $3)"
    )

    async def four(conn) -> float:
        started = time.perf_counter()
        await conn.fetchval(sql, account_id, days, list(store.USAGE_DIMENSIONS))
        return (time.perf_counter() - started) * 1000

    async with db.acquire() as conn:
        with_rollup = statistics.median([await four(conn) for _ in range(5)])
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute(
                "DELETE FROM dashboard.usage_daily WHERE account_id = $1;", account_id
            )
            await conn.execute(
                "DELETE FROM dashboard.rollup_state WHERE account_id = $1", account_id
            )
            without = statistics.median([await four(conn) for _ in range(5)])
        finally:
            await tx.rollback()
    return {"with_rollup": round(with_rollup, 1), "ledger_only": round(without, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--loads", type=int, default=30)
    args = parser.parse_args()
    cfg = config.load()
    with running_backends(cfg) as server, scratch_database(server.database_url) as url:
        report = uvloop.run(run(Backends(url, server.redis_url), args.rows, args.days, args.loads))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
