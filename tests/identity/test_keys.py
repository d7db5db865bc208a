"""Key format, generation, bcrypt at the real cost, constant-time digests; client IP."""

from __future__ import annotations

import ipaddress
import time

from aiohttp.test_utils import make_mocked_request

from alicode_gw.clientip import client_ip
from alicode_gw.identity import keys


def test_format_and_parse_round_trip() -> None:
    public_id, secret = keys.new_public_id(), keys.new_secret()
    text = keys.format_key(public_id, secret)
    assert text.startswith("sk-ali-")
    parsed = keys.parse_key(text)
    assert parsed == keys.ParsedKey(public_id, secret)
    assert secret not in repr(parsed)
    assert keys.masked(public_id) == f"sk-ali-{public_id}-…"


def test_generated_parts_are_random_and_well_formed() -> None:
    ids = {keys.new_public_id() for _ in range(500)}
    assert len(ids) == 500 and all(keys.is_public_id(i) and not i.isdigit() for i in ids)
    secrets_ = {keys.new_secret() for _ in range(500)}
    assert len(secrets_) == 500 and all(len(s) == keys.SECRET_LENGTH for s in secrets_)


def test_malformed_keys_do_not_parse() -> None:
    good = keys.format_key(keys.new_public_id(), keys.new_secret())
    for bad in [
        "",
        "sk-ali-",
        good[:-1],
        good + "x",
        good.replace("sk-ali-", "sk-ant-"),
        good.replace("-", "_"),
        " " + good,
        good + "\n",
        "sk-ali-" + "a" * 12 + "-" + "é" * 32,
    ]:
        assert keys.parse_key(bad) is None, bad


def test_bcrypt_at_the_real_cost() -> None:
    secret = keys.new_secret()
    started = time.perf_counter()
    hashed = keys.hash_secret(secret)
    assert time.perf_counter() - started > 0.05  # cost 12 is deliberately slow
    assert hashed.startswith("$2b$12$") and secret not in hashed
    assert keys.check_secret(secret, hashed)
    assert not keys.check_secret(keys.new_secret(), hashed)


def test_corrupt_hash_is_a_mismatch() -> None:
    assert not keys.check_secret("x", "not-a-bcrypt-hash")


def test_digests_are_keyed_and_compared_in_constant_time() -> None:
    secret = keys.new_secret()
    a = keys.secret_digest(b"pepper-1", secret)
    assert a == keys.secret_digest(b"pepper-1", secret)
    assert a != keys.secret_digest(b"pepper-2", secret)
    assert keys.same_digest(a, keys.secret_digest(b"pepper-1", secret))
    assert not keys.same_digest(a, keys.secret_digest(b"pepper-1", keys.new_secret()))


PROXY = (ipaddress.ip_network("10.0.0.0/8"),)


def _ip(peer: str, trusted: tuple = PROXY, **headers: str) -> str:
    request = make_mocked_request("GET", "/", headers=headers)
    return client_ip(request.clone(remote=peer), trusted)


def test_client_ip_believes_forwarding_headers_only_from_trusted_proxies() -> None:
    assert _ip("198.51.100.7") == "198.51.100.7"
    assert _ip("198.51.100.7", **{"X-Forwarded-For": "1.2.3.4"}) == "198.51.100.7"
    assert _ip("198.51.100.7", **{"X-Real-IP": "1.2.3.4"}) == "198.51.100.7"
    assert _ip("10.0.0.2", **{"X-Forwarded-For": "1.2.3.4"}) == "1.2.3.4"
    # Right to left, skipping trusted hops; a client-supplied left part is ignored.
    assert _ip("10.0.0.2", **{"X-Forwarded-For": "6.6.6.6, 1.2.3.4, 10.0.0.9"}) == "1.2.3.4"
    assert _ip("10.0.0.2", **{"X-Real-IP": "1.2.3.4"}) == "1.2.3.4"
    assert _ip("10.0.0.2", **{"X-Forwarded-For": "garbage"}) == "10.0.0.2"
    assert _ip("10.0.0.2") == "10.0.0.2"
    assert _ip("10.0.0.2", (), **{"X-Forwarded-For": "1.2.3.4"}) == "10.0.0.2"
    assert _ip("::ffff:198.51.100.7") == "198.51.100.7"
    assert _ip("10.0.0.2", **{"X-Forwarded-For": "2001:DB8::1"}) == "2001:db8::1"
