"""Message Batches through the gateway with the official SDK, against the mock
upstream's batch API: lifecycle, money, isolation, two nodes, restart."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
from datetime import UTC, datetime, timedelta

import aiohttp
import anthropic
import asyncpg
import pytest
from aiohttp import web

from alicode_gw import app
from alicode_gw.batches import store
from alicode_gw.batches.poller import BatchPoller, build_poller
from alicode_gw.dev.mock_upstream import MockUpstream
from alicode_gw.money import ledger
from alicode_gw.upstream.relay import usage_from_message
from tests.support.batches import FAST_POLL, ended, requests_of
from tests.support.customers import (
    MODEL,
    balance,
    make_customer,
    own_gateway,
    reset_pool,
)
from tests.support.gateway import UPSTREAM_KEYS, start_gateway, stop_gateway


def poller_of(gateway: app.Gateway) -> BatchPoller:
    """A batch loop on the gateway's state (as ``serve`` runs it), to call by hand."""
    state = gateway.state
    return build_poller(state.config, state.db, state.http, state.redis, state.limiter)


async def test_sdk_lifecycle_and_price(
    sdk, bgw: app.Gateway, db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    customer = await make_customer(db)
    client = sdk(bgw, customer)
    before = await balance(bgw, db, customer.email)
    created = await client.messages.batches.create(requests=requests_of(3))
    assert created.id.startswith("msgbatch_")
    assert created.processing_status == "in_progress"
    assert created.request_counts.processing == 3
    assert created.results_url is None
    batch = await ended(client, created.id)
    assert batch.processing_status == "ended"
    assert batch.request_counts.succeeded == 3
    assert batch.results_url == f"{bgw.url}/v1/messages/batches/{created.id}/results"
    lines = [line async for line in await client.messages.batches.results(created.id)]
    assert sorted(line.custom_id for line in lines) == ["q-0", "q-1", "q-2"]
    assert all(line.result.type == "succeeded" for line in lines)
    assert all(line.result.message.content[0].text for line in lines)

    # Money: one ledger row, the batch price of the usage the results report.
    prices = bgw.state.catalog.resolve(MODEL).prices
    usages = [usage_from_message(line.result.message.model_dump()) for line in lines]
    full = sum(prices.cost_nanos(**u.counts()) for u in usages)
    total = {k: sum(u.counts()[k] for u in usages) for k in usages[0].counts()}
    half = prices.cost_nanos(**total, batch=True)
    assert prices.batch_discount_pct == 50 and abs(2 * half - full) <= 2
    rows = await db.fetch("SELECT * FROM ledger WHERE request_id = $1", created.id)
    assert len(rows) == 1
    row = rows[0]
    assert row["batch"] and row["cost_nanos"] == half and row["amount_nanos"] == -half
    assert (row["batch_requests"], row["batch_succeeded"], row["batch_errored"]) == (3, 3, 0)
    assert before - await balance(bgw, db, customer.email) == half
    summary = await ledger.account_summary(db, customer.email)
    assert summary["held_nanos"] == 0

    # Never an upstream id, URL or credential to the customer; never the customer key
    # upstream.
    raw = await client.messages.batches.with_raw_response.retrieve(created.id)
    page = await client.messages.batches.with_raw_response.list(limit=10)
    seen = raw.http_response.text + json.dumps(dict(raw.headers)) + page.http_response.text
    upstream_ids = list(mock_upstream.batches.batches)
    for secret in (*UPSTREAM_KEYS, mock_upstream.url, *upstream_ids):
        assert secret not in seen
    for ex in mock_upstream.exchanges:
        assert customer.key not in json.dumps(ex.headers)
        assert ex.api_key in UPSTREAM_KEYS

    # list, then delete
    assert [b.id for b in (await client.messages.batches.list(limit=10)).data] == [created.id]
    deleted = await client.messages.batches.delete(created.id)
    assert (deleted.id, deleted.type) == (created.id, "message_batch_deleted")
    assert upstream_ids[0] not in mock_upstream.batches.batches  # deleted upstream too
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.batches.retrieve(created.id)


async def test_cancel_and_expiry_bill_nothing(
    sdk, bgw: app.Gateway, db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    customer = await make_customer(db)
    client = sdk(bgw, customer)
    before = await balance(bgw, db, customer.email)
    mock_upstream.batches.process_seconds = 60.0
    first = await client.messages.batches.create(requests=requests_of(3, prefix="c"))
    canceling = await client.messages.batches.cancel(first.id)
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None
    done = await ended(client, first.id)
    assert done.processing_status == "ended" and done.request_counts.canceled == 3
    lines = [line async for line in await client.messages.batches.results(first.id)]
    assert {line.result.type for line in lines} == {"canceled"}
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.batches.cancel(first.id)

    second = await client.messages.batches.create(requests=requests_of(2, prefix="e"))
    with pytest.raises(anthropic.BadRequestError):  # not ended: cannot be deleted
        await client.messages.batches.delete(second.id)
    # Shortened only now (the mock applies it on its next look at the batch): before,
    # a slow run could see the batch expire before the delete above.
    mock_upstream.batches.expire_seconds = 0.3
    done = await ended(client, second.id)
    assert done.request_counts.expired == 2
    rows = await db.fetch(
        "SELECT amount_nanos, batch_canceled, batch_expired FROM ledger"
        " WHERE request_id = ANY($1) ORDER BY batch_canceled DESC",
        [first.id, second.id],
    )
    assert [tuple(r) for r in rows] == [(0, 3, 0), (0, 0, 2)]
    assert await balance(bgw, db, customer.email) == before


async def test_balance_for_one_batch_not_two(sdk, bgw: app.Gateway, db: asyncpg.Connection) -> None:
    customer = await make_customer(db, usd=0)
    client = sdk(bgw, customer)
    reqs = requests_of(3, max_tokens=4000)
    info = bgw.state.catalog.resolve(MODEL)
    dearest = max(info.prices.input, info.prices.cache_write_1h, info.prices.cache_write_5m)
    worst = 0
    for item in reqs:
        estimate = bgw.state.tokens.count(item["params"])
        worst += -(-(estimate * dearest + 4000 * info.prices.output) * 50 // 100_000)
    await ledger.topup(db, customer.email, worst + worst // 2)
    first = await client.messages.batches.create(requests=reqs)
    with pytest.raises(anthropic.APIStatusError) as refused:
        await client.messages.batches.create(requests=requests_of(3, max_tokens=4000, prefix="x"))
    assert refused.value.status_code == 402
    assert refused.value.body["error"]["type"] == "insufficient_credits"
    held = await ledger.account_summary(db, customer.email)
    assert held["held_nanos"] == worst
    batches = await db.fetchval(
        "SELECT count(*) FROM message_batches WHERE account_id = $1", customer.account_id
    )
    assert batches == 1  # nothing of the second one recorded or submitted
    assert (await ended(client, first.id)).processing_status == "ended"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r[1]["params"].pop("max_tokens"), "requests.1.params.max_tokens"),
        (lambda r: r[2]["params"].update(stream=True), "requests.2.params.stream"),
        (lambda r: r[2]["params"].update(max_tokens=10**7), "requests.2.params.max_tokens"),
        (lambda r: r[1]["params"].update(model="no-such-model"), "requests.1.params.model"),
        (lambda r: r[2].update(custom_id="q-0"), "requests.2.custom_id"),
        (lambda r: r[0].update(custom_id="bad id!"), "requests.0.custom_id"),
    ],
)
async def test_invalid_request_names_it(
    sdk, bgw: app.Gateway, db: asyncpg.Connection, mock_upstream: MockUpstream, change, field
) -> None:
    customer = await make_customer(db)
    client = sdk(bgw, customer)
    reqs = requests_of(3)
    change(reqs)
    with pytest.raises(anthropic.BadRequestError) as refused:
        await client.messages.batches.create(requests=reqs)
    assert refused.value.body["error"]["message"].startswith(field)
    assert not [ex for ex in mock_upstream.exchanges if ex.path.startswith("/v1/messages/b")]


async def test_other_accounts_batch_is_404(sdk, bgw: app.Gateway, db: asyncpg.Connection) -> None:
    owner, other = await make_customer(db), await make_customer(db)
    created = await sdk(bgw, owner).messages.batches.create(requests=requests_of(1))
    stranger = sdk(bgw, other).messages.batches
    for call in (stranger.retrieve, stranger.cancel, stranger.delete):
        with pytest.raises(anthropic.NotFoundError):
            await call(created.id)
    with pytest.raises(anthropic.NotFoundError):
        await stranger.results(created.id)
    assert (await stranger.list()).data == []
    await ended(sdk(bgw, owner), created.id)


async def test_two_nodes_settle_once(
    sdk, db: asyncpg.Connection, make_config, mock_upstream: MockUpstream
) -> None:
    await reset_pool(db)
    mock_upstream.batches.process_seconds = 0.2
    no_loop = {"batch_poll_interval": 0.0, "redis_prefix": f"batch-two-{secrets.token_hex(4)}:"}
    one = await start_gateway(make_config(**no_loop))
    two = await start_gateway(make_config(**no_loop))
    try:
        customer = await make_customer(db)
        before = await balance(one, db, customer.email)
        created = await sdk(one, customer).messages.batches.create(requests=requests_of(3))
        await asyncio.sleep(0.3)
        batch = await store.get_any(one.state.db, created.id)
        outcomes = await asyncio.gather(*(poller_of(gw).poll(batch) for gw in (one, two, one, two)))
        assert sorted(outcomes) == ["already_settled"] * 3 + ["settled"]
        rows = await db.fetch("SELECT amount_nanos FROM ledger WHERE request_id = $1", created.id)
        assert len(rows) == 1
        assert before - await balance(one, db, customer.email) == -rows[0]["amount_nanos"] > 0
    finally:
        await stop_gateway(one)
        await stop_gateway(two)
    assert not await ledger.audit(db)


async def test_restart_picks_up_and_settles_once(
    sdk, db: asyncpg.Connection, make_config, mock_upstream: MockUpstream
) -> None:
    await reset_pool(db)
    mock_upstream.batches.process_seconds = 0.5
    first = await start_gateway(
        make_config(batch_poll_interval=0.0, redis_prefix=f"batch-r1-{secrets.token_hex(4)}:")
    )
    customer = await make_customer(db)
    try:
        created = await sdk(first, customer).messages.batches.create(requests=requests_of(2))
    finally:
        await stop_gateway(first)
    second = await start_gateway(
        make_config(redis_prefix=f"batch-r2-{secrets.token_hex(4)}:", **FAST_POLL)
    )
    try:
        done = await ended(sdk(second, customer), created.id)
        assert done.request_counts.succeeded == 2
    finally:
        await stop_gateway(second)
    rows = await db.fetch("SELECT 1 FROM ledger WHERE request_id = $1", created.id)
    assert len(rows) == 1
    assert not await ledger.audit(db)


async def test_disabled_owner_credential_is_a_clear_error(
    sdk, bgw: app.Gateway, db: asyncpg.Connection
) -> None:
    customer = await make_customer(db)
    client = sdk(bgw, customer)
    created = await client.messages.batches.create(requests=requests_of(1))
    done = await ended(client, created.id)
    assert done.processing_status == "ended"
    await db.execute(
        "UPDATE upstream_credentials SET status = 'disabled', disabled_at = now()"
        " WHERE id = (SELECT credential_id FROM message_batches WHERE id = $1)",
        created.id,
    )
    with pytest.raises(anthropic.APIStatusError) as failed:
        [line async for line in await client.messages.batches.results(created.id)]
    assert failed.value.status_code == 502
    assert "no longer available" in failed.value.body["error"]["message"]


async def test_submission_tries_another_credential_on_429(
    sdk, bgw: app.Gateway, db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    customer = await make_customer(db)
    client = sdk(bgw, customer)
    reqs = requests_of(3)
    faulty = ",".join(UPSTREAM_KEYS[:2])
    reqs[0]["params"]["messages"][0]["content"] += f" [[mock: status=429 only_key={faulty}]]"
    created = await client.messages.batches.create(requests=reqs)
    posts = [
        ex
        for ex in mock_upstream.exchanges
        if ex.path == "/v1/messages/batches" and ex.method == "POST"
    ]
    assert [ex.status for ex in posts[:-1]] == [429] * (len(posts) - 1)
    assert posts[-1].status == 200 and posts[-1].api_key == UPSTREAM_KEYS[2]
    owner = await db.fetchval(
        "SELECT c.secret FROM message_batches b JOIN upstream_credentials c"
        " ON c.id = b.credential_id WHERE b.id = $1",
        created.id,
    )
    assert owner == UPSTREAM_KEYS[2]
    done = await ended(client, created.id)
    assert done.request_counts.succeeded == 3


async def test_an_upstream_refusal_is_passed_through_and_nothing_held(
    sdk, bgw: app.Gateway, db: asyncpg.Connection
) -> None:
    customer = await make_customer(db)
    client = sdk(bgw, customer)
    before = await balance(bgw, db, customer.email)
    reqs = requests_of(2)
    reqs[0]["params"]["messages"][0]["content"] += " [[mock: status=400]]"
    with pytest.raises(anthropic.BadRequestError) as refused:
        await client.messages.batches.create(requests=reqs)
    assert refused.value.body["request_id"] == refused.value.response.headers["request-id"]
    assert (await client.messages.batches.list()).data == []
    summary = await ledger.account_summary(db, customer.email)
    assert summary["held_nanos"] == 0
    assert await balance(bgw, db, customer.email) == before


async def test_a_batch_is_one_request_of_the_rpm_and_its_tokens_count_when_settled(
    sdk, bgw: app.Gateway, db: asyncpg.Connection
) -> None:
    customer = await make_customer(db, rpm=1, budget_tokens=1_000_000)
    client = sdk(bgw, customer)
    created = await client.messages.batches.create(requests=requests_of(3))
    with pytest.raises(anthropic.RateLimitError):
        await client.messages.batches.create(requests=requests_of(1))
    await ended(client, created.id)
    row = await db.fetchrow("SELECT * FROM ledger WHERE request_id = $1", created.id)
    tokens = (
        sum(
            row[k]
            for k in ("input_tokens", "output_tokens", "cache_creation_5m", "cache_creation_1h")
        )
        + row["cache_read"]
    )
    async with aiohttp.ClientSession() as http:
        async with http.get(
            bgw.url + "/v1/key-status", headers={"x-api-key": customer.key}
        ) as resp:
            status = await resp.json()
    assert tokens > 0
    assert status["budget"]["used_tokens"] == tokens, status


async def test_a_model_the_key_may_not_use_is_a_403_naming_the_request(
    sdk, bgw: app.Gateway, db: asyncpg.Connection
) -> None:
    customer = await make_customer(db, models=["claude-haiku-4-5"])
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        await sdk(bgw, customer).messages.batches.create(requests=requests_of(2))
    assert refused.value.body["error"]["message"].startswith("requests.0.params: ")


async def test_a_batch_never_recorded_as_submitted_ends_errored_and_unbilled(
    sdk, bgw: app.Gateway, db: asyncpg.Connection
) -> None:
    """A process that died between the hold and the upstream's answer leaves the batch
    `submitting`: after the grace period the loop ends it, every request errored, and
    gives its hold back."""
    customer = await make_customer(db)
    before = await balance(bgw, db, customer.email)
    opened = await store.open_batch(
        bgw.state.db,
        batch_id="msgbatch_orphan" + secrets.token_hex(4),
        key_id=customer.key_id,
        client_ip="::1",
        items=[store.HoldItem(f"o-{i}", MODEL, 10, 100) for i in range(2)],
        expires_at=datetime.now(UTC) + timedelta(hours=24),
        hold_ttl_seconds=3600,
    )
    assert opened.outcome == "held" and opened.hold_nanos > 0
    batch_id = await db.fetchval(
        "UPDATE message_batches SET created_at = now() - interval '1 hour'"
        " WHERE account_id = $1 RETURNING id",
        customer.account_id,
    )
    client = sdk(bgw, customer)
    done = await ended(client, batch_id)
    assert (done.processing_status, done.request_counts.errored) == ("ended", 2)
    lines = [line async for line in await client.messages.batches.results(batch_id)]
    assert sorted(line.custom_id for line in lines) == ["o-0", "o-1"]
    assert {line.result.type for line in lines} == {"errored"}
    assert await balance(bgw, db, customer.email) == before
    assert (await ledger.account_summary(db, customer.email))["held_nanos"] == 0


async def test_list_pages_newest_first(sdk, bgw: app.Gateway, db: asyncpg.Connection) -> None:
    customer = await make_customer(db)
    client = sdk(bgw, customer)
    made = [(await client.messages.batches.create(requests=requests_of(1))).id for _ in range(3)]
    newest_first = made[::-1]
    first = await client.messages.batches.list(limit=2)
    assert [b.id for b in first.data] == newest_first[:2] and first.has_more
    assert [b.id async for b in await client.messages.batches.list(limit=2)] == newest_first
    older = await client.messages.batches.list(limit=5, after_id=newest_first[0])
    assert [b.id for b in older.data] == newest_first[1:] and not older.has_more
    newer = await client.messages.batches.list(limit=1, before_id=newest_first[2])
    assert [b.id for b in newer.data] == [newest_first[1]] and newer.has_more
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.batches.list(after_id="msgbatch_nosuchbatch")
    for batch_id in made:
        await ended(client, batch_id)


async def test_a_batch_gone_upstream_ends_errored_and_unbilled(
    sdk, bgw: app.Gateway, db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    customer = await make_customer(db)
    client = sdk(bgw, customer)
    before = await balance(bgw, db, customer.email)
    mock_upstream.batches.process_seconds = 60.0
    created = await client.messages.batches.create(requests=requests_of(2))
    mock_upstream.batches.batches.clear()  # the upstream lost it
    done = await ended(client, created.id)
    assert (done.processing_status, done.request_counts.errored) == ("ended", 2)
    lines = [line async for line in await client.messages.batches.results(created.id)]
    assert {line.result.type for line in lines} == {"errored"}
    assert await balance(bgw, db, customer.email) == before
    assert (await ledger.account_summary(db, customer.email))["held_nanos"] == 0


async def test_a_file_id_in_a_batch_request_goes_upstream_as_its_bytes(
    sdk, bgw: app.Gateway, db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    """A ``file_id`` source inside a batch request is inlined as on /v1/messages (the
    upstream batch receives the file's text); an unknown one is a 404 naming the request,
    with nothing held or submitted."""
    customer = await make_customer(db)
    client = sdk(bgw, customer)
    marker = f"batch-file-{secrets.token_hex(6)}"
    uploaded = await client.beta.files.upload(file=("notes.txt", marker.encode(), "text/plain"))

    def params(file_id: str) -> dict:
        return {
            "model": MODEL,
            "max_tokens": 16,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "document", "source": {"type": "file", "file_id": file_id}},
                        {"type": "text", "text": "summarise"},
                    ],
                }
            ],
        }

    before = len(mock_upstream.exchanges)
    with pytest.raises(anthropic.NotFoundError) as info:
        await client.messages.batches.create(
            requests=[
                {"custom_id": "ok", "params": params(uploaded.id)},
                {"custom_id": "gone", "params": params("file_011CNha8iCJcU1wXNR6q4V8w")},
            ]
        )
    assert "requests.1.params" in info.value.body["error"]["message"]
    assert len(mock_upstream.exchanges) == before  # nothing submitted
    assert (
        await db.fetchval(
            "SELECT count(*) FROM billing_holds h JOIN accounts a ON a.id = h.account_id "
            "WHERE a.email = $1 AND h.status = 'held'",
            customer.email,
        )
        == 0
    )

    created = await client.messages.batches.create(
        requests=[{"custom_id": "ok", "params": params(uploaded.id)}]
    )
    submitted = [
        ex for ex in mock_upstream.exchanges if ex.method == "POST" and ex.path.endswith("/batches")
    ][-1]
    sent = json.loads(submitted.body)["requests"][0]["params"]["messages"][0]["content"][0]
    assert sent["source"] == {"type": "text", "media_type": "text/plain", "data": marker}
    assert marker.encode() not in submitted.headers.get("authorization", "").encode()
    batch = await ended(client, created.id)
    assert batch.request_counts.succeeded == 1


