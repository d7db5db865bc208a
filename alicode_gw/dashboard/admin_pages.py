"""/admin: the operator's pages, for accounts marked operator
(``alicode-gw account operator``); anyone else gets 404.

Top-up is ``money.ledger.topup``, the function of ``alicode-gw account topup``, so both
write the same ledger row. Suspending makes every node re-read the account's keys
(their account is no longer active: 401). The upstream credentials are shown through
:mod:`~alicode_gw.upstream.operator` (masked, never a secret) and switched with it.
"""

from __future__ import annotations

from aiohttp import web

from alicode_gw.dashboard import store
from alicode_gw.dashboard.site import Page, row_id
from alicode_gw.errors import NotFoundError
from alicode_gw.identity import accounts
from alicode_gw.identity.auth import announce_revoked
from alicode_gw.money import ledger
from alicode_gw.money.usd import parse_usd
from alicode_gw.upstream import operator

SEARCH_LIMIT = 100


async def accounts_page(page: Page) -> web.StreamResponse:
    query = page.query.get("q", "").strip()
    found = await store.rows(page.db, "admin_accounts", query=query, limit=SEARCH_LIMIT)
    return page.render("admin_accounts.html", accounts=found, q=query)


async def _account(page: Page) -> dict:
    account_id = row_id(page.ctx.params["account_id"])
    if account_id is None:
        raise NotFoundError("No such account.")
    email = await page.db.fetchval("SELECT email FROM accounts WHERE id = $1", account_id)
    if email is None:
        raise NotFoundError("No such account.")
    return await ledger.account_summary(page.db, email)


async def account_page(
    page: Page, error: str | None = None, status: int = 200
) -> web.StreamResponse:
    summary = await _account(page)
    keys = await accounts.list_keys(page.db, summary["email"])
    return page.render(
        "admin_account.html",
        status=status,
        summary=summary,
        keys=keys,
        error=error,
        notice=page.query.get("notice"),
    )


async def topup(page: Page) -> web.StreamResponse:
    summary = await _account(page)
    if summary["status"] == "deleted":  # nobody could ever spend it
        return await account_page(page, error="Top-up: the account is deleted.", status=400)
    try:
        amount = parse_usd(page.field("usd"))
        note = page.field("note").strip() or None
        await ledger.topup(page.db, summary["email"], amount, note)
    except (ValueError, ledger.LedgerError) as exc:
        return await account_page(page, error=f"Top-up: {exc}", status=400)
    return page.redirect(f"/admin/accounts/{summary['id']}?notice=topup")


async def _suspend(page: Page, suspended: bool) -> web.StreamResponse:
    summary = await _account(page)
    found = await store.rows(
        page.db, "set_suspended", account_id=summary["id"], suspended=suspended
    )
    state = page.ctx.state
    await announce_revoked(state.redis, state.config.redis_prefix, [r["public_id"] for r in found])
    notice = "suspended" if suspended else "unsuspended"
    return page.redirect(f"/admin/accounts/{summary['id']}?notice={notice}")


async def suspend(page: Page) -> web.StreamResponse:
    return await _suspend(page, True)


async def unsuspend(page: Page) -> web.StreamResponse:
    return await _suspend(page, False)


async def upstream_page(page: Page) -> web.StreamResponse:
    state = page.ctx.state
    states = await operator.live_states(page.db, state.redis, state.config.redis_prefix)
    return page.render("admin_upstream.html", credentials=states)


async def upstream_change(page: Page) -> web.StreamResponse:
    action = page.ctx.params["action"]
    if action not in ("enable", "disable"):
        raise NotFoundError("No such action.")
    ref = page.ctx.params["cred_id"]
    if row_id(ref) is None:
        raise NotFoundError("No such credential.")
    state = page.ctx.state
    reason = page.field("reason").strip() or "disabled by the operator"
    row = await operator.change(
        page.db, state.redis, state.config.redis_prefix, ref, action, reason=reason
    )
    if row is None:
        raise NotFoundError("No such credential.")
    return page.redirect("/admin/upstream")
