"""Process logging: plain lines on stderr, access lines through the access log's buffer."""

from __future__ import annotations

import logging
import sys

from alicode_gw.observe import accesslog


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    accesslog.configure(sys.stderr)
    # pgserver narrates every initdb/pg_ctl step at INFO; keep its warnings only.
    logging.getLogger("pgserver").setLevel(max(logging.WARNING, logging.getLevelName(level)))
