"""The operator's side of the money: top-ups, an account's balance, and the audit that
checks every account's books add up (balance == top-ups - charges, held == open holds).

All amounts are integer nano-USD; the SQL functions are in ``sql/functions/billing_*.sql``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from alicode_gw.money.usd import format_usd


class LedgerError(ValueError):
    """An operator action on the ledger that cannot be done (unknown account, bad amount)."""


@dataclass(frozen=True, slots=True)
class AuditDifference:
    """One account whose books do not add up."""

    account_id: int
    email: str
    balance_nanos: int
    ledger_nanos: int
    held_nanos: int
    open_holds_nanos: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "email": self.email,
            "balance_usd": format_usd(self.balance_nanos),
            "ledger_usd": format_usd(self.ledger_nanos),
            "balance_difference_usd": format_usd(self.balance_nanos - self.ledger_nanos),
            "held_usd": format_usd(self.held_nanos),
            "open_holds_usd": format_usd(self.open_holds_nanos),
            "held_difference_usd": format_usd(self.held_nanos - self.open_holds_nanos),
        }


async def account_id_by_email(conn: asyncpg.Connection, email: str) -> int:
    account_id = await conn.fetchval(
        "SELECT id FROM accounts WHERE lower(email) = lower($1)", email
    )
    if account_id is None:
        raise LedgerError(f"no account with email {email!r}")
    return int(account_id)


async def topup(
    conn: asyncpg.Connection, email: str, amount_nanos: int, note: str | None = None
) -> int:
    """Credit the account (one ledger row); returns the new balance in nano-USD."""
    if amount_nanos <= 0:
        raise LedgerError("a top-up must be a positive amount")
    if amount_nanos >= 2**62:  # the balance is a bigint: far beyond any real top-up
        raise LedgerError("a top-up that large is not taken")
    account_id = await account_id_by_email(conn, email)
    return int(
        await conn.fetchval("SELECT billing.topup($1, $2, $3)", account_id, amount_nanos, note)
    )


async def account_summary(conn: asyncpg.Connection, email: str) -> dict[str, Any]:
    """The account with its balance, held and available amounts (exact USD strings);
    ``held`` includes what nodes hold in credit leases of it (``leased``)."""
    row = await conn.fetchrow(
        """
        SELECT a.id, a.email, a.status, a.created_at, a.balance_nanos, a.held_nanos,
               (SELECT count(*) FROM billing_holds h
                 WHERE h.account_id = a.id AND h.status = 'held') AS open_holds,
               coalesce((SELECT sum(l.amount_nanos) FROM billing_leases l
                          WHERE l.account_id = a.id AND l.status = 'open'), 0) AS leased,
               coalesce((SELECT sum(l.amount_nanos) FROM ledger l
                          WHERE l.account_id = a.id AND l.kind = 'topup'), 0) AS topups,
               coalesce((SELECT -sum(l.amount_nanos) FROM ledger l
                          WHERE l.account_id = a.id AND l.kind = 'charge'), 0) AS charges,
               (SELECT count(*) FROM ledger l
                 WHERE l.account_id = a.id AND l.kind = 'charge') AS requests_billed
          FROM accounts a WHERE lower(a.email) = lower($1)
        """,
        email,
    )
    if row is None:
        raise LedgerError(f"no account with email {email!r}")
    balance, held = int(row["balance_nanos"]), int(row["held_nanos"])
    return {
        "id": row["id"],
        "email": row["email"],
        "status": row["status"],
        "created_at": row["created_at"].isoformat(),
        "balance_usd": format_usd(balance),
        "held_usd": format_usd(held),
        "leased_usd": format_usd(int(row["leased"])),
        "available_usd": format_usd(balance - held),
        "balance_nanos": balance,
        "held_nanos": held,
        "open_holds": row["open_holds"],
        "topups_usd": format_usd(int(row["topups"])),
        "charges_usd": format_usd(int(row["charges"])),
        "requests_billed": row["requests_billed"],
    }


async def audit(conn: asyncpg.Connection | asyncpg.Pool) -> list[AuditDifference]:
    """Every account whose books do not add up; an empty list means all is well."""
    rows = await conn.fetch("SELECT * FROM billing.audit()")
    return [
        AuditDifference(
            account_id=row["account_id"],
            email=row["email"],
            balance_nanos=row["balance_nanos"],
            ledger_nanos=row["ledger_nanos"],
            held_nanos=row["held_nanos"],
            open_holds_nanos=row["open_holds_nanos"],
        )
        for row in rows
    ]