async def test_upstream_error_on_a_batch_never_names_the_upstream_id(
    sdk, db: asyncpg.Connection, make_config, mock_upstream: MockUpstream
) -> None:
    """The upstream ended the batch but no loop has seen it yet: its refusal of the
    cancel is passed on, with the gateway's id in place of the upstream's."""
    mock_upstream.batches.process_seconds = 0.1
    gateway = await own_gateway(db, make_config, "batch-noloop", batch_poll_interval=0)
    try:
        client = sdk(gateway, await make_customer(db))
        created = await client.messages.batches.create(requests=requests_of(1))
        upstream_id = (await store.get_any(db, created.id)).upstream_id
        await asyncio.sleep(0.3)
        with pytest.raises(anthropic.BadRequestError) as refused:
            await client.messages.batches.cancel(created.id)
        text = refused.value.response.text
        assert upstream_id not in text and created.id in text
        assert await poller_of(gateway).poll_due() == 1  # settled: the books stay whole
        assert (await client.messages.batches.retrieve(created.id)).processing_status == "ended"
    finally:
        await stop_gateway(gateway)
    assert not await ledger.audit(db)


async def test_a_poll_keeps_the_counts_of_a_batch_in_progress(
    sdk, bgw: app.Gateway, db: asyncpg.Connection, mock_upstream: MockUpstream, monkeypatch
) -> None:
    """The upstream reports progress before the batch ends: the customer sees it."""
    client = sdk(bgw, await make_customer(db))
    mock_upstream.batches.process_seconds = 60.0
    created = await client.messages.batches.create(requests=requests_of(3))
    answer = mock_upstream.batches.to_json

    def progressing(batch, base_url):
        state = answer(batch, base_url)
        if state["processing_status"] == "in_progress":
            state["request_counts"].update(processing=1, succeeded=1, errored=1)
        return state

    monkeypatch.setattr(mock_upstream.batches, "to_json", progressing)
    batch = await store.get_any(db, created.id)
    assert await poller_of(bgw).poll(batch) == "waiting"
    seen = (await client.messages.batches.retrieve(created.id)).request_counts
    assert (seen.processing, seen.succeeded, seen.errored) == (1, 1, 1)
    mock_upstream.batches.process_seconds = 0.0
    done = await ended(client, created.id)
    assert done.request_counts.succeeded == 3 and done.request_counts.processing == 0


