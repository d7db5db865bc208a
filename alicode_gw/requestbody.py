"""Reading request bodies: size cap enforced while reading, JSON errors as 400s."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from alicode_gw.errors import InvalidRequestError, RequestTooLargeError


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it passes ``limit`` bytes."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise RequestTooLargeError(_too_large(limit))
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise RequestTooLargeError(_too_large(limit))
            chunks.append(chunk)
    except RequestPayloadError as exc:  # malformed chunking or encoding (alicode_gw.protocol)
        raise InvalidRequestError(
            "The request body could not be read: its chunked framing, length or "
            "Content-Encoding is invalid."
        ) from exc
    except ConnectionResetError as exc:  # the client left, or was too slow (protocol.py)
        raise InvalidRequestError("The connection closed before the body was complete.") from exc
    return b"".join(chunks)


def _too_large(limit: int) -> str:
    return f"Request body is larger than the {limit // (1024 * 1024)} MB limit."


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Decode ``body`` as a JSON object or raise a clear 400."""
    if not body:
        raise InvalidRequestError("Request body is empty; expected a JSON object.")
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequestError(f"Request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidRequestError("Request body is nested too deeply.") from exc
    if not isinstance(value, dict):
        raise InvalidRequestError("Request body must be a JSON object.")
    return value


async def read_json(request: web.BaseRequest, limit: int) -> tuple[bytes, dict[str, Any]]:
    """The raw body (forwarded as-is) and its decoded JSON object."""
    body = await read_body(request, limit)
    return body, parse_json_object(body)
