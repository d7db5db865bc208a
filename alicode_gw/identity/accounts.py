"""Accounts and API keys in PostgreSQL: the operations of the CLI, the tests and (later)
the dashboard, plus the one lookup authentication needs.

Secrets never pass through here in clear except once, as the return value of
:func:`create_key`. Money is integer nano-USD (``money.usd.parse_usd`` / ``format_usd``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import bcrypt

from alicode_gw.identity import keys

Connection = asyncpg.Connection | asyncpg.Pool


class AccountError(Exception):
    """An account or key operation cannot be done as asked (the message says why)."""


class AccountExistsError(AccountError):
    pass


class AccountNotFoundError(AccountError):
    pass


class KeyNotFoundError(AccountError):
    pass


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    email: str
    status: str
    created_at: dt.datetime
    stopped_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An API key row (never its secret)."""

    id: int
    public_id: str
    account_id: int
    name: str
    status: str
    revoked_reason: str | None
    rpm_limit: int | None
    concurrency_limit: int | None
    budget_tokens: int | None
    spend_cap_nanos: int | None
    allowed_models: tuple[str, ...] | None
    spent_nanos: int
    last_used_at: dt.datetime | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    response_cache: bool = True  # may the key's requests use the response cache?

    @property
    def masked(self) -> str:
        return keys.masked(self.public_id)


@dataclass(frozen=True, slots=True)
class AuthRow:
    """What authentication needs about a key: its row, its hash, its account's status."""

    key: KeyRecord
    secret_hash: str
    account_status: str

    @property
    def usable(self) -> bool:
        """Active key of an active account, under its spend cap."""
        cap = self.key.spend_cap_nanos
        return (
            self.key.status == "active"
            and self.account_status == "active"
            and (cap is None or self.key.spent_nanos < cap)
        )


_KEY_COLUMNS = """
    k.id, k.public_id, k.account_id, k.name, k.status, k.revoked_reason,
    k.rpm_limit, k.concurrency_limit, k.budget_tokens, k.spend_cap_nanos,
    k.allowed_models, k.spent_nanos, k.last_used_at, k.created_at, k.revoked_at,
    k.response_cache
"""


