"""The upstream's model list: fetched from the mock with a pooled credential; a model
the upstream adds appears in /v1/models when a price (here its family's) covers it; one
without a price is hidden and reported (log line, gauge, ``price list --missing``)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import asyncpg
import openai
import pytest

from alicode_gw import app
from alicode_gw.dev.mock_upstream import MockUpstream
from alicode_gw.upstream.models import FetchError, UpstreamModels, parse_page
from tests.support.customers import Customer, client_for, own_gateway
from tests.support.gateway import UPSTREAM_KEYS, stop_gateway
from tests.support.money import run_cli

NEW_FAMILY_MODEL = ("claude-sonnet-5", "Claude Sonnet 5", "2026-11-20T00:00:00Z")
UNPRICED_MODEL = ("claude-mythos-1", "Claude Mythos 1", "2026-11-25T00:00:00Z")


@pytest.fixture
async def models_gw(db: asyncpg.Connection, make_config) -> AsyncIterator[app.Gateway]:
    gateway = await own_gateway(db, make_config, "upstream-models")
    yield gateway
    await stop_gateway(gateway)


async def test_a_model_added_upstream_appears_priced_or_is_reported(
    models_gw: app.Gateway,
    customer: Customer,
    mock_upstream: MockUpstream,
    database_url: str,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mock_upstream.models[:0] = [UNPRICED_MODEL, NEW_FAMILY_MODEL]
    with caplog.at_level(logging.WARNING, logger="alicode_gw.upstream.models"):
        await models_gw.state.upstream_models.refresh()
    fetches = [ex for ex in mock_upstream.exchanges if ex.path == "/v1/models"]
    assert fetches and all(ex.status == 200 for ex in fetches)
    # The session does not decompress: the list is asked for as it is.
    assert {ex.headers.get("accept-encoding") for ex in fetches} == {"identity"}
    assert fetches[-1].api_key in {"sk-ant-test-primary-0001", "sk-ant-test-second-0002",
                                   "sk-ant-test-third-0003"}  # fmt: skip
    async with client_for(models_gw, customer) as client:
        listed = [m async for m in client.models.list(limit=100)]
        one = await client.models.retrieve("claude-sonnet-5")
    ids = [m.id for m in listed]
    served = [
        mid for mid in ids if not any(m.id == mid and "Alias" in m.display_name for m in listed)
    ]
    assert served[0] == "claude-sonnet-5" and "claude-mythos-1" not in ids  # newest first
    assert {mid for mid, _, _ in mock_upstream.models} - {"claude-mythos-1"} <= set(ids)
    assert (one.display_name, one.created_at.isoformat()) == (
        "Claude Sonnet 5",
        "2026-11-20T00:00:00+00:00",
    )
    assert one.model_dump()["max_tokens"] == 128_000  # the family's limit
    async with openai.AsyncOpenAI(
        api_key=customer.key, base_url=models_gw.url + "/v1", max_retries=0
    ) as oa:
        assert "claude-mythos-1" not in [m.id async for m in oa.models.list()]
    # reported to the operator: a log line, the gauge, the CLI
    assert any("claude-mythos-1" in r.getMessage() for r in caplog.records)
    assert "claude-sonnet-5" not in " ".join(r.getMessage() for r in caplog.records)
    registry = models_gw.state.metrics.node_registry
    assert registry.get_sample_value("alicode_upstream_models_unpriced") == 1
    status, out, err = await run_cli(
        "price", "list", "--missing", "--json", database_url=database_url, redis_url=redis_url
    )
    assert status == 0, err
    assert [row["id"] for row in json.loads(out)] == ["claude-mythos-1"]


async def test_the_list_is_the_catalog_until_the_upstream_was_read(
    models_gw: app.Gateway, customer: Customer, mock_upstream: MockUpstream
) -> None:
    mock_upstream.models.insert(0, UNPRICED_MODEL)
    async with client_for(models_gw, customer) as client:
        before = [m.id async for m in client.models.list(limit=100)]
    assert "claude-opus-4-5" in before and not any("*" in mid for mid in before)
    mock_upstream.models.remove(("claude-opus-4-5", "Claude Opus 4.5", "2025-11-24T00:00:00Z"))
    await models_gw.state.upstream_models.refresh()
    async with client_for(models_gw, customer) as client:
        after = [m.id async for m in client.models.list(limit=100)]
    assert "claude-opus-4-5" not in after  # retired upstream: no longer listed


async def test_a_malformed_answer_is_reported_without_the_credential(
    models_gw: app.Gateway,
) -> None:
    """aiohttp's error for a malformed answer shows the request's headers in its repr;
    the fetch error (the warning the refresh loop logs) names the failure only."""

    async def malformed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(malformed, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    state = models_gw.state
    fetcher = UpstreamModels(
        db=state.db,
        http=state.http,
        keypool=state.keypool,
        catalog=state.catalog,
        metrics=state.metrics,
        upstream_url=f"http://127.0.0.1:{port}",
        interval=3600,
    )
    try:
        with pytest.raises(FetchError) as info:
            await fetcher.refresh()
    finally:
        server.close()
        await server.wait_closed()
    message = str(info.value)
    assert "ClientResponseError" in message and "Content-Length" in message
    assert not [secret for secret in UPSTREAM_KEYS if secret in message]


def test_pages_follow_the_cursor() -> None:
    page = {
        "data": [{"type": "model", "id": "a", "display_name": "A", "created_at": "2026-01-01Z"}],
        "has_more": True,
        "first_id": "a",
        "last_id": "a",
    }
    models, cursor = parse_page(page)
    assert [m.id for m in models] == ["a"] and cursor == "a"
    assert parse_page({**page, "has_more": False})[1] is None
