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
