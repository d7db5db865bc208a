"""JSON text of the gateway's own records: the access line and the billing batch.

Encoded with orjson: for one access line the standard library's C encoder executes
about 66,000 instructions, orjson about 8,000 (callgrind; docs/benchmarks.md), and the
gateway writes one line and one batch element per request. The output is compact JSON
with non-ASCII characters as UTF-8. What orjson refuses (a string with a lone
surrogate, which a client's JSON may carry in a model name; an integer beyond 64 bits)
is encoded by the standard library instead, with such characters escaped.

Request bodies are never encoded here: they go upstream as received.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_FALLBACK = json.JSONEncoder(separators=(",", ":")).encode  # stateless


def dumps(value: Any) -> str:
    """``value`` (dicts, lists, strings, numbers, booleans, None) as compact JSON."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return _FALLBACK(value)
