"""/dashboard/account: change the password, the emergency stop, deleting the account.

The emergency stop is the CLI's ``account stop``
(:func:`~alicode_gw.identity.revocation.stop_account`): every key revoked on every node.
Deletion (password confirmed) runs ``dashboard.delete_account``: keys revoked and
announced, sessions ended, email and client IPs erased, money rows kept (anonymised),
so ``alicode-gw audit`` still balances.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from alicode_gw.dashboard import sessions, store
from alicode_gw.dashboard.auth_pages import open_session
from alicode_gw.dashboard.passwords import PasswordError
from alicode_gw.dashboard.site import Page
from alicode_gw.files.store import delete_account_files
from alicode_gw.identity import revocation
from alicode_gw.identity.auth import announce_revoked

WRONG_PASSWORD = "The current password is wrong."


async def _render(page: Page, status: int = 200, **values: Any) -> web.StreamResponse:
    values.setdefault("error", None)
    values.setdefault("notice", page.query.get("notice"))
    return page.render("account.html", status=status, **values)


async def account_page(page: Page) -> web.StreamResponse:
    return await _render(page)


async def _password_ok(page: Page, password: str) -> bool:
    """Whether ``password`` is the account's; wrong ones are throttled as logins are
    (a session alone must not be enough to guess the password that guards deletion)."""
    throttle, ip, email = page.dashboard.throttle, page.ctx.ip, page.me.email
    await throttle.check("login", ip, email)
    found = await store.rows(page.db, "login_row", email=email)
    stored = found[0]["password_hash"] if found else None
    if await page.dashboard.passwords.verify(password, stored):
        return True
    await throttle.count("login", ip, email)
    return False


async def change_password(page: Page) -> web.StreamResponse:
    if not await _password_ok(page, page.field("current")):
        return await _render(page, status=400, error=WRONG_PASSWORD)
    try:
        if page.field("password") != page.field("confirm"):
            raise PasswordError("The two new passwords differ.")
        hashed = await page.dashboard.passwords.hash(page.field("password"))
    except PasswordError as exc:
        return await _render(page, status=400, error=str(exc))
    # Every session ends (this one too); this browser gets a new one.
    await store.value(page.db, "set_password", account_id=page.me.account_id, password_hash=hashed)
    return await open_session(page, page.me.account_id, "/dashboard/account?notice=password")


async def emergency_stop(page: Page) -> web.StreamResponse:
    if page.field("confirm") != "stop":
        return await _render(page, status=400, error="Tick the box to confirm the stop.")
    state = page.ctx.state
    await revocation.stop_account(page.db, state.redis, state.config.redis_prefix, page.me.email)
    return page.redirect("/dashboard/account?notice=stopped")


async def delete_account(page: Page) -> web.StreamResponse:
    if not await _password_ok(page, page.field("password")):
        return await _render(page, status=400, error=WRONG_PASSWORD)
    state = page.ctx.state
    account_id = page.me.account_id
    async with state.db.acquire() as conn, conn.transaction():
        await delete_account_files(conn, account_id)  # at once, with no grace period
        revoked = await store.rows(conn, "delete_account", account_id=account_id)
    await announce_revoked(
        state.redis, state.config.redis_prefix, [r["public_id"] for r in revoked]
    )
    response = page.redirect("/dashboard/login?notice=deleted")
    sessions.clear_cookie(response, sessions.COOKIE, secure=page.secure)
    return response
