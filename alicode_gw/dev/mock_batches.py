"""The mock upstream's Message Batches API (``/v1/messages/batches``), as Anthropic's:
``message_batch`` objects, status ``in_progress`` → ``ended`` after
:attr:`MockBatches.process_seconds` (``canceling`` → ``ended`` after
:attr:`MockBatches.cancel_seconds`, the unfinished requests canceled), expiry after
:attr:`MockBatches.expire_seconds` (24 h, a test shortens it: the unfinished requests
expire), results as JSONL (``application/binary``) once ended. Request counts move from
``processing`` only when the batch ends, as the API documents. Each request is answered
as ``POST /v1/messages`` would answer it (same deterministic answers and usage; a
``[[mock: status=N]]`` directive in a request's prompt makes it ``errored``; in the
first request's prompt it also fails the submission, on the ``only_key`` credentials if
named). Batches are visible to the credential that created them only."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from alicode_gw.dev.mock_answers import (
    RequestError,
    build_answer,
    error_body,
    invalid,
    message_json,
    new_id,
    parse_directives,
    status_error,
)
from alicode_gw.dev.mock_cache import PromptCache

BATCHES_PATH = "/v1/messages/batches"
RESULTS_CONTENT_TYPE = "application/binary"


@dataclass(slots=True)
class MockBatch:
    id: str
    owner: str
    requests: list[dict[str, Any]]
    created: float  # time.monotonic()
    created_at: datetime
    status: str = "in_progress"
    cancel_at: float | None = None
    cancel_initiated_at: datetime | None = None
    ended_at: datetime | None = None
    results: list[dict[str, Any]] = field(default_factory=list)


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat().replace("+00:00", "Z")


class MockBatches:
    """The batch store of one :class:`~alicode_gw.dev.mock_upstream.MockUpstream`."""

    def __init__(self, validate: Any, cache_of: Callable[[str], PromptCache]) -> None:
        self._validate = validate  # the mock's /v1/messages validation
        self._cache_of = cache_of  # the prompt cache of an upstream key's cache group
        self.process_seconds = 0.5
        self.cancel_seconds = 0.2
        self.expire_seconds = 24 * 3600.0
        self.batches: dict[str, MockBatch] = {}

    # ------------------------------------------------------------ state

    def _advance(self, batch: MockBatch) -> None:
        """Apply the transitions due by now."""
        if batch.status == "ended":
            return
        now = time.monotonic()
        expires = batch.created + self.expire_seconds
        done = batch.created + self.process_seconds
        events: list[tuple[float, str | None]] = [(done, None), (expires, "expired")]
        if batch.status == "canceling" and batch.cancel_at is not None:
            events.append((batch.cancel_at + self.cancel_seconds, "canceled"))
        when, unfinished = min(events, key=lambda event: event[0])
        if now >= when:
            self._end(batch, unfinished)

    def _end(self, batch: MockBatch, unfinished: str | None) -> None:
        """End the batch: every request answered, or (``unfinished``) canceled/expired."""
        for item in batch.requests:
            if unfinished is not None:
                result: dict[str, Any] = {"type": unfinished}
            else:
                result = self._answer(item["params"], batch.owner)
            batch.results.append({"custom_id": item["custom_id"], "result": result})
        batch.status = "ended"
        batch.ended_at = datetime.now(UTC)

    def _answer(self, params: dict[str, Any], owner: str) -> dict[str, Any]:
        try:
            body = self._validate(params)
            directives = parse_directives(None, body)
            if directives.status is not None and directives.faults_apply(owner):
                raise status_error(directives.status)
        except RequestError as err:
            return {"type": "errored", "error": error_body(err.etype, err.message, None)}
        answer = build_answer(body, directives)
        msg = message_json(
            new_id("msg_01", 22), body["model"], answer, self._cache_of(owner).usage(body)
        )
        return {"type": "succeeded", "message": msg}

    def to_json(self, batch: MockBatch, base_url: str) -> dict[str, Any]:
        self._advance(batch)
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if batch.status == "ended":
            for line in batch.results:
                counts[line["result"]["type"]] += 1
        else:
            counts["processing"] = len(batch.requests)
        ended = batch.status == "ended"
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": batch.status,
            "request_counts": counts,
            "ended_at": _iso(batch.ended_at),
            "created_at": _iso(batch.created_at),
            "expires_at": _iso(batch.created_at + timedelta(seconds=self.expire_seconds)),
            "archived_at": None,
            "cancel_initiated_at": _iso(batch.cancel_initiated_at),
            "results_url": f"{base_url}{BATCHES_PATH}/{batch.id}/results" if ended else None,
        }

    # ------------------------------------------------------------ the API

    def find(self, batch_id: str, owner: str) -> MockBatch:
        batch = self.batches.get(batch_id)
        if batch is None or batch.owner != owner:
            raise RequestError(404, "not_found_error", f"message_batch: {batch_id} not found")
        return batch

    def create(self, body: Any, owner: str) -> MockBatch:
        if not isinstance(body, dict):
            raise invalid("Request body must be a JSON object")
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise invalid("requests: Input should be a non-empty list")
        seen: set[str] = set()
        for n, item in enumerate(requests):
            if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
                raise invalid(f"requests.{n}.custom_id: Field required")
            if item["custom_id"] in seen:
                raise invalid(f"requests.{n}.custom_id: must be unique within the batch")
            seen.add(item["custom_id"])
            if not isinstance(item.get("params"), dict):
                raise invalid(f"requests.{n}.params: Field required")
            if item["params"].get("stream") is True:
                raise invalid(f"requests.{n}.params.stream: streaming is not supported")
        batch = MockBatch(
            id=new_id("msgbatch_01", 22),
            owner=owner,
            requests=requests,
            created=time.monotonic(),
            created_at=datetime.now(UTC),
        )
        self.batches[batch.id] = batch
        return batch

    def listing(self, owner: str, query: Any, base_url: str) -> dict[str, Any]:
        items = [b for b in reversed(self.batches.values()) if b.owner == owner]
        limit = int(query.get("limit", "20"))
        ids = [b.id for b in items]
        if "after_id" in query and query["after_id"] in ids:
            items = items[ids.index(query["after_id"]) + 1 :]
        page = items[:limit]
        return {
            "data": [self.to_json(b, base_url) for b in page],
            "has_more": len(items) > limit,
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
        }

    def cancel(self, batch: MockBatch) -> None:
        self._advance(batch)
        if batch.status == "ended":
            raise invalid(f"Batch {batch.id} has already ended and cannot be canceled.")
        if batch.status == "in_progress":
            batch.status = "canceling"
            batch.cancel_at = time.monotonic()
            batch.cancel_initiated_at = datetime.now(UTC)

    def delete(self, batch: MockBatch) -> dict[str, str]:
        self._advance(batch)
        if batch.status != "ended":
            raise invalid(
                f"Batch {batch.id} cannot be deleted while it is in progress; cancel it first."
            )
        del self.batches[batch.id]
        return {"id": batch.id, "type": "message_batch_deleted"}

    def results(self, batch: MockBatch) -> bytes:
        self._advance(batch)
        if batch.status != "ended":
            raise invalid(f"Batch {batch.id} has not ended; results are not available yet.")
        return b"".join(
            json.dumps(line, separators=(",", ":")).encode() + b"\n" for line in batch.results
        )
