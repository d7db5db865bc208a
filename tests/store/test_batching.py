"""The group-commit coalescer: batching, ordering, per-item and whole-batch failures."""

from __future__ import annotations

import asyncio

import pytest

from alicode_gw.store.batching import Closed, Coalescer
from alicode_gw.tasks import TaskTracker


class Store:
    """A flush function that records its batches and can be held open."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def flush(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        await self.gate.wait()
        return [ValueError(f"odd {i}") if i < 0 else i * 10 for i in items]


async def test_a_lone_item_is_flushed_at_once() -> None:
    store, tasks = Store(), TaskTracker()
    coalescer: Coalescer[int, int] = Coalescer(store.flush, tasks, name="t")
    assert await asyncio.wait_for(coalescer.submit(1), 1) == 10
    assert store.batches == [[1]]


async def test_items_arriving_during_a_flush_go_together_in_the_next() -> None:
    store, tasks = Store(), TaskTracker()
    coalescer: Coalescer[int, int] = Coalescer(store.flush, tasks, name="t")
    store.gate.clear()
    first = coalescer.submit(1)
    await asyncio.sleep(0)  # the flusher takes [1] and waits at the gate
    later = [coalescer.submit(i) for i in (2, 3, 4)]
    assert coalescer.pending == 3
    store.gate.set()
    assert await first == 10
    assert await asyncio.gather(*later) == [20, 30, 40]
    assert store.batches == [[1], [2, 3, 4]]


async def test_max_batch_splits_in_order() -> None:
    store, tasks = Store(), TaskTracker()
    coalescer: Coalescer[int, int] = Coalescer(store.flush, tasks, name="t", max_batch=2)
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(5)))
    assert results == [0, 10, 20, 30, 40]
    assert store.batches == [[0, 1], [2, 3], [4]]


async def test_an_item_failure_stays_with_its_item() -> None:
    store, tasks = Store(), TaskTracker()
    coalescer: Coalescer[int, int] = Coalescer(store.flush, tasks, name="t")
    good, bad = coalescer.submit(3), coalescer.submit(-1)
    assert await good == 30
    with pytest.raises(ValueError, match="odd -1"):
        await bad


async def test_a_failed_flush_fails_its_batch_only() -> None:
    calls = 0

    async def flush(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("store down")
        return items

    coalescer: Coalescer[int, int] = Coalescer(flush, TaskTracker(), name="t")
    failing = [coalescer.submit(i) for i in (1, 2)]
    for future in failing:
        with pytest.raises(ConnectionError):
            await future
    assert await coalescer.submit(7) == 7


async def test_a_submitter_that_stops_waiting_does_not_break_the_batch() -> None:
    store, tasks = Store(), TaskTracker()
    coalescer: Coalescer[int, int] = Coalescer(store.flush, tasks, name="t")
    store.gate.clear()
    gone, kept = coalescer.submit(1), coalescer.submit(2)
    await asyncio.sleep(0)
    gone.cancel()
    store.gate.set()
    assert await kept == 20
    assert store.batches == [[1, 2]]  # the item was already handed over


async def test_drain_waits_for_flushes_spawned_while_draining() -> None:
    store, tasks = Store(), TaskTracker()
    coalescer: Coalescer[int, int] = Coalescer(store.flush, tasks, name="t")
    results: list[int] = []

    async def settle_later() -> None:
        await asyncio.sleep(0.05)
        results.append(await coalescer.submit(5))  # spawns a flusher during the drain

    tasks.spawn(settle_later(), name="settle")
    await tasks.drain(5.0)
    assert results == [50]
    assert len(tasks) == 0


async def test_drain_cancels_what_outlives_the_grace() -> None:
    store, tasks = Store(), TaskTracker()
    coalescer: Coalescer[int, int] = Coalescer(store.flush, tasks, name="t")
    store.gate.clear()
    stuck = coalescer.submit(1)
    await tasks.drain(0.05)
    assert stuck.cancelled()


async def test_items_still_queued_at_shutdown_fail_with_closed() -> None:
    store, tasks = Store(), TaskTracker()
    coalescer: Coalescer[int, int] = Coalescer(store.flush, tasks, name="t")
    store.gate.clear()
    stuck = coalescer.submit(1)
    await asyncio.sleep(0)  # the flusher takes [1] and waits at the gate
    queued = coalescer.submit(2)
    await tasks.drain(0.05)  # cancels the flusher: [2] was never sent
    assert stuck.cancelled()
    with pytest.raises(Closed, match="t: shut down"):
        await queued
    assert not isinstance(queued.exception(), RuntimeError)  # not a bug's exception
    assert store.batches == [[1]]


async def test_a_non_urgent_item_rides_along_the_next_urgent_one() -> None:
    store, tasks = Store(), TaskTracker()
    coalescer: Coalescer[int, int] = Coalescer(store.flush, tasks, name="t", linger=10.0)
    later = coalescer.submit(1, urgent=False)
    await asyncio.sleep(0.01)
    assert store.batches == []  # waits for company (or the linger)
    assert await coalescer.submit(2) == 20
    assert await later == 10
    assert store.batches == [[1, 2]]


async def test_a_lone_non_urgent_item_goes_after_the_linger() -> None:
    store, tasks = Store(), TaskTracker()
    coalescer: Coalescer[int, int] = Coalescer(store.flush, tasks, name="t", linger=0.02)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await coalescer.submit(3, urgent=False) == 30
    assert loop.time() - started >= 0.015
    assert store.batches == [[3]]


async def test_an_urgent_item_does_not_wait_behind_deferred_work() -> None:
    store, tasks = Store(), TaskTracker()
    coalescer: Coalescer[int, int] = Coalescer(
        store.flush, tasks, name="t", linger=0.0, max_in_flight=2
    )
    store.gate.clear()
    deferred = coalescer.submit(1, urgent=False)
    await asyncio.sleep(0.01)  # its flush is in flight, held at the gate
    assert store.batches == [[1]]
    second = coalescer.submit(2)  # starts a round trip of its own
    third = coalescer.submit(3)  # ...and this one waits for a batch with an urgent item
    await asyncio.sleep(0.01)
    assert store.batches == [[1], [2, 3]]
    store.gate.set()
    assert await asyncio.gather(deferred, second, third) == [10, 20, 30]
