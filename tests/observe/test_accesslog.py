"""The access log: one JSON line per request with the fields operators need — and a
unique marker sent inside prompts and tool results (both APIs, JSON and streams, error
paths too) appears in no log line at any level, no database row, no Redis key or value,
no file under the data dir and no /metrics output."""

from __future__ import annotations

import io
import json
import logging
import secrets
from pathlib import Path

import aiohttp
import anthropic
import asyncpg
import openai
import pytest

from alicode_gw import app
from alicode_gw.dev.mock_upstream import MockUpstream
from alicode_gw.observe import accesslog
from tests.support.customers import (
    MODEL,
    Customer,
    client_for,
    ledger_rows,
    upstream_exchanges,
)
from tests.support.gateway import UPSTREAM_KEYS
from tests.support.logs import Capture

TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather of a city.",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]


def access_lines(capture: Capture) -> list[dict]:
    prefix = f"{accesslog.LOGGER_NAME} INFO "
    return [json.loads(line[len(prefix) :]) for line in capture.lines if line.startswith(prefix)]


async def test_one_json_line_per_request(
    gw: app.Gateway,
    customer: Customer,
    db: asyncpg.Connection,
    captured: Capture,
    mock_upstream: MockUpstream,
) -> None:
    async with client_for(gw, customer) as client:
        raw = await client.messages.with_raw_response.create(
            model=MODEL, max_tokens=32, messages=[{"role": "user", "content": "hi"}]
        )
    async with aiohttp.ClientSession() as http:
        async with http.get(gw.url + "/v1/nowhere") as resp:
            missing_id = resp.headers["request-id"]
    (row,) = await ledger_rows(db, raw.request_id)
    lines = {line["request_id"]: line for line in access_lines(captured)}
    line = lines[raw.request_id]
    assert line["key_id"] == customer.public_id and line["account_id"] == customer.account_id
    assert line["client_ip"] == "127.0.0.1"
    assert (line["method"], line["route"], line["model"], line["status"]) == (
        "POST",
        "messages",
        MODEL,
        200,
    )
    assert line["input_tokens"] == row["input_tokens"]
    assert line["output_tokens"] == row["output_tokens"]
    assert line["cost_usd"] == raw.headers["x-alicode-cost-usd"]
    assert line["duration_ms"] >= line["ttfb_ms"] > 0
    assert line["upstream"] in {f"cred-{n}" for n in range(3)} and line["attempts"] == 1
    assert line["upstream_request_id"] == upstream_exchanges(mock_upstream)[-1].request_id
    assert line["time"].endswith("Z")
    other = lines[missing_id]
    assert (other["route"], other["status"], other["key_id"], other["upstream"]) == (
        "unknown",
        404,
        None,
        None,
    )
    assert other["client_ip"] == "127.0.0.1" and other["ttfb_ms"] is None


def test_configure_writes_bare_json_lines() -> None:
    logger = logging.getLogger(accesslog.LOGGER_NAME)
    saved = (list(logger.handlers), logger.propagate, logger.level)
    stream = io.StringIO()
    try:
        accesslog.configure(stream)
        logger.info(json.dumps({"request_id": "req_x"}))
        assert stream.getvalue() == ""  # buffered: one write per flush, not per line
        logger.info(json.dumps({"request_id": "req_y"}))
        accesslog.flush()
    finally:
        logger.handlers, logger.propagate = saved[0], saved[1]
        logger.setLevel(saved[2])
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines == [{"request_id": "req_x"}, {"request_id": "req_y"}]


async def test_configured_lines_skip_the_log_record(gw: app.Gateway, customer: Customer) -> None:
    """As `serve` configures it, a request's line goes straight to the line buffer."""
    logger = logging.getLogger(accesslog.LOGGER_NAME)
    saved = (list(logger.handlers), logger.propagate, logger.level)
    stream = io.StringIO()
    try:
        accesslog.configure(stream)
        async with client_for(gw, customer) as client:
            raw = await client.messages.with_raw_response.create(
                model=MODEL, max_tokens=32, messages=[{"role": "user", "content": "hi"}]
            )
        accesslog.flush()
    finally:
        logger.handlers, logger.propagate = saved[0], saved[1]
        logger.setLevel(saved[2])
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    (line,) = [line for line in lines if line["request_id"] == raw.request_id]
    assert (line["route"], line["status"], line["key_id"]) == ("messages", 200, customer.public_id)


def _anthropic_conversation(marker: str) -> dict:
    return {
        "model": MODEL,
        "max_tokens": 64,
        "system": f"system prompt {marker}",
        "tools": TOOLS,
        "metadata": {"user_id": f"user-{marker}"},
        "messages": [
            {"role": "user", "content": f"What is the weather? {marker}"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_01marker",
                        "name": "get_weather",
                        "input": {"city": f"Paris {marker}"},
                    }
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01marker",
                        "content": f"Sunny, 21 C. {marker}",
                    }
                ],
            },
        ],
    }


