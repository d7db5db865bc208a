"""The mock upstream's prompt cache on fixtures (pure: no server, a fixed clock)."""

from __future__ import annotations

from typing import Any

from alicode_gw.dev.mock_cache import PromptCache

MODEL = "claude-sonnet-4-6"
CC = {"type": "ephemeral"}
OPENING = {"type": "text", "text": "Code carefully. " * 1000}  # past the 1024 minimum


def agent_step(calls: int) -> dict[str, Any]:
    """The opening turn, then one agent step: ``calls`` tool calls, their results and
    a prompt marked for caching (``2 * calls + 1`` content blocks after the opening)."""
    uses = [
        {"type": "tool_use", "id": f"toolu_{n:02}", "name": "Read", "input": {}}
        for n in range(calls)
    ]
    results = [
        {"type": "tool_result", "tool_use_id": f"toolu_{n:02}", "content": "ok"}
        for n in range(calls)
    ]
    return {
        "model": MODEL,
        "max_tokens": 20,
        "messages": [
            {"role": "user", "content": [OPENING]},
            {"role": "assistant", "content": uses},
            {
                "role": "user",
                "content": [*results, {"type": "text", "text": "go on", "cache_control": CC}],
            },
        ],
    }


def test_lookback_counts_content_blocks_not_messages() -> None:
    """A breakpoint finds a cached prefix up to 20 content blocks back, however many
    messages those blocks are spread over (a message is not a block)."""
    first = {
        "model": MODEL,
        "max_tokens": 20,
        "messages": [{"role": "user", "content": [{**OPENING, "cache_control": CC}]}],
    }
    for calls, reached in ((9, True), (10, False)):  # 19 / 21 blocks after the opening
        cache = PromptCache(clock=lambda: 0.0)
        written = cache.usage(first).cache_creation_input_tokens
        assert written > 1024
        read = cache.usage(agent_step(calls)).cache_read_input_tokens
        assert read == (written if reached else 0), calls
