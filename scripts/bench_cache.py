"""scripts/bench-cache: what a response cache hit costs and saves against a miss.

Everything runs on 127.0.0.1, each server in its own process: the mock upstream and two
gateways on the same PostgreSQL and Redis, ``off`` (the cache off) and ``on`` (the
cache on). Four cases, JSON and SSE (50 events):

- ``off``: a fresh request through the gateway without the cache (the yardstick);
- ``bypass``: a fresh request with ``X-No-Cache: true`` through the gateway with the
  cache on (no lookup, no store: the same work as ``off`` in the other process);
- ``miss``: a fresh request through the gateway with the cache on (lookup, relay with
  the capture, the encrypted store after the answer);
- ``hit``: one stored request again (lookup, decrypt, replay; no upstream).

Latency: ``--samples`` sequential requests per case, the cases taking turns request by
request. CPU: ``--requests`` requests per case at concurrency 8, the cases taking
turns in ``--rounds`` rounds; the gateway process's utime+stime (and Redis's) from
/proc, the median of the rounds. Uses ALICODE_BENCH_DATABASE_URL /
ALICODE_BENCH_REDIS_URL when set (a scratch database), the embedded servers otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import time

import aiohttp

from scripts.benchmark import (
    MODEL,
    STREAM_WORDS,
    bench_servers,
    cpu_seconds,
    free_port,
    pct,
    pids_named,
    wait_port,
)

CASES = ("off", "bypass", "miss", "hit")
EXPECTED = {"off": "-", "bypass": "BYPASS", "miss": "MISS", "hit": "HIT"}
CONCURRENCY = 8


def payload(stream: bool, fresh: bool) -> bytes:
    """A bench request; ``fresh``: a prompt nobody sent before (a miss)."""
    words = STREAM_WORDS if stream else 12
    tail = secrets.token_hex(8) if fresh else "stored"
    return json.dumps(
        {
            "model": MODEL,
            "max_tokens": 256,
            "stream": stream,
            "messages": [{"role": "user", "content": f"bench [[mock: words={words}]] {tail}"}],
        }
    ).encode()


async def one(
    http: aiohttp.ClientSession, url: str, key: str, body: bytes, case: str
) -> tuple[float, str]:
    """(seconds, X-Cache) of one request, its body read to the end."""
    started = time.perf_counter()
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    if case == "bypass":
        headers["x-no-cache"] = "true"
    async with http.post(url + "/v1/messages", data=body, headers=headers) as resp:
        async for _chunk in resp.content.iter_any():
            pass
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}")
        return time.perf_counter() - started, resp.headers.get("x-cache", "-")


def target(case: str, urls: dict[str, str]) -> str:
    return urls["off"] if case == "off" else urls["on"]


async def latencies(
    urls: dict[str, str], key: str, stream: bool, samples: int
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {case: [] for case in CASES}
    async with aiohttp.ClientSession() as http:
        for _ in range(samples):
            for case in CASES:
                body = payload(stream, case != "hit")
                seconds, seen = await one(http, target(case, urls), key, body, case)
                if seen != EXPECTED[case]:
                    raise RuntimeError(f"{case}: X-Cache {seen}, expected {EXPECTED[case]}")
                out[case].append(seconds)
    return out


async def load(url: str, key: str, stream: bool, case: str, count: int) -> None:
    bodies = [payload(stream, case != "hit") for _ in range(count)]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker(index: int) -> None:
            for body in bodies[index::CONCURRENCY]:
                await one(http, url, key, body, case)

        await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))


def cpu_rounds(
    urls: dict[str, str], pids: dict[str, int], key: str, stream: bool, count: int, rounds: int
) -> dict[str, tuple[float, float]]:
    """case -> (gateway CPU µs/req, Redis CPU µs/req), medians of the rounds."""
    samples: dict[str, list[tuple[float, float]]] = {case: [] for case in CASES}
    for _ in range(rounds):
        for case in CASES:
            pid = pids["off"] if case == "off" else pids["on"]
            redis = pids_named("redis-server")
            before, redis_before = cpu_seconds([pid]), cpu_seconds(redis)
            asyncio.run(load(target(case, urls), key, stream, case, count))
            used, redis_used = cpu_seconds([pid]) - before, cpu_seconds(redis) - redis_before
            samples[case].append((used / count * 1e6, redis_used / count * 1e6))
    return {
        case: (
            statistics.median(s[0] for s in values),
            statistics.median(s[1] for s in values),
        )
        for case, values in samples.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=300, help="latency samples per case")
    parser.add_argument("--requests", type=int, default=1000, help="CPU: requests per case")
    parser.add_argument("--rounds", type=int, default=3, help="CPU: rounds per case")
    parser.add_argument("--quick", action="store_true", help="small counts (smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.requests, args.rounds = 30, 100, 1

    on_port, off_port = free_port(), free_port()
    secret = {"ALICODE_RESPONSE_CACHE_SECRET": secrets.token_urlsafe(32)}
    with bench_servers("bench-cache", secret) as servers:
        work, spawn, key = servers.work, servers.spawn, servers.key
        pids = {}
        for name, port, cache in (("off", off_port, "off"), ("on", on_port, "on")):
            pids[name] = spawn(sys.executable, "-m", "alicode_gw", "serve", extra={
                "ALICODE_LISTEN": f"127.0.0.1:{port}", "ALICODE_RESPONSE_CACHE": cache,
                "ALICODE_DATA_DIR": str(work / name)})  # fmt: skip
        for port in (servers.mock_port, off_port, on_port):
            wait_port(port)
        urls = {"off": f"http://127.0.0.1:{off_port}", "on": f"http://127.0.0.1:{on_port}"}
        results = {}
        for kind, stream in (("json", False), ("sse", True)):
            for case in CASES:  # warm-up; stores the entry the hits read
                asyncio.run(load(target(case, urls), key, stream, case, 50))
            time.sleep(0.2)
            lat = asyncio.run(latencies(urls, key, stream, args.samples))
            cpu = cpu_rounds(urls, pids, key, stream, args.requests, args.rounds)
            results[kind] = (lat, cpu)

    print()
    print("| measure | " + " | ".join(f"{k} {c}" for k in ("JSON", "SSE") for c in CASES) + " |")
    print("| --- " * (1 + 2 * len(CASES)) + "|")
    for q, tag in ((0.5, "p50"), (0.99, "p99")):
        cells = [f"{pct(results[k][0][c], q):.2f}" for k in ("json", "sse") for c in CASES]
        print(f"| latency {tag} (ms) | " + " | ".join(cells) + " |")
    cells = [f"{results[k][1][c][0]:.0f}" for k in ("json", "sse") for c in CASES]
    print("| gateway CPU µs/req | " + " | ".join(cells) + " |")
    cells = [f"{results[k][1][c][1]:.0f}" for k in ("json", "sse") for c in CASES]
    print("| Redis CPU µs/req | " + " | ".join(cells) + " |")
    print(f"\n(latency: {args.samples} sequential requests per case, the cases taking turns; "
          f"CPU: {args.requests} requests per case at concurrency {CONCURRENCY}, median of "
          f"{args.rounds} interleaved rounds)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