def _openai_conversation(marker: str) -> list[dict]:
    return [
        {"role": "system", "content": f"system prompt {marker}"},
        {"role": "user", "content": f"What is the weather? {marker}"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_marker",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": json.dumps({"city": f"Paris {marker}"}),
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_marker", "content": f"Sunny, 21 C. {marker}"},
    ]


async def _dump_database(db: asyncpg.Connection) -> str:
    tables = await db.fetch(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_type = 'BASE TABLE' "
        "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
    )
    assert len(tables) >= 5
    parts = []
    for table in tables:
        ident = f'"{table["table_schema"]}"."{table["table_name"]}"'
        rows = await db.fetch(f"SELECT t::text AS row FROM {ident} t")
        parts += [f"{ident} {row['row']}" for row in rows]
    return "\n".join(parts)


async def _dump_redis(redis: object) -> str:
    parts = []
    async for key in redis.scan_iter(count=1000):  # type: ignore[attr-defined]
        kind = (await redis.type(key)).decode()  # type: ignore[attr-defined]
        if kind == "string":
            value = await redis.get(key)  # type: ignore[attr-defined]
        elif kind == "hash":
            value = await redis.hgetall(key)  # type: ignore[attr-defined]
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)  # type: ignore[attr-defined]
        elif kind == "set":
            value = await redis.smembers(key)  # type: ignore[attr-defined]
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)  # type: ignore[attr-defined]
        elif kind == "stream":
            value = await redis.xrange(key)  # type: ignore[attr-defined]
        else:
            value = kind
        parts.append(f"{key!r} {value!r}")
    return "\n".join(parts)


def _dump_files(root: Path) -> str:
    return "\n".join(
        path.read_bytes().decode("utf-8", "replace") for path in root.rglob("*") if path.is_file()
    )


