"""Production processes start only on the configured servers and an address of their
own: no DSN is a one-line exit 2 (embedded servers belong to ``alicode-gw dev``), and a
port another process listens on is "address already in use"."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from alicode_gw.store.backends import Backends, write_dev_servers
from tests.support import procs
from tests.support.cli import run_cli

BOTH = "ALICODE_DATABASE_URL and ALICODE_REDIS_URL"


@pytest.mark.parametrize(
    "command", [("serve",), ("serve", "--workers", "2"), ("worker",)], ids=" ".join
)
def test_no_dsn_is_one_line_pointing_at_dev(command: tuple[str, ...], tmp_path: Path) -> None:
    result = run_cli(*command, env={"ALICODE_DATA_DIR": str(tmp_path / "data")}, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"alicode-gw: {BOTH}: not set"), lines[0]
    assert "alicode-gw dev" in lines[0]
    assert not (tmp_path / "data").exists(), "no embedded server may be started"


def test_one_missing_dsn_is_named_alone(tmp_path: Path) -> None:
    env = {"ALICODE_DATABASE_URL": "postgresql://u@127.0.0.1:1/x"}
    result = run_cli("serve", env=env, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("alicode-gw: ALICODE_REDIS_URL: not set"), lines[0]


def test_operator_command_outside_a_dev_data_dir_fails_naming_it(tmp_path: Path) -> None:
    """Run from another directory, the CLI must not make an empty database of its own."""
    result = run_cli("account", "show", "--email", "a@example.com", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert BOTH in lines[0]
    assert f"ALICODE_DATA_DIR={tmp_path.resolve() / 'data'}" in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []


def test_operator_command_uses_the_running_dev_servers(
    scratch_database_url: str, redis_url: str, tmp_path: Path
) -> None:
    """``alicode-gw dev`` names its servers in ``<data dir>/dev-servers.env``; the CLI
    with that ``ALICODE_DATA_DIR`` and no DSN works on them."""
    data_dir = tmp_path / "dev-data"
    write_dev_servers(data_dir, Backends(scratch_database_url, redis_url))
    result = run_cli("migrate", "--json", env={"ALICODE_DATA_DIR": str(data_dir)})
    assert result.returncode == 0, result.stderr
    assert '"applied": [' in result.stdout and '"applied": []' not in result.stdout
    email = f"dev-{secrets.token_hex(3)}@example.com"
    created = run_cli("account", "create", "--email", email, cwd=tmp_path.parent, env={
        "ALICODE_DATA_DIR": str(data_dir)
    })  # fmt: skip
    assert created.returncode == 0, created.stderr

    async def exists() -> bool:
        conn = await asyncpg.connect(scratch_database_url)
        try:
            return bool(await conn.fetchval("SELECT 1 FROM accounts WHERE email = $1", email))
        finally:
            await conn.close()

    assert asyncio.run(exists())


def test_a_configured_dsn_wins_over_the_dev_servers(tmp_path: Path) -> None:
    write_dev_servers(tmp_path, Backends("postgresql://dev@127.0.0.1:1/x", "redis://dev:1/0"))
    env = {"ALICODE_DATA_DIR": str(tmp_path), "ALICODE_DATABASE_URL": "postgresql://u@h/x"}
    result = run_cli("migrate", env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("alicode-gw: ALICODE_REDIS_URL: not set"), result.stderr


@pytest.fixture
def reuse_port_listener() -> socket.socket:
    """A listener with SO_REUSEPORT, as every gateway of the previous release had."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    with sock:
        yield sock


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_busy_port_is_address_in_use(
    workers: str,
    reuse_port_listener: socket.socket,
    database_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    port = reuse_port_listener.getsockname()[1]
    env = procs.gateway_env(
        database_url,
        redis_url,
        f"busy-{secrets.token_hex(3)}:",
        ALICODE_LISTEN=f"127.0.0.1:{port}",
        ALICODE_DATA_DIR=str(tmp_path),
    )
    result = run_cli("serve", "--workers", workers, env=env)
    assert result.returncode != 0
    assert f"alicode-gw: ALICODE_LISTEN: 127.0.0.1:{port}: address already in use" in (
        result.stderr.splitlines()
    ), result.stderr
    assert "Traceback" not in result.stderr


async def test_a_second_serve_on_the_same_port_exits(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    port = procs.free_port()
    env = procs.gateway_env(
        database_url,
        redis_url,
        f"second-{secrets.token_hex(3)}:",
        ALICODE_LISTEN=f"127.0.0.1:{port}",
        ALICODE_DATA_DIR=str(tmp_path / "first"),
    )
    first = procs.start(env, "serve", log=tmp_path / "first.log")
    try:
        await procs.wait_serving(f"http://127.0.0.1:{port}", first)
        env["ALICODE_DATA_DIR"] = str(tmp_path / "second")
        second = await asyncio.to_thread(run_cli, "serve", env=env)
        assert second.returncode != 0
        assert "address already in use" in second.stderr, second.stderr
        assert first.poll() is None
    finally:
        assert await asyncio.to_thread(procs.stop, first) == 0


def test_dev_without_the_dev_extra_says_how_to_get_it(tmp_path: Path) -> None:
    """A production install has no pgserver: ``alicode-gw dev`` says what to install."""
    code = (
        "import sys; sys.modules['pgserver'] = None\n"  # as if it were not installed
        "from alicode_gw.cli import main; sys.exit(main(['dev']))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALICODE_")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "ALICODE_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "pip install 'alicode_gw[dev]'" in lines[0], lines[0]


def test_help_says_where_the_commands_find_their_servers() -> None:
    text = " ".join(run_cli("--help").stdout.split())
    assert "serve and worker need ALICODE_DATABASE_URL and ALICODE_REDIS_URL" in text
    assert "<ALICODE_DATA_DIR>/dev-servers.env" in text
