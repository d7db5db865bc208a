"""The typed contract between Python and the billing functions (``sql/functions/billing_*``).

Every operation is a frozen dataclass, and so is its result. :func:`sql_call` turns an
operation into the one statement that performs it, naming every argument
(``SELECT * FROM billing.lease_open(p_account_id => $1, p_owner => $2, ...)``): a field
``want_nanos`` is the parameter ``p_want_nanos``. So Python and SQL never depend on an
argument's position, and a renamed parameter fails at once (no function matches) instead
of passing a price where a token count was expected. :func:`call` runs one and reads
its typed result.

The request path's operations (:class:`HoldOp`, :class:`SettleOp`,
:class:`SettleLeasedOp`, :class:`ReleaseOp`) are not called one by one: those that
concurrent requests queue up go together as the jsonb array of one
``billing.apply_batch`` call (:class:`ApplyBatch`), which calls ``billing.hold`` /
``settle`` / ``settle_leased`` / ``release`` with named arguments for each. jsonb rather
than a named call per operation, or an array of a composite type: one round trip and one
commit carry any mix and number of operations, asyncpg needs no codec for it, and one
element is exactly what the settlement journal stores (:func:`batch_element` writes it,
:func:`batch_op` reads it back). Its keys are kept as the journal has always had them, so
a journal written by an older node replays unchanged.

Units: money in integer nano-USD (``*_nanos``), prices in integer micro-USD per million
tokens (:class:`~alicode_gw.money.catalog.Prices`), token counts in :class:`Usage`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, ClassVar, Generic, TypeVar

import asyncpg

from alicode_gw import jsontext
from alicode_gw.money.catalog import Prices, price_columns, prices_from_row

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one request, by kind (the upstream's ``usage``)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_5m: int = 0
    cache_creation_1h: int = 0
    cache_read: int = 0

    def counts(self) -> dict[str, int]:
        """The counts by field name (a shallow ``asdict``, which deep-copies)."""
        return {name: getattr(self, name) for name in self.__slots__}


# --- the request path's operations (elements of billing.apply_batch) ----------------------


@dataclass(frozen=True, slots=True)
class HoldOp:
    """``billing.hold``: reserve the request's worst case from the account's free balance."""

    KIND: ClassVar[str] = "hold"
    request_id: str
    key_id: int
    model: str  # as the client named it
    estimated_input_tokens: int
    max_tokens: int
    client_ip: str
    batch: bool = False


@dataclass(frozen=True, slots=True)
class SettleOp:
    """``billing.settle``: bill the usage of a request that has a hold row, once."""

    KIND: ClassVar[str] = "settle"
    request_id: str
    usage: Usage
    estimated: bool = False
    hit_pct: int | None = None  # a response cache hit: billed at this % of usage's cost


@dataclass(frozen=True, slots=True)
class SettleLeasedOp:
    """``billing.settle_leased``: bill a request admitted against credit lease
    ``lease_id`` (no hold row), once, at the node's ``prices`` (no discount); at most
    ``reserved_nanos`` (its worst case) comes out of the lease."""

    KIND: ClassVar[str] = "settle_leased"
    request_id: str
    lease_id: int
    key_id: int
    requested_model: str
    model: str  # the priced model
    client_ip: str
    reserved_nanos: int
    prices: Prices
    usage: Usage
    estimated: bool = False
    hit_pct: int | None = None  # as SettleOp's


@dataclass(frozen=True, slots=True)
class ReleaseOp:
    """``billing.release``: the request produced nothing billable; give its hold back."""

    KIND: ClassVar[str] = "release"
    request_id: str


BatchOp = HoldOp | SettleOp | SettleLeasedOp | ReleaseOp


class HoldOutcome(StrEnum):
    HELD = "held"
    DUPLICATE = "duplicate"  # this request id holds already
    INSUFFICIENT = "insufficient"
    OVER_CAP = "over_cap"  # the key's spend and open holds have reached its spend cap
    UNKNOWN_MODEL = "unknown_model"
    UNKNOWN_KEY = "unknown_key"


class SettleOutcome(StrEnum):
    SETTLED = "settled"
    ALREADY_SETTLED = "already_settled"
    RELEASED = "released"  # the hold was released: not billed
    UNKNOWN = "unknown"  # no such hold
    UNKNOWN_KEY = "unknown_key"  # settle_leased only


class ReleaseOutcome(StrEnum):
    RELEASED = "released"
    ALREADY_RELEASED = "already_released"
    SETTLED = "settled"  # too late: it was billed
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class HoldResult:
    """``amount_nanos``: what was (or, when insufficient, would have been) reserved.
    ``prices``: the snapshot the request is billed at, when it holds."""

    outcome: HoldOutcome
    priced_model: str | None
    amount_nanos: int
    prices: Prices | None


@dataclass(frozen=True, slots=True)
class SettleResult:
    """``revoked_public_id``: the key this charge took to its spend cap, if it did."""

    outcome: SettleOutcome
    charged_nanos: int
    revoked_public_id: str | None


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    outcome: ReleaseOutcome


BatchResult = HoldResult | SettleResult | ReleaseResult


def batch_element(op: BatchOp) -> dict[str, Any]:
    """``op`` as an element of ``billing.apply_batch``'s array (the ``billing.batch_op``
    type's keys), and as the journal stores it."""
    match op:
        case HoldOp():
            return {
                "op": op.KIND,
                "request_id": op.request_id,
                "key_id": op.key_id,
                "model": op.model,
                "estimated_input": op.estimated_input_tokens,
                "max_tokens": op.max_tokens,
                "client_ip": op.client_ip,
                "batch": op.batch,
            }
        case SettleOp():
            return {
                "op": op.KIND,
                "request_id": op.request_id,
                "estimated": op.estimated,
                **op.usage.counts(),
                **_hit(op.hit_pct),
            }
        case SettleLeasedOp():
            return {
                "op": op.KIND,
                "request_id": op.request_id,
                "estimated": op.estimated,
                **op.usage.counts(),
                "lease_id": op.lease_id,
                "key_id": op.key_id,
                "requested_model": op.requested_model,
                "model": op.model,
                "client_ip": op.client_ip,
                "reserved": op.reserved_nanos,
                **price_columns(op.prices),
                **_hit(op.hit_pct),
            }
        case ReleaseOp():
            return {"op": op.KIND, "request_id": op.request_id}


