"""Input-token estimation (tiktoken cl100k_base, offline)."""

from __future__ import annotations

import sys
import threading

import pytest
import tiktoken
import tiktoken.registry

from alicode_gw.tokens import (
    DOCUMENT_FLAT_TOKENS,
    ENCODING,
    EXACT_CHARS,
    IMAGE_TOKENS,
    PER_MESSAGE_TOKENS,
    PER_REQUEST_TOKENS,
    PIECE_CHARS,
    THREAD_THRESHOLD_CHARS,
    TokenCounter,
    sample,
    split,
)

COUNTER = TokenCounter()


def test_known_text_counts() -> None:
    # cl100k_base: "hello world" is two tokens.
    assert COUNTER.count_text("hello world") == 2
    assert COUNTER.count_text("") == 0


def test_simple_request() -> None:
    payload = {"messages": [{"role": "user", "content": "hello world"}]}
    assert COUNTER.count(payload) == PER_REQUEST_TOKENS + PER_MESSAGE_TOKENS + 2


def test_system_tools_blocks_and_images() -> None:
    payload = {
        "system": [{"type": "text", "text": "hello world"}],
        "tools": [{"name": "get_weather", "description": "hello world", "input_schema": {}}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "hello world"},
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                    {"type": "document", "source": {"type": "url", "url": "https://x/y.pdf"}},
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "get_weather", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t", "content": "hello world"}],
            },
        ],
    }
    texts = (
        COUNTER.count_text("hello world") * 4
        + COUNTER.count_text("get_weather") * 2
        + COUNTER.count_text("{}") * 2
    )
    expected = (
        PER_REQUEST_TOKENS + 3 * PER_MESSAGE_TOKENS + IMAGE_TOKENS + DOCUMENT_FLAT_TOKENS + texts
    )
    assert COUNTER.count(payload) == expected


def test_malformed_parts_are_ignored_not_fatal() -> None:
    payload = {"messages": [None, {"content": 5}, {"content": [7, {"type": "text"}]}], "tools": 3}
    assert COUNTER.count(payload) == PER_REQUEST_TOKENS + 3 * PER_MESSAGE_TOKENS


