"""The model catalog: the ``models`` table (priced models, their aliases and the model
families) held in memory and refreshed every few seconds, so the request path resolves
a model name without a database round trip. Also the operator's price changes
(``price set``).

A family is a row whose id ends in ``-*`` (``claude-sonnet-*``): it prices every id
that starts with what precedes the ``*``. A name resolves to the most specific row
(:func:`resolve_in`, the same rule as ``billing.resolve_model`` in SQL): the exact id,
then a dated snapshot (``claude-haiku-4-5-20251001``) as its base id
(``claude-haiku-4-5``), then the family with the longest prefix. A name that matches
nothing is not served (never billed at a guess).

Prices are integer micro-USD per million tokens; see ``sql/functions/billing_cost.sql`` for the
one rounding rule that turns them into a request's cost in nano-USD.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import asyncpg

from alicode_gw.store.unavailable import DATABASE_FAILED

log = logging.getLogger(__name__)

MICROS_PER_USD = 1_000_000
# sum(tokens x micro-USD/MTok) is pico-USD; 1 nano-USD = 1000 pico-USD; discount in %.
_PICO_PER_NANO_TIMES_100 = 100_000

_CATALOG_QUERY = """
SELECT id, target, display_name, created_at, is_alias, context_window, max_output_tokens,
       supports_vision, supports_thinking, input_price, output_price, cache_write_5m_price,
       cache_write_1h_price, cache_read_price, batch_discount_pct
  FROM model_catalog
 ORDER BY is_alias, created_at DESC, id
"""


@dataclass(frozen=True, slots=True)
class Prices:
    """Integer micro-USD per million tokens, and the batch discount in percent."""

    input: int
    output: int
    cache_write_5m: int
    cache_write_1h: int
    cache_read: int
    batch_discount_pct: int

    def cost_nanos(
        self,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_creation_5m: int = 0,
        cache_creation_1h: int = 0,
        cache_read: int = 0,
        batch: bool = False,
    ) -> int:
        """The same rule as ``billing.request_cost`` in SQL (used only for a provisional
        figure while a settlement waits in the journal): one ceil to whole nanos."""
        pico = (
            input_tokens * self.input
            + output_tokens * self.output
            + cache_creation_5m * self.cache_write_5m
            + cache_creation_1h * self.cache_write_1h
            + cache_read * self.cache_read
        )
        discount = self.batch_discount_pct if batch else 0
        return -(-pico * (100 - discount) // _PICO_PER_NANO_TIMES_100)


@dataclass(frozen=True, slots=True)
class Capabilities:
    context_window: int
    max_output_tokens: int
    vision: bool
    thinking: bool


FAMILY_SUFFIX = "*"
_SNAPSHOT = re.compile(r"^(.+)-\d{8}$")
_FAMILY_ID = re.compile(r"^[a-z0-9][a-z0-9.-]*-\*$")  # as the CHECK models_family_pattern


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One name a client may send. ``target`` is the model id sent upstream (``id``
    itself unless ``is_alias``); ``priced_as`` the ``models`` row it is billed as (the
    alias's target, the snapshot's base id or the family, e.g. ``claude-sonnet-*``)."""

    id: str
    target: str
    display_name: str
    created_at: datetime
    capabilities: Capabilities
    prices: Prices
    is_alias: bool
    priced_as: str = ""
    # ``prices`` without the batch discount: what a request that is not a batch pays.
    request_prices: Prices = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.priced_as:
            object.__setattr__(self, "priced_as", self.target)
        undiscounted = dataclasses.replace(self.prices, batch_discount_pct=0)
        object.__setattr__(self, "request_prices", undiscounted)

    @property
    def is_family(self) -> bool:
        return self.id.endswith(FAMILY_SUFFIX)


def is_family_id(model: str) -> bool:
    return model.endswith(FAMILY_SUFFIX)


