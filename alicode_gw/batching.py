"""Group commit: many concurrent calls to a store become one round trip.

A :class:`Coalescer` owns a queue and one flusher task at a time. The first item
submitted while nothing is in flight is flushed at once (on the next turn of the event
loop, together with whatever else was submitted in that same turn), so a lone request
waits for nothing. Items submitted while a flush is in flight wait for it and then go
together in the next one. Under load each round trip therefore carries every request
that arrived during the previous one, which is what makes the per-request client CPU
(packing, syscalls, parsing, pool bookkeeping) shrink as concurrency grows, without a
timer and without adding latency.

The flush function receives the items in submission order and returns one outcome per
item: a value, or an exception instance for that item alone. If it raises, every item
of that batch gets the exception. The flusher is a tracked task
(:class:`~alicode_gw.tasks.TaskTracker`), so shutdown drains it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from alicode_gw.tasks import TaskTracker

T = TypeVar("T")
R = TypeVar("R")

Flush = Callable[[list[T]], Awaitable[Sequence["R | BaseException"]]]


class Coalescer(Generic[T, R]):
    """Submit items one by one; they reach ``flush`` in batches of at most ``max_batch``."""

    def __init__(
        self, flush: Flush[T, R], tasks: TaskTracker, *, name: str, max_batch: int = 64
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._flush = flush
        self._tasks = tasks
        self._name = name
        self._max_batch = max_batch
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.flushes = 0  # round trips made, for tests and the benchmark's curiosity

    def submit(self, item: T) -> asyncio.Future[R]:
        """Queue ``item``; the future resolves with its outcome. Cancelling the future
        does not withdraw an item already handed to ``flush`` (the caller decides what
        to do with an outcome it no longer waits for: see ``add_done_callback``)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._flusher is None:
            self._flusher = self._tasks.spawn(self._run(), name=f"{self._name}-flush")
        return future

    @property
    def pending(self) -> int:
        """Items queued and not yet handed to ``flush``."""
        return len(self._queue)

    async def _run(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._flush_batch(batch)
        finally:
            self._flusher = None
            for _, future in self._queue:  # only when cancelled mid-way (shutdown)
                if not future.done():
                    future.set_exception(RuntimeError(f"{self._name}: shut down"))
            self._queue.clear()

    async def _flush_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        self.flushes += 1
        try:
            outcomes = await self._flush([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # every item of the batch shares the failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        if len(outcomes) != len(batch):
            error = RuntimeError(f"{self._name}: {len(outcomes)} outcomes for {len(batch)} items")
            outcomes = [error] * len(batch)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # the submitter stopped waiting
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
