"""The zero-setup path: embedded PostgreSQL and Redis, and ``alicode-gw dev`` itself.

CI runs these a second time with no DSN configured (``-m embedded``), so the session
fixtures then also come from the embedded servers.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import anthropic
import asyncpg
import pytest
import redis as sync_redis

from alicode_gw import app
from alicode_gw.config import Config
from alicode_gw.dev.embedded import EmbeddedPostgres, EmbeddedRedis, running_backends
from alicode_gw.store.backends import Backends, dev_servers_path
from tests.support.customers import reset_pool

pytestmark = pytest.mark.embedded


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_configured_servers_start_nothing(tmp_path: Path) -> None:
    config = Config(
        data_dir=tmp_path,
        database_url="postgresql://u@127.0.0.1/x",
        redis_url="redis://127.0.0.1:1/0",
    )
    with running_backends(config) as backends:
        assert backends == Backends("postgresql://u@127.0.0.1/x", "redis://127.0.0.1:1/0")
    assert list(tmp_path.iterdir()) == []


async def test_embedded_servers_are_real_and_shared(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path)
    rd = EmbeddedRedis(tmp_path)
    dsn = pg.start()
    url = rd.start()
    try:
        conn = await asyncpg.connect(dsn)
        assert (await conn.fetchval("SHOW server_version")).split(".")[0].isdigit()
        await conn.close()
        # A second user of the same data dir joins the running Redis, does not own it.
        joiner = EmbeddedRedis(tmp_path)
        assert joiner.start() == url
        joiner.stop()
        client = sync_redis.Redis.from_url(url)
        assert client.ping()
        client.close()
    finally:
        rd.stop()
        pg.stop()
    assert not rd.socket_path.exists() or not rd._answers()


async def test_gateway_fixture_backends_answer(gateway: app.Gateway, db) -> None:
    """With no DSN set (CI's second run) this runs on the embedded servers."""
    await reset_pool(db)  # health is "down" without an enabled upstream credential
    await gateway.state.keypool.refresh(reload=True)
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/v1/health") as resp:
            body = await resp.json()
    assert resp.status == 200 and body["status"] == "ok"


@pytest.mark.slow
def test_dev_command_serves_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALICODE_")}
    env.update({"ALICODE_DATA_DIR": str(tmp_path / "data"), "ALICODE_LISTEN": f"127.0.0.1:{port}"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "alicode_gw", "dev"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        deadline = time.monotonic() + 90
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            output.append(line)
            if "Press Ctrl-C to stop." in line:
                break
        text = "".join(output)
        assert f"http://127.0.0.1:{port}" in text, text
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/unknown", timeout=10)
        assert info.value.code == 404
        assert info.value.headers["request-id"].startswith("req_")
        assert b'"not_found_error"' in info.value.read()
        key = re.search(r"demo key\s+(sk-ali-\S+)", text)
        assert key, text
        client = anthropic.Anthropic(
            api_key=key.group(1), base_url=f"http://127.0.0.1:{port}", max_retries=0
        )
        with client:
            message = client.messages.create(
                model="claude-sonnet-4-6",
                max_tokens=32,
                messages=[{"role": "user", "content": "hi"}],
            )
        assert message.content[0].text
        # The banner's operator command works from any directory, on dev's databases.
        cli = re.search(r"^\s*(ALICODE_DATA_DIR=\S+) (\S+) account show", text, re.M)
        assert cli, text
        shown = subprocess.run(
            [cli.group(2), "account", "show", "--email", "demo@alicode.local", "--json"],
            env={**env, "ALICODE_DATA_DIR": cli.group(1).partition("=")[2]},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        assert '"balance_usd"' in shown.stdout
        assert dev_servers_path(tmp_path / "data").is_file()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    redis_socket = EmbeddedRedis(tmp_path / "data")
    assert not redis_socket._answers(), "dev must stop the Redis it started"
    assert not dev_servers_path(tmp_path / "data").exists()