async def test_marker_is_never_logged_stored_or_exported(
    gw: app.Gateway,
    customer: Customer,
    db: asyncpg.Connection,
    redis: object,
    mock_upstream: MockUpstream,
    captured: Capture,
) -> None:
    marker = f"MARKER{secrets.token_hex(12)}"
    conversation = _anthropic_conversation(marker)
    ids: list[str] = []
    async with client_for(gw, customer) as client:
        raw = await client.messages.with_raw_response.create(**conversation)
        ids.append(raw.request_id)
        async with client.messages.stream(**conversation) as stream:
            async for _ in stream:
                pass
            ids.append(stream.response.headers["request-id"])
        # Error paths: an unknown model (its name is logged as sent, by design: the
        # conversation is not), a bad field, an upstream refusal, a failing upstream.
        with pytest.raises(anthropic.BadRequestError):
            await client.messages.create(**{**conversation, "model": "claude-foo-1"})
        with pytest.raises(anthropic.BadRequestError):
            await client.messages.create(**conversation, extra_body={"max_tokens": marker})
        refused = {
            **conversation,
            "messages": [{"role": "user", "content": f"[[mock: status=400]] {marker}"}],
        }
        with pytest.raises(anthropic.BadRequestError):
            await client.messages.create(**refused)
        await client.messages.count_tokens(
            model=MODEL, messages=conversation["messages"], tools=TOOLS
        )
    async with openai.AsyncOpenAI(
        api_key=customer.key, base_url=gw.url + "/v1", max_retries=0
    ) as oai:
        tools = [
            {"type": "function", "function": {"name": t["name"], "parameters": t["input_schema"]}}
            for t in TOOLS
        ]
        completion = await oai.chat.completions.with_raw_response.create(
            model=MODEL, messages=_openai_conversation(marker), tools=tools, max_tokens=64
        )
        ids.append(completion.headers["request-id"])
        stream = await oai.chat.completions.create(
            model=MODEL,
            messages=_openai_conversation(marker),
            tools=tools,
            max_tokens=64,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for _ in stream:
            pass
        with pytest.raises(openai.BadRequestError):
            await oai.chat.completions.create(
                model="gpt-foo-1", messages=_openai_conversation(marker)
            )
    async with client_for(gw, customer) as client:
        # Last: every credential answers 500 (they all cool down afterwards).
        failing = {
            **conversation,
            "messages": [{"role": "user", "content": f"[[mock: status=500]] {marker}"}],
        }
        with pytest.raises(anthropic.InternalServerError):
            await client.messages.create(**failing)
    # The marker did go through the gateway to the upstream (the test can fail) ...
    sent = [ex.body for ex in upstream_exchanges(mock_upstream)]
    assert sum(marker.encode() in body for body in sent) >= 6
    tool_results = [b for b in sent if b"tool_result" in b and marker.encode() in b]
    assert len(tool_results) >= 4
    # ... the requests were billed (so rows exist that could have held it) ...
    for request_id in ids[:3]:
        assert await ledger_rows(db, request_id)
    async with aiohttp.ClientSession() as http:
        async with http.get(gw.url + "/metrics") as resp:
            metrics_text = await resp.text()
    assert "alicode_requests_total" in metrics_text and "alicode_tokens_total" in metrics_text

    # ... and it is nowhere: logs (every logger, DEBUG), the database, Redis, files, metrics.
    lines = access_lines(captured)
    assert {line["request_id"] for line in lines} >= set(ids)
    assert len(captured.lines) >= 10
    log_text = "\n".join(captured.lines)
    database = await _dump_database(db)
    assert all(request_id in database for request_id in ids[:3])
    redis_text = await _dump_redis(redis)
    assert gw.state.config.redis_prefix in redis_text
    files = _dump_files(gw.state.config.data_dir)
    for where, text in (
        ("log", log_text),
        ("database", database),
        ("redis", redis_text),
        ("data dir", files),
        ("metrics", metrics_text),
    ):
        assert marker not in text, f"the marker leaked into the {where}"
    # Nor any secret: the customer's key, or an upstream credential.
    for secret in (customer.key, *UPSTREAM_KEYS):
        assert secret not in log_text and secret not in metrics_text


async def test_refusals_name_their_path_and_the_model_as_sent(
    gw: app.Gateway, customer: Customer, captured: Capture
) -> None:
    """A probe of ``/``, a path no route has, a model the gateway does not serve, a
    bad field: each access line says which path and which model."""
    async with aiohttp.ClientSession() as http:
        async with http.head(gw.url + "/") as resp:
            head_id, head_status = resp.headers["request-id"], resp.status
        async with http.get(gw.url + "/") as resp:
            root_id, root_status, root = resp.headers["request-id"], resp.status, await resp.json()
        async with http.get(gw.url + "/v1/nowhere?token=secret-value") as resp:
            missing_id = resp.headers["request-id"]
    async with client_for(gw, customer) as client:
        with pytest.raises(anthropic.BadRequestError) as unknown:
            await client.messages.create(
                model="claude-foo-1", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
            )
        with pytest.raises(anthropic.BadRequestError) as bad_field:
            await client.messages.create(
                model="claude-haiku-4-5-20251001",
                max_tokens=8,
                messages=[],
            )
    async with openai.AsyncOpenAI(
        api_key=customer.key, base_url=gw.url + "/v1", max_retries=0
    ) as oa:
        with pytest.raises(openai.BadRequestError) as untranslatable:
            await oa.chat.completions.create(
                model="claude-sonnet-5", n=2, messages=[{"role": "user", "content": "hi"}]
            )
    lines = {line["request_id"]: line for line in access_lines(captured)}
    line = lines[untranslatable.value.response.headers["request-id"]]
    assert (line["path"], line["model"]) == ("/v1/chat/completions", "claude-sonnet-5")
    assert (head_status, root_status, root) == (200, 200, {"service": "alicode_gw", "status": "ok"})
    assert (lines[head_id]["method"], lines[head_id]["path"], lines[head_id]["route"]) == (
        "HEAD",
        "/",
        "root",
    )
    assert lines[root_id]["path"] == "/"
    assert (lines[missing_id]["path"], lines[missing_id]["status"]) == ("/v1/nowhere", 404)
    assert "secret-value" not in json.dumps(lines[missing_id])
    for refused, model in ((unknown, "claude-foo-1"), (bad_field, "claude-haiku-4-5-20251001")):
        line = lines[refused.value.request_id]
        assert (line["path"], line["model"], line["status"]) == ("/v1/messages", model, 400)


async def test_a_model_name_orjson_refuses_still_gets_its_line(
    gw: app.Gateway, customer: Customer, captured: Capture
) -> None:
    """A model sent with a lone surrogate (a JSON escape the client may send) and one
    with a non-ASCII letter: both refused, both logged as one valid JSON line each."""
    ids = []
    async with aiohttp.ClientSession() as http:
        for model in ("claude-\\ud800x", "claude-\\u00e9"):
            rest = '"max_tokens":8,"messages":[{"role":"user","content":"hi"}]'
            body = f'{{"model":"{model}",{rest}}}'
            headers = {"x-api-key": customer.key, "anthropic-version": "2023-06-01"}
            async with http.post(gw.url + "/v1/messages", data=body, headers=headers) as resp:
                assert resp.status == 400
                ids.append(resp.headers["request-id"])
    lines = {line["request_id"]: line for line in access_lines(captured)}
    assert [lines[i]["model"] for i in ids] == ["claude-\ud800x", "claude-é"]
