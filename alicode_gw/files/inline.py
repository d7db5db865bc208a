"""Using a file: a content block ``{"type": "image" | "document", "source": {"type":
"file", "file_id": "file_…"}}`` gets the stored bytes in its place before a request
goes anywhere.

The file belongs to the gateway, not to an upstream organisation, so the upstream is
sent what any credential can read: a ``base64`` source with the file's ``media_type``
(images, PDFs) or a ``text`` source (text files). This is the one rewrite of a request
body besides a model alias; the answer announces it with ``x-alicode-files-inlined: N``
(N blocks). A file that is unknown, deleted or another account's is a 404
``not_found_error`` before anything is admitted, held, billed or sent.

:func:`find_refs` and :func:`replace_sources` are pure (a walk over ``messages[].content``
and the content of ``tool_result`` blocks); :func:`inline_files` loads the bytes and is
what the Messages, count_tokens and batch paths call.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from alicode_gw.errors import InvalidRequestError, NotFoundError, RequestTooLargeError
from alicode_gw.files import store
from alicode_gw.files.objects import is_text
from alicode_gw.state import RequestContext, State

BLOCK_KINDS = ("image", "document")


@dataclass(frozen=True, slots=True)
class FileRef:
    """One block that names a file: where it is (for error messages), its type, the id."""

    path: str
    kind: str
    file_id: str


@dataclass(frozen=True, slots=True)
class Loaded:
    mime_type: str
    data: bytes


def _file_ref(block: Any, path: str) -> FileRef | None:
    if not isinstance(block, dict) or block.get("type") not in BLOCK_KINDS:
        return None
    source = block.get("source")
    if not isinstance(source, dict) or source.get("type") != "file":
        return None
    file_id = source.get("file_id")
    if not isinstance(file_id, str):
        return None  # the upstream names what is wrong with it
    return FileRef(path, block["type"], file_id)


def _walk(payload: dict[str, Any]) -> Iterator[tuple[list[Any], int, str]]:
    """(blocks list, index, path) of every content block that may carry a file."""
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, block in enumerate(content):
            path = f"messages.{i}.content.{j}"
            yield content, j, path
            if not isinstance(block, dict) or block.get("type") != "tool_result":
                continue
            inner = block.get("content")
            if isinstance(inner, list):
                for k in range(len(inner)):
                    yield inner, k, f"{path}.content.{k}"


def find_refs(payload: dict[str, Any]) -> list[FileRef]:
    """Every block of ``payload`` whose source is a file, in order."""
    refs = []
    for blocks, index, path in _walk(payload):
        ref = _file_ref(blocks[index], path)
        if ref is not None:
            refs.append(ref)
    return refs


def check_kind(ref: FileRef, mime_type: str) -> None:
    """An image block takes an image; a document block a PDF or a text file."""
    if ref.kind == "image" and not mime_type.startswith("image/"):
        raise InvalidRequestError(
            f"{ref.path}: file '{ref.file_id}' is {mime_type}, not an image; use a "
            "document block for it.",
            param=ref.path,
        )
    if ref.kind == "document" and not (mime_type == "application/pdf" or is_text(mime_type)):
        raise InvalidRequestError(
            f"{ref.path}: file '{ref.file_id}' is {mime_type}; a document block takes a "
            "PDF or a text file (use an image block for an image).",
            param=ref.path,
        )


def inline_source(loaded: Loaded) -> dict[str, Any]:
    """The source a stored file becomes."""
    if is_text(loaded.mime_type):
        return {"type": "text", "media_type": "text/plain", "data": loaded.data.decode("utf-8")}
    return {
        "type": "base64",
        "media_type": loaded.mime_type,
        "data": base64.b64encode(loaded.data).decode("ascii"),
    }


def replace_sources(payload: dict[str, Any], files: Mapping[str, Loaded]) -> dict[str, Any]:
    """A copy of ``payload`` with each file source replaced by its bytes (``files`` by
    id); only the messages and blocks on the way to a replaced source are copied, the
    rest is shared with ``payload``, which is left as it was."""
    messages = list(payload["messages"])
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        new_content = _replace_in(content, files)
        if new_content is not content:
            messages[i] = {**message, "content": new_content}
    return {**payload, "messages": messages}


def _replace_in(blocks: list[Any], files: Mapping[str, Loaded]) -> list[Any]:
    out: list[Any] | None = None
    for j, block in enumerate(blocks):
        new = block
        ref = _file_ref(block, "")
        if ref is not None:
            new = {**block, "source": inline_source(files[ref.file_id])}
        elif isinstance(block, dict) and block.get("type") == "tool_result":
            inner = block.get("content")
            if isinstance(inner, list):
                replaced = _replace_in(inner, files)
                if replaced is not inner:
                    new = {**block, "content": replaced}
        if new is not block:
            if out is None:
                out = list(blocks)
            out[j] = new
    return blocks if out is None else out


def inlined_size(mime_type: str, size_bytes: int) -> int:
    """The least a file of ``size_bytes`` adds to a body once inlined (base64 is exact;
    a text's JSON escapes only add to it)."""
    return size_bytes if is_text(mime_type) else 4 * ((size_bytes + 2) // 3)


def too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"With its files inlined the request is larger than the "
        f"{limit // (1024 * 1024)} MB limit; reference fewer or smaller files."
    )


async def inline_files(
    state: State, account_id: int, payload: dict[str, Any], room: int
) -> tuple[dict[str, Any], int]:
    """``payload`` with every file source of ``account_id``'s files replaced by the
    file's bytes, and how many blocks were; ``payload`` itself when none names a file.
    404 for a file that is not the account's live file, 400 for a block of the wrong
    kind for its file, 413 (before any file is read) when the files' stored sizes
    already pass ``room`` bytes."""
    refs = find_refs(payload)
    if not refs:
        return payload, 0
    wanted = list(dict.fromkeys(ref.file_id for ref in refs))
    records = await store.get_many(state.db, account_id, wanted)
    for ref in refs:
        record = records.get(ref.file_id)
        if record is None:
            raise NotFoundError(f"{ref.path}: file '{ref.file_id[:80]}' not found.")
        check_kind(ref, record.mime_type)
    adds = sum(
        inlined_size(records[r.file_id].mime_type, records[r.file_id].size_bytes) for r in refs
    )
    if adds > room:
        raise too_large(state.config.max_body_bytes)
    loaded = {
        file_id: Loaded(records[file_id].mime_type, await store.read_all(state.db, file_id))
        for file_id in wanted
    }
    return replace_sources(payload, loaded), len(refs)


async def inline_request(
    ctx: RequestContext, body: bytes, payload: dict[str, Any]
) -> tuple[bytes, dict[str, Any]]:
    """The request's body and payload with its files inlined (unchanged when it names
    none); the count goes to ``ctx.files_inlined`` (the response header)."""
    limit = ctx.state.config.max_body_bytes
    inlined, count = await inline_files(
        ctx.state, ctx.authenticated.account_id, payload, limit - len(body)
    )
    if not count:
        return body, payload
    new_body = json.dumps(inlined, separators=(",", ":"), ensure_ascii=False).encode()
    if len(new_body) > limit:
        raise too_large(limit)
    ctx.files_inlined = count
    return new_body, inlined
