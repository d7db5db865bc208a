"""Pure answer building for the mock Anthropic upstream (no I/O).

Everything here is deterministic given the request body, except ids (message and
tool-use ids are random like the real API's). `alicode_gw.dev.mock_upstream` wraps it in
an HTTP server; the shapes here follow Anthropic's Messages API wire format.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from alicode_gw.dev.mock_cache import (
    CacheUsage,
    PromptCache,
    canonical_json,
    count_input_tokens,
)

__all__ = [
    "Answer",
    "CacheUsage",
    "DirectiveError",
    "Directives",
    "PromptCache",
    "RequestError",
    "build_answer",
    "count_input_tokens",
    "error_body",
    "invalid",
    "message_json",
    "named_error",
    "new_id",
    "parse_directives",
    "status_error",
    "stream_events",
]

_VOCAB: tuple[str, ...] = (
    "amber", "basil", "cedar", "delta", "ember", "fjord", "gamma", "harbor",
    "iris", "juniper", "kelp", "lumen", "maple", "nectar", "onyx", "prism",
    "quartz", "river", "saffron", "tundra", "umber", "velvet", "willow", "xenon",
    "yarrow", "zephyr", "anchor", "breeze", "canyon", "dune", "echo", "fable",
    "glacier", "hollow", "island", "jasper", "kernel", "lagoon", "meadow", "nimbus",
    "orchid", "pebble", "quill", "ridge", "summit", "timber", "upland", "vista",
    "wander", "yonder", "zenith", "arbor", "beacon", "cobalt", "drift", "falcon",
    "garnet", "heron", "indigo", "lantern", "mosaic", "north", "opal", "pine",
)  # fmt: skip

_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_DIRECTIVE_RE = re.compile(r"\[\[mock:([^\]]*)\]\]")
_INT_KEYS = frozenset(
    {"status", "retry_after", "drop_after", "error_after", "first_byte_delay_ms",
     "chunk_delay_ms", "words"}
)  # fmt: skip
_FAULT_STATUSES = frozenset({400, 401, 403, 404, 413, 429, 500, 529})
# ``error=NAME``: an error the API sends with its own wording (status, type, message).
_NAMED_ERRORS: Mapping[str, tuple[int, str, str]] = MappingProxyType({
    "credit_balance": (
        400,
        "invalid_request_error",
        "Your credit balance is too low to access the Anthropic API. "
        "Please go to Plans & Billing to upgrade or purchase credits.",
    ),
    "usage_limit": (
        400,
        "invalid_request_error",
        "You have reached your specified API usage limits. "
        "You will regain access on 2027-01-01 at 00:00 UTC.",
    ),
})  # fmt: skip
DEFAULT_WORDS = 12
THINKING_WORDS = 8
_JSON_PIECE = 7


def new_id(prefix: str, n: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(n))


def _dumps(obj: Any) -> str:
    """Compact JSON, as the real API writes it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------- errors


