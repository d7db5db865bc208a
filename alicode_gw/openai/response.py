"""Anthropic responses -> OpenAI ``chat.completion`` and its chunk stream (pure, no I/O).

`to_openai` translates a whole ``Message``.

`StreamTranslator` takes the parsed events of an Anthropic stream one at a time
(:class:`alicode_gw.upstream.sse.SSEEvent`) and returns the bytes of the OpenAI chunks each one
produces, so chunks go out as upstream events arrive - nothing is buffered beyond
the event at hand. Shapes follow OpenAI's chunk object as the official ``openai``
SDK accumulates it (``openai.lib.streaming._deltas.accumulate_delta``): string
fields of a delta are *concatenated*, so ``role`` and a tool call's ``id``, ``type``
and ``function.name`` are sent exactly once.

Event mapping:

* ``message_start`` -> the first chunk, ``delta = {"role": "assistant", "content": ""}``;
* ``text`` blocks and ``text_delta`` -> ``delta.content``;
* a ``tool_use`` block -> a tool call with its own OpenAI ``index`` (0, 1, ... in order
  of appearance, not Anthropic's content-block index): its first chunk carries
  ``id``, ``type: "function"``, ``function.name`` and ``function.arguments: ""``, each
  non-empty ``input_json_delta`` then one ``function.arguments`` piece. A tool call
  that received no argument text (empty input) gets ``"{}"`` when its block stops,
  so the reassembled arguments parse as JSON like the non-streamed ``"{}"``;
* ``thinking`` / ``redacted_thinking`` blocks and their deltas (``thinking_delta``,
  ``signature_delta``), server-tool blocks and ``citations_delta`` produce nothing:
  an OpenAI message has no place for them and thinking never leaks into content;
* ``message_delta`` -> a chunk with an empty delta and ``finish_reason``
  (see `finish_reason`); its cumulative usage replaces the counts seen so far;
* ``ping``, ``content_block_stop`` (of non-tool blocks), ``message_stop`` -> nothing;
* ``error`` -> ``data: {"error": {"message", "type", "param", "code"}}``, the form the
  ``openai`` SDK turns into an ``openai.APIError``; the stream then ends there.

`StreamTranslator.finish` closes a stream that did not error: the finish chunk if
the upstream never sent ``message_delta``, then - with ``include_usage`` - a chunk
with ``choices: []`` and the ``usage`` object (every other chunk then carries
``"usage": null``, as OpenAI's do), then ``data: [DONE]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from alicode_gw.errors import (
    AuthenticationError,
    GatewayError,
    GatewayTimeoutError,
    InsufficientCreditsError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    UpstreamError,
    openai_body,
)
from alicode_gw.upstream.sse import SSEEvent

__all__ = [
    "DONE",
    "StreamTranslator",
    "StreamUsage",
    "error_from_anthropic",
    "finish_reason",
    "openai_usage",
    "to_openai",
]

DONE = b"data: [DONE]\n\n"

_FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_ERRORS: dict[str, type[GatewayError]] = {
    "invalid_request_error": InvalidRequestError,
    "authentication_error": AuthenticationError,
    "permission_error": PermissionDeniedError,
    "not_found_error": NotFoundError,
    "request_too_large": RequestTooLargeError,
    "rate_limit_error": RateLimitError,
    "insufficient_credits": InsufficientCreditsError,
    "timeout_error": GatewayTimeoutError,
    "overloaded_error": OverloadedError,
    "api_error": UpstreamError,
}


def finish_reason(stop_reason: Any) -> str:
    """OpenAI ``finish_reason`` for an Anthropic ``stop_reason``.

    ``end_turn``, ``stop_sequence`` (and ``pause_turn``) -> ``stop``; ``max_tokens``
    (and ``model_context_window_exceeded``) -> ``length``; ``tool_use`` ->
    ``tool_calls``; ``refusal`` -> ``content_filter``; anything else -> ``stop``.
    """
    return _FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class StreamUsage:
    """Anthropic token counts (cache writes and reads are separate from input)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @classmethod
    def from_anthropic(cls, usage: Any, base: StreamUsage | None = None) -> StreamUsage:
        """Counts of an Anthropic ``usage`` object; absent or null fields keep `base`'s."""
        base = base or cls()
        if not isinstance(usage, dict):
            return base
        fields = (
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        )
        values = {}
        for name in fields:
            value = _int(usage.get(name))
            values[name] = getattr(base, name) if value is None else value
        return cls(**values)

    def to_openai(self) -> dict[str, Any]:
        """OpenAI ``usage``: prompt tokens include cache writes and cache reads."""
        prompt = self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": self.output_tokens,
            "total_tokens": prompt + self.output_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cache_read_input_tokens},
        }


