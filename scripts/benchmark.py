"""scripts/bench: measures the gateway against a bare relay on the same mock upstream.

Everything runs on 127.0.0.1, each server in its own process:
  mock upstream  <-  bare relay (scripts/bare_relay.py, the yardstick)
  mock upstream  <-  alicode_gw serve (auth, limits, hold/settle all on)
CPU per request comes from /proc/<pid>/stat (utime+stime) of the measured process;
PostgreSQL's and Redis's CPU (all their processes) is reported beside the gateway's.
Load is bounded: a fixed number of requests per phase and a time cap per phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from alicode_gw.config import Config
from alicode_gw.dev.embedded import running_backends
from alicode_gw.dev.mock_upstream import DEFAULT_MOCK_KEY
from scripts import saturation

TICKS = os.sysconf("SC_CLK_TCK")
MODEL = "claude-sonnet-4-6"
PHASE_TIME_CAP = 120.0
# 44 words: message_start, content_block_start, ping, 44 deltas, stop, delta, stop = 50.
STREAM_WORDS = 44


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def pids_named(*names: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in names:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cli(env: dict[str, str], *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "alicode_gw", *args, "--json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


@dataclass
class Phase:
    name: str
    requests: int
    seconds: float
    cpu: float
    db_cpu: float

    @property
    def us_per_request(self) -> float:
        return self.cpu / self.requests * 1e6

    @property
    def db_us_per_request(self) -> float:
        return self.db_cpu / self.requests * 1e6


def body(stream: bool, words: int = 12, extra: str = "") -> bytes:
    return json.dumps(
        {
            "model": MODEL,
            "max_tokens": 256,
            "stream": stream,
            "messages": [{"role": "user", "content": f"bench [[mock: words={words}{extra}]]"}],
        }
    ).encode()


def agent_body() -> bytes:
    """A request shaped like a coding agent's (Claude Code, Cline): a system prompt, 8
    tool definitions with JSON schemas, a 19-turn conversation and a new turn (a 2.4 KB
    tool result that differs from one request to the next under wrk), ~31 KB in all, a
    JSON answer."""
    vocabulary = [
        "the", "file", "function", "return", "value", "error", "test", "import", "class",
        "self", "async", "await", "config", "request", "response", "key", "limit",
        "stream", "token", "model", "cache", "index", "path", "line", "change", "run",
    ]  # fmt: skip

    def text(words: int, seed: int) -> str:
        return " ".join(vocabulary[(seed * 7 + n * 13 + n // 5) % len(vocabulary)]
                        for n in range(words))  # fmt: skip

    schema = {
        "type": "object",
        "properties": {f"arg{n}": {"type": "string", "description": text(12, n)} for n in range(6)},
        "required": ["arg0"],
    }
    tools = [
        {"name": f"tool_{n}", "description": text(60, n), "input_schema": schema} for n in range(8)
    ]
    turns = [{"role": ("user", "assistant")[n % 2], "content": text(110, n)} for n in range(19)]
    # The new turn: a tool's result that only this request has (saturation.SERIAL).
    fresh = f"result {saturation.SERIAL}: " + text(400, 5)
    turns.append({"role": "user", "content": fresh + " [[mock: words=12]]"})
    return json.dumps(
        {
            "model": MODEL,
            "max_tokens": 4096,
            "stream": False,
            "system": text(900, 99),
            "tools": tools,
            "messages": turns,
        }
    ).encode()


async def one(
    http: aiohttp.ClientSession, url: str, key: str, payload: bytes
) -> tuple[float, float]:
    """(total seconds, seconds to the first body byte) of one request."""
    started = time.perf_counter()
    headers = {
        "x-api-key": key,
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }
    async with http.post(url + "/v1/messages", data=payload, headers=headers) as resp:
        first = None
        async for _chunk in resp.content.iter_any():
            if first is None:
                first = time.perf_counter() - started
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}")
    return time.perf_counter() - started, first or 0.0


async def load(
    url: str, key: str, payload: bytes, count: int, concurrency: int
) -> tuple[int, float]:
    done = 0
    deadline = time.monotonic() + PHASE_TIME_CAP
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker() -> None:
            nonlocal done
            while done < count and time.monotonic() < deadline:
                done += 1
                await one(http, url, key, payload)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done, time.perf_counter() - started


async def measure(
    name: str,
    pid: int,
    db_pids: Callable[[], list[int]],
    run: Callable[[], Awaitable[tuple[int, float]]],
) -> Phase:
    dbs = db_pids()
    before, db_before = cpu_seconds([pid]), cpu_seconds(dbs)
    count, seconds = await run()
    after, db_after = cpu_seconds([pid]), cpu_seconds(dbs)
    return Phase(name, count, seconds, after - before, db_after - db_before)


async def latencies(
    targets: dict[str, tuple[str, str]], payload: bytes, count: int
) -> dict[str, tuple[list[float], list[float]]]:
    """``count`` sequential requests per target, the targets taking turns request by
    request (name -> (url, key)), so a slow moment of the machine falls on all of them
    alike instead of on whichever target was being measured then."""
    out: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in targets}
    async with aiohttp.ClientSession() as http:
        for _ in range(count):
            for name, (url, key) in targets.items():
                total, first = await one(http, url, key, payload)
                out[name][0].append(total)
                out[name][1].append(first)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def slow_streams(url: str, key: str, count: int, pid: int) -> tuple[int, float]:
    payload = body(True, words=20, extra=" chunk_delay_ms=150")
    peak = 0.0
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=PHASE_TIME_CAP)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        tasks = [asyncio.ensure_future(one(http, url, key, payload)) for _ in range(count)]
        while not all(t.done() for t in tasks):
            peak = max(peak, rss_mb(pid))
            await asyncio.sleep(0.2)
        ok = sum(1 for t in tasks if not t.exception())
    return ok, peak


def fresh_database(server_url: str) -> str:
    name = f"alicode_bench_{secrets.token_hex(4)}"

    async def create() -> None:
        conn = await asyncpg.connect(server_url)
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()

    asyncio.run(create())
    return urlunsplit(urlsplit(server_url)._replace(path="/" + name))


@contextlib.contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A database of the benchmark's own on ``server_url``'s server, dropped after."""
    url = fresh_database(server_url)
    try:
        yield url
    finally:
        drop_database(server_url, url)