class RequestError(Exception):
    """A request the API would reject: becomes an Anthropic-shaped error response."""

    def __init__(
        self, status: int, etype: str, message: str, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.etype = etype
        self.message = message
        self.retry_after = retry_after


def invalid(message: str) -> RequestError:
    """A 400 invalid_request_error."""
    return RequestError(400, "invalid_request_error", message)


class DirectiveError(RequestError):
    def __init__(self, message: str) -> None:
        super().__init__(400, "invalid_request_error", f"mock directive: {message}")


_STATUS_ERRORS: Mapping[int, tuple[str, str]] = MappingProxyType({
    400: ("invalid_request_error", "Invalid request"),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "Not found"),
    405: ("invalid_request_error", "Method not allowed"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "This request would exceed the rate limit for your organization."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
})  # fmt: skip


def status_error(status: int, retry_after: int | None = None) -> RequestError:
    """The error the API sends with `status` (429s default to ``retry-after: 1``)."""
    etype, message = _STATUS_ERRORS.get(status, ("api_error", "Internal server error"))
    if status == 429 and retry_after is None:
        retry_after = 1
    return RequestError(status, etype, message, retry_after)


def named_error(name: str) -> RequestError:
    """The error ``error=name`` asks for (see ``_NAMED_ERRORS``)."""
    status, etype, message = _NAMED_ERRORS[name]
    return RequestError(status, etype, message)


def error_body(etype: str, message: str, request_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "error", "error": {"type": etype, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return body


# ---------------------------------------------------------------- directives


@dataclass(frozen=True, slots=True)
class Directives:
    """Per-request behaviour a test asked for (header ``x-mock-fault`` or prompt text)."""

    status: int | None = None
    error: str | None = None
    retry_after: int | None = None
    only_key: tuple[str, ...] = ()
    drop_after: int | None = None
    error_after: int | None = None
    first_byte_delay_ms: int = 0
    chunk_delay_ms: int = 0
    words: int | None = None
    mode: str | None = None

    def faults_apply(self, api_key: str | None) -> bool:
        """Whether the faults (status, error, drops, delays) hit this credential."""
        return not self.only_key or api_key in self.only_key


def _parse_pairs(text: str, into: dict[str, str]) -> None:
    for token in text.split():
        key, sep, value = token.partition("=")
        if not sep or not key or not value:
            raise DirectiveError(f"expected key=value, got {token!r}")
        into[key] = value


def _last_user_text(body: dict[str, Any] | None) -> str:
    messages = body.get("messages") if body else None
    if not isinstance(messages, list):
        return ""
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "\n".join(
                    b["text"]
                    for b in content
                    if isinstance(b, dict)
                    and b.get("type") == "text"
                    and isinstance(b.get("text"), str)
                )
            return ""
    return ""


def parse_directives(header: str | None, body: dict[str, Any] | None) -> Directives:
    """Merge ``[[mock: k=v ...]]`` found in the last user message with the header.

    The header (same ``k=v k=v`` syntax, without the brackets) wins on conflicts.
    Unknown keys or malformed values raise `DirectiveError` (a 400), so that a typo in
    a test fails loudly instead of silently doing nothing.
    """
    raw: dict[str, str] = {}
    for match in _DIRECTIVE_RE.finditer(_last_user_text(body)):
        _parse_pairs(match.group(1), raw)
    if header:
        _parse_pairs(header, raw)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _INT_KEYS:
            if not (value.isascii() and value.isdigit()):
                raise DirectiveError(f"{key} must be a non-negative integer")
            values[key] = int(value)
        elif key == "only_key":
            values[key] = tuple(k for k in value.split(",") if k)
        elif key == "error":
            if value not in _NAMED_ERRORS:
                raise DirectiveError(f"error must be one of {sorted(_NAMED_ERRORS)}")
            values[key] = value
        elif key == "mode":
            if value not in ("tool", "text"):
                raise DirectiveError("mode must be tool or text")
            values[key] = value
        else:
            raise DirectiveError(f"unknown key {key!r}")
    status = values.get("status")
    if status is not None and status not in _FAULT_STATUSES:
        raise DirectiveError(f"status must be one of {sorted(_FAULT_STATUSES)}")
    return Directives(**values)


# ---------------------------------------------------------------- answers


@dataclass(slots=True)
class Answer:
    blocks: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = "end_turn"
    stop_sequence: str | None = None
    output_tokens: int = 0


def _words(seed: bytes, salt: bytes, n: int) -> list[str]:
    base = hashlib.sha256(salt + seed).digest()
    out = []
    for i in range(n):
        h = hashlib.sha256(base + i.to_bytes(4, "big")).digest()
        out.append(_VOCAB[h[0] % len(_VOCAB)])
    return out


def _fake_value(schema: Any, seed: bytes, path: str, depth: int = 0) -> Any:
    if not isinstance(schema, dict):
        return _words(seed, path.encode(), 1)[0]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    stype = schema.get("type")
    if isinstance(stype, list):
        stype = next((t for t in stype if t != "null"), "null")
    num = hashlib.sha256(path.encode() + seed).digest()[0]
    if stype == "integer":
        return 1 + num % 100
    if stype == "number":
        return (num % 100) + 0.5
    if stype == "boolean":
        return num % 2 == 0
    if stype == "null":
        return None
    if stype == "array":
        return [] if depth > 3 else [_fake_value(schema.get("items"), seed, path + "[]", depth + 1)]
    if stype == "object" or "properties" in schema:
        props = schema.get("properties")
        if depth > 3 or not isinstance(props, dict):
            return {}
        return {k: _fake_value(v, seed, f"{path}.{k}", depth + 1) for k, v in props.items()}
    return " ".join(_words(seed, path.encode(), 2))


def _chosen_tool(body: dict[str, Any], directives: Directives) -> dict[str, Any] | None:
    """The client tool to call, or None for a text answer."""
    tools = [
        t for t in body.get("tools") or () if isinstance(t, dict) and isinstance(t.get("name"), str)
        and "input_schema" in t
    ]  # fmt: skip
    if not tools:
        return None
    choice = body.get("tool_choice") if isinstance(body.get("tool_choice"), dict) else {}
    ctype = choice.get("type")
    if ctype == "none":
        return None
    if ctype == "tool":
        return next((t for t in tools if t["name"] == choice.get("name")), tools[0])
    if ctype == "any" or directives.mode == "tool":
        return tools[0]
    return None


def build_answer(body: dict[str, Any], directives: Directives) -> Answer:
    """The deterministic answer to a validated /v1/messages body (one token per word)."""
    seed = canonical_json([body.get("system"), body.get("messages")])
    budget: int = body["max_tokens"]
    answer = Answer()
    truncated = False

    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        words = _words(seed, b"thinking", THINKING_WORDS)[:budget]
        truncated = len(words) < THINKING_WORDS
        text = "Let me think: " + " ".join(words)
        sig = base64.b64encode(hashlib.sha512(b"sig" + seed).digest() * 2).decode()
        answer.blocks.append({"type": "thinking", "thinking": text, "signature": sig})
        answer.output_tokens += len(words)
        budget -= len(words)

    tool = None if truncated else _chosen_tool(body, directives)
    choice = body.get("tool_choice")
    forced = isinstance(choice, dict) and choice.get("type") in ("any", "tool")
    if tool is not None:
        n_words = 0 if forced else 4
    elif directives.words is not None:
        n_words = directives.words
    else:
        n_words = DEFAULT_WORDS
    words = [] if truncated else _words(seed, b"text", n_words)
    stops = body.get("stop_sequences") or ()
    for i, word in enumerate(words):
        if word in stops and i < budget:
            words = words[:i]
            answer.stop_reason, answer.stop_sequence = "stop_sequence", word
            answer.output_tokens += 1  # the stop sequence itself was generated
            budget -= 1
            tool = None
            break
    if len(words) > budget:
        words, truncated = words[:budget], True
    if words:
        answer.blocks.append({"type": "text", "text": " ".join(words)})
        answer.output_tokens += len(words)
        budget -= len(words)

    if tool is not None and not truncated:
        tool_input = _fake_value(tool.get("input_schema"), seed, tool["name"])
        if not isinstance(tool_input, dict):
            tool_input = {}
        cost = max(1, math.ceil(len(json.dumps(tool_input)) / 4)) + 8
        if cost <= budget:
            answer.blocks.append(
                {
                    "type": "tool_use",
                    "id": new_id("toolu_01", 22),
                    "name": tool["name"],
                    "input": tool_input,
                }
            )
            answer.output_tokens += cost
            answer.stop_reason = "tool_use"
        else:
            truncated = True
    if truncated:
        answer.stop_reason = "max_tokens"
        answer.output_tokens = body["max_tokens"]
    return answer


def _usage(cache: CacheUsage, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": cache.input_tokens,
        "cache_creation_input_tokens": cache.cache_creation_input_tokens,
        "cache_read_input_tokens": cache.cache_read_input_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": cache.ephemeral_5m_input_tokens,
            "ephemeral_1h_input_tokens": cache.ephemeral_1h_input_tokens,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def message_json(msg_id: str, model: str, answer: Answer, cache: CacheUsage) -> dict[str, Any]:
    """The non-streaming Message object."""
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": answer.blocks,
        "stop_reason": answer.stop_reason,
        "stop_sequence": answer.stop_sequence,
        "stop_details": None,
        "usage": _usage(cache, answer.output_tokens),
    }


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _block_events(index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
    """content_block_start, its deltas and content_block_stop for one final block."""
    btype = block["type"]
    deltas: list[dict[str, Any]]
    if btype == "text":
        start: dict[str, Any] = {"type": "text", "text": ""}
        words = block["text"].split(" ")
        deltas = [
            {"type": "text_delta", "text": w if i == 0 else " " + w} for i, w in enumerate(words)
        ]
    elif btype == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
        words = block["thinking"].split(" ")
        chunks = [" ".join(words[i : i + 3]) for i in range(0, len(words), 3)]
        deltas = [
            {"type": "thinking_delta", "thinking": c if i == 0 else " " + c}
            for i, c in enumerate(chunks)
        ]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    else:  # tool_use: partial JSON as the API formats it ({"k": "v"}), first piece ""
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        raw = json.dumps(block["input"], ensure_ascii=False)
        deltas = [
            {"type": "input_json_delta", "partial_json": p}
            for p in ["", *_pieces(raw, _JSON_PIECE)]
        ]
    events: list[dict[str, Any]] = [
        {"type": "content_block_start", "index": index, "content_block": start}
    ]
    events += [{"type": "content_block_delta", "index": index, "delta": d} for d in deltas]
    events.append({"type": "content_block_stop", "index": index})
    return events


PING_DATA = '{"type": "ping"}'  # the real API writes this one with a space


def stream_events(
    msg_id: str, model: str, answer: Answer, cache: CacheUsage
) -> list[tuple[str, str]]:
    """The streaming event sequence as (event name, data JSON) pairs, in the API's order:
    message_start, content_block_start, ping, deltas..., content_block_stop, (more
    blocks), message_delta, message_stop."""
    start_msg = message_json(msg_id, model, Answer(), cache)
    start_msg["content"] = []
    start_msg["stop_reason"] = None
    start_msg["usage"]["output_tokens"] = 1
    out: list[tuple[str, str]] = [
        ("message_start", _dumps({"type": "message_start", "message": start_msg}))
    ]
    for i, block in enumerate(answer.blocks):
        for ev in _block_events(i, block):
            out.append((ev["type"], _dumps(ev)))
            if len(out) == 2:
                out.append(("ping", PING_DATA))
    if len(out) == 1:
        out.append(("ping", PING_DATA))
    delta = {
        "type": "message_delta",
        "delta": {
            "stop_reason": answer.stop_reason,
            "stop_sequence": answer.stop_sequence,
            "stop_details": None,
        },
        "usage": {
            "input_tokens": cache.input_tokens,
            "cache_creation_input_tokens": cache.cache_creation_input_tokens,
            "cache_read_input_tokens": cache.cache_read_input_tokens,
            "output_tokens": answer.output_tokens,
        },
    }
    out.append(("message_delta", _dumps(delta)))
    out.append(("message_stop", _dumps({"type": "message_stop"})))
    return out
