"""JSON text of the gateway's own records: the access line and the billing batch.

Encoded with orjson: for one access line the standard library's C encoder executes
about 66,000 instructions, orjson about 8,000 (callgrind; docs/benchmarks.md), and the
gateway writes one line and one batch element per request. For the values these
records hold the text is what the standard library writes (compact separators): ASCII
only, every other character escaped. orjson writes non-ASCII characters as they are,
and a client puts characters of its choice in a line (the model name it sent, a
percent-decoded path): DEL, C1 controls or a bidi override would show raw in a
terminal, make journald keep the line as a blob, and make a line longer in bytes than
in characters (the access log's atomic writes count characters). So a text that is not
ASCII, and what orjson refuses (a lone surrogate, an integer beyond 64 bits), is
encoded by the standard library.

Request bodies are never encoded here: they go upstream as received.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_FALLBACK = json.JSONEncoder(separators=(",", ":")).encode  # stateless


def dumps(value: Any) -> str:
    """``value`` (dicts, lists, strings, numbers, booleans, None) as compact ASCII JSON."""
    try:
        text = orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return _FALLBACK(value)
    return text if text.isascii() else _FALLBACK(value)
