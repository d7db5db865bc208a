"""This process as a billing node: the owner of its holds and credit leases.

A node registers in ``billing_nodes`` and renews its heartbeat there every
``heartbeat_interval`` seconds (``billing.node_beat``: one small UPSERT, a tracked
background task, never on the request path). Every hold the node makes carries its id,
and so does every lease (``billing_leases.owner``). The sweeper of any process
(``billing.expire_dead_nodes``, run by :meth:`Billing.sweep
<alicode_gw.money.billing.Billing.sweep>`) gives back the holds and closes the leases of
a node whose heartbeat is older than ``dead_after``: the money of a node that died is
free again within ``dead_after`` plus one sweep interval.

A restarted node does not wait for that. Each process takes a *slot* under its data dir
(``<data dir>/nodes/slot-N``, an exclusive ``flock`` that the kernel drops when the
process dies, however it dies) and writes its id there. A slot that can be taken is one
whose last holder is dead, so the new process retires that node (``billing.node_retire``)
and its sweep at start gives the money back before the first request is admitted. A
process that is only paused (SIGSTOP) or cut from the database keeps its slot, so only
the heartbeat window can declare it dead; when it comes back, its late settlements are
billed as those of expired holds (once, from the free balance) and it drops its leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg

from alicode_gw.money.contract import NodeBeat, NodeRetire, call
from alicode_gw.store.unavailable import DATABASE_FAILED

log = logging.getLogger(__name__)

SLOTS_DIR = "nodes"


def new_node_id() -> str:
    """A process's node id (``billing_nodes.id``, ``billing_leases.owner``)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def claim_slot(data_dir: Path, node_id: str) -> tuple[int, str | None]:
    """Lock the first free slot under ``data_dir`` and write ``node_id`` into it; returns
    the locked file descriptor (keep it open while the process lives) and the id of the
    slot's previous holder, which is dead (None: a new slot)."""
    directory = data_dir / SLOTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    number = 0
    while True:
        fd = os.open(directory / f"slot-{number}", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            number += 1
            continue
        previous = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or None
        os.ftruncate(fd, 0)
        os.pwrite(fd, node_id.encode(), 0)
        os.fsync(fd)
        return fd, previous


class Node:
    """``state.node``: this process's id, heartbeat and slot."""

    def __init__(
        self,
        db: asyncpg.Pool,
        *,
        data_dir: Path | None = None,
        heartbeat_interval: float = 5.0,
        dead_after: float = 30.0,
        db_timeout: float = 10.0,
        node_id: str | None = None,
    ) -> None:
        """``data_dir``: where this process takes its slot (None: no slot, so a restart
        is recognised by the heartbeat window only)."""
        if dead_after <= 2 * heartbeat_interval:
            raise ValueError("dead_after must exceed two heartbeat intervals")
        self._db = db
        self._data_dir = data_dir
        self.heartbeat_interval = heartbeat_interval
        self.dead_after = dead_after
        self._db_timeout = db_timeout
        self.id = node_id or new_node_id()
        self.predecessor: str | None = None
        self._slot: int | None = None
        self._beat_sent: float | None = None  # monotonic send time of the last beat that landed
        self._revived: list[Callable[[], None]] = []

    def on_revived(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when a beat lands after a gap long enough that the other
        nodes may have declared this one dead (and given back its holds and leases)."""
        self._revived.append(callback)

    def usable_until(self) -> float:
        """The monotonic time until which no sweeper can have declared this node dead
        (its last landed beat plus the window, less one interval of margin); 0 before
        its first beat."""
        if self._beat_sent is None:
            return 0.0
        return self._beat_sent + self.dead_after - self.heartbeat_interval

    async def join(self) -> None:
        """Take a slot, register, and retire the slot's previous holder (dead). A
        database that cannot be reached is only logged: the heartbeat loop registers
        the node later, and the window releases the predecessor's money."""
        if self._data_dir is not None and self._slot is None:
            self._slot, self.predecessor = await asyncio.to_thread(
                claim_slot, self._data_dir, self.id
            )
        try:
            await self.beat()
            if self.predecessor is not None:
                async with asyncio.timeout(self._db_timeout):
                    await call(self._db, NodeRetire(self.predecessor))
                log.info("node %s: retired its predecessor %s", self.id, self.predecessor)
        except DATABASE_FAILED as exc:
            log.warning("node %s not registered yet: %s", self.id, exc)

    async def beat(self) -> None:
        sent = time.monotonic()
        async with asyncio.timeout(self._db_timeout):
            await call(self._db, NodeBeat(self.id))
        gap = self._beat_sent is not None and sent > self.usable_until()
        self._beat_sent = sent
        if gap:
            log.warning("node %s: heartbeat resumed after a gap; its leases are dropped", self.id)
            for callback in self._revived:
                callback()

    async def run(self) -> None:
        """Beat forever (a tracked perpetual task)."""
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                await self.beat()
            except DATABASE_FAILED as exc:
                log.warning("node %s: heartbeat not sent: %s", self.id, exc)

    def close(self) -> None:
        """Give the slot up (the process stops)."""
        if self._slot is not None:
            with contextlib.suppress(OSError):
                os.close(self._slot)
            self._slot = None
