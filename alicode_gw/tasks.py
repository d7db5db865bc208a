"""Tracked background work: no fire-and-forget task; everything is drained on shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


async def nothing() -> None:
    """Work already done: for a function that returns what its caller awaits, when
    there is nothing to wait for."""


class TaskTracker:
    """Owns background tasks so shutdown can wait for them (or cancel them)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: set[asyncio.Task[Any]] = set()

    def spawn(
        self, coro: Coroutine[Any, Any, Any], *, name: str, perpetual: bool = False
    ) -> asyncio.Task[Any]:
        """Run ``coro`` in the background. ``perpetual`` tasks (loops such as a sweeper)
        are cancelled at once on drain; the others get the drain timeout to finish."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        (self._loops if perpetual else self._tasks).add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._loops.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def settle(self, grace: float) -> set[asyncio.Task[Any]]:
        """Wait up to ``grace`` seconds until no task but the loops is running (tasks
        spawned meanwhile included); returns those still running then."""
        deadline = asyncio.get_running_loop().time() + grace
        while self._tasks:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return set(self._tasks)
            await asyncio.wait(set(self._tasks), timeout=remaining)
        return set()

    async def drain(self, grace: float) -> None:
        """Cancel the loops, wait up to ``grace`` seconds for the other tasks (and for
        the tasks they spawn meanwhile, such as a settlement's flush), then cancel what
        is left."""
        loops = set(self._loops)
        for task in loops:
            task.cancel()
        pending = await self.settle(grace)
        for task in pending:
            task.cancel()
        if loops or pending:
            await asyncio.gather(*loops, *pending, return_exceptions=True)
