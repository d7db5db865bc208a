"""The mock upstream's prompt cache and token counting (pure, no I/O): how many input
tokens a request has, and which of them a cache group reads from its prompt cache or
writes into it, by the API's rules (see :class:`PromptCache`)."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_BREAKPOINTS",
    "CacheUsage",
    "PromptCache",
    "canonical_json",
    "count_breakpoints",
    "count_input_tokens",
]

_BASE_INPUT_TOKENS = 3


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _segments(body: dict[str, Any]) -> list[tuple[Any, dict[str, Any] | None]]:
    """Prompt pieces in cache order (tools, system, messages), each with its cache_control."""
    return [(item, cc) for item, cc, _ in _pieces(body)]


def _pieces(body: dict[str, Any]) -> list[tuple[Any, dict[str, Any] | None, bool]]:
    """:func:`_segments` with whether each piece is a block (a tool, a system block, a
    message's content block or string content) rather than a message's role, which
    is part of the prompt but not a block boundary the cache looks back over."""
    out: list[tuple[Any, dict[str, Any] | None, bool]] = []

    def add(item: Any) -> None:
        if isinstance(item, dict) and "cache_control" in item:
            cc = item["cache_control"]
            rest = {k: v for k, v in item.items() if k != "cache_control"}
            out.append((rest, cc if isinstance(cc, dict) else None, True))
        else:
            out.append((item, None, True))

    tools = body.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            add(tool)
    system = body.get("system")
    if isinstance(system, list):
        for block in system:
            add(block)
    elif system:
        add(system)
    for msg in body.get("messages") or ():
        content = msg.get("content") if isinstance(msg, dict) else msg
        role = msg.get("role") if isinstance(msg, dict) else None
        if isinstance(content, list):
            out.append((role, None, False))
            for block in content:
                add(block)
        else:
            add({"role": role, "content": content})
    return out


def _seg_tokens(item: Any) -> int:
    return max(1, math.ceil(len(canonical_json(item)) / 4))


MAX_BREAKPOINTS = 4


def count_breakpoints(body: dict[str, Any]) -> int:
    """``cache_control`` breakpoints of a request (a top-level one, automatic caching,
    takes one of the :data:`MAX_BREAKPOINTS` slots too)."""
    marked = sum(1 for _, cc in _segments(body) if cc is not None)
    return marked + isinstance(body.get("cache_control"), dict)


def count_input_tokens(body: dict[str, Any]) -> int:
    """Deterministic prompt size: about one token per 4 bytes of canonical JSON."""
    return _BASE_INPUT_TOKENS + sum(_seg_tokens(item) for item, _ in _segments(body))


@dataclass(frozen=True, slots=True)
class CacheUsage:
    input_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    ephemeral_5m_input_tokens: int = 0
    ephemeral_1h_input_tokens: int = 0


# Smallest cacheable prefix, by model (the API's table): a shorter prefix marked with
# ``cache_control`` is processed without caching, and no error.
_MIN_CACHEABLE: tuple[tuple[str, int], ...] = (
    ("claude-opus-4-5", 4096),
    ("claude-opus-4-6", 4096),
    ("claude-opus-4-7", 4096),
    ("claude-haiku-4-5", 4096),
    ("claude-mythos", 4096),
    ("claude-3-haiku", 2048),
    ("claude-3-5-haiku", 2048),
    ("claude-haiku-3", 2048),
)
DEFAULT_MIN_CACHEABLE = 1024  # Sonnet 4.x, Opus 4 / 4.1 / 4.8 and the rest
LOOKBACK_BLOCKS = 20  # a breakpoint finds a cached prefix at most this many blocks back
TTL_5M = 300.0
TTL_1H = 3600.0


def min_cacheable_tokens(model: Any) -> int:
    """The API's minimum cacheable prompt length for ``model``."""
    name = str(model)
    for prefix, tokens in _MIN_CACHEABLE:
        if name.startswith(prefix):
            return tokens
    return DEFAULT_MIN_CACHEABLE


class PromptCache:
    """One cache group's prompt cache (an organization's or workspace's), as the API
    keeps it.

    Breakpoints are the ``cache_control`` marks on tools, system blocks and message
    blocks (cache order: tools, system, messages), plus the end of the prompt when the
    request has a top-level ``cache_control`` (automatic caching). A breakpoint whose
    prefix is shorter than the model's minimum is not cached. Each breakpoint looks for
    a cached prefix ending at it or up to :data:`LOOKBACK_BLOCKS` blocks before it; the
    longest one found is read, the tokens from there to the last breakpoint are
    written, each span taking the ``ttl`` of the breakpoint that ends it ("1h", else 5
    minutes). An entry lives its TTL from its last use (a hit refreshes it). ``clock``
    is the time source (monotonic seconds; tests pass their own).
    """

    def __init__(self, limit: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._clock = clock
        self._seen: OrderedDict[bytes, tuple[float, float]] = OrderedDict()  # -> expiry, ttl

    def _alive(self, key: bytes, now: float) -> bool:
        entry = self._seen.get(key)
        if entry is None:
            return False
        if entry[0] <= now:
            del self._seen[key]
            return False
        return True

    def usage(self, body: dict[str, Any]) -> CacheUsage:
        total = count_input_tokens(body)
        minimum = min_cacheable_tokens(body.get("model"))
        hasher = hashlib.sha256(str(body.get("model")).encode())
        cumulative = 0
        bounds: list[tuple[bytes, int]] = []  # prefix key and tokens at each block's end
        points: list[tuple[int, int, float]] = []  # (bound index, tokens so far, ttl)
        for item, cc, block in _pieces(body):
            hasher.update(canonical_json(item))
            hasher.update(b"\x1e")
            cumulative += _seg_tokens(item)
            if not block:  # a message's role: hashed, but no boundary of its own
                continue
            bounds.append((hasher.copy().digest(), cumulative))
            if cc is not None:
                points.append((len(bounds) - 1, cumulative, _ttl(cc)))
        auto = body.get("cache_control")  # automatic caching: a breakpoint at the end
        if isinstance(auto, dict) and cumulative and (not points or points[-1][1] != cumulative):
            points.append((len(bounds) - 1, cumulative, _ttl(auto)))
        points = [p for p in points if p[1] >= minimum]
        if not points:
            return CacheUsage(input_tokens=total)
        now = self._clock()
        read, hit = 0, None
        for at, _, _ in points:
            for i in range(at, max(at - LOOKBACK_BLOCKS, -1), -1):
                key, upto = bounds[i]
                if upto > read and self._alive(key, now):
                    read, hit = upto, key
                    break
        if hit is not None:  # a hit refreshes the entry
            ttl = self._seen[hit][1]
            self._seen[hit] = (now + ttl, ttl)
            self._seen.move_to_end(hit)
        m5 = h1 = 0
        prev = read
        for at, upto, ttl in points:
            if upto <= read:
                continue
            if ttl == TTL_1H:
                h1 += upto - prev
            else:
                m5 += upto - prev
            prev = upto
            key = bounds[at][0]
            self._seen[key] = (now + ttl, ttl)
            self._seen.move_to_end(key)
        while len(self._seen) > self._limit:
            self._seen.popitem(last=False)
        return CacheUsage(
            input_tokens=total - max(read, points[-1][1]),
            cache_creation_input_tokens=m5 + h1,
            cache_read_input_tokens=read,
            ephemeral_5m_input_tokens=m5,
            ephemeral_1h_input_tokens=h1,
        )


def _ttl(cc: dict[str, Any]) -> float:
    return TTL_1H if cc.get("ttl") == "1h" else TTL_5M
