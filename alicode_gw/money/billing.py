"""Prepaid billing on the request path: hold, settle, release, and the hold sweeper.

The money logic is the PL/pgSQL in ``sql/functions/`` (``billing.hold``,
``billing.settle``, ``billing.release``, ``billing.expire_holds`` in ``billing_holds.sql``;
``billing.settle_leased`` and the credit leases in ``billing_leases.sql``); this module
passes typed operations in and reads typed outcomes (:mod:`alicode_gw.money.contract`).
The operations of concurrent requests share round trips (``billing.apply_batch``).

A request is admitted either with a hold row in the database (one round trip before it
goes upstream) or, when this node holds a credit lease of the account with the
request's worst case free, against that lease in memory (:mod:`alicode_gw.money.leases`; no
round trip). Either way it is settled exactly once per request id.

Money is integer nano-USD (1 USD = 1 000 000 000; :mod:`alicode_gw.money.usd` converts
exactly to and from decimal strings).

When the database cannot take a settlement or release, it goes to the journal
(:mod:`alicode_gw.money.journal`) and is replayed from there.

Holds and leases belong to the node that made them (:mod:`alicode_gw.money.nodes`): the
sweeper gives back those of a node whose heartbeat stopped, and those past their expiry.
Before a node admits its first request it runs the sweeper and replays the journal once
(:meth:`Billing.recover`), so a restarted node answers no 402 for money that is free.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis

from alicode_gw.errors import (
    InsufficientCreditsError,
    InvalidRequestError,
    RateLimitError,
    ServiceUnavailableError,
)
from alicode_gw.identity import auth
from alicode_gw.money.catalog import ModelInfo, Prices
from alicode_gw.money.contract import (
    ApplyBatch,
    BatchOp,
    BatchResult,
    ExpireDeadNodes,
    HoldOp,
    HoldOutcome,
    HoldResult,
    ReleaseOp,
    ReleaseOutcome,
    ReleaseResult,
    SettleLeasedOp,
    SettleOp,
    SettleOutcome,
    SettleResult,
    Usage,
    batch_element,
    batch_op,
    call,
    sql_call,
)
from alicode_gw.money.journal import JOURNAL_FILE, SettlementJournal
from alicode_gw.money.leases import Credit
from alicode_gw.money.usd import format_usd
from alicode_gw.store.batching import Closed, Coalescer
from alicode_gw.store.unavailable import DATABASE_FAILED, DATABASE_UNREACHABLE, REDIS_FAILED
from alicode_gw.tasks import TaskTracker, nothing

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LeasedRequest:
    """What ``billing.settle_leased`` needs of a leased request beside its hold."""

    key_id: int
    requested_model: str
    client_ip: str


@dataclass(slots=True)
class Hold:
    """A reservation made by :meth:`Billing.hold`; ``model`` is the priced model id and
    ``prices`` the snapshot the request will be billed at (its discount resolved).

    A hold admitted against a credit lease (``lease_id``) lives only in this node's
    memory: ``prices`` is then the node's copy of the catalog (no discount), which
    ``billing.settle_leased`` bills at, and ``settlement`` the request's parameters it
    needs beside the hold's own."""

    request_id: str
    model: str
    amount_nanos: int
    prices: Prices | None = None
    lease_id: int | None = None
    settlement: LeasedRequest | None = None

    def cost_nanos(self, usage: Usage, *, hit_pct: int | None = None) -> int:
        """What ``billing.settle`` will record as this request's cost for ``usage``
        (the same rule and prices); 0 when the snapshot is unknown. ``hit_pct``: a
        response cache hit, billed at that percent of ``usage``'s cost (the SQL's
        discount of 100 - ``hit_pct``)."""
        prices = self.prices
        if prices is None:
            return 0
        if hit_pct is not None:
            prices = dataclasses.replace(prices, batch_discount_pct=100 - hit_pct)
        return prices.cost_nanos(
            input_tokens=max(0, usage.input_tokens),
            output_tokens=max(0, usage.output_tokens),
            cache_creation_5m=max(0, usage.cache_creation_5m),
            cache_creation_1h=max(0, usage.cache_creation_1h),
            cache_read=max(0, usage.cache_read),
            batch=True,
        )


