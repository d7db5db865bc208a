"""``alicode-gw dev``'s banner works as printed: its Python example and its operator CLI
run, typed in the directory it was started from, in a shell that did not activate the
virtualenv (as a new user's does)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from alicode_gw import app
from alicode_gw.dev.server import banner, command_path, installed_commands
from tests.support.customers import Customer

ROOT = Path(__file__).resolve().parents[2]


def plain_shell_env() -> dict[str, str]:
    """This environment with the interpreter's own bin directory off PATH."""
    venv_bin = str(Path(sys.executable).parent)
    path = [part for part in os.environ.get("PATH", "").split(os.pathsep) if part != venv_bin]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, "PATH": os.pathsep.join(path) or "/usr/bin:/bin"}


async def sh(command: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        command,
        cwd=ROOT,
        env=plain_shell_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def example(text: str, starts: str, ends: str) -> str:
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip().startswith(starts))
    last = next(i for i in range(first, len(lines)) if lines[i].rstrip().endswith(ends))
    return "\n".join(lines[first : last + 1]).strip()


async def test_the_printed_python_example_and_cli_run(gw: app.Gateway, customer: Customer) -> None:
    python, cli = installed_commands(ROOT)
    text = banner(gw.url, "mock", customer.key, python=python, cli=cli)
    status, out = await sh(example(text, python + " -c", ')"'))
    assert status == 0, out
    assert out.strip()  # the mock's answer
    status, out = await sh(f"{cli} price --help")
    assert status == 0 and "price" in out, out


def test_commands_are_as_typed_where_started(tmp_path: Path) -> None:
    assert command_path(tmp_path / ".venv" / "bin" / "python", tmp_path) == ".venv/bin/python"
    assert command_path(tmp_path / "tool", tmp_path) == "./tool"
    assert command_path(Path("/usr/bin/python3"), tmp_path) == "/usr/bin/python3"
