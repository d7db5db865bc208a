"""The access log's lines as a test reads them (the real logger, no mock)."""

from __future__ import annotations

import json
import logging


class AccessLines(logging.Handler):
    """Collects the access log's lines, decoded."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(record.getMessage()))


# A test's own HTTP clients (they log what they send at DEBUG, as a client may).
CLIENT_LOGGERS = ("anthropic", "openai", "httpx", "httpx2", "httpcore", "httpcore2")


class Capture(logging.Handler):
    """Every record of every logger of the server side, at DEBUG, fully formatted
    (arguments, exceptions, stack). Everything else in this process — the gateway,
    aiohttp, asyncpg, redis, asyncio, the mock upstream — is captured."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []
        self.client_lines = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in CLIENT_LOGGERS:
            self.client_lines += 1
            return
        self.lines.append(self.format(record))
