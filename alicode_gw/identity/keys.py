"""Customer API keys: format, generation, bcrypt hashing, parsing, constant-time checks.

A key is ``sk-ali-<public id>-<secret>``. The public id (12 characters of ``[a-z0-9]``)
is a non-secret lookup id stored in clear; the secret (32 base62 characters, ~190 bits
from the OS CSPRNG) is stored only as a bcrypt hash and shown once, at creation.
Parsing is strict, so a malformed key is refused without touching the database.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass

import bcrypt

PREFIX = "sk-ali-"
PUBLIC_ID_LENGTH = 12
SECRET_LENGTH = 32
DEFAULT_BCRYPT_COST = 12

_PUBLIC_ALPHABET = string.ascii_lowercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits
_KEY = re.compile(
    rf"sk-ali-([a-z0-9]{{{PUBLIC_ID_LENGTH}}})-([A-Za-z0-9]{{{SECRET_LENGTH}}})", re.ASCII
)
_PUBLIC_ID = re.compile(rf"[a-z0-9]{{{PUBLIC_ID_LENGTH}}}", re.ASCII)


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """The two parts of a presented key. ``repr`` never shows the secret."""

    public_id: str
    secret: str

    def __repr__(self) -> str:
        return f"ParsedKey(public_id={self.public_id!r}, secret=<hidden>)"


def new_public_id() -> str:
    """A fresh public id; never all digits, so it cannot be confused with a row id."""
    while True:
        candidate = "".join(secrets.choice(_PUBLIC_ALPHABET) for _ in range(PUBLIC_ID_LENGTH))
        if not candidate.isdigit():
            return candidate


def new_secret() -> str:
    return "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(SECRET_LENGTH))


def format_key(public_id: str, secret: str) -> str:
    return f"{PREFIX}{public_id}-{secret}"


def parse_key(raw: str) -> ParsedKey | None:
    """The parts of ``raw``, or ``None`` when it is not a well-formed key."""
    match = _KEY.fullmatch(raw)
    if match is None:
        return None
    return ParsedKey(match.group(1), match.group(2))


def is_public_id(value: str) -> bool:
    return _PUBLIC_ID.fullmatch(value) is not None


def masked(public_id: str) -> str:
    """What may be shown for a key: its prefix and public id, never the secret."""
    return f"{PREFIX}{public_id}-…"


def hash_secret(secret: str, cost: int = DEFAULT_BCRYPT_COST) -> str:
    """bcrypt hash of ``secret`` (blocking: run it in a thread on a server)."""
    return bcrypt.hashpw(secret.encode(), bcrypt.gensalt(rounds=cost)).decode("ascii")


def check_secret(secret: str, secret_hash: str) -> bool:
    """Whether ``secret`` matches the bcrypt ``secret_hash`` (blocking; bcrypt compares
    in constant time). A corrupt hash is a mismatch, never an exception."""
    try:
        return bcrypt.checkpw(secret.encode(), secret_hash.encode("ascii"))
    except ValueError:
        return False


def secret_digest(pepper: bytes, secret: str) -> bytes:
    """A keyed digest of a secret, what the in-process cache keeps instead of the secret
    (keyed BLAKE2b, a MAC in its own right: a third of HMAC-SHA-256's cost per request)."""
    return hashlib.blake2b(secret.encode(), key=pepper, digest_size=32).digest()


def same_digest(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two digests."""
    return hmac.compare_digest(a, b)
