"""The purge of deleted files: their rows go ``ALICODE_FILES_PURGE_GRACE`` after the
deletion (a deleted file is 404 at once), with those of uploads a dead process left
behind. Every gateway process and ``alicode-gw worker`` run it; concurrent runs skip
each other's rows (``files_purge``, ``FOR UPDATE SKIP LOCKED``)."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from alicode_gw.files import store
from alicode_gw.store.unavailable import DATABASE_UNREACHABLE

log = logging.getLogger(__name__)


class FilePurger:
    def __init__(self, db: asyncpg.Pool, *, grace: float, interval: float) -> None:
        self._db = db
        self.grace = grace
        self.interval = interval

    async def purge_once(self) -> int:
        gone = await store.purge(self._db, self.grace)
        if gone:
            log.info("file purge: removed %d deleted or abandoned file(s)", gone)
        return gone

    async def run(self) -> None:
        """Purge every ``interval`` seconds, forever (a tracked perpetual task)."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.purge_once()
            except DATABASE_UNREACHABLE as exc:
                log.warning("file purge: database unreachable (%s)", exc)
            except Exception:  # keep the loop alive; the next round retries
                log.exception("file purge failed")
