"""Register, log in, log out, and set a password through a one-time link.

A login answers the same page, status and (one bcrypt check either way) time for an
unknown email and a wrong password; failures count against the address and the email
(:mod:`~alicode_gw.dashboard.throttle`). A login always opens a new session.
"""

from __future__ import annotations

from aiohttp import web

from alicode_gw.dashboard import sessions, store
from alicode_gw.dashboard.passwords import PasswordError, check_new
from alicode_gw.dashboard.site import Page
from alicode_gw.errors import NotFoundError
from alicode_gw.identity import accounts

LOGIN_FAILED = "Wrong email or password."
SUSPENDED = "This account is suspended by the operator; contact them to sign in again."


async def open_session(page: Page, account_id: int, location: str) -> web.StreamResponse:
    """A new session for ``account_id`` (the browser's previous one ended), and a
    redirect to ``location`` that sets its cookie."""
    old = page.ctx.request.cookies.get(sessions.COOKIE)
    if old:
        await store.value(page.db, "session_end", token_hash=sessions.token_hash(old))
    token = sessions.new_token()
    lifetime = page.dashboard.config.dashboard_session_lifetime
    await store.value(
        page.db,
        "session_open",
        token_hash=sessions.token_hash(token),
        account_id=account_id,
        lifetime_s=lifetime,
    )
    response = page.redirect(location)
    sessions.set_cookie(response, sessions.COOKIE, token, secure=page.secure, max_age=int(lifetime))
    return response


async def login_form(page: Page) -> web.StreamResponse:
    if page.viewer is not None:
        return page.redirect("/dashboard")
    return page.render("login.html", email="", error=None, notice=page.query.get("notice"))


async def login(page: Page) -> web.StreamResponse:
    email, password = page.field("email").strip(), page.field("password")
    throttle, ip = page.dashboard.throttle, page.ctx.ip
    await throttle.check("login", ip, email)
    found = await store.rows(page.db, "login_row", email=email) if email else []
    stored = found[0]["password_hash"] if found else None
    if not await page.dashboard.passwords.verify(password, stored):
        await throttle.count("login", ip, email)
        return page.render("login.html", status=401, email=email, error=LOGIN_FAILED, notice=None)
    if found[0]["status"] == "suspended":  # said only to whoever knows the password
        return page.render("login.html", status=403, email=email, error=SUSPENDED, notice=None)
    return await open_session(page, found[0]["account_id"], "/dashboard")


def _registration_open(page: Page) -> None:
    if page.dashboard.config.dashboard_registration != "open":
        raise NotFoundError(
            "Registration is closed: the operator creates accounts and sends a link to set "
            "the password."
        )


async def register_form(page: Page) -> web.StreamResponse:
    _registration_open(page)
    return page.render("register.html", email="", error=None)


async def register(page: Page) -> web.StreamResponse:
    _registration_open(page)
    email, password = page.field("email").strip(), page.field("password")
    throttle, ip = page.dashboard.throttle, page.ctx.ip
    await throttle.check("register", ip, email)
    await throttle.count("register", ip, email)
    error = None
    if password != page.field("confirm"):
        error = "The two passwords differ."
    else:
        try:
            check_new(password)
            account = await accounts.create_account(
                page.db, email, password, cost=page.dashboard.passwords.cost
            )
        except PasswordError as exc:
            error = str(exc)
        except accounts.AccountExistsError:
            error = "This email cannot be registered. Sign in, or use another email."
        except accounts.AccountError:
            error = "That is not an email address."
    if error is not None:
        return page.render("register.html", status=400, email=email, error=error)
    return await open_session(page, account.id, "/dashboard")


async def logout(page: Page) -> web.StreamResponse:
    token = page.ctx.request.cookies.get(sessions.COOKIE)
    if token:
        await store.value(page.db, "session_end", token_hash=sessions.token_hash(token))
    response = page.redirect("/dashboard/login")
    sessions.clear_cookie(response, sessions.COOKIE, secure=page.secure)
    return response


async def _link_account(page: Page, token: str) -> tuple[int, str]:
    found = await store.rows(
        page.db, "password_link_account", token_hash=sessions.token_hash(token)
    )
    if not token or not found:
        raise NotFoundError(
            "This link is unknown, used or expired; ask the operator for a new one."
        )
    return found[0]["account_id"], found[0]["email"]


async def setup_form(page: Page) -> web.StreamResponse:
    token = page.query.get("token", "")
    _, email = await _link_account(page, token)
    return page.render("setup.html", token=token, email=email, error=None)


async def setup(page: Page) -> web.StreamResponse:
    token = page.field("token")
    account_id, email = await _link_account(page, token)
    password = page.field("password")
    try:
        if password != page.field("confirm"):
            raise PasswordError("The two passwords differ.")
        hashed = await page.dashboard.passwords.hash(password)
    except PasswordError as exc:
        return page.render("setup.html", status=400, token=token, email=email, error=str(exc))
    await store.value(page.db, "set_password", account_id=account_id, password_hash=hashed)
    return page.redirect("/dashboard/login?notice=password-set")
