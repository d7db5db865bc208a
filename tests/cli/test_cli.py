"""The command line as an operator runs it: real processes, real exit codes."""

from __future__ import annotations

import json

import pytest

from tests.support.cli import run_cli


@pytest.mark.parametrize(
    ("variable", "value"),
    [("ALICODE_LISTEN", "not-an-address"), ("ALICODE_IP_RPM", "lots")],
)
def test_bad_setting_is_one_line_and_exit_2(variable: str, value: str) -> None:
    result = run_cli("serve", env={variable: value})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_listen_flag_is_exit_2() -> None:
    result = run_cli("serve", "--listen", "nowhere")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "alicode-gw: --listen: expected HOST:PORT (e.g. 127.0.0.1:8787), got 'nowhere'"
    ]


def test_version_and_help() -> None:
    assert run_cli("--version").stdout.startswith("alicode-gw ")
    help_text = run_cli("--help").stdout
    for command in ("serve", "dev", "migrate", "mock-upstream"):
        assert command in help_text


def test_migrate_twice_is_noop(scratch_database_url: str, redis_url: str) -> None:
    env = {"ALICODE_DATABASE_URL": scratch_database_url, "ALICODE_REDIS_URL": redis_url}
    first = run_cli("migrate", "--json", env=env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["applied"]
    second = run_cli("migrate", "--json", env=env)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == {"applied": []}
    assert run_cli("migrate", env=env).stdout.strip() == "schema is up to date"
