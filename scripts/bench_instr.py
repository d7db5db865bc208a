"""scripts/bench-instr: CPU instructions per request, counted by valgrind's callgrind.

Time-based CPU figures (scripts/bench) move by 10-20 % from one run to the next on a
shared machine; an instruction count does not move with the machine's load, so two
versions of the gateway can be compared run against run. It counts user-space work
only (system calls are not in it) and says nothing about cache misses.

Each target runs alone under callgrind with instrumentation off, against the mock
upstream, PostgreSQL and Redis that scripts/bench uses (``benchmark.bench_servers``):
``wrk`` warms it up; instructions are counted for ``--seconds`` with no request (the
gateway's background loops: lease and share ticks, the access log's flush, the pool's
refresh), then for ``--seconds`` while ``wrk`` sends requests at ``--connections``; the
second count less the first, divided by the requests ``wrk`` completed. Targets:
the gateway of this checkout, ``--checkout NAME=DIR`` (another checkout, the same
database schema) and the bare relay (``scripts/bare_relay.py``), for ``--rounds``
rounds in turn.

At concurrency 1 (the default) every settlement and every limits finish is a batch of
its own, and the figure repeats within ~2 %. With more connections, batches form by
timing, which under valgrind's slowdown is not the timing of a real run: the figure
moves by a few percent.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from scripts import benchmark, saturation

WARMUP_SECONDS = 10.0
START_TIMEOUT = 300.0  # a checkout starting under valgrind (tiktoken's table: ~20 s)


def ensure_valgrind() -> str:
    """The path of ``valgrind`` (with ``callgrind_control``), installed with apt when
    missing."""
    return saturation.ensure_debian("valgrind", "valgrind")


def instructions(out_prefix: Path) -> int:
    """The instructions of every dump callgrind wrote under ``out_prefix``."""
    total = 0
    for path in out_prefix.parent.glob(out_prefix.name + "*"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
                break
    return total


def measure(
    servers: benchmark.Servers,
    name: str,
    command: list[str],
    cwd: Path | None,
    script: Path,
    args: argparse.Namespace,
) -> tuple[int, float]:
    """(requests, instructions per request) of one target started with ``command``."""
    port = benchmark.free_port()
    out = servers.work / f"callgrind.{name}.{time.monotonic_ns()}"
    extra = {"ALICODE_LISTEN": f"127.0.0.1:{port}"}
    if cwd is not None:
        extra["PYTHONPATH"] = str(cwd)
    valgrind = [ensure_valgrind(), "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={out}"]  # fmt: skip
    command = [part.replace("{port}", str(port)) for part in command]
    pid = servers.spawn(*valgrind, *command, extra=extra, cwd=cwd)
    proc = servers.procs[-1]
    try:
        benchmark.wait_port(port, START_TIMEOUT)
        url = f"http://127.0.0.1:{port}"
        wrk = saturation.ensure_wrk()
        saturation.wrk(wrk, url, script, args.connections, WARMUP_SECONDS)
        control = shutil.which("callgrind_control") or "callgrind_control"

        def counted(work: Callable[[], object]) -> int:
            """The instructions ``work`` took (callgrind on during it, then a dump)."""
            before = instructions(out)
            subprocess.run([control, "-i", "on", str(pid)], check=True, capture_output=True)
            work()
            subprocess.run([control, "-i", "off", str(pid)], check=True, capture_output=True)
            subprocess.run([control, "-d", str(pid)], check=True, capture_output=True)
            return instructions(out) - before

        idle = counted(lambda: time.sleep(args.seconds))
        results: list[tuple] = []
        loaded = counted(
            lambda: results.append(saturation.wrk(wrk, url, script, args.connections, args.seconds))
        )
        requests, failed = results[0][4], results[0][6] + results[0][7]
    finally:
        proc.terminate()
        proc.wait(60)
        servers.procs.remove(proc)
    if failed or not requests:
        raise RuntimeError(f"{name}: {failed} failed answers of {requests}")
    return requests, (loaded - idle) / requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=("json", "sse", "agent"), default="json")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--checkout", action="append", default=[], metavar="NAME=DIR",
        help="another checkout's gateway, measured in the same rounds",
    )  # fmt: skip
    parser.add_argument("--no-bare", action="store_true", help="leave out the bare relay")
    args = parser.parse_args()
    gateway = [sys.executable, "-m", "alicode_gw", "serve"]
    targets: list[tuple[str, list[str], Path | None]] = [("gateway", gateway, None)]
    for spec in args.checkout:
        name, _, directory = spec.partition("=")
        targets.append((name, gateway, Path(directory).resolve()))
    if not args.no_bare:
        relay = [sys.executable, "-m", "scripts.bare_relay", "--port", "{port}",
                 "--upstream", "{upstream}", "--key", benchmark.DEFAULT_MOCK_KEY]  # fmt: skip
        targets.append(("bare", relay, None))
    payloads = {
        "json": benchmark.body(False),
        "sse": benchmark.body(True, benchmark.STREAM_WORDS),
        "agent": benchmark.agent_body(),
    }
    results: dict[str, list[float]] = {name: [] for name, _, _ in targets}
    with benchmark.bench_servers("instr", {}) as servers:
        upstream = f"http://127.0.0.1:{servers.mock_port}"
        script = saturation.write_lua(
            servers.work / f"{args.kind}.lua", payloads[args.kind], servers.key
        )
        for number in range(args.rounds):
            for name, command, cwd in targets:
                command = [part.replace("{upstream}", upstream) for part in command]
                requests, per_request = measure(servers, name, command, cwd, script, args)
                results[name].append(per_request)
                print(f"round {number + 1}: {name}: {requests} requests, "
                      f"{per_request / 1e6:.3f} M instructions each", flush=True)  # fmt: skip
    bare = min(results["bare"]) if "bare" in results else None
    print(f"\nInstructions per {args.kind} request (callgrind), concurrency "
          f"{args.connections}, {args.seconds:g} s per target and round\n")  # fmt: skip
    print("| target | M instructions per request (rounds) | ÷ bare relay |")
    print("| --- | --- | --- |")
    for name, values in results.items():
        shown = ", ".join(f"{v / 1e6:.3f}" for v in values)
        ratio = f"{min(values) / bare:.2f}x" if bare else "-"
        print(f"| {name} | {shown} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
