"""The dashboard's pure parts and its usage query against the ledger itself."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import pytest

from alicode_gw.dashboard import chart, csrf, store
from alicode_gw.dashboard.passwords import PasswordError, Passwords, check_new
from alicode_gw.identity import keylimits
from tests.support.customers import make_customer
from tests.support.keys import LOW_COST


def test_spend_bars_scale_to_the_highest_day() -> None:
    last = dt.date(2026, 12, 6)
    bars = chart.spend_bars({last: 2_000_000_000, last - dt.timedelta(days=2): 500_000_000}, last)
    assert len(bars) == 30 and bars[-1].day == last and bars[0].day == last - dt.timedelta(29)
    assert bars[-1].height == chart.HEIGHT - chart.TOP and bars[-1].y == chart.TOP
    assert bars[-3].height == (chart.HEIGHT - chart.TOP) / 4
    assert bars[-2].height == 0 and bars[-2].y == chart.HEIGHT
    assert bars[-1].label == "2026-12-06: $2.00"
    assert all(b.height == 0 for b in chart.spend_bars({}, last))


def test_new_password_rules() -> None:
    with pytest.raises(PasswordError, match="at least 10"):
        check_new("short")
    with pytest.raises(PasswordError, match="at most 72 bytes"):
        check_new("é" * 37)  # 37 characters, 74 bytes: refused, never truncated
    assert check_new("x" * 72) == b"x" * 72


async def test_passwords_hash_and_verify_in_an_executor() -> None:
    passwords = Passwords(LOW_COST)
    hashed = await passwords.hash("a long enough password")
    assert await passwords.verify("a long enough password", hashed)
    assert not await passwords.verify("another password!", hashed)
    assert not await passwords.verify("a long enough password", None)  # dummy checked
    assert not await passwords.verify("a long enough password" + "x" * 80, hashed)
    assert not await passwords.verify("anything", "not a bcrypt hash")


def test_csrf_tokens() -> None:
    token = csrf.for_session("session-token")
    assert token == csrf.for_session("session-token") != csrf.for_session("other")
    assert csrf.matches(token, token)
    assert not csrf.matches(token, token[:-1] + "0" if token[-1] != "0" else token[:-1] + "1")
    assert not csrf.matches(token, "") and not csrf.matches(None, token)


def test_key_limit_parsers_are_the_clis() -> None:
    assert keylimits.positive_int("5") == 5
    assert keylimits.spend_cap("1.5") == 1_500_000_000
    assert keylimits.allowed_models(" a, ,b ") == ["a", "b"]
    for parse, text in (
        (keylimits.positive_int, "0"),
        (keylimits.positive_int, "x"),
        (keylimits.spend_cap, "0"),
        (keylimits.allowed_models, ","),
    ):
        with pytest.raises(ValueError):
            parse(text)


async def test_usage_from_rollup_and_ledger_equals_the_ledger(db: asyncpg.Connection) -> None:
    customer = await make_customer(db, usd=100)
    # charge rows on three closed days and today, two IPs (books kept balanced)
    await db.execute(
        """
        WITH rows AS (
            INSERT INTO ledger (created_at, account_id, kind, amount_nanos, request_id,
                                key_id, client_ip, model, input_tokens, output_tokens,
                                cache_read, cache_creation_5m, cost_nanos, status)
            SELECT now() - make_interval(days => n % 4), $1::bigint, 'charge', -(10 + n),
                   'units_' || $1::bigint || '_' || n, $2, '192.0.2.' || (n % 2),
                   'claude-sonnet-4-6', n, 2 * n, 1, 3, 10 + n, 'complete'
              FROM generate_series(1, 40) n
            RETURNING amount_nanos)
        UPDATE accounts SET balance_nanos = balance_nanos + (SELECT sum(amount_nanos) FROM rows)
         WHERE id = $1
        """,
        customer.account_id,
        customer.key_id,
    )
    today = dt.datetime.now(dt.UTC).date()
    first = today - dt.timedelta(days=10)
    dims = tuple(store.USAGE_DIMENSIONS)

    async def expected() -> dict[str, dict[str | None, tuple[int, int, int, int]]]:
        out = {}
        for by, column in (
            ("day", "(created_at AT TIME ZONE 'UTC')::date::text"),
            ("key", "key_id::text"),
            ("model", "model"),
            ("ip", "client_ip"),
        ):
            rows = await db.fetch(
                f"SELECT {column} AS label, count(*) AS n, sum(input_tokens) AS i,"
                " sum(output_tokens) AS o, sum(cost_nanos) AS c FROM ledger"
                " WHERE account_id = $1 AND kind = 'charge' GROUP BY 1",
                customer.account_id,
            )
            out[by] = {r["label"]: (r["n"], r["i"], r["o"], r["c"]) for r in rows}
        return out

    def got(tables: dict[str, list[store.UsageRow]]) -> dict:
        return {
            by: {r.label: (r.requests, r.input_tokens, r.output_tokens, r.cost_nanos) for r in rows}
            for by, rows in tables.items()
        }

    want = await expected()
    assert got(await store.usage(db, customer.account_id, first, today, dims)) == want
    rolled = await db.fetchval(
        "SELECT count(*) FROM dashboard.usage_daily WHERE account_id = $1", customer.account_id
    )
    assert rolled > 0  # closed days now come from the rollup ...
    assert got(await store.usage(db, customer.account_id, first, today, dims)) == want
    # ... and a period is cut at its days
    only_today = await store.usage(db, customer.account_id, today, today, ("day",))
    assert [r.label for r in only_today["day"]] == [today.isoformat()]


async def test_two_nodes_rolling_up_at_once_count_each_row_once(
    db: asyncpg.Connection, database_url: str
) -> None:
    customer = await make_customer(db, usd=100)
    await db.execute(
        """
        WITH rows AS (
            INSERT INTO ledger (created_at, account_id, kind, amount_nanos, request_id,
                                key_id, client_ip, model, cost_nanos, status)
            SELECT now() - make_interval(days => 1 + n % 5), $1::bigint, 'charge', -1,
                   'race_' || $1::bigint || '_' || n, $2, '192.0.2.1', 'claude-sonnet-4-6',
                   1, 'complete'
              FROM generate_series(1, 2000) n
            RETURNING amount_nanos)
        UPDATE accounts SET balance_nanos = balance_nanos + (SELECT sum(amount_nanos) FROM rows)
         WHERE id = $1
        """,
        customer.account_id,
        customer.key_id,
    )
    pool = await asyncpg.create_pool(database_url, min_size=4, max_size=4)
    try:
        await asyncio.gather(
            *(
                pool.fetchval("SELECT dashboard.roll_up(p_account_id => $1)", customer.account_id)
                for _ in range(4)
            )
        )
    finally:
        await pool.close()
    rolled = await db.fetchval(
        "SELECT sum(requests) FROM dashboard.usage_daily WHERE account_id = $1",
        customer.account_id,
    )
    assert rolled == 2000
