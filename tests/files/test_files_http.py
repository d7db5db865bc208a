"""The Files API over real HTTP with the official ``anthropic`` SDK
(``client.beta.files.*``), and files used in messages and count_tokens: inlined as
base64 / text before the mock upstream sees the request, billed once, announced by
``x-alicode-files-inlined``."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import struct
import zlib

import aiohttp
import anthropic
import asyncpg
import pytest

from alicode_gw import app
from alicode_gw.dev.mock_upstream import MockUpstream
from alicode_gw.files import store
from alicode_gw.files.objects import decode_page
from alicode_gw.files.store import delete_account_files
from tests.support.customers import (
    MODEL,
    Customer,
    client_for,
    ledger_rows,
    make_customer,
    own_gateway,
    upstream_exchanges,
)
from tests.support.gateway import stop_gateway
from tests.support.logs import Capture

BETA = ["files-api-2025-04-14"]
INLINED = "x-alicode-files-inlined"


def png(width: int = 3, height: int = 2, seed: int = 0) -> bytes:
    """A real PNG (RGB, no filter)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    rows = b"".join(
        b"\x00" + bytes((seed + x * 40 + y * 7) % 256 for x in range(width * 3))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


PDF = (
    b"%PDF-1.4\n1 0 obj <</Type /Catalog /Pages 2 0 R>> endobj\n"
    b"2 0 obj <</Type /Pages /Kids [] /Count 0>> endobj\n"
    b"trailer <</Root 1 0 R>>\n%%EOF\n" + bytes(range(256))
)
TEXT = "Quarterly notes — café, naïve, 東京.\nSecond line.\n".encode()


def image_message(file_id: str, text: str = "What is in this image?") -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "image", "source": {"type": "file", "file_id": file_id}},
                {"type": "text", "text": text},
            ],
        }
    ]


def document_message(file_id: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "document", "source": {"type": "file", "file_id": file_id}},
                {"type": "text", "text": "Summarise the document."},
            ],
        }
    ]


