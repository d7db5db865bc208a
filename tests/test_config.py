"""Config: defaults, parsing, one clear error naming the variable."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from alicode_gw.config import Config, ConfigError, documented_settings, load


def test_defaults() -> None:
    config = load({})
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 8787)
    assert config.database_url is None and config.redis_url is None
    assert config.upstream_url == "https://api.anthropic.com"
    assert config.ip_rpm == 1000 and config.ip_concurrency == 50
    assert (config.header_timeout, config.body_idle_timeout, config.keepalive_timeout) == (
        30.0,
        60.0,
        75.0,
    )


def test_values_are_parsed() -> None:
    config = load(
        {
            "ALICODE_LISTEN": "0.0.0.0:9000",
            "ALICODE_DATABASE_URL": "postgresql://u@h/db",
            "ALICODE_REDIS_URL": "redis://127.0.0.1:6379/0",
            "ALICODE_UPSTREAM_URL": "http://127.0.0.1:1/",
            "ALICODE_DATA_DIR": "/var/lib/x",
            "ALICODE_LOG_LEVEL": "debug",
            "ALICODE_IP_RPM": "0",
            "ALICODE_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8",
            "ALICODE_UPSTREAM_KEYS": "a, b",
            "ALICODE_HEADER_TIMEOUT": "5",
            "ALICODE_BODY_IDLE_TIMEOUT": "7.5",
            "ALICODE_KEEPALIVE_TIMEOUT": "90",
            "UNRELATED": "ignored",
        }
    )
    assert (config.listen_host, config.listen_port) == ("0.0.0.0", 9000)
    assert config.upstream_url == "http://127.0.0.1:1"
    assert config.data_dir == Path("/var/lib/x")
    assert config.log_level == "DEBUG"
    assert config.ip_rpm == 0
    assert config.trusted_proxies == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
    )
    assert config.upstream_keys == ("a", "b")
    assert (config.header_timeout, config.body_idle_timeout, config.keepalive_timeout) == (
        5.0,
        7.5,
        90.0,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ALICODE_LISTEN", "nonsense"),
        ("ALICODE_LISTEN", "127.0.0.1:99999"),
        ("ALICODE_DATABASE_URL", "mysql://x"),
        ("ALICODE_REDIS_URL", "http://x"),
        ("ALICODE_UPSTREAM_URL", "ftp://x"),
        ("ALICODE_LOG_LEVEL", "LOUD"),
        ("ALICODE_IP_RPM", "-1"),
        ("ALICODE_IP_CONCURRENCY", "many"),
        ("ALICODE_SHUTDOWN_TIMEOUT", "0"),
        ("ALICODE_HEADER_TIMEOUT", "0"),
        ("ALICODE_BODY_IDLE_TIMEOUT", "-1"),
        ("ALICODE_KEEPALIVE_TIMEOUT", "soon"),
        ("ALICODE_TRUSTED_PROXIES", "not-an-ip"),
    ],
)
def test_bad_value_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({variable: value})
    assert info.value.variable == variable
    assert str(info.value).startswith(variable + ":")
    assert "\n" not in str(info.value)


def test_config_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "gw.env"
    path.write_text("# comment\nALICODE_LISTEN=127.0.0.1:1111\nALICODE_LOG_LEVEL='WARNING'\n")
    config = load({"ALICODE_CONFIG": str(path), "ALICODE_LOG_LEVEL": "ERROR"})
    assert config.listen_port == 1111
    assert config.log_level == "ERROR"


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="ALICODE_CONFIG"):
        load({"ALICODE_CONFIG": "/nonexistent/file.env"})


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(AttributeError):
        config.listen_port = 1  # type: ignore[misc]


def test_every_field_is_documented() -> None:
    documented = {row[0] for row in documented_settings()}
    table = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    for variable in documented:
        assert f"| `{variable}` |" in table, f"{variable} missing from docs/operations.md"
    rows = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `ALICODE_")}
    assert rows == documented, "docs/operations.md documents a variable config.py lacks"


def test_a_node_is_dead_only_after_more_than_two_missed_heartbeats() -> None:
    settings = {"ALICODE_NODE_HEARTBEAT_INTERVAL": "0.5", "ALICODE_NODE_DEAD_AFTER": "3"}
    config = load(settings)
    assert (config.node_heartbeat_interval, config.node_dead_after) == (0.5, 3.0)
    with pytest.raises(ConfigError, match="ALICODE_NODE_DEAD_AFTER"):
        load({**settings, "ALICODE_NODE_DEAD_AFTER": "1"})


def test_files_settings() -> None:
    config = load(
        {"ALICODE_FILES_MIME_TYPES": " image/PNG , text/plain,", "ALICODE_FILES_QUOTA_COUNT": "3"}
    )
    assert config.files_mime_types == ("image/png", "text/plain")
    assert config.files_quota_count == 3
    assert Config().files_max_bytes == 25 * 1024 * 1024
    assert Config().files_purge_grace == 86400
    for bad in ("png", "image/png; q=1", "text/ plain"):
        with pytest.raises(ConfigError, match="ALICODE_FILES_MIME_TYPES"):
            load({"ALICODE_FILES_MIME_TYPES": bad})


def test_the_response_cache_settings() -> None:
    config = load({})
    assert not config.response_cache and config.response_cache_ttl == 3600
    assert config.response_cache_hit_pct == 0
    config.require_cache_secret()  # off: no secret needed
    secret = "x" * 32
    on = load({"ALICODE_RESPONSE_CACHE": "on", "ALICODE_RESPONSE_CACHE_SECRET": secret})
    assert on.response_cache and on.response_cache_secret == secret
    assert secret not in repr(on)
    on.require_cache_secret()
    with pytest.raises(ConfigError, match="ALICODE_RESPONSE_CACHE_SECRET"):
        load({"ALICODE_RESPONSE_CACHE": "on"}).require_cache_secret()
    with pytest.raises(ConfigError, match="ALICODE_RESPONSE_CACHE_SECRET"):
        load({"ALICODE_RESPONSE_CACHE_SECRET": "too short"})
    with pytest.raises(ConfigError, match="ALICODE_RESPONSE_CACHE_HIT_PCT"):
        load({"ALICODE_RESPONSE_CACHE_HIT_PCT": "101"})
    with pytest.raises(ConfigError, match="ALICODE_RESPONSE_CACHE:"):
        load({"ALICODE_RESPONSE_CACHE": "maybe"})
