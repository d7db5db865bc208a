"""Wiring: builds the one :class:`~alicode_gw.state.State`, the request handler around
the route table, and runs the low-level ``aiohttp.web.Server`` with graceful shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable

import aiohttp
import uvloop
from aiohttp import web
from redis.asyncio import Redis

from alicode_gw.batches.poller import build_poller
from alicode_gw.config import Config, ConfigError
from alicode_gw.dashboard.state import Dashboard
from alicode_gw.errors import ApiError, GatewayError, OverloadedError, render
from alicode_gw.files.objects import INLINED_HEADER
from alicode_gw.files.purge import FilePurger
from alicode_gw.identity.auth import Authenticator
from alicode_gw.ids import new_request_id
from alicode_gw.limits.limiter import Limiter
from alicode_gw.limits.resp import RespConnection
from alicode_gw.money.billing import Billing
from alicode_gw.money.catalog import ModelCatalog
from alicode_gw.money.leases import Credit
from alicode_gw.money.nodes import Node
from alicode_gw.observe import accesslog
from alicode_gw.observe.health import HealthMonitor
from alicode_gw.observe.metrics import Metrics, clear_share_dir, share_dir
from alicode_gw.protocol import GatewayServer
from alicode_gw.respcache.store import ResponseCache
from alicode_gw.routes import Router, build_router
from alicode_gw.state import RequestContext, State
from alicode_gw.store.backends import Backends, configured_backends, create_pool, create_redis
from alicode_gw.tasks import TaskTracker
from alicode_gw.tokens import TokenCounter
from alicode_gw.upstream.headers import DEFAULT_ANTHROPIC_VERSION
from alicode_gw.upstream.models import UpstreamModels
from alicode_gw.upstream.pool import KeyPool

log = logging.getLogger(__name__)

RequestHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


SHED_RETRY_AFTER = 1  # seconds, the retry-after of a request refused past max_in_flight
SHED_REPORTED = 10.0  # seconds /v1/health reports "degraded" after the last one
ACCEPTED_GRACE = 0.1  # seconds; see Gateway.stop
GC_YOUNG_THRESHOLD = 7_000  # net container allocations between young-generation collections


def upstream_session(config: Config) -> aiohttp.ClientSession:
    """The one pooled HTTP client for upstream calls (keep-alive, no decompression:
    bytes are relayed exactly as received). It keeps no cookies: a cookie an upstream
    sets (a CDN's, say) would otherwise go back on every later call, whichever
    customer's request and whichever credential it is, and tie them together."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=config.upstream_connect_timeout,
        sock_read=config.upstream_idle_timeout,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        raise_for_status=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def open_state(config: Config, backends: Backends) -> State:
    """Connect to PostgreSQL, Redis and prepare the upstream client."""
    db = await create_pool(backends.database_url, config.db_pool_size)
    redis = create_redis(backends.redis_url)
    tasks = TaskTracker()
    keypool = await KeyPool.open(
        db,
        redis,
        config.redis_prefix,
        tasks,
        affinity=config.routing == "affinity",
        inflight_cap=config.upstream_inflight_cap,
        ratelimit_floor=config.upstream_ratelimit_floor,
    )
    catalog = ModelCatalog(db)
    await catalog.refresh()
    tasks.spawn(catalog.run(), name="model-catalog-refresh", perpetual=True)
    node = Node(
        db,
        data_dir=config.data_dir,
        heartbeat_interval=config.node_heartbeat_interval,
        dead_after=config.node_dead_after,
    )
    await node.join()  # registered; a dead predecessor on this data dir retired
    tasks.spawn(node.run(), name="node-heartbeat", perpetual=True)
    credit = None
    if config.credit_lease_pct:
        credit = Credit(
            db,
            tasks,
            max_pct=config.credit_lease_pct,
            owner=node.id,
            usable_until=node.usable_until,
        )
        node.on_revived(credit.drop_all)
        tasks.spawn(credit.run(), name="credit-leases", perpetual=True)
    billing = Billing(
        db,
        redis,
        redis_prefix=config.redis_prefix,
        data_dir=config.data_dir,
        sweep_interval=config.hold_sweep_interval,
        tasks=tasks,
        credit=credit,
        node_id=node.id,
        dead_after=config.node_dead_after,
    )
    await billing.recover()  # before the first request: dead nodes' money, the journal
    billing.start(tasks)
    auth = Authenticator(db, redis, config.redis_prefix)
    tasks.spawn(auth.listen(), name="auth-revocations", perpetual=True)
    tasks.spawn(auth.flush_loop(), name="auth-last-used", perpetual=True)
    limiter = Limiter(
        redis,
        config.redis_prefix,
        ip_rpm=config.ip_rpm,
        ip_concurrency=config.ip_concurrency,
        share_pct=config.limit_share_pct,
        tasks=tasks,
    )
    tasks.spawn(limiter.refresh_loop(), name="limit-leases", perpetual=True)
    tasks.spawn(accesslog.flush_loop(), name="access-log-flush", perpetual=True)
    purger = FilePurger(db, grace=config.files_purge_grace, interval=config.files_purge_interval)
    tasks.spawn(purger.run(), name="file-purge", perpetual=True)
    metrics = Metrics(share_dir(config))
    tasks.spawn(metrics.publish_loop(), name="metrics-publish", perpetual=True)
    http = upstream_session(config)
    upstream_models = UpstreamModels(
        db=db,
        http=http,
        keypool=keypool,
        catalog=catalog,
        metrics=metrics,
        upstream_url=config.upstream_url,
        interval=config.upstream_models_interval,
    )
    if config.upstream_models_interval > 0:
        tasks.spawn(upstream_models.run(), name="upstream-models-refresh", perpetual=True)
    if config.batch_poll_interval > 0:
        batches = build_poller(config, db, http, redis, limiter)
        tasks.spawn(batches.run(), name="message-batches", perpetual=True)
    return State(
        config=config,
        db=db,
        redis=redis,
        http=http,
        tasks=tasks,
        keypool=keypool,
        catalog=catalog,
        billing=billing,
        auth=auth,
        limiter=limiter,
        tokens=TokenCounter(config.token_counts_remembered),
        metrics=metrics,
        health=HealthMonitor(),
        node=node,
        upstream_models=upstream_models,
        dashboard=Dashboard(config, redis),
        respcache=response_cache(config, redis, metrics, tasks),
    )


def response_cache(
    config: Config, redis: Redis, metrics: Metrics, tasks: TaskTracker
) -> ResponseCache | None:
    """The response cache when it is on (docs/response-cache.md)."""
    if not config.response_cache:
        return None
    config.require_cache_secret()
    assert config.response_cache_secret is not None
    return ResponseCache(
        RespConnection.like(redis),
        prefix=config.redis_prefix,
        secret=config.response_cache_secret.encode(),
        ttl=config.response_cache_ttl,
        max_bytes=config.response_cache_max_bytes,
        metrics=metrics,
        tasks=tasks,
        default_version=DEFAULT_ANTHROPIC_VERSION,
    )


async def close_state(state: State) -> None:
    """Drain background work, then close every connection."""
    await state.tasks.drain(state.config.shutdown_timeout)
    if state.billing.credit is not None:  # after the drain: every settlement has landed
        await state.billing.credit.close_all()
    await state.limiter.close_shares()
    state.metrics.publish()  # the final counts stay in the node's sums
    await state.keypool.close()
    await state.auth.close()
    state.limiter.close()
    if state.respcache is not None:
        state.respcache.close()
    await state.http.close()
    await state.redis.aclose()
    await state.db.close()
    state.node.close()


def make_handler(state: State, router: Router) -> RequestHandler:
    """The root handler: request id, routing, authentication of the routes that declare
    it, error rendering, in-flight count, and the request's metrics and access line
    (:mod:`alicode_gw.observe.accesslog`)."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        ctx = RequestContext(state, request, new_request_id())
        state.in_flight += 1
        status = accesslog.CLIENT_CLOSED
        try:
            response = await respond(ctx)
            if not response.prepared:
                response.headers["request-id"] = ctx.request_id
                if ctx.files_inlined:
                    response.headers[INLINED_HEADER] = str(ctx.files_inlined)
            status = response.status
            # Send the answer before the bookkeeping below: the client does not wait
            # for its access line. (aiohttp then finds it sent.)
            with contextlib.suppress(ConnectionError):
                await response.prepare(request)
                await response.write_eof()
            return response
        except Exception:
            # A failure once the answer had started (aiohttp closes the connection:
            # there is no second answer), or an answer that could not be sent.
            status = 500
            raise
        finally:
            state.in_flight -= 1
            if ctx.upstream_held is not None:  # the answer's upstream call is over
                state.keypool.finished(ctx.upstream_held)
            accesslog.finish(ctx, status)

    cap = state.config.max_in_flight or None

    def shed() -> OverloadedError:
        """Past the cap: refused before any work (health reports it for a while)."""
        state.metrics.shed.inc()
        state.shed_until = time.monotonic() + SHED_REPORTED
        return OverloadedError(
            "The gateway is at capacity; retry shortly.",
            headers={"retry-after": str(SHED_RETRY_AFTER)},
        )

    async def respond(ctx: RequestContext) -> web.StreamResponse:
        """Route and run the handler; any error rendered in the route's API shape."""
        try:
            match = router.resolve(ctx.request.method, ctx.request.path)
            route = match.route
            ctx.route = route.name
            ctx.flavor = route.flavor if route.flavor_of is None else route.flavor_of(ctx.request)
            ctx.params = match.params
            if route.auth:
                if cap is not None and state.in_flight > cap:  # this one counted already
                    raise shed()
                key = ctx.key = await state.auth.authenticate(ctx.request, ctx.ip)
                ctx.key_public_id, ctx.account_id = key.public_id, key.account_id
            return await match.handler(ctx)
        except GatewayError as err:
            if ctx.request.writer.output_size:  # too late for an answer of its own
                raise
            accesslog.count_error(ctx, err)
            return render(err, ctx.request_id, ctx.flavor)
        except Exception:
            log.exception("unhandled error in %s (request %s)", ctx.route, ctx.request_id)
            if ctx.request.writer.output_size:
                raise
            return render(
                ApiError(f"Internal error. Quote request id {ctx.request_id} to support."),
                ctx.request_id,
                ctx.flavor,
            )

    return handle


class Gateway:
    """The HTTP server around a :class:`State`: start, report the port, stop gracefully."""

    def __init__(self, state: State, router: Router | None = None) -> None:
        self.state = state
        handler = make_handler(state, router or build_router())
        # Bodies as received: requestbody.read_body decodes Content-Encoding, so a body
        # that does not decode is the request's own 400.
        self._server = GatewayServer(handler, state.config, access_log=None, auto_decompress=False)
        self._runner = web.ServerRunner(
            self._server, handle_signals=False, shutdown_timeout=state.config.shutdown_timeout
        )
        self._site: web.TCPSite | None = None

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        """Listen. A port another process listens on is a :class:`ConfigError`; only the
        workers of one ``serve --workers`` supervisor share their port
        (``config.share_port``, SO_REUSEPORT)."""
        config = self.state.config
        host = host or config.listen_host
        port = config.listen_port if port is None else port
        await self._runner.setup()
        self._site = web.TCPSite(
            self._runner, host, port, reuse_port=config.share_port, backlog=1024
        )
        try:
            await self._site.start()
        except OSError as exc:
            self._site = None
            if exc.errno != errno.EADDRINUSE:
                raise
            raise ConfigError("ALICODE_LISTEN", f"{host}:{port}: address already in use") from exc

    @property
    def port(self) -> int:
        server = self._site._server if self._site else None
        for sock in getattr(server, "sockets", None) or ():
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                return int(sock.getsockname()[1])
        raise RuntimeError("the gateway is not listening")

    @property
    def url(self) -> str:
        return f"http://{self.state.config.listen_host}:{self.port}"

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to the shutdown timeout).

        Between closing the listener and closing idle connections the server waits
        ``ACCEPTED_GRACE``: a connection accepted just before the listener closed has
        usually not delivered its request yet, and aiohttp would close it as idle, so
        the client saw "server disconnected" (seen during ``serve --workers`` reloads)."""
        self.state.draining = True
        if self._site is not None:
            await self._site.stop()
            self._site = None
            await asyncio.sleep(ACCEPTED_GRACE)
        await self._runner.cleanup()


def tune_collector() -> None:
    """For a serving process: the youngest generation of the cyclic garbage collector is
    collected once container allocations outnumber deallocations by
    ``GC_YOUNG_THRESHOLD`` instead of 700. A request allocates hundreds of container
    objects that reference counting frees; at 700 the collector walked them several
    times per request (~2 % of the gateway's instructions per JSON request, measured
    with callgrind). Cyclic garbage lives a little longer. See docs/architecture.md."""
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)


async def run_until_signalled(
    config: Config, backends: Backends, announce: Callable[[Gateway], None] | None = None
) -> None:
    """Serve until SIGTERM or SIGINT, then drain and close. ``announce`` is called once
    the gateway listens (``alicode-gw dev`` prints its banner there)."""
    state = await open_state(config, backends)
    tune_collector()
    gateway = Gateway(state)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await gateway.start()
        log.info("alicode_gw listening on %s", gateway.url)
        if announce is not None:
            announce(gateway)
        await stop.wait()
        log.info("shutting down: draining %d in-flight request(s)", state.in_flight)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        with contextlib.suppress(Exception):
            await gateway.stop()
        await close_state(state)


def serve(config: Config) -> None:
    """Blocking entry point of ``alicode-gw serve``."""
    backends = configured_backends(config)
    clear_share_dir(share_dir(config))
    uvloop.run(run_until_signalled(config, backends))
