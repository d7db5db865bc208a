"""``account create|stop`` and ``key create|update|revoke|list`` as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import asyncpg
import bcrypt
import pytest

from alicode_gw.identity import accounts, keys
from tests.support.keys import unique_email


@pytest.fixture
def cli(database_url: str, redis_url: str, redis_prefix: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALICODE_")}
    env.update(
        ALICODE_DATABASE_URL=database_url,
        ALICODE_REDIS_URL=redis_url,
        ALICODE_REDIS_PREFIX=redis_prefix,
    )

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "alicode_gw", *args],
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


def ok_json(result: subprocess.CompletedProcess[str]) -> object:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_account_create_with_password(cli, db: asyncpg.Connection) -> None:
    email = unique_email()
    created = ok_json(
        cli(
            "account",
            "create",
            "--email",
            email,
            "--password-stdin",
            "--json",
            stdin="correct horse\n",
        )
    )
    assert created["email"] == email and created["status"] == "active"
    stored = await db.fetchval("SELECT password_hash FROM accounts WHERE id = $1", created["id"])
    assert stored.startswith("$2b$") and "correct horse" not in stored
    assert bcrypt.checkpw(b"correct horse", stored.encode())
    again = cli("account", "create", "--email", email.upper())
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = cli("account", "create", "--email", "not-an-email")
    assert bad.returncode == 1 and "not an email" in bad.stderr


async def test_key_create_shows_the_secret_once(cli, db: asyncpg.Connection) -> None:
    email = unique_email()
    ok_json(cli("account", "create", "--email", email, "--json"))
    created = ok_json(
        cli(
            "key",
            "create",
            "--email",
            email,
            "--name",
            "production",
            "--rpm",
            "60",
            "--concurrency",
            "5",
            "--budget-tokens",
            "5000000",
            "--spend-cap-usd",
            "12.5",
            "--models",
            "claude-sonnet-4-5,claude-haiku-4-5",
            "--json",
        )
    )
    secret = created["key"]
    parsed = keys.parse_key(secret)
    assert parsed is not None and parsed.public_id == created["public_id"]
    assert created["rpm"] == 60 and created["concurrency"] == 5
    assert created["budget_tokens"] == 5_000_000 and created["spend_cap_usd"] == "12.50"
    assert created["models"] == ["claude-haiku-4-5", "claude-sonnet-4-5"]
    row = await db.fetchrow("SELECT * FROM api_keys WHERE id = $1", created["id"])
    assert row["spend_cap_nanos"] == 12_500_000_000
    assert parsed.secret not in str(dict(row))  # only the bcrypt hash is stored
    assert keys.check_secret(parsed.secret, row["secret_hash"])

    listed = ok_json(cli("key", "list", "--email", email, "--json"))
    assert [k["id"] for k in listed] == [created["id"]]
    assert parsed.secret not in json.dumps(listed) and "key" not in listed[0]
    human = cli("key", "list", "--email", email)
    assert created["public_id"] in human.stdout and parsed.secret not in human.stdout

    for flags, message in [
        (("--rpm", "0"), "must be positive"),
        (("--spend-cap-usd", "1.0000000001"), "more than 9 decimal places"),
        (("--spend-cap-usd", "-3"), "must be positive"),
    ]:
        result = cli("key", "create", "--email", email, "--name", "x", *flags)
        assert result.returncode != 0 and message in result.stderr, result.stderr
    missing = cli("key", "create", "--email", unique_email(), "--name", "x")
    assert missing.returncode == 1 and "no account" in missing.stderr


async def test_a_key_opts_out_of_the_response_cache_and_back(cli, db: asyncpg.Connection) -> None:
    email = unique_email()
    ok_json(cli("account", "create", "--email", email, "--json"))
    plain = ok_json(cli("key", "create", "--email", email, "--name", "a", "--json"))
    assert plain["response_cache"] is True
    created = ok_json(
        cli("key", "create", "--email", email, "--name", "b", "--no-response-cache", "--json")
    )
    stored = "SELECT response_cache FROM api_keys WHERE id = $1"
    assert created["response_cache"] is False and not await db.fetchval(stored, created["id"])
    updated = ok_json(
        cli("key", "update", created["public_id"], "--response-cache", "on", "--json")
    )
    assert updated["response_cache"] is True and await db.fetchval(stored, created["id"])
    result = cli("key", "update", str(plain["id"]), "--response-cache", "off")
    assert result.returncode == 0 and "response cache off" in result.stdout
    assert not await db.fetchval(stored, plain["id"])
    assert cli("key", "update", "999999999", "--response-cache", "off").returncode != 0


async def test_key_revoke_and_account_stop(cli, db: asyncpg.Connection) -> None:
    email = unique_email()
    ok_json(cli("account", "create", "--email", email, "--json"))
    first = ok_json(cli("key", "create", "--email", email, "--name", "a", "--json"))
    second = ok_json(cli("key", "create", "--email", email, "--name", "b", "--json"))
    third = ok_json(cli("key", "create", "--email", email, "--name", "c", "--json"))

    revoked = ok_json(cli("key", "revoke", str(first["id"]), "--json"))
    assert revoked["status"] == "revoked" and revoked["revoked_at"]
    by_public = ok_json(cli("key", "revoke", second["public_id"], "--json"))
    assert by_public["id"] == second["id"] and by_public["status"] == "revoked"
    assert cli("key", "revoke", "zzzzzzzzzzzz").returncode == 1

    stopped = ok_json(cli("account", "stop", "--email", email, "--json"))
    assert stopped["revoked_keys"] == [third["public_id"]]
    statuses = {
        k["id"]: k["status"] for k in ok_json(cli("key", "list", "--email", email, "--json"))
    }
    assert set(statuses.values()) == {"revoked"}
    account = await accounts.find_account(db, email)
    assert account is not None and account.status == "stopped"
    refused = cli("key", "create", "--email", email, "--name", "again")
    assert refused.returncode == 1 and "stopped" in refused.stderr
    assert cli("account", "stop", "--email", unique_email()).returncode == 1
