"""``POST /v1/files``: a ``multipart/form-data`` body read with aiohttp's own
``MultipartReader``, its ``file`` part streamed into PostgreSQL as it arrives.

Nothing holds the file: the part is read in small pieces, hashed (SHA-256) and counted
on the way, and written as rows of at most :data:`~alicode_gw.files.store.CHUNK_BYTES`.
The size cap (``ALICODE_FILES_MAX_BYTES``) and an account's byte quota are enforced while
reading (413 ``request_too_large``); the type is decided from the first bytes before
anything is stored (415 naming it when it is not allowed); a text type must be UTF-8
(checked incrementally). A refused or broken upload leaves nothing: its staged rows are
dropped (and the purge removes those of a process that died mid-upload).
"""

from __future__ import annotations

import codecs
import hashlib
import logging
from dataclasses import dataclass

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestPayloadError

from alicode_gw.config import Config
from alicode_gw.errors import (
    InvalidRequestError,
    PermissionDeniedError,
    RequestTooLargeError,
    UnsupportedMediaTypeError,
)
from alicode_gw.files import store
from alicode_gw.files.objects import (
    SNIFF_BYTES,
    FileRecord,
    clean_filename,
    decide_type,
    is_text,
    new_file_id,
)
from alicode_gw.state import State

log = logging.getLogger(__name__)

FIELD = "file"
READ_BYTES = 64 * 1024  # one read of the part
MULTIPART_SLACK = 64 * 1024  # part headers and boundaries on top of the file itself


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int
    allowed: tuple[str, ...]
    room_bytes: int | None  # what the account's byte quota leaves, None: no quota
    max_count: int
    quota_bytes: int

    @classmethod
    def of(cls, config: Config, used: store.Usage | None) -> Limits:
        room = None
        if config.files_quota_bytes and used is not None:
            room = max(0, config.files_quota_bytes - used.bytes)
        return cls(
            max_bytes=config.files_max_bytes,
            allowed=config.files_mime_types,
            room_bytes=room,
            max_count=config.files_quota_count,
            quota_bytes=config.files_quota_bytes,
        )


def too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(f"File is larger than the {_mb(limit)} limit per file.")


def quota_full(config: Config) -> PermissionDeniedError:
    return PermissionDeniedError(
        f"This account already stores {config.files_quota_count} files, its limit; "
        "delete some with DELETE /v1/files/{file_id} first."
    )


def quota_bytes_passed(quota: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"This upload would pass the account's file storage quota of {_mb(quota)}; "
        "delete files with DELETE /v1/files/{file_id} first."
    )


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):g} MB"


async def receive(state: State, account_id: int, request: web.BaseRequest) -> FileRecord:
    """Store the request's ``file`` part for ``account_id``; the stored file (or the
    account's live file with the same bytes)."""
    config = state.config
    declared = request.content_length
    if declared is not None and declared > config.files_max_bytes + MULTIPART_SLACK:
        raise too_large(config.files_max_bytes)
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaTypeError(
            "Content-Encoding is not supported for uploads; send the multipart body as is."
        )
    if request.content_type != "multipart/form-data":
        raise InvalidRequestError(
            "Expected a multipart/form-data body with a 'file' part "
            "(curl: -F 'file=@path/to/file')."
        )
    used = None
    if config.files_quota_count or config.files_quota_bytes:
        used = await store.usage(state.db, account_id)
        if config.files_quota_count and used.count >= config.files_quota_count:
            raise quota_full(config)
    limits = Limits.of(config, used)
    try:
        return await _read_form(state, account_id, request, limits)
    except (RequestPayloadError, BadHttpMessage) as exc:
        raise InvalidRequestError(
            "The request body could not be read: its chunked framing or length is invalid."
        ) from exc
    except ConnectionResetError as exc:
        raise InvalidRequestError("The connection closed before the body was complete.") from exc
    except (ValueError, AssertionError, RuntimeError) as exc:  # aiohttp's multipart parser
        raise InvalidRequestError(
            "The body is not valid multipart/form-data (boundary or part headers)."
        ) from exc


@dataclass(frozen=True, slots=True)
class Staged:
    """A ``file`` part whose bytes are stored as rows of an ``uploading`` file."""

    file_id: str
    sha256: bytes
    size: int


