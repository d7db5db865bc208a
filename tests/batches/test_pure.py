"""The pure parts of the batches package: the body checks, the rendered objects, the
usage read from results lines, the poll back-off, and the public base URL."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime

import pytest
from aiohttp.test_utils import make_mocked_request

from alicode_gw.batches.objects import Batch, batch_json, list_page, not_submitted_lines
from alicode_gw.batches.poller import line_usage, next_interval
from alicode_gw.batches.validate import validate_batch
from alicode_gw.clientip import public_base_url
from alicode_gw.errors import InvalidRequestError
from alicode_gw.money.contract import Usage

PARAMS = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
CREATED = datetime(2026, 12, 6, 5, 0, 0, 123456, tzinfo=UTC)


def batch(**changes: object) -> Batch:
    values: dict = {
        "id": "msgbatch_abc",
        "account_id": 1,
        "key_id": 2,
        "upstream_id": "msgbatch_01upstream",
        "credential_id": 7,
        "status": "in_progress",
        "settlement": "open",
        "request_count": 3,
        "succeeded": 0,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
        "request_models": {"a": "claude-x", "b": "claude-y", "c": "claude-x"},
        "created_at": CREATED,
        "expires_at": CREATED,
        "ended_at": None,
        "cancel_initiated_at": None,
        "archived_at": None,
        "polls": 0,
    }
    values.update(changes)
    return Batch(**values)


def test_a_valid_batch() -> None:
    got = validate_batch({"requests": [{"custom_id": "a-1_Z", "params": PARAMS}]}, 10)
    assert [(r.custom_id, r.model, r.max_tokens) for r in got] == [("a-1_Z", "m", 5)]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "requests"),
        ({"requests": []}, "requests"),
        ({"requests": [{"custom_id": "a", "params": PARAMS}] * 3}, "requests"),  # > max 2
        ({"requests": [{"params": PARAMS}]}, "requests.0.custom_id"),
        ({"requests": [{"custom_id": "x" * 65, "params": PARAMS}]}, "requests.0.custom_id"),
        ({"requests": [{"custom_id": "a"}]}, "requests.0.params"),
        ({"requests": [{"custom_id": "a", "params": PARAMS, "x": 1}]}, "requests.0.x"),
        (
            {
                "requests": [
                    {"custom_id": "a", "params": PARAMS},
                    {"custom_id": "a", "params": PARAMS},
                ]
            },
            "requests.1.custom_id",
        ),
        (
            {"requests": [{"custom_id": "a", "params": {**PARAMS, "max_tokens": 0}}]},
            "requests.0.params.max_tokens",
        ),
        (
            {"requests": [{"custom_id": "a", "params": {**PARAMS, "messages": []}}]},
            "requests.0.params.messages",
        ),
        (
            {"requests": [{"custom_id": "a", "params": {**PARAMS, "stream": True}}]},
            "requests.0.params.stream",
        ),
    ],
)
def test_an_invalid_batch_names_the_field(body: dict, param: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        validate_batch(body, 2)
    assert refused.value.param == param
    assert refused.value.message.startswith(param)


def test_the_batch_object_hides_the_upstream() -> None:
    shown = batch_json(batch(), "https://gw.example")
    text = json.dumps(shown)
    assert "msgbatch_01upstream" not in text and "credential" not in text
    assert shown["request_counts"]["processing"] == 3
    assert shown["results_url"] is None
    assert shown["created_at"] == "2026-12-06T05:00:00.123456Z"
    ended = batch_json(
        batch(status="ended", settlement="settled", succeeded=2, errored=1, ended_at=CREATED),
        "https://gw.example",
    )
    assert ended["processing_status"] == "ended"
    assert ended["request_counts"] == {
        "processing": 0, "succeeded": 2, "errored": 1, "canceled": 0, "expired": 0,
    }  # fmt: skip
    assert ended["results_url"] == "https://gw.example/v1/messages/batches/msgbatch_abc/results"
    assert batch_json(batch(status="submitting"), "")["processing_status"] == "in_progress"
    page = list_page([batch(), batch(id="msgbatch_def")], True, "")
    assert (page["first_id"], page["last_id"], page["has_more"]) == (
        "msgbatch_abc", "msgbatch_def", True,
    )  # fmt: skip


def test_a_batch_never_submitted_has_every_request_errored() -> None:
    lines = [json.loads(line) for line in not_submitted_lines(batch())]
    assert [line["custom_id"] for line in lines] == ["a", "b", "c"]
    assert {line["result"]["type"] for line in lines} == {"errored"}
    assert lines[0]["result"]["error"]["type"] == "error"


def test_usage_is_read_from_succeeded_lines_only() -> None:
    message = {"usage": {"input_tokens": 10, "output_tokens": 4, "cache_read_input_tokens": 2}}
    line = json.dumps({"custom_id": "b", "result": {"type": "succeeded", "message": message}})
    assert line_usage(line.encode(), batch()) == (
        "claude-y", Usage(input_tokens=10, output_tokens=4, cache_read=2),
    )  # fmt: skip
    for other in ("errored", "canceled", "expired"):
        quiet = json.dumps({"custom_id": "b", "result": {"type": other}})
        assert line_usage(quiet.encode(), batch()) is None
    assert line_usage(b"not json", batch()) is None


def test_polls_back_off_to_the_cap() -> None:
    waits = [next_interval(n, 2.0, 60.0) for n in range(12)]
    assert waits[0] == 2.0 and waits == sorted(waits) and waits[-1] == 60.0


def test_public_base_url() -> None:
    proxy = (ipaddress.ip_network("127.0.0.1/32"),)
    headers = {"Host": "gw.local:8787", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.x"}
    request = make_mocked_request("GET", "/", headers=headers).clone(remote="127.0.0.1")
    assert public_base_url(request, (), None) == "http://gw.local:8787"
    assert public_base_url(request, proxy, None) == "https://api.x"
    assert public_base_url(request, proxy, "https://set.example") == "https://set.example"
    stranger = request.clone(remote="203.0.113.9")  # not a trusted proxy: headers ignored
    assert public_base_url(stranger, proxy, None) == "http://gw.local:8787"