def _hit(hit_pct: int | None) -> dict[str, int]:
    """The key of a response cache hit's settlement (absent otherwise, as in journals
    written before it existed)."""
    return {} if hit_pct is None else {"hit_pct": hit_pct}


class MalformedOperation(ValueError):
    """A journaled element that is no operation of this contract."""


def batch_op(element: Mapping[str, Any]) -> BatchOp:
    """The operation :func:`batch_element` wrote (e.g. read back from the journal)."""
    try:
        return _batch_op(element)
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedOperation(f"not a billing operation: {element!r}") from exc


def _batch_op(element: Mapping[str, Any]) -> BatchOp:
    kind = element["op"]
    if kind == HoldOp.KIND:
        return HoldOp(
            request_id=element["request_id"],
            key_id=element["key_id"],
            model=element["model"],
            estimated_input_tokens=element["estimated_input"],
            max_tokens=element["max_tokens"],
            client_ip=element["client_ip"],
            batch=bool(element.get("batch", False)),
        )
    if kind == ReleaseOp.KIND:
        return ReleaseOp(element["request_id"])
    usage = Usage(**{name: int(element.get(name) or 0) for name in Usage.__slots__})
    estimated = bool(element.get("estimated", False))
    hit = element.get("hit_pct")
    hit_pct = None if hit is None else int(hit)
    if kind == SettleOp.KIND:
        return SettleOp(element["request_id"], usage, estimated, hit_pct)
    if kind == SettleLeasedOp.KIND:
        return SettleLeasedOp(
            request_id=element["request_id"],
            lease_id=element["lease_id"],
            key_id=element["key_id"],
            requested_model=element["requested_model"],
            model=element["model"],
            client_ip=element["client_ip"],
            reserved_nanos=element["reserved"],
            prices=prices_from_row({**element, "batch_discount_pct": 0}),
            usage=usage,
            estimated=estimated,
            hit_pct=hit_pct,
        )
    raise ValueError(f"unknown billing operation {kind!r}")


def batch_result(op: BatchOp, row: Mapping[str, Any]) -> BatchResult:
    """``op``'s row of ``billing.apply_batch``'s answer, typed."""
    match op:
        case HoldOp():
            outcome = HoldOutcome(row["outcome"])
            holds = outcome in (HoldOutcome.HELD, HoldOutcome.DUPLICATE)
            return HoldResult(
                outcome,
                row["priced_model"],
                row["amount_nanos"],
                prices_from_row(row) if holds else None,
            )
        case SettleOp() | SettleLeasedOp():
            return SettleResult(
                SettleOutcome(row["outcome"]), row["amount_nanos"], row["revoked_public_id"]
            )
        case ReleaseOp():
            return ReleaseResult(ReleaseOutcome(row["outcome"]))


# --- calls ------------------------------------------------------------------------------


class Call(Generic[R]):
    """An operation that is one SQL function call. Subclasses are dataclasses whose
    fields are the function's parameters without their ``p_`` prefix."""

    __slots__ = ()
    FUNCTION: ClassVar[str]

    def arguments(self) -> dict[str, Any]:
        """The parameters by name (without ``p_``), in the function's order."""
        return {field.name: getattr(self, field.name) for field in fields(self)}  # type: ignore[arg-type]

    def result(self, rows: Sequence[asyncpg.Record]) -> R:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class SqlCall:
    sql: str
    args: tuple[Any, ...]


def sql_call(op: Call[Any]) -> SqlCall:
    """The statement that performs ``op``: its function, every argument named."""
    arguments = op.arguments()
    named = ", ".join(f"p_{name} => ${i}" for i, name in enumerate(arguments, 1))
    return SqlCall(f"SELECT * FROM {op.FUNCTION}({named})", tuple(arguments.values()))


