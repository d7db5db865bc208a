"""GET /metrics: the counters move with real traffic (official SDK over loopback), the
endpoint is closed to non-loopback clients without the token, and the series of several
processes of one node are summed by whichever process answers the scrape."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import anthropic
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from alicode_gw import __version__, app
from alicode_gw.config import ConfigError, load
from alicode_gw.dev.mock_upstream import MockUpstream
from alicode_gw.observe.metrics import Metrics, clear_share_dir, share_dir
from alicode_gw.routes import build_router
from tests.support.customers import (
    MODEL,
    Customer,
    client_for,
    ledger_rows,
    make_customer,
    reset_pool,
)
from tests.support.gateway import UPSTREAM_KEYS, start_gateway, stop_gateway

TOKEN = "metrics-token-0123456789abcdef"
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Series:
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return series


async def scrape(url: str, **headers: str) -> Series:
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/metrics", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["content-type"].startswith("text/plain")
            return parse(await resp.text())


def value(series: Series, name: str, **labels: str) -> float:
    return series.get((name, frozenset(labels.items())), 0.0)


def ask(text: str = "hello") -> dict:
    return {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": text}]}


def test_metrics_path_is_matched_exactly() -> None:
    router = build_router()
    assert router.resolve("GET", "/metrics").route.name == "metrics"
    with pytest.raises(Exception, match="No such endpoint"):
        router.resolve("GET", "/v1/metrics")


async def test_counters_move_with_traffic(
    gw: app.Gateway, customer: Customer, db: asyncpg.Connection
) -> None:
    before = await scrape(gw.url)
    assert all(name.startswith("alicode_") for name, _ in before)
    async with client_for(gw, customer) as client:
        plain = await client.messages.with_raw_response.create(**ask())
        async with client.messages.stream(**ask("stream please")) as stream:
            async for _ in stream:
                pass
            streamed_id = stream.response.headers["request-id"]
        bad = anthropic.AsyncAnthropic(
            api_key="sk-ali-aaaaaaaaaaaa-" + "x" * 32, base_url=gw.url, max_retries=0
        )
        async with bad:
            with pytest.raises(anthropic.AuthenticationError):
                await bad.messages.create(**ask())
    rows = [*await ledger_rows(db, plain.request_id), *await ledger_rows(db, streamed_id)]
    assert len(rows) == 2
    after = await scrape(gw.url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"route": "messages", "model": MODEL, "status": "200"}
    assert delta("alicode_requests_total", **ok) == 2
    assert delta("alicode_requests_total", route="messages", model="none", status="401") == 1
    assert delta("alicode_auth_failures_total") == 1
    assert delta("alicode_request_duration_seconds_count", route="messages") == 3
    assert delta("alicode_time_to_first_byte_seconds_count", route="messages") == 2
    assert delta("alicode_tokens_total", model=MODEL, kind="input") == sum(
        r["input_tokens"] for r in rows
    )
    assert delta("alicode_tokens_total", model=MODEL, kind="output") == sum(
        r["output_tokens"] for r in rows
    )
    # Money: exactly what the ledger charged (nano-USD, integers).
    assert delta("alicode_charged_nanos_total", model=MODEL) == sum(r["cost_nanos"] for r in rows)
    attempts = sum(
        delta("alicode_upstream_attempts_total", credential=f"cred-{n}", outcome="ok")
        for n in range(len(UPSTREAM_KEYS))
    )
    assert attempts == 2
    holds = [delta("alicode_holds_total", path=path) for path in ("lease", "database")]
    assert sum(holds) == 2
    assert value(after, "alicode_streams_in_flight") == 0
    assert value(after, "alicode_upstream_credentials", state="healthy") == 3
    assert value(after, "alicode_upstream_credentials", state="cooling") == 0
    assert value(after, "alicode_billing_journal_backlog") == 0
    assert value(after, "alicode_build_info", version=__version__) == 1
    # The scrape itself is counted too.
    assert delta("alicode_requests_total", route="metrics", model="none", status="200") >= 1


async def test_stream_in_flight_gauge(gw: app.Gateway, customer: Customer) -> None:
    async with client_for(gw, customer) as client:
        async with client.messages.stream(**ask("[[mock: chunk_delay_ms=100 words=20]]")) as s:
            async for event in s:
                if event.type == "content_block_delta":
                    break
            during = await scrape(gw.url)
            async for _ in s:
                pass
    assert value(during, "alicode_streams_in_flight") == 1
    assert value(await scrape(gw.url), "alicode_streams_in_flight") == 0


async def test_upstream_outcomes_and_limit_rejections(
    gw_round_robin: app.Gateway, db: asyncpg.Connection, mock_upstream: MockUpstream
) -> None:
    limited = await make_customer(db, rpm=2)
    # cred-0 is tried first (smooth weighted round-robin picks the heaviest).
    await db.execute("UPDATE upstream_credentials SET weight = 100 WHERE name = 'cred-0'")
    await gw_round_robin.state.keypool.refresh(reload=True)
    before = await scrape(gw_round_robin.url)
    async with client_for(gw_round_robin, limited) as client:
        # The first credential tried answers 500; the retry on another one succeeds.
        await client.messages.create(**ask(f"[[mock: status=500 only_key={UPSTREAM_KEYS[0]}]]"))
        await client.messages.create(**ask())
        with pytest.raises(anthropic.RateLimitError):
            await client.messages.create(**ask())
    after = await scrape(gw_round_robin.url)
    assert (
        value(after, "alicode_limit_rejections_total", limit="key_rpm")
        - value(before, "alicode_limit_rejections_total", limit="key_rpm")
        == 1
    )
    errors = value(
        after, "alicode_upstream_attempts_total", credential="cred-0", outcome="server_error"
    ) - value(
        before, "alicode_upstream_attempts_total", credential="cred-0", outcome="server_error"
    )
    assert [ex.api_key for ex in mock_upstream.exchanges][:2] == list(UPSTREAM_KEYS[:2])
    assert errors == 1
    assert value(after, "alicode_upstream_credentials", state="cooling") == 1
    assert value(after, "alicode_upstream_credentials", state="healthy") == 2
    statuses = {
        dict(labels)["status"]
        for (name, labels), count in after.items()
        if name == "alicode_requests_total" and dict(labels)["route"] == "messages"
    }
    assert {"200", "429"} <= statuses


async def test_access_control(make_config, db: asyncpg.Connection) -> None:
    await reset_pool(db)
    closed = await start_gateway(make_config(metrics_allow=(), metrics_token=TOKEN))
    trusting = await start_gateway(
        make_config(
            trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),),
            metrics_allow=(ipaddress.ip_network("198.51.100.0/24"),),
        )
    )
    default = await start_gateway(make_config())
    try:
        async with aiohttp.ClientSession() as http:

            async def status(gateway: app.Gateway, **headers: str) -> int:
                async with http.get(gateway.url + "/metrics", headers=headers) as resp:
                    if resp.status != 200:
                        body = await resp.json()
                        assert body["error"]["type"] == "permission_error"
                    return resp.status

            # Loopback is allowed by default; a proxied request from loopback is not
            # (nginx on 127.0.0.1 without ALICODE_TRUSTED_PROXIES).
            assert await status(default) == 200
            assert await status(default, **{"X-Forwarded-For": "203.0.113.5"}) == 403
            assert await status(default, **{"X-Real-IP": "127.0.0.1"}) == 403
            # Allow list empty: only the token opens it.
            assert await status(closed) == 403
            assert await status(closed, Authorization="Bearer wrong-token-0123456789") == 403
            assert await status(closed, Authorization=f"Bearer {TOKEN}") == 200
            # Through a trusted proxy the real client IP is what is checked.
            assert await status(trusting) == 403
            assert await status(trusting, **{"X-Forwarded-For": "198.51.100.7"}) == 200
            assert await status(trusting, **{"X-Forwarded-For": "203.0.113.5"}) == 403
    finally:
        for gateway in (closed, trusting, default):
            await stop_gateway(gateway)


async def test_two_processes_of_one_node_are_summed(
    make_config, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """Two gateways sharing a data dir (as the workers of one node do): a scrape of
    either reports the traffic of both."""
    await reset_pool(db)
    config = make_config(data_dir=tmp_path)
    first, second = await start_gateway(config), await start_gateway(config)
    try:
        customer_ = await make_customer(db)
        base = value(
            await scrape(first.url),
            "alicode_requests_total",
            route="messages",
            model=MODEL,
            status="200",
        )
        async with client_for(first, customer_) as client:
            await client.messages.create(**ask())
        async with client_for(second, customer_) as client:
            await client.messages.create(**ask())
            await client.messages.create(**ask())
        first.state.metrics.publish()
        second.state.metrics.publish()
        for gateway in (first, second):
            seen = await scrape(gateway.url)
            total = value(
                seen, "alicode_requests_total", route="messages", model=MODEL, status="200"
            )
            assert total - base == 3
    finally:
        await stop_gateway(first)
        await stop_gateway(second)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_exited_process_keeps_counters_not_gauges(tmp_path: Path) -> None:
    live, gone = Metrics(tmp_path), Metrics(tmp_path)
    for _ in range(5):
        gone.request_done("messages", MODEL, 200, 0.01, None)
    gone.streams.inc(3)
    gone.publish()
    # Rewrite the file as if its process had exited.
    (path,) = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    data["pid"] = _dead_pid()
    path.write_text(json.dumps(data))
    for _ in range(2):
        live.request_done("messages", MODEL, 200, 0.01, None)
    live.streams.inc()
    series = parse(live.exposition().decode())
    assert value(series, "alicode_requests_total", route="messages", model=MODEL, status="200") == 7
    assert value(series, "alicode_request_duration_seconds_count", route="messages") == 7
    assert value(series, "alicode_streams_in_flight") == 1
    assert not any(name.endswith("_created") for name, _ in series)
    # A new run of `serve` starts from zero.
    live.publish()
    clear_share_dir(tmp_path)
    assert not list(tmp_path.iterdir())


def test_stale_gauges_of_live_process_are_ignored(tmp_path: Path) -> None:
    live, stuck = Metrics(tmp_path), Metrics(tmp_path)
    stuck.streams.inc(4)
    stuck.publish()
    (path,) = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    data["written"] = time.time() - 60
    path.write_text(json.dumps(data))
    assert value(parse(live.exposition().decode()), "alicode_streams_in_flight") == 0
    assert data["pid"] == os.getpid()


def test_journal_backlog_unknown_is_nan(tmp_path: Path) -> None:
    metrics = Metrics(None)
    metrics.journal_backlog.set(math.nan)
    assert math.isnan(
        value(parse(metrics.exposition().decode()), "alicode_billing_journal_backlog")
    )


def test_share_dir_is_under_data_dir(config) -> None:
    assert share_dir(config) == config.data_dir / "metrics"


async def test_publish_loop_writes_periodically(tmp_path: Path) -> None:
    metrics = Metrics(tmp_path / "m")
    task = asyncio.create_task(metrics.publish_loop(interval=0.05))
    try:
        metrics.request_done("health", "none", 200, 0.01, None)
        await asyncio.sleep(0.2)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    (path,) = (tmp_path / "m").glob("*.json")
    families = {f[0]: f for f in json.loads(path.read_text())["families"]}
    (sample,) = families["alicode_requests"][3]
    assert sample[2] == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    """One request on a fresh connection (so the kernel picks a worker each time)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.mark.slow
