"""Fixtures of the Files API tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

# The test's own HTTP clients (they log what they send at DEBUG, as a client may).
CLIENT_LOGGERS = ("anthropic", "openai", "httpx", "httpx2", "httpcore", "httpcore2")


class _Capture(logging.Handler):
    """Every record of the server side at DEBUG, formatted with its arguments."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] not in CLIENT_LOGGERS:
            self.lines.append(self.format(record))


@pytest.fixture
def captured() -> Iterator[list[str]]:
    """The log lines of every logger (root and existing ones) while the test runs."""
    lines: list[str] = []
    handler = _Capture(lines)
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    levels = [(logger, logger.level) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
    try:
        yield lines
    finally:
        for logger, level in levels:
            logger.removeHandler(handler)
            logger.setLevel(level)
