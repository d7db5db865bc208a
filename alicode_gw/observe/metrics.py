"""Prometheus metrics (``state.metrics``); ``GET /metrics`` is
:mod:`alicode_gw.endpoints.metrics`.

Every series is named ``alicode_…`` and lives in registries this object owns (never
``prometheus_client``'s global default registry). Two kinds:

* **Per-process series** — requests, durations, time to first byte, tokens, money,
  upstream attempts, auth failures, limit rejections, streams in flight — are observed
  on the request path. The ones every request updates are plain numbers
  (:class:`RequestSeries`: a dict update per observation) made into metric families
  only when the registry is collected; the rarer ones are ``prometheus_client``
  counters.
* **Node series** — upstream credentials by state, the billing journal backlog, build
  info — are read live when ``/metrics`` is scraped.

Several worker processes on one port (SO_REUSEPORT): a scrape reaches any one of them,
so each process writes its per-process series every second to
``<data dir>/metrics/<pid>-<token>.json`` and the process that answers the scrape sums
its own live values with the other files. Counters and histograms of processes that
have exited stay counted (so sums never go backwards across a graceful reload) until
``alicode-gw serve`` starts again and clears the directory; gauges count only from
live processes that wrote in the last :data:`GAUGE_FRESHNESS` seconds. Values of the
other workers are at most one publish interval old.

Label values are bounded: route names (not raw paths), models from the catalog
(anything else is ``other``), credential names from the operator's pool, fixed outcome
and limit names.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import itertools
import json
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from alicode_gw import __version__

if TYPE_CHECKING:
    from alicode_gw.config import Config
    from alicode_gw.money.billing import Billing
    from alicode_gw.upstream.pool import KeyPool

log = logging.getLogger(__name__)

DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
PUBLISH_INTERVAL = 1.0
GAUGE_FRESHNESS = 10.0
RECENT_WINDOW = 60  # seconds of upstream outcomes kept for /v1/health
NO_MODEL = "none"
OTHER_MODEL = "other"
# Outcomes that say nothing bad about the upstream (the client's own 4xx is not an error).
_GOOD_OUTCOMES = frozenset({"ok", "client_error"})
CREDENTIAL_STATES = ("healthy", "cooling", "disabled")


class RequestSeries:
    """The series every request updates, as plain numbers: a dict update per
    observation (no lock: only the event loop's thread writes them) instead of a
    labelled ``prometheus_client`` child's locked update (~1 µs of CPU per request
    against ~6). A collector of the process's registry: the numbers become metric
    families when it is collected (a scrape, a publish: ``collect`` copies each dict
    at once, which the GIL makes atomic, so a publish in a worker thread reads a
    consistent copy)."""

    def __init__(self, buckets: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.buckets = buckets
        self.requests: dict[tuple[str, str, int], int] = {}
        # route -> [count per bucket (not cumulative; the last is +Inf), sum]
        self.duration: dict[str, list[float]] = {}
        self.ttfb: dict[str, list[float]] = {}
        self.tokens: dict[tuple[str, str], int] = {}
        self.charged: dict[str, int] = {}
        self.upstream_attempts: dict[tuple[str, str], int] = {}
        self.cache_tokens: dict[tuple[str, str], int] = {}
        self.affinity: dict[str, int] = {}
        self.holds: dict[str, int] = {}
        self.response_cache: dict[str, int] = {}  # by outcome: HIT, MISS, BYPASS

    def observe(self, histogram: dict[str, list[float]], route: str, seconds: float) -> None:
        counts = histogram.get(route)
        if counts is None:
            counts = histogram[route] = [0] * (len(self.buckets) + 2)
        counts[bisect.bisect_left(self.buckets, seconds)] += 1
        counts[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        yield _counter(
            "alicode_requests",
            "Requests answered, by route, model and HTTP status.",
            ["route", "model", "status"],
            self.requests.copy(),
        )
        yield self._histogram(
            "alicode_request_duration_seconds",
            "Time from request arrival to the end of the handler (the whole stream).",
            self.duration,
        )
        yield self._histogram(
            "alicode_time_to_first_byte_seconds",
            "Time from request arrival to the first upstream byte relayed to the client.",
            self.ttfb,
        )
        yield _counter(
            "alicode_tokens",
            "Billed tokens by model and kind (input, output, cache_write, cache_read).",
            ["model", "kind"],
            self.tokens.copy(),
        )
        yield _counter(
            "alicode_charged_nanos",
            "Money charged to customers, in nano-USD (1 USD = 1e9).",
            ["model"],
            self.charged.copy(),
        )
        yield _counter(
            "alicode_upstream_attempts",
            "Upstream attempts by credential name and outcome.",
            ["credential", "outcome"],
            self.upstream_attempts.copy(),
        )
        yield _counter(
            "alicode_upstream_cache_tokens",
            "Input tokens of answered requests by credential and kind: read (from the "
            "upstream's prompt cache), write (into it) or uncached.",
            ["credential", "kind"],
            self.cache_tokens.copy(),
        )
        yield _counter(
            "alicode_affinity_requests",
            "Requests by whether they had an affinity key (cache-affine routing): yes/no.",
            ["keyed"],
            self.affinity.copy(),
        )
        yield _counter(
            "alicode_holds",
            "Billing holds by where they were taken: lease (this node's credit lease, no "
            "I/O) or database (a billing round trip).",
            ["path"],
            self.holds.copy(),
        )
        yield _counter(
            "alicode_response_cache",
            "Response cache lookups by outcome (hit, miss, bypass).",
            ["outcome"],
            {outcome.lower(): n for outcome, n in self.response_cache.copy().items()},
        )

    def _histogram(self, name: str, doc: str, routes: dict[str, list[float]]) -> Metric:
        family = HistogramMetricFamily(name, doc, labels=["route"])
        bounds = [*map(floatToGoString, self.buckets), "+Inf"]
        for route, counts in sorted(routes.copy().items()):
            counts = list(counts)
            cumulative = list(itertools.accumulate(counts[:-1]))
            family.add_metric([route], list(zip(bounds, cumulative, strict=True)), counts[-1])
        return family


def _counter(name: str, doc: str, labels: list[str], values: Mapping[Any, int]) -> Metric:
    """A counter family of ``values``, keyed by a label value or a tuple of them."""
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric([str(v) for v in key] if isinstance(key, tuple) else [key], value)
    return family


class Metrics:
    """The per-process metric objects and their exposition."""

    def __init__(self, share_dir: Path | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.series = RequestSeries()
        r.register(self.series)
        self.auth_failures = Counter(
            "alicode_auth_failures",
            "Requests refused with 401 (missing, bad or revoked key).",
            registry=r,
        )
        self.limit_rejections = Counter(
            "alicode_limit_rejections",
            "Requests refused with 429 by a gateway limit, by limit.",
            ["limit"],
            registry=r,
        )
        self.shed = Counter(
            "alicode_shed_requests",
            "Requests answered 529 at once: the process had max_in_flight requests in flight.",
            registry=r,
        )
        self.respcache_stored = Counter(
            "alicode_response_cache_stored_bytes",
            "Bytes written to the response cache (encrypted entries).",
            registry=r,
        )
        self.streams = Gauge(
            "alicode_streams_in_flight", "SSE streams being relayed now.", registry=r
        )
        # Node series: set from live state right before each exposition.
        self.node_registry = CollectorRegistry(auto_describe=False)
        self.credentials = Gauge(
            "alicode_upstream_credentials",
            "Upstream credentials by state (healthy, cooling, disabled).",
            ["state"],
            registry=self.node_registry,
        )
        self.journal_backlog = Gauge(
            "alicode_billing_journal_backlog",
            "Settlements waiting in the billing journal (NaN: it could not be read).",
            registry=self.node_registry,
        )
        self.unpriced_models = Gauge(
            "alicode_upstream_models_unpriced",
            "Models the upstream serves that no price covers (hidden from /v1/models; "
            "`alicode-gw price list --missing` names them).",
            registry=self.node_registry,
        )
        Gauge(
            "alicode_build_info",
            "Version of the gateway.",
            ["version"],
            registry=self.node_registry,
        ).labels(__version__).set(1)
        self.start_time = Gauge(
            "alicode_start_time_seconds",
            "Unix time this process started.",
            registry=self.node_registry,
        )
        self.start_time.set(time.time())
        self._share_dir = share_dir
        self._own_file = f"{os.getpid()}-{secrets.token_hex(4)}.json"
        self._recent: collections.deque[list[int]] = collections.deque(maxlen=RECENT_WINDOW)
        self._publishing = threading.Lock()

    # ------------------------------------------------------------ request path

    def request_done(
        self, route: str, model: str, status: int, duration: float, ttfb: float | None
    ) -> None:
        series = self.series
        key = (route, model, status)
        series.requests[key] = series.requests.get(key, 0) + 1
        series.observe(series.duration, route, duration)
        if ttfb is not None:
            series.observe(series.ttfb, route, ttfb)

    def hold(self, path: str) -> None:
        holds = self.series.holds
        holds[path] = holds.get(path, 0) + 1

    def response_cache(self, outcome: str) -> None:
        outcomes = self.series.response_cache
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    def response_cache_stored(self, size: int) -> None:
        self.respcache_stored.inc(size)

    def usage(
        self,
        model: str,
        *,
        input_tokens: int,
        output_tokens: int,
        cache_write_tokens: int,
        cache_read_tokens: int,
        cost_nanos: int | None,
    ) -> None:
        tokens = self.series.tokens
        for kind, count in (
            ("input", input_tokens),
            ("output", output_tokens),
            ("cache_write", cache_write_tokens),
            ("cache_read", cache_read_tokens),
        ):
            if count:
                key = (model, kind)
                tokens[key] = tokens.get(key, 0) + count
        if cost_nanos:
            charged = self.series.charged
            charged[model] = charged.get(model, 0) + cost_nanos

    def routed(self, credential: str | None, keyed: bool, read: int, write: int, rest: int) -> None:
        """A request's routing: whether it had an affinity key, and its credential's
        prompt-cache tokens (the cache-hit ratio on /metrics derives from these)."""
        affinity = self.series.affinity
        label = "yes" if keyed else "no"
        affinity[label] = affinity.get(label, 0) + 1
        if credential is not None:
            cache_tokens = self.series.cache_tokens
            for kind, count in (("read", read), ("write", write), ("uncached", rest)):
                if count:
                    key = (credential, kind)
                    cache_tokens[key] = cache_tokens.get(key, 0) + count

    def upstream_attempt(self, credential: str, outcome: str) -> None:
        attempts = self.series.upstream_attempts
        key = (credential, outcome)
        attempts[key] = attempts.get(key, 0) + 1
        now = int(time.monotonic())
        recent = self._recent
        if not recent or recent[-1][0] != now:
            recent.append([now, 0, 0])
        bucket = recent[-1]
        bucket[1] += 1
        if outcome not in _GOOD_OUTCOMES:
            bucket[2] += 1

    def recent_upstream(self, window: int = RECENT_WINDOW) -> tuple[int, int]:
        """(attempts, failed attempts) of this process in the last ``window`` seconds."""
        since = int(time.monotonic()) - window
        attempts = errors = 0
        for second, count, failed in self._recent:
            if second > since:
                attempts += count
                errors += failed
        return attempts, errors

    # ------------------------------------------------------------ node series

    async def refresh_node(self, keypool: KeyPool, billing: Billing) -> None:
        """Set the node series from live state (the credential pool, the journal)."""
        counts = dict.fromkeys(CREDENTIAL_STATES, 0)
        for row in keypool.snapshot():
            counts[row["state"]] = counts.get(row["state"], 0) + 1
        for name, count in counts.items():
            self.credentials.labels(name).set(count)
        try:
            backlog = float(await asyncio.wait_for(billing.journal_length(), 0.5))
        except Exception as exc:  # Redis down: the series says unknown, the scrape works
            log.debug("billing journal length unavailable: %r", exc)
            backlog = math.nan
        self.journal_backlog.set(backlog)

    # ------------------------------------------------------------ several processes

    def _snapshot(self) -> list[list[Any]]:
        families: list[list[Any]] = []
        for metric in self.registry.collect():
            samples = [
                [s.name, s.labels, s.value]
                for s in metric.samples
                if not s.name.endswith("_created")
            ]
            families.append([metric.name, metric.type, metric.documentation, samples])
        return families

    def publish(self) -> None:
        """Write this process's per-process series for the other workers' scrapes."""
        if self._share_dir is None:
            return
        with self._publishing:  # the last writer has the newest snapshot
            self._publish(self._share_dir)

    def _publish(self, directory: Path) -> None:
        text = json.dumps(
            {"pid": os.getpid(), "written": time.time(), "families": self._snapshot()},
            separators=(",", ":"),
        )
        path = directory / self._own_file
        tmp = path.with_suffix(".tmp")
        try:
            directory.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not publish metrics to %s: %s", directory, exc)

    async def publish_loop(self, interval: float = PUBLISH_INTERVAL) -> None:
        """Publish every ``interval`` seconds (a tracked perpetual task)."""
        while True:
            await asyncio.to_thread(self.publish)
            await asyncio.sleep(interval)

    def _others(self) -> Iterable[dict[str, Any]]:
        if self._share_dir is None:
            return
        try:
            paths = sorted(self._share_dir.glob("*.json"))
        except OSError:
            return
        for path in paths:
            if path.name == self._own_file:
                continue
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # replaced or removed under us: next scrape
            if isinstance(data, dict):
                yield data

    def _merged(self) -> list[Metric]:
        """This process's live series plus the other processes' published ones."""
        order: dict[str, tuple[str, str]] = {}
        sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}

        def add(families: list[list[Any]], gauges: bool) -> None:
            for name, typ, doc, samples in families:
                if typ == "gauge" and not gauges:
                    continue
                order.setdefault(name, (typ, doc))
                into = sums.setdefault(name, {})
                for sample_name, labels, value in samples:
                    key = (sample_name, tuple(sorted(labels.items())))
                    into[key] = into.get(key, 0.0) + float(value)

        add(self._snapshot(), gauges=True)
        now = time.time()
        for data in self._others():
            fresh = now - float(data.get("written", 0)) < GAUGE_FRESHNESS
            add(data.get("families", []), gauges=fresh and _alive(int(data.get("pid", 0))))
        merged = []
        for name, (typ, doc) in order.items():
            metric = Metric(name, doc, typ)
            for (sample_name, labels), value in sums[name].items():
                metric.add_sample(sample_name, dict(labels), value)
            merged.append(metric)
        return merged

    def exposition(self) -> bytes:
        """The text exposition: every process's per-process series summed, then the
        node series. Reads the shared directory: call it off the event loop."""
        merged = CollectorRegistry(auto_describe=False)
        families = self._merged()
        merged.register(_Fixed([*families, *_cache_hit_ratio(families)]))
        return generate_latest(merged) + generate_latest(self.node_registry)


def _cache_hit_ratio(families: list[Metric]) -> list[Metric]:
    """``alicode_upstream_cache_hit_ratio``: cache-read tokens / all input tokens, per
    credential and ``all``, from the (summed) ``alicode_upstream_cache_tokens``."""
    totals: dict[str, dict[str, float]] = {}
    for family in families:
        if family.name != "alicode_upstream_cache_tokens":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                for name in (sample.labels["credential"], "all"):
                    kinds = totals.setdefault(name, {})
                    kind = sample.labels["kind"]
                    kinds[kind] = kinds.get(kind, 0.0) + sample.value
    if not totals:
        return []
    ratio = Metric(
        "alicode_upstream_cache_hit_ratio",
        "Share of input tokens read from the upstream's prompt cache (read / (read + write "
        '+ uncached)), per credential and over all (credential="all").',
        "gauge",
    )
    for name, kinds in sorted(totals.items()):
        total = sum(kinds.values())
        ratio.add_sample(
            "alicode_upstream_cache_hit_ratio",
            {"credential": name},
            kinds.get("read", 0.0) / total if total else 0.0,
        )
    return [ratio]


class _Fixed:
    """A collector that yields a precomputed list of families."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def share_dir(config: Config) -> Path:
    """Where the worker processes of one node publish their series."""
    return config.data_dir / "metrics"


def clear_share_dir(path: Path) -> None:
    """Forget the series of earlier runs (``serve`` calls this before its workers start)."""
    for pattern in ("*.json", "*.tmp"):
        for old in path.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
