"""/v1/models in both shapes and /v1/messages/count_tokens, through the official SDKs."""

from __future__ import annotations

import json
from datetime import datetime

import anthropic
import asyncpg
import openai
import pytest

from alicode_gw import app
from alicode_gw.dev.mock_upstream import MockUpstream
from tests.support.customers import MODEL, Customer, client_for, reset_pool, upstream_exchanges
from tests.support.gateway import start_gateway, stop_gateway


async def listed_ids(gw: app.Gateway, mock: MockUpstream, db: asyncpg.Connection) -> list[str]:
    """What /v1/models lists once the gateway has read the upstream's list: the mock's
    models (each has a price) and the aliases, newest first."""
    await gw.state.upstream_models.refresh()
    rows = [(datetime.fromisoformat(created), mid) for mid, _, created in mock.models]
    rows += [
        (row["created_at"], row["id"])
        for row in await db.fetch("SELECT id, created_at FROM models WHERE alias_of IS NOT NULL")
    ]
    return [mid for _, mid in sorted(rows, key=lambda r: (-r[0].timestamp(), r[1]))]


async def test_anthropic_models_list_paginates_all(
    gw: app.Gateway, customer: Customer, db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    expected = await listed_ids(gw, mock_upstream, db)
    assert "claude-3-7-sonnet-latest" in expected  # aliases are entries of their own
    async with client_for(gw, customer) as client:
        seen = [model.id async for model in client.models.list(limit=3)]
        first_page = await client.models.list(limit=3)
        info = await client.models.retrieve(MODEL)
        alias = await client.models.retrieve("claude-3-7-sonnet-latest")
        with pytest.raises(anthropic.NotFoundError):
            await client.models.retrieve("claude-none-9")
    assert seen == expected
    assert first_page.has_more and first_page.first_id == expected[0]
    assert first_page.last_id == expected[2]
    assert info.id == MODEL and info.display_name and info.created_at.year >= 2025
    dumped = info.model_dump()
    assert dumped["max_tokens"] > 0 and dumped["max_input_tokens"] >= 200_000
    assert "Alias" in alias.display_name or "alias" in alias.display_name.lower()


async def test_anthropic_pagination_cursors(
    gw: app.Gateway, customer: Customer, db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    expected = await listed_ids(gw, mock_upstream, db)
    async with client_for(gw, customer) as client:
        after = await client.models.list(limit=2, after_id=expected[1])
        before = await client.models.list(limit=2, before_id=expected[4])
        with pytest.raises(anthropic.BadRequestError):
            await client.models.list(limit=0)
        with pytest.raises(anthropic.BadRequestError):
            await client.get("/v1/models?limit=%C2%B2", cast_to=object)
    assert [m.id for m in after.data] == expected[2:4]
    assert [m.id for m in before.data] == expected[2:4]


async def test_openai_models_shape(
    gw: app.Gateway, customer: Customer, db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    expected = await listed_ids(gw, mock_upstream, db)
    async with openai.AsyncOpenAI(
        api_key=customer.key, base_url=gw.url + "/v1", max_retries=0
    ) as client:
        models = [m async for m in client.models.list()]
        one = await client.models.retrieve(MODEL)
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("claude-none-9")
    assert [m.id for m in models] == expected
    assert all(m.object == "model" and m.owned_by == "anthropic" for m in models)
    assert one.id == MODEL and one.created > 1_700_000_000


async def test_models_need_a_key(gw: app.Gateway) -> None:
    async with anthropic.AsyncAnthropic(
        api_key="sk-ali-zzzzzzzzzzzz-" + "a" * 32, base_url=gw.url, max_retries=0
    ) as client:
        with pytest.raises(anthropic.AuthenticationError):
            await client.models.list()


async def test_count_tokens_exact_from_upstream(
    gw: app.Gateway, customer: Customer, mock_upstream: MockUpstream, db: asyncpg.Connection
) -> None:
    before = await db.fetchval("SELECT count(*) FROM ledger WHERE key_id = $1", customer.key_id)
    async with client_for(gw, customer) as client:
        raw = await client.messages.with_raw_response.count_tokens(
            model=MODEL, messages=[{"role": "user", "content": "count these words please"}]
        )
        counted = await raw.parse()
    sent = upstream_exchanges(mock_upstream, "/v1/messages/count_tokens")[-1]
    assert raw.headers["x-alicode-count-source"] == "upstream"
    assert json.loads(bytes(sent.response_bytes)) == {"input_tokens": counted.input_tokens}
    assert counted.input_tokens > 0
    assert sent.api_key != customer.key
    # free: nothing billed
    after = await db.fetchval("SELECT count(*) FROM ledger WHERE key_id = $1", customer.key_id)
    assert after == before


async def test_count_tokens_estimate_mode_and_fallback(
    customer: Customer, db: asyncpg.Connection, make_config, mock_upstream: MockUpstream
) -> None:
    await reset_pool(db)
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hello world"}]}
    estimate_gw = await start_gateway(
        make_config(count_tokens="estimate", redis_prefix="count-est:")
    )
    try:
        expected = estimate_gw.state.tokens.count(payload)
        async with client_for(estimate_gw, customer) as client:
            raw = await client.messages.with_raw_response.count_tokens(**payload)
            assert (await raw.parse()).input_tokens == expected
            assert raw.headers["x-alicode-count-source"] == "estimate"
    finally:
        await stop_gateway(estimate_gw)
    # upstream mode with no usable credential falls back to the estimate
    await db.execute("UPDATE upstream_credentials SET status = 'disabled', disabled_at = now()")
    fallback_gw = await start_gateway(make_config(redis_prefix="count-fb:"))
    try:
        async with client_for(fallback_gw, customer) as client:
            raw = await client.messages.with_raw_response.count_tokens(**payload)
            assert (await raw.parse()).input_tokens == expected
            assert raw.headers["x-alicode-count-source"] == "estimate"
    finally:
        await stop_gateway(fallback_gw)
        await reset_pool(db)


async def test_count_tokens_validates(gw: app.Gateway, customer: Customer) -> None:
    async with client_for(gw, customer) as client:
        with pytest.raises(anthropic.BadRequestError):
            await client.post("/v1/messages/count_tokens", body={"model": MODEL}, cast_to=object)
        with pytest.raises(anthropic.BadRequestError):
            await client.post(
                "/v1/messages/count_tokens",
                body={"model": "nope", "messages": [{"role": "user", "content": "x"}]},
                cast_to=object,
            )
