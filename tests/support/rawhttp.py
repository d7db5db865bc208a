"""HTTP/1.1 over a bare loopback socket for the protocol tests: bytes go out exactly as
written (malformed on purpose), and what comes back is read and split into responses."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]  # names lowercased; a repeated name keeps its last value
    body: bytes


@dataclass(frozen=True)
class Exchange:
    raw: bytes  # everything the server sent
    closed: bool  # the server closed the connection (within the wait)
    seconds: float  # from the first byte sent to the close, or to the end of the wait

    @property
    def responses(self) -> list[RawResponse]:
        return parse_responses(self.raw)


def parse_responses(raw: bytes) -> list[RawResponse]:
    """The complete responses at the start of ``raw`` (Content-Length or chunked bodies);
    an incomplete tail is left out."""
    responses: list[RawResponse] = []
    rest = raw
    while True:
        head, sep, after = rest.partition(b"\r\n\r\n")
        if not sep:
            return responses
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            size = int(headers["content-length"])
            if len(after) < size:
                return responses
            body, rest = after[:size], after[size:]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size_line, sep, after = after.partition(b"\r\n")
                if not sep:
                    return responses
                size = int(size_line.split(b";")[0], 16)
                if len(after) < size + 2:
                    return responses
                body, after = body + after[:size], after[size + 2 :]
                if size == 0:
                    break
            rest = after
        else:
            body, rest = after, b""
        responses.append(RawResponse(status, headers, body))


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_until_closed(
    reader: asyncio.StreamReader, wait: float, *, responses: int | None = None
) -> tuple[bytes, bool]:
    """Read for up to ``wait`` seconds: until the server closes, or (with
    ``responses``) until that many complete responses arrived."""
    deadline = time.monotonic() + wait
    raw = b""
    while True:
        if responses is not None and len(parse_responses(raw)) >= responses:
            return raw, False
        left = deadline - time.monotonic()
        if left <= 0:
            return raw, False
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except TimeoutError:
            return raw, False
        except ConnectionError:
            return raw, True
        if not chunk:
            return raw, True
        raw += chunk


async def exchange(
    port: int, data: bytes, *, wait: float = 3.0, responses: int | None = None
) -> Exchange:
    """Send ``data`` on a fresh connection and read what comes back (see
    :func:`read_until_closed`); the connection is then closed from this side."""
    reader, writer = await connect(port)
    started = time.monotonic()
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        raw, closed = await read_until_closed(reader, wait, responses=responses)
        return Exchange(raw, closed, time.monotonic() - started)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def trickle(port: int, parts: list[bytes], gap: float, *, wait: float) -> Exchange:
    """Send ``parts`` one every ``gap`` seconds (a slow client) while reading; stops
    sending once the server closes. Returns when the server closed, or after ``wait``."""
    reader, writer = await connect(port)
    started = time.monotonic()

    async def send() -> None:
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(gap)

    sender = asyncio.ensure_future(send())
    try:
        raw, closed = await read_until_closed(reader, wait)
        return Exchange(raw, closed, time.monotonic() - started)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