def openai_usage(usage: Any) -> dict[str, Any]:
    """OpenAI ``usage`` object for an Anthropic ``usage`` object."""
    return StreamUsage.from_anthropic(usage).to_openai()


def error_from_anthropic(error: Any) -> GatewayError:
    """The gateway error for an Anthropic ``error`` object (``{"type", "message"}``)."""
    etype = error.get("type") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message:
        message = "The upstream reported an error during streaming."
    cls = _ERRORS.get(etype, UpstreamError) if isinstance(etype, str) else UpstreamError
    return cls(message)


def _tool_arguments(value: Any) -> str:
    if value is None or value == {}:
        return "{}"
    return json.dumps(value, ensure_ascii=False)


def to_openai(
    message: dict[str, Any], *, completion_id: str, created: int, model: str
) -> dict[str, Any]:
    """An Anthropic ``Message`` -> an OpenAI ``chat.completion`` object.

    Text blocks are joined into ``message.content`` (null when there are none);
    ``tool_use`` blocks become ``message.tool_calls`` with JSON-string arguments
    (``"{}"`` for empty input); thinking and other block types are left out.
    """
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or ():
        if not isinstance(block, dict):
            continue
        btype = block.get("type")
        if btype == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif btype == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": _tool_arguments(block.get("input")),
                    },
                }
            )
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
    }
    if calls:
        reply["tool_calls"] = calls
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": finish_reason(message.get("stop_reason")),
            }
        ],
        "usage": openai_usage(message.get("usage")),
    }


