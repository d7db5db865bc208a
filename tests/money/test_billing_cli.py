"""``price``, ``account topup|show`` and ``audit`` as the operator runs them."""

from __future__ import annotations

import json
import secrets

import asyncpg

from tests.support.money import USD, new_account, run_cli


async def test_price_list_shows_prices_and_aliases(database_url: str, redis_url: str) -> None:
    status, out, err = await run_cli(
        "price", "list", "--json", database_url=database_url, redis_url=redis_url
    )
    assert status == 0, err
    rows = {row["id"]: row for row in json.loads(out)}
    sonnet = rows["claude-sonnet-4-5"]
    assert sonnet["alias_of"] is None
    assert (
        sonnet["input_usd_per_mtok"],
        sonnet["output_usd_per_mtok"],
        sonnet["cache_write_5m_usd_per_mtok"],
        sonnet["cache_write_1h_usd_per_mtok"],
        sonnet["cache_read_usd_per_mtok"],
        sonnet["batch_discount_pct"],
    ) == ("3.00", "15.00", "3.75", "6.00", "0.30", 50)
    assert rows["gpt-4o"]["alias_of"] == "claude-sonnet-4-5"
    assert rows["claude-3-5-haiku-latest"]["alias_of"] == "claude-haiku-4-5"
    assert rows["gpt-4o"]["input_usd_per_mtok"] == "3.00"
    status, text, _ = await run_cli("price", "list", database_url=database_url, redis_url=redis_url)
    assert status == 0 and "gpt-4o -> claude-sonnet-4-5" in text


async def test_price_set_and_alias(database_url: str, redis_url: str) -> None:
    model = f"test-priced-{secrets.token_hex(3)}"
    alias = f"test-alias-{secrets.token_hex(3)}"
    urls = {"database_url": database_url, "redis_url": redis_url}
    status, out, err = await run_cli(
        "price", "set", model, "--input", "2", "--output", "10", **urls
    )
    assert status == 0 and out.strip() == f"added {model}", err
    status, _, err = await run_cli(
        "price", "set", model, "--input", "2", "--output", "10.5", "--cache-read", "0.15", **urls
    )
    assert status == 0, err
    status, _, err = await run_cli("price", "alias", alias, model, **urls)
    assert status == 0, err
    rows = {r["id"]: r for r in json.loads((await run_cli("price", "list", "--json", **urls))[1])}
    assert (
        rows[model]["input_usd_per_mtok"],
        rows[model]["output_usd_per_mtok"],
        rows[model]["cache_write_5m_usd_per_mtok"],  # 1.25 x input
        rows[model]["cache_write_1h_usd_per_mtok"],  # 2 x input
        rows[model]["cache_read_usd_per_mtok"],  # given
    ) == ("2.00", "10.50", "2.50", "4.00", "0.15")
    assert rows[alias]["alias_of"] == model and rows[alias]["output_usd_per_mtok"] == "10.50"
    # an alias has no prices of its own; a sub-micro-dollar price is refused
    status, _, err = await run_cli("price", "set", alias, "--input", "1", "--output", "1", **urls)
    assert status == 1 and "alias" in err
    status, _, err = await run_cli(
        "price", "set", model, "--input", "0.0000001", "--output", "1", **urls
    )
    assert status == 1 and "6 decimal places" in err


async def test_topup_show_and_audit(
    db: asyncpg.Connection, database_url: str, redis_url: str
) -> None:
    urls = {"database_url": database_url, "redis_url": redis_url}
    account = await new_account(db)
    status, out, err = await run_cli(
        "account", "topup", "--email", account.email, "--usd", "12.5", "--json", **urls
    )
    assert status == 0, err
    assert json.loads(out)["balance_usd"] == "12.50"
    status, out, err = await run_cli("account", "show", "--email", account.email, "--json", **urls)
    shown = json.loads(out)
    assert status == 0, err
    assert (shown["balance_usd"], shown["held_usd"], shown["topups_usd"]) == (
        "12.50",
        "0.00",
        "12.50",
    )
    assert shown["balance_nanos"] == 12 * USD + USD // 2
    # a node's credit lease is held money, shown on its own too
    lease = await db.fetchval(
        "SELECT lease_id FROM billing.lease_open($1, 'test', $2, 1, 50, 60)", account.id, USD
    )
    status, out, err = await run_cli("account", "show", "--email", account.email, "--json", **urls)
    shown = json.loads(out)
    assert (shown["held_usd"], shown["leased_usd"], shown["available_usd"]) == (
        "1.00",
        "1.00",
        "11.50",
    )
    assert await db.fetchval("SELECT billing.lease_close($1)", lease) == USD
    row = await db.fetchrow(
        "SELECT kind, amount_nanos, status FROM ledger WHERE account_id = $1", account.id
    )
    assert tuple(row) == ("topup", 12_500_000_000, "credited")
    for bad in ("0.0000000001", "-3", "0"):
        status, _, err = await run_cli(
            "account", "topup", "--email", account.email, "--usd", bad, **urls
        )
        assert status == 1, (bad, err)
    status, _, err = await run_cli("account", "show", "--email", "nobody@example.invalid", **urls)
    assert status == 1 and "no account" in err

    # a balance changed behind the ledger's back is found and reported
    await db.execute(
        "UPDATE accounts SET balance_nanos = balance_nanos + 7 WHERE id = $1", account.id
    )
    try:
        status, out, _ = await run_cli("audit", "--json", **urls)
        report = json.loads(out)
        assert status == 1 and report["ok"] is False
        [difference] = [d for d in report["differences"] if d["account_id"] == account.id]
        assert difference["balance_difference_usd"] == "0.000000007"
        status, text, _ = await run_cli("audit", **urls)
        assert status == 1 and account.email in text
    finally:
        await db.execute(
            "UPDATE accounts SET balance_nanos = balance_nanos - 7 WHERE id = $1", account.id
        )
    status, text, _ = await run_cli("audit", **urls)
    assert status == 0 and text.startswith("ok")
