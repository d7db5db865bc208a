"""The nginx site (``nginx/alicode_gw.conf``) in front of a real gateway, with a real
nginx (Debian package ``nginx``; ``.ci/run`` installs it).

The site is used as written except for TLS: the redirect server is dropped, ``listen
443 ssl http2`` becomes a plain-HTTP loopback port, the ``ssl_*`` lines go, and the
upstream points at the test gateway. The untouched file (TLS included, with a
throwaway self-signed certificate) is checked with ``nginx -t``.

Without nginx the tests skip, except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import asyncpg
import httpx2
import pytest

from alicode_gw import app
from alicode_gw.money import ledger
from tests.support.customers import MODEL, Customer, ledger_rows, reset_pool
from tests.support.gateway import start_gateway, stop_gateway
from tests.support.logs import AccessLines

pytestmark = pytest.mark.slow

SITE = Path(__file__).resolve().parents[2] / "nginx" / "alicode_gw.conf"
CLIENT_ADDRESS = "127.0.0.2"  # another loopback address: not the proxy's own


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed (CI must install the Debian package nginx)")
        pytest.skip("nginx is not installed (apt-get install nginx); CI installs it")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _top_level_blocks(text: str) -> list[str]:
    """The site's top-level statements and blocks, each as its text."""
    blocks: list[str] = []
    current: list[str] = []
    depth = 0
    for line in text.splitlines():
        code = line.split("#", 1)[0]
        if not code.strip() and depth == 0:
            continue
        current.append(line)
        depth += code.count("{") - code.count("}")
        if depth == 0 and (code.rstrip().endswith((";", "}"))):
            blocks.append("\n".join(current))
            current = []
    assert depth == 0 and not current, "unbalanced braces in the nginx site"
    return blocks


def plain_http_site(text: str, listen_port: int, gateway_port: int) -> str:
    """The site with TLS swapped for plain HTTP on a loopback port."""
    kept = [b for b in _top_level_blocks(text) if not re.search(r"^\s*listen 80;", b, re.M)]
    site = "\n".join(kept)
    site, listens = re.subn(
        r"^\s*listen 443 ssl[^;]*;", f"    listen 127.0.0.1:{listen_port};", site, flags=re.M
    )
    assert listens == 1
    site = re.sub(r"^\s*listen \[::\]:443[^;]*;\n", "", site, flags=re.M)
    site = re.sub(r"^\s*ssl_[a-z_]+ [^;]*;\n", "", site, flags=re.M)
    site, upstreams = re.subn(
        r"server 127\.0\.0\.1:8787\b", f"server 127.0.0.1:{gateway_port}", site
    )
    assert upstreams == 1
    return site