def drop_database(server_url: str, url: str) -> None:
    name = urlsplit(url).path.strip("/")

    async def drop() -> None:
        conn = await asyncpg.connect(server_url)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()

    asyncio.run(drop())


def provision(env: dict[str, str]) -> str:
    """Migrate; an account funded with $1,000,000, a key with a per-minute limit of 10⁶
    and a concurrency limit of 5,000, the mock's credential in the pool. The key."""
    subprocess.run([sys.executable, "-m", "alicode_gw", "migrate"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    email = f"bench-{secrets.token_hex(3)}@example.com"
    cli(env, "account", "create", "--email", email)
    cli(env, "account", "topup", "--email", email, "--usd", "1000000")
    key = cli(env, "key", "create", "--email", email, "--name", "bench",
              "--rpm", "1000000", "--concurrency", "5000")["key"]  # fmt: skip
    cli(env, "upstream", "add", "--key", DEFAULT_MOCK_KEY, "--name", "mock")
    return str(key)


def stop_and_audit(procs: list[subprocess.Popen[bytes]], env: dict[str, str]) -> None:
    """Stop the servers (SIGTERM, then a kill after 30 s), then check with
    ``alicode-gw audit`` that nothing was lost or billed twice."""
    for proc in reversed(procs):
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    if procs:  # the books add up once every node stopped
        audit = subprocess.run(
            [sys.executable, "-m", "alicode_gw", "audit", "--json"],
            env=env,
            capture_output=True,
            text=True,
        )
        clean = audit.returncode == 0 and json.loads(audit.stdout)["ok"]
        print(f"\naudit after the run (servers stopped): {'clean' if clean else audit.stdout}")


@dataclass
class Servers:
    """A benchmark's backends and server processes: the gateway environment, the mock
    upstream's port, the provisioned key; every process's output goes to servers.log."""

    work: Path
    env: dict[str, str]
    mock_port: int
    procs: list[subprocess.Popen[bytes]]
    log: IO[bytes]
    key: str = ""

    def spawn(self, *cmd: str, extra: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        self.procs.append(subprocess.Popen(cmd, env={**self.env, **(extra or {})}, cwd=cwd,
                                           stdout=self.log, stderr=self.log))  # fmt: skip
        return self.procs[-1].pid


@contextlib.contextmanager
def bench_servers(tag: str, settings: dict[str, str]) -> Iterator[Servers]:
    """PostgreSQL and Redis (ALICODE_BENCH_DATABASE_URL / ALICODE_BENCH_REDIS_URL when
    set: a scratch database; the embedded servers otherwise), the gateway environment
    (the common settings, then ``settings``), the mock upstream started and the database
    provisioned. On the way out: the servers stopped, the audit, the scratch database
    dropped."""
    work = Path(tempfile.mkdtemp(prefix=f"alicode-{tag}-"))
    base = {k: v for k, v in os.environ.items() if not k.startswith("ALICODE_")}
    server_db = os.environ.get("ALICODE_BENCH_DATABASE_URL")
    redis_url = os.environ.get("ALICODE_BENCH_REDIS_URL")
    with contextlib.ExitStack() as stack:
        backends = stack.enter_context(
            running_backends(Config(data_dir=work, database_url=server_db, redis_url=redis_url))
        )
        database_url = fresh_database(backends.database_url) if server_db else backends.database_url
        if server_db:
            stack.callback(drop_database, backends.database_url, database_url)
        # The servers' own output (the gateway's access log) goes to a file, not the table.
        server_log = stack.enter_context(open(work / "servers.log", "ab"))
        mock_port = free_port()
        env = {
            **base,
            "ALICODE_DATABASE_URL": database_url,
            "ALICODE_REDIS_URL": backends.redis_url,
            "ALICODE_REDIS_PREFIX": f"{tag}-{secrets.token_hex(3)}:",
            "ALICODE_UPSTREAM_URL": f"http://127.0.0.1:{mock_port}",
            "ALICODE_IP_RPM": "0",
            "ALICODE_IP_CONCURRENCY": "0",
            "ALICODE_LOG_LEVEL": "WARNING",
            "ALICODE_DATA_DIR": str(work),
            **settings,
        }
        servers = Servers(work, env, mock_port, [], server_log)
        try:
            servers.spawn(sys.executable, "-m", "alicode_gw", "mock-upstream", "--port",
                          str(mock_port), "--key", DEFAULT_MOCK_KEY)  # fmt: skip
            servers.key = provision(env)
            yield servers
        finally:
            stop_and_audit(servers.procs, env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="small counts (smoke run)")
    parser.add_argument("--connections", type=int, default=64, help="saturation: wrk connections")
    parser.add_argument("--saturation-seconds", type=float, default=4.0)
    parser.add_argument("--saturation-rounds", type=int, default=3)
    parser.add_argument(
        "--saturation-only", action="store_true", help="only the wrk saturation phase"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of another commit: its gateway joins the saturation phase as "
        "'baseline' (same database, Redis and mock upstream; its schema must match)",
    )
    parser.add_argument(
        "--no-leases",
        action="store_true",
        help="credit leases off (ALICODE_CREDIT_LEASE_PCT=0): every hold waits for PostgreSQL",
    )
    parser.add_argument(
        "--no-shares",
        action="store_true",
        help="limit shares off (ALICODE_LIMIT_SHARE_PCT=0): every admission waits for Redis",
    )
    parser.add_argument(
        "--kinds",
        default="json,sse,agent",
        help="saturation: any of json (small), sse (50 events), agent (a ~31 KB agent-like "
        "request, see agent_body), comma-separated",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:VAR=VALUE[,VAR=VALUE]",
        help="a gateway of this checkout with other settings joins the saturation phase "
        "as NAME (e.g. noshares:ALICODE_LIMIT_SHARE_PCT=0); repeatable",
    )
    args = parser.parse_args()
    if args.quick:
        args.requests, args.latency_samples, args.streams = 200, 50, 100
        args.saturation_seconds, args.saturation_rounds = 2.0, 1

    relay_port, gw_port, base_port = (free_port() for _ in range(3))
    gateway = {
        "ALICODE_LISTEN": f"127.0.0.1:{gw_port}",
        "ALICODE_CREDIT_LEASE_PCT": "0" if args.no_leases else "50",
        "ALICODE_LIMIT_SHARE_PCT": "0" if args.no_shares else "25",
    }
    with bench_servers("bench", gateway) as servers:
        work, spawn, key, mock_port = servers.work, servers.spawn, servers.key, servers.mock_port
        gw_pid = spawn(sys.executable, "-m", "alicode_gw", "serve")
        relay_pid = spawn(sys.executable, "-m", "scripts.bare_relay", "--port", str(relay_port),
              "--upstream", f"http://127.0.0.1:{mock_port}", "--key", DEFAULT_MOCK_KEY)  # fmt: skip
        ports = [mock_port, relay_port, gw_port]
        if args.baseline:
            base_dir = args.baseline.resolve()
            base_pid = spawn(sys.executable, "-m", "alicode_gw", "serve", cwd=base_dir,
                             extra={"PYTHONPATH": str(base_dir),
                                    "ALICODE_LISTEN": f"127.0.0.1:{base_port}"})  # fmt: skip
            ports.append(base_port)
        variants = []
        for spec in args.variant:
            name, _, settings = spec.partition(":")
            extra = dict(item.split("=", 1) for item in settings.split(",") if item)
            port = free_port()
            extra["ALICODE_LISTEN"] = f"127.0.0.1:{port}"
            pid = spawn(sys.executable, "-m", "alicode_gw", "serve", extra=extra)
            variants.append(saturation.Target(name, f"http://127.0.0.1:{port}", pid))
            ports.append(port)
        for port in ports:
            wait_port(port)
        mock_url = f"http://127.0.0.1:{mock_port}"
        gw_url, relay_url = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{relay_port}"

        def db_pids() -> list[int]:
            return pids_named("postgres", "redis-server")

        sat_targets = [
            saturation.Target("bare", relay_url, relay_pid),
            saturation.Target("gateway", gw_url, gw_pid),
        ]
        if args.baseline:
            sat_targets.append(
                saturation.Target("baseline", f"http://127.0.0.1:{base_port}", base_pid)
            )
        # One request first: 64 connections opening on a key nobody verified yet all take
        # the authentication's cold path and count as attempts of one address.
        sat_targets += variants
        for target in sat_targets:
            asyncio.run(load(target.url, key, body(False), 1, 1))
        payloads = {"json": body(False), "sse": body(True, STREAM_WORDS), "agent": agent_body()}
        scripts = {
            kind: saturation.write_lua(work / f"{kind}.lua", payloads[kind], key)
            for kind in args.kinds.split(",")
        }
        sat_runs = saturation.saturate(
            sat_targets,
            scripts,
            connections=args.connections,
            seconds=args.saturation_seconds,
            rounds=args.saturation_rounds,
            cpu_seconds=cpu_seconds,
            db_pids=db_pids,
        )
        if args.saturation_only:
            saturation.report(
                sat_runs, args.connections, args.saturation_seconds, args.saturation_rounds
            )
            return 0

        results: dict[str, Phase] = {}
        for kind, payload in (("json", body(False)), ("sse", body(True, STREAM_WORDS))):
            for name, url, pid in (("bare", relay_url, relay_pid), ("gateway", gw_url, gw_pid)):
                asyncio.run(load(url, key, payload, 100, args.concurrency))  # warm-up

                async def run(url: str = url, payload: bytes = payload) -> tuple[int, float]:
                    return await load(url, key, payload, args.requests, args.concurrency)

                results[f"{name}-{kind}"] = asyncio.run(
                    measure(f"{name}-{kind}", pid, db_pids, run)
                )

        lat: dict[str, tuple[list[float], list[float]]] = {}
        targets = {
            "direct": (mock_url, DEFAULT_MOCK_KEY),
            "bare": (relay_url, key),
            "gateway": (gw_url, key),
        }
        for kind, payload in (("json", body(False)), ("sse", body(True, STREAM_WORDS))):
            measured = asyncio.run(latencies(targets, payload, args.latency_samples))
            lat.update({f"{name}-{kind}": values for name, values in measured.items()})

        before_streams = rss_mb(gw_pid)
        ok, peak = asyncio.run(slow_streams(gw_url, key, args.streams, gw_pid))

    print()
    print("| measure | JSON | SSE (50 events) |")
    print("| --- | --- | --- |")
    for label, name in (("bare relay CPU µs/req", "bare"), ("gateway CPU µs/req", "gateway")):
        j, s = results[f"{name}-json"], results[f"{name}-sse"]
        print(f"| {label} | {j.us_per_request:.0f} | {s.us_per_request:.0f} |")
    gj, gs = results["gateway-json"], results["gateway-sse"]
    bj, bs = results["bare-json"], results["bare-sse"]
    print(f"| gateway / bare CPU | {gj.cpu / gj.requests / (bj.cpu / bj.requests):.2f}x "
          f"| {gs.cpu / gs.requests / (bs.cpu / bs.requests):.2f}x |")  # fmt: skip
    print(f"| PostgreSQL+Redis CPU µs/req (gateway run) | {gj.db_us_per_request:.0f} "
          f"| {gs.db_us_per_request:.0f} |")  # fmt: skip
    print(f"| gateway req/s (concurrency {args.concurrency}) | {gj.requests / gj.seconds:.0f} "
          f"| {gs.requests / gs.seconds:.0f} |")  # fmt: skip
    for q, tag in ((0.5, "p50"), (0.99, "p99")):
        added_j = pct(lat["gateway-json"][0], q) - pct(lat["direct-json"][0], q)
        added_s = pct(lat["gateway-sse"][0], q) - pct(lat["direct-sse"][0], q)
        print(f"| added latency {tag}, concurrency 1 (ms) | {added_j:.2f} | {added_s:.2f} |")
    ttfb = pct(lat["gateway-sse"][1], 0.5) - pct(lat["direct-sse"][1], 0.5)
    print(f"| stream TTFB overhead p50 (ms) | - | {ttfb:.2f} |")
    print(f"| bare relay added latency p50 (ms) | "
          f"{pct(lat['bare-json'][0], 0.5) - pct(lat['direct-json'][0], 0.5):.2f} "
          f"| {pct(lat['bare-sse'][0], 0.5) - pct(lat['direct-sse'][0], 0.5):.2f} |")  # fmt: skip
    print(f"| {args.streams} concurrent slow streams: completed | - | {ok}/{args.streams} |")
    print(f"| gateway RSS before them (MB) | - | {before_streams:.0f} |")
    print(f"| gateway peak RSS with them (MB) | - | {peak:.0f} |")
    saturation.report(sat_runs, args.connections, args.saturation_seconds, args.saturation_rounds)
    print(f"\n(latency: {args.latency_samples} sequential requests per target, the targets "
          "taking turns; "
          f"CPU: {args.requests} requests per phase, concurrency {args.concurrency})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