def _key(row: asyncpg.Record) -> KeyRecord:
    models = row["allowed_models"]
    return KeyRecord(
        id=row["id"],
        public_id=row["public_id"],
        account_id=row["account_id"],
        name=row["name"],
        status=row["status"],
        revoked_reason=row["revoked_reason"],
        rpm_limit=row["rpm_limit"],
        concurrency_limit=row["concurrency_limit"],
        budget_tokens=row["budget_tokens"],
        spend_cap_nanos=row["spend_cap_nanos"],
        allowed_models=None if models is None else tuple(models),
        spent_nanos=row["spent_nanos"],
        last_used_at=row["last_used_at"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        response_cache=row["response_cache"],
    )


def _account(row: asyncpg.Record) -> Account:
    return Account(row["id"], row["email"], row["status"], row["created_at"], row["stopped_at"])


def _check_email(email: str) -> str:
    email = email.strip()
    local, at, domain = email.rpartition("@")
    if not at or not local or "." not in domain or any(ch.isspace() for ch in email):
        raise AccountError(f"not an email address: {email!r}")
    return email


async def find_account(conn: Connection, email: str) -> Account | None:
    row = await conn.fetchrow(
        "SELECT id, email, status, created_at, stopped_at FROM accounts"
        " WHERE lower(email) = lower($1)",
        email.strip(),
    )
    return None if row is None else _account(row)


async def _require_account(conn: Connection, email: str) -> Account:
    account = await find_account(conn, email)
    if account is None:
        raise AccountNotFoundError(f"no account with email {email.strip()!r}")
    return account


async def create_account(
    conn: Connection,
    email: str,
    password: str | None = None,
    *,
    cost: int = keys.DEFAULT_BCRYPT_COST,
) -> Account:
    """A new active account; ``password`` (dashboard login) is stored as a bcrypt hash."""
    email = _check_email(email)
    password_hash = None
    if password is not None:
        if not password or len(password.encode()) > 72:
            raise AccountError("the password must be 1 to 72 bytes long")
        salt = bcrypt.gensalt(rounds=cost)
        hashed = await asyncio.to_thread(bcrypt.hashpw, password.encode(), salt)
        password_hash = hashed.decode("ascii")
    try:
        row = await conn.fetchrow(
            "INSERT INTO accounts (email, password_hash) VALUES ($1, $2)"
            " RETURNING id, email, status, created_at, stopped_at",
            email,
            password_hash,
        )
    except asyncpg.UniqueViolationError as exc:
        raise AccountExistsError(f"an account with email {email!r} already exists") from exc
    assert row is not None
    return _account(row)


def _positive(name: str, value: int | None) -> int | None:
    if value is not None and value <= 0:
        raise AccountError(f"{name} must be positive (omit it for no limit), got {value}")
    return value


async def create_key(
    conn: Connection,
    account_id: int,
    name: str,
    *,
    rpm: int | None = None,
    concurrency: int | None = None,
    budget_tokens: int | None = None,
    spend_cap_nanos: int | None = None,
    models: Sequence[str] | None = None,
    cost: int = keys.DEFAULT_BCRYPT_COST,
    response_cache: bool = True,
) -> tuple[KeyRecord, str]:
    """A new active key of an active account, and its full secret (shown once).
    ``response_cache``: False keeps the key's requests out of the response cache."""
    name = name.strip()
    if not name:
        raise AccountError("a key needs a name")
    _positive("rpm", rpm)
    _positive("concurrency", concurrency)
    _positive("budget_tokens", budget_tokens)
    _positive("spend_cap_nanos", spend_cap_nanos)
    allowed = None
    if models is not None:
        allowed = sorted({m.strip() for m in models if m.strip()})
        if not allowed:
            raise AccountError("the allowed-model list is empty (omit it to allow every model)")
    status = await conn.fetchval("SELECT status FROM accounts WHERE id = $1", account_id)
    if status is None:
        raise AccountNotFoundError(f"no account with id {account_id}")
    if status != "active":
        raise AccountError(f"account {account_id} is {status}; it cannot get new keys")
    secret = keys.new_secret()
    secret_hash = await asyncio.to_thread(keys.hash_secret, secret, cost)
    for _attempt in range(5):
        public_id = keys.new_public_id()
        try:
            row = await conn.fetchrow(
                f"""INSERT INTO api_keys AS k (account_id, public_id, name, secret_hash,
                        rpm_limit, concurrency_limit, budget_tokens, spend_cap_nanos,
                        allowed_models, response_cache)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                    RETURNING {_KEY_COLUMNS}""",
                account_id,
                public_id,
                name,
                secret_hash,
                rpm,
                concurrency,
                budget_tokens,
                spend_cap_nanos,
                allowed,
                response_cache,
            )
        except asyncpg.UniqueViolationError:
            continue  # a public id collision: astronomically rare, draw another
        assert row is not None
        return _key(row), keys.format_key(public_id, secret)
    raise AccountError("could not allocate a unique key id")


async def get_key(conn: Connection, key: int | str) -> KeyRecord | None:
    """A key by row id, public id or full key text."""
    column, value = _key_lookup(key)
    row = await conn.fetchrow(f"SELECT {_KEY_COLUMNS} FROM api_keys k WHERE k.{column} = $1", value)
    return None if row is None else _key(row)


def _key_lookup(key: int | str) -> tuple[str, int | str]:
    if isinstance(key, int):
        return "id", key
    text = key.strip()
    if text.isdigit():
        return "id", int(text)
    parsed = keys.parse_key(text)
    if parsed is not None:
        return "public_id", parsed.public_id
    if text.startswith(keys.PREFIX):
        text = text[len(keys.PREFIX) :].split("-", 1)[0]
    if not keys.is_public_id(text):
        raise KeyNotFoundError(f"not a key id: {key!r}")
    return "public_id", text


async def revoke_key(
    conn: Connection, key: int | str, reason: str = "revoked by operator"
) -> KeyRecord:
    """Revoke a key (row id, public id or full key). Revoking a revoked key is a no-op
    that returns it unchanged. The caller announces it with ``auth.announce_revoked``."""
    column, value = _key_lookup(key)
    row = await conn.fetchrow(
        f"""UPDATE api_keys k SET status = 'revoked', revoked_at = now(), revoked_reason = $2
            WHERE k.{column} = $1 AND k.status = 'active'
            RETURNING {_KEY_COLUMNS}""",
        value,
        reason,
    )
    if row is not None:
        return _key(row)
    existing = await get_key(conn, key)
    if existing is None:
        raise KeyNotFoundError(f"no key {key!r}")
    return existing


async def set_response_cache(conn: Connection, key: int | str, enabled: bool) -> KeyRecord:
    """Let a key's requests use the response cache, or keep them out of it (every node
    sees the change within the key check's cache TTL)."""
    column, value = _key_lookup(key)
    row = await conn.fetchrow(
        f"""UPDATE api_keys k SET response_cache = $2 WHERE k.{column} = $1
            RETURNING {_KEY_COLUMNS}""",
        value,
        enabled,
    )
    if row is None:
        raise KeyNotFoundError(f"no key {key!r}")
    return _key(row)


async def stop_account(conn: Connection, email: str) -> list[str]:
    """Emergency stop: the account is stopped and every active key revoked, atomically.
    Returns the revoked public ids (to announce)."""
    await _require_account(conn, email)
    rows = await conn.fetch("SELECT public_id FROM stop_account($1)", email.strip())
    return [row["public_id"] for row in rows]


async def list_keys(conn: Connection, email: str) -> list[KeyRecord]:
    account = await _require_account(conn, email)
    rows = await conn.fetch(
        f"SELECT {_KEY_COLUMNS} FROM api_keys k WHERE k.account_id = $1 ORDER BY k.id",
        account.id,
    )
    return [_key(row) for row in rows]


async def fetch_auth_row(conn: Connection, public_id: str) -> AuthRow | None:
    """The key with this public id, its hash and its account's status (one query)."""
    row = await conn.fetchrow(
        f"""SELECT {_KEY_COLUMNS}, k.secret_hash, a.status AS account_status
            FROM api_keys k JOIN accounts a ON a.id = k.account_id
            WHERE k.public_id = $1""",
        public_id,
    )
    if row is None:
        return None
    return AuthRow(_key(row), row["secret_hash"], row["account_status"])


async def touch_keys(conn: Connection, last_used: dict[int, dt.datetime]) -> None:
    """Record when keys were last used (batched by the authenticator, never per request)."""
    if not last_used:
        return
    await conn.execute(
        """UPDATE api_keys k SET last_used_at = GREATEST(k.last_used_at, u.at)
           FROM unnest($1::bigint[], $2::timestamptz[]) AS u(id, at)
           WHERE k.id = u.id""",
        list(last_used),
        list(last_used.values()),
    )
