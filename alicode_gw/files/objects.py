"""The Files API's wire format, pure: the file object, the list page and its cursors,
the download's headers, file ids, and what a file's bytes say its type is.

Anthropic's shapes (``client.beta.files`` of the official SDKs): a file object is
``{"id": "file_…", "type": "file", "filename", "mime_type", "size_bytes",
"created_at" (RFC 3339), "downloadable"}``; a list page is ``{"data", "first_id",
"last_id", "has_more"}`` (``before_id`` / ``after_id`` / ``limit`` 1 to 1000, default 20),
plus ``next_page``, the opaque cursor newer SDKs follow (``page=…``); a deletion answers
``{"id", "type": "file_deleted"}``.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from multidict import MultiMapping

from alicode_gw.errors import InvalidRequestError
from alicode_gw.ids import random_token

FILE_ID_PREFIX = "file_"
# The response header of a request whose file sources were inlined (files/inline.py).
INLINED_HEADER = "x-alicode-files-inlined"
DEFAULT_LIMIT = 20
MAX_LIMIT = 1000
MAX_IDS = 100
MAX_FILENAME_CHARS = 500  # the API's own bound
PAGE_PREFIX = "page_"
_FILE_ID = re.compile(r"^file_[0-9A-Za-z]{1,64}$")

# Types recognised by their first bytes: (prefix, offset, MIME type). A file's bytes
# decide its type, whatever the upload declared (an upstream refuses an image whose
# media_type does not match its bytes).
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),  # after b"RIFF" and a length
    (b"%PDF-", 0, "application/pdf"),
    (b"MZ", 0, "application/vnd.microsoft.portable-executable"),
    (b"\x7fELF", 0, "application/x-elf"),
    (b"PK\x03\x04", 0, "application/zip"),
    (b"\x1f\x8b", 0, "application/gzip"),
    (b"\xca\xfe\xba\xbe", 0, "application/x-mach-binary"),
    (b"\xcf\xfa\xed\xfe", 0, "application/x-mach-binary"),
)
# Formats whose prefix alone is too short to tell them from text.
_NEEDS_NUL = frozenset(
    ("application/vnd.microsoft.portable-executable", "application/zip", "application/gzip")
)
SNIFF_BYTES = 16  # enough for every prefix above
TEXT_TYPES = ("text/",)


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One stored, live file as the API shows it."""

    id: str
    filename: str
    mime_type: str
    size_bytes: int
    created_at: datetime


def new_file_id() -> str:
    """An id in Anthropic's style: ``file_011`` and 21 base62 characters."""
    return FILE_ID_PREFIX + "011" + random_token(21)


def valid_file_id(value: str) -> bool:
    return bool(_FILE_ID.match(value))


def rfc3339(when: datetime) -> str:
    when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond:06d}Z"


def file_json(record: FileRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "type": "file",
        "filename": record.filename,
        "mime_type": record.mime_type,
        "size_bytes": record.size_bytes,
        "created_at": rfc3339(record.created_at),
        "downloadable": True,
    }


def deleted_json(file_id: str) -> dict[str, str]:
    return {"id": file_id, "type": "file_deleted"}


# ------------------------------------------------------------------ list pages


@dataclass(frozen=True, slots=True)
class ListQuery:
    """A list request: at most ``limit`` files, newest first, older than ``after_id``
    or newer than ``before_id`` (the page immediately before that file); or, with
    ``ids``, those of the named files that are visible, as one page; or, with a
    ``scope_id``, the files of that scope (sessions: the gateway's files have none)."""

    limit: int = DEFAULT_LIMIT
    before_id: str | None = None
    after_id: str | None = None
    ids: tuple[str, ...] | None = None
    scope_id: str | None = None