async def raw(
    gw: app.Gateway, customer: Customer, method: str, path: str, **kw: object
) -> tuple[int, dict[str, str], bytes]:
    headers = {"x-api-key": customer.key, "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as http:
        async with http.request(method, gw.url + path, headers=headers, **kw) as resp:
            return resp.status, dict(resp.headers), await resp.read()


async def assert_not_found_everywhere(client: anthropic.AsyncAnthropic, file_id: str) -> list[str]:
    """Metadata, download, delete, a message and count_tokens naming the file: each a
    404 not_found_error. Returns the request ids of the two refused requests."""
    for call in (
        client.beta.files.retrieve_metadata,
        client.beta.files.download,
        client.beta.files.delete,
    ):
        with pytest.raises(anthropic.NotFoundError):
            await call(file_id)
    refused = []
    with pytest.raises(anthropic.NotFoundError) as err:
        await client.beta.messages.create(
            model=MODEL, max_tokens=20, messages=image_message(file_id), betas=BETA
        )
    assert err.value.body["error"]["type"] == "not_found_error"
    assert file_id in err.value.body["error"]["message"]
    refused.append(err.value.request_id)
    with pytest.raises(anthropic.NotFoundError) as err:
        await client.beta.messages.count_tokens(
            model=MODEL, messages=image_message(file_id), betas=BETA
        )
    refused.append(err.value.request_id)
    return refused


# ------------------------------------------------------------------ the SDK's calls


@pytest.mark.parametrize(
    ("name", "data", "mime"),
    [
        ("chart.png", png(), "image/png"),
        ("report.pdf", PDF, "application/pdf"),
        ("notes.txt", TEXT, "text/plain"),
    ],
)
async def test_sdk_round_trip_is_byte_exact(
    gw: app.Gateway, customer: Customer, name: str, data: bytes, mime: str
) -> None:
    async with client_for(gw, customer) as client:
        uploaded = await client.beta.files.upload(file=(name, data, mime))
        assert uploaded.id.startswith("file_") and uploaded.type == "file"
        assert (uploaded.filename, uploaded.mime_type, uploaded.size_bytes) == (
            name,
            mime,
            len(data),
        )
        assert uploaded.downloadable is True
        meta = await client.beta.files.retrieve_metadata(uploaded.id)
        assert meta == uploaded
        downloaded = await client.beta.files.download(uploaded.id)
        assert await downloaded.read() == data
        assert downloaded.headers["content-type"] == mime
        assert name in downloaded.headers["content-disposition"]
        assert downloaded.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in downloaded.headers["content-security-policy"]
        assert downloaded.headers["request-id"].startswith("req_")
        listed = [f.id async for f in client.beta.files.list()]
        assert listed == [uploaded.id]
        deleted = await client.beta.files.delete(uploaded.id)
        assert (deleted.id, deleted.type) == (uploaded.id, "file_deleted")
        with pytest.raises(anthropic.NotFoundError):
            await client.beta.files.retrieve_metadata(uploaded.id)


async def test_upload_without_the_beta_header_and_with_curl_style_form(
    gw: app.Gateway, customer: Customer
) -> None:
    # What curl -F 'file=@/home/me/notes.txt' sends (a path in the name is cut off).
    form = (
        b'--b0undary\r\nContent-Disposition: form-data; name="file"; '
        b'filename="/home/me/notes.txt"\r\nContent-Type: text/plain\r\n\r\n'
        + TEXT
        + b"\r\n--b0undary--\r\n"
    )
    status, headers, body = await _post(
        gw, customer, "/v1/files", form, "multipart/form-data; boundary=b0undary"
    )
    assert status == 200, body
    answer = json.loads(body)
    assert set(answer) == {
        "id",
        "type",
        "filename",
        "mime_type",
        "size_bytes",
        "created_at",
        "downloadable",
    }
    assert answer["filename"] == "notes.txt" and answer["created_at"].endswith("Z")
    assert headers["request-id"].startswith("req_")


async def test_pagination_sdk_and_raw_json(gw: app.Gateway, customer: Customer) -> None:
    async with client_for(gw, customer) as client:
        ids = []
        for n in range(5):
            uploaded = await client.beta.files.upload(
                file=(f"f{n}.txt", f"file number {n}".encode(), "text/plain")
            )
            ids.append(uploaded.id)
        newest_first = ids[::-1]
        # The SDK's auto-pagination, two per page.
        assert [f.id async for f in client.beta.files.list(limit=2)] == newest_first
        first = await client.beta.files.list(limit=2)
        assert [f.id for f in first.data] == newest_first[:2]

    async def page(query: str) -> dict:
        status, _, body = await raw(gw, customer, "GET", "/v1/files?" + query)
        assert status == 200, body
        return json.loads(body)

    f5, f4, f3, f2, f1 = newest_first
    one = await page("limit=2")
    assert ([d["id"] for d in one["data"]], one["first_id"], one["last_id"], one["has_more"]) == (
        [f5, f4],
        f5,
        f4,
        True,
    )
    two = await page(f"limit=2&after_id={f4}")
    assert [d["id"] for d in two["data"]] == [f3, f2] and two["has_more"] is True
    three = await page(f"limit=2&after_id={f2}")
    assert [d["id"] for d in three["data"]] == [f1] and three["has_more"] is False
    assert three["next_page"] is None
    back = await page(f"limit=2&before_id={f2}")
    assert [d["id"] for d in back["data"]] == [f4, f3] and back["has_more"] is True
    assert decode_page(back["next_page"]) == (f4, None)
    top = await page(f"limit=2&before_id={f4}")
    assert [d["id"] for d in top["data"]] == [f5] and top["has_more"] is False
    assert [d["id"] for d in (await page("limit=1000"))["data"]] == newest_first
    # ids: those visible, newest first, one page; a scope: none of the gateway's files
    async with client_for(gw, customer) as client:
        # auto-pagination from a before_id / after_id cursor (what older SDKs send)
        newer = client.beta.files.list(limit=2, extra_query={"before_id": f1})
        assert [f.id async for f in newer] == [f3, f2, f5, f4]
        older = client.beta.files.list(limit=2, extra_query={"after_id": f4})
        assert [f.id async for f in older] == [f3, f2, f1]
        named = await client.beta.files.list(ids=[f1, f3, "file_011unknown", f3])
        assert [f.id for f in named.data] == [f3, f1] and named.next_page is None
        assert [f async for f in client.beta.files.list(scope_id="sesn_011x")] == []
    for bad in ("limit=0", "limit=1001", f"before_id={f1}&after_id={f2}", "page=page_zz"):
        status, _, body = await raw(gw, customer, "GET", "/v1/files?" + bad)
        assert status == 400, bad
        assert json.loads(body)["error"]["type"] == "invalid_request_error"


# ------------------------------------------------------------------ limits and types


async def test_executable_is_415_naming_its_type(gw: app.Gateway, customer: Customer) -> None:
    exe = b"MZ\x90\x00\x03\x00\x00\x00" + bytes(1000)
    async with client_for(gw, customer) as client:
        for name, declared in (("setup.exe", "application/x-msdownload"), ("a.txt", "text/plain")):
            with pytest.raises(anthropic.APIStatusError) as err:
                await client.beta.files.upload(file=(name, exe, declared))
            assert err.value.status_code == 415
            error = err.value.body["error"]
            assert error["type"] == "invalid_request_error"
            assert "portable-executable" in error["message"]
        with pytest.raises(anthropic.APIStatusError) as err:
            await client.beta.files.upload(file=("bad.txt", b"\xff\xfe\x00binary", "text/plain"))
        assert err.value.status_code == 415
        assert [f async for f in client.beta.files.list()] == []


async def test_html_is_never_served_as_html(gw: app.Gateway, customer: Customer) -> None:
    page = b"<html><script>alert(document.cookie)</script></html>"
    async with client_for(gw, customer) as client:
        with pytest.raises(anthropic.APIStatusError) as err:
            await client.beta.files.upload(file=("x.html", page, "text/html"))
        assert err.value.status_code == 415
        stored = await client.beta.files.upload(file=("x.html", page, "text/plain"))
    status, headers, body = await raw(gw, customer, "GET", f"/v1/files/{stored.id}/content")
    assert (status, body) == (200, page)
    assert headers["Content-Type"].startswith("text/plain")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Disposition"].startswith("attachment;")


async def test_an_unsupported_form_field_is_refused_not_ignored(
    gw: app.Gateway, customer: Customer, db: asyncpg.Connection
) -> None:
    async with client_for(gw, customer) as client:
        with pytest.raises(anthropic.BadRequestError) as err:
            await client.beta.files.upload(
                file=("a.txt", b"expiring", "text/plain"), expires_in_seconds=3600
            )
        assert "expires_in_seconds" in err.value.body["error"]["message"]
        assert [f async for f in client.beta.files.list()] == []
    # curl -F file=@a.txt -F expires_in_seconds=3600, and two file parts: the file comes
    # first, is refused all the same, and stays invisible.
    file_part = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\nexpiring\r\n"
    )
    for after in (
        b'--b\r\nContent-Disposition: form-data; name="expires_in_seconds"\r\n\r\n3600\r\n',
        file_part.replace(b"expiring", b"another"),
    ):
        form = file_part + after + b"--b--\r\n"
        status, _, body = await _post(
            gw, customer, "/v1/files", form, "multipart/form-data; boundary=b"
        )
        assert status == 400, body
        async with client_for(gw, customer) as client:
            assert [f async for f in client.beta.files.list()] == []
    assert (
        await db.fetchval("SELECT count(*) FROM files WHERE account_id = $1", customer.account_id)
        == 0
    )


