"""Installing and running the coding tools customers point at the gateway (Claude Code
from npm, ``llm`` from PyPI), headless, with a home of their own and no way out but
the gateway and the package registries.

Installs are cached under ``ALICODE_TOOLS_CACHE`` (default ``data/tools-cache`` in the
checkout, which survives between runs) and pinned: a new release is taken by changing
the pin here, never silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CLAUDE_CODE = "@anthropic-ai/claude-code"
CLAUDE_CODE_VERSION = "2.1.332"  # npm view @anthropic-ai/claude-code version
LLM_VERSION = "0.36"  # pip index versions llm
INSTALL_TIMEOUT = 900
RUN_TIMEOUT = 180

# What turns off a tool's own traffic (telemetry, error reports, update checks).
QUIET_ENV = {
    "DISABLE_TELEMETRY": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_BUG_COMMAND": "1",
    "DISABLE_COST_WARNINGS": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
    "CLAUDE_CODE_DISABLE_TERMINAL_TITLE": "1",
    "DO_NOT_TRACK": "1",
    "NO_COLOR": "1",
}


def cache_dir() -> Path:
    configured = os.environ.get("ALICODE_TOOLS_CACHE")
    root = Path(__file__).resolve().parents[2] / "data" / "tools-cache"
    path = Path(configured) if configured else root
    path.mkdir(parents=True, exist_ok=True)
    return path


def need(program: str, package: str) -> str:
    """``program``'s path; missing, the test is skipped, except under CI (``CI`` set),
    where it fails: CI installs it (``.ci/run``)."""
    found = shutil.which(program)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{program} is missing (CI must install {package})")
        pytest.skip(f"{program} is not installed ({package})")
    return found


def _run(args: list[str], **kw: object) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, **kw)
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def install_claude_code() -> Path:
    """The ``claude`` executable of the pinned Claude Code, installed from npm once."""
    npm = need("npm", "Debian packages nodejs and npm")
    prefix = cache_dir() / f"claude-code-{CLAUDE_CODE_VERSION}"
    claude = prefix / "node_modules" / ".bin" / "claude"
    if not claude.exists():
        _run(
            [
                npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                "--no-save", f"{CLAUDE_CODE}@{CLAUDE_CODE_VERSION}",
            ]
        )  # fmt: skip
    return claude


def install_llm() -> Path:
    """The ``llm`` executable of the pinned ``llm``, in a virtualenv of its own (its
    dependencies are not the gateway's), installed from PyPI once."""
    venv = cache_dir() / f"llm-{LLM_VERSION}"
    llm = venv / "bin" / "llm"
    if not llm.exists():
        _run([sys.executable, "-m", "venv", str(venv)])
        _run([str(venv / "bin" / "pip"), "install", "-q", f"llm=={LLM_VERSION}"])
    return llm


@dataclass
class DeadProxy:
    """An HTTP(S) proxy that refuses everything and records what was asked of it: a
    tool's only way to any host but the gateway (loopback is exempt through
    ``NO_PROXY``). ``asked`` lists the request lines (``CONNECT host:443 ...``)."""

    asked: list[str] = field(default_factory=list)
    port: int = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            line = await asyncio.wait_for(reader.readline(), 5)
            self.asked.append(line.decode("latin-1").strip())
            writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
        writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[DeadProxy]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            await server.wait_closed()

    def env(self) -> dict[str, str]:
        url = f"http://127.0.0.1:{self.port}"
        return {
            name: value
            for upper in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
            for name, value in (
                (upper, "127.0.0.1,localhost" if upper == "NO_PROXY" else url),
                (upper.lower(), "127.0.0.1,localhost" if upper == "NO_PROXY" else url),
            )
        }


def tool_env(home: Path, proxy: DeadProxy, **more: str) -> dict[str, str]:
    """A minimal environment: PATH, a home of its own, the dead proxy, quiet flags."""
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "TMPDIR": str(home / "tmp"),
        "LANG": "C.UTF-8",
        **proxy.env(),
        **QUIET_ENV,
        **more,
    }


async def run_tool(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """Run a tool to the end (the event loop keeps serving the gateway meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def answer_texts(exchanges: Iterator[object] | list[object]) -> list[str]:
    """The text each mock answer carried (JSON bodies and SSE streams alike)."""
    texts: list[str] = []
    for ex in exchanges:
        raw = bytes(ex.response_bytes)  # type: ignore[attr-defined]
        pieces: list[str] = []
        if raw.startswith(b"{"):
            with contextlib.suppress(ValueError):
                body = json.loads(raw)
                pieces = [
                    b.get("text", "") for b in body.get("content", []) if b.get("type") == "text"
                ]
        else:
            for line in raw.decode("utf-8", "replace").splitlines():
                if line.startswith("data: ") and '"text_delta"' in line:
                    with contextlib.suppress(ValueError):
                        pieces.append(json.loads(line[6:])["delta"]["text"])
        texts.append("".join(pieces))
    return texts
