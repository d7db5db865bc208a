"""Helpers of the tests that run ``alicode-gw`` as real processes (workers, two nodes,
nginx): the environment, free ports, waiting for health, stopping, worker pids."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_env(
    database_url: str, redis_url: str, redis_prefix: str, **more: str
) -> dict[str, str]:
    """This process's environment without any ``ALICODE_*``, plus the test backends."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ALICODE_")}
    return {
        **base,
        "ALICODE_DATABASE_URL": database_url,
        "ALICODE_REDIS_URL": redis_url,
        "ALICODE_REDIS_PREFIX": redis_prefix,
        **more,
    }


def start(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[bytes]:
    """``python -m alicode_gw ARGS`` with stdout and stderr appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "alicode_gw", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def wait_serving(url: str, proc: subprocess.Popen[bytes], limit: float = 60) -> None:
    """Until ``GET /v1/health`` answers at all (200 or 503: the process serves)."""
    deadline = time.monotonic() + limit
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {proc.returncode}")
            try:
                async with session.get(url + "/v1/health") as resp:
                    if resp.status in (200, 503):
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("gateway did not start serving")


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """SIGTERM, wait, kill if it hangs; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def worker_pids(parent: int) -> set[int]:
    """The gateway worker processes (multiprocessing spawn children) of ``parent``."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = next(
            (line.split()[1] for line in status.splitlines() if line.startswith("PPid:")), ""
        )
        if ppid == str(parent) and b"spawn_main" in cmdline:
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


@dataclass(frozen=True, slots=True)
class ServeNode:
    url: str
    proc: subprocess.Popen[bytes]


@contextlib.asynccontextmanager
async def serve_nodes(
    names: tuple[str, ...],
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    **more: str,
) -> AsyncIterator[list[ServeNode]]:
    """One ``alicode-gw serve`` process per name, each on a free port with its own data
    dir and log under ``tmp_path``, sharing the backends; all serving when yielded,
    stopped afterwards."""
    started: list[ServeNode] = []
    try:
        for name in names:
            port = free_port()
            env = gateway_env(
                database_url,
                redis_url,
                redis_prefix,
                ALICODE_LISTEN=f"127.0.0.1:{port}",
                ALICODE_DATA_DIR=str(tmp_path / name),
                ALICODE_LOG_LEVEL="WARNING",
                **more,
            )
            proc = start(env, "serve", log=tmp_path / f"{name}.log")
            started.append(ServeNode(f"http://127.0.0.1:{port}", proc))
        for node in started:
            await wait_serving(node.url, node.proc)
        yield started
    finally:
        for node in started:
            await asyncio.to_thread(stop, node.proc)