async def test_size_cap_while_reading_and_quotas(
    db: asyncpg.Connection, make_config, customer: Customer
) -> None:
    cap = 1024 * 1024
    gw = await own_gateway(db, make_config, "files-cap", files_max_bytes=cap, files_quota_count=2)
    try:
        async with client_for(gw, customer) as client:
            exact = await client.beta.files.upload(file=("a.txt", b"a" * cap, "text/plain"))
            assert exact.size_bytes == cap

            async def body():  # no Content-Length: the cap trips while reading
                boundary = "xyzzy"
                yield (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                    'filename="big.txt"\r\nContent-Type: text/plain\r\n\r\n'
                ).encode()
                for _ in range(cap // 65536 + 2):
                    yield b"b" * 65536
                yield f"\r\n--{boundary}--\r\n".encode()

            status, _, answer = await _post(
                gw, customer, "/v1/files", body(), "multipart/form-data; boundary=xyzzy"
            )
            assert status == 413, answer
            assert json.loads(answer)["error"]["type"] == "request_too_large"
            second = await client.beta.files.upload(file=("b.txt", b"second", "text/plain"))
            with pytest.raises(anthropic.PermissionDeniedError) as err:
                await client.beta.files.upload(file=("c.txt", b"third", "text/plain"))
            assert "2 files" in err.value.body["error"]["message"]
            await client.beta.files.delete(second.id)
            await client.beta.files.upload(file=("c.txt", b"third", "text/plain"))
    finally:
        await stop_gateway(gw)
    left = await db.fetchval(
        "SELECT count(*) FROM files WHERE account_id = $1 AND status = 'uploading'",
        customer.account_id,
    )
    assert left == 0  # the refused upload's staged rows are gone

    gw = await own_gateway(db, make_config, "files-quota", files_quota_bytes=cap + 100)
    try:
        async with client_for(gw, customer) as client:
            with pytest.raises(anthropic.APIStatusError) as err:
                await client.beta.files.upload(file=("d.txt", b"d" * 200, "text/plain"))
            assert err.value.status_code == 413
            assert "quota" in err.value.body["error"]["message"]
    finally:
        await stop_gateway(gw)


async def test_a_client_gone_mid_upload_leaves_no_rows(
    gw: app.Gateway, customer: Customer, db: asyncpg.Connection
) -> None:
    """1.5 MiB of a 3 MiB upload (a chunk row written), then the connection closes: the
    staged file and its rows are dropped at once, and the file was never listed."""
    host, port = gw.url.removeprefix("http://").split(":")
    head = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\n"
    )
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\nx-api-key: {customer.key}\r\n"
        "anthropic-version: 2023-06-01\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {len(head) + 3 * 1024 * 1024 + 8}\r\n\r\n".encode()
        + head
    )
    for _ in range(24):
        writer.write(b"x" * 65536)
        await writer.drain()
    seen = 0
    for _ in range(100):  # until the first chunk row is stored
        seen = await db.fetchval(
            "SELECT count(*) FROM file_chunks c JOIN files f ON f.id = c.file_id"
            " WHERE f.account_id = $1",
            customer.account_id,
        )
        if seen:
            break
        await asyncio.sleep(0.05)
    assert seen == 1
    writer.close()
    await writer.wait_closed()
    left = None
    for _ in range(100):
        left = await db.fetchval(
            "SELECT count(*) FROM files WHERE account_id = $1", customer.account_id
        )
        if left == 0:
            break
        await asyncio.sleep(0.05)
    assert left == 0
    async with client_for(gw, customer) as client:
        assert [f async for f in client.beta.files.list()] == []


