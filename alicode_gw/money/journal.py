"""The settlement journal: settlements and releases the database could not take yet.

When PostgreSQL cannot be reached at settle (or release) time, the operation is appended
to a Redis stream (shared by every node, so any node replays it even if this one never
comes back), or, when Redis is down too, to an fsynced file under the data dir. A
tracked loop replays it when the database answers again. Replaying is exactly once
because every operation is idempotent per request id: an entry is deleted only after
the database confirmed it, and applying it twice changes nothing the second time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis

from alicode_gw.money.contract import MalformedOperation
from alicode_gw.store.unavailable import DATABASE_UNREACHABLE, REDIS_FAILED

log = logging.getLogger(__name__)

JOURNAL_FILE = "billing-journal.jsonl"


class SettlementJournal:
    """``state.billing.journal``: append, replay (through ``apply``), length."""

    def __init__(
        self,
        redis: Redis,
        stream_key: str,
        path: Path,
        apply: Callable[[dict[str, Any]], Awaitable[Any]],
        *,
        applied: Callable[[str], None] = lambda request_id: None,
    ) -> None:
        """``apply`` runs one entry against the database (raising when it cannot);
        ``applied`` is told the request id of each entry that is done."""
        self._redis = redis
        self.stream_key = stream_key
        self.path = path
        self._apply = apply
        self._applied = applied
        self._file_lock = asyncio.Lock()
        self._replay_lock = asyncio.Lock()
        self._replay_now = asyncio.Event()

    async def append(self, entry: dict[str, Any]) -> None:
        fields = {k: json.dumps(v) for k, v in entry.items()}
        try:
            await self._redis.xadd(self.stream_key, fields)  # type: ignore[arg-type]
        except REDIS_FAILED as exc:
            log.error("Redis unreachable too (%s); journaling to %s", exc, self.path)
            async with self._file_lock:
                await asyncio.to_thread(_append_line, self.path, json.dumps(entry))
        self._replay_now.set()

    async def replay(self) -> int:
        """Apply every journaled operation the database confirms; returns how many were
        applied. Stops (leaving the rest) at the first sign the database is still down."""
        async with self._replay_lock:
            applied = await self._replay_file()
            return applied + await self._replay_stream()

    async def _replay_stream(self) -> int:
        applied = 0
        while True:
            entries = await self._redis.xrange(self.stream_key, "-", "+", count=100)
            if not entries:
                return applied
            for entry_id, raw in entries:
                entry = {k.decode(): json.loads(v) for k, v in raw.items()}
                try:
                    await self._apply(entry)
                except (*DATABASE_UNREACHABLE, asyncpg.TransactionRollbackError):
                    return applied  # an outage, or a conflict that outlived its retries
                except (asyncpg.PostgresError, MalformedOperation) as exc:
                    # Not an outage: this entry can never apply. Park it where the
                    # operator sees it instead of blocking the journal behind it.
                    log.error("journaled %s cannot be applied (%s); parked", entry, exc)
                    await self._redis.xadd(self.stream_key + ":failed", raw)
                await self._redis.xdel(self.stream_key, entry_id)
                self._applied(str(entry["request_id"]))
                applied += 1

    async def _replay_file(self) -> int:
        async with self._file_lock:
            lines = await asyncio.to_thread(_read_lines, self.path)
            if not lines:
                return 0
            applied = 0
            for line in lines:
                try:
                    await self._apply(json.loads(line))
                except (*DATABASE_UNREACHABLE, asyncpg.TransactionRollbackError):
                    break
                except (asyncpg.PostgresError, MalformedOperation) as exc:
                    log.error("journaled %s cannot be applied (%s); parked", line, exc)
                    failed = self.path.with_suffix(".failed")
                    await asyncio.to_thread(_append_line, failed, line)
                applied += 1
            await asyncio.to_thread(_remove_lines, self.path, lines[:applied])
            return applied

    async def length(self) -> int:
        """Operations waiting in the journal (stream and file)."""
        async with self._file_lock:
            in_file = len(await asyncio.to_thread(_read_lines, self.path))
        return in_file + int(await self._redis.xlen(self.stream_key))

    async def run(self, interval: float) -> None:
        """Replay whenever something was journaled, and every ``interval`` seconds (a
        tracked perpetual task)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._replay_now.wait(), interval)
            self._replay_now.clear()
            try:
                applied = await self.replay()
            except REDIS_FAILED as exc:
                log.warning("billing journal replay failed: %s", exc)
                continue
            except Exception:  # keep the replayer alive; the journal keeps the entries
                log.exception("billing journal replay failed")
                continue
            if applied:
                log.info("billing journal: applied %d journaled operation(s)", applied)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``<journal>.lock`` across processes: the workers of one node
    (``serve --workers N``) share the data dir, so appends, reads and removals of the
    journal file must not interleave between them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_suffix(".lock").open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _append_line(path: Path, line: str) -> None:
    with _locked(path), path.open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _read_lines(path: Path) -> list[str]:
    with _locked(path):
        try:
            return [line for line in path.read_text("utf-8").splitlines() if line.strip()]
        except FileNotFoundError:
            return []


def _remove_lines(path: Path, done: list[str]) -> None:
    """Drop the applied entries ``done`` from the file, keeping every other line —
    including those another process appended (or already removed) since they were read."""
    if not done:
        return
    with _locked(path):
        try:
            current = [line for line in path.read_text("utf-8").splitlines() if line.strip()]
        except FileNotFoundError:
            return
        pending = collections.Counter(done)
        kept: list[str] = []
        for line in current:
            if pending[line] > 0:
                pending[line] -= 1
            else:
                kept.append(line)
        if not kept:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in kept))
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
