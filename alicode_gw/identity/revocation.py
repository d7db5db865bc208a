"""Taking keys out of service on every node: the database change, then the announcement
(:func:`~alicode_gw.identity.auth.announce_revoked`) that makes every node's
authenticator drop them at once. The CLI and the dashboard both revoke through here."""

from __future__ import annotations

import asyncpg
from redis.asyncio import Redis

from alicode_gw.identity import accounts
from alicode_gw.identity.auth import announce_revoked


async def revoke_key(
    conn: accounts.Connection,
    redis: Redis,
    prefix: str,
    key: int | str,
    reason: str = "revoked by operator",
) -> accounts.KeyRecord:
    """Revoke a key (row id, public id or full key) and announce it."""
    record = await accounts.revoke_key(conn, key, reason)
    await announce_revoked(redis, prefix, [record.public_id])
    return record


async def stop_account(
    conn: asyncpg.Connection | asyncpg.Pool, redis: Redis, prefix: str, email: str
) -> list[str]:
    """Emergency stop: the account stopped, every active key revoked and announced.
    Returns the revoked public ids."""
    revoked = await accounts.stop_account(conn, email)
    await announce_revoked(redis, prefix, revoked)
    return revoked
