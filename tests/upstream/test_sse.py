"""SSEParser / UsageScanner / format_event against hand-built byte streams."""

from __future__ import annotations

import json
import random

import pytest

from alicode_gw.upstream.sse import RawEvent, SSEEvent, SSEParser, UsageScanner, format_event


def _compact(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


PING = '{"type": "ping"}'
SIGNATURE = "EqQBCkYIBRgCIkBn1y4Rbl+Q3Yc0aXx9k2HuJt0fWm0vZs4Q=="

# A realistic Messages stream: thinking (with signature), text with non-ASCII
# characters, a tool_use whose input arrives as input_json_delta pieces, cumulative
# usage in message_delta. (event name, data) in order.
EVENTS: list[tuple[str, str]] = [
    (
        "message_start",
        _compact(
            {
                "type": "message_start",
                "message": {
                    "id": "msg_01AbCdEfGhIjKlMnOpQrStUv",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-sonnet-4-6",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": 410,
                        "cache_creation_input_tokens": 1200,
                        "cache_read_input_tokens": 0,
                        "cache_creation": {
                            "ephemeral_5m_input_tokens": 200,
                            "ephemeral_1h_input_tokens": 1000,
                        },
                        "output_tokens": 1,
                        "service_tier": "standard",
                    },
                },
            }
        ),
    ),
    (
        "content_block_start",
        _compact(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""},
            }
        ),
    ),
    ("ping", PING),
    *[
        (
            "content_block_delta",
            _compact(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "thinking_delta", "thinking": piece},
                }
            ),
        )
        for piece in ("The user wants", " the weather.")
    ],
    (
        "content_block_delta",
        _compact(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "signature_delta", "signature": SIGNATURE},
            }
        ),
    ),
    ("content_block_stop", '{"type":"content_block_stop","index":0}'),
    (
        "content_block_start",
        '{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}',
    ),
    *[
        (
            "content_block_delta",
            _compact(
                {
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": {"type": "text_delta", "text": piece},
                }
            ),
        )
        for piece in ("Checking", " the météo", " for 東京 ✓")
    ],
    ("content_block_stop", '{"type":"content_block_stop","index":1}'),
    (
        "content_block_start",
        _compact(
            {
                "type": "content_block_start",
                "index": 2,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_01XyZaBcDeFgHiJkLmNoPqRs",
                    "name": "get_weather",
                    "input": {},
                },
            }
        ),
    ),
    *[
        (
            "content_block_delta",
            _compact(
                {
                    "type": "content_block_delta",
                    "index": 2,
                    "delta": {"type": "input_json_delta", "partial_json": piece},
                }
            ),
        )
        for piece in ("", "{", "city: ", "Tokyo}")  # no quotes: exact char count
    ],
    ("content_block_stop", '{"type":"content_block_stop","index":2}'),
    (
        "message_delta",
        _compact(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {
                    "input_tokens": 410,
                    "cache_creation_input_tokens": 1200,
                    "cache_read_input_tokens": 0,
                    "output_tokens": 87,
                },
            }
        ),
    ),
    ("message_stop", '{"type":"message_stop"}'),
]
EXPECTED = [SSEEvent(name, data) for name, data in EVENTS]
STREAM = "".join(f"event: {name}\ndata: {data}\n\n" for name, data in EVENTS).encode()
GENERATED_CHARS = sum(
    len(s)
    for s in (
        "The user wants",
        " the weather.",
        "Checking",
        " the météo",
        " for 東京 ✓",
        "",
        "{",
        "city: ",
        "Tokyo}",
    )
)


def feed_all(parser: SSEParser, chunks: list[bytes]) -> list[SSEEvent]:
    out: list[SSEEvent] = []
    for chunk in chunks:
        out += parser.feed(chunk)
    out += parser.flush()
    return out


def random_splits(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 60)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def test_stream_fixture_is_nontrivial() -> None:
    assert STREAM.count(b"\n\n") == len(EVENTS)
    assert "東京".encode() in STREAM  # multi-byte characters really are present


def test_whole_stream() -> None:
    assert feed_all(SSEParser(), [STREAM]) == EXPECTED