async def _read_form(
    state: State, account_id: int, request: web.BaseRequest, limits: Limits
) -> FileRecord:
    """The form's one ``file`` part, stored; the file becomes visible only once the
    whole form has been read and found right (a part after it can still refuse it)."""
    reader = await request.multipart()
    staged: Staged | None = None
    try:
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise InvalidRequestError("A nested multipart part is not accepted.")
            if part.name != FIELD:
                raise _unsupported_field(str(part.name)[:40])
            if staged is not None:
                raise InvalidRequestError("Send one 'file' part per upload.", param=FIELD)
            staged = await _stage_part(state, account_id, part, limits)
        if staged is None:
            raise InvalidRequestError("file: Field required", param=FIELD)
        finished = await store.finish_upload(
            state.db,
            staged.file_id,
            staged.sha256,
            staged.size,
            limits.max_count,
            limits.quota_bytes,
        )
    except BaseException:
        if staged is not None:
            await _abort(state, staged.file_id)
        raise
    if finished.outcome not in (store.Finish.CREATED, store.Finish.DUPLICATE):
        await _abort(state, staged.file_id)
    if finished.outcome is store.Finish.COUNT_QUOTA:
        raise quota_full(state.config)
    if finished.outcome is store.Finish.BYTES_QUOTA:
        raise quota_bytes_passed(limits.quota_bytes)
    record = await store.get(state.db, account_id, finished.file_id)
    if finished.outcome is store.Finish.MISSING or record is None:
        raise InvalidRequestError("The upload was interrupted; send it again.")
    return record


def _unsupported_field(name: str) -> InvalidRequestError:
    """A form field besides ``file`` is refused, never ignored: a client that asked for
    an expiry must not believe its file expires."""
    if name == "expires_in_seconds":
        return InvalidRequestError(
            "expires_in_seconds is not supported by this gateway; a file is kept until "
            "DELETE /v1/files/{file_id}.",
            param=name,
        )
    return InvalidRequestError(
        f"Form field {name!r} is not supported; send only a 'file' part.", param=name
    )


async def _stage_part(
    state: State, account_id: int, part: BodyPartReader, limits: Limits
) -> Staged:
    """The part's bytes stored as an ``uploading`` file (dropped again if this fails)."""
    transfer = (part.headers.get("Content-Transfer-Encoding") or "binary").strip().lower()
    if transfer not in ("binary", "8bit", "7bit"):
        raise InvalidRequestError("Send the file part in binary (no Content-Transfer-Encoding).")
    head = b""
    while len(head) < SNIFF_BYTES:
        chunk = await part.read_chunk(READ_BYTES)
        if not chunk:
            break
        head += chunk
    if not head:
        raise InvalidRequestError("The file is empty.", param=FIELD)
    mime = decide_type(head[:SNIFF_BYTES], part.headers.get("Content-Type"), part.filename or "")
    if mime not in limits.allowed:
        raise UnsupportedMediaTypeError(
            f"File type {mime[:80]!r} is not accepted; accepted types: {', '.join(limits.allowed)}."
        )
    file_id = new_file_id()
    await store.begin_upload(
        state.db, file_id, account_id, clean_filename(part.filename, mime), mime
    )
    try:
        sha256, size = await _stream_rows(state, file_id, part, head, mime, limits)
    except BaseException:
        await _abort(state, file_id)
        raise
    return Staged(file_id, sha256, size)


async def _stream_rows(
    state: State,
    file_id: str,
    part: BodyPartReader,
    head: bytes,
    mime: str,
    limits: Limits,
) -> tuple[bytes, int]:
    """Write the part's bytes as chunk rows while reading it; (sha256, size)."""
    hasher = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")() if is_text(mime) else None
    pending = bytearray()
    size = 0
    seq = 0
    chunk = head
    while chunk:
        size += len(chunk)
        if size > limits.max_bytes:
            raise too_large(limits.max_bytes)
        if limits.room_bytes is not None and size > limits.room_bytes:
            raise quota_bytes_passed(limits.quota_bytes)
        hasher.update(chunk)
        if decoder is not None:
            _check_text(decoder, chunk, mime)
        pending += chunk
        while len(pending) >= store.CHUNK_BYTES:
            await store.put_chunk(state.db, file_id, seq, bytes(pending[: store.CHUNK_BYTES]))
            del pending[: store.CHUNK_BYTES]
            seq += 1
        chunk = await part.read_chunk(READ_BYTES)
    if decoder is not None:
        _check_text(decoder, b"", mime, final=True)
    if pending:
        await store.put_chunk(state.db, file_id, seq, bytes(pending))
    return hasher.digest(), size


def _check_text(
    decoder: codecs.IncrementalDecoder, data: bytes, mime: str, final: bool = False
) -> None:
    try:
        decoder.decode(data, final)
    except UnicodeDecodeError as exc:
        raise UnsupportedMediaTypeError(
            f"A {mime} file must be UTF-8 text; this one is not (or is of another type)."
        ) from exc


async def _abort(state: State, file_id: str) -> None:
    try:
        await store.abort_upload(state.db, file_id)
    except Exception:  # the purge removes it later
        log.warning("could not drop an aborted upload now; the purge will", exc_info=True)
