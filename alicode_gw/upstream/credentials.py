"""The upstream credentials as data: the :class:`Credential` value (its secret never in
``repr``) and the operations on the ``upstream_credentials`` table that the CLI and
``alicode-gw dev`` use. The pool that picks among them is :mod:`alicode_gw.upstream.pool`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

# ---------------------------------------------------------------- credentials


def mask_secret(secret: str) -> str:
    """``sk-ant-…abcd``: enough to recognise a key, never enough to use it."""
    if len(secret) < 12:
        return "…"
    prefix = "sk-ant-" if secret.startswith("sk-ant-") else secret[:3]
    return f"{prefix}…{secret[-4:]}"


@dataclass(frozen=True, slots=True)
class Credential:
    """One upstream API key. ``secret`` is excluded from ``repr``/``str``."""

    id: int
    name: str
    weight: int
    secret: str = field(repr=False)
    cache_group: str | None = None  # the organization/workspace; None: its own group

    @property
    def display(self) -> str:
        return mask_secret(self.secret)


# ---------------------------------------------------------------- the table


class PoolError(ValueError):
    """An operator request on the pool that cannot be done (message safe to print)."""


MAX_WEIGHT = 1000


async def add_credential(
    conn: asyncpg.Connection | asyncpg.Pool,
    secret: str,
    *,
    name: str | None = None,
    weight: int = 1,
    cache_group: str | None = None,
) -> Credential:
    """Insert a credential. Default name: ``key-`` and the secret's last 4 characters.
    ``cache_group``: the organization or workspace whose prompt cache it shares."""
    secret = secret.strip()
    if len(secret) < 8 or any(ch.isspace() for ch in secret):
        raise PoolError("the key must be at least 8 characters without spaces")
    if not 0 < weight <= MAX_WEIGHT:
        raise PoolError(f"the weight must be 1-{MAX_WEIGHT}")
    if name is not None and not name.strip():
        raise PoolError("the name must not be empty")
    if cache_group is not None and not 0 < len(cache_group) <= 100:
        raise PoolError("the cache group must be 1-100 characters")
    if cache_group is not None and any(ch.isspace() for ch in cache_group):
        raise PoolError("the cache group must not contain spaces")
    candidates = [name.strip()] if name else [f"key-{secret[-4:]}"]
    if not name:
        candidates += [f"{candidates[0]}-{n}" for n in range(2, 100)]
    for candidate in candidates:
        try:
            row = await conn.fetchrow(
                "INSERT INTO upstream_credentials (name, secret, weight, cache_group)"
                " VALUES ($1, $2, $3, $4) RETURNING id",
                candidate,
                secret,
                weight,
                cache_group,
            )
        except asyncpg.UniqueViolationError as exc:  # its detail quotes the secret: drop it
            if exc.constraint_name == "upstream_credentials_secret_key":
                existing = await conn.fetchval(
                    "SELECT name FROM upstream_credentials WHERE secret = $1", secret
                )
                raise PoolError(f"this key is already in the pool as {existing!r}") from None
            continue
        assert row is not None
        return Credential(row["id"], candidate, weight, secret, cache_group)
    raise PoolError(f"an upstream credential named {candidates[0]!r} already exists")


async def ensure_credentials(conn: asyncpg.Connection | asyncpg.Pool, keys: list[str]) -> None:
    """Make each key an active pool member (``alicode-gw dev``'s keys): add the missing
    ones, re-enable the ones an earlier run or a failure had disabled."""
    for secret in keys:
        secret = secret.strip()
        updated = await conn.fetchval(
            "UPDATE upstream_credentials SET status = 'active', disabled_reason = NULL,"
            " disabled_at = NULL, updated_at = now() WHERE secret = $1 RETURNING id",
            secret,
        )
        if updated is None:
            await add_credential(conn, secret)


async def disable_credential(
    conn: asyncpg.Connection | asyncpg.Pool, secret: str, reason: str
) -> None:
    """Disable the credential with this key, if it is in the pool and active."""
    await conn.execute(
        "UPDATE upstream_credentials SET status = 'disabled', disabled_reason = $2,"
        " disabled_at = now(), updated_at = now() WHERE secret = $1 AND status = 'active'",
        secret.strip(),
        reason,
    )
