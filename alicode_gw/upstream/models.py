"""What the upstream serves: its ``GET /v1/models``, fetched every
``ALICODE_UPSTREAM_MODELS_INTERVAL`` seconds with a pooled credential.

The gateway's ``/v1/models`` lists the upstream's models that have a price (their own
id, the upstream's display name and date, the price entry's limits); an upstream model
no price covers is reported to the operator instead: a warning line naming it, the
gauge ``alicode_upstream_models_unpriced`` and ``alicode-gw price list --missing``
(which reads the list from the ``upstream_models`` table this module writes).

The fetch takes its credential as a request does (:meth:`KeyPool.pick`) and reports
the outcome (:meth:`KeyPool.report`), so a half-open probe it was given is settled and
a revoked or rate-limited credential is seen; its failures are charged to one
customer of their own (``gateway:models``), so they alone cool no shared credential.
Until a fetch succeeds the list is unknown and ``/v1/models`` lists the catalog.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import asyncpg

from alicode_gw.errors import ServiceUnavailableError
from alicode_gw.money.catalog import ModelCatalog
from alicode_gw.observe.metrics import Metrics
from alicode_gw.store.unavailable import DATABASE_FAILED
from alicode_gw.upstream.headers import outbound_headers
from alicode_gw.upstream.outcome import Outcome, classify
from alicode_gw.upstream.pool import KeyPool

log = logging.getLogger(__name__)

CUSTOMER = "gateway:models"  # whom the pool charges a failed fetch to
PAGE_LIMIT = 1000
MAX_PAGES = 20
ERROR_BODY_LIMIT = 64 * 1024


class FetchError(RuntimeError):
    """The upstream's model list could not be read this time."""


@dataclass(frozen=True, slots=True)
class UpstreamModel:
    id: str
    display_name: str
    created_at: datetime


def parse_page(payload: object) -> tuple[list[UpstreamModel], str | None]:
    """The models of one ``GET /v1/models`` page and the cursor of the next (None:
    the last page)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise FetchError("the upstream's model list is not a list page")
    models: list[UpstreamModel] = []
    for item in payload["data"]:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        try:
            created = datetime.fromisoformat(str(item.get("created_at")).replace("Z", "+00:00"))
        except ValueError:
            created = datetime.fromtimestamp(0, UTC)
        name = item.get("display_name")
        models.append(
            UpstreamModel(item["id"], name if isinstance(name, str) else item["id"], created)
        )
    last = payload.get("last_id")
    more = payload.get("has_more") is True and isinstance(last, str)
    return models, last if more else None


async def store(db: asyncpg.Pool, models: Sequence[UpstreamModel]) -> None:
    """Replace the ``upstream_models`` table's rows with ``models``."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(
            "DELETE FROM upstream_models WHERE NOT (id = ANY($1::text[]))",
            [m.id for m in models],
        )
        await conn.executemany(
            """
            INSERT INTO upstream_models (id, display_name, created_at, seen_at)
            VALUES ($1, $2, $3, now())
            ON CONFLICT (id) DO UPDATE SET display_name = EXCLUDED.display_name,
                created_at = EXCLUDED.created_at, seen_at = now()
            """,
            [(m.id, m.display_name, m.created_at) for m in models],
        )


async def load(db: asyncpg.Pool | asyncpg.Connection) -> list[UpstreamModel]:
    """The list as the gateway last stored it, newest first."""
    rows = await db.fetch(
        "SELECT id, display_name, created_at FROM upstream_models ORDER BY created_at DESC, id"
    )
    return [UpstreamModel(r["id"], r["display_name"], r["created_at"]) for r in rows]


class UpstreamModels:
    """``state.upstream_models``: the upstream's model list as last fetched."""

    def __init__(
        self,
        *,
        db: asyncpg.Pool,
        http: aiohttp.ClientSession,
        keypool: KeyPool,
        catalog: ModelCatalog,
        metrics: Metrics,
        upstream_url: str,
        interval: float,
        timeout: float = 30.0,
    ) -> None:
        self._db = db
        self._http = http
        self._keypool = keypool
        self._catalog = catalog
        self._metrics = metrics
        self._url = upstream_url
        self._interval = interval
        self._timeout = timeout
        self.models: list[UpstreamModel] | None = None  # None: not fetched yet
        self._reported: frozenset[str] = frozenset()

    def unpriced(self) -> list[str]:
        """The ids of the last list that no price covers."""
        return [m.id for m in self.models or () if self._catalog.resolve(m.id) is None]

    async def refresh(self) -> list[UpstreamModel]:
        """Fetch the list now, keep it, store it and report what has no price. Raises
        :class:`FetchError` (or the pool's 503 with no credential) when it cannot."""
        models = await self._fetch()
        self.models = models
        missing = self.unpriced()
        self._metrics.unpriced_models.set(len(missing))
        if frozenset(missing) != self._reported:
            self._reported = frozenset(missing)
            if missing:
                log.warning(
                    "the upstream serves %d model(s) without a price, hidden from /v1/models"
                    " (alicode-gw price set MODEL ... or a family MODEL-PREFIX-*): %s",
                    len(missing),
                    ", ".join(missing),
                )
        try:
            await store(self._db, models)
        except DATABASE_FAILED as exc:
            log.warning("could not store the upstream's model list: %s", exc)
        return models

    async def run(self) -> None:
        """Refresh at once, then every interval (a tracked perpetual task); a failed
        fetch keeps the last list."""
        while True:
            try:
                await self.refresh()
            except (FetchError, ServiceUnavailableError) as exc:
                log.warning("upstream model list not refreshed: %s", exc)
            await asyncio.sleep(self._interval)

    async def _fetch(self) -> list[UpstreamModel]:
        models: list[UpstreamModel] = []
        after: str | None = None
        for _ in range(MAX_PAGES):
            query = {"limit": str(PAGE_LIMIT)}
            if after is not None:
                query["after_id"] = after
            page, after = parse_page(await self._get(query))
            models += page
            if after is None:
                return models
        raise FetchError(f"the upstream's model list has more than {MAX_PAGES} pages")

    async def _get(self, query: dict[str, str]) -> object:
        credential = self._keypool.pick()
        headers = outbound_headers({}, credential)  # the body as sent, no decompression
        headers.pop("content-type")  # a GET has no body
        try:
            async with self._http.get(
                self._url + "/v1/models",
                params=query,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                allow_redirects=False,
            ) as response:
                if response.status >= 300:
                    body = await response.content.read(ERROR_BODY_LIMIT)
                    outcome, cooldown = classify(response.status, response.headers, body)
                    await self._keypool.report(credential, outcome, cooldown, customer=CUSTOMER)
                    raise FetchError(f"GET /v1/models answered {response.status}")
                payload = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            bad_body = isinstance(exc, ValueError)  # says nothing about the credential
            outcome = Outcome.CLIENT_ERROR if bad_body else Outcome.CONNECT_ERROR
            await self._keypool.report(credential, outcome, customer=CUSTOMER)
            # Not repr(exc): aiohttp's response errors show the request's headers there,
            # the credential among them.
            raise FetchError(f"GET /v1/models failed: {type(exc).__name__}: {exc}") from exc
        await self._keypool.report(credential, Outcome.OK, customer=CUSTOMER)
        return payload