def test_workers_of_one_port_report_the_whole_node(
    database_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """`serve --workers 2` (SO_REUSEPORT): whichever worker answers a scrape reports
    the requests of both."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALICODE_")}
    env.update(
        ALICODE_DATABASE_URL=database_url,
        ALICODE_REDIS_URL=redis_url,
        ALICODE_REDIS_PREFIX=redis_prefix,
        ALICODE_LISTEN=f"127.0.0.1:{port}",
        ALICODE_DATA_DIR=str(tmp_path),
        ALICODE_LOG_LEVEL="WARNING",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "alicode_gw", "serve", "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "serve exited"
            try:
                if _get(url + "/metrics")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the workers did not come up"
            time.sleep(0.1)
        while len(list((tmp_path / "metrics").glob("*.json"))) < 2:
            assert time.monotonic() < deadline, "the second worker did not come up"
            time.sleep(0.1)
        time.sleep(1.0)  # the second worker listens right after it published
        for _ in range(40):
            assert _get(url + "/v1/health")[0] in (200, 503)
        time.sleep(1.5)  # one publish interval and a half
        for _ in range(6):
            status, text = _get(url + "/metrics")
            assert status == 200
            health_requests = sum(
                count
                for (name, labels), count in parse(text).items()
                if name == "alicode_requests_total" and dict(labels)["route"] == "health"
            )
            assert health_requests == 40
        # Both workers served some of them (each publishes its own file).
        per_worker = []
        for path in (tmp_path / "metrics").glob("*.json"):
            families = {f[0]: f for f in json.loads(path.read_text())["families"]}
            per_worker.append(
                sum(s[2] for s in families["alicode_requests"][3] if s[1]["route"] == "health")
            )
        assert len(per_worker) == 2 and all(n > 0 for n in per_worker), per_worker
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_metrics_settings() -> None:
    defaults = load({})
    assert [str(net) for net in defaults.metrics_allow] == ["127.0.0.0/8", "::1/128"]
    assert defaults.metrics_token is None
    config = load(
        {"ALICODE_METRICS_ALLOW": "10.1.0.0/16, 192.0.2.7", "ALICODE_METRICS_TOKEN": TOKEN}
    )
    assert [str(net) for net in config.metrics_allow] == ["10.1.0.0/16", "192.0.2.7/32"]
    assert config.metrics_token == TOKEN and TOKEN not in repr(config)
    for variable, bad in (("ALICODE_METRICS_ALLOW", "nope"), ("ALICODE_METRICS_TOKEN", "short")):
        with pytest.raises(ConfigError) as info:
            load({variable: bad})
        assert info.value.variable == variable
        if variable == "ALICODE_METRICS_TOKEN":
            assert bad not in str(info.value)  # a secret is never echoed


def test_request_series_histogram_buckets_and_sums() -> None:
    """The request path's plain numbers expose as Prometheus histograms and counters:
    a value equal to a bound falls in that bound's bucket, one past every bound only
    in +Inf; buckets are cumulative; the sum is the values'."""
    metrics = Metrics(None)
    for seconds in (0.005, 0.0051, 700.0):
        metrics.request_done("messages", MODEL, 200, seconds, 0.01)
    metrics.request_done("messages", MODEL, 429, 0.001, None)
    series = parse(metrics.exposition().decode())
    bucket = "alicode_request_duration_seconds_bucket"
    assert value(series, bucket, route="messages", le="0.005") == 2
    assert value(series, bucket, route="messages", le="0.01") == 3
    assert value(series, bucket, route="messages", le="600.0") == 3
    assert value(series, bucket, route="messages", le="+Inf") == 4
    assert value(series, "alicode_request_duration_seconds_count", route="messages") == 4
    assert math.isclose(
        value(series, "alicode_request_duration_seconds_sum", route="messages"), 700.0111
    )
    assert value(series, "alicode_time_to_first_byte_seconds_count", route="messages") == 3
    assert value(series, "alicode_requests_total", route="messages", model=MODEL, status="429") == 1
    metrics.usage(MODEL, input_tokens=3, output_tokens=0, cache_write_tokens=0,
                  cache_read_tokens=2, cost_nanos=7)  # fmt: skip
    metrics.routed("main", True, 2, 0, 3)
    metrics.upstream_attempt("main", "ok")
    metrics.hold("lease")
    metrics.response_cache("HIT")
    series = parse(metrics.exposition().decode())
    assert value(series, "alicode_tokens_total", model=MODEL, kind="input") == 3
    assert value(series, "alicode_tokens_total", model=MODEL, kind="cache_read") == 2
    assert value(series, "alicode_charged_nanos_total", model=MODEL) == 7
    assert value(series, "alicode_upstream_cache_tokens_total", credential="main", kind="read") == 2
    assert value(series, "alicode_affinity_requests_total", keyed="yes") == 1
    assert value(series, "alicode_upstream_attempts_total", credential="main", outcome="ok") == 1
    assert value(series, "alicode_holds_total", path="lease") == 1
    assert value(series, "alicode_response_cache_total", outcome="hit") == 1
