"""Cache-affine routing, the pure core: which credentials a request prefers (no I/O).

The upstream's prompt cache is isolated per organization or workspace (a *cache
group*): a prefix cached through one group is a miss through another. A conversation
therefore goes where its prefix was cached, chosen by two pure functions:

:func:`affinity_key`
    16 bytes naming a request's cacheable prefix: the account, the model (after the
    alias) and the prefix up to and including the first ``cache_control`` breakpoint in
    the API's cache order (tools → system → messages) — in the messages, no further
    than the first user message, so that a breakpoint kept on the newest message (moved
    forward every turn) leaves the key alone; without a breakpoint, the system prompt
    and the first user message (a string content counts as its one text block). None
    when the request has neither (such a request is spread by weighted round-robin).
    The bytes are hashed (xxh3-128, account first) and never kept. What is hashed:
    every text of the prefix in full; of the other pieces what identifies them (a
    tool's name, a tool call's id and name, a tool result's id, an image's or
    document's media type, size and first bytes). Equal prefixes therefore always give
    equal keys; two prefixes that differ only inside a tool's schema or an image share
    a key, which only puts them on the same credential. That keeps the key's cost to
    the hashing of the texts (a few µs for 200 KB) instead
    of re-encoding the JSON (a millisecond and more for a large body).

:class:`Rendezvous`
    Weighted rendezvous (highest random weight) hashing: each candidate scores
    ``weight / -ln(u)`` with ``u`` in (0, 1) from the hash of (key, candidate), and the
    highest score wins. Every node computes the same order from the same table without
    sharing state; a candidate that leaves moves only the keys it held, each to its own
    next choice (and they return when it does). Groups are ranked first (weighted by
    the sum of their members' weights), then the credentials inside each group, so a
    conversation whose credential is unavailable moves to another credential of the
    same cache group, where its cache still is, before it leaves the group.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import xxhash

__all__ = ["Candidate", "Rendezvous", "affinity_key", "limited_for"]

_SEP = b"\x1e"
_LONG = 4096  # bytes of a text past which its own digest is fed to the key's hash
_HEAD = 64  # leading characters of a large non-text value (image data...) that are hashed
_TWO52 = float(2**52)


# ---------------------------------------------------------------- the key


def _text(h: Any, value: Any) -> None:
    """A string in full; anything else by its repr (small scalars)."""
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        # A long text's own digest (one-shot hashing is twice the streaming speed).
        h.update(xxhash.xxh3_128_digest(data) if len(data) > _LONG else data)
    elif value is not None:
        h.update(repr(value).encode())
    h.update(_SEP)


def _source(h: Any, source: Any) -> None:
    """An image's or document's source: kind, media type, size and first bytes."""
    if not isinstance(source, dict):
        _text(h, source)
        return
    for name in ("type", "media_type", "url", "file_id"):
        _text(h, source.get(name))
    data = source.get("data")
    if isinstance(data, str):
        _text(h, len(data))
        _text(h, data[:_HEAD])
    elif isinstance(data, list):  # a document's content blocks
        for block in data:
            _block(h, block)


def _block(h: Any, block: Any) -> None:
    """One content block (or a plain string)."""
    if not isinstance(block, dict):
        _text(h, block)
        return
    kind = block.get("type")
    _text(h, kind)
    if "text" in block:
        _text(h, block["text"])
    elif kind in ("thinking", "redacted_thinking"):
        _text(h, block.get("signature") or block.get("data"))
    elif "source" in block:
        _source(h, block["source"])
    for name in ("id", "name", "tool_use_id"):  # tool calls and their results
        if name in block:
            _text(h, block[name])
    content = block.get("content")
    if isinstance(content, list):
        for inner in content:
            _block(h, inner)
    elif content is not None:
        _text(h, content)


def _content(h: Any, content: Any, upto: int | None = None) -> None:
    if isinstance(content, list):
        for block in content if upto is None else content[: upto + 1]:
            _block(h, block)
    elif isinstance(content, str):  # the same as its one text block (what the API sees)
        _text(h, "text")
        _text(h, content)
    else:
        _text(h, content)


def _marked(item: Any) -> bool:
    return isinstance(item, dict) and isinstance(item.get("cache_control"), dict)


def _first_marked(items: Sequence[Any]) -> int | None:
    for i, item in enumerate(items):
        if _marked(item):
            return i
    return None


def _tool_names(tools: Sequence[Any]) -> tuple[str, int | None]:
    """The tools by name (unique in a request) up to the first one marked with
    ``cache_control``, and that one's index (None: no tool is marked). One pass: a
    coding agent sends dozens of tools on every request."""
    names: list[str] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            names.append(repr(tool))
            continue
        names.append(str(tool.get("name")))
        if "cache_control" in tool and isinstance(tool["cache_control"], dict):
            return "\x1e".join(names), i
    return "\x1e".join(names), None


def affinity_key(account: int | str, model: str, payload: dict[str, Any]) -> bytes | None:
    """The request's affinity key (see the module docstring), or None."""
    tools = payload.get("tools")
    tools = tools if isinstance(tools, list) else ()
    system = payload.get("system")
    blocks = system if isinstance(system, list) else ()
    messages = payload.get("messages")
    messages = messages if isinstance(messages, list) else ()
    h = xxhash.xxh3_128()
    _text(h, str(account))
    _text(h, model)
    names, at = _tool_names(tools)
    _text(h, names)
    if at is not None:
        return h.digest()
    at = _first_marked(blocks)
    if at is not None:
        _content(h, blocks, at)
        return h.digest()
    _content(h, system)
    first_user: int | None = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        at = _first_marked(content) if isinstance(content, list) else None
        if at is not None:
            # The prefix up to the breakpoint, but no further than the first user
            # message: a client whose only breakpoint is on its newest message moves
            # it every turn, and the conversation must keep its key.
            if first_user is None or first_user == i:
                _content_upto_message(h, messages, i, at)
            else:
                _content_upto_message(h, messages, first_user, None)
            return h.digest()
        if first_user is None and message.get("role") == "user":
            first_user = i
    # No breakpoint: the system prompt and the first user message.
    if not system and first_user is None:
        return None
    h = xxhash.xxh3_128()  # restart: without a breakpoint the tools do not count
    _text(h, str(account))
    _text(h, model)
    _content(h, system)
    if first_user is not None:
        _content(h, messages[first_user].get("content"))
    return h.digest()


