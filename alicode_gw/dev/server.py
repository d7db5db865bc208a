"""``alicode-gw dev``: the zero-setup local gateway behind the README's first command.

Embedded (or configured) PostgreSQL and Redis, migrations, the mock upstream unless
real upstream credentials are configured, a demo account and key, then serve until
Ctrl-C and stop everything it started. While it serves, ``<data dir>/dev-servers.env``
names its PostgreSQL and Redis: the operator CLI run with the same ``ALICODE_DATA_DIR``
and no DSN uses them (the banner prints that command).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import shlex
import sys
import time
from pathlib import Path

import asyncpg
import uvloop

from alicode_gw import app
from alicode_gw.config import Config
from alicode_gw.dev.embedded import running_backends
from alicode_gw.dev.mock_upstream import DEFAULT_MOCK_KEY, MockUpstream
from alicode_gw.identity import accounts
from alicode_gw.money import ledger
from alicode_gw.store import migrate
from alicode_gw.store.backends import Backends, dev_servers_path, write_dev_servers
from alicode_gw.upstream import credentials

log = logging.getLogger(__name__)

DEMO_EMAIL = "demo@alicode.local"
DEMO_TOPUP_NANOS = 100 * 1_000_000_000  # $100 of demo credit, once


def cli_command(data_dir: Path) -> str:
    """How to run the operator CLI against this gateway's servers, from any directory."""
    executable = Path(sys.executable).parent / "alicode-gw"
    program = str(executable) if executable.exists() else f"{sys.executable} -m alicode_gw"
    return f"ALICODE_DATA_DIR={shlex.quote(str(data_dir.resolve()))} {program}"


def command_path(path: Path, cwd: Path) -> str:
    """``path`` as a command typed in ``cwd``: relative (``.venv/bin/python``) when it
    is below it, else absolute."""
    if not path.is_relative_to(cwd):
        return str(path)
    relative = path.relative_to(cwd)
    return str(relative) if relative.parent != Path() else f"./{relative}"


def banner(
    base_url: str, upstream: str, key: str, *, python: str = "python", cli: str = "alicode-gw"
) -> str:
    """What ``alicode-gw dev`` prints once it listens. ``python`` and ``cli`` are the
    commands of this installation (its interpreter, which has the ``anthropic``
    package of the dev extra, and its ``alicode-gw``), as typed where it was started."""
    return f"""
alicode_gw is running.

  base URL   {base_url}
  upstream   {upstream}
  demo key   {key}   (account {DEMO_EMAIL}, shown once)

  curl {base_url}/v1/messages \\
    -H 'x-api-key: {key}' -H 'anthropic-version: 2023-06-01' \\
    -H 'content-type: application/json' \\
    -d '{{"model":"claude-sonnet-4-6","max_tokens":64,\
         "messages":[{{"role":"user","content":"hi"}}]}}'

  {python} -c "import anthropic; c = anthropic.Anthropic(api_key='{key}', base_url='{base_url}'); \\
print(c.messages.create(model='claude-sonnet-4-6', max_tokens=64, \\
messages=[{{'role': 'user', 'content': 'hi'}}]).content[0].text)"

  Claude Code: ANTHROPIC_BASE_URL={base_url} ANTHROPIC_API_KEY={key} claude

  dashboard    {base_url}/dashboard/register (a new account of your own; the demo
               account has no password: `{cli} account password-link --email {DEMO_EMAIL}`)

  operator CLI on this gateway's databases (while it runs):
  {cli} account show --email {DEMO_EMAIL}

Press Ctrl-C to stop.
""".rstrip()


def installed_commands(cwd: Path) -> tuple[str, str]:
    """(python, alicode-gw) of the running installation, as typed in ``cwd``."""
    python = Path(sys.executable)
    cli = python.parent / "alicode-gw"
    return command_path(python, cwd), command_path(cli, cwd) if cli.exists() else "alicode-gw"


async def prepare_demo(database_url: str, upstream_keys: tuple[str, ...]) -> str:
    """The demo account (topped up once), a fresh demo key, and the upstream pool:
    the mock's credential, or the configured real ones (the mock's is then disabled)."""
    conn = await asyncpg.connect(database_url)
    try:
        account = await accounts.find_account(conn, DEMO_EMAIL)
        if account is None:
            account = await accounts.create_account(conn, DEMO_EMAIL)
            await ledger.topup(conn, DEMO_EMAIL, DEMO_TOPUP_NANOS, "dev demo balance")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        _, key = await accounts.create_key(conn, account.id, f"dev-{stamp}")
        await credentials.ensure_credentials(conn, list(upstream_keys) or [DEFAULT_MOCK_KEY])
        if upstream_keys:
            await credentials.disable_credential(
                conn, DEFAULT_MOCK_KEY, "dev: real upstream in use"
            )
        return key
    finally:
        await conn.close()


CACHE_SECRET_FILE = "response-cache.secret"


def with_cache_secret(config: Config) -> Config:
    """With the response cache on and no secret configured, the one kept in the data
    dir (generated on first use, readable by its owner only)."""
    if not config.response_cache or config.response_cache_secret:
        return config
    path = config.data_dir / CACHE_SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(secrets.token_urlsafe(48) + "\n")
    secret = path.read_text(encoding="ascii").strip()
    return dataclasses.replace(config, response_cache_secret=secret)


async def _run(config: Config, backends: Backends) -> None:
    config = with_cache_secret(config)
    applied = await migrate.run(backends.database_url)
    for name in applied:
        log.info("applied migration %s", name)
    demo_key = await prepare_demo(backends.database_url, config.upstream_keys)
    mock: MockUpstream | None = None
    if not config.upstream_keys:
        mock = MockUpstream([DEFAULT_MOCK_KEY])
        await mock.start()
        config = dataclasses.replace(config, upstream_url=mock.url)
    upstream = f"{config.upstream_url} (mock)" if mock else config.upstream_url
    python, _ = installed_commands(Path.cwd())
    cli = cli_command(config.data_dir)
    write_dev_servers(config.data_dir, backends)
    try:
        await app.run_until_signalled(
            config,
            backends,
            lambda gateway: print(
                banner(gateway.url, upstream, demo_key, python=python, cli=cli), flush=True
            ),
        )
    finally:
        dev_servers_path(config.data_dir).unlink(missing_ok=True)
        if mock is not None:
            await mock.close()


def run(config: Config) -> int:
    with running_backends(config) as backends:
        uvloop.run(_run(config, backends))
    return 0
