"""The response cache's I/O: lookup and store in Redis, and the pipeline's hook.

One Redis key per entry, ``<prefix>respcache:<lookup id>`` (64 hex digits), its value
``nonce ‖ AES-GCM ciphertext`` (:mod:`alicode_gw.respcache.keys`), written with
``SET … EX ttl``; nothing else about a request is written. A lookup is one round trip
(``GET`` and ``PTTL`` pipelined); a store is a tracked task the answer does not wait for.
Both go over a lean connection of the cache's own (:class:`~alicode_gw.limits.resp.
RespConnection`, as the limits': a redis-py round trip costs several times its CPU).
Redis being unreachable never fails a request: the lookup counts as a miss (nothing is
stored), a failed store is logged.

Only the Anthropic surface (``/v1/messages``) is cached; see docs/response-cache.md.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.exceptions import ResponseError

from alicode_gw.limits.resp import RespConnection
from alicode_gw.respcache.keys import CacheKey, Entry, UnreadableEntry, cache_key, open_sealed, seal
from alicode_gw.store.unavailable import REDIS_FAILED
from alicode_gw.tasks import TaskTracker

if TYPE_CHECKING:
    from alicode_gw.identity.auth import ApiKey
    from alicode_gw.observe.metrics import Metrics

log = logging.getLogger(__name__)

HIT, MISS, BYPASS = "HIT", "MISS", "BYPASS"
NO_CACHE_HEADER = "x-no-cache"
_NO_CACHE_VALUES = frozenset({"true", "1"})
THREAD_THRESHOLD = 1 << 20  # bodies from this size are hashed in a thread
REDIS_TIMEOUT = 2.0  # seconds for a lookup's or a store's round trip


@dataclass(slots=True)
class Lookup:
    """The outcome of a lookup: the ``X-Cache`` value, the request's key (None on a
    bypass, or when Redis could not be asked: nothing is stored then), and on a hit
    the entry and its seconds left."""

    outcome: str
    key: CacheKey | None = None
    entry: Entry | None = None
    ttl_left: int = 0

    def headers(self) -> dict[str, str]:
        if self.entry is None:
            return {"x-cache": self.outcome}
        return {
            "x-cache": self.outcome,
            "x-cache-ttl": str(self.ttl_left),
            "x-tokens-saved": str(self.entry.tokens_saved),
        }


class ResponseCache:
    """``state.respcache`` (None when the cache is off)."""

    def __init__(
        self,
        redis: RespConnection,
        *,
        prefix: str,
        secret: bytes,
        ttl: int,
        max_bytes: int,
        metrics: Metrics,
        tasks: TaskTracker,
        default_version: str,
    ) -> None:
        """``default_version``: the anthropic-version the upstream receives when the
        client sends none (the key is of the request as the upstream receives it)."""
        self._redis = redis
        self._prefix = f"{prefix}respcache:"
        self._secret = secret
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._metrics = metrics
        self._tasks = tasks
        self._default_version = default_version

    def redis_key(self, key: CacheKey) -> str:
        return self._prefix + key.lookup_id

    async def lookup(
        self, key: ApiKey, headers: Mapping[str, str], body: bytes, stream: bool
    ) -> Lookup:
        """Bypass (the key opted out, or ``X-No-Cache: true`` in the request's
        ``headers``), hit or miss of ``body`` as it goes upstream."""
        no_cache = headers.get(NO_CACHE_HEADER, "").strip().lower() in _NO_CACHE_VALUES
        if no_cache or not key.response_cache:
            return self._counted(Lookup(BYPASS))
        args = (
            self._secret,
            key.account_id,
            body,
            headers.get("anthropic-version", self._default_version),  # as sent upstream
            headers.get("anthropic-beta"),
            stream,
        )
        if len(body) < THREAD_THRESHOLD:
            entry_key = cache_key(*args)
        else:
            entry_key = await asyncio.to_thread(cache_key, *args)
        return await self._find(entry_key)

    async def _find(self, key: CacheKey) -> Lookup:
        name = self.redis_key(key)
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                value, pttl = await self._redis.execute([("GET", name), ("PTTL", name)])
            for reply in (value, pttl):
                if isinstance(reply, ResponseError):
                    raise reply
        except REDIS_FAILED as exc:
            log.warning("response cache lookup failed: %r", exc)
            return self._counted(Lookup(MISS))
        if value is None:
            return self._counted(Lookup(MISS, key))
        try:
            entry = open_sealed(key, value)
        except UnreadableEntry:
            log.warning("response cache entry %s… unreadable; replaced", key.lookup_id[:12])
            return self._counted(Lookup(MISS, key))
        ttl_left = max(1, math.ceil(pttl / 1000)) if pttl > 0 else self.ttl
        return self._counted(Lookup(HIT, key, entry, ttl_left))

    def _counted(self, lookup: Lookup) -> Lookup:
        self._metrics.response_cache(lookup.outcome)
        return lookup

    def store_later(self, key: CacheKey, entry: Entry) -> None:
        """Store a complete answer in a tracked task (the answer does not wait), if it fits."""
        if len(entry.body) > self.max_bytes:
            return
        self._tasks.spawn(self.store(key, entry), name=f"respcache-{key.lookup_id[:12]}")

    async def store(self, key: CacheKey, entry: Entry) -> bool:
        value = seal(key, entry)
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                (reply,) = await self._redis.execute(
                    [("SET", self.redis_key(key), value, "EX", self.ttl)]
                )
            if isinstance(reply, ResponseError):
                raise reply
        except REDIS_FAILED as exc:
            log.warning("response cache store failed: %r", exc)
            return False
        self._metrics.response_cache_stored(len(value))
        return True

    def close(self) -> None:
        self._redis.close()
