"""The JSON text of the gateway's own records (jsontext.dumps): what the standard
library would write, compact and ASCII only - also for non-ASCII text and for what
orjson refuses (a lone surrogate, an integer beyond 64 bits)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from alicode_gw import jsontext

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
RECORDS = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)


@given(RECORDS)
def test_the_text_is_the_standard_librarys(value: object) -> None:
    """Whatever the record, the text is the standard library's compact one: ASCII,
    one line, read back as the record."""
    text = jsontext.dumps(value)
    assert json.loads(text) == value
    assert text.isascii() and "\n" not in text and "\r" not in text


PRINTABLE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E))
LINE_VALUES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(min_value=0, max_value=1e9).map(lambda ms: round(ms, 1))  # duration_ms
    | PRINTABLE
)


@given(st.dictionaries(PRINTABLE, LINE_VALUES))
def test_printable_records_read_as_the_standard_librarys_compact_text(value: dict) -> None:
    """An access line of printable ASCII reads as it did with ``json``'s encoder."""
    assert jsontext.dumps(value) == json.dumps(value, separators=(",", ":"))


def test_what_orjson_refuses_is_still_written() -> None:
    assert jsontext.dumps({"model": "claude-\ud800", "n": 2**70}) == (
        '{"model":"claude-\\ud800","n":1180591620717411303424}'
    )


def test_non_ascii_and_controls_are_escaped() -> None:
    """A client's DEL, C1 control, bidi override or accented letter never reaches a log
    line raw."""
    text = jsontext.dumps({"path": "/v1/a\x7fb\x85c\u202e", "model": "claude-é"})
    assert text == '{"path":"/v1/a\\u007fb\\u0085c\\u202e","model":"claude-\\u00e9"}'
    assert text.isascii()
