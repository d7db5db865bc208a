"""Anthropic's Message Batches objects as the gateway renders them (pure): the
``message_batch`` object of a stored batch, a list page, the delete answer, and the
results lines of a batch the upstream never accepted. Only the gateway's own id and
``results_url`` appear: never the upstream's id, URL or credential."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

BATCH_ID_PREFIX = "msgbatch_"
NOT_SUBMITTED_MESSAGE = (
    "This request has no result: its batch was never accepted upstream, or is gone there. "
    "It was not billed."
)


@dataclass(frozen=True, slots=True)
class Batch:
    """One row of ``message_batches`` (sql/migrations/011_batches.sql)."""

    id: str
    account_id: int
    key_id: int
    upstream_id: str | None
    credential_id: int | None
    status: str  # submitting | in_progress | canceling | ended
    settlement: str  # open | settled | released
    request_count: int
    succeeded: int
    errored: int
    canceled: int
    expired: int
    request_models: dict[str, str]  # custom_id -> priced model
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    cancel_initiated_at: datetime | None
    archived_at: datetime | None
    polls: int


def rfc3339(when: datetime | None) -> str | None:
    if when is None:
        return None
    return when.isoformat().replace("+00:00", "Z")


def results_path(batch_id: str) -> str:
    return f"/v1/messages/batches/{batch_id}/results"


def processing_status(batch: Batch) -> str:
    """What the customer sees: ``submitting`` is ``in_progress`` to them."""
    return "in_progress" if batch.status == "submitting" else batch.status


def batch_json(batch: Batch, base_url: str) -> dict[str, Any]:
    """The ``message_batch`` object; ``results_url`` (on the gateway) once ended."""
    ended = batch.status == "ended"
    done = batch.succeeded + batch.errored + batch.canceled + batch.expired
    return {
        "id": batch.id,
        "type": "message_batch",
        "processing_status": processing_status(batch),
        "request_counts": {
            "processing": batch.request_count - done if not ended else 0,
            "succeeded": batch.succeeded,
            "errored": batch.errored,
            "canceled": batch.canceled,
            "expired": batch.expired,
        },
        "ended_at": rfc3339(batch.ended_at),
        "created_at": rfc3339(batch.created_at),
        "expires_at": rfc3339(batch.expires_at),
        "archived_at": rfc3339(batch.archived_at),
        "cancel_initiated_at": rfc3339(batch.cancel_initiated_at),
        "results_url": base_url + results_path(batch.id) if ended else None,
    }


def list_page(batches: Sequence[Batch], has_more: bool, base_url: str) -> dict[str, Any]:
    """One page of ``GET /v1/messages/batches`` (newest first)."""
    return {
        "data": [batch_json(b, base_url) for b in batches],
        "has_more": has_more,
        "first_id": batches[0].id if batches else None,
        "last_id": batches[-1].id if batches else None,
    }


def deleted_json(batch_id: str) -> dict[str, str]:
    return {"id": batch_id, "type": "message_batch_deleted"}


def not_submitted_lines(batch: Batch) -> Iterator[bytes]:
    """The results of a released batch (its submission failed for good, or the upstream
    lost it): every request errored."""
    error = {
        "type": "error",
        "error": {"type": "api_error", "message": NOT_SUBMITTED_MESSAGE},
    }
    for custom_id in batch.request_models:
        line = {"custom_id": custom_id, "result": {"type": "errored", "error": error}}
        yield json.dumps(line, separators=(",", ":")).encode() + b"\n"