async def test_a_client_leaving_mid_results_is_not_a_failure(
    sdk,
    bgw: app.Gateway,
    db: asyncpg.Connection,
    mock_upstream: MockUpstream,
    monkeypatch,
    access_lines,
) -> None:
    """Results far larger than the socket buffers, a client that reads a little and
    leaves: the relay stops there (an access line that is not a 500)."""
    customer = await make_customer(db)
    client = sdk(bgw, customer)
    created = await client.messages.batches.create(requests=requests_of(1))
    await ended(client, created.id)
    line = json.dumps({"custom_id": "q-0", "result": {"type": "canceled"}}).encode() + b"\n"
    monkeypatch.setattr(mock_upstream.batches, "results", lambda batch: line * 400_000)
    path = f"/v1/messages/batches/{created.id}/results"
    headers = {"x-api-key": customer.key, "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as session:
        async with session.get(bgw.url + path, headers=headers) as response:
            assert response.status == 200
            await response.content.read(64 * 1024)
            response.close()  # the client goes away mid-body
    for _ in range(100):
        seen = [a["status"] for a in access_lines.lines if a.get("path") == path]
        if seen:
            break
        await asyncio.sleep(0.05)
    assert seen and seen[0] != 500


async def test_a_404_that_is_not_the_apis_is_not_a_batch_gone(
    sdk, bgw: app.Gateway, db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    """Only the API's own not_found_error ends a batch unbilled: a proxy's or a wrong
    URL's 404 page is a failed poll, tried again later."""

    async def not_here(request: web.Request) -> web.Response:
        return web.Response(status=404, text="<html>Not Found</html>", content_type="text/html")

    elsewhere = web.Application()
    elsewhere.router.add_route("*", "/{tail:.*}", not_here)
    runner = web.AppRunner(elsewhere)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        client = sdk(bgw, await make_customer(db))
        mock_upstream.batches.process_seconds = 60.0
        created = await client.messages.batches.create(requests=requests_of(1))
        poller = poller_of(bgw)
        poller.upstream = dataclasses.replace(poller.upstream, url=f"http://127.0.0.1:{port}")
        assert await poller.poll(await store.get_any(db, created.id)) == "unreachable"
        assert (await store.get_any(db, created.id)).settlement == "open"
    finally:
        await runner.cleanup()
    mock_upstream.batches.process_seconds = 0.0
    assert (await ended(client, created.id)).request_counts.succeeded == 1


async def test_a_poll_that_saw_the_batch_submitting_does_not_delay_it_once_submitted(
    sdk, bgw: app.Gateway, db: asyncpg.Connection
) -> None:
    """The loop may claim a batch while its creation is still waiting for the upstream:
    that poll sees it ``submitting`` and looks again after the grace period, but the
    creation recording it as submitted meanwhile keeps its own next poll (it was once
    pushed back by the grace period, a quarter of an hour, and the batch looked stuck)."""
    customer = await make_customer(db)
    client = sdk(bgw, customer)
    created = await client.messages.batches.create(requests=requests_of(1))
    recorded = await store.get(bgw.state.db, customer.account_id, created.id)
    assert recorded is not None and recorded.status != "submitting"
    stale = dataclasses.replace(recorded, status="submitting")  # the claim's snapshot
    assert await poller_of(bgw).poll(stale) == "waiting"
    due_in = await db.fetchval(
        "SELECT extract(epoch FROM next_poll_at - now()) FROM message_batches WHERE id = $1",
        created.id,
    )
    assert due_in < 60, due_in
    assert (await ended(client, created.id)).request_counts.succeeded == 1


async def test_a_redirect_on_a_batch_call_is_a_502_and_not_followed(
    sdk,
    db: asyncpg.Connection,
    make_config,
    mock_upstream: MockUpstream,
    redirector: tuple[str, list[str]],
) -> None:
    """A cancel whose upstream answers a redirect: the gateway's 502, and the owner
    credential never goes to the host it names."""
    mock_upstream.batches.process_seconds = 0.1
    gateway = await own_gateway(db, make_config, "batch-owner", batch_poll_interval=0)
    url, asked = redirector
    # The same pool (no reset: the batch's owner credential stays), another upstream URL.
    redirected = await start_gateway(
        make_config(redis_prefix=f"batch-redirect-{secrets.token_hex(4)}:", upstream_url=url)
    )
    try:
        customer = await make_customer(db)
        created = await sdk(gateway, customer).messages.batches.create(requests=requests_of(1))
        with pytest.raises(anthropic.APIStatusError) as failed:
            await sdk(redirected, customer).messages.batches.cancel(created.id)
        cancels = [ex for ex in mock_upstream.exchanges if ex.path.endswith("/cancel")]
        await asyncio.sleep(0.3)
        assert await poller_of(gateway).poll_due() == 1  # settled: the books stay whole
    finally:
        await stop_gateway(redirected)
        await stop_gateway(gateway)
    assert failed.value.status_code == 502
    assert [path for path in asked if path.endswith("/cancel")]
    assert cancels == []
    assert not await ledger.audit(db)
