"""The server skeleton over real HTTP: request ids, error shapes, routing, shutdown."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import anthropic
import openai
import pytest
from aiohttp import web
from yarl import URL

from alicode_gw import app
from alicode_gw.requestbody import read_json
from alicode_gw.routes import Route, Router, build_router
from alicode_gw.state import RequestContext
from tests.support.customers import reset_pool
from tests.support.gateway import start_gateway, stop_gateway


def assert_anthropic_error(body: dict, status_type: str, request_id: str) -> None:
    assert body["type"] == "error"
    assert body["error"]["type"] == status_type
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["request_id"] == request_id


async def test_unknown_path_is_anthropic_404(gateway: app.Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/v1/nope") as resp:
            assert resp.status == 404
            request_id = resp.headers["request-id"]
            assert request_id.startswith("req_") and len(request_id) == 28
            assert resp.content_type == "application/json"
            assert_anthropic_error(await resp.json(), "not_found_error", request_id)


async def test_sdk_sees_typed_404_with_request_id(gateway: app.Gateway) -> None:
    client = anthropic.AsyncAnthropic(api_key="sk-ali-x", base_url=gateway.url, max_retries=0)
    async with client:
        with pytest.raises(anthropic.NotFoundError) as info:
            await client.get("/v1/definitely-not-here", cast_to=object)
    assert info.value.request_id and info.value.request_id.startswith("req_")
    assert info.value.body["error"]["type"] == "not_found_error"


async def test_wrong_method_is_405_with_allow(gateway: app.Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.delete(gateway.url + "/v1/health") as resp:
            assert resp.status == 405
            assert resp.headers["Allow"] == "GET"
            assert_anthropic_error(
                await resp.json(), "invalid_request_error", resp.headers["request-id"]
            )


async def test_wrong_method_on_the_openai_route_is_an_openai_405(gateway: app.Gateway) -> None:
    """The route's error shape applies to routing errors too: OpenAI's, with
    ``x-request-id`` (the SDK's ``request_id``)."""
    client = openai.AsyncOpenAI(api_key="sk-ali-x", base_url=gateway.url + "/v1", max_retries=0)
    async with client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.get("/chat/completions", cast_to=object)
    error = info.value
    assert error.status_code == 405
    assert error.response.headers["Allow"] == "POST"
    assert error.request_id and error.request_id == error.response.headers["request-id"]
    assert error.body == {
        "message": "Method GET is not allowed for /v1/chat/completions; use POST.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


async def test_health_reports_live_checks(gateway: app.Gateway, db) -> None:
    await reset_pool(db)  # health is "down" without an enabled upstream credential
    await gateway.state.keypool.refresh(reload=True)
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/v1/health") as resp:
            assert resp.status == 200
            assert resp.headers["request-id"].startswith("req_")
            body = await resp.json()
    assert body["status"] == "ok"
    assert body["database"]["ok"] and body["redis"]["ok"]
    assert body["database"]["latency_ms"] >= 0


async def test_request_ids_are_unique(gateway: app.Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        ids = set()
        for _ in range(20):
            async with http.get(gateway.url + "/v1/health") as resp:
                ids.add(resp.headers["request-id"])
    assert len(ids) == 20


async def test_doubled_v1_prefix_is_accepted(gateway: app.Gateway, db) -> None:
    await reset_pool(db)
    await gateway.state.keypool.refresh(reload=True)
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/v1/v1/health") as resp:
            assert resp.status == 200


# --- routes the tests add to exercise the request machinery itself ---------------


async def _echo_json(ctx: RequestContext) -> web.StreamResponse:
    _, value = await read_json(ctx.request, ctx.state.config.max_body_bytes)
    return web.json_response({"keys": sorted(value)}, headers=ctx.headers())


async def _boom(ctx: RequestContext) -> web.StreamResponse:
    raise RuntimeError("secret internal detail")


async def _boom_mid_stream(ctx: RequestContext) -> web.StreamResponse:
    response = web.StreamResponse(headers=ctx.headers())
    await response.prepare(ctx.request)
    await response.write(b"event: ping\ndata: {}\n\n")
    raise RuntimeError("secret internal detail")


async def _slow(ctx: RequestContext) -> web.StreamResponse:
    await asyncio.sleep(0.6)
    return web.Response(text="finished", headers=ctx.headers())


def _test_router() -> Router:
    return Router(
        [
            Route("echo", "/v1/test/echo", {"POST": _echo_json}),
            Route("boom", "/v1/test/boom", {"GET": _boom}),
            Route("boom-mid-stream", "/v1/test/boom-mid-stream", {"GET": _boom_mid_stream}),
            Route("slow", "/v1/test/slow", {"GET": _slow}),
            Route("item", "/v1/test/items/{item_id}", {"GET": _echo_param}),
        ]
    )


async def test_the_upstream_client_keeps_no_cookies(make_config) -> None:
    """A cookie set by the upstream's host (as a CDN in front of an API sets one) is not
    kept, so it never goes back on another customer's call."""
    session = app.upstream_session(make_config())
    try:
        session.cookie_jar.update_cookies(
            {"__cf_bm": "tracking"}, URL("https://api.anthropic.com/v1/messages")
        )
        assert len(session.cookie_jar) == 0
        assert not session.cookie_jar.filter_cookies(URL("https://api.anthropic.com/v1/messages"))
    finally:
        await session.close()


async def _echo_param(ctx: RequestContext) -> web.StreamResponse:
    return web.json_response(ctx.params, headers=ctx.headers())


@pytest.fixture
async def test_gateway(make_config):
    gw = await start_gateway(make_config(max_body_bytes=4096), _test_router())
    try:
        yield gw
    finally:
        await stop_gateway(gw)


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b"[1, 2]", b"\xff\xfe", b'"string"', b'{"a":' + b"[" * 3000],
)
async def test_bad_json_is_400(test_gateway: app.Gateway, body: bytes) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(test_gateway.url + "/v1/test/echo", data=body) as resp:
            assert resp.status == 400
            assert_anthropic_error(
                await resp.json(), "invalid_request_error", resp.headers["request-id"]
            )


async def test_good_json_passes(test_gateway: app.Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(test_gateway.url + "/v1/test/echo", json={"b": 1, "a": 2}) as resp:
            assert resp.status == 200
            assert await resp.json() == {"keys": ["a", "b"]}


async def test_body_over_limit_is_413_while_reading(test_gateway: app.Gateway) -> None:
    async def chunks():
        # No Content-Length: the cap must trip while streaming the body in.
        for _ in range(10):
            yield b"x" * 1024

    async with aiohttp.ClientSession() as http:
        async with http.post(test_gateway.url + "/v1/test/echo", data=chunks()) as resp:
            assert resp.status == 413
            assert_anthropic_error(
                await resp.json(), "request_too_large", resp.headers["request-id"]
            )
        big = json.dumps({"x": "y" * 5000})
        async with http.post(test_gateway.url + "/v1/test/echo", data=big) as resp:
            assert resp.status == 413


async def test_unhandled_exception_is_500_without_internals(test_gateway: app.Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(test_gateway.url + "/v1/test/boom") as resp:
            assert resp.status == 500
            body = await resp.json()
            assert_anthropic_error(body, "api_error", resp.headers["request-id"])
            assert "secret internal detail" not in json.dumps(body)


async def test_a_failure_after_the_answer_started_sends_no_second_answer(
    test_gateway: app.Gateway,
) -> None:
    host, port = test_gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /v1/test/boom-mid-stream HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    received = await asyncio.wait_for(reader.read(), 5)  # until the gateway closes it
    writer.close()
    assert received.startswith(b"HTTP/1.1 200 ") and b"event: ping" in received
    assert received.count(b"HTTP/1.1 ") == 1 and b"secret internal detail" not in received


async def test_path_parameters(test_gateway: app.Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(test_gateway.url + "/v1/test/items/abc-123") as resp:
            assert await resp.json() == {"item_id": "abc-123"}


async def test_graceful_shutdown_lets_in_flight_finish(make_config) -> None:
    gw = await start_gateway(make_config(), _test_router())
    url = gw.url
    async with aiohttp.ClientSession() as http:

        async def slow() -> tuple[int, str]:
            async with http.get(url + "/v1/test/slow") as resp:
                return resp.status, await resp.text()

        in_flight = asyncio.ensure_future(slow())
        await asyncio.sleep(0.2)
        assert gw.state.in_flight == 1
        stopping = asyncio.ensure_future(stop_gateway(gw))
        await asyncio.sleep(0.1)
        # no longer accepting new connections
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as other:
                await other.get(url + "/v1/health")
        assert await in_flight == (200, "finished")
        await stopping


def test_router_matches_and_rejects() -> None:
    router = build_router()
    assert router.resolve("GET", "/v1/health").route.name == "health"
    assert router.resolve("HEAD", "/v1/health").route.name == "health"
    assert router.resolve("GET", "/health").route.name == "health"