def hold_amount(prices: Prices, estimated_input_tokens: int, max_tokens: int) -> int:
    """The worst case ``billing.hold`` reserves for a request that is not a batch: every
    estimated input token at the dearest input-side rate, plus ``max_tokens`` of output."""
    dearest = max(prices.input, prices.cache_write_5m, prices.cache_write_1h, prices.cache_read)
    worst = Prices(dearest, prices.output, 0, 0, 0, 0)
    return worst.cost_nanos(
        input_tokens=max(estimated_input_tokens, 0), output_tokens=max(max_tokens, 0)
    )


SPEND_CAP_RETRY_SECONDS = 1


def spend_cap_reached() -> RateLimitError:
    """The 429 of a hold refused because the key's spend plus the worst case of its
    requests in flight has reached its spend cap (``billing.hold``'s ``over_cap``)."""
    err = RateLimitError(
        "This API key has reached its spend cap, counting the worst-case cost of its "
        "requests in flight. Retry when they finish; once its spend reaches the cap the "
        "key is revoked.",
        headers={"Retry-After": str(SPEND_CAP_RETRY_SECONDS)},
    )
    err.limit = "key_spend_cap"
    return err


TRANSIENT_RETRIES = 3  # re-runs of a batch the server rolled back (deadlock, conflict)
# A settlement nobody waits for (the answer is out) waits up to this long for others to
# share its round trip, unless a hold, which someone waits for, goes out first. Leased
# requests queue nothing but settlements, so this sets how many share a commit.
SETTLE_LINGER = 0.05


