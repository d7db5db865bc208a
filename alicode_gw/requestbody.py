"""Reading client request bodies: the size cap enforced while reading, and the JSON a
body must be, refused with a 400 when the gateway could not read it exactly as the
upstream will.

The gateway decides on the decoded body (model, stream, limits) but forwards the raw
bytes, so a body is accepted only when its reading is unambiguous: UTF-8 (strict, no
byte order mark), one JSON object, no key twice at the top level (an upstream that
kept the first ``model`` would answer another model than the one admitted and billed),
at most :data:`MAX_JSON_DEPTH` levels of nesting (so no walk over it can exhaust the
stack), and integers within the interpreter's digit limit.
"""

from __future__ import annotations

import json
import re
import sys
import zlib
from itertools import accumulate
from json.decoder import JSONObject
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestPayloadError

from alicode_gw.errors import (
    InvalidRequestError,
    RequestTooLargeError,
    UnsupportedMediaTypeError,
)

# Deeper than any real request (tool schemas and inputs nest a few levels); the
# translations and the token estimate walk a body recursively and stay far below the
# interpreter's recursion limit at this depth.
MAX_JSON_DEPTH = 128

_WHITESPACE = re.compile(r"[ \t\n\r]*")
# Bytes that never affect nesting: everything but quotes and brackets.
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_NOT_OPENERS = bytes(b for b in range(256) if b not in b"[{")
_AS_PARENS = bytes.maketrans(b"[{]}", b"(())")
_STEP = {ord("("): 1, ord(")"): -1}
_DECODER = json.JSONDecoder()  # stateless: one for every body


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The whole body, decoded per its ``Content-Encoding``: refused (413) as soon as the
    body or what it decompresses to passes ``limit`` bytes, (415) in an encoding the
    gateway does not read, (400) when it does not decode.

    The server hands bodies over as received (``auto_decompress=False`` in
    :mod:`alicode_gw.app`), so every failure is this request's own answer.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise RequestTooLargeError(_too_large(limit))
    inflater = _Inflater.for_header(request.headers.get("Content-Encoding", ""))
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_any():
            if inflater is not None:
                chunk = inflater.feed(chunk, limit - size)
            size += len(chunk)
            if size > limit:
                raise RequestTooLargeError(_too_large(limit))
            chunks.append(chunk)
        if inflater is not None:
            inflater.finish()
    except (RequestPayloadError, BadHttpMessage) as exc:  # malformed framing (protocol.py)
        raise InvalidRequestError(
            "The request body could not be read: its chunked framing, length or "
            "Content-Encoding is invalid."
        ) from exc
    except ConnectionResetError as exc:  # the client left, or was too slow (protocol.py)
        raise InvalidRequestError("The connection closed before the body was complete.") from exc
    return b"".join(chunks)


class _Inflater:
    """Decompresses a gzip or deflate body chunk by chunk with :mod:`zlib`, never
    producing more than the caller has room for (a small body may inflate to gigabytes).
    """

    def __init__(self, name: str, wbits: int) -> None:
        self.name = name
        self._wbits = wbits
        self._zlib = zlib.decompressobj(wbits)
        self._started = False

    @classmethod
    def for_header(cls, header: str) -> _Inflater | None:
        name = header.strip().lower()
        if name in ("", "identity"):
            return None
        if name in ("gzip", "x-gzip"):
            return cls(name, 16 + zlib.MAX_WBITS)
        if name == "deflate":
            return cls(name, zlib.MAX_WBITS)
        raise UnsupportedMediaTypeError(
            f"Content-Encoding {header[:40]!r} is not supported; send the body "
            "uncompressed, or as gzip or deflate."
        )

    def feed(self, data: bytes, room: int) -> bytes:
        """The bytes ``data`` decompresses to; more than ``room`` of them: 413."""
        if not self._started and data:
            self._started = True
            if self._wbits == zlib.MAX_WBITS and data[0] & 0x0F != 8:
                # Raw deflate without the zlib header, as some clients send it.
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
        out: list[bytes] = []
        while data:
            if self._zlib.eof:  # the next gzip member, or trailing bytes
                if self._wbits <= zlib.MAX_WBITS:
                    raise self._error()
                self._zlib = zlib.decompressobj(self._wbits)
            try:
                piece = self._zlib.decompress(data, max(room, 0) + 1)
            except zlib.error as exc:
                raise self._error() from exc
            room -= len(piece)
            if room < 0:
                raise RequestTooLargeError("Request body decompresses past the size limit.")
            out.append(piece)
            data = self._zlib.unconsumed_tail or (self._zlib.unused_data if self._zlib.eof else b"")
        return b"".join(out)

    def finish(self) -> None:
        if self._started and not self._zlib.eof:
            raise self._error()

    def _error(self) -> InvalidRequestError:
        return InvalidRequestError(
            f"Request body does not decompress as Content-Encoding {self.name!r}."
        )


