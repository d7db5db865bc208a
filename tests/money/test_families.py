"""Model families: an id resolves to its own row, else its dated snapshot's base id,
else the family with the longest prefix; in Python (the catalog) and in SQL (the hold)
alike. Through the gateway: snapshot and family ids bill at their entry's price; an id
that matches nothing is a 400 naming /v1/models."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import asyncpg
import pytest

from alicode_gw import app
from alicode_gw.money import catalog
from alicode_gw.money.catalog import ModelCatalog
from tests.support.customers import (
    Customer,
    client_for,
    ledger_rows,
    own_gateway,
    upstream_exchanges,
)
from tests.support.gateway import stop_gateway

# name -> the models row it is priced as (None: not served)
EXPECTED = {
    "claude-haiku-4-5": "claude-haiku-4-5",
    "claude-haiku-4-5-20251001": "claude-haiku-4-5",
    "claude-sonnet-4-5-20250929": "claude-sonnet-4-5",
    "claude-sonnet-5": "claude-sonnet-*",
    "claude-sonnet-4-7": "claude-sonnet-4-*",
    "claude-sonnet-5-20270101": "claude-sonnet-*",
    "claude-opus-4-8": "claude-opus-4-*",
    "claude-haiku-4-9": "claude-haiku-4-*",
    "claude-3-7-sonnet-latest": "claude-sonnet-4-5",  # an alias
    "claude-3-7-sonnet-latest-20250101": "claude-sonnet-4-5",  # an alias's snapshot
    "claude-foo-1": None,
    "claude-opus-5-5": "claude-opus-*",  # the next generation: the line's family
    "claude-haiku-5": "claude-haiku-*",
    "claude-mythos-1": None,
    "claude-3-opus-20240229": None,  # no claude-3-opus row, no family of its prefix
    "claude-sonnet-*": None,  # a family is not a model id
    "claude-sonnet-": "claude-sonnet-*",
    "claude-haiku-4-5-2025100": "claude-haiku-4-*",  # not a date: the family
}


async def test_python_and_sql_resolve_alike(
    model_catalog: ModelCatalog, db: asyncpg.Connection
) -> None:
    for name, priced_as in EXPECTED.items():
        info = model_catalog.resolve(name)
        in_sql = await db.fetchval("SELECT id FROM billing.resolve_model(p_name => $1)", name)
        assert (info.priced_as if info else None) == priced_as == in_sql, name


def test_resolution_keeps_the_name_sent_upstream(model_catalog: ModelCatalog) -> None:
    snapshot = model_catalog.resolve("claude-haiku-4-5-20251001")
    family = model_catalog.resolve("claude-opus-4-8")
    alias = model_catalog.resolve("claude-3-7-sonnet-latest-20250101")
    assert snapshot and family and alias
    assert (snapshot.id, snapshot.target, snapshot.is_alias) == (
        "claude-haiku-4-5-20251001",
        "claude-haiku-4-5-20251001",
        False,
    )
    assert family.target == "claude-opus-4-8" and family.capabilities.max_output_tokens == 128_000
    assert alias.target == "claude-sonnet-4-5" and alias.is_alias
    assert family.prices == model_catalog.resolve("claude-opus-4-7").prices  # type: ignore[union-attr]


async def test_the_most_specific_family_wins_and_a_single_id_can_be_priced(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await catalog.set_price(db, "claude-sonnet-9-*", input_price=7_000_000, output_price=9)
    await catalog.set_price(db, "claude-sonnet-9-1", input_price=8_000_000, output_price=9)
    try:
        models = ModelCatalog(pool)
        await models.refresh()
        for name, priced_as, price in (
            ("claude-sonnet-9-0", "claude-sonnet-9-*", 7_000_000),
            ("claude-sonnet-9-1", "claude-sonnet-9-1", 8_000_000),
            ("claude-sonnet-9-1-20300101", "claude-sonnet-9-1", 8_000_000),
            ("claude-sonnet-8", "claude-sonnet-*", 3_000_000),
            ("claude-sonnet-4-9", "claude-sonnet-4-*", 3_000_000),
        ):
            info = models.resolve(name)
            assert info and (info.priced_as, info.prices.input) == (priced_as, price), name
            sql = await db.fetchval("SELECT id FROM billing.resolve_model(p_name => $1)", name)
            assert sql == priced_as
        with pytest.raises(catalog.PriceError, match="family"):
            await catalog.set_alias(db, "claude-x", "claude-sonnet-9-*")
        with pytest.raises(catalog.PriceError, match="prefix"):
            await catalog.set_price(db, "claude-*-sonnet", input_price=1, output_price=1)
        with pytest.raises(asyncpg.CheckViolationError):
            await db.execute(
                "INSERT INTO models (id, display_name, created_at, alias_of)"
                " VALUES ('x-*', 'x', now(), 'claude-sonnet-4-5')"
            )
    finally:
        await db.execute(
            "DELETE FROM models WHERE id IN ('claude-sonnet-9-*', 'claude-sonnet-9-1')"
        )


@pytest.fixture
async def family_gw(db: asyncpg.Connection, make_config) -> AsyncIterator[app.Gateway]:
    gateway = await own_gateway(db, make_config, "families")
    yield gateway
    await stop_gateway(gateway)


@pytest.mark.parametrize(
    ("model", "priced_as"),
    [
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-5", "claude-sonnet-*"),
        ("claude-opus-4-8", "claude-opus-4-*"),
    ],
)
async def test_snapshot_and_family_ids_bill_at_their_entry_price(
    family_gw: app.Gateway,
    customer: Customer,
    db: asyncpg.Connection,
    mock_upstream,
    model: str,
    priced_as: str,
) -> None:
    entry = family_gw.state.catalog.resolve(priced_as.replace("*", "x"))
    assert entry is not None
    async with client_for(family_gw, customer) as client:
        for stream in (False, True, False):  # a database hold, then (leased) ones
            if stream:
                async with client.messages.stream(
                    model=model, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
                ) as s:
                    await s.get_final_message()
                    request_id = s.response.headers["request-id"]
            else:
                raw = await client.messages.with_raw_response.create(
                    model=model, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
                )
                request_id = raw.request_id
                assert (await raw.parse()).model == model
            (row,) = await ledger_rows(db, request_id)
            assert (row["requested_model"], row["model"]) == (model, priced_as)
            expected = entry.prices.cost_nanos(
                input_tokens=row["input_tokens"],
                output_tokens=row["output_tokens"],
                cache_creation_5m=row["cache_creation_5m"],
                cache_creation_1h=row["cache_creation_1h"],
                cache_read=row["cache_read"],
            )
            assert row["cost_nanos"] == expected > 0
    sent = upstream_exchanges(mock_upstream)[-3:]
    assert all(b'"model":"' + model.encode() + b'"' in ex.body for ex in sent)


async def test_an_id_that_matches_nothing_is_a_400_naming_v1_models(
    family_gw: app.Gateway, customer: Customer, mock_upstream
) -> None:
    async with client_for(family_gw, customer) as client:
        for model in ("claude-foo-1", "claude-sonnet-*"):
            with pytest.raises(anthropic.BadRequestError) as caught:
                await client.messages.create(
                    model=model, max_tokens=16, messages=[{"role": "user", "content": "hi"}]
                )
            assert "GET /v1/models" in caught.value.message and model in caught.value.message
    assert not upstream_exchanges(mock_upstream)