async def test_large_text_counted_in_thread_same_result() -> None:
    text = "lorem ipsum dolor sit amet " * (THREAD_THRESHOLD_CHARS // 10)
    payload = {"messages": [{"role": "user", "content": text}]}
    assert await COUNTER.count_async(payload) == COUNTER.count(payload)
    assert COUNTER.count(payload) > THREAD_THRESHOLD_CHARS // 10


def test_counts_match_an_untouched_encoder() -> None:
    """The counter drops the encoder's Python copy of its merge ranks (memory); the
    counts must be those of a complete, separately built cl100k_base encoder."""
    constructors = tiktoken.registry.ENCODING_CONSTRUCTORS  # found by COUNTER's load
    assert constructors is not None
    reference = tiktoken.Encoding(**constructors[ENCODING]())
    samples = [
        "hello world",
        "東京の天気は晴れです。 Привет, мир! 🙂 " * 20,
        "def f(x):\n    return {'a': [1, 2, 3]}\n" * 50,
        "\u0000\ufffd mixed\tspace  ",
    ]
    for text in samples:
        assert COUNTER.count_text(text) == len(reference.encode_ordinary(text))
    batch = COUNTER._encoding.encode_ordinary_batch(samples)
    assert [len(tokens) for tokens in batch] == [
        len(reference.encode_ordinary(text)) for text in samples
    ]


def test_counting_many_texts_starts_no_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request of many messages is counted in the calling thread (the event loop's,
    below ``THREAD_THRESHOLD_CHARS``): tiktoken's batch encoding would start and join a
    pool of threads on every request."""
    started: list[threading.Thread] = []
    start = threading.Thread.start

    def counting_start(thread: threading.Thread) -> None:
        started.append(thread)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    turns = [f"turn {n}: hello world, and more words." for n in range(12)]
    payload = {
        "system": "be brief",
        "messages": [
            {"role": ("user", "assistant")[n % 2], "content": t} for n, t in enumerate(turns)
        ],
    }
    expected = (
        PER_REQUEST_TOKENS
        + len(turns) * PER_MESSAGE_TOKENS
        + sum(map(COUNTER.count_text, [payload["system"], *turns]))
    )
    assert COUNTER.count(payload) == expected
    assert started == []


def test_long_text_in_pieces_counts_as_if_whole() -> None:
    """Pieces are cut before a space: ordinary prose counts exactly as encoded whole,
    code (runs of spaces) at most one token per piece apart."""
    encoding = COUNTER._encoding
    prose = " ".join(f"word{n % 97} and Привет, мир 🙂." for n in range(6000))
    assert len(prose) > 20 * PIECE_CHARS
    assert COUNTER.count_text(prose) == len(encoding.encode_ordinary(prose))
    code = "def f(x):\n    return {'a': [1, 2, 3]}\n" * 3000
    pieces = len(list(split(code)))
    assert abs(COUNTER.count_text(code) - len(encoding.encode_ordinary(code))) <= pieces


def test_the_encoded_characters_are_bounded_whatever_the_body() -> None:
    """A 16 MB run without a space (superlinear for BPE when encoded whole) is sampled:
    about ``EXACT_CHARS`` characters in pieces of at most ``PIECE_CHARS``."""
    text = "x" * 16_000_000
    pieces, scale = sample([text])
    assert max(map(len, pieces)) <= PIECE_CHARS
    assert sum(map(len, pieces)) <= EXACT_CHARS + PIECE_CHARS
    assert scale * sum(map(len, pieces)) == len(text)
    # The estimate scales the sample's count to the whole.
    per_piece = COUNTER.count_text("x" * PIECE_CHARS)
    assert COUNTER.count_text(text) == pytest.approx(per_piece * len(text) / PIECE_CHARS, rel=0.01)


def test_a_sampled_estimate_stays_close_to_the_exact_count() -> None:
    texts = [
        " ".join(f"item {n} costs {n * 7 % 1000} units; Straße, 東京." for n in range(40_000)),
        "def f(x):\n    return {'a': [1, 2, 3]}\n" * 20_000,
    ]
    assert sum(map(len, texts)) > 3 * EXACT_CHARS
    _, scale = sample(texts)
    exact = sum(len(COUNTER._encoding.encode_ordinary(piece)) for t in texts for piece in split(t))
    estimate = COUNTER.count({"messages": [{"role": "user", "content": t} for t in texts]})
    overhead = PER_REQUEST_TOKENS + 2 * PER_MESSAGE_TOKENS
    assert scale > 1 and estimate - overhead == pytest.approx(exact, rel=0.03)


def test_a_system_turn_inside_messages_is_counted() -> None:
    """Claude Code's mid-conversation ``system`` turns: counted like any message."""
    plain = {"messages": [{"role": "user", "content": "hello world"}]}
    with_system = {
        "messages": [
            {"role": "user", "content": "hello world"},
            {"role": "system", "content": [{"type": "text", "text": "hello world"}]},
        ]
    }
    assert COUNTER.count(with_system) == COUNTER.count(plain) + PER_MESSAGE_TOKENS + 2


def _conversation(turns: int, new_turn: str = "") -> dict[str, object]:
    """An agent's request: a long system prompt, a tool, ``turns`` long messages and a
    last one (``new_turn``) that only this request has."""
    long = "The repository has a service, its tests and its docs; read before you write. "
    messages = [
        {"role": ("user", "assistant")[n % 2], "content": f"turn {n}: " + long * 10}
        for n in range(turns)
    ]
    messages.append({"role": "user", "content": new_turn or "go on"})
    tool = {"name": "read_file", "description": long * 8, "input_schema": {"type": "object"}}
    return {"system": long * 20, "tools": [tool], "messages": messages}


class _Encodes:
    """Counts the characters a counter hands to its encoder (tiktoken's encoding object,
    shared by every counter of the process: the expected counts come first)."""

    def __init__(self, counter: TokenCounter, monkeypatch: pytest.MonkeyPatch) -> None:
        self.chars = 0
        self.threads: set[int] = set()
        encode = counter._encoding.encode_ordinary

        def counting(text: str) -> list[int]:
            self.chars += len(text)
            self.threads.add(threading.get_ident())
            return encode(text)

        monkeypatch.setattr(counter._encoding, "encode_ordinary", counting)


def test_an_agents_next_turn_encodes_only_what_is_new(monkeypatch: pytest.MonkeyPatch) -> None:
    first = _conversation(6)
    after = _conversation(8, new_turn="and now the tests")  # two more messages
    expected = COUNTER.count(first), COUNTER.count(after)
    counter = TokenCounter()
    encodes = _Encodes(counter, monkeypatch)
    assert counter.count(first, scope=1) == expected[0]
    first_chars = encodes.chars
    assert first_chars > 5000
    assert counter.count(after, scope=1) == expected[1]
    new_chars = encodes.chars - first_chars
    assert 0 < new_chars < first_chars / 3  # the two new long turns and the short ones


def test_remembered_counts_answer_only_their_own_account(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    payload = _conversation(4)
    expected = COUNTER.count(payload)
    counter = TokenCounter()
    encodes = _Encodes(counter, monkeypatch)
    assert counter.count(payload, scope=1) == expected
    once = encodes.chars
    assert counter.count(payload, scope=2) == expected  # another account: encoded again
    assert encodes.chars == 2 * once
    assert counter.count(payload) == expected  # no account: nothing remembered is used
    assert encodes.chars == 3 * once
    assert counter.count(payload, scope=1) == expected  # its own account: remembered
    short = encodes.chars - 3 * once
    assert 0 < short < once / 10  # only the texts too short to remember


def test_no_text_is_kept_and_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = TokenCounter(remembered=4)
    encodes = _Encodes(counter, monkeypatch)
    texts = [f"{n} " + "words of a long message " * 40 for n in range(10)]
    refs = [sys.getrefcount(text) for text in texts]
    for n in range(len(texts)):
        counter.count({"messages": [{"role": "user", "content": texts[n]}]}, scope=7)
    assert [sys.getrefcount(text) for text in texts] == refs  # no reference kept
    remembered = {**counter._older, **counter._recent}
    assert all(isinstance(k, bytes) and len(k) == 16 for k in remembered)  # digests only
    assert all(type(v) is int for v in remembered.values())
    assert len(counter._recent) + len(counter._older) <= 2 * 4
    before = encodes.chars
    counter.count({"messages": [{"role": "user", "content": texts[-1]}]}, scope=7)
    assert encodes.chars == before  # the newest is remembered
    counter.count({"messages": [{"role": "user", "content": texts[0]}]}, scope=7)
    assert encodes.chars == before + len(texts[0])  # the oldest was dropped


async def test_remembered_counts_in_a_worker_thread_too(monkeypatch: pytest.MonkeyPatch) -> None:
    big = "lorem ipsum dolor sit amet " * (THREAD_THRESHOLD_CHARS // 20)
    payload = {"messages": [{"role": "user", "content": big}]}
    expected = COUNTER.count(payload)
    counter = TokenCounter()
    encodes = _Encodes(counter, monkeypatch)
    assert await counter.count_async(payload, scope=3) == expected
    assert encodes.chars == len(big)
    assert threading.get_ident() not in encodes.threads  # encoded off the event loop
    assert await counter.count_async(payload, scope=3) == expected
    assert encodes.chars == len(big)


def test_account_zero_is_remembered_and_a_sampled_request_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    payload = _conversation(3)
    huge = {"messages": [{"role": "user", "content": "many words here " * (EXACT_CHARS // 10)}]}
    expected = COUNTER.count(payload), COUNTER.count(huge)
    counter = TokenCounter()
    encodes = _Encodes(counter, monkeypatch)
    assert counter.count(payload, scope=0) == expected[0]
    once = encodes.chars
    assert counter.count(payload, scope=0) == expected[0]
    assert encodes.chars - once < once / 10  # remembered for account 0
    before = encodes.chars
    assert counter.count(huge, scope=0) == expected[1]
    first = encodes.chars - before
    assert counter.count(huge, scope=0) == expected[1]
    assert encodes.chars - before == 2 * first > 0  # sampled both times: not remembered


def test_remembering_off(monkeypatch: pytest.MonkeyPatch) -> None:
    payload = _conversation(3)
    expected = COUNTER.count(payload)
    counter = TokenCounter(remembered=0)
    encodes = _Encodes(counter, monkeypatch)
    assert counter.count(payload, scope=1) == expected
    once = encodes.chars
    assert counter.count(payload, scope=1) == expected
    assert encodes.chars == 2 * once
    assert not counter._recent and not counter._older
