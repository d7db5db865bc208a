"""The account page (password, emergency stop, deletion), closed registration with the
CLI's one-time link, and the operator's /admin pages."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from alicode_gw import app
from alicode_gw.dashboard.passwords import Passwords
from alicode_gw.money import ledger
from tests.support.cli import run_cli
from tests.support.customers import make_customer
from tests.support.dashboard import PageClient
from tests.support.gateway import UPSTREAM_KEYS, start_gateway, stop_gateway
from tests.support.keys import LOW_COST, unique_email

PASSWORD = "correct horse battery"


def cli_env(gw: app.Gateway) -> dict[str, str]:
    config = gw.state.config
    assert config.database_url and config.redis_url
    return {
        "ALICODE_DATABASE_URL": config.database_url,
        "ALICODE_REDIS_URL": config.redis_url,
        "ALICODE_REDIS_PREFIX": config.redis_prefix,
    }


async def cli(gw: app.Gateway, *args: str) -> str:
    done = await asyncio.to_thread(run_cli, *args, env=cli_env(gw))
    assert done.returncode == 0, done.stderr
    return done.stdout


async def _operator(gw: app.Gateway) -> tuple[PageClient, str]:
    client = PageClient(gw.url)
    email = unique_email()
    await client.register(email, PASSWORD)
    await cli(gw, "account", "operator", "--email", email)
    return client, email


async def test_operator_topup_matches_the_cli(dash_gw: app.Gateway, db: asyncpg.Connection):
    admin, _ = await _operator(dash_gw)
    try:
        customer = await make_customer(db, usd=0)
        account = await admin.get(f"/admin?q={customer.email}")
        assert customer.email in account.text
        page = await admin.get(f"/admin/accounts/{customer.account_id}")
        assert page.status == 200
        answer = await admin.post(
            f"/admin/accounts/{customer.account_id}/topup", {"usd": "2.50", "note": "invoice 7"}
        )
        assert answer.status == 200 and "topup" in answer.text
        await cli(
            dash_gw,
            "account",
            "topup",
            "--email",
            customer.email,
            "--usd",
            "2.50",
            "--note",
            "invoice 7",
        )
        rows = await db.fetch(
            "SELECT account_id, kind, amount_nanos, status, note, request_id, key_id, model"
            " FROM ledger WHERE account_id = $1 ORDER BY id",
            customer.account_id,
        )
        assert len(rows) == 2 and dict(rows[0]) == dict(rows[1])
        assert rows[0]["amount_nanos"] == 2_500_000_000
        bad = await admin.post(f"/admin/accounts/{customer.account_id}/topup", {"usd": "-1"})
        assert bad.status == 400
        gone = await make_customer(db, usd=0)  # a deleted account takes no money
        await db.fetch(
            "SELECT * FROM dashboard.delete_account(p_account_id => $1)", gone.account_id
        )
        await admin.get(f"/admin/accounts/{gone.account_id}")
        bad = await admin.post(f"/admin/accounts/{gone.account_id}/topup", {"usd": "1"})
        assert bad.status == 400 and "deleted" in bad.text
        assert (
            await db.fetchval("SELECT count(*) FROM ledger WHERE account_id = $1", gone.account_id)
            == 0
        )
        assert not await ledger.audit(db)
    finally:
        await admin.close()


async def test_suspend_and_unsuspend(dash_gw: app.Gateway, db: asyncpg.Connection) -> None:
    import anthropic

    admin, _ = await _operator(dash_gw)
    customer = await make_customer(db)
    sdk = anthropic.AsyncAnthropic(api_key=customer.key, base_url=dash_gw.url, max_retries=0)
    ask = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}],
    }
    try:
        await sdk.messages.create(**ask)
        await admin.get(f"/admin/accounts/{customer.account_id}")
        await admin.post(f"/admin/accounts/{customer.account_id}/suspend", {})
        with pytest.raises(anthropic.AuthenticationError):
            await sdk.messages.create(**ask)
        await admin.post(f"/admin/accounts/{customer.account_id}/unsuspend", {})
        await sdk.messages.create(**ask)
    finally:
        await sdk.close()
        await admin.close()


async def test_suspension_ends_sessions_and_refuses_login(
    dash_gw: app.Gateway, db: asyncpg.Connection
) -> None:
    admin, _ = await _operator(dash_gw)
    customer = PageClient(dash_gw.url)
    try:
        email = unique_email()
        assert (await customer.register(email, PASSWORD)).status == 200
        account_id = await db.fetchval("SELECT id FROM accounts WHERE email = $1", email)
        await customer.post("/dashboard/account/stop", {"confirm": "stop"})  # stopped too
        assert 'id="suspend"' in (await admin.get(f"/admin/accounts/{account_id}")).text
        await admin.post(f"/admin/accounts/{account_id}/suspend", {})
        assert await db.fetchval("SELECT status FROM accounts WHERE id = $1", account_id) == (
            "suspended"
        )
        page = await customer.get("/dashboard/keys")  # the session ended: the login page
        assert 'action="/dashboard/login"' in page.text and 'id="keys"' not in page.text
        answer = await customer.login(email, PASSWORD)
        assert answer.status == 403 and "suspended" in answer.text
        wrong = await customer.login(email, "not the password")
        assert wrong.status == 401 and "suspended" not in wrong.text
        await admin.get(f"/admin/accounts/{account_id}")
        await admin.post(f"/admin/accounts/{account_id}/unsuspend", {})
        assert await db.fetchval("SELECT status FROM accounts WHERE id = $1", account_id) == (
            "stopped"
        )
        assert (await customer.login(email, PASSWORD)).status == 200
    finally:
        await customer.close()
        await admin.close()


async def test_upstream_page_never_shows_a_secret(dash_gw: app.Gateway) -> None:
    admin, _ = await _operator(dash_gw)
    try:
        page = await admin.get("/admin/upstream")
        assert page.status == 200
        assert "cred-0" in page.text and "healthy" in page.text
        for secret in UPSTREAM_KEYS:
            assert secret not in page.text and secret[7:] not in page.text
        cred_id = page.text.split('data-cred-id="')[1].split('"')[0]
        await admin.post(f"/admin/upstream/{cred_id}/disable", {"reason": "rotating"})
        page = await admin.get("/admin/upstream")
        assert "rotating" in page.text and "disabled" in page.text
        await admin.post(f"/admin/upstream/{cred_id}/enable", {})
        page = await admin.get("/admin/upstream")
        assert "rotating" not in page.text
    finally:
        await admin.close()


async def test_password_change_ends_other_sessions(dash_gw: app.Gateway) -> None:
    first, second = PageClient(dash_gw.url), PageClient(dash_gw.url)
    try:
        email = unique_email()
        await first.register(email, PASSWORD)
        await second.login(email, PASSWORD)
        assert (await second.get("/dashboard/keys")).status == 200
        await first.get("/dashboard/account")
        answer = await first.post(
            "/dashboard/account/password",
            {
                "current": PASSWORD,
                "password": "a new long password",
                "confirm": "a new long password",
            },
        )
        assert answer.status == 200 and "Password changed" in answer.text
        assert "Log in" in (await second.get("/dashboard/keys")).text  # redirected
        assert (await first.get("/dashboard/keys")).status == 200  # a new session here
        assert (await second.login(email, PASSWORD)).status == 401
        assert (await second.login(email, "a new long password")).status == 200
    finally:
        await first.close()
        await second.close()


async def test_closed_registration_and_the_password_link(
    db: asyncpg.Connection, make_config
) -> None:
    gateway = await start_gateway(
        make_config(dashboard_registration="closed", redis_prefix="dash-closed:")
    )
    gateway.state.dashboard.passwords = Passwords(LOW_COST)
    client = PageClient(gateway.url)
    try:
        assert (await client.get("/dashboard/register")).status == 404
        email = unique_email()
        await cli(gateway, "account", "create", "--email", email)
        out = await cli(gateway, "account", "password-link", "--email", email)
        url = out.splitlines()[0]
        path = url[url.index("/dashboard/setup") :]
        page = await client.get(path)
        assert page.status == 200 and email in page.text
        token = path.split("token=")[1]
        answer = await client.post(
            "/dashboard/setup", {"token": token, "password": PASSWORD, "confirm": PASSWORD}
        )
        assert answer.status == 200 and "Password set" in answer.text
        assert (await client.get(path)).status == 404  # used once
        assert (await client.login(email, PASSWORD)).status == 200
    finally:
        await client.close()
        await stop_gateway(gateway)


async def test_delete_account_erases_and_keeps_the_books(
    dash_gw: app.Gateway, db: asyncpg.Connection
) -> None:
    import anthropic

    client = PageClient(dash_gw.url)
    email = unique_email()
    try:
        await client.register(email, PASSWORD)
        answer, secret = await client.create_key("k")
        await ledger.topup(db, email, 1_000_000_000)
        account_id = await ledger.account_id_by_email(db, email)
        sdk = anthropic.AsyncAnthropic(api_key=secret, base_url=dash_gw.url, max_retries=0)
        await sdk.messages.create(
            model="claude-sonnet-4-6", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
        assert not await dash_gw.state.tasks.settle(5.0)
        uploaded = await sdk.beta.files.upload(file=("notes.txt", b"mine", "text/plain"))
        await client.get("/dashboard/account")
        wrong = await client.post("/dashboard/account/delete", {"password": "not it at all"})
        assert wrong.status == 400
        answer = await client.post("/dashboard/account/delete", {"password": PASSWORD})
        assert answer.status == 200 and "deleted" in answer.text
        row = await db.fetchrow(
            "SELECT email, status, password_hash FROM accounts WHERE id = $1", account_id
        )
        assert row["status"] == "deleted" and email not in row["email"]
        assert row["password_hash"] is None
        assert await db.fetchval("SELECT count(*) FROM files WHERE id = $1", uploaded.id) == 0
        ips = await db.fetch(
            "SELECT client_ip FROM ledger WHERE account_id = $1 AND client_ip IS NOT NULL",
            account_id,
        )
        assert ips == []
        assert (
            await db.fetchval("SELECT count(*) FROM ledger WHERE account_id = $1", account_id) == 2
        )
        with pytest.raises(anthropic.AuthenticationError):
            await sdk.messages.create(
                model="claude-sonnet-4-6",
                max_tokens=8,
                messages=[{"role": "user", "content": "x"}],
            )
        await sdk.close()
        assert (await client.login(email, PASSWORD)).status == 401
        assert not await ledger.audit(db)
    finally:
        await client.close()


async def test_a_leased_request_settled_after_deletion_keeps_no_ip(
    db: asyncpg.Connection,
) -> None:
    """A request in flight on a credit lease settles after the account was deleted: its
    charge is booked (the books balance) without the client IP."""
    customer = await make_customer(db, usd=1)
    await db.fetch(
        "SELECT * FROM dashboard.delete_account(p_account_id => $1)", customer.account_id
    )
    prices = dict.fromkeys(
        ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read"), 1_000_000
    )
    tokens = dict.fromkeys(("input", "output", "cache_creation_5m", "cache_creation_1h"), 10)
    args = {
        "lease_id": -1,
        "request_id": f"req_{customer.account_id}_after_delete",
        "key_id": customer.key_id,
        "requested_model": "claude-haiku-4-5",
        "model": "claude-haiku-4-5",
        "client_ip": "203.0.113.9",
        "reserved_nanos": 0,
        **{f"price_{name}_micro": value for name, value in prices.items()},
        **{f"tokens_{name}": value for name, value in tokens.items()},
        "tokens_cache_read": 10,
        "estimated": False,
    }
    named = ", ".join(f"p_{name} => ${n}" for n, name in enumerate(args, start=1))
    row = await db.fetchrow(f"SELECT * FROM billing.settle_leased({named})", *args.values())
    assert row["outcome"] == "settled" and row["charged_nanos"] > 0
    ips = await db.fetch(
        "SELECT client_ip FROM ledger WHERE account_id = $1 AND kind = 'charge'",
        customer.account_id,
    )
    assert [r["client_ip"] for r in ips] == [None]
    # and a hold taken by a node that has not heard of the deletion yet stores none either
    held = await db.fetchval(
        "SELECT outcome FROM billing.hold(p_request_id => $1, p_key_id => $2,"
        " p_model => 'claude-haiku-4-5', p_estimated_input_tokens => 10, p_max_tokens => 10,"
        " p_client_ip => '203.0.113.9', p_batch => false, p_ttl_seconds => 60)",
        f"req_{customer.account_id}_hold_after_delete",
        customer.key_id,
    )
    assert held == "held"
    assert (
        await db.fetchval(
            "SELECT count(*) FROM billing_holds WHERE account_id = $1 AND client_ip IS NOT NULL",
            customer.account_id,
        )
        == 0
    )
    await db.fetchval("SELECT billing.release($1)", f"req_{customer.account_id}_hold_after_delete")
    assert not await ledger.audit(db)
