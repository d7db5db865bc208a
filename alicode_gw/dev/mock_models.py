"""The mock upstream's model list: what its ``GET /v1/models`` serves by default, in
the API's current ``ModelInfo`` shape."""

from __future__ import annotations

from typing import Any

# (id, display name, created_at), newest first like the real /v1/models.
MODELS: tuple[tuple[str, str, str], ...] = (
    ("claude-opus-4-7", "Claude Opus 4.7", "2026-04-16T00:00:00Z"),
    ("claude-sonnet-4-6", "Claude Sonnet 4.6", "2026-02-17T00:00:00Z"),
    ("claude-opus-4-6", "Claude Opus 4.6", "2026-02-05T00:00:00Z"),
    ("claude-opus-4-5", "Claude Opus 4.5", "2025-11-24T00:00:00Z"),
    ("claude-haiku-4-5", "Claude Haiku 4.5", "2025-10-15T00:00:00Z"),
    ("claude-sonnet-4-5", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
)


def _supported(value: bool = True) -> dict[str, bool]:
    return {"supported": value}


def model_json(model_id: str, display_name: str, created_at: str) -> dict[str, Any]:
    """A ``ModelInfo`` as the API's ``GET /v1/models`` returns it today."""
    opus = "opus" in model_id
    return {
        "type": "model",
        "id": model_id,
        "display_name": display_name,
        "created_at": created_at,
        "max_input_tokens": 200_000,
        "max_tokens": 128_000 if opus else 64_000,
        "capabilities": {
            "batch": _supported(),
            "citations": _supported(),
            "code_execution": _supported(),
            "context_management": _supported(),
            "effort": {
                **_supported(opus),
                **{level: _supported(opus) for level in ("low", "medium", "high", "max")},
            },
            "image_input": _supported(),
            "pdf_input": _supported(),
            "structured_outputs": _supported(),
            "thinking": {
                **_supported(),
                "types": {"adaptive": _supported(), "enabled": _supported()},
            },
        },
    }
