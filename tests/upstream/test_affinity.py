"""Cache-affine routing's pure core on fixtures: the affinity key (what it covers, what
it ignores), weighted rendezvous hashing over cache groups, rate-limit headroom."""

from __future__ import annotations

import collections
import copy
from datetime import UTC, datetime
from typing import Any

import pytest
import xxhash

from alicode_gw.upstream.affinity import (
    MAX_LIMITED_SECONDS,
    Candidate,
    Rendezvous,
    affinity_key,
    limited_for,
)

CC = {"type": "ephemeral"}
TOOLS = [
    {"name": "read_file", "description": "Read a file", "input_schema": {"type": "object"}},
    {"name": "bash", "description": "Run a command", "input_schema": {"type": "object"}},
]


def claude_code_turn(turns: int, system: str = "You are Claude Code. " * 50) -> dict[str, Any]:
    """A request as Claude Code sends it: tools, a system prompt marked for caching, a
    growing history with the last user message marked too."""
    messages: list[dict[str, Any]] = []
    for n in range(turns):
        messages.append({"role": "user", "content": [{"type": "text", "text": f"task {n}"}]})
        if n < turns - 1:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": "ok"}]})
    messages[-1]["content"][-1]["cache_control"] = CC
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1000 + turns,
        "tools": TOOLS,
        "system": [{"type": "text", "text": system, "cache_control": CC}],
        "messages": messages,
    }


def test_key_is_stable_over_a_conversation_and_names_its_prefix() -> None:
    first = affinity_key(7, "claude-sonnet-4-5", claude_code_turn(1))
    assert first is not None and len(first) == 16
    # Later turns: same tools and system (the first breakpoint), other history/max_tokens.
    for turns in (2, 5, 30):
        assert affinity_key(7, "claude-sonnet-4-5", claude_code_turn(turns)) == first
    assert affinity_key(8, "claude-sonnet-4-5", claude_code_turn(1)) != first  # account
    assert affinity_key(7, "claude-opus-4-1", claude_code_turn(1)) != first  # model
    assert affinity_key(7, "claude-sonnet-4-5", claude_code_turn(1, "Other. " * 50)) != first
    other_tools = claude_code_turn(1)
    other_tools["tools"] = TOOLS[:1]
    assert affinity_key(7, "claude-sonnet-4-5", other_tools) != first
    # The key is a digest: no byte of the prompt in it.
    assert b"Claude" not in first


def test_first_breakpoint_in_cache_order() -> None:
    body = claude_code_turn(3)
    base = affinity_key(1, "m", body)
    # A breakpoint on the first tool: only that tool counts.
    on_tool = copy.deepcopy(body)
    on_tool["tools"][0]["cache_control"] = CC
    key = affinity_key(1, "m", on_tool)
    assert key != base
    on_tool["system"][0]["text"] = "changed"
    on_tool["tools"][1]["name"] = "changed"
    assert affinity_key(1, "m", on_tool) == key
    # No breakpoint in tools or system: the first marked message block, with everything
    # before it.
    in_messages = copy.deepcopy(body)
    in_messages["system"] = "plain system"
    in_messages["messages"][0]["content"][0]["cache_control"] = CC
    key = affinity_key(1, "m", in_messages)
    in_messages["messages"][2]["content"][0]["text"] = "later turn changed"
    assert affinity_key(1, "m", in_messages) == key
    in_messages["messages"][0]["content"][0]["text"] = "first turn changed"
    assert affinity_key(1, "m", in_messages) != key
    in_messages["messages"][0]["content"][0]["text"] = "task 0"
    in_messages["system"] = "other system"
    assert affinity_key(1, "m", in_messages) != key


