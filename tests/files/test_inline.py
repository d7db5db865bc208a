"""Replacing file sources with their bytes, pure (alicode_gw/files/inline.py)."""

from __future__ import annotations

import base64
import copy

import pytest

from alicode_gw.errors import InvalidRequestError
from alicode_gw.files.inline import FileRef, Loaded, check_kind, find_refs, replace_sources

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))


def file_block(kind: str, file_id: str, **more: object) -> dict:
    return {"type": kind, "source": {"type": "file", "file_id": file_id}, **more}


def conversation() -> dict:
    return {
        "model": "claude-sonnet-4-6",
        "max_tokens": 10,
        "messages": [
            {"role": "user", "content": "plain text turn"},
            {
                "role": "user",
                "content": [
                    file_block("image", "file_011img"),
                    {"type": "text", "text": "what is this?"},
                    file_block("document", "file_011doc", title="Q4", citations={"enabled": True}),
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [file_block("image", "file_011img")],
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                    {"type": "image", "source": {"type": "file", "file_id": 7}},
                ],
            },
        ],
    }


def test_find_refs_walks_messages_and_tool_results() -> None:
    assert find_refs(conversation()) == [
        FileRef("messages.1.content.0", "image", "file_011img"),
        FileRef("messages.1.content.2", "document", "file_011doc"),
        FileRef("messages.3.content.0.content.0", "image", "file_011img"),
    ]
    assert find_refs({"messages": [{"role": "user", "content": "hi"}]}) == []
    assert find_refs({"messages": "nonsense"}) == []
    assert find_refs({"messages": [None, {"content": [None, 3, "x"]}]}) == []


def test_replace_sources_inlines_base64_and_text_without_touching_the_input() -> None:
    payload = conversation()
    before = copy.deepcopy(payload)
    files = {
        "file_011img": Loaded("image/png", PNG),
        "file_011doc": Loaded("text/plain", "héllo\nworld".encode()),
    }
    out = replace_sources(payload, files)
    assert payload == before  # the input is left as it was
    image = out["messages"][1]["content"][0]
    assert image == {
        "type": "image",
        "source": {
            "type": "base64",
            "media_type": "image/png",
            "data": base64.b64encode(PNG).decode(),
        },
    }
    document = out["messages"][1]["content"][2]
    assert document["source"] == {
        "type": "text",
        "media_type": "text/plain",
        "data": "héllo\nworld",
    }
    assert document["title"] == "Q4" and document["citations"] == {"enabled": True}
    nested = out["messages"][3]["content"][0]["content"][0]
    assert nested["source"]["data"] == image["source"]["data"]
    # untouched blocks and messages are the same objects
    assert out["messages"][0] is payload["messages"][0]
    assert out["messages"][2] is payload["messages"][2]
    assert out["messages"][3]["content"][1] is payload["messages"][3]["content"][1]
    assert find_refs(out) == []


def test_pdf_document_is_base64() -> None:
    payload = {"messages": [{"role": "user", "content": [file_block("document", "file_011p")]}]}
    out = replace_sources(payload, {"file_011p": Loaded("application/pdf", b"%PDF-1.4 x")})
    assert out["messages"][0]["content"][0]["source"] == {
        "type": "base64",
        "media_type": "application/pdf",
        "data": base64.b64encode(b"%PDF-1.4 x").decode(),
    }


@pytest.mark.parametrize(
    ("kind", "mime", "ok"),
    [
        ("image", "image/png", True),
        ("image", "application/pdf", False),
        ("image", "text/plain", False),
        ("document", "application/pdf", True),
        ("document", "text/markdown", True),
        ("document", "image/png", False),
    ],
)
def test_block_kind_must_fit_the_file(kind: str, mime: str, ok: bool) -> None:
    ref = FileRef("messages.0.content.0", kind, "file_011x")
    if ok:
        check_kind(ref, mime)
    else:
        with pytest.raises(InvalidRequestError) as err:
            check_kind(ref, mime)
        assert "messages.0.content.0" in err.value.message and "file_011x" in err.value.message
