"""The saturation phase of scripts/bench: ``wrk`` with many keep-alive connections.

Each target (the bare relay, the gateway, and optionally a baseline gateway run from
another checkout) is loaded in turn for a few seconds, per kind of request (JSON, stream,
an agent's turn), for several rounds: the targets take turns round by round, so a slow
moment of the machine falls on all of them alike. Reported per target: wrk's latency
percentiles (p50/p90/p99/max), requests per second, non-2xx answers, and the CPU per
request of the target's process and of PostgreSQL and Redis (all their processes), from
/proc. The figures of a target are the medians of its rounds. Loopback only, bounded in
time.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# wrk calls done() once at the end; latencies are in microseconds.
LUA = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["content-type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.headers["x-api-key"] = "{key}"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKRESULT %d %d %d %d %d %d %d %d\\n",
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass
class Target:
    name: str
    url: str
    pid: int


@dataclass
class Run:
    target: str
    kind: str
    p50: float  # ms
    p90: float
    p99: float
    max: float
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int
    cpu: float  # seconds of the target's process
    db_cpu: float  # seconds of PostgreSQL and Redis

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def us_per_request(self) -> float:
        return self.cpu / max(self.requests, 1) * 1e6

    @property
    def db_us_per_request(self) -> float:
        return self.db_cpu / max(self.requests, 1) * 1e6


def ensure_wrk() -> str:
    """The path of ``wrk``, installed with apt (the Debian package) when missing."""
    return ensure_debian("wrk", "wrk")


def ensure_debian(binary: str, package: str) -> str:
    """The path of ``binary``, installed with apt (Debian's ``package``) when missing."""
    found = shutil.which(binary)
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "install", "-y", "-q", package], check=True, env=env)
    found = shutil.which(binary)
    if not found:
        raise RuntimeError(f"{binary} is not installed and apt-get could not install {package}")
    return found


# A body holding this marker is sent with a number in its place that differs from one
# request to the next (and from one wrk run to the next): what a conversation's new turn
# is to the gateway.
SERIAL = "{serial}"
PER_REQUEST_LUA = """
local head, tail = [==[{head}]==], [==[{tail}]==]
local serial = os.time() * 100000  -- printed with %d: LuaJIT's tostring keeps 14 digits
request = function()
  serial = serial + 1
  return wrk.format(nil, nil, nil, head .. string.format("%d", serial) .. tail)
end
"""


def write_lua(path: Path, payload: bytes, key: str) -> Path:
    text = payload.decode()
    if "]==" in text or '"' in key or "\\" in key:
        raise ValueError("payload or key cannot be quoted for the wrk script")
    script = LUA.format(body=text.replace(SERIAL, "0"), key=key)
    if SERIAL in text:
        head, tail = text.split(SERIAL, 1)
        script += PER_REQUEST_LUA.format(head=head, tail=tail)
    path.write_text(script)
    return path


def wrk(
    binary: str, url: str, script: Path, connections: int, seconds: float
) -> tuple[float, float, float, float, int, float, int, int]:
    command = [binary, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s"]
    out = subprocess.run(
        [*command, "-s", str(script), url + "/v1/messages"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for line in out.splitlines():
        if line.startswith("WRKRESULT "):
            p50, p90, p99, top, requests, duration, status, sock = map(int, line.split()[1:])
            return (p50 / 1e3, p90 / 1e3, p99 / 1e3, top / 1e3, requests, duration / 1e6,
                    status, sock)  # fmt: skip
    raise RuntimeError(f"wrk printed no result: {out!r}")


def saturate(
    targets: list[Target],
    scripts: dict[str, Path],
    *,
    connections: int,
    seconds: float,
    rounds: int,
    cpu_seconds: Callable[[list[int]], float],
    db_pids: Callable[[], list[int]],
) -> list[Run]:
    """Every (target, kind) ``rounds`` times, the targets taking turns; one warm-up
    second each first."""
    binary = ensure_wrk()
    for script in scripts.values():
        for target in targets:
            wrk(binary, target.url, script, connections, 1)
    runs = []
    for _ in range(rounds):
        for kind, script in scripts.items():
            for target in targets:
                dbs = db_pids()
                before = cpu_seconds([target.pid])
                db_before = {pid: cpu_seconds([pid]) for pid in dbs}
                p50, p90, p99, top, requests, duration, status, sock = wrk(
                    binary, target.url, script, connections, seconds
                )
                cpu = cpu_seconds([target.pid]) - before
                # Only the processes alive throughout (a backend that exited took its
                # figure with it).
                db_after = {pid: cpu_seconds([pid]) for pid in dbs if Path(f"/proc/{pid}").exists()}
                db_cpu = sum(db_after[pid] - db_before[pid] for pid in db_after)
                runs.append(Run(target.name, kind, p50, p90, p99, top, requests, duration,
                                status, sock, cpu, db_cpu))  # fmt: skip
    return runs


def report(runs: list[Run], connections: int, seconds: float, rounds: int) -> None:
    def med(target: str, kind: str, attr: str) -> float:
        values = [getattr(r, attr) for r in runs if r.target == target and r.kind == kind]
        return statistics.median(values)

    def spread(target: str, kind: str, attr: str) -> str:
        values = [getattr(r, attr) for r in runs if r.target == target and r.kind == kind]
        return f"{min(values):.0f}-{max(values):.0f}"

    targets = list(dict.fromkeys(r.target for r in runs))
    kinds = list(dict.fromkeys(r.kind for r in runs))
    print()
    print(f"Saturation: wrk, {connections} keep-alive connections, {seconds:g} s per run, "
          f"{rounds} rounds (targets interleaved); medians of the rounds, ms")  # fmt: skip
    print()
    print("| target | kind | p50 | p90 | p99 (range) | max | p99/p50 | req/s "
          "| non-2xx / socket errors | CPU µs/req | PG+Redis CPU µs/req |")  # fmt: skip
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind in kinds:
        for target in targets:
            p50, p99 = med(target, kind, "p50"), med(target, kind, "p99")
            mine = [r for r in runs if r.target == target and r.kind == kind]
            non_2xx = f"{sum(r.non_2xx for r in mine)} / {sum(r.socket_errors for r in mine)}"
            print(
                f"| {target} | {kind} | {p50:.1f} | {med(target, kind, 'p90'):.1f} "
                f"| {p99:.1f} ({spread(target, kind, 'p99')}) | {med(target, kind, 'max'):.0f} "
                f"| {p99 / p50:.1f} | {med(target, kind, 'rps'):.0f} | {non_2xx} "
                f"| {med(target, kind, 'us_per_request'):.0f} "
                f"| {med(target, kind, 'db_us_per_request'):.0f} |"
            )
    if "bare" in targets:
        print()
        for kind in kinds:
            bare = med("bare", kind, "us_per_request")
            ratios = ", ".join(
                f"{t} {med(t, kind, 'us_per_request') / bare:.2f}x" for t in targets if t != "bare"
            )
            print(f"CPU per {kind} request against the bare relay's: {ratios}")
