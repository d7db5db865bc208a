"""The response cache's pure core: key derivation, entry sealing, SSE replay cuts."""

from __future__ import annotations

import pytest

from alicode_gw.money.contract import Usage
from alicode_gw.respcache.keys import (
    NONCE_BYTES,
    CacheKey,
    Entry,
    UnreadableEntry,
    cache_key,
    open_sealed,
    seal,
)
from alicode_gw.respcache.replay import sse_events

SECRET = b"s" * 32
BODY = b'{"model":"claude-sonnet-4-6","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'
BASE = (SECRET, 7, BODY, "2023-06-01", None, False)
ENTRY = Entry(
    stream=False,
    status=200,
    headers={"content-type": "application/json"},
    usage=Usage(11, 22, 3, 4, 5),
    body=b'{"content":[{"type":"text","text":"secret answer"}]}',
)


def variant(index: int, value: object) -> CacheKey:
    args = list(BASE)
    args[index] = value
    return cache_key(*args)  # type: ignore[arg-type]


def test_the_key_is_stable_and_hex() -> None:
    key = cache_key(*BASE)
    assert key == cache_key(*BASE)
    assert len(key.lookup_id) == 64 and int(key.lookup_id, 16) >= 0
    assert len(key.entry_key) == 32 and key.entry_key.hex() != key.lookup_id
    assert key.entry_key.hex() not in repr(key) and key.lookup_id not in repr(key)


@pytest.mark.parametrize(
    ("index", "value"),
    [
        (0, b"t" * 32),  # another server secret
        (1, 8),  # another account
        (2, BODY.replace(b"hi", b"ho")),  # another body
        (2, BODY + b" "),  # the same JSON, other bytes
        (3, "2024-01-01"),  # another anthropic-version
        (3, None),  # none sent
        (4, ""),  # an empty anthropic-beta is not an absent one
        (4, "prompt-caching-2024-07-31"),
        (5, True),  # stream
    ],
)
def test_every_part_of_the_request_changes_both_keys(index: int, value: object) -> None:
    base, other = cache_key(*BASE), variant(index, value)
    assert other.lookup_id != base.lookup_id and other.entry_key != base.entry_key


def test_fields_cannot_run_into_each_other() -> None:
    # Length prefixes: moving bytes from one field to the next is another request.
    one = cache_key(SECRET, 7, b"1" + BODY, "v", None, False)
    two = cache_key(SECRET, 71, BODY, "v", None, False)
    assert one.lookup_id != two.lookup_id


def test_a_sealed_entry_opens_with_its_key_only() -> None:
    key = cache_key(*BASE)
    value = seal(key, ENTRY)
    assert open_sealed(key, value) == ENTRY
    assert b"secret answer" not in value and b"content-type" not in value
    assert seal(key, ENTRY) != value  # a fresh nonce each time
    with pytest.raises(UnreadableEntry):
        open_sealed(variant(1, 8), value)  # another account's key
    moved = CacheKey(variant(1, 8).lookup_id, key.entry_key)
    with pytest.raises(UnreadableEntry):
        open_sealed(moved, value)  # the lookup id is authenticated: no moving entries
    tampered = bytearray(value)
    tampered[NONCE_BYTES + 3] ^= 1
    with pytest.raises(UnreadableEntry):
        open_sealed(key, bytes(tampered))
    with pytest.raises(UnreadableEntry):
        open_sealed(key, value[:NONCE_BYTES])


def test_tokens_saved_is_every_input_and_output_token() -> None:
    assert ENTRY.tokens_saved == 11 + 22 + 3 + 4 + 5


@pytest.mark.parametrize(
    "body",
    [
        b"event: a\ndata: {}\n\nevent: b\ndata: {}\n\n",
        b"event: a\r\ndata: {}\r\n\r\nevent: b\r\ndata: {}\r\n\r\n",
        b"event: a\ndata: {}\n\ndata: tail without end",
        b"",
    ],
)
def test_replay_cuts_a_stream_at_event_ends_and_keeps_every_byte(body: bytes) -> None:
    events = list(sse_events(body))
    assert b"".join(events) == body
    assert all(event.endswith((b"\n\n", b"\r\n\r\n")) for event in events[:-1])
    if body.endswith(b"\n\n"):
        assert len(events) == 2
