"""The dashboard's security properties over plain HTTP (no browser needed)."""

from __future__ import annotations

import csv
import html
import io
import ipaddress
import statistics
import time

import anthropic
import asyncpg

from alicode_gw import app
from alicode_gw.dashboard.passwords import Passwords
from alicode_gw.money import ledger
from tests.support.dashboard import PageClient
from tests.support.gateway import start_gateway, stop_gateway
from tests.support.keys import LOW_COST, unique_email

PASSWORD = "correct horse battery"
MODEL = "claude-sonnet-4-6"


async def _signed_in(client: PageClient) -> str:
    email = unique_email()
    answer = await client.register(email, PASSWORD)
    assert answer.status == 200, answer.text
    return email


async def _key_ids(db: asyncpg.Connection, email: str) -> list[tuple[int, str]]:
    rows = await db.fetch(
        "SELECT k.id, k.status FROM api_keys k JOIN accounts a ON a.id = k.account_id"
        " WHERE a.email = $1 ORDER BY k.id",
        email,
    )
    return [(r["id"], r["status"]) for r in rows]


async def test_a_post_without_the_csrf_token_is_refused(
    client: PageClient, db: asyncpg.Connection
) -> None:
    email = await _signed_in(client)
    answer = await client.post("/dashboard/keys", {"name": "x"}, csrf=False)
    assert answer.status == 403
    assert answer.headers["Content-Type"].startswith("text/html")
    assert "did not come from this site" in answer.text
    answer = await client.post("/dashboard/keys", {"name": "x", "csrf_token": "forged"}, csrf=False)
    assert answer.status == 403
    assert await _key_ids(db, email) == []
    # a login form without its token is refused too (login CSRF)
    other = PageClient(client.base)
    try:
        answer = await other.post(
            "/dashboard/login", {"email": email, "password": PASSWORD}, csrf=False
        )
        assert answer.status == 403
    finally:
        await other.close()


async def test_a_key_name_is_shown_as_text(client: PageClient) -> None:
    await _signed_in(client)
    name = "<script>alert(1)</script>"
    answer = await client.post("/dashboard/keys", {"name": name})
    assert answer.status == 200
    assert name not in answer.text
    assert html.escape(name) in answer.text
    listing = await client.get("/dashboard/keys")
    assert name not in listing.text and html.escape(name) in listing.text


async def test_pages_carry_the_security_headers(client: PageClient) -> None:
    await _signed_in(client)
    for path in ("/dashboard", "/dashboard/keys", "/dashboard/nope", "/admin"):
        answer = await client.get(path)
        csp = answer.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
        assert answer.headers["X-Frame-Options"] == "DENY", path
        assert answer.headers["Referrer-Policy"] == "same-origin", path
        assert answer.headers["Content-Type"].startswith("text/html"), path
    assert (await client.get("/dashboard/nope")).status == 404
    assert (await client.get("/admin")).status == 404  # not an operator: no such page
    anonymous = PageClient(client.base)  # nor to someone not signed in
    try:
        assert (await anonymous.get("/admin")).status == 404
        assert (await anonymous.post("/admin/accounts/1/suspend", {})).status == 404
    finally:
        await anonymous.close()
    # an API route keeps its JSON errors
    async with client.session.get(client.base + "/v1/nope") as response:
        assert response.headers["Content-Type"].startswith("application/json")


def _session_cookie(answer_cookies: list[str]) -> str:
    found = [c for c in answer_cookies if c.startswith("alicode_session=")]
    assert len(found) == 1, answer_cookies
    return found[0]


async def test_session_cookie_flags_and_rotation(client: PageClient, make_config) -> None:
    email = unique_email()
    await client.get("/dashboard/register")
    answer = await client.post(
        "/dashboard/register",
        {"email": email, "password": PASSWORD, "confirm": PASSWORD},
        follow=False,
    )
    assert answer.status == 303
    first = _session_cookie(answer.set_cookies)
    flags = [part.strip().lower() for part in first.split(";")]
    assert "httponly" in flags and "samesite=lax" in flags and "path=/" in flags
    assert "secure" not in flags  # plain HTTP, no trusted proxy
    await client.get("/dashboard/login")
    answer = await client.post(
        "/dashboard/login", {"email": email, "password": PASSWORD}, follow=False
    )
    second = _session_cookie(answer.set_cookies)
    assert second.split(";")[0] != first.split(";")[0]  # rotated at login

    # behind a trusted proxy that says the client came over TLS: Secure
    config = make_config(trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),))
    gateway = await start_gateway(config)
    gateway.state.dashboard.passwords = Passwords(LOW_COST)
    proxied = PageClient(gateway.url)
    try:
        proxied.session.headers["X-Forwarded-Proto"] = "https"
        answer = await proxied.get("/dashboard/login")
        assert "secure" in answer.set_cookies[0].lower()  # the CSRF cookie too
        # (a client on plain HTTP does not send a Secure cookie back: set it as sent)
        proxied.session.cookie_jar.update_cookies({"alicode_csrf": proxied.csrf})
        answer = await proxied.post(
            "/dashboard/login", {"email": email, "password": PASSWORD}, follow=False
        )
        assert answer.status == 303
        assert "secure" in [
            p.strip().lower() for p in _session_cookie(answer.set_cookies).split(";")
        ]
    finally:
        await proxied.close()
        await stop_gateway(gateway)


