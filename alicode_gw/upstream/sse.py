"""Incremental Server-Sent Events parsing, formatting and usage scanning (no I/O).

`SSEParser` follows the WHATWG "event stream interpretation" rules
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):

* lines end in LF, CR or CRLF; a CR that ends one chunk and an LF that starts the
  next one form a single line break;
* chunks may be split anywhere, including inside a multi-byte UTF-8 character:
  lines are split as bytes (CR and LF never occur inside a UTF-8 sequence) and only
  complete field values are decoded, with U+FFFD for invalid sequences;
* a UTF-8 byte order mark at the very start of the stream is ignored;
* lines starting with ``:`` are comments; ``field: value`` loses exactly one space
  after the colon; a line without a colon is a field with an empty value;
* ``data`` lines accumulate and are joined with ``\\n``; a blank line dispatches the
  event; an event without any ``data`` line is not dispatched;
* ``id`` sets the *last event id*, which - as in the spec - persists and is reported
  on every later event until another ``id`` line changes it (an ``id`` containing
  NUL is ignored); ``retry`` is kept only when it is all ASCII digits and is reported
  on the event it was sent with;
* an event type that is absent (or empty) is reported as ``None`` rather than the
  spec's default ``"message"``, so callers can tell the two apart.

End of stream: per the spec, an event that was not terminated by a blank line is
discarded, so `SSEParser.flush` never dispatches a partially received event - even one
that only lacks the final blank line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["SSEEvent", "SSEParser", "UsageScanner", "format_event"]

_BOM = b"\xef\xbb\xbf"
_COLON = 0x3A
_SPACE = b" "


# (event type or None, data, last event id, retry) of one dispatched event, undecoded.
RawEvent = tuple[bytes | None, bytes, str | None, int | None]


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event. `event` is None when the stream gave no event type."""

    event: str | None
    data: str
    id: str | None = None
    retry: int | None = None