def resolve_in(by_id: Mapping[str, ModelInfo], name: str) -> ModelInfo | None:
    """``name`` resolved against the rows ``by_id`` (see the module docstring): a row
    of its own, or the row it is priced as under the name ``name``. Model ids are
    printable ASCII: any other name is no model (nor is it a name a billing batch could
    carry: PostgreSQL's jsonb refuses a NUL or a lone surrogate)."""
    if FAMILY_SUFFIX in name or not (name.isascii() and name.isprintable()):
        return None
    info = by_id.get(name)
    if info is not None:
        return info
    snapshot = _SNAPSHOT.match(name)
    base = by_id.get(snapshot.group(1)) if snapshot else None
    if base is None:
        family = [
            row
            for row_id, row in by_id.items()
            if row_id.endswith(FAMILY_SUFFIX) and name.startswith(row_id[:-1])
        ]
        if not family:
            return None
        base = max(family, key=lambda row: len(row.id))
    return dataclasses.replace(
        base, id=name, target=base.target if base.is_alias else name, priced_as=base.priced_as
    )


def _info(row: asyncpg.Record) -> ModelInfo:
    return ModelInfo(
        id=row["id"],
        target=row["target"],
        display_name=row["display_name"],
        created_at=row["created_at"],
        capabilities=Capabilities(
            context_window=row["context_window"],
            max_output_tokens=row["max_output_tokens"],
            vision=row["supports_vision"],
            thinking=row["supports_thinking"],
        ),
        prices=prices_from_row(row),
        is_alias=row["is_alias"],
        priced_as=row["target"],
    )


def prices_from_row(row: Mapping[str, Any]) -> Prices:
    """The price columns of a ``model_catalog`` row (or of a billing hold's snapshot,
    which ``billing.apply_batch`` returns under the same names)."""
    return Prices(
        input=row["input_price"],
        output=row["output_price"],
        cache_write_5m=row["cache_write_5m_price"],
        cache_write_1h=row["cache_write_1h_price"],
        cache_read=row["cache_read_price"],
        batch_discount_pct=row["batch_discount_pct"],
    )


def price_columns(prices: Prices) -> dict[str, int]:
    """The price columns of ``prices`` under those names (what :func:`prices_from_row`
    reads), without the discount."""
    return {
        "input_price": prices.input,
        "output_price": prices.output,
        "cache_write_5m_price": prices.cache_write_5m,
        "cache_write_1h_price": prices.cache_write_1h,
        "cache_read_price": prices.cache_read,
    }


async def load_models(conn: asyncpg.Connection | asyncpg.Pool) -> list[ModelInfo]:
    """Every model and alias, priced models first (newest first), then the aliases."""
    return [_info(row) for row in await conn.fetch(_CATALOG_QUERY)]


class ModelCatalog:
    """In-process copy of the models table (``state.catalog``)."""

    def __init__(self, db: asyncpg.Pool, *, refresh_interval: float = 5.0) -> None:
        self._db = db
        self._refresh_interval = refresh_interval
        self._models: list[ModelInfo] = []
        self._by_name: dict[str, ModelInfo] = {}

    async def refresh(self) -> None:
        """Reload the table (raises the database's error when it cannot)."""
        models = await load_models(self._db)
        self._models = models
        self._by_name = {info.id: info for info in models}

    async def run(self) -> None:
        """Refresh forever (a tracked perpetual task); a failed refresh keeps the last copy."""
        while True:
            await asyncio.sleep(self._refresh_interval)
            try:
                await self.refresh()
            except DATABASE_FAILED as exc:
                log.warning("model catalog refresh failed, keeping the last copy: %s", exc)

    def resolve(self, name: str) -> ModelInfo | None:
        """The catalog's entry for ``name`` (its own row, its snapshot's base or its
        family, under the name ``name``), or None: not served."""
        return resolve_in(self._by_name, name)

    def all(self) -> list[ModelInfo]:
        """Every row, families included."""
        return list(self._models)

    def named(self) -> list[ModelInfo]:
        """The rows a client may send by name: priced models and aliases (no families)."""
        return [info for info in self._models if not info.is_family]


# --- operator changes -------------------------------------------------------------------


class PriceError(ValueError):
    """A price change the table cannot take (unknown model, alias, bad number)."""