async def _post(
    gw: app.Gateway, customer: Customer, path: str, body: object, content_type: str
) -> tuple[int, dict, bytes]:
    """POST a body as given (bytes or an async iterator: sent chunked, no length)."""
    headers = {
        "x-api-key": customer.key,
        "anthropic-version": "2023-06-01",
        "content-type": content_type,
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.url + path, data=body, headers=headers) as resp:
            return resp.status, dict(resp.headers), await resp.read()


async def test_identical_bytes_twice_are_one_file_per_account(
    gw: app.Gateway, customer: Customer, db: asyncpg.Connection
) -> None:
    data = png(seed=11)
    other = await make_customer(db)
    async with client_for(gw, customer) as client, client_for(gw, other) as theirs:
        first = await client.beta.files.upload(file=("a.png", data, "image/png"))
        again = await client.beta.files.upload(file=("b.png", data, "image/png"))
        assert again.id == first.id and again.filename == "a.png"
        mine = await theirs.beta.files.upload(file=("a.png", data, "image/png"))
        assert mine.id != first.id  # never across accounts
    rows = await db.fetch("SELECT id FROM files WHERE account_id = $1", customer.account_id)
    assert [r["id"] for r in rows] == [first.id]
    chunks = await db.fetchval(
        "SELECT count(*) FROM file_chunks c JOIN files f ON f.id = c.file_id"
        " WHERE f.account_id = $1",
        customer.account_id,
    )
    assert chunks == 1


