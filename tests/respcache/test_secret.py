"""The response cache's server secret: required by serve and worker when the cache is
on, generated and kept in the data dir by ``alicode-gw dev``."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from alicode_gw.config import Config
from alicode_gw.dev.server import CACHE_SECRET_FILE, with_cache_secret
from tests.support.cli import run_cli


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_serve_and_worker_refuse_the_cache_without_its_secret(command: str) -> None:
    result = run_cli(
        command,
        env={
            "ALICODE_DATABASE_URL": "postgresql://127.0.0.1:1/none",
            "ALICODE_REDIS_URL": "redis://127.0.0.1:1/0",
            "ALICODE_RESPONSE_CACHE": "on",
        },
    )
    assert result.returncode == 2
    assert "ALICODE_RESPONSE_CACHE_SECRET" in result.stderr


def test_dev_generates_the_secret_once_and_keeps_it(tmp_path: Path) -> None:
    off = Config(data_dir=tmp_path)
    assert with_cache_secret(off) is off and not (tmp_path / CACHE_SECRET_FILE).exists()
    on = Config(data_dir=tmp_path, response_cache=True)
    first = with_cache_secret(on)
    assert first.response_cache_secret and len(first.response_cache_secret) >= 32
    path = tmp_path / CACHE_SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert with_cache_secret(on).response_cache_secret == first.response_cache_secret
    given = Config(data_dir=tmp_path, response_cache=True, response_cache_secret="y" * 32)
    assert with_cache_secret(given) is given
