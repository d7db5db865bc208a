"""The explicit state objects: one :class:`State` per process, one :class:`RequestContext`
per request. Nothing here is module-level; :mod:`alicode_gw.app` builds them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from alicode_gw.clientip import client_ip
from alicode_gw.config import Config
from alicode_gw.errors import Flavor
from alicode_gw.tasks import TaskTracker

if TYPE_CHECKING:
    from alicode_gw.identity.auth import ApiKey, Authenticator
    from alicode_gw.limits.limiter import Limiter
    from alicode_gw.money.billing import Billing
    from alicode_gw.money.catalog import ModelCatalog
    from alicode_gw.money.nodes import Node
    from alicode_gw.observe.health import HealthMonitor
    from alicode_gw.observe.metrics import Metrics
    from alicode_gw.tokens import TokenCounter
    from alicode_gw.upstream.models import UpstreamModels
    from alicode_gw.upstream.pool import KeyPool


@dataclass(slots=True)
class State:
    """Everything a request handler may use, built once by ``app.build_state``."""

    config: Config
    db: asyncpg.Pool
    redis: Redis
    http: aiohttp.ClientSession
    tasks: TaskTracker
    keypool: KeyPool
    catalog: ModelCatalog
    billing: Billing
    auth: Authenticator
    limiter: Limiter
    tokens: TokenCounter
    metrics: Metrics
    health: HealthMonitor
    node: Node  # this process as the owner of its holds and leases
    upstream_models: UpstreamModels
    started_at: float = field(default_factory=time.time)
    in_flight: int = 0
    shed_until: float = 0.0  # monotonic time until which health reports the shedding
    draining: bool = False


@dataclass(slots=True)
class RequestContext:
    """One request's journey through the gateway; also what the access log reports."""

    state: State
    request: web.BaseRequest
    request_id: str
    flavor: Flavor = Flavor.ANTHROPIC
    route: str = "unknown"
    params: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    key: ApiKey | None = None  # set before the handler runs on a route with auth=True
    # What the access log reports; filled in as the request goes through the pipeline.
    client_ip: str | None = None
    key_public_id: str | None = None
    account_id: int | None = None
    model: str | None = None  # as the client sent it
    priced_model: str | None = None  # the catalog entry it resolved to (bounded)
    upstream_name: str | None = None
    upstream_request_id: str | None = None  # the upstream's id of the last attempt
    attempts: int = 0
    ttfb: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    cost_nanos: int | None = None

    @property
    def ip(self) -> str:
        """The client's address (forwarding headers believed from trusted proxies only)."""
        if self.client_ip is None:
            self.client_ip = client_ip(self.request, self.state.config.trusted_proxies)
        return self.client_ip

    @property
    def authenticated(self) -> ApiKey:
        """The request's key; only handlers of routes declared with ``auth=True`` ask."""
        if self.key is None:
            raise AssertionError(f"route {self.route} reads a key but is not declared auth=True")
        return self.key

    def headers(self, **more: str) -> dict[str, str]:
        """Response headers every answer carries (``request-id``) plus ``more``."""
        if self.flavor is Flavor.OPENAI:
            # OpenAI's SDKs read the request id from x-request-id.
            return {"request-id": self.request_id, "x-request-id": self.request_id, **more}
        return {"request-id": self.request_id, **more}