async def test_concurrent_identical_uploads_store_one_file(
    gw: app.Gateway, customer: Customer, db: asyncpg.Connection
) -> None:
    data = b"same bytes from five clients at once\n" * 1000
    async with client_for(gw, customer) as client:
        uploaded = await asyncio.gather(
            *(client.beta.files.upload(file=(f"{n}.txt", data, "text/plain")) for n in range(5))
        )
    assert len({f.id for f in uploaded}) == 1
    assert (
        await db.fetchval("SELECT count(*) FROM files WHERE account_id = $1", customer.account_id)
        == 1
    )


async def test_another_account_gets_404_everywhere(
    gw: app.Gateway, customer: Customer, db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    other = await make_customer(db)
    async with client_for(gw, customer) as client, client_for(gw, other) as theirs:
        uploaded = await client.beta.files.upload(file=("chart.png", png(), "image/png"))
        sent = len(mock_upstream.exchanges)
        refused = await assert_not_found_everywhere(theirs, uploaded.id)
        assert [f async for f in theirs.beta.files.list()] == []
        assert len(mock_upstream.exchanges) == sent  # nothing went upstream
        for request_id in refused:
            assert await ledger_rows(db, request_id, wait=0.1) == []
        # still the owner's
        assert (await client.beta.files.retrieve_metadata(uploaded.id)).id == uploaded.id


# ------------------------------------------------------------------ using a file


async def test_message_with_an_image_file_reaches_upstream_as_base64_billed_once(
    gw: app.Gateway, customer: Customer, db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    data = png(seed=3)
    async with client_for(gw, customer) as client:
        uploaded = await client.beta.files.upload(file=("chart.png", data, "image/png"))
        raw_answer = await client.beta.messages.with_raw_response.create(
            model=MODEL, max_tokens=20, messages=image_message(uploaded.id), betas=BETA
        )
        message = await raw_answer.parse()
    assert message.type == "message"
    assert raw_answer.headers[INLINED] == "1"
    (exchange,) = [ex for ex in upstream_exchanges(mock_upstream) if ex.headers.get("x-api-key")][
        -1:
    ]
    sent = json.loads(exchange.body)
    source = sent["messages"][0]["content"][0]["source"]
    assert source == {
        "type": "base64",
        "media_type": "image/png",
        "data": base64.b64encode(data).decode(),
    }
    assert b"file_id" not in exchange.body
    rows = await ledger_rows(db, raw_answer.request_id)
    assert len(rows) == 1 and rows[0]["kind"] == "charge"


async def test_streamed_message_and_chat_surface_carry_the_header(
    gw: app.Gateway, customer: Customer, mock_upstream: MockUpstream
) -> None:
    async with client_for(gw, customer) as client:
        uploaded = await client.beta.files.upload(file=("notes.txt", TEXT, "text/plain"))
    body = {
        "model": MODEL,
        "max_tokens": 20,
        "stream": True,
        "messages": document_message(uploaded.id),
    }
    status, headers, answer = await raw(gw, customer, "POST", "/v1/messages", json=body)
    assert status == 200 and headers[INLINED] == "1"
    assert b"event: message_stop" in answer
    sent = json.loads(upstream_exchanges(mock_upstream)[-1].body)
    assert sent["messages"][0]["content"][0]["source"] == {
        "type": "text",
        "media_type": "text/plain",
        "data": TEXT.decode(),
    }


async def test_pdf_document_in_message_and_count_tokens(
    gw: app.Gateway, customer: Customer, db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    async with client_for(gw, customer) as client:
        uploaded = await client.beta.files.upload(file=("report.pdf", PDF, "application/pdf"))
        raw_answer = await client.beta.messages.with_raw_response.create(
            model=MODEL, max_tokens=20, messages=document_message(uploaded.id), betas=BETA
        )
        counted = await client.beta.messages.with_raw_response.count_tokens(
            model=MODEL, messages=document_message(uploaded.id), betas=BETA
        )
    assert raw_answer.headers[INLINED] == "1"
    assert counted.headers[INLINED] == "1"
    assert counted.headers["x-alicode-count-source"] == "upstream"
    assert (await counted.parse()).input_tokens > 0
    expected = {
        "type": "base64",
        "media_type": "application/pdf",
        "data": base64.b64encode(PDF).decode(),
    }
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        sent = json.loads(upstream_exchanges(mock_upstream, path)[-1].body)
        assert sent["messages"][0]["content"][0]["source"] == expected
    rows = await ledger_rows(db, raw_answer.request_id)
    assert len(rows) == 1


async def test_a_request_without_files_is_forwarded_byte_for_byte(
    gw: app.Gateway, customer: Customer, mock_upstream: MockUpstream
) -> None:
    body = b'{"model":"%s",  "max_tokens":20,"messages":[{"role":"user","content":"hi"}]}' % (
        MODEL.encode()
    )
    status, headers, _ = await _post(gw, customer, "/v1/messages", body, "application/json")
    assert status == 200 and INLINED not in headers
    assert upstream_exchanges(mock_upstream)[-1].body == body


async def test_wrong_block_kind_is_400_before_anything_is_held(
    gw: app.Gateway, customer: Customer, mock_upstream: MockUpstream
) -> None:
    async with client_for(gw, customer) as client:
        uploaded = await client.beta.files.upload(file=("report.pdf", PDF, "application/pdf"))
        sent = len(mock_upstream.exchanges)
        with pytest.raises(anthropic.BadRequestError) as err:
            await client.beta.messages.create(
                model=MODEL, max_tokens=20, messages=image_message(uploaded.id), betas=BETA
            )
    assert "not an image" in err.value.body["error"]["message"]
    assert len(mock_upstream.exchanges) == sent


async def test_inlining_past_the_body_limit_is_413_before_any_file_is_read(
    db: asyncpg.Connection, make_config, customer: Customer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stored sizes decide: files that cannot fit are never loaded into memory."""
    limit = 256 * 1024
    gw = await own_gateway(db, make_config, "files-inline-cap", max_body_bytes=limit)
    reads = []
    real_read_all = store.read_all

    async def counting_read_all(pool: asyncpg.Pool, file_id: str) -> bytes:
        reads.append(file_id)
        return await real_read_all(pool, file_id)

    monkeypatch.setattr(store, "read_all", counting_read_all)
    try:
        async with client_for(gw, customer) as client:
            ids = [
                (await client.beta.files.upload(file=(f"{n}.txt", n * 150_000, "text/plain"))).id
                for n in (b"a", b"b")
            ]
            blocks = [{"type": "document", "source": {"type": "file", "file_id": i}} for i in ids]
            with pytest.raises(anthropic.APIStatusError) as err:
                await client.beta.messages.create(
                    model=MODEL,
                    max_tokens=20,
                    messages=[
                        {"role": "user", "content": [*blocks, {"type": "text", "text": "?"}]}
                    ],
                )
        assert err.value.status_code == 413
        assert err.value.body["error"]["type"] == "request_too_large"
        assert reads == []
    finally:
        await stop_gateway(gw)


# ------------------------------------------------------------------ deletion and purge


async def test_deleted_is_404_at_once_and_purged_after_the_grace(
    db: asyncpg.Connection, make_config, customer: Customer, mock_upstream: MockUpstream
) -> None:
    gw = await own_gateway(
        db, make_config, "files-purge", files_purge_grace=3.0, files_purge_interval=0.2
    )
    try:
        async with client_for(gw, customer) as client:
            uploaded = await client.beta.files.upload(file=("chart.png", png(seed=5), "image/png"))
            kept = await client.beta.files.upload(file=("keep.txt", b"keep me", "text/plain"))
            await client.beta.files.delete(uploaded.id)
            # the bytes stay through the grace period (checked at once: on a loaded
            # machine the requests below may outlast it), then the purge takes them
            assert (
                await db.fetchval(
                    "SELECT count(*) FROM file_chunks WHERE file_id = $1", uploaded.id
                )
                == 1
            )
            await assert_not_found_everywhere(client, uploaded.id)
            assert [f.id async for f in client.beta.files.list()] == [kept.id]
            for _ in range(200):
                left = await db.fetchval("SELECT count(*) FROM files WHERE id = $1", uploaded.id)
                if left == 0:
                    break
                await asyncio.sleep(0.1)
            assert left == 0
            assert (
                await db.fetchval(
                    "SELECT count(*) FROM file_chunks WHERE file_id = $1", uploaded.id
                )
                == 0
            )
            # identical bytes uploaded again make a new file
            again = await client.beta.files.upload(file=("chart.png", png(seed=5), "image/png"))
            assert again.id != uploaded.id
            assert (await client.beta.files.retrieve_metadata(kept.id)).id == kept.id
    finally:
        await stop_gateway(gw)


async def test_deleting_the_account_files(db: asyncpg.Connection, gw: app.Gateway) -> None:
    customer = await make_customer(db)
    async with client_for(gw, customer) as client:
        for n in range(3):
            await client.beta.files.upload(file=(f"{n}.txt", f"n{n}".encode(), "text/plain"))
    assert await delete_account_files(gw.state.db, customer.account_id) == 3
    assert (
        await db.fetchval("SELECT count(*) FROM files WHERE account_id = $1", customer.account_id)
        == 0
    )


async def test_marker_in_a_file_is_in_no_log_metric_or_redis_key(
    gw: app.Gateway,
    customer: Customer,
    redis: object,
    mock_upstream: MockUpstream,
    captured: Capture,
) -> None:
    marker = f"FILEMARKER{secrets.token_hex(10)}"
    content = f"secret notes {marker}\n".encode()
    async with client_for(gw, customer) as client:
        uploaded = await client.beta.files.upload(file=("n.txt", content, "text/plain"))
        await client.beta.messages.create(
            model=MODEL, max_tokens=20, messages=document_message(uploaded.id), betas=BETA
        )
        await client.beta.messages.count_tokens(
            model=MODEL, messages=document_message(uploaded.id), betas=BETA
        )
        assert await (await client.beta.files.download(uploaded.id)).read() == content
        with pytest.raises(anthropic.APIStatusError):  # a refused upload names only the type
            await client.beta.files.upload(file=("x.exe", b"MZ\x90\x00" + content, "text/plain"))
    # it went through (the test can fail) ...
    assert any(marker.encode() in ex.body for ex in mock_upstream.exchanges)
    async with aiohttp.ClientSession() as http:
        async with http.get(gw.url + "/metrics") as resp:
            metrics_text = await resp.text()
    assert "alicode_requests_total" in metrics_text
    keys = []
    values = []
    async for key in redis.scan_iter(count=1000):  # type: ignore[attr-defined]
        keys.append(key)
        if (await redis.type(key)) == b"string":  # type: ignore[attr-defined]
            values.append(await redis.get(key))  # type: ignore[attr-defined]
    assert keys
    assert len(captured.lines) >= 5
    for where, text in (
        ("log", "\n".join(captured.lines)),
        ("metrics", metrics_text),
        ("redis keys", repr(keys)),
        ("redis values", repr(values)),
    ):
        assert marker not in text, f"the marker leaked into the {where}"