def parse_price(text: str) -> int:
    """USD per million tokens (``"3"``, ``"0.30"``) -> integer micro-USD per MTok, exact."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise PriceError(f"expected a price in USD per million tokens, got {text!r}") from None
    if not value.is_finite() or value < 0:
        raise PriceError(f"expected a non-negative price, got {text!r}")
    micros = value * MICROS_PER_USD
    if micros != micros.to_integral_value():
        raise PriceError(f"{text!r}: prices have at most 6 decimal places (micro-USD)")
    return int(micros)


def format_price(micros: int) -> str:
    """Integer micro-USD per MTok -> exact USD string (at least two decimals)."""
    text = f"{Decimal(micros).scaleb(-6):f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


async def set_price(
    conn: asyncpg.Connection,
    model: str,
    *,
    input_price: int,
    output_price: int,
    cache_write_5m: int | None = None,
    cache_write_1h: int | None = None,
    cache_read: int | None = None,
    batch_discount_pct: int | None = None,
    display_name: str | None = None,
    context_window: int = 200_000,
    max_output_tokens: int = 64_000,
) -> dict[str, Any]:
    """Set a priced model's prices (creating the model when it is new). Cache prices not
    given follow Anthropic's multipliers of the input price: 5-minute write 1.25x,
    1-hour write 2x, read 0.1x (rounded up to a whole micro-USD)."""
    if FAMILY_SUFFIX in model and not _FAMILY_ID.match(model):
        raise PriceError(
            f"{model!r}: a family is a prefix followed by '-*' (e.g. 'claude-sonnet-*')"
        )
    cw5m = cache_write_5m if cache_write_5m is not None else -(-input_price * 125 // 100)
    cw1h = cache_write_1h if cache_write_1h is not None else input_price * 2
    cread = cache_read if cache_read is not None else -(-input_price // 10)
    async with conn.transaction():
        row = await conn.fetchrow("SELECT alias_of FROM models WHERE id = $1 FOR UPDATE", model)
        if row is not None and row["alias_of"] is not None:
            raise PriceError(
                f"{model} is an alias of {row['alias_of']}; set the price of {row['alias_of']}"
            )
        if row is None:
            await conn.execute(
                """
                INSERT INTO models (id, display_name, created_at, context_window,
                    max_output_tokens, supports_vision, supports_thinking, input_price,
                    output_price, cache_write_5m_price, cache_write_1h_price,
                    cache_read_price, batch_discount_pct)
                VALUES ($1, $2, now(), $3, $4, true, true, $5, $6, $7, $8, $9, $10)
                """,
                model,
                display_name or model,
                context_window,
                max_output_tokens,
                input_price,
                output_price,
                cw5m,
                cw1h,
                cread,
                50 if batch_discount_pct is None else batch_discount_pct,
            )
        else:
            await conn.execute(
                """
                UPDATE models SET input_price = $2, output_price = $3,
                       cache_write_5m_price = $4, cache_write_1h_price = $5,
                       cache_read_price = $6,
                       batch_discount_pct = coalesce($7, batch_discount_pct),
                       display_name = coalesce($8, display_name), updated_at = now()
                 WHERE id = $1
                """,
                model,
                input_price,
                output_price,
                cw5m,
                cw1h,
                cread,
                batch_discount_pct,
                display_name,
            )
    return {"model": model, "created": row is None}


async def set_alias(conn: asyncpg.Connection, alias: str, target: str) -> None:
    """Point ``alias`` at the priced model ``target`` (creating the alias if new)."""
    async with conn.transaction():
        existing = await conn.fetchrow("SELECT alias_of FROM models WHERE id = $1", alias)
        if existing is not None and existing["alias_of"] is None:
            raise PriceError(f"{alias} is a priced model, not an alias")
        if is_family_id(target):
            raise PriceError(f"{target} is a family; point {alias} at a priced model id")
        name = await conn.fetchval(
            "SELECT display_name FROM models WHERE id = $1 AND alias_of IS NULL", target
        )
        if name is None:
            raise PriceError(f"no priced model {target!r}")
        await conn.execute(
            """
            INSERT INTO models (id, display_name, created_at, alias_of)
            VALUES ($1, $2, now(), $3)
            ON CONFLICT (id) DO UPDATE SET alias_of = EXCLUDED.alias_of,
                display_name = EXCLUDED.display_name, updated_at = now()
            """,
            alias,
            f"Alias of {name}",
            target,
        )