def _content_upto_message(h: Any, messages: Sequence[Any], index: int, block: int | None) -> None:
    """Messages before ``index`` in full, then message ``index`` up to ``block`` (None:
    in full)."""
    for message in messages[:index]:
        if isinstance(message, dict):
            _text(h, message.get("role"))
            _content(h, message.get("content"))
    message = messages[index]
    _text(h, message.get("role"))
    _content(h, message.get("content"), block)


# ---------------------------------------------------------------- rendezvous


@dataclass(frozen=True, slots=True)
class Candidate:
    """A credential as routing sees it: ``group`` None = a cache group of its own."""

    id: int
    weight: int
    group: str | None = None


def _score(key: bytes, seed: int, weight: int) -> float:
    # The hash's top 52 bits, so that h + 0.5 is exact in a float and u strictly
    # inside (0, 1): (h + 0.5) / 2**64 rounds to 1.0 for the largest hashes.
    u = ((xxhash.xxh3_64_intdigest(key, seed) >> 12) + 0.5) / _TWO52
    return weight / -math.log(u)


def _seed(text: str) -> int:
    return xxhash.xxh3_64_intdigest(text.encode())


class Rendezvous:
    """The preference order of keys over a fixed set of candidates (built once per
    change of the credential table; :meth:`order` is the per-request part)."""

    __slots__ = ("_groups",)

    def __init__(self, candidates: Iterable[Candidate]) -> None:
        groups: dict[str, list[Candidate]] = {}
        for cand in candidates:
            name = f"group:{cand.group}" if cand.group else f"credential:{cand.id}"
            groups.setdefault(name, []).append(cand)
        self._groups = [
            (
                _seed(name),
                sum(c.weight for c in members),
                [(c.id, _seed(f"credential:{c.id}"), c.weight) for c in members],
            )
            for name, members in sorted(groups.items())
        ]

    def order(self, key: bytes) -> Iterator[int]:
        """Candidate ids, most preferred first: groups by score, then inside each (a
        group's members are scored only when the walk reaches that group)."""
        ranked = sorted(
            self._groups, key=lambda group: _score(key, group[0], group[1]), reverse=True
        )
        for *_, members in ranked:
            if len(members) == 1:
                yield members[0][0]
                continue
            members = sorted(members, key=lambda m: _score(key, m[1], m[2]), reverse=True)
            for member in members:
                yield member[0]


# ---------------------------------------------------------------- rate-limit headroom

_LIMIT_KINDS = ("requests", "tokens", "input-tokens", "output-tokens")
MAX_LIMITED_SECONDS = 60.0  # how long a low rate-limit reading counts at most


def limited_for(headers: Any, floor_pct: int, now: float) -> float:
    """Seconds for which a credential whose answer carried ``headers`` is near its own
    upstream rate limit (some ``anthropic-ratelimit-*-remaining`` below ``floor_pct``
    percent of its ``-limit``): until that limit's ``-reset`` time (``now`` is Unix
    time), at least 1 s, at most :data:`MAX_LIMITED_SECONDS`. 0.0: not near any."""
    if floor_pct <= 0:
        return 0.0
    seconds = 0.0
    for kind in _LIMIT_KINDS:
        remaining = headers.get(f"anthropic-ratelimit-{kind}-remaining")
        limit = headers.get(f"anthropic-ratelimit-{kind}-limit")
        if remaining is None or limit is None:
            continue
        try:
            left, total = int(remaining), int(limit)
        except ValueError:
            continue
        if total <= 0 or left * 100 >= floor_pct * total:
            continue
        wait = 1.0
        reset = headers.get(f"anthropic-ratelimit-{kind}-reset")
        if reset:
            with contextlib.suppress(ValueError):
                wait = datetime.fromisoformat(reset).timestamp() - now
        seconds = max(seconds, min(max(wait, 1.0), MAX_LIMITED_SECONDS))
    return seconds
