"""Helpers of the Message Batches tests (plain functions; the fixtures are in
tests/batches/conftest.py)."""

from __future__ import annotations

import asyncio
import time

import anthropic

from tests.support.customers import MODEL

# A batch loop that polls fast (the mock's batches end after a fraction of a second).
FAST_POLL = {"batch_poll_interval": 0.05, "batch_poll_max_interval": 0.2}


def requests_of(n: int, max_tokens: int = 64, prefix: str = "q") -> list[dict]:
    return [
        {
            "custom_id": f"{prefix}-{i}",
            "params": {
                "model": MODEL,
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": f"question number {i}"}],
            },
        }
        for i in range(n)
    ]


async def ended(client: anthropic.AsyncAnthropic, batch_id: str, wait: float = 30.0):
    """The batch once it has ended (and so been settled); fails after ``wait`` seconds
    (generous: the suite may share a loaded machine)."""
    deadline = time.monotonic() + wait
    while True:
        batch = await client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        assert time.monotonic() < deadline, f"{batch_id} not ended after {wait} s: {batch}"
        await asyncio.sleep(0.05)
