"""The fallback journal file is shared by the workers of one node (one data dir): appends
by one process while another replays must never be lost or applied twice."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from alicode_gw.money.journal import _append_line, _read_lines, _remove_lines


def test_removing_applied_lines_keeps_lines_appended_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "billing-journal.jsonl"
    _append_line(path, "a")
    _append_line(path, "b")
    read = _read_lines(path)
    _append_line(path, "c")  # another worker journals while this one replays
    _remove_lines(path, read)
    assert _read_lines(path) == ["c"]
    _remove_lines(path, read)  # a second replayer that applied the same lines
    assert _read_lines(path) == ["c"]
    _remove_lines(path, ["c"])
    assert not path.exists()


def test_concurrent_appenders_and_replayers_lose_nothing(tmp_path: Path) -> None:
    """Separate file descriptions (as in separate processes) taking the journal lock."""
    path = tmp_path / "billing-journal.jsonl"
    writers, per_writer = 4, 150
    done = threading.Event()
    replayed: list[str] = []

    def append(writer: int) -> None:
        for n in range(per_writer):
            _append_line(path, json.dumps({"request_id": f"req_{writer}_{n}"}))

    def replay() -> None:
        while True:
            finished = done.is_set()
            lines = _read_lines(path)
            replayed.extend(lines)
            _remove_lines(path, lines)
            if finished:
                return

    with ThreadPoolExecutor(writers + 1) as pool:
        replayer = pool.submit(replay)
        for future in [pool.submit(append, w) for w in range(writers)]:
            future.result()
        done.set()
        replayer.result()
    assert sorted(replayed) == sorted(
        json.dumps({"request_id": f"req_{w}_{n}"})
        for w in range(writers)
        for n in range(per_writer)
    )
    assert not path.exists()
