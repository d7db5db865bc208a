"""The Files API's wire format and type decisions, pure (alicode_gw/files/objects.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from multidict import MultiDict

from alicode_gw.errors import InvalidRequestError
from alicode_gw.files.objects import (
    FileRecord,
    ListQuery,
    clean_filename,
    content_disposition,
    decide_type,
    decode_page,
    encode_page,
    file_json,
    new_file_id,
    page_json,
    parse_list_query,
    rfc3339,
    sniff,
    valid_file_id,
)

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
WHEN = datetime(2026, 5, 17, 15, 23, 39, 100435, tzinfo=UTC)


def record(file_id: str = "file_011abc") -> FileRecord:
    return FileRecord(file_id, "image.png", "image/png", 184320, WHEN)


def test_file_object_is_anthropics_shape() -> None:
    assert file_json(record()) == {
        "id": "file_011abc",
        "type": "file",
        "filename": "image.png",
        "mime_type": "image/png",
        "size_bytes": 184320,
        "created_at": "2026-05-17T15:23:39.100435Z",
        "downloadable": True,
    }
    other_zone = WHEN.astimezone(timezone(timedelta(hours=2)))
    assert rfc3339(other_zone) == "2026-05-17T15:23:39.100435Z"


def test_file_ids() -> None:
    ids = {new_file_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("file_011") and len(i) == 29 and valid_file_id(i) for i in ids)
    assert not valid_file_id("file_../x") and not valid_file_id("msg_011abc")


@pytest.mark.parametrize(
    ("head", "mime"),
    [
        (PNG, "image/png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        (b"GIF89a\x01\x00", "image/gif"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"%PDF-1.7\n", "application/pdf"),
        (b"MZ\x90\x00\x03\x00", "application/vnd.microsoft.portable-executable"),
        (b"PK\x03\x04\x14\x00", "application/zip"),
        (b"hello world", None),
        (b"MZ is a state of mind\n", None),  # text that starts like an .exe
        (b"PK\x03\x04 and more text", None),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", None),
    ],
)
def test_sniff(head: bytes, mime: str | None) -> None:
    assert sniff(head) == mime


def test_the_bytes_decide_over_the_declaration() -> None:
    # A PNG sent as text/plain is a PNG; an .exe sent as text/plain is an executable.
    assert decide_type(PNG, "text/plain", "notes.txt") == "image/png"
    assert decide_type(b"MZ\x90\x00", "text/plain", "a.txt").endswith("portable-executable")
    # No magic: the part's type, else the name's extension.
    assert decide_type(b"hello", "text/plain; charset=utf-8", "x.bin") == "text/plain"
    assert decide_type(b"# title", "application/octet-stream", "readme.md") == "text/markdown"
    assert decide_type(b"a,b", None, "t.csv") == "text/csv"
    assert decide_type(b"\x00\x01", None, "blob") == "application/octet-stream"


def test_filenames() -> None:
    assert clean_filename("C:\\Users\\me\\chart.png", "image/png") == "chart.png"
    assert clean_filename("../../etc/passwd", "text/plain") == "passwd"
    assert clean_filename("a\x00b\nc.txt", "text/plain") == "abc.txt"
    assert clean_filename(None, "image/png") == "unnamed.png"
    assert clean_filename("", "application/pdf") == "unnamed.pdf"
    assert len(clean_filename("x" * 900, "text/plain")) == 500


def test_content_disposition_keeps_the_exact_name() -> None:
    assert content_disposition("report.pdf") == (
        "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"
    )
    header = content_disposition('été "q".txt')
    assert header.startswith('attachment; filename="_t_ _q_.txt"; ')
    assert header.endswith("filename*=UTF-8''%C3%A9t%C3%A9%20%22q%22.txt")


def query(**params: str | list[str]) -> MultiDict[str]:
    pairs = []
    for name, value in params.items():
        for item in value if isinstance(value, list) else [value]:
            pairs.append((name.replace("__", "[]"), item))
    return MultiDict(pairs)


def test_list_query() -> None:
    assert parse_list_query(query()) == ListQuery(20, None, None)
    assert parse_list_query(query(limit="1000", after_id="file_011a")) == ListQuery(
        1000, None, "file_011a"
    )
    for bad in (query(limit="0"), query(limit="1001"), query(limit="x")):
        with pytest.raises(InvalidRequestError) as err:
            parse_list_query(bad)
        assert err.value.param == "limit"
    with pytest.raises(InvalidRequestError):
        parse_list_query(query(before_id="file_011a", after_id="file_011b"))
    with pytest.raises(InvalidRequestError):
        parse_list_query(query(after_id="nope"))


def test_list_query_ids_and_scope() -> None:
    # The SDKs send ids[]=a&ids[]=b; plain repeated ids work too; duplicates count once.
    assert parse_list_query(query(ids__=["file_011a", "file_011b", "file_011a"])) == ListQuery(
        ids=("file_011a", "file_011b")
    )
    assert parse_list_query(query(ids=["file_011a"])).ids == ("file_011a",)
    with pytest.raises(InvalidRequestError):
        parse_list_query(query(ids__=["file_011a"], limit="5"))
    with pytest.raises(InvalidRequestError):
        parse_list_query(query(ids__=[f"file_011{n}" for n in range(101)]))
    assert parse_list_query(query(scope_id="sesn_1")).scope_id == "sesn_1"


def test_page_cursors_round_trip() -> None:
    assert decode_page(encode_page("after", "file_011a")) == (None, "file_011a")
    assert decode_page(encode_page("before", "file_011b")) == ("file_011b", None)
    assert parse_list_query(query(page=encode_page("after", "file_011a"), limit="5")) == (
        ListQuery(5, None, "file_011a")
    )
    # the cursor wins over the first page's before_id / after_id an SDK sends again
    again = query(page=encode_page("after", "file_011a"), before_id="file_011z")
    assert parse_list_query(again) == ListQuery(20, None, "file_011a")
    for bad in ("file_011a", "page_!!", "page_" + "c2lkZXdheXM6ZmlsZV8x"):
        with pytest.raises(InvalidRequestError):
            decode_page(bad)


def test_page_shape_and_next_page_direction() -> None:
    records = [record("file_011c"), record("file_011b")]
    forward = page_json(records, True, ListQuery(2))
    assert (forward["first_id"], forward["last_id"], forward["has_more"]) == (
        "file_011c",
        "file_011b",
        True,
    )
    assert decode_page(forward["next_page"]) == (None, "file_011b")
    backward = page_json(records, True, ListQuery(2, before_id="file_011a"))
    assert decode_page(backward["next_page"]) == ("file_011c", None)
    last = page_json(records, False, ListQuery(2))
    assert last["next_page"] is None
    assert page_json([], False, ListQuery()) == {
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
        "next_page": None,
    }