def main_conf(root: Path, site: Path) -> str:
    temp = "\n".join(
        f"    {kind}_temp_path {root / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
daemon off;
master_process off;
pid {root / "nginx.pid"};
error_log {root / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temp}
    include {site};
}}
"""


def test_site_has_the_required_directives() -> None:
    text = SITE.read_text()
    for directive in (
        "proxy_buffering off;",
        "proxy_request_buffering off;",
        "proxy_read_timeout 3600s;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "keepalive 256;",
        "client_max_body_size 50m;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "ssl_protocols TLSv1.3;",
        "limit_req_zone  $binary_remote_addr zone=alicode_req:20m rate=1000r/m;",
        "limit_conn alicode_conn 50;",
    ):
        assert directive in text, directive
    v1 = re.search(r"location /v1/ \{(.*?)\n    \}", text, re.S)
    assert v1 is not None
    assert "proxy_buffering off;" in v1.group(1)
    assert "proxy_request_buffering off;" in v1.group(1)


def test_full_site_with_tls_passes_nginx_t(tmp_path: Path) -> None:
    nginx = nginx_binary()
    openssl = shutil.which("openssl")
    if openssl is None:
        if os.environ.get("CI"):
            pytest.fail("openssl is not installed (CI must install the Debian package openssl)")
        pytest.skip("openssl is not installed: no certificate for the TLS check")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-subj", "/CN=api.example.com", "-days", "1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    site = tmp_path / "site.conf"
    text = SITE.read_text()
    text = text.replace("/etc/letsencrypt/live/api.example.com/fullchain.pem", str(cert))
    text = text.replace("/etc/letsencrypt/live/api.example.com/privkey.pem", str(key))
    site.write_text(text)
    conf = tmp_path / "nginx.conf"
    conf.write_text(main_conf(tmp_path, site))
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "[emerg]" not in result.stderr


# ------------------------------------------------------------ nginx in front of a gateway


def start_nginx(nginx: str, root: Path, conf: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [nginx, "-p", str(root), "-e", str(root / "error.log"), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_nginx(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
async def proxied(db: asyncpg.Connection, make_config, tmp_path: Path) -> AsyncIterator[str]:
    """A gateway trusting 127.0.0.1, and nginx with the site in front of it; yields the
    nginx base URL."""
    nginx = nginx_binary()
    await reset_pool(db)
    gateway: app.Gateway = await start_gateway(
        make_config(
            redis_prefix=f"nginx-{secrets.token_hex(4)}:",
            trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),),
        )
    )
    port = _free_port()
    site = tmp_path / "site.conf"
    site.write_text(plain_http_site(SITE.read_text(), port, gateway.port))
    conf = tmp_path / "nginx.conf"
    conf.write_text(main_conf(tmp_path, site))
    proc = start_nginx(nginx, tmp_path, conf)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(tmp_path / 'error.log').read_text()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                await writer.wait_closed()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_nginx(proc)
        await stop_gateway(gateway)
    problems = await ledger.audit(db)
    assert not problems, [p.as_dict() for p in problems]


def client_from(base_url: str, customer: Customer) -> anthropic.AsyncAnthropic:
    transport = httpx2.AsyncHTTPTransport(local_address=CLIENT_ADDRESS)
    return anthropic.AsyncAnthropic(
        api_key=customer.key,
        base_url=base_url,
        max_retries=0,
        http_client=anthropic.DefaultAsyncHttpxClient(transport=transport),
    )


async def test_stream_arrives_incrementally_through_nginx(
    proxied: str, customer: Customer, db: asyncpg.Connection, access_lines: AccessLines
) -> None:
    words, delay = 30, 0.1
    arrivals: list[float] = []
    async with client_from(proxied, customer) as client:
        started = time.monotonic()
        async with client.messages.stream(
            model=MODEL,
            max_tokens=300,
            messages=[{"role": "user", "content": f"[[mock: words={words} chunk_delay_ms=100]]"}],
        ) as stream:
            async for event in stream:
                if event.type == "content_block_delta":
                    arrivals.append(time.monotonic() - started)
            message = await stream.get_final_message()
            request_id = stream.response.headers["request-id"]
    ended = time.monotonic() - started
    assert message.stop_reason == "end_turn"
    assert len(message.content[0].text.split()) == words
    # Unbuffered: the deltas arrive spread over the stream, not together at its end.
    assert len(arrivals) >= words // 2
    assert arrivals[-1] - arrivals[0] >= 0.6 * (len(arrivals) - 1) * delay
    assert arrivals[0] < ended / 3
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert sum(gap >= delay / 2 for gap in gaps) >= len(gaps) // 2

    # The client's address crossed the proxy: in the ledger row and the access line.
    rows = await ledger_rows(db, request_id)
    assert [str(row["client_ip"]) for row in rows] == [CLIENT_ADDRESS]
    for _ in range(100):
        line = next((x for x in access_lines.lines if x["request_id"] == request_id), None)
        if line is not None:
            break
        await asyncio.sleep(0.02)
    assert line is not None
    assert line["client_ip"] == CLIENT_ADDRESS
    assert line["status"] == 200


async def test_spoofed_forwarding_headers_are_replaced_by_nginx(
    proxied: str, customer: Customer, access_lines: AccessLines
) -> None:
    async with client_from(proxied, customer) as client:
        response = await client.with_options(
            default_headers={"X-Forwarded-For": "198.51.100.7", "X-Real-IP": "198.51.100.7"}
        ).get("/v1/key-status", cast_to=httpx2.Response)
    request_id = response.headers["request-id"]
    line = next(x for x in access_lines.lines if x["request_id"] == request_id)
    assert line["client_ip"] == CLIENT_ADDRESS
