"""The mock upstream's Message Batches API, driven by the official SDK directly (no
gateway): the objects and transitions the gateway relies on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anthropic
import pytest

from alicode_gw.dev.mock_upstream import MockUpstream

KEYS = ("sk-ant-mock-batches-1", "sk-ant-mock-batches-2")
PARAMS = {"model": "claude-sonnet-4-6", "max_tokens": 16}


def reqs(n: int, text: str = "hello") -> list[dict]:
    return [
        {
            "custom_id": f"r{i}",
            "params": {**PARAMS, "messages": [{"role": "user", "content": text}]},
        }
        for i in range(n)
    ]


@pytest.fixture
async def mock() -> AsyncIterator[MockUpstream]:
    async with MockUpstream(KEYS) as upstream:
        upstream.batches.process_seconds = 0.2
        yield upstream


@pytest.fixture
async def sdk(mock: MockUpstream) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(api_key=KEYS[0], base_url=mock.url, max_retries=0) as c:
        yield c


async def until_ended(sdk: anthropic.AsyncAnthropic, batch_id: str):
    for _ in range(200):
        batch = await sdk.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        await asyncio.sleep(0.02)
    raise AssertionError("never ended")


async def test_lifecycle(sdk: anthropic.AsyncAnthropic, mock: MockUpstream) -> None:
    errored = [{**reqs(1, "hi [[mock: status=500]]")[0], "custom_id": "bad"}]
    batch = await sdk.messages.batches.create(requests=[*reqs(2), *errored])
    assert batch.id.startswith("msgbatch_01") and batch.results_url is None
    assert batch.request_counts.processing == 3
    done = await until_ended(sdk, batch.id)
    assert (done.request_counts.succeeded, done.request_counts.errored) == (2, 1)
    assert done.results_url == f"{mock.url}/v1/messages/batches/{batch.id}/results"
    results = [line async for line in await sdk.messages.batches.results(batch.id)]
    assert len(results) == 3
    by_id = {r.custom_id: r.result for r in results}
    assert by_id["r0"].type == by_id["r1"].type == "succeeded"
    assert by_id["r0"].message.usage.output_tokens > 0
    assert by_id["bad"].type == "errored" and by_id["bad"].error.error.type == "api_error"
    page = await sdk.messages.batches.list()
    assert [b.id for b in page.data] == [batch.id]
    assert (await sdk.messages.batches.delete(batch.id)).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        await sdk.messages.batches.retrieve(batch.id)


async def test_cancel_expiry_and_owner(sdk: anthropic.AsyncAnthropic, mock: MockUpstream) -> None:
    mock.batches.process_seconds = 60
    batch = await sdk.messages.batches.create(requests=reqs(2))
    with pytest.raises(anthropic.BadRequestError):
        await sdk.messages.batches.delete(batch.id)
    canceling = await sdk.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at
    assert (await until_ended(sdk, batch.id)).request_counts.canceled == 2
    with pytest.raises(anthropic.BadRequestError):
        await sdk.messages.batches.cancel(batch.id)
    mock.batches.expire_seconds = 0.1
    expiring = await sdk.messages.batches.create(requests=reqs(2))
    assert (await until_ended(sdk, expiring.id)).request_counts.expired == 2
    async with anthropic.AsyncAnthropic(api_key=KEYS[1], base_url=mock.url, max_retries=0) as c:
        with pytest.raises(anthropic.NotFoundError):
            await c.messages.batches.retrieve(batch.id)