class Billing:
    """``state.billing``: the request path's access to the PL/pgSQL money functions.

    Holds, settlements and releases of concurrent requests are group-committed: one
    :class:`~alicode_gw.store.batching.Coalescer` sends what queued up during the previous
    round trip as one ``billing.apply_batch`` call (``sql/functions/billing_batch.sql``).
    A lone request goes out at once."""

    def __init__(
        self,
        db: asyncpg.Pool,
        redis: Redis,
        *,
        redis_prefix: str,
        data_dir: Path,
        hold_ttl: float = 3600.0,
        sweep_interval: float = 30.0,
        replay_interval: float = 5.0,
        db_timeout: float = 10.0,
        tasks: TaskTracker | None = None,
        credit: Credit | None = None,
        node_id: str | None = None,
        dead_after: float = 30.0,
    ) -> None:
        """``tasks`` tracks the batch flushes and the release of holds nobody waits for
        any more (the app passes its own tracker, so shutdown drains them). ``credit``:
        the node's credit leases (:mod:`alicode_gw.money.leases`); None: every hold is a
        database round trip. ``node_id``: the node the holds belong to (None: they are
        given back at their expiry only). ``dead_after``: the sweeper gives back the
        holds and leases of nodes whose heartbeat is older than this (seconds)."""
        self._db = db
        self._redis = redis
        self._prefix = redis_prefix
        self.hold_ttl = hold_ttl
        self.node_id = node_id
        self.dead_after = dead_after
        self._sweep_interval = sweep_interval
        self._replay_interval = replay_interval
        self._db_timeout = db_timeout
        self.journal = SettlementJournal(
            redis,
            f"{redis_prefix}billing:journal",
            data_dir / JOURNAL_FILE,
            self._apply,
            applied=lambda request_id: self._open.pop(request_id, None),
        )
        self._tasks = tasks if tasks is not None else TaskTracker()
        self.credit = credit
        self._ops: Coalescer[BatchOp, BatchResult] = Coalescer(
            # One batch at a time: they commit in the order they were queued, so a
            # settlement always lands before the same customer's next hold.
            self._run_batch,
            self._tasks,
            name="billing-batch",
            linger=SETTLE_LINGER,
        )
        # Holds of this process not yet settled or released: only for the provisional
        # cost of a journaled settlement. Entries older than the hold TTL are purged.
        self._open: dict[str, tuple[Hold, float]] = {}

    def start(self, tasks: TaskTracker) -> None:
        """Start the sweeper and the journal replayer (tracked perpetual tasks)."""
        tasks.spawn(self._sweep_loop(), name="billing-sweeper", perpetual=True)
        tasks.spawn(
            self.journal.run(self._replay_interval), name="billing-journal-replay", perpetual=True
        )

    @property
    def round_trips(self) -> int:
        """Batches sent to PostgreSQL on the request path so far."""
        return self._ops.flushes

    # --- the request path ----------------------------------------------------------------

    async def hold(
        self,
        request_id: str,
        key_id: int,
        model: str,
        estimated_input_tokens: int,
        max_tokens: int,
        client_ip: str,
        *,
        batch: bool = False,
        account_id: int | None = None,
    ) -> Hold:
        """Reserve the worst-case cost in the database. 402 when the account cannot
        cover it, 400 for an unknown model, 503 when the database cannot be reached
        (nothing went upstream). A hold that lands after its caller stopped waiting is
        released. Given the key's ``account_id``, a hold refused for want of money is
        tried once more after this node gave back unused money of its lease of the
        account (as much as the hold needs), if it had some."""
        op = HoldOp(
            request_id=request_id,
            key_id=key_id,
            model=model,
            estimated_input_tokens=estimated_input_tokens,
            max_tokens=max_tokens,
            client_ip=client_ip,
            batch=batch,
        )
        result = await self._hold_result(op)
        if (
            result.outcome == HoldOutcome.INSUFFICIENT
            and self.credit is not None
            and account_id is not None
            and await self.credit.shrink(account_id, result.amount_nanos)
        ):
            result = await self._hold_result(op)  # refused: nothing was written
        if result.outcome == HoldOutcome.UNKNOWN_MODEL:
            raise InvalidRequestError(f"model: unknown model {model!r}", param="model")
        if result.outcome == HoldOutcome.INSUFFICIENT:
            raise InsufficientCreditsError(
                "Your credit balance is too low for this request "
                f"(it may cost up to ${format_usd(result.amount_nanos)}). Top up to continue."
            )
        if result.outcome == HoldOutcome.OVER_CAP:
            raise spend_cap_reached()
        if result.outcome == HoldOutcome.UNKNOWN_KEY:
            raise InvalidRequestError("the API key no longer exists")
        assert result.priced_model is not None
        held = Hold(request_id, result.priced_model, result.amount_nanos, result.prices)
        self._open[request_id] = (held, time.monotonic() + self.hold_ttl)
        return held

    async def _hold_result(self, op: HoldOp) -> HoldResult:
        """The database's answer to one hold; 503 when it cannot be reached. A hold
        that lands after its caller stopped waiting is released."""
        request_id = op.request_id
        future = self._ops.submit(op)
        try:
            async with asyncio.timeout(self._db_timeout):
                result = await asyncio.shield(future)
        except DATABASE_UNREACHABLE as exc:
            future.add_done_callback(functools.partial(self._release_orphan, request_id))
            raise ServiceUnavailableError(
                "Billing is temporarily unavailable; please retry shortly."
            ) from exc
        except asyncio.CancelledError:
            future.add_done_callback(functools.partial(self._release_orphan, request_id))
            raise
        assert isinstance(result, HoldResult)
        return result

    def hold_leased(
        self,
        request_id: str,
        key_id: int,
        requested_model: str,
        estimated_input_tokens: int,
        max_tokens: int,
        client_ip: str,
        *,
        account_id: int,
        priced: ModelInfo,
        spend_capped: bool = False,
    ) -> Hold | None:
        """The hold of a request that is not a batch, admitted against this node's credit
        lease of the account when it has the worst case free: no I/O, no database row
        (the request is billed at the node's prices, without a discount). None: there
        is no such lease (one may be asked for); take :meth:`hold`. A key with a spend
        cap (``spend_capped``) always takes :meth:`hold`: its cap is checked against its
        spend and open holds in the database, which a lease cannot see."""
        if self.credit is None or spend_capped:
            return None
        amount = hold_amount(priced.prices, estimated_input_tokens, max_tokens)
        lease_id = self.credit.take(account_id, amount)
        if lease_id is None:
            return None
        settlement = LeasedRequest(key_id, requested_model, client_ip)
        held = Hold(
            request_id, priced.priced_as, amount, priced.request_prices, lease_id, settlement
        )
        self._open[request_id] = (held, time.monotonic() + self.hold_ttl)
        return held

    def _release_orphan(self, request_id: str, future: asyncio.Future[BatchResult]) -> None:
        """A hold whose requester is gone (cancelled, or timed out waiting) but which
        the database made anyway: give the money back now, not at the TTL."""
        if future.cancelled() or future.exception() is not None:
            return
        result = future.result()
        if not isinstance(result, HoldResult) or result.outcome != HoldOutcome.HELD:
            return
        self._tasks.spawn(self.release_later(request_id), name=f"release-{request_id}")

    async def settle(self, request_id: str, usage: Usage, *, estimated: bool = False) -> int:
        """Bill the real usage once; returns the amount charged in nano-USD. Idempotent.
        When the database cannot apply it now the settlement is journaled and the
        returned amount is provisional (the cost at the hold's price snapshot)."""
        return await self.settle_later(request_id, usage, estimated=estimated, urgent=True)

    def settle_later(
        self,
        request_id: str,
        usage: Usage,
        *,
        estimated: bool = False,
        urgent: bool = False,
        cost_nanos: int | None = None,
        hit_pct: int | None = None,
    ) -> Coroutine[Any, Any, int]:
        """Queue the settlement now (so it goes before anything this process queues
        after it, e.g. the same customer's next hold) and return what awaits its
        outcome. Not urgent: it may wait a moment to share another request's round
        trip. ``cost_nanos``: the hold's :meth:`Hold.cost_nanos` of ``usage``, when the
        caller has it already. ``hit_pct``: a response cache hit (``usage`` is the
        original's), billed at that percent and marked in the ledger."""
        held = self._leased(request_id)
        op: SettleOp | SettleLeasedOp
        if held is None:
            op = SettleOp(request_id, usage, estimated, hit_pct)
        else:  # billed by settle_leased; the lease gets the rest back now
            assert held.lease_id is not None and held.settlement and held.prices
            op = SettleLeasedOp(
                request_id=request_id,
                lease_id=held.lease_id,
                key_id=held.settlement.key_id,
                requested_model=held.settlement.requested_model,
                model=held.model,
                client_ip=held.settlement.client_ip,
                reserved_nanos=held.amount_nanos,
                prices=held.prices,
                usage=usage,
                estimated=estimated,
                hit_pct=hit_pct,
            )
            spent = held.cost_nanos(usage, hit_pct=hit_pct) if cost_nanos is None else cost_nanos
            self._credit().give_back(held.lease_id, held.amount_nanos - spent)
        future = self._ops.submit(op, urgent=urgent)
        return self._settled(op, usage, future, held.lease_id if held else None)

    def _leased(self, request_id: str) -> Hold | None:
        """The open hold of ``request_id`` if it was admitted against a lease."""
        opened = self._open.get(request_id)
        return opened[0] if opened is not None and opened[0].lease_id is not None else None

    def _credit(self) -> Credit:
        assert self.credit is not None, "a leased hold without credit leases"
        return self.credit

    async def _settled(
        self,
        op: SettleOp | SettleLeasedOp,
        usage: Usage,
        future: asyncio.Future[BatchResult],
        lease_id: int | None,
    ) -> int:
        charged = await self._landed(op, future, lease_id)
        if charged is None:
            return self._provisional_cost(op.request_id, usage)
        return charged

    async def release(self, request_id: str) -> None:
        """The request produced nothing billable: give the hold back."""
        await self.release_later(request_id, urgent=True)

    def release_later(
        self, request_id: str, *, urgent: bool = False
    ) -> Coroutine[Any, Any, int | None]:
        """Queue the release now; return what awaits its outcome (see
        :meth:`settle_later`)."""
        held = self._leased(request_id)
        if held is not None:  # nothing was written: the lease has it all back at once
            assert held.lease_id is not None
            self._credit().give_back(held.lease_id, held.amount_nanos, queued=False)
            del self._open[request_id]
            return nothing()
        op = ReleaseOp(request_id)
        return self._landed(op, self._ops.submit(op, urgent=urgent))

    async def _landed(
        self,
        op: SettleOp | SettleLeasedOp | ReleaseOp,
        future: asyncio.Future[BatchResult],
        lease_id: int | None = None,
    ) -> int | None:
        """The outcome of a queued settle/release: the amount charged, or None when it
        failed and went to the journal (both are idempotent: replaying is safe)."""
        try:
            charged = await self._conclude(op, await future)
        except asyncio.CancelledError:  # shutdown cut it short: the journal keeps it
            await self._journal_failed(op, "cancelled by shutdown")
            raise
        except Exception as exc:
            await self._journal_failed(op, exc)
            return None
        finally:
            if lease_id is not None and self.credit is not None:
                self.credit.landed(lease_id)
        self._open.pop(op.request_id, None)
        return charged

    async def _journal_failed(self, op: BatchOp, reason: object) -> None:
        # An outage, a statement the database refused, or shutdown: not a bug.
        expected = isinstance(reason, (str, asyncpg.PostgresError, *DATABASE_UNREACHABLE, Closed))
        log.log(
            logging.WARNING if expected else logging.ERROR,
            "%s of %s journaled: %s",
            op.KIND,
            op.request_id,
            reason,
            exc_info=None if expected else reason,  # a bug: show where
        )
        await self.journal.append(batch_element(op))

    # --- applying operations -------------------------------------------------------------

    async def _run_batch(self, ops: list[BatchOp]) -> list[BatchResult | Exception]:
        """One ``billing.apply_batch`` call for ``ops``; one result (or error) per op. If
        the batch fails for a reason other than an outage (a deadlock with a foreign
        transaction, a bad entry), nothing of it was applied, so each op is tried alone
        and only the faulty one fails."""
        batch = ApplyBatch(tuple(ops), self.hold_ttl, self.node_id)
        try:
            rows = await self._fetch_batch(batch)
        except asyncpg.PostgresError as exc:
            if len(ops) == 1 or isinstance(exc, DATABASE_UNREACHABLE):
                raise
            log.warning("billing batch of %d failed; applying its operations one by one", len(ops))
            outcomes: list[BatchResult | Exception] = []
            for op in ops:
                try:
                    outcomes.extend(await self._run_batch([op]))
                except Exception as exc:  # this op's own failure (an outage included)
                    outcomes.append(exc)
            return outcomes
        return [
            RuntimeError("billing batch: no outcome") if result is None else result
            for result in batch.result(rows)
        ]

    async def _fetch_batch(self, batch: ApplyBatch) -> list[asyncpg.Record]:
        """The call itself; a transaction the server rolled back to break a deadlock or
        a serialization conflict (SQLSTATE class 40) is simply run again."""
        statement = sql_call(batch)
        for attempt in range(TRANSIENT_RETRIES + 1):
            try:
                async with asyncio.timeout(self._db_timeout):
                    return list(await self._db.fetch(statement.sql, *statement.args))
            except asyncpg.TransactionRollbackError:
                if attempt == TRANSIENT_RETRIES:
                    raise
                log.info("billing batch rolled back by the server; running it again")
        raise AssertionError("unreachable")

    async def _conclude(self, op: BatchOp, result: BatchResult) -> int:
        """Log the unusual outcomes of a settle/release; returns the amount charged."""
        if isinstance(result, ReleaseResult):
            if result.outcome == ReleaseOutcome.SETTLED:
                log.warning("release of %s ignored: already settled", op.request_id)
            return 0
        if not isinstance(result, SettleResult):
            raise TypeError(f"{op.KIND} of {op.request_id} answered {result!r}")
        ignored = (SettleOutcome.UNKNOWN, SettleOutcome.RELEASED, SettleOutcome.UNKNOWN_KEY)
        if result.outcome in ignored:
            log.warning("settlement of %s ignored: hold is %s", op.request_id, result.outcome)
        if result.revoked_public_id is not None:
            await self._announce_revoked(result.revoked_public_id)
        return result.charged_nanos

    async def _apply(self, entry: dict[str, Any]) -> int:
        """Run one journaled settle/release now (not batched); returns the amount charged."""
        op = batch_op(entry)
        (outcome,) = await self._run_batch([op])
        if isinstance(outcome, Exception):
            raise outcome
        return await self._conclude(op, outcome)

    async def _announce_revoked(self, public_id: str) -> None:
        """Tell every node a key reached its spend cap (their caches drop it)."""
        await auth.announce_revoked(self._redis, self._prefix, [public_id])

    def _provisional_cost(self, request_id: str, usage: Usage) -> int:
        opened = self._open.pop(request_id, None)
        return 0 if opened is None else opened[0].cost_nanos(usage)

    # --- the sweeper -------------------------------------------------------------------

    async def replay_journal(self) -> int:
        """Apply what the journal holds (see :meth:`SettlementJournal.replay`)."""
        return await self.journal.replay()

    async def journal_length(self) -> int:
        return await self.journal.length()

    async def recover(self) -> None:
        """Before the node admits requests: give back the money of dead nodes (its own
        predecessor's included, once :meth:`Node.join <alicode_gw.money.nodes.Node.join>`
        retired it) and apply the journal, so that no request is refused for money that
        is free. A store that cannot be reached is only logged: the loops retry."""
        try:
            if released := await self.sweep():
                log.warning("released %d hold(s) and lease(s) of dead nodes", released)
        except DATABASE_FAILED as exc:
            log.warning("hold sweep at start failed: %s", exc)
        try:
            async with asyncio.timeout(self._db_timeout):
                if applied := await self.replay_journal():
                    log.info("billing journal: applied %d journaled operation(s)", applied)
        except (*DATABASE_FAILED, *REDIS_FAILED) as exc:
            log.warning("billing journal replay at start failed: %s", exc)

    async def sweep(self) -> int:
        """Give back the holds and close the credit leases of dead nodes, and those past
        their expiry; returns how many. Separate statements: each locks in the
        documented order on its own."""
        async with asyncio.timeout(self._db_timeout):
            count = await call(self._db, ExpireDeadNodes(self.dead_after))
            count += int(await self._db.fetchval("SELECT billing.expire_holds()"))
            count += int(await self._db.fetchval("SELECT billing.expire_leases()"))
        now = time.monotonic()
        # Only holds with a database row: a leased request's hold lives only here, and
        # its settlement needs it however long the request runs.
        expired = [
            request_id
            for request_id, (held, deadline) in self._open.items()
            if deadline < now and held.lease_id is None
        ]
        for request_id in expired:
            del self._open[request_id]
        return count

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                expired = await self.sweep()
            except DATABASE_UNREACHABLE as exc:
                log.warning("hold sweeper: database unreachable (%s)", exc)
                continue
            except Exception:  # keep the sweeper alive; the next round retries
                log.exception("hold sweeper failed")
                continue
            if expired:
                log.warning("hold sweeper: released %d hold(s) and lease(s)", expired)