def test_byte_by_byte() -> None:
    assert feed_all(SSEParser(), [STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


WHOLE_EVENT_CHUNKS = [
    b"event: message_start\ndata: {}\n\n",  # the usual chunk: read by the fast path
    b"event: a\ndata: 1\n\nevent: b\ndata: 2\n\n",
    b"event: \ndata: no type\n\n",  # an empty type is no type
    b"event: e\ndata: \n\n",  # empty data is still dispatched
    b"id: 7\n\n",  # the general rules: sets the last id, dispatches nothing
    b"event: after-id\ndata: x\n\n",  # the fast path reports the last id too
    b"retry: 10\n",  # a field pending...
    b"event: r\ndata: y\n\n",  # ...belongs to this event: general rules
    b": comment\n\nevent: c\ndata: z\n\n",
    b"event: two\ndata: 1\ndata: 2\n\n",  # two data lines
    b"event: f\ndata: 3\n\n\n",  # a blank line more
    b"data: untyped\n\n",
    b"event: g\r\ndata: 4\r\n\r\n",
]


def test_whole_event_chunks_read_as_the_general_rules_read_them() -> None:
    """Chunks of whole events take a fast path; byte by byte takes the general one."""
    data = b"".join(WHOLE_EVENT_CHUNKS)
    assert feed_all(SSEParser(), WHOLE_EVENT_CHUNKS) == feed_all(
        SSEParser(), [data[i : i + 1] for i in range(len(data))]
    )
    assert len(feed_all(SSEParser(), WHOLE_EVENT_CHUNKS)) == 12


@pytest.mark.parametrize("seed", range(20))
def test_random_splits(seed: int) -> None:
    assert feed_all(SSEParser(), random_splits(STREAM, seed)) == EXPECTED


@pytest.mark.parametrize("seed", range(10))
def test_feed_raw_gives_the_events_undecoded(seed: int) -> None:
    """The relay's path (type and data as bytes; ``feed`` decodes the same) follows the
    rules whatever the chunking and line endings, BOM, comments, ids and retries."""
    stream = b"\xef\xbb\xbf: comment\r\n\r\n" + STREAM.replace(
        b"\n", b"\r\n" if seed % 2 else b"\n"
    )
    stream += b"id: 7\nretry: 250\ndata: no type\ndata: two lines\n\nevent:\ndata: empty type\n\n"
    raw: list[RawEvent] = []
    parser = SSEParser()
    for chunk in random_splits(stream, seed):
        raw += parser.feed_raw(chunk)
    assert [(name, data) for name, data, _, _ in raw[:-2]] == [
        (e.event.encode() if e.event else None, e.data.encode()) for e in EXPECTED
    ]
    assert raw[-2:] == [(None, b"no type\ntwo lines", "7", 250), (None, b"empty type", "7", None)]


@pytest.mark.parametrize("eol", [b"\r\n", b"\r"])
def test_other_line_endings(eol: bytes) -> None:
    data = STREAM.replace(b"\n", eol)
    assert feed_all(SSEParser(), [data]) == EXPECTED
    assert feed_all(SSEParser(), [data[i : i + 1] for i in range(len(data))]) == EXPECTED
    for seed in range(5):
        assert feed_all(SSEParser(), random_splits(data, seed)) == EXPECTED


def test_crlf_split_between_cr_and_lf_every_position() -> None:
    data = STREAM.replace(b"\n", b"\r\n")
    cr_positions = [i + 1 for i in range(len(data)) if data[i] == 0x0D]
    for pos in cr_positions[:40]:
        assert feed_all(SSEParser(), [data[:pos], data[pos:]]) == EXPECTED


def test_split_crlf_is_one_line_break() -> None:
    parser = SSEParser()
    # If the LF after the chunk-final CR counted as a second line break, "a" would be
    # dispatched alone; as one break, both lines belong to the same event.
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\ndata: b\r") == []
    assert parser.feed(b"\n\r") == [SSEEvent(None, "a\nb")]
    assert parser.feed(b"\n") == []  # LF completing the CRLF, not another blank line
    assert parser.feed(b"data: c\n\n") == [SSEEvent(None, "c")]


def test_mixed_line_endings() -> None:
    data = b"event: x\rdata: 1\r\ndata: 2\n\r\nevent: y\ndata: 3\r\r"
    assert feed_all(SSEParser(), [data]) == [SSEEvent("x", "1\n2"), SSEEvent("y", "3")]


def test_multibyte_character_split_across_chunks() -> None:
    data = "data: ab東✓é\n\n".encode()
    for i in range(1, len(data)):
        assert feed_all(SSEParser(), [data[:i], data[i:]]) == [SSEEvent(None, "ab東✓é")]


def test_invalid_utf8_is_replaced() -> None:
    assert SSEParser().feed(b"data: a\xffb\n\n") == [SSEEvent(None, "a\ufffdb")]


def test_comments_ignored() -> None:
    data = b": hello\n:\ndata: a\n: between\ndata: b\n\n:only a comment\n\n"
    assert feed_all(SSEParser(), [data]) == [SSEEvent(None, "a\nb")]


def test_field_value_spacing() -> None:
    parser = SSEParser()
    assert parser.feed(b"data:x\n\n") == [SSEEvent(None, "x")]
    assert parser.feed(b"data:  x \n\n") == [SSEEvent(None, " x ")]
    assert parser.feed(b"data: a: b\n\n") == [SSEEvent(None, "a: b")]
    assert parser.feed(b"event:e\ndata:\n\n") == [SSEEvent("e", "")]


def test_multiline_and_empty_data() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\ndata:\ndata: b\n\n") == [SSEEvent(None, "a\n\nb")]
    assert parser.feed(b"data\n\n") == [SSEEvent(None, "")]  # no colon: empty value
    assert parser.feed(b"data\ndata\n\n") == [SSEEvent(None, "\n")]


def test_event_without_data_is_not_dispatched() -> None:
    parser = SSEParser()
    assert parser.feed(b"event: lonely\n\n") == []
    # ... and its type does not leak into the next event
    assert parser.feed(b"data: x\n\n") == [SSEEvent(None, "x")]
    assert parser.feed(b"\n\n\n") == []


def test_unknown_fields_ignored() -> None:
    assert SSEParser().feed(b"foo: bar\nevent\ndata: x\n\n") == [SSEEvent(None, "x")]


def test_bom_ignored_once() -> None:
    assert feed_all(SSEParser(), [b"\xef\xbb\xbfdata: x\n\n"]) == [SSEEvent(None, "x")]
    assert feed_all(SSEParser(), [b"\xef", b"\xbb", b"\xbf", b"data: x\n\n"]) == [
        SSEEvent(None, "x")
    ]
    # Only the first BOM is dropped: a second one makes the field name "\ufeffdata".
    assert feed_all(SSEParser(), [b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n"]) == []
    # A short first chunk that is not a BOM prefix is not swallowed.
    assert feed_all(SSEParser(), [b"d", b"ata: y\n\n"]) == [SSEEvent(None, "y")]
    assert feed_all(SSEParser(), [b"\xef", b"data: z\n\n"]) == []  # "\ufffddata" field


def test_bom_whole_stream() -> None:
    assert feed_all(SSEParser(), [b"\xef\xbb\xbf" + STREAM]) == EXPECTED


def test_unterminated_final_event_is_discarded() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: done\n\ndata: partial\n") == [SSEEvent(None, "done")]
    assert parser.flush() == []
    parser = SSEParser()
    assert parser.feed(b"event: e\ndata: no newline at all") == []
    assert parser.flush() == []
    # flush resets: the discarded event's lines do not leak into what comes next
    assert parser.feed(b"data: fresh\n\n") == [SSEEvent(None, "fresh")]


def test_truncated_stream_yields_complete_events_only() -> None:
    cut = STREAM[: len(STREAM) - 5]
    assert feed_all(SSEParser(), [cut]) == EXPECTED[:-1]


def test_id_and_retry() -> None:
    parser = SSEParser()
    events = parser.feed(
        b"id: 7\nretry: 1500\ndata: a\n\ndata: b\n\nid\ndata: c\n\n"
        b"id: x\x00y\nretry: 12ms\ndata: d\n\n"
    )
    assert events == [
        SSEEvent(None, "a", "7", 1500),
        SSEEvent(None, "b", "7", None),  # last event id persists, retry does not
        SSEEvent(None, "c", "", None),  # bare "id" resets it to empty
        SSEEvent(None, "d", "", None),  # id with NUL and non-numeric retry ignored
    ]


def test_format_event_round_trip() -> None:
    cases = [
        ("message_start", '{"type":"message_start"}'),
        ("x", ""),
        ("x", "line1\nline2\n"),
        ("x", "\n\n"),
        ("x", "  leading spaces and trailing  "),
        ("x", ": not a comment"),
        ("ünï", "東京 ✓ data: inside"),
        ("x", 'data: {"json": "value"}'),
    ]
    blob = b"".join(format_event(name, data) for name, data in cases)
    assert format_event("a", "b") == b"event: a\ndata: b\n\n"
    assert format_event("a", "b\nc") == b"event: a\ndata: b\ndata: c\n\n"
    expected = [SSEEvent(name, data) for name, data in cases]
    assert feed_all(SSEParser(), [blob]) == expected
    assert feed_all(SSEParser(), [blob[i : i + 1] for i in range(len(blob))]) == expected


def test_format_event_carriage_returns_become_line_feeds() -> None:
    out = format_event("x", "a\r\nb\rc")
    assert out == b"event: x\ndata: a\ndata: b\ndata: c\n\n"
    assert SSEParser().feed(out) == [SSEEvent("x", "a\nb\nc")]


def test_format_event_rejects_line_break_in_name() -> None:
    with pytest.raises(ValueError):
        format_event("a\nb", "x")
    with pytest.raises(ValueError):
        format_event("a\rb", "x")


# ---------------------------------------------------------------- UsageScanner


def scan(chunks: list[bytes]) -> UsageScanner:
    scanner = UsageScanner()
    for chunk in chunks:
        scanner.feed(chunk)
    return scanner


def assert_full_usage(s: UsageScanner) -> None:
    assert s.saw_message_start and s.saw_message_stop
    assert s.message_id == "msg_01AbCdEfGhIjKlMnOpQrStUv"
    assert s.model == "claude-sonnet-4-6"
    assert s.stop_reason == "tool_use"
    assert (s.input_tokens, s.output_tokens) == (410, 87)
    assert (s.cache_creation_input_tokens, s.cache_read_input_tokens) == (1200, 0)
    assert (s.cache_creation_5m, s.cache_creation_1h) == (200, 1000)
    assert s.error is None
    assert s.output_chars == GENERATED_CHARS


def test_usage_scanner_whole_and_split() -> None:
    assert_full_usage(scan([STREAM]))
    assert_full_usage(scan([STREAM[i : i + 1] for i in range(len(STREAM))]))
    assert_full_usage(scan(random_splits(STREAM.replace(b"\n", b"\r\n"), 3)))


def test_usage_scanner_cut_stream() -> None:
    # Cut before message_delta: only message_start's usage, output estimated from chars.
    cut = STREAM[: STREAM.index(b"event: message_delta")]
    s = scan([cut])
    assert s.saw_message_start and not s.saw_message_stop
    assert (s.input_tokens, s.output_tokens, s.stop_reason) == (410, 1, None)
    assert s.output_chars == GENERATED_CHARS


def _start(usage: dict[str, object]) -> bytes:
    msg = {"id": "msg_1", "model": "m", "content": [], "usage": usage}
    return format_event("message_start", _compact({"type": "message_start", "message": msg}))


def _delta(usage: dict[str, object], stop: str = "end_turn") -> bytes:
    body = {"type": "message_delta", "delta": {"stop_reason": stop}, "usage": usage}
    return format_event("message_delta", _compact(body))


def test_usage_delta_overrides_only_present_non_null_fields() -> None:
    s = scan(
        [
            _start({"input_tokens": 20, "cache_read_input_tokens": 5, "output_tokens": 2}),
            _delta({"output_tokens": 9, "input_tokens": None}),
            _delta({"output_tokens": 15, "cache_read_input_tokens": 7}, "max_tokens"),
        ]
    )
    assert (s.input_tokens, s.output_tokens, s.cache_read_input_tokens) == (20, 15, 7)
    assert s.stop_reason == "max_tokens"
    assert not s.saw_message_stop


def test_usage_without_cache_breakdown_counts_as_5m() -> None:
    s = scan([_start({"input_tokens": 1, "cache_creation_input_tokens": 50, "output_tokens": 1})])
    assert (s.cache_creation_5m, s.cache_creation_1h) == (50, 0)


def test_usage_scanner_error_event() -> None:
    err = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    cut = STREAM[: STREAM.index(b"event: content_block_stop")]
    s = scan([cut, format_event("error", _compact(err))])
    assert s.error == {"type": "overloaded_error", "message": "Overloaded"}
    assert s.saw_message_start and not s.saw_message_stop
    assert s.output_tokens == 1


def test_usage_scanner_tolerates_garbage() -> None:
    s = scan(
        [
            b"event: message_start\ndata: {not json\n\n",
            b"event: message_delta\ndata: [1, 2]\n\n",
            b'event: message_delta\ndata: {"usage": {"output_tokens": "many"}}\n\n',
            b"event: error\ndata: upstream exploded\n\n",
        ]
    )
    assert not s.saw_message_start
    assert s.output_tokens == 0
    assert s.error is not None and s.error["message"] == "upstream exploded"


def test_output_chars_counts_escapes_approximately() -> None:
    text = 'say "hi"\n'
    data = _compact(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
    )
    s = scan([format_event("content_block_delta", data)])
    escaped = len(json.dumps(text)) - 2
    assert len(text) <= s.output_chars == escaped
