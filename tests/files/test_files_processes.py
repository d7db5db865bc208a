"""Files across real ``alicode-gw serve`` processes: memory stays flat while a file of
the size cap passes through (the gateway's resident set measured from /proc), and a
second node on the same database serves what the first one stored."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anthropic
import asyncpg
import pytest

from alicode_gw.dev.mock_upstream import MockUpstream
from tests.support import procs
from tests.support.customers import MODEL, make_customer, reset_pool, upstream_exchanges

pytestmark = pytest.mark.slow

MB = 1024 * 1024
CAP = 25 * MB  # the default ALICODE_FILES_MAX_BYTES
# A process that held the file would grow by at least its size; reading it in pieces
# and writing 1 MB rows costs a few MB of buffers and allocator slack.
ALLOWED_GROWTH = 10 * MB


def rss(node: procs.ServeNode) -> int:
    """The process's resident set now (VmRSS), in bytes."""
    status = Path(f"/proc/{node.proc.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


class RssSampler:
    """The largest resident set of a node seen while the block runs (every 10 ms; the
    peak high-water mark would hide growth below the start-up peak)."""

    def __init__(self, node: procs.ServeNode) -> None:
        self.node = node
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss(self.node))
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> RssSampler:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.peak = max(self.peak, rss(self.node))


@pytest.fixture
async def nodes(
    db: asyncpg.Connection,
    database_url: str,
    redis_url: str,
    mock_upstream: MockUpstream,
    tmp_path: Path,
) -> AsyncIterator[list[procs.ServeNode]]:
    await reset_pool(db)
    async with procs.serve_nodes(
        ("a", "b"),
        database_url,
        redis_url,
        f"files-{secrets.token_hex(4)}:",
        tmp_path,
        ALICODE_UPSTREAM_URL=mock_upstream.url,
        ALICODE_UPSTREAM_MODELS_INTERVAL="0",
    ) as started:
        yield started


def client(node: procs.ServeNode, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key=key, base_url=node.url, max_retries=0, timeout=120)


async def upload_stream(node: procs.ServeNode, key: str, size: int) -> tuple[int, dict]:
    """Upload ``size`` bytes of text without a Content-Length (read until the cap)."""
    boundary = "memtest"

    async def body() -> AsyncIterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="big.txt"\r\nContent-Type: text/plain\r\n\r\n'
        ).encode()
        piece = b"0123456789abcdef" * 4096  # 64 KiB
        sent = 0
        while sent < size:
            part = piece[: size - sent]
            sent += len(part)
            yield part
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {
        "x-api-key": key,
        "anthropic-version": "2023-06-01",
        "content-type": f"multipart/form-data; boundary={boundary}",
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(node.url + "/v1/files", data=body(), headers=headers) as resp:
            return resp.status, await resp.json()


async def test_a_file_past_the_cap_is_413_without_the_gateway_holding_it(
    nodes: list[procs.ServeNode], db: asyncpg.Connection
) -> None:
    node = nodes[0]
    customer = await make_customer(db)
    async with client(node, customer.key) as c:  # warm up every code path once
        await c.beta.files.upload(file=("warm.txt", b"warm up " * 1000, "text/plain"))
    before = rss(node)

    async with RssSampler(node) as refusals:
        status, answer = await upload_stream(node, customer.key, CAP + 1)
        assert status == 413, answer
        assert answer["error"]["type"] == "request_too_large"
        async with client(node, customer.key) as c:  # the SDK's way: a Content-Length
            with pytest.raises(anthropic.APIStatusError) as err:
                await c.beta.files.upload(file=("big.txt", b"x" * (CAP + 1), "text/plain"))
            assert err.value.status_code == 413

    # A file of exactly the cap is stored, and downloaded, just as flat.
    async with RssSampler(node) as round_trip:
        status, stored = await upload_stream(node, customer.key, CAP)
        assert status == 200 and stored["size_bytes"] == CAP, stored
        async with aiohttp.ClientSession() as http:
            async with http.get(
                f"{node.url}/v1/files/{stored['id']}/content",
                headers={"x-api-key": customer.key, "anthropic-version": "2023-06-01"},
            ) as resp:
                assert resp.status == 200
                received = 0
                async for chunk in resp.content.iter_chunked(MB):
                    received += len(chunk)
                    await asyncio.sleep(0.001)  # a reader slower than the gateway
        assert received == CAP
    print(
        f"gateway RSS: {before / MB:.1f} MB before; at most {refusals.peak / MB:.1f} MB "
        f"during two 25 MB + 1 byte refusals, {round_trip.peak / MB:.1f} MB during a 25 MB "
        "upload and download"
    )
    assert refusals.peak - before < ALLOWED_GROWTH
    assert round_trip.peak - before < ALLOWED_GROWTH
    uploading = await db.fetchval(
        "SELECT count(*) FROM files WHERE account_id = $1 AND status = 'uploading'",
        customer.account_id,
    )
    assert uploading == 0  # the refused uploads left no rows


async def test_a_second_node_serves_a_file_the_first_stored(
    nodes: list[procs.ServeNode], db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    a, b = nodes
    customer = await make_customer(db)
    data = b"%PDF-1.4\n" + bytes(range(256)) * 4200  # just over 1 MiB: two chunk rows
    async with client(a, customer.key) as on_a, client(b, customer.key) as on_b:
        uploaded = await on_a.beta.files.upload(file=("report.pdf", data, "application/pdf"))
        assert (await on_b.beta.files.retrieve_metadata(uploaded.id)).size_bytes == len(data)
        assert await (await on_b.beta.files.download(uploaded.id)).read() == data
        assert [f.id async for f in on_b.beta.files.list()] == [uploaded.id]
        answer = await on_b.beta.messages.with_raw_response.create(
            model=MODEL,
            max_tokens=20,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "document", "source": {"type": "file", "file_id": uploaded.id}},
                        {"type": "text", "text": "Summarise."},
                    ],
                }
            ],
            betas=["files-api-2025-04-14"],
        )
        assert answer.headers["x-alicode-files-inlined"] == "1"
        sent = json.loads(upstream_exchanges(mock_upstream)[-1].body)
        assert sent["messages"][0]["content"][0]["source"]["data"] == (
            base64.b64encode(data).decode()
        )
        await on_b.beta.files.delete(uploaded.id)
        with pytest.raises(anthropic.NotFoundError):
            await on_a.beta.files.download(uploaded.id)
