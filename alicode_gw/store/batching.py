"""Group commit: many concurrent calls to a store become one round trip.

A :class:`Coalescer` owns a queue and one flusher task at a time. The first item
submitted while nothing is in flight is flushed at once (on the next turn of the event
loop, together with whatever else was submitted in that same turn), so a lone request
waits for nothing. Items submitted while a flush is in flight wait for it and then go
together in the next one. Under load each round trip therefore carries every request
that arrived during the previous one, which is what makes the per-request client CPU
(packing, syscalls, parsing, pool bookkeeping) shrink as concurrency grows, without a
timer and without adding latency.

Items nobody is waiting for in a hurry (a settlement after the answer went out, the
release of a limit) are submitted with ``urgent=False``: they do not start a round
trip of their own but wait up to ``linger`` seconds for an urgent item to take them
along, so under load they cost no round trip at all.

The flush function receives the items in submission order and returns one outcome per
item: a value, or an exception instance for that item alone. If it raises, every item
of that batch gets the exception. The flusher is a tracked task
(:class:`~alicode_gw.tasks.TaskTracker`), so shutdown drains it; items still queued when
it is cancelled fail with :class:`Closed`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from alicode_gw.tasks import TaskTracker

T = TypeVar("T")
R = TypeVar("R")

Flush = Callable[[list[T]], Awaitable[Sequence["R | BaseException"]]]


class Closed(Exception):
    """The coalescer shut down (its flusher was cancelled) before the item was sent."""


class Coalescer(Generic[T, R]):
    """Submit items one by one; they reach ``flush`` in batches of at most ``max_batch``.

    ``max_in_flight`` > 1 lets an urgent item start a round trip of its own when the
    ones in flight carry only non-urgent items, so a request never waits behind the
    deferred work of the previous one (the store must accept concurrent batches)."""

    def __init__(
        self,
        flush: Flush[T, R],
        tasks: TaskTracker,
        *,
        name: str,
        max_batch: int = 64,
        linger: float = 0.005,
        max_in_flight: int = 1,
    ) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._flush = flush
        self._tasks = tasks
        self._name = name
        self._max_batch = max_batch
        self._linger = linger
        self._max_in_flight = max_in_flight
        self._queue: list[tuple[T, asyncio.Future[R], bool]] = []
        self._flushers = 0  # flusher tasks alive
        self._urgent_in_flight = 0  # batches in flight that carry an urgent item
        self._timer: asyncio.TimerHandle | None = None
        self.flushes = 0  # round trips made, for tests and the benchmark's curiosity

    def submit(self, item: T, *, urgent: bool = True) -> asyncio.Future[R]:
        """Queue ``item``; the future resolves with its outcome. An urgent item goes
        out with the next round trip, started now if none is in flight; a non-urgent
        one waits at most ``linger`` seconds for one. Cancelling the future does not
        withdraw an item already handed to ``flush`` (the caller decides what to do
        with an outcome it no longer waits for: see ``add_done_callback``)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, future, urgent))
        if urgent:
            if self._flushers == 0 or (
                self._urgent_in_flight == 0 and self._flushers < self._max_in_flight
            ):
                self._start()
        elif self._flushers == 0 and self._timer is None:
            self._timer = loop.call_later(self._linger, self._start)
        return future

    @property
    def pending(self) -> int:
        """Items queued and not yet handed to ``flush``."""
        return len(self._queue)

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._queue:
            self._flushers += 1
            self._tasks.spawn(self._run(), name=f"{self._name}-flush")

    async def _run(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                urgent = any(entry[2] for entry in batch)
                self._urgent_in_flight += urgent
                try:
                    await self._flush_batch(batch)
                finally:
                    self._urgent_in_flight -= urgent
        finally:
            self._flushers -= 1
            if self._flushers == 0:
                for _, future, _ in self._queue:  # only when cancelled mid-way (shutdown)
                    if not future.done():
                        future.set_exception(Closed(f"{self._name}: shut down"))
                self._queue.clear()

    async def _flush_batch(self, batch: list[tuple[T, asyncio.Future[R], bool]]) -> None:
        self.flushes += 1
        try:
            outcomes = await self._flush([item for item, _, _ in batch])
        except asyncio.CancelledError:
            for _, future, _ in batch:
                future.cancel()
            raise
        except Exception as exc:  # every item of the batch shares the failure
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        if len(outcomes) != len(batch):
            error = RuntimeError(f"{self._name}: {len(outcomes)} outcomes for {len(batch)} items")
            outcomes = [error] * len(batch)
        for (_, future, _), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # the submitter stopped waiting
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
