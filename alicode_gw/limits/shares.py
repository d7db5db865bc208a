"""A node's shares of limit capacity: requests admitted without a Redis round trip.

The limits stay exact across nodes because a share is capacity the node really took in
Redis, counted there like any admitted request; the node only decides locally *which*
of its requests uses it. Two kinds:

- **Requests per minute**: when the same limited set (a key's or an IP's minute log)
  sees requests in quick succession, the node's next admission asks Redis for extra
  entries, never more than ``pct`` % of what the limit has left. How many follows the
  set's pace: ``GRANT_MIN`` at first, twice the last number when the share ran dry
  before its entries lapsed (up to ``GRANT_MAX``), half of it when entries lapsed
  unused.
  They are scored ``RESERVE_SECONDS`` in the future, so an entry used at any moment of
  its validity stays counted at least 60 s after that use (the limit can only be
  stricter, by at most that long). Entries unused at their deadline go back to Redis.
- **Concurrency**: a request's slot is kept by the node when the request ends, for up
  to ``KEEP_SECONDS``, so that the next request there reuses it without asking Redis;
  at most ``pct`` % of the limit is kept per node (none for a limit under 4 at the
  default 25 %). Kept slots are renewed like live ones and go back when idle.

Capacity one node holds is not available to another until it goes back (seconds), so
with several nodes a limit can refuse slightly early; it is never exceeded. Nothing
here does I/O: :class:`~alicode_gw.limits.limiter.Limiter` asks what it may take locally,
sends the rest to Redis, and gives back what :meth:`Shares.expired` returns.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

RESERVE_SECONDS = 2.0  # a reserved minute-log entry must be used within this
KEEP_SECONDS = 2.0  # a freed concurrency slot is kept this long for the next request
GRANT_MIN = 32  # extra minute-log entries one admission reserves at first
GRANT_MAX = 256  # and at most, for a set whose share keeps running dry (docs/limits.md)


@dataclass(slots=True, eq=False)
class _Reserve:
    """Reserved minute-log entries of one set, and what Redis said about the set when
    it last reserved (for the X-RateLimit-* headers of local admissions)."""

    entries: deque[tuple[str, float]] = field(default_factory=deque)  # (member, deadline)
    left: int = 0  # the limit's remaining count for everyone else, at the last reservation
    reset_ms: int = 0
    seen: float = 0.0  # when a request of this set was last admitted here
    asking: bool = False  # an admission asking Redis for more is under way
    grant: int = GRANT_MIN  # entries the next reservation asks for
    delivered: bool = False  # the last reservation brought entries not yet judged


@dataclass(slots=True, eq=False)
class _Kept:
    """Freed concurrency slots of one set, kept for the next request."""

    limit: int
    # (member, kept since, when Redis last confirmed its lease: monotonic, before the call)
    slots: list[tuple[str, float, float]] = field(default_factory=list)


def _past_deadline(log_key: str, reserve: _Reserve, now: float) -> list[tuple[str, str]]:
    """Take the entries past their deadline out of ``reserve``; (set, member) of each."""
    if all(now < deadline for _, deadline in reserve.entries):
        return []
    due = [(log_key, m) for m, d in reserve.entries if d <= now]
    reserve.entries = deque((m, d) for m, d in reserve.entries if d > now)
    _lapsed_unused(reserve)
    return due


def _lapsed_unused(reserve: _Reserve) -> None:
    """Entries lapsed unused: the set uses fewer than its reservations bring."""
    reserve.grant = max(GRANT_MIN, reserve.grant // 2)
    reserve.delivered = False


class Shares:
    """Per-node bookkeeping of reserved minute-log entries and kept concurrency slots,
    keyed by the Redis set they live in. ``now`` is the caller's monotonic clock."""

    def __init__(self, pct: int, lease_seconds: float = 30.0) -> None:
        """A kept slot is reused only while its lease, as last confirmed, has at
        least half of ``lease_seconds`` left (renewals every 10 s keep it so)."""
        self.pct = pct
        self.slot_max_age = lease_seconds / 2
        self._reserves: dict[str, _Reserve] = {}
        self._kept: dict[str, _Kept] = {}
        self._lapsed: list[tuple[str, str]] = []  # to go back with the next give-back
        # Slots the last renewal did not find in Redis: not kept, not reused (one taken
        # from the share while that renewal was under way may still come back).
        self._gone: set[tuple[str, str]] = set()

    # requests per minute

    def take_entry(self, log_key: str, now: float) -> tuple[str, float] | None:
        """A reserved entry of ``log_key`` still valid at ``now``, with its deadline (it
        is used up), or None. Lapsed entries met on the way are set aside for
        :meth:`expired`."""
        reserve = self._reserves.get(log_key)
        if reserve is None:
            return None
        reserve.seen = now
        entries = reserve.entries
        lapsed = False
        while entries:
            member, deadline = entries.popleft()
            if now < deadline:
                return member, deadline
            self._lapsed.append((log_key, member))
            lapsed = True
        if lapsed:
            _lapsed_unused(reserve)
        elif reserve.delivered and not reserve.asking:  # all used in time: ask for more
            reserve.grant = min(GRANT_MAX, reserve.grant * 2)
            reserve.delivered = False
        return None

    def lapse(self, set_key: str, member: str) -> None:
        """Have ``member`` of ``set_key`` removed from Redis with the next give-back."""
        self._lapsed.append((set_key, member))

    def put_entry(self, log_key: str, member: str, deadline: float) -> None:
        """Give back an entry taken by an admission that failed on another limit."""
        self._reserves.setdefault(log_key, _Reserve()).entries.appendleft((member, deadline))

    def ask(self, log_key: str, now: float) -> int:
        """How many entries the next Redis admission of ``log_key`` should reserve for
        this node (0: none): some when the set had a request here within
        ``RESERVE_SECONDS`` (the requests come in a run) and no reservation for it is
        under way; how many follows the set's pace (see the module docstring). A
        non-zero answer is followed by :meth:`asked` once the admission's reply (or
        failure) is in."""
        if not self.pct:
            return 0
        reserve = self._reserves.get(log_key)
        if reserve is None or reserve.asking or now - reserve.seen >= RESERVE_SECONDS:
            return 0
        reserve.asking = True
        return reserve.grant

    def asked(self, log_key: str) -> None:
        reserve = self._reserves.get(log_key)
        if reserve is not None:
            reserve.asking = False

    def reserved(
        self,
        log_key: str,
        members: list[str],
        deadline: float,
        reply: tuple[int, int],
        now: float,
    ) -> None:
        """A Redis admission of ``log_key`` succeeded and reserved ``members`` (maybe
        none) valid until ``deadline``; ``reply``: what Redis said the limit has left
        after them, and when its oldest entry leaves (ms, Redis time)."""
        reserve = self._reserves.setdefault(log_key, _Reserve())
        reserve.entries.extend((m, deadline) for m in members)
        reserve.delivered = reserve.delivered or bool(members)
        (reserve.left, reserve.reset_ms), reserve.seen = reply, now

    def view(self, log_key: str) -> tuple[int, int]:
        """(remaining, reset in ms of Redis time) as this node sees ``log_key``: what
        Redis said at the last reservation plus the entries still reserved here."""
        reserve = self._reserves.get(log_key)
        if reserve is None:
            return 0, 0
        return reserve.left + len(reserve.entries), reserve.reset_ms

    # concurrency

    def keep_cap(self, limit: int) -> int:
        """How many freed slots of a set with this limit one node may keep."""
        return limit * self.pct // 100

    def take_slot(self, set_key: str, limit: int, now: float) -> tuple[str, float] | None:
        """A kept slot of ``set_key`` (now in use again) with its confirmation time, or
        None. Slots kept under another limit (the key was changed) and slots whose lease
        was not confirmed lately are set aside for :meth:`expired`."""
        kept = self._kept.get(set_key)
        if kept is None or not kept.slots:
            return None
        if kept.limit != limit:
            self._drop_kept(set_key)
            return None
        while kept.slots:
            member, _, confirmed = kept.slots.pop()
            if now - confirmed < self.slot_max_age and (set_key, member) not in self._gone:
                return member, confirmed
            self._lapsed.append((set_key, member))
        return None

    def keep_slot(
        self,
        set_key: str,
        limit: int,
        slot: tuple[str, float],
        now: float,
        *,
        force: bool = False,
    ) -> bool:
        """Keep ``slot`` (member, confirmed) of a finished request, if the share allows
        and its lease was confirmed lately; False means the caller gives it back to
        Redis. ``force``: a slot taken from the share by an admission that then failed
        goes back to it whatever the count."""
        cap = self.keep_cap(limit)
        member, confirmed = slot
        if (cap <= 0 and not force) or now - confirmed >= self.slot_max_age:
            return False
        if (set_key, member) in self._gone:
            return False
        kept = self._kept.get(set_key)
        if kept is None or kept.limit != limit:
            self._drop_kept(set_key)
            kept = self._kept[set_key] = _Kept(limit)
        if len(kept.slots) >= cap and not force:
            return False
        kept.slots.append((member, now, confirmed))
        return True

    def _drop_kept(self, set_key: str) -> None:
        """Give back every slot kept of ``set_key`` (kept under another limit)."""
        kept = self._kept.pop(set_key, None)
        if kept is not None:
            self._lapsed.extend((set_key, member) for member, _, _ in kept.slots)

    def confirmed(self, renewed: dict[tuple[str, str], bool], at: float) -> None:
        """A renewal's outcome for kept slots ((set, member) -> found in Redis), sent at
        ``at``: a slot Redis no longer had is forgotten (it counts nowhere), and not
        kept again if a request had it meanwhile."""
        self._gone = {pair for pair, found in renewed.items() if not found}
        for set_key, kept in list(self._kept.items()):
            slots = []
            for member, since, confirmed in kept.slots:
                found = renewed.get((set_key, member))
                if found is None:
                    slots.append((member, since, confirmed))
                elif found:
                    slots.append((member, since, at))
            kept.slots = slots

    def kept_slots(self) -> list[tuple[str, str]]:
        """(set, member) of every kept slot: renewed with the live ones."""
        return [(key, m) for key, kept in self._kept.items() for m, _, _ in kept.slots]

    # both

    def holds(self, key: str, now: float) -> bool:
        """Whether this node holds usable capacity of ``key``: a reserved entry still
        valid, or a kept slot."""
        reserve = self._reserves.get(key)
        if reserve is not None and any(now < d for _, d in reserve.entries):
            return True
        kept = self._kept.get(key)
        return kept is not None and bool(kept.slots)

    def unused(self, key: str) -> int:
        """Reserved entries or kept slots of ``key`` that no request of this node uses
        (subtracted from the live counters ``GET /v1/key-status`` shows)."""
        reserve = self._reserves.get(key)
        kept = self._kept.get(key)
        return (len(reserve.entries) if reserve else 0) + (len(kept.slots) if kept else 0)

    def expired(self, now: float) -> list[tuple[str, str]]:
        """Take out and return (set, member) of what is to go back to Redis: entries
        past their deadline, slots kept longer than ``KEEP_SECONDS``. Sets with nothing
        left and no recent request are forgotten."""
        out, self._lapsed = self._lapsed, []
        for log_key, reserve in list(self._reserves.items()):
            out += _past_deadline(log_key, reserve, now)
            idle = now - reserve.seen >= RESERVE_SECONDS
            if not reserve.entries and idle and not reserve.asking:
                del self._reserves[log_key]
        for set_key, kept in list(self._kept.items()):
            stale = [m for m, since, _ in kept.slots if now - since >= KEEP_SECONDS]
            if stale:
                kept.slots = [slot for slot in kept.slots if now - slot[1] < KEEP_SECONDS]
                out.extend((set_key, m) for m in stale)
            if not kept.slots:
                del self._kept[set_key]
        return out

    def stale(self, set_key: str, now: float) -> list[tuple[str, str]]:
        """Take out and return what of ``set_key`` is to go back to Redis now (a limit
        refused a request: this node's own leftovers must not be why)."""
        out = [pair for pair in self._lapsed if pair[0] == set_key]
        if out:
            self._lapsed = [pair for pair in self._lapsed if pair[0] != set_key]
        reserve = self._reserves.get(set_key)
        if reserve is not None:
            out += _past_deadline(set_key, reserve, now)
        return out

    def everything(self) -> list[tuple[str, str]]:
        """Take out and return all that this node holds (shutdown)."""
        out, self._lapsed = self._lapsed, []
        for log_key, reserve in self._reserves.items():
            out.extend((log_key, member) for member, _ in reserve.entries)
        out.extend(self.kept_slots())
        self._reserves.clear()
        self._kept.clear()
        return out