async def call(db: asyncpg.Pool | asyncpg.Connection, op: Call[R]) -> R:
    """Run ``op``; its typed result."""
    statement = sql_call(op)
    return op.result(await db.fetch(statement.sql, *statement.args))


@dataclass(frozen=True, slots=True)
class ApplyBatch(Call[list[BatchResult | None]]):
    """Apply ``ops`` in one transaction; a hold expires ``ttl_seconds`` after it is made,
    and belongs to ``node`` (given back when that node stops beating; None: at its
    expiry only). The result has one entry per op, in order (None: the database gave no
    row for it)."""

    FUNCTION: ClassVar[str] = "billing.apply_batch"
    ops: tuple[BatchOp, ...]
    ttl_seconds: float
    node: str | None = None

    def arguments(self) -> dict[str, Any]:
        elements = [{**batch_element(op), "i": i} for i, op in enumerate(self.ops)]
        return {
            "ops": jsontext.dumps(elements),
            "ttl_seconds": self.ttl_seconds,
            "node": self.node,
        }

    def result(self, rows: Sequence[asyncpg.Record]) -> list[BatchResult | None]:
        by_ord = {row["ord"]: row for row in rows}
        return [
            batch_result(op, by_ord[i]) if i in by_ord else None for i, op in enumerate(self.ops)
        ]


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    lease_id: int
    amount_nanos: int


@dataclass(frozen=True, slots=True)
class LeaseOpen(Call[LeaseGrant | None]):
    """Lease ``owner`` least(``want_nanos``, ``max_pct`` % of the account's free balance),
    if that is at least ``min_nanos``; None: nothing leased."""

    FUNCTION: ClassVar[str] = "billing.lease_open"
    account_id: int
    owner: str
    want_nanos: int
    min_nanos: int
    max_pct: int
    ttl_seconds: float

    def result(self, rows: Sequence[asyncpg.Record]) -> LeaseGrant | None:
        return LeaseGrant(rows[0]["lease_id"], rows[0]["amount_nanos"]) if rows else None


@dataclass(frozen=True, slots=True)
class LeaseGrow(Call[int | None]):
    """Add up to ``add_nanos`` to an open lease (within ``max_pct``) and renew it; the
    amount added, None when the lease is no longer open."""

    FUNCTION: ClassVar[str] = "billing.lease_grow"
    lease_id: int
    add_nanos: int
    max_pct: int
    ttl_seconds: float

    def result(self, rows: Sequence[asyncpg.Record]) -> int | None:
        return rows[0][0]


@dataclass(frozen=True, slots=True)
class LeaseShrink(Call[int]):
    """Give up to ``amount_nanos`` of an open lease back; the amount given back."""

    FUNCTION: ClassVar[str] = "billing.lease_shrink"
    lease_id: int
    amount_nanos: int

    def result(self, rows: Sequence[asyncpg.Record]) -> int:
        return int(rows[0][0])


@dataclass(frozen=True, slots=True)
class LeaseRenew(Call[dict[int, int]]):
    """Push back the expiry of those of ``lease_ids`` still open; those, with the amount
    each has in it."""

    FUNCTION: ClassVar[str] = "billing.lease_renew"
    lease_ids: tuple[int, ...]
    ttl_seconds: float

    def arguments(self) -> dict[str, Any]:
        return {"lease_ids": list(self.lease_ids), "ttl_seconds": self.ttl_seconds}

    def result(self, rows: Sequence[asyncpg.Record]) -> dict[int, int]:
        return {row["id"]: row["amount_nanos"] for row in rows}


@dataclass(frozen=True, slots=True)
class LeaseClose(Call[int]):
    """Give an open lease's money back; the amount given back (0: it was not open)."""

    FUNCTION: ClassVar[str] = "billing.lease_close"
    lease_id: int

    def result(self, rows: Sequence[asyncpg.Record]) -> int:
        return int(rows[0][0])


# --- nodes (sql/functions/billing_nodes.sql) -------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeBeat(Call[None]):
    """Node ``node`` is alive (its first beat registers it)."""

    FUNCTION: ClassVar[str] = "billing.node_beat"
    node: str

    def result(self, rows: Sequence[asyncpg.Record]) -> None:
        return None


@dataclass(frozen=True, slots=True)
class NodeRetire(Call[bool]):
    """Node ``node`` is known to be dead: the next sweep gives back its holds and leases
    at once. Whether the database knew the node."""

    FUNCTION: ClassVar[str] = "billing.node_retire"
    node: str

    def result(self, rows: Sequence[asyncpg.Record]) -> bool:
        return bool(rows[0][0])


@dataclass(frozen=True, slots=True)
class ExpireDeadNodes(Call[int]):
    """Give back the holds and close the leases of the nodes whose heartbeat is older
    than ``window_seconds``; how many (holds and leases)."""

    FUNCTION: ClassVar[str] = "billing.expire_dead_nodes"
    window_seconds: float

    def result(self, rows: Sequence[asyncpg.Record]) -> int:
        return int(rows[0][0])
