"""scripts/bench-routing: what cache-affine routing adds to a request, in microseconds.

Times, in process and without I/O, for a Claude Code-like request whose cacheable
prefix (tools, then a system prompt marked with ``cache_control``) is about 200 KB:
the affinity key (:func:`alicode_gw.upstream.affinity.affinity_key`), the pool's pick
with that key over N credentials in cache groups, and both together (the routing cost
of one request). The round-robin pick and a SHA-256 of the same bytes are shown for
comparison. The pool's table comes from a stand-in for the database (pick reads only
the in-process view).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from alicode_gw.upstream.affinity import affinity_key
from alicode_gw.upstream.pool import KeyPool


class _Table:
    """The ``upstream_credentials`` rows the pool loads (no database)."""

    def __init__(self, count: int, groups: int) -> None:
        self.rows = [
            {
                "id": n + 1,
                "name": f"cred-{n}",
                "secret": f"sk-ant-bench-{n:04d}-secret",
                "weight": 1 + n % 3,
                "cache_group": f"org-{n % groups}",
                "status": "active",
                "disabled_reason": None,
            }
            for n in range(count)
        ]

    async def fetch(self, *_: Any) -> list[dict[str, Any]]:
        return self.rows


def request(prefix_bytes: int) -> dict[str, Any]:
    tools = [
        {
            "name": f"tool_{n}",
            "description": "A tool of a coding agent. " * 20,
            "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
        }
        for n in range(20)
    ]
    room = prefix_bytes - len(json.dumps(tools))
    system = ("You are a coding agent. Follow the project's conventions. " * 4000)[:room]
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "tools": tools,
        "system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Fix the failing test."}]},
        ],
    }


def timed(fn: Callable[[], Any], n: int) -> dict[str, float]:
    for _ in range(min(n, 200)):  # warm up
        fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1000)
    samples.sort()
    return {
        "min_us": round(samples[0], 2),
        "median_us": round(statistics.median(samples), 2),
        "p99_us": round(samples[int(len(samples) * 0.99) - 1], 2),
    }


async def run(n: int, credentials: int, groups: int, prefix_bytes: int) -> dict[str, Any]:
    redis = Redis()  # never connected: pick does no I/O
    pool = KeyPool(_Table(credentials, groups), redis, "bench:")  # type: ignore[arg-type]
    await pool._load()  # the table only: no Redis read
    payload = request(prefix_bytes)
    prefix = json.dumps(payload["tools"]).encode() + payload["system"][0]["text"].encode()
    key = affinity_key(42, payload["model"], payload)
    assert key is not None

    def route() -> None:
        pool.pick(frozenset(), affinity_key(42, payload["model"], payload))

    results = {
        "prefix_bytes": len(prefix),
        "credentials": credentials,
        "cache_groups": groups,
        "affinity_key": timed(lambda: affinity_key(42, payload["model"], payload), n),
        "pick_affine": timed(lambda: pool.pick(frozenset(), key), n),
        "route_total": timed(route, n),
        "pick_round_robin": timed(lambda: pool.pick(), n),
        "sha256_of_prefix": timed(lambda: hashlib.sha256(prefix).digest(), n),
    }
    await redis.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="timed repetitions")
    parser.add_argument("--credentials", type=int, default=12)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--prefix-kb", type=int, default=200)
    args = parser.parse_args()
    results = asyncio.run(run(args.n, args.credentials, args.groups, args.prefix_kb * 1000))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
