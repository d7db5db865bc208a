"""Credit leases: admitting a request's billing hold without a database round trip.

A node reserves a slice of an account's free balance once (``billing.lease_open`` in
``sql/functions/billing_leases.sql``: a row in ``billing_leases``, counted in the account's
``held_nanos`` like a hold) and then admits that account's requests against it in
memory: :meth:`Credit.take` is synchronous and does no I/O. A leased request's hold
lives only here; it is billed by one ``billing.settle_leased`` call (queued with the
next batch when the request ends), and one that produced nothing costs no call at all.

What this node counts as free in a lease never exceeds what the database has in it: a
take subtracts the request's worst case (the amount ``billing.hold`` would reserve), and
an ending request gives back only what it did not spend. So the requests a node admits
against a lease can always be paid from it; the database checks again anyway (a charge
takes at most its worst case from the lease, the rest only from the free balance). An
account without a lease, or whose lease is short, takes the ordinary hold round trip
while a lease is opened or grown in the background; an account whose free balance is
small gets no lease at all (half of it must cover the request).

Leases are renewed while the node runs, closed when idle and when the node stops. A
lease belongs to its node (``owner``, :mod:`alicode_gw.money.nodes`): a node that dies
stops beating, and the sweeper closes its leases once its heartbeat is older than the
window (``billing.expire_dead_nodes``; ``billing.expire_leases`` at the lease's own
expiry is the backstop). A node stops using its leases before either can happen: when
it cannot renew them, and when its own heartbeat has not landed for nearly the window;
when its heartbeat resumes after such a gap it drops them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from alicode_gw.money.contract import (
    LeaseClose,
    LeaseGrow,
    LeaseOpen,
    LeaseRenew,
    LeaseShrink,
    call,
)
from alicode_gw.money.nodes import new_node_id
from alicode_gw.store.unavailable import DATABASE_FAILED
from alicode_gw.tasks import TaskTracker

log = logging.getLogger(__name__)

HOLDS_PER_LEASE = 16  # a new lease covers this many holds like the one that asked for it
REFUSED_BACKOFF = 5.0  # seconds before asking again for an account that got no lease


@dataclass(slots=True)
class Lease:
    id: int
    account_id: int
    free: int  # what this node may still hold against it
    total: int  # granted so far (sizes the next growth)
    deadline: float  # monotonic time after which it is no longer used
    in_flight: int = 0  # requests admitted and not yet ended
    unlanded: int = 0  # their settlements queued, not yet applied or journaled
    grown: int = 0  # growths applied (a renewal's figure read before one is stale)
    used: float = 0.0


class Credit:
    """``state.billing.credit``: this node's leases, by account."""

    def __init__(
        self,
        db: asyncpg.Pool,
        tasks: TaskTracker,
        *,
        max_pct: int = 50,
        ttl: float = 120.0,
        renew_interval: float = 30.0,
        idle_close: float = 60.0,
        db_timeout: float = 10.0,
        owner: str | None = None,
        usable_until: Callable[[], float] | None = None,
    ) -> None:
        """``max_pct``: a lease holds at most this share (percent) of what it and the
        account's free balance hold together. A lease is used until
        ``ttl - renew_interval`` seconds after its last renewal was sent, so a node that
        cannot renew stops before the database expires it. ``owner``: the node id;
        ``usable_until``: the node's :meth:`~alicode_gw.money.nodes.Node.usable_until`
        (no lease is used past it)."""
        self._db = db
        self._tasks = tasks
        self.max_pct = max_pct
        self.ttl = ttl
        self.renew_interval = renew_interval
        self.idle_close = idle_close
        self._db_timeout = db_timeout
        self.owner = owner or new_node_id()
        self._usable_until = usable_until
        self._by_account: dict[int, Lease] = {}
        self._by_id: dict[int, Lease] = {}
        self._asking: dict[int, asyncio.Task[None]] = {}  # a grow or open under way
        self._shrinking: dict[int, asyncio.Task[bool]] = {}
        self._refused: dict[int, float] = {}

    # --- the request path (no I/O) -----------------------------------------------------

    def take(self, account_id: int, amount: int) -> int | None:
        """Reserve ``amount`` from the account's lease; returns the lease id, or None
        when there is no usable lease with that much free (a lease is then asked for,
        or grown, in the background)."""
        lease = self._by_account.get(account_id)
        now = time.monotonic()
        if self._usable_until is not None and self._usable_until() <= now:
            return None  # other nodes may consider this one dead: its leases with it
        if lease is not None and lease.deadline > now and lease.free >= amount:
            lease.free -= amount
            lease.in_flight += 1
            lease.used = now
            # Ask ahead of need: while a growth is under way (it commits after the
            # settlements queued before it), every request in flight may be followed by
            # one like it. A lease short of that sends those followers to the ordinary
            # hold, which waits behind the same settlements: the saturation tail.
            if lease.free < amount * (HOLDS_PER_LEASE // 4 + lease.in_flight):
                self._ask(account_id, amount)
            return lease.id
        self._ask(account_id, amount)
        return None

    def give_back(self, lease_id: int, amount: int, *, queued: bool = True) -> None:
        """A request admitted against the lease ended; ``amount`` of its worst case is
        unspent. ``queued``: its settlement is on its way to the database (until it
        :meth:`landed`, the node's count is not compared with the database's)."""
        lease = self._by_id.get(lease_id)
        if lease is not None:
            lease.free += max(amount, 0)
            lease.in_flight -= 1
            lease.unlanded += queued

    def landed(self, lease_id: int) -> None:
        """A settlement against the lease was applied, or journaled."""
        lease = self._by_id.get(lease_id)
        if lease is not None:
            lease.unlanded -= 1

    def drop_all(self) -> None:
        """Stop using every lease (this node's heartbeat resumed after a gap: the
        sweeper may have closed them). Requests admitted against one are still billed,
        from the free balance when it is closed."""
        for lease in list(self._by_id.values()):
            self._forget(lease)

    def leased(self, account_id: int) -> Lease | None:
        return self._by_account.get(account_id)

    # --- leases from the database ------------------------------------------------------

    def _ask(self, account_id: int, amount: int) -> None:
        if account_id in self._asking or self._refused.get(account_id, 0.0) > time.monotonic():
            return
        self._asking[account_id] = self._tasks.spawn(
            self._acquire(account_id, amount), name=f"lease-{account_id}"
        )

    async def _acquire(self, account_id: int, amount: int) -> None:
        """Grow the account's lease, or open one; a failure only means the requests keep
        taking the ordinary hold."""
        try:
            lease = self._by_account.get(account_id)
            sent = time.monotonic()
            if lease is not None and lease.deadline > sent:
                want = max(lease.total, amount * (HOLDS_PER_LEASE + 2 * lease.in_flight))
                async with asyncio.timeout(self._db_timeout):
                    added = await call(
                        self._db,
                        LeaseGrow(
                            lease_id=lease.id,
                            add_nanos=want,
                            max_pct=self.max_pct,
                            ttl_seconds=self.ttl,
                        ),
                    )
                if added is not None:
                    if added:
                        lease.free += added
                        lease.total += added
                        lease.grown += 1
                        lease.deadline = sent + self.ttl - self.renew_interval
                    else:  # as large as it may be: no second lease beside it
                        self._refused[account_id] = time.monotonic() + REFUSED_BACKOFF
                    return
                self._forget(lease)  # no longer open (expired): a new one replaces it
            async with asyncio.timeout(self._db_timeout):
                grant = await call(
                    self._db,
                    LeaseOpen(
                        account_id=account_id,
                        owner=self.owner,
                        want_nanos=amount * HOLDS_PER_LEASE,
                        min_nanos=amount,
                        max_pct=self.max_pct,
                        ttl_seconds=self.ttl,
                    ),
                )
            if grant is None:
                self._refused[account_id] = time.monotonic() + REFUSED_BACKOFF
                return
            new = Lease(
                grant.lease_id,
                account_id,
                free=grant.amount_nanos,
                total=grant.amount_nanos,
                deadline=sent + self.ttl - self.renew_interval,
                used=sent,
            )
            self._by_account[account_id] = new
            self._by_id[new.id] = new
        except DATABASE_FAILED as exc:
            log.warning("credit lease for account %s not taken: %s", account_id, exc)
            self._refused[account_id] = time.monotonic() + REFUSED_BACKOFF
        finally:
            self._asking.pop(account_id, None)

    async def renew(self) -> None:
        """Renew the leases in use, close the idle ones, forget the ones the database no
        longer has open (expired by the sweeper, or replaced and drained)."""
        now = time.monotonic()
        self._refused = {a: until for a, until in self._refused.items() if until > now}
        for lease in list(self._by_id.values()):
            # Checked again right before each close: a close yields, and a request may
            # have been admitted against a later lease meanwhile.
            if self._idle(lease, time.monotonic()):
                try:
                    await self._close(lease)
                except DATABASE_FAILED as exc:
                    log.warning("idle credit lease %s not closed (it expires): %s", lease.id, exc)
        ids = list(self._by_id)
        if not ids:
            return
        grown = {lease.id: lease.grown for lease in self._by_id.values()}
        sent = time.monotonic()
        async with asyncio.timeout(self._db_timeout):
            still_open = await call(self._db, LeaseRenew(tuple(ids), self.ttl))
        for lease_id in ids:
            lease = self._by_id.get(lease_id)
            if lease is None:
                continue
            if lease_id not in still_open:
                self._forget(lease)
                continue
            lease.deadline = sent + self.ttl - self.renew_interval
            # A safety net only: what the node counts as free never exceeds what the
            # database has (settlements not yet applied, or journaled, leave the
            # database's figure the larger), so this never raises the node's count.
            if lease.grown == grown.get(lease_id):  # else read before a growth applied
                lease.free = min(lease.free, still_open[lease_id])

    def _idle(self, lease: Lease, now: float) -> bool:
        replaced = self._by_account.get(lease.account_id) is not lease
        return (
            lease.in_flight == 0
            and lease.unlanded == 0
            and (replaced or now - lease.used > self.idle_close)
        )

    async def run(self) -> None:
        """Renew forever (a tracked perpetual task)."""
        while True:
            await asyncio.sleep(self.renew_interval)
            try:
                await self.renew()
            except DATABASE_FAILED as exc:
                log.warning("credit leases not renewed: %s", exc)

    async def shrink(self, account_id: int, amount: int) -> bool:
        """Give up to ``amount`` of the unused part of this node's lease of the account
        back to its free balance (an ordinary hold of that size found too little free:
        the money may be in the lease; the rest stays lent). Returns whether anything
        was given back (or is: a shrink already under way is joined). A growth under
        way is waited for first, so that it cannot take the money back before the
        caller retries."""
        growing = self._asking.get(account_id)
        if growing is not None:
            await asyncio.wait({growing})
        running = self._shrinking.get(account_id)
        if running is None:
            lease = self._by_account.get(account_id)
            if lease is None or lease.free <= 0 or amount <= 0:
                return False
            given = min(lease.free, amount)
            lease.free -= given  # at once: no request is admitted against it meanwhile
            running = self._tasks.spawn(self._shrink(lease, given), name=f"lease-shrink-{lease.id}")
            self._shrinking[account_id] = running
            running.add_done_callback(lambda _: self._shrinking.pop(account_id, None))
        return await asyncio.shield(running)

    async def _shrink(self, lease: Lease, amount: int) -> bool:
        self._refused[lease.account_id] = time.monotonic() + REFUSED_BACKOFF  # no regrowth
        try:
            async with asyncio.timeout(self._db_timeout):
                returned = await call(self._db, LeaseShrink(lease.id, amount))
        except (*DATABASE_FAILED, asyncio.CancelledError) as exc:
            # Whether it was applied is unknown: this node stops using the lease (its
            # money comes back when the database expires it).
            log.warning("credit lease %s not shrunk (%r); no longer used", lease.id, exc)
            self._forget(lease)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return False
        return bool(returned)

    async def close_all(self) -> None:
        """Give every lease back (the node stops). A request admitted against one and
        settled after this is charged from the free balance."""
        for lease in list(self._by_id.values()):
            try:
                await self._close(lease)
            except DATABASE_FAILED as exc:
                log.warning("credit lease %s not closed (it expires): %s", lease.id, exc)

    async def _close(self, lease: Lease) -> None:
        self._forget(lease)
        async with asyncio.timeout(self._db_timeout):
            await call(self._db, LeaseClose(lease.id))

    def _forget(self, lease: Lease) -> None:
        self._by_id.pop(lease.id, None)
        if self._by_account.get(lease.account_id) is lease:
            del self._by_account[lease.account_id]