class SSEParser:
    """Incremental, spec-following parser: feed it byte chunks, get events back."""

    __slots__ = ("_data", "_event", "_last_id", "_parts", "_pending_cr", "_retry", "_start")

    def __init__(self) -> None:
        self._parts: list[bytes] = []  # pieces of the current, incomplete line
        self._pending_cr = False  # previous chunk ended in CR: drop one leading LF
        self._start = True  # still at stream start (BOM not yet ruled out)
        self._data: list[bytes] = []
        self._event: bytes | None = None
        self._last_id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume `chunk` and return the events it completed (possibly none)."""
        return [
            SSEEvent(
                name.decode("utf-8", "replace") if name else None,
                data.decode("utf-8", "replace"),
                last_id,
                retry,
            )
            for name, data, last_id, retry in self.feed_raw(chunk)
        ]

    def feed_raw(self, chunk: bytes) -> list[RawEvent]:
        """Like :meth:`feed`, without building :class:`SSEEvent` or decoding: each
        event as ``(type or None, data, last event id, retry)``, type and data as bytes
        (a relay reads every event of a stream; most of them it only measures)."""
        if (  # the usual chunk: whole `event:`+`data:` events, from a clean state
            chunk.endswith(b"\n\n")
            and not self._parts
            and not self._data
            and self._event is None
            and self._retry is None
            and not self._pending_cr
            and not self._start
            and b"\r" not in chunk
        ):
            events = self._whole_events(chunk)
            if events is not None:
                return events
        out: list[RawEvent] = []
        for line in self._lines(chunk):
            if not line:
                parts = self._data
                if parts:
                    data = parts[0] if len(parts) == 1 else b"\n".join(parts)
                    out.append((self._event or None, data, self._last_id, self._retry))
                    self._data = []
                self._event = None
                self._retry = None
            elif line.startswith(b"data: "):  # the two lines of nearly every event...
                self._data.append(line[6:])
            elif line.startswith(b"event: "):
                self._event = line[7:]
            elif line[0] != _COLON:  # ...and the general rules for the rest
                self._field(line)
        return out

    def _whole_events(self, chunk: bytes) -> list[RawEvent] | None:
        """The events of a chunk made only of ``event: X`` + ``data: Y`` pairs, each
        ended by a blank line, exactly as the general rules would read them; None if
        any part of the chunk is something else (the general rules then take it)."""
        out: list[RawEvent] = []
        last_id = self._last_id
        for block in chunk[:-2].split(b"\n\n"):
            if not block.startswith(b"event: "):
                return None
            eol = block.find(b"\n")
            if eol < 0 or block[eol + 1 : eol + 7] != b"data: " or b"\n" in block[eol + 7 :]:
                return None
            out.append((block[7:eol] or None, block[eol + 7 :], last_id, None))
        return out

    def _lines(self, chunk: bytes) -> list[bytes]:
        """The complete lines `chunk` ends (line breaks removed); keeps the rest."""
        if not chunk:
            return []
        if self._pending_cr:
            self._pending_cr = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
                if not chunk:
                    return []
        if self._start:
            chunk = b"".join((*self._parts, chunk))
            self._parts = []
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._parts.append(chunk)  # could still become a BOM
                return []
            self._start = False
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
        if b"\n" not in chunk and b"\r" not in chunk:
            if chunk:
                self._parts.append(chunk)  # joined once, when the line ends
            return []
        if self._parts:
            self._parts.append(chunk)
            data = b"".join(self._parts)
            self._parts = []
        else:
            data = chunk
        if data[-1] == 0x0D:
            self._pending_cr = True
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = data.split(b"\n")
        last = lines.pop()
        if last:
            self._parts.append(last)
        return lines

    def flush(self) -> list[SSEEvent]:
        """Signal end of stream and reset the parser.

        Always returns an empty list: the spec discards an event that was not
        terminated by a blank line, and so does this parser. The list return type
        keeps call sites uniform (``events += parser.flush()``). The last event id
        is kept, as an EventSource keeps it across reconnections.
        """
        self._parts = []
        self._pending_cr = False
        self._start = True
        self._data = []
        self._event = None
        self._retry = None
        return []

    def _field(self, line: bytes) -> None:
        colon = line.find(b":")
        if colon < 0:
            name, value = line, b""
        else:
            name, value = line[:colon], line[colon + 1 :]
            if value[:1] == _SPACE:
                value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value
        elif name == b"id":
            if b"\0" not in value:
                self._last_id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self._retry = int(value)


def format_event(event: str, data: str) -> bytes:
    """Serialise one named event: ``event: NAME\\ndata: LINE\\n...\\n\\n`` (UTF-8).

    Each line of `data` becomes its own ``data:`` line, so `SSEParser` gives `data`
    back unchanged - except that CR and CRLF inside `data` come back as LF, which is
    all SSE can carry. `event` must not contain a line break.
    """
    if "\n" in event or "\r" in event:
        raise ValueError("an SSE event name cannot contain a line break")
    if "\n" not in data and "\r" not in data:
        return f"event: {event}\ndata: {data}\n\n".encode()
    lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    body = "".join(f"data: {line}\n" for line in lines)
    return f"event: {event}\n{body}\n".encode()


# Keys whose string value is the generated payload of a content_block_delta.
_DELTA_KEYS = (b'"text":"', b'"partial_json":"', b'"thinking":"')


def _delta_chars(data: bytes) -> int:
    """Approximate generated characters in a content_block_delta, without json.loads.

    The payload string is the last value of the delta (``..."text":"PAYLOAD"}}``):
    measure from its key to the end, less the closing ``"}}``. Escapes make this a
    slight over-count, which is fine for an estimate. signature_delta counts 0.
    Characters, not bytes: only a payload that is not ASCII is decoded to count them.
    """
    for key in _DELTA_KEYS:
        pos = data.rfind(key)
        if pos >= 0:
            payload = data[pos + len(key) : -3]
            return len(payload) if payload.isascii() else len(payload.decode("utf-8", "replace"))
    return 0


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class UsageScanner:
    """Cheap tracker of an Anthropic Messages stream's identity, usage and outcome.

    Only ``message_start``, ``message_delta`` and ``error`` events are JSON-decoded;
    ``message_stop`` is recognised by name and ``content_block_delta`` only has its
    data length measured (`output_chars`), for estimating output when a stream is cut
    before its final ``message_delta``.

    Usage follows the API: ``message_start`` carries the initial usage, and every
    ``message_delta`` carries cumulative totals that replace it - ``output_tokens``
    always, and input/cache counts when present and not null.
    """

    __slots__ = (
        "_cache_1h",
        "_cache_5m",
        "_has_breakdown",
        "_parser",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "error",
        "input_tokens",
        "message_id",
        "model",
        "output_chars",
        "output_tokens",
        "saw_message_start",
        "saw_message_stop",
        "stop_reason",
    )

    def __init__(self) -> None:
        self._parser = SSEParser()
        self.input_tokens = 0
        self.output_tokens = 0
        self.cache_creation_input_tokens = 0
        self.cache_read_input_tokens = 0
        self._cache_5m = 0
        self._cache_1h = 0
        self._has_breakdown = False
        self.model: str | None = None
        self.message_id: str | None = None
        self.stop_reason: str | None = None
        self.saw_message_start = False
        self.saw_message_stop = False
        self.error: dict[str, Any] | None = None
        self.output_chars = 0

    @property
    def cache_creation_5m(self) -> int:
        """5-minute cache writes; all cache writes when the stream gave no breakdown."""
        if self._has_breakdown:
            return self._cache_5m
        return self.cache_creation_input_tokens

    @property
    def cache_creation_1h(self) -> int:
        """1-hour cache writes (``usage.cache_creation.ephemeral_1h_input_tokens``)."""
        return self._cache_1h if self._has_breakdown else 0

    def feed(self, chunk: bytes) -> None:
        for name, data, _, _ in self._parser.feed_raw(chunk):
            if name == b"content_block_delta":
                self.output_chars += _delta_chars(data)
            elif name == b"message_delta":
                self._on_delta(data)
            elif name == b"message_start":
                self._on_start(data)
            elif name == b"message_stop":
                self.saw_message_stop = True
            elif name == b"error":
                self._on_error(data)

    def _on_start(self, data: bytes) -> None:
        obj = _loads(data)
        msg = obj.get("message") if obj else None
        if not isinstance(msg, dict):
            return
        self.saw_message_start = True
        if isinstance(msg.get("id"), str):
            self.message_id = msg["id"]
        if isinstance(msg.get("model"), str):
            self.model = msg["model"]
        usage = msg.get("usage")
        if isinstance(usage, dict):
            self._apply_usage(usage)

    def _on_delta(self, data: bytes) -> None:
        obj = _loads(data)
        if not obj:
            return
        delta = obj.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
            self.stop_reason = delta["stop_reason"]
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self._apply_usage(usage)

    def _on_error(self, data: bytes) -> None:
        obj = _loads(data)
        err = obj.get("error") if obj else None
        if not isinstance(err, dict):
            err = {"type": "error", "message": data.decode("utf-8", "replace")}
        self.error = err

    def _apply_usage(self, usage: dict[str, Any]) -> None:
        if (v := _int(usage.get("input_tokens"))) is not None:
            self.input_tokens = v
        if (v := _int(usage.get("output_tokens"))) is not None:
            self.output_tokens = v
        if (v := _int(usage.get("cache_creation_input_tokens"))) is not None:
            self.cache_creation_input_tokens = v
        if (v := _int(usage.get("cache_read_input_tokens"))) is not None:
            self.cache_read_input_tokens = v
        cc = usage.get("cache_creation")
        if isinstance(cc, dict):
            m5 = _int(cc.get("ephemeral_5m_input_tokens"))
            h1 = _int(cc.get("ephemeral_1h_input_tokens"))
            if m5 is not None or h1 is not None:
                self._has_breakdown = True
                self._cache_5m = m5 or 0
                self._cache_1h = h1 or 0


def _loads(data: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(data.decode("utf-8", "replace"))
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None
