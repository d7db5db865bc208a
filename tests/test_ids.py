"""Random identifiers."""

from __future__ import annotations

import collections
import string

from alicode_gw.ids import new_request_id, random_token


def test_request_id_shape_and_uniqueness() -> None:
    ids = {new_request_id() for _ in range(5000)}
    assert len(ids) == 5000
    for rid in list(ids)[:100]:
        assert rid.startswith("req_") and len(rid) == 28
        assert set(rid[4:]) <= set(string.ascii_letters + string.digits)


def test_characters_are_roughly_uniform() -> None:
    counts = collections.Counter("".join(random_token(24) for _ in range(5000)))
    assert len(counts) == 62
    expected = 5000 * 24 / 62
    assert all(0.8 * expected < n < 1.2 * expected for n in counts.values())
    assert len(random_token(1)) == 1 and len(random_token(29)) == 29