async def test_twenty_wrong_passwords_are_throttled(client: PageClient) -> None:
    email = await _signed_in(client)
    statuses = []
    for _ in range(20):
        answer = await client.post("/dashboard/login", {"email": email, "password": "wrong" * 3})
        statuses.append(answer.status)
    assert statuses[:10] == [401] * 10, statuses
    assert set(statuses[10:]) == {429}, statuses
    # while throttled, even the right password is refused
    answer = await client.post("/dashboard/login", {"email": email, "password": PASSWORD})
    assert answer.status == 429
    assert "Too many attempts" in answer.text


async def test_unknown_email_and_wrong_password_answer_alike(
    dash_gw: app.Gateway, make_config
) -> None:
    dash_gw.state.dashboard.passwords = Passwords(8)  # bcrypt's time measurable
    email = unique_email()
    client = PageClient(dash_gw.url)
    try:
        await client.register(email, PASSWORD)
        await client.post("/dashboard/logout", {})
        await client.get("/dashboard/login")
        timings: dict[str, list[float]] = {"known": [], "unknown": []}
        bodies = {}
        for n in range(8):  # under the throttle's 10 per email and per address
            kind = "known" if n % 2 else "unknown"
            target = email if kind == "known" else unique_email()
            started = time.perf_counter()
            answer = await client.post(
                "/dashboard/login", {"email": target, "password": "not the password"}
            )
            timings[kind].append(time.perf_counter() - started)
            assert answer.status == 401
            bodies[kind] = answer.text.replace(html.escape(target), "EMAIL")
        assert bodies["known"] == bodies["unknown"]
        known, unknown = (statistics.median(timings[k]) for k in ("known", "unknown"))
        assert 0.5 < known / unknown < 2.0, timings
    finally:
        await client.close()


async def test_another_accounts_key_cannot_be_revoked(
    dash_gw: app.Gateway, db: asyncpg.Connection
) -> None:
    owner, intruder = PageClient(dash_gw.url), PageClient(dash_gw.url)
    try:
        owner_email = await _signed_in(owner)
        await owner.post("/dashboard/keys", {"name": "owner's"})
        [(key_id, _)] = await _key_ids(db, owner_email)
        await _signed_in(intruder)
        answer = await intruder.get("/dashboard/keys")
        for action in ("revoke", "cap"):
            answer = await intruder.post(
                f"/dashboard/keys/{key_id}/{action}", {"spend_cap_usd": "1"}
            )
            assert answer.status == 404, answer.text
        assert (await intruder.post("/dashboard/keys/999999999/revoke", {})).status == 404
        assert await _key_ids(db, owner_email) == [(key_id, "active")]
        cap = await db.fetchval("SELECT spend_cap_nanos FROM api_keys WHERE id = $1", key_id)
        assert cap is None
    finally:
        await owner.close()
        await intruder.close()
        await intruder.close()


async def test_key_limits_validated_as_the_cli_does(client: PageClient) -> None:
    await _signed_in(client)
    for field, value, message in (
        ("rpm", "0", "must be positive"),
        ("spend_cap_usd", "1.0000000001", "more than 9 decimal places"),
        ("spend_cap_usd", "-3", "must be positive"),
        ("models", " , ", "name at least one model"),
        ("concurrency", "lots", "expected a whole number"),
    ):
        answer = await client.post("/dashboard/keys", {"name": "k", field: value})
        assert answer.status == 400, (field, value)
        assert message in html.unescape(answer.text), (field, value, answer.text[-2000:])
    answer = await client.post("/dashboard/keys", {"name": "   "})
    assert answer.status == 400 and "a key needs a name" in answer.text


