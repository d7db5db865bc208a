"""``alicode-gw worker``: a process for background work only, no HTTP.

It runs the node-independent maintenance loops that every gateway process also runs:
the hold sweeper (the holds and leases of dead nodes, and those past their expiry, give
their reservation back), the
billing journal replay (settlements journaled while PostgreSQL was unreachable)
and the purge of deleted files (:mod:`alicode_gw.files.purge`).
It also runs the message batches loop (:mod:`alicode_gw.batches.poller`; at
``ALICODE_BATCH_POLL_INTERVAL``, or every 5 s when the gateways run none).

Running it next to the gateways is optional and safe: ``billing.expire_holds`` takes a
transaction advisory lock and skips rows locked by a concurrent settlement (``FOR
UPDATE SKIP LOCKED``), and a journaled settlement or release is idempotent per request
id in SQL (a second apply answers ``already_settled`` / ``already_released``), so two
processes replaying the same Redis stream entry apply it once. The gateways keep their
own loops, so the service works without this process too.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import aiohttp
import uvloop

from alicode_gw.app import upstream_session
from alicode_gw.batches.poller import build_poller
from alicode_gw.config import Config
from alicode_gw.files.purge import FilePurger
from alicode_gw.limits.limiter import Limiter
from alicode_gw.money.billing import Billing
from alicode_gw.store.backends import Backends, configured_backends, create_pool, create_redis
from alicode_gw.tasks import TaskTracker

log = logging.getLogger(__name__)

POOL_SIZE = 2


async def run_until_signalled(config: Config, backends: Backends) -> None:
    """Run the background loops until SIGTERM or SIGINT, then drain and close."""
    db = await create_pool(backends.database_url, POOL_SIZE)
    redis = create_redis(backends.redis_url, max_connections=10)
    tasks = TaskTracker()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    http: aiohttp.ClientSession | None = None
    limiter: Limiter | None = None
    try:
        billing = Billing(
            db,
            redis,
            redis_prefix=config.redis_prefix,
            data_dir=config.data_dir,
            sweep_interval=config.hold_sweep_interval,
            dead_after=config.node_dead_after,
            tasks=tasks,
        )
        billing.start(tasks)
        purger = FilePurger(
            db, grace=config.files_purge_grace, interval=config.files_purge_interval
        )
        tasks.spawn(purger.run(), name="file-purge", perpetual=True)
        limiter = Limiter(redis, config.redis_prefix, ip_rpm=0, ip_concurrency=0, tasks=tasks)
        http = upstream_session(config)
        tasks.spawn(
            build_poller(config, db, http, redis, limiter).run(),
            name="message-batches",
            perpetual=True,
        )
        log.info(
            "background worker running: hold sweeper, billing journal replay, file purge, "
            "message batches"
        )
        await stop.wait()
        log.info("background worker stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await tasks.drain(config.shutdown_timeout)
        if http is not None:
            await http.close()
        if limiter is not None:
            limiter.close()
        await redis.aclose()
        await db.close()


def run(config: Config) -> int:
    """Blocking entry point of ``alicode-gw worker``."""
    uvloop.run(run_until_signalled(config, configured_backends(config)))
    return 0
