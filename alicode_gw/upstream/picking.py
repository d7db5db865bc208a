"""Which credential the next attempt uses: the choice over the pool's in-process view
(pure, no I/O; :class:`~alicode_gw.upstream.pool.KeyPool` keeps the view current).

:func:`pick_weighted`
    Half-open credentials whose probe this node holds first (one request each), then
    smooth weighted round-robin over the healthy ones.
:func:`pick_affine`
    The first usable credential in a key's rendezvous order
    (:mod:`alicode_gw.upstream.affinity`), passing over those at their in-flight cap or
    near their own upstream rate limit while a later one is free; a half-open
    credential whose probe this node holds takes its own conversations' first request
    back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from alicode_gw.errors import ServiceUnavailableError
from alicode_gw.upstream.credentials import Credential

__all__ = ["NO_HEALTHY_MESSAGE", "Entry", "pick_affine", "pick_weighted"]

NO_HEALTHY_MESSAGE = "no healthy upstream credential"


@dataclass(slots=True)
class Entry:
    """One credential as this process sees it (times are monotonic seconds)."""

    cred: Credential
    disabled: bool = False
    disabled_reason: str | None = None
    current: int = 0  # smooth weighted round-robin
    tripped: bool = False  # failed; healthy again only after a successful probe
    cool_until: float = 0.0
    streak: int = 0  # local failure count, used only when Redis is unreachable
    blamed: dict[str, float] = field(default_factory=dict)  # customer -> monotonic, ditto
    probe_until: float = 0.0  # this node holds the probe lock until then
    probe_out: bool = False  # ... and has handed the probe to a request
    version: int = 0  # bumped by local changes; a refresh that raced one is ignored
    inflight: int = 0  # this process's attempts on it that have not finished
    limited_until: float = 0.0  # near its own upstream rate limit until then


def _take_probe(entry: Entry, now: float) -> bool:
    if entry.cool_until <= now and entry.probe_until > now and not entry.probe_out:
        entry.probe_out = True
        return True
    return False


def pick_weighted(entries: Sequence[Entry], exclude: frozenset[int], now: float) -> Entry:
    """The next entry by smooth weighted round-robin (a held probe first)."""
    best: Entry | None = None
    total = 0
    for entry in entries:
        if entry.disabled or entry.cred.id in exclude:
            continue
        if entry.tripped:
            if _take_probe(entry, now):
                return entry
            continue
        entry.current += entry.cred.weight
        total += entry.cred.weight
        if best is None or entry.current > best.current:
            best = entry
    if best is None:
        raise ServiceUnavailableError(NO_HEALTHY_MESSAGE)
    best.current -= total
    return best


def pick_affine(
    order: Iterable[int],
    by_id: Mapping[int, Entry],
    exclude: frozenset[int],
    now: float,
    inflight_cap: int,
) -> Entry:
    """The first usable entry of ``order`` (a key's rendezvous order); when every
    usable one is busy, the first of them (no queueing here)."""
    busy: Entry | None = None
    for cid in order:
        entry = by_id.get(cid)
        if entry is None or entry.disabled or cid in exclude:
            continue
        if entry.tripped:
            if _take_probe(entry, now):
                return entry
            continue
        if (inflight_cap and entry.inflight >= inflight_cap) or entry.limited_until > now:
            busy = busy or entry
            continue
        return entry
    if busy is None:
        raise ServiceUnavailableError(NO_HEALTHY_MESSAGE)
    return busy