async def test_a_revoked_key_gets_401_at_once(
    client: PageClient, dash_gw: app.Gateway, db: asyncpg.Connection
) -> None:
    email = await _signed_in(client)
    _, secret = await client.create_key("k")
    await ledger.topup(db, email, 5_000_000_000)
    sdk = anthropic.AsyncAnthropic(api_key=secret, base_url=dash_gw.url, max_retries=0)
    try:
        await sdk.messages.create(
            model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
        [(key_id, _)] = await _key_ids(db, email)
        await client.get("/dashboard/keys")
        await client.post(f"/dashboard/keys/{key_id}/revoke", {})
        try:
            await sdk.messages.create(
                model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "hi"}]
            )
        except anthropic.AuthenticationError:
            pass
        else:
            raise AssertionError("a revoked key was accepted")
    finally:
        await sdk.close()


async def test_out_of_range_values_are_client_errors(client: PageClient) -> None:
    """Ids, dates and amounts past what the database holds: 4xx pages, never a 500."""
    await _signed_in(client)
    await client.get("/dashboard/keys")
    assert (await client.post("/dashboard/keys/99999999999999999999999/revoke", {})).status == 404
    answer = await client.post("/dashboard/keys", {"name": "k", "rpm": "3000000000"})
    assert answer.status == 400 and "must be at most" in answer.text
    answer = await client.post("/dashboard/keys", {"name": "k", "spend_cap_usd": "1e40"})
    assert answer.status == 400
    for query in ("to=0001-01-01", "from=9999-12-31&to=9999-12-31", "from=x", "to=2026-13-01"):
        answer = await client.get(f"/dashboard/usage?{query}")
        assert answer.status == 400, query
    assert (await client.get("/dashboard/billing?before=99999999999999999999999")).status == 200


async def test_wrong_current_passwords_are_throttled(
    client: PageClient, db: asyncpg.Connection
) -> None:
    """A session alone cannot guess the password that guards deletion and changes."""
    email = await _signed_in(client)
    await client.get("/dashboard/account")
    statuses = []
    for _ in range(12):
        answer = await client.post("/dashboard/account/delete", {"password": "wrong" * 3})
        statuses.append(answer.status)
    assert statuses[:10] == [400] * 10 and set(statuses[10:]) == {429}, statuses
    answer = await client.post("/dashboard/account/delete", {"password": PASSWORD})
    assert answer.status == 429
    assert await db.fetchval("SELECT status FROM accounts WHERE email = $1", email) == "active"


async def test_usage_csv_neutralises_formulas_and_is_the_accounts_own(
    client: PageClient, dash_gw: app.Gateway, db: asyncpg.Connection
) -> None:
    email = await _signed_in(client)
    _, secret = await client.create_key("=HYPERLINK(1)")
    await ledger.topup(db, email, 5_000_000_000)
    sdk = anthropic.AsyncAnthropic(api_key=secret, base_url=dash_gw.url, max_retries=0)
    try:
        await sdk.messages.create(
            model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
    finally:
        await sdk.close()
    assert not await dash_gw.state.tasks.settle(5.0)
    download = await client.get("/dashboard/usage.csv?by=key")
    assert download.status == 200
    rows = list(csv.reader(io.StringIO(download.text)))
    assert [row[0][:13] for row in rows[1:]] == ["'=HYPERLINK(1"], rows
    assert rows[1][1] == "1"
    other = PageClient(client.base)  # another account's CSV does not have it
    try:
        await _signed_in(other)
        theirs = await other.get("/dashboard/usage.csv?by=key")
        assert theirs.status == 200 and "HYPERLINK" not in theirs.text
        assert len(list(csv.reader(io.StringIO(theirs.text)))) == 1  # the header only
    finally:
        await other.close()


async def test_an_expired_session_is_refused_by_the_server(
    client: PageClient, db: asyncpg.Connection
) -> None:
    """The cookie may outlive its session (a browser ignoring Max-Age): the database's
    expiry decides."""
    email = await _signed_in(client)
    assert 'id="keys"' in (await client.get("/dashboard/keys")).text
    await db.execute(
        "UPDATE dashboard_sessions SET expires_at = now() - interval '1 second'"
        " WHERE account_id = (SELECT id FROM accounts WHERE email = $1)",
        email,
    )
    page = await client.get("/dashboard/keys")
    assert 'id="keys"' not in page.text and 'action="/dashboard/login"' in page.text