def parse_list_query(query: MultiMapping[str]) -> ListQuery:
    """The list parameters, or a 400 naming the one that is wrong. ``page`` (a cursor
    from ``next_page``) stands for the ``before_id`` / ``after_id`` it encodes, in place
    of any sent with it; ``ids``
    (``ids[]=…`` repeated, as the SDKs send it, or ``ids=…``) excludes paging."""
    ids = tuple(dict.fromkeys([*query.getall("ids[]", []), *query.getall("ids", [])]))
    scope_id = query.get("scope_id") or None
    if ids:
        if any(name in query for name in ("limit", "page", "before_id", "after_id")):
            raise InvalidRequestError(
                "ids cannot be combined with limit, page, before_id or after_id", param="ids"
            )
        if len(ids) > MAX_IDS:
            raise InvalidRequestError(f"ids: at most {MAX_IDS} ids", param="ids")
        return ListQuery(ids=ids, scope_id=scope_id)
    raw_limit = query.get("limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        try:
            limit = int(raw_limit)
        except ValueError:
            raise InvalidRequestError(
                "limit: Input should be a valid integer", param="limit"
            ) from None
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidRequestError(
                f"limit: Input should be between 1 and {MAX_LIMIT}", param="limit"
            )
    before_id, after_id = query.get("before_id") or None, query.get("after_id") or None
    page = query.get("page") or None
    if page is not None:  # it wins: an SDK keeps the first page's query on the next
        before_id, after_id = decode_page(page)
    if before_id and after_id:
        raise InvalidRequestError("Cannot specify both before_id and after_id")
    for name, value in (("before_id", before_id), ("after_id", after_id)):
        if value is not None and not valid_file_id(value):
            raise InvalidRequestError(f"{name}: not a file id", param=name)
    return ListQuery(limit, before_id, after_id, scope_id=scope_id)


def encode_page(direction: str, file_id: str) -> str:
    raw = f"{direction}:{file_id}".encode()
    return PAGE_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page(page: str) -> tuple[str | None, str | None]:
    """(before_id, after_id) of a ``next_page`` cursor."""
    error = InvalidRequestError("page: not a page cursor from this API", param="page")
    if not page.startswith(PAGE_PREFIX):
        raise error
    text = page[len(PAGE_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise error from None
    direction, _, file_id = raw.partition(":")
    if direction == "before":
        return file_id, None
    if direction == "after":
        return None, file_id
    raise error


def page_json(records: Sequence[FileRecord], has_more: bool, query: ListQuery) -> dict[str, Any]:
    """A list page, newest first. ``next_page`` continues in the page's direction:
    towards older files, or towards newer ones for a ``before_id`` page."""
    first = records[0].id if records else None
    last = records[-1].id if records else None
    next_page = None
    if has_more and records:
        if query.before_id is not None:
            next_page = encode_page("before", records[0].id)
        else:
            next_page = encode_page("after", records[-1].id)
    return {
        "data": [file_json(record) for record in records],
        "first_id": first,
        "last_id": last,
        "has_more": has_more,
        "next_page": next_page,
    }


# ------------------------------------------------------------------ types and names


def sniff(head: bytes) -> str | None:
    """The type the first bytes of a file show, if they show one. A binary format's
    short prefix counts only with a NUL byte in the head (text never has one), so a
    text that starts with ``MZ`` stays text."""
    for prefix, offset, mime in _MAGIC:
        if head[offset : offset + len(prefix)] == prefix:
            if mime == "image/webp" and not head.startswith(b"RIFF"):
                continue
            if mime in _NEEDS_NUL and b"\x00" not in head:
                continue
            return mime
    return None


def declared_type(content_type: str | None, filename: str) -> str:
    """The type an upload declares: its part's Content-Type, else its name's extension
    (a generic ``application/octet-stream`` counts as no declaration)."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime and mime != "application/octet-stream":
        return mime
    guessed, _ = mimetypes.guess_type(filename, strict=False)
    return (guessed or "application/octet-stream").lower()


def decide_type(head: bytes, content_type: str | None, filename: str) -> str:
    """The stored type: what the bytes show, else what the upload declares."""
    return sniff(head) or declared_type(content_type, filename)


def is_text(mime: str) -> bool:
    return mime.startswith(TEXT_TYPES)


def clean_filename(raw: str | None, mime: str) -> str:
    """The name a file keeps: the last path component of what the client sent, without
    control characters, at most 500 characters; ``unnamed`` (and the type's extension)
    when nothing is left."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if not name or name in (".", ".."):
        name = "unnamed" + (mimetypes.guess_extension(mime, strict=False) or "")
    return name[:MAX_FILENAME_CHARS]


def download_headers(record: FileRecord) -> dict[str, str]:
    """The headers of a file's bytes: its stored type, as an attachment, which a browser
    neither sniffs into another type nor runs (``nosniff``, a sandboxing CSP)."""
    return {
        "Content-Type": record.mime_type,
        "Content-Disposition": content_disposition(record.filename),
        "Content-Length": str(record.size_bytes),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback name and the exact name in RFC 5987 form."""
    fallback = "".join(ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\' else "_" for ch in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
