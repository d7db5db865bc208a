"""scripts/bench-auth: authentication cost per request, in microseconds.

Creates a throw-away account and key (bcrypt at the real cost 12) in the configured
or embedded database, then times: the first (cold) check, which runs bcrypt once;
warm checks (parse + keyed SHA-256 + constant-time compare: no bcrypt, database or
Redis); a wrong secret against the warm key; and one limits round trip (admit +
finish) for comparison. The account is stopped and its key revoked at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import statistics
import time

import uvloop
from aiohttp.test_utils import make_mocked_request

from alicode_gw import config
from alicode_gw.dev.embedded import running_backends
from alicode_gw.errors import AuthenticationError
from alicode_gw.identity import accounts
from alicode_gw.identity.auth import Authenticator
from alicode_gw.limits.limiter import Limiter
from alicode_gw.store import migrate
from alicode_gw.store.backends import create_pool, create_redis


async def run(database_url: str, redis_url: str, prefix: str, n: int) -> dict[str, float]:
    await migrate.run(database_url)
    pool = await create_pool(database_url, 2)
    redis = create_redis(redis_url)
    auth = Authenticator(pool, redis, prefix)
    limiter = Limiter(redis, prefix, ip_rpm=0, ip_concurrency=0)
    email = f"bench-auth-{secrets.token_hex(4)}@example.invalid"
    try:
        account = await accounts.create_account(pool, email)
        _record, secret = await accounts.create_key(pool, account.id, "bench")
        request = make_mocked_request("GET", "/v1/key-status", headers={"x-api-key": secret})
        ip = "192.0.2.1"

        started = time.perf_counter()
        key = await auth.authenticate(request, ip)  # type: ignore[arg-type]
        cold_ms = (time.perf_counter() - started) * 1000

        rounds = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(n):
                await auth.authenticate(request, ip)  # type: ignore[arg-type]
            rounds.append((time.perf_counter() - started) / n * 1e6)

        wrong = make_mocked_request(
            "GET",
            "/",
            headers={"x-api-key": secret[:-4] + ("AAAA" if secret[-4:] != "AAAA" else "BBBB")},
        )
        auth.failure_floor = 0.0
        started = time.perf_counter()
        for _ in range(20):
            with contextlib.suppress(AuthenticationError):
                await auth.authenticate(wrong, ip)  # type: ignore[arg-type]
        wrong_us = (time.perf_counter() - started) / 20 * 1e6
        await redis.delete(f"{prefix}authfail:{ip}")

        started = time.perf_counter()
        for _ in range(500):
            await limiter.finish(await limiter.admit(ip, key), 0)
        limits_us = (time.perf_counter() - started) / 500 * 1e6
        return {
            "cold_check_ms_bcrypt_cost_12": round(cold_ms, 1),
            "warm_check_us_median": round(statistics.median(rounds), 2),
            "warm_check_us_best": round(min(rounds), 2),
            "wrong_secret_on_warm_key_us_incl_redis": round(wrong_us, 1),
            "limits_admit_plus_finish_us": round(limits_us, 1),
            "bcrypt_runs": auth.bcrypt_runs,
        }
    finally:
        await accounts.stop_account(pool, email)
        await auth.close()
        limiter.close()
        await redis.aclose()
        await pool.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="warm checks per round")
    args = parser.parse_args()
    cfg = config.load()
    with running_backends(cfg) as backends:
        report = uvloop.run(
            run(backends.database_url, backends.redis_url, cfg.redis_prefix, args.n)
        )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
