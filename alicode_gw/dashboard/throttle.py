"""Login and registration throttling in Redis, per client IP and per email.

Each failed login (each registration) counts against the address and the email; past
``attempts`` within ``window`` seconds further tries are refused (429) until the window
ends. The count is the authenticator's script (:data:`~alicode_gw.identity.auth.COUNT_LUA`).
Emails appear in Redis keys only as a digest. Redis unreachable: refused (fail closed).
"""

from __future__ import annotations

import hashlib
import math

from redis.asyncio import Redis

from alicode_gw.errors import RateLimitError, ServiceUnavailableError
from alicode_gw.identity.auth import COUNT_LUA
from alicode_gw.store.unavailable import REDIS_FAILED

THROTTLED = "Too many attempts; try again in {minutes} minute(s)."


class Throttle:
    def __init__(self, redis: Redis, prefix: str, attempts: int, window: float) -> None:
        self._redis = redis
        self._prefix = f"{prefix}dash:"
        self.attempts = attempts
        self.window_ms = int(window * 1000)
        self._count = redis.register_script(COUNT_LUA)

    def _keys(self, kind: str, ip: str, email: str) -> list[str]:
        digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
        return [f"{self._prefix}{kind}:ip:{ip}", f"{self._prefix}{kind}:email:{digest}"]

    async def check(self, kind: str, ip: str, email: str) -> None:
        """:class:`RateLimitError` when the address or the email is over its count."""
        keys = self._keys(kind, ip, email)
        try:
            pipe = self._redis.pipeline(transaction=False)
            for key in keys:
                pipe.get(key)
                pipe.pttl(key)
            replies = await pipe.execute()
        except REDIS_FAILED as exc:
            raise ServiceUnavailableError("Sign-in is unavailable; retry shortly.") from exc
        for count, ttl in zip(replies[::2], replies[1::2], strict=True):
            if count is not None and int(count) >= self.attempts and ttl > 0:
                minutes = max(1, math.ceil(ttl / 60000))
                raise RateLimitError(
                    THROTTLED.format(minutes=minutes),
                    headers={"retry-after": str(math.ceil(ttl / 1000))},
                )

    async def count(self, kind: str, ip: str, email: str) -> None:
        """Count one attempt against the address and the email."""
        try:
            for key in self._keys(kind, ip, email):
                await self._count(keys=[key], args=[self.window_ms])
        except REDIS_FAILED as exc:
            raise ServiceUnavailableError("Sign-in is unavailable; retry shortly.") from exc
