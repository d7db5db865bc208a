"""``alicode-gw dev``: the zero-setup local gateway behind the README's first command.

Embedded (or configured) PostgreSQL and Redis, migrations, the mock upstream unless
real upstream credentials are configured, a demo account and key, then serve until
Ctrl-C and stop everything it started.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal

import uvloop

from alicode_gw import app, migrate
from alicode_gw.backends import Backends, start_backends
from alicode_gw.config import Config
from alicode_gw.mock_upstream import DEFAULT_MOCK_KEY, MockUpstream

log = logging.getLogger(__name__)


def banner(base_url: str, upstream: str, demo_key: str | None) -> str:
    key = demo_key or "(no demo key: accounts are not available yet)"
    return f"""
alicode_gw is running.

  base URL   {base_url}
  upstream   {upstream}
  demo key   {key}

  curl {base_url}/v1/messages \\
    -H 'x-api-key: {key}' -H 'anthropic-version: 2023-06-01' \\
    -H 'content-type: application/json' \\
    -d '{{"model":"claude-sonnet-4-5","max_tokens":64,\
         "messages":[{{"role":"user","content":"hi"}}]}}'

  python -c "import anthropic; c = anthropic.Anthropic(api_key='{key}', base_url='{base_url}'); \\
print(c.messages.create(model='claude-sonnet-4-5', max_tokens=64, \\
messages=[{{'role': 'user', 'content': 'hi'}}]).content[0].text)"

Press Ctrl-C to stop.
""".rstrip()


async def _run(config: Config, backends: Backends) -> None:
    applied = await migrate.run(backends.database_url)
    for name in applied:
        log.info("applied migration %s", name)
    mock: MockUpstream | None = None
    if not config.upstream_keys:
        mock = MockUpstream([DEFAULT_MOCK_KEY])
        await mock.start()
        config = dataclasses.replace(config, upstream_url=mock.url)
    state = await app.open_state(config, backends)
    gateway = app.Gateway(state)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await gateway.start()
        upstream = f"{config.upstream_url} (mock)" if mock else config.upstream_url
        print(banner(gateway.url, upstream, None), flush=True)
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await gateway.stop()
        await app.close_state(state)
        if mock is not None:
            await mock.close()


def run(config: Config) -> int:
    backends = start_backends(config)
    try:
        uvloop.run(_run(config, backends))
    finally:
        backends.stop()
    return 0