def _too_large(limit: int) -> str:
    return f"Request body is larger than the {limit // (1024 * 1024)} MB limit."


def json_too_deep(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text ``data`` (UTF-8) opens more than ``limit`` nested arrays or
    objects, without parsing it (a parser recursing that deep is the hazard).

    Only brackets outside strings count. Malformed text is judged on its brackets as
    they stand, which never under-states the depth a parser reaches: it reads a valid
    prefix, where strings are delimited exactly as here.
    """
    if len(data.translate(None, _NOT_OPENERS)) <= limit:
        return False
    if b"\\" in data:  # escaped backslashes and quotes end no string
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Quotes and brackets only; then drop the quotes of strings without brackets
    # (adjacent quotes enclose nothing that counts, in a string or out of one).
    marks = data.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in marks:
        marks = b"".join(marks.split(b'"')[::2])
    parens = remaining = marks.translate(_AS_PARENS)
    run = b"(" * (limit + 1)
    # Each pass takes the innermost pairs away: a balanced text of depth d is gone
    # after d passes. A run of more than ``limit`` openers is too deep at once; a text
    # still standing after the passes (unbalanced, or deeper) is measured exactly.
    # Cost: a few passes over the brackets of a real body; at worst ``limit`` passes.
    for _ in range(limit + 1):
        if not remaining:
            return False
        if run in remaining:
            return True
        shorter = remaining.replace(b"()", b"")
        if len(shorter) == len(remaining):
            break  # unbalanced: measure it
        remaining = shorter
    return max(accumulate(map(_STEP.__getitem__, parens))) > limit


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Decode ``body`` as a JSON object or raise a clear 400 (see the module's doc)."""
    if not body:
        raise InvalidRequestError("Request body is empty; expected a JSON object.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(
            f"Request body is not valid UTF-8 (byte {exc.start}); send JSON encoded as UTF-8."
        ) from exc
    if text.startswith("\ufeff"):
        raise InvalidRequestError(
            "Request body starts with a byte order mark; send UTF-8 JSON without one."
        )
    if json_too_deep(body):
        raise InvalidRequestError(
            f"Request body is nested too deeply (more than {MAX_JSON_DEPTH} levels)."
        )
    try:
        value = _top_level_object(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"Request body is not valid JSON: {exc}") from exc
    except ValueError as exc:  # the C scanner's int() of a literal past the digit limit
        raise InvalidRequestError(
            "Request body is not valid JSON: a number has more than "
            f"{sys.get_int_max_str_digits()} digits."
        ) from exc
    if not isinstance(value, dict):
        raise InvalidRequestError("Request body must be a JSON object.")
    return value


def _top_level_object(text: str) -> Any:
    """``json.loads(text)``, refusing a key given twice in a top-level object.

    Only the top level pays for the check: its members are read by the standard
    library's own object reader with a pairs hook, the values inside them by the C
    scanner, which builds nested objects as plain dicts.
    """
    start = _WHITESPACE.match(text).end()
    if not text.startswith("{", start):
        return _DECODER.decode(text)
    value, end = JSONObject((text, start + 1), True, _DECODER.scan_once, None, _unique_keys, {})
    end = _WHITESPACE.match(text, end).end()
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                shown = key if len(key) <= 64 else key[:64] + "…"
                raise InvalidRequestError(
                    f"Request body has the key {shown!r} more than once.", param=key[:64]
                )
            seen.add(key)
    return value


async def read_json(request: web.BaseRequest, limit: int) -> tuple[bytes, dict[str, Any]]:
    """The raw body (forwarded as-is) and its decoded JSON object."""
    body = await read_body(request, limit)
    return body, parse_json_object(body)