def incremental_turn(turns: int, first: str = "question 0") -> dict[str, Any]:
    """The documented multi-turn pattern without a system breakpoint: the only
    ``cache_control`` sits on the newest user message and moves forward every turn
    (earlier turns' content sent as plain strings, as many clients rebuild them)."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": first}]
    for n in range(1, turns):
        messages.append({"role": "assistant", "content": f"answer {n}"})
        messages.append({"role": "user", "content": f"question {n}"})
    last = messages[-1]
    last["content"] = [{"type": "text", "text": last["content"], "cache_control": CC}]
    return {"tools": TOOLS, "system": "You are a helpful assistant. " * 50, "messages": messages}


def test_key_is_stable_when_the_only_breakpoint_moves_with_the_conversation() -> None:
    first = affinity_key(1, "m", incremental_turn(1))
    assert first is not None
    for turns in (2, 3, 10, 30):
        assert affinity_key(1, "m", incremental_turn(turns)) == first
    # Another conversation (another opening question) keeps a key of its own.
    assert affinity_key(1, "m", incremental_turn(5, "another question")) != first


def test_without_breakpoint_system_and_first_user_message() -> None:
    body: dict[str, Any] = {
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "answer"},
            {"role": "user", "content": "second"},
        ],
    }
    key = affinity_key(1, "m", body)
    assert key is not None
    assert affinity_key(1, "m", {**body, "messages": body["messages"][:1]}) == key
    assert affinity_key(1, "m", {**body, "tools": TOOLS}) == key  # tools do not count
    assert affinity_key(1, "m", {**body, "system": "Be long."}) != key
    only_user = {"messages": [{"role": "user", "content": "hi"}]}
    assert affinity_key(1, "m", only_user) is not None
    assert affinity_key(1, "m", {"messages": [{"role": "assistant", "content": "x"}]}) is None
    assert affinity_key(1, "m", {"messages": []}) is None


def test_large_values_are_identified_cheaply_but_texts_in_full() -> None:
    image = {"type": "base64", "media_type": "image/png", "data": "A" * 10_000}
    body: dict[str, Any] = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": image},
                    {"type": "text", "text": "x" * 200_000, "cache_control": CC},
                ],
            }
        ]
    }
    key = affinity_key(1, "m", body)
    changed = copy.deepcopy(body)
    changed["messages"][0]["content"][1]["text"] = "x" * 199_999 + "y"  # the last byte
    assert affinity_key(1, "m", changed) != key
    resized = copy.deepcopy(body)
    resized["messages"][0]["content"][0]["source"]["data"] = "A" * 10_001
    assert affinity_key(1, "m", resized) != key


CANDIDATES = [Candidate(1, 1), Candidate(2, 1), Candidate(3, 1), Candidate(4, 1)]
KEYS = [i.to_bytes(16, "big") for i in range(4000)]


def winners(rv: Rendezvous, usable: set[int] | None = None) -> list[int]:
    return [next(c for c in rv.order(k) if usable is None or c in usable) for k in KEYS]


def test_rendezvous_is_deterministic_and_complete() -> None:
    one, two = Rendezvous(CANDIDATES), Rendezvous(list(reversed(CANDIDATES)))
    for key in KEYS[:200]:
        # the same table gives the same order: no shared state
        assert list(one.order(key)) == list(two.order(key))
        assert sorted(one.order(key)) == [1, 2, 3, 4]
    spread = collections.Counter(winners(one))
    assert set(spread) == {1, 2, 3, 4}


def test_only_a_removed_candidates_keys_move_and_they_come_back() -> None:
    rv = Rendezvous(CANDIDATES)
    before = winners(rv)
    during = winners(rv, usable={1, 2, 4})  # 3 cools: its keys take their next choice
    moved = [i for i, (b, d) in enumerate(zip(before, during, strict=True)) if b != d]
    assert moved and all(before[i] == 3 for i in moved)
    assert all(during[i] != 3 for i in range(len(KEYS)))
    assert len(moved) == before.count(3)
    # The candidate gone from the table altogether: the same picture.
    assert winners(Rendezvous([c for c in CANDIDATES if c.id != 3])) == during
    assert winners(rv) == before  # after recovery they return
    # A new candidate takes keys only for itself.
    grown = winners(Rendezvous([*CANDIDATES, Candidate(5, 1)]))
    assert all(g in (b, 5) for g, b in zip(grown, before, strict=True))


def test_weights_are_respected_statistically() -> None:
    rv = Rendezvous([Candidate(1, 1), Candidate(2, 2), Candidate(3, 5)])
    share = collections.Counter(winners(rv))
    for cid, weight in ((1, 1), (2, 2), (3, 5)):
        assert share[cid] / len(KEYS) == pytest.approx(weight / 8, abs=0.03)


def test_groups_first_then_members() -> None:
    rv = Rendezvous(
        [
            Candidate(1, 1, "org-a"),
            Candidate(2, 1, "org-a"),
            Candidate(3, 1, "org-b"),
            Candidate(4, 2),  # a group of its own
        ]
    )
    shares = collections.Counter()
    for key in KEYS:
        order = list(rv.order(key))
        # The members of a group are next to each other: a conversation falls to the
        # other credential of its group (where its cache is) before leaving the group.
        pos = {cid: i for i, cid in enumerate(order)}
        assert abs(pos[1] - pos[2]) == 1
        shares[order[0]] += 1
    # Groups weighted by their members' weights: org-a 2, org-b 1, credential 4: 2.
    assert (shares[1] + shares[2]) / len(KEYS) == pytest.approx(2 / 5, abs=0.03)
    assert shares[3] / len(KEYS) == pytest.approx(1 / 5, abs=0.03)
    assert shares[4] / len(KEYS) == pytest.approx(2 / 5, abs=0.03)
    assert shares[1] == pytest.approx(shares[2], rel=0.15)


NOW = 1_800_000_000.0


def reset(seconds: float) -> str:
    return datetime.fromtimestamp(NOW + seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, 0.0),
        (
            {
                "anthropic-ratelimit-requests-limit": "4000",
                "anthropic-ratelimit-requests-remaining": "3999",
                "anthropic-ratelimit-requests-reset": reset(1),
            },
            0.0,
        ),
        (
            {
                "anthropic-ratelimit-requests-limit": "4000",
                "anthropic-ratelimit-requests-remaining": "100",  # 2.5 % < 5 %
                "anthropic-ratelimit-requests-reset": reset(12),
            },
            12.0,
        ),
        (
            {
                "anthropic-ratelimit-input-tokens-limit": "1000000",
                "anthropic-ratelimit-input-tokens-remaining": "0",
                "anthropic-ratelimit-input-tokens-reset": reset(3600),
            },
            MAX_LIMITED_SECONDS,
        ),
        (
            {
                "anthropic-ratelimit-tokens-limit": "100",
                "anthropic-ratelimit-tokens-remaining": "1",
                "anthropic-ratelimit-tokens-reset": "garbage",
            },
            1.0,
        ),
        ({"anthropic-ratelimit-tokens-limit": "x", "anthropic-ratelimit-tokens-remaining": "1"}, 0),
    ],
)
def test_limited_for(headers: dict[str, str], expected: float) -> None:
    assert limited_for(headers, 5, NOW) == pytest.approx(expected)
    assert limited_for(headers, 0, NOW) == 0.0


@pytest.mark.parametrize("digest", [0, 1, 2**63, 2**64 - 2**10, 2**64 - 1])
def test_rendezvous_scores_every_hash_value(monkeypatch: pytest.MonkeyPatch, digest: int) -> None:
    """A hash at either end of its range still scores (u strictly inside (0, 1)): a
    key whose hash rounded to u = 1.0 divided by zero on every request of its
    conversation."""
    monkeypatch.setattr(xxhash, "xxh3_64_intdigest", lambda *_: digest)
    order = list(
        Rendezvous([Candidate(1, 1, "g"), Candidate(2, 3, "g"), Candidate(3, 1)]).order(b"k")
    )
    assert sorted(order) == [1, 2, 3]