def _loads(data: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _data(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


class StreamTranslator:
    """Incremental Anthropic-stream -> OpenAI-chunk translator for one completion."""

    __slots__ = (
        "_args_sent",
        "_completion_id",
        "_created",
        "_done",
        "_error",
        "_finish_sent",
        "_include_usage",
        "_model",
        "_started",
        "_stop_reason",
        "_tools",
        "_usage",
    )

    def __init__(
        self, *, completion_id: str, created: int, model: str, include_usage: bool
    ) -> None:
        self._completion_id = completion_id
        self._created = created
        self._model = model
        self._include_usage = include_usage
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool-call index
        self._args_sent: dict[int, bool] = {}  # per Anthropic block index
        self._started = False
        self._finish_sent = False
        self._done = False
        self._error: GatewayError | None = None
        self._stop_reason: str | None = None
        self._usage = StreamUsage()

    # ------------------------------------------------------------ what was seen

    @property
    def usage(self) -> StreamUsage:
        """The Anthropic counts seen so far (final once ``message_delta`` arrived)."""
        return self._usage

    @property
    def stop_reason(self) -> str | None:
        """Anthropic ``stop_reason`` from ``message_delta``; None until then."""
        return self._stop_reason

    @property
    def error(self) -> GatewayError | None:
        """The error that ended the stream in-band, if any."""
        return self._error

    @property
    def tool_calls(self) -> int:
        """How many tool calls the stream has started."""
        return len(self._tools)

    # ------------------------------------------------------------ chunks

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj: dict[str, Any] = {
            "id": self._completion_id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self._include_usage:
            obj["usage"] = None
        return _data(obj)

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return self._chunk({"role": "assistant", "content": ""})

    def _tool_chunk(self, index: int, call: dict[str, Any]) -> bytes:
        return self._chunk({"tool_calls": [{"index": index, **call}]})

    def error_chunk(self, err: GatewayError) -> bytes:
        """End the stream with `err` in OpenAI's in-band form; later calls give nothing.

        For failures the caller detects itself (upstream cut, idle timeout). The
        ``openai`` SDK raises ``openai.APIError`` with the message when it reads it.
        """
        if self._done or self._error is not None:
            return b""
        self._error = err
        return b"data: " + openai_body(err) + b"\n\n"

    # ------------------------------------------------------------ events

    def feed(self, event: SSEEvent) -> bytes:
        """The OpenAI chunk bytes (possibly none) for one Anthropic stream event."""
        if self._done or self._error is not None:
            return b""
        name = event.event
        if name == "ping" or name == "message_stop":
            return b""
        obj = _loads(event.data)
        if obj is None:
            return self.error_chunk(UpstreamError("The upstream sent an undecodable event."))
        if name is None:  # not how the API sends them, but the data says what it is
            name = obj.get("type") if isinstance(obj.get("type"), str) else None
        if name == "content_block_delta":
            return self._on_delta(obj)
        if name == "content_block_start":
            return self._on_block_start(obj)
        if name == "content_block_stop":
            return self._on_block_stop(obj)
        if name == "message_start":
            message = obj.get("message")
            if isinstance(message, dict):
                self._usage = StreamUsage.from_anthropic(message.get("usage"), self._usage)
            return self._start()
        if name == "message_delta":
            return self._on_message_delta(obj)
        if name == "error":
            return self.error_chunk(error_from_anthropic(obj.get("error")))
        return b""  # unknown event types are ignored, as the API versioning policy asks

    def _on_block_start(self, obj: dict[str, Any]) -> bytes:
        block = obj.get("content_block")
        index = obj.get("index")
        if not isinstance(block, dict) or _int(index) is None:
            return b""
        out = self._start()
        btype = block.get("type")
        if btype == "text":
            text = block.get("text")
            if isinstance(text, str) and text:
                out += self._chunk({"content": text})
        elif btype == "tool_use":
            tool_index = len(self._tools)
            self._tools[index] = tool_index
            self._args_sent[index] = False
            call = {
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            out += self._tool_chunk(tool_index, call)
            initial = block.get("input")
            if isinstance(initial, dict) and initial:  # the API starts with {}; be safe
                self._args_sent[index] = True
                args = json.dumps(initial, ensure_ascii=False)
                out += self._tool_chunk(tool_index, {"function": {"arguments": args}})
        return out

    def _on_delta(self, obj: dict[str, Any]) -> bytes:
        delta = obj.get("delta")
        if not isinstance(delta, dict):
            return b""
        dtype = delta.get("type")
        if dtype == "text_delta":
            text = delta.get("text")
            if isinstance(text, str) and text:
                return self._start() + self._chunk({"content": text})
        elif dtype == "input_json_delta":
            index = obj.get("index")
            piece = delta.get("partial_json")
            tool_index = self._tools.get(index) if isinstance(index, int) else None
            if tool_index is not None and isinstance(piece, str) and piece:
                self._args_sent[index] = True
                return self._tool_chunk(tool_index, {"function": {"arguments": piece}})
        return b""

    def _on_block_stop(self, obj: dict[str, Any]) -> bytes:
        index = obj.get("index")
        if not isinstance(index, int) or index not in self._tools:
            return b""
        if self._args_sent.get(index):
            return b""
        self._args_sent[index] = True
        return self._tool_chunk(self._tools[index], {"function": {"arguments": "{}"}})

    def _on_message_delta(self, obj: dict[str, Any]) -> bytes:
        self._usage = StreamUsage.from_anthropic(obj.get("usage"), self._usage)
        delta = obj.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
            self._stop_reason = delta["stop_reason"]
        if self._stop_reason is None or self._finish_sent:
            return b""
        self._finish_sent = True
        return self._start() + self._chunk({}, finish_reason(self._stop_reason))

    # ------------------------------------------------------------ end

    def finish(self) -> bytes:
        """The closing bytes: finish chunk if not yet sent, usage chunk, ``[DONE]``.

        Gives nothing after an in-band error (the stream already ended there) or
        when called a second time.
        """
        if self._done or self._error is not None:
            return b""
        self._done = True
        out = self._start()
        if not self._finish_sent:
            self._finish_sent = True
            out += self._chunk({}, finish_reason(self._stop_reason))
        if self._include_usage:
            out += _data(
                {
                    "id": self._completion_id,
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": self._model,
                    "system_fingerprint": None,
                    "choices": [],
                    "usage": self._usage.to_openai(),
                }
            )
        return out + DONE
