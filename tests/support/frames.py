"""What the coroutines of running tasks hold: for tests of what a request keeps alive."""

from __future__ import annotations

import asyncio
from typing import Any


def _contains(value: Any, marker: str, depth: int = 0) -> bool:
    if isinstance(value, str):
        return marker in value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return marker.encode() in bytes(value)
    if depth > 12:
        return False
    if isinstance(value, dict):
        return any(_contains(v, marker, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_contains(v, marker, depth + 1) for v in value)
    return False


def locals_holding(marker: str, through: str) -> list[str]:
    """``function.local`` of every frame, in the await chain of a task that passes
    through a function named ``through``, whose local holds ``marker`` (in a string,
    bytes, or a dict or list of them); raises if no such chain is running."""
    chains = []
    for task in asyncio.all_tasks():
        chain, coro = [], task.get_coro()
        while coro is not None and getattr(coro, "cr_frame", None) is not None:
            chain.append(coro.cr_frame)
            coro = coro.cr_await
        if any(frame.f_code.co_name == through for frame in chain):
            chains.append(chain)
    assert chains, f"no running task awaits {through}()"
    return [
        f"{frame.f_code.co_name}.{name}"
        for chain in chains
        for frame in chain
        for name, value in frame.f_locals.items()
        if _contains(value, marker)
    ]
