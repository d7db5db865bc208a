"""The response cache's key derivation and entry encryption: pure, no I/O.

The cache *material* of a request is the account id, the body exactly as it goes
upstream (after an alias rewrite), the ``anthropic-version`` and ``anthropic-beta``
headers and the stream flag, each length-prefixed (so no two requests share one). It is
hashed once (SHA-256, never stored) and from that digest, with the server secret:

- the lookup id = HMAC-SHA256(secret, ``lookup`` ‖ digest), hex: the entry's Redis key;
- the entry key = HKDF-SHA256(ikm = digest, salt = secret, info = ``entry``), 32 bytes:
  the AES-256-GCM key of the entry (a random 96-bit nonce per entry; the lookup id is
  the associated data, so an entry is only valid under its own Redis key).

Without the secret nobody can compute a lookup id or an entry key from a guessed
request; without the exact request nobody (not even the operator holding the secret)
can decrypt an entry. The stored plaintext (:class:`Entry`) is the answer's status,
passed headers, token counts and exact bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from dataclasses import dataclass

from alicode_gw.money.contract import Usage

# ``cryptography`` is imported where it is used, not here: it adds ~8 MB to every
# gateway process, and the cache is off by default (a process with the cache off never
# loads it; one with it on pays the import once, at its first lookup).

MATERIAL_VERSION = b"alicode-respcache-v1"
NONCE_BYTES = 12
_LEN = struct.Struct(">Q")
_HEADER_LEN = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class CacheKey:
    """Where a request's answer is stored (``lookup_id``) and the key that seals it."""

    lookup_id: str
    entry_key: bytes

    def __repr__(self) -> str:  # never print the entry key
        return f"CacheKey({self.lookup_id[:12]}…)"


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored answer: ``stream`` (SSE bytes) or not (a JSON Message), the upstream's
    status and passed headers, the original's usage and the exact bytes."""

    stream: bool
    status: int
    headers: dict[str, str]
    usage: Usage
    body: bytes

    @property
    def tokens_saved(self) -> int:
        """Input (incl. cache writes and reads) plus output tokens of the original."""
        return sum(self.usage.counts().values())


def material(
    account_id: int,
    body: bytes,
    anthropic_version: str | None,
    anthropic_beta: str | None,
    stream: bool,
) -> list[bytes]:
    """The request's cache material, as length-prefixed parts (hashed in order)."""
    parts = [
        MATERIAL_VERSION,
        str(account_id).encode(),
        (anthropic_version or "").encode(),
        b"\x00" if anthropic_beta is None else b"\x01" + anthropic_beta.encode(),
        b"1" if stream else b"0",
        body,
    ]
    out: list[bytes] = []
    for part in parts:
        out += (_LEN.pack(len(part)), part)
    return out


def derive(secret: bytes, parts: list[bytes]) -> CacheKey:
    """The lookup id and entry key of the material ``parts`` under ``secret``."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    material_digest = digest.digest()
    lookup = hmac.new(secret, b"lookup\x00" + material_digest, hashlib.sha256).hexdigest()
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    entry_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=secret, info=b"entry").derive(
        material_digest
    )
    return CacheKey(lookup, entry_key)


def cache_key(
    secret: bytes,
    account_id: int,
    body: bytes,
    anthropic_version: str | None,
    anthropic_beta: str | None,
    stream: bool,
) -> CacheKey:
    return derive(secret, material(account_id, body, anthropic_version, anthropic_beta, stream))


def encode_entry(entry: Entry) -> bytes:
    head = json.dumps(
        {
            "stream": entry.stream,
            "status": entry.status,
            "headers": entry.headers,
            "usage": entry.usage.counts(),
        },
        separators=(",", ":"),
    ).encode()
    return _HEADER_LEN.pack(len(head)) + head + entry.body


def decode_entry(plain: bytes) -> Entry:
    (size,) = _HEADER_LEN.unpack_from(plain)
    head = json.loads(plain[_HEADER_LEN.size : _HEADER_LEN.size + size])
    return Entry(
        stream=bool(head["stream"]),
        status=int(head["status"]),
        headers={str(k): str(v) for k, v in head["headers"].items()},
        usage=Usage(**{name: int(head["usage"].get(name, 0)) for name in Usage.__slots__}),
        body=plain[_HEADER_LEN.size + size :],
    )


def seal(key: CacheKey, entry: Entry, nonce: bytes | None = None) -> bytes:
    """The stored value: nonce ‖ AES-256-GCM(entry) (the lookup id authenticated)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    sealed = AESGCM(key.entry_key).encrypt(nonce, encode_entry(entry), key.lookup_id.encode())
    return nonce + sealed


class UnreadableEntry(ValueError):
    """A stored value that does not decrypt under the request's key (tampered with,
    truncated, or written by a gateway with another secret)."""


def open_sealed(key: CacheKey, value: bytes) -> Entry:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(value) <= NONCE_BYTES:
        raise UnreadableEntry("entry too short")
    try:
        plain = AESGCM(key.entry_key).decrypt(
            value[:NONCE_BYTES], value[NONCE_BYTES:], key.lookup_id.encode()
        )
        return decode_entry(plain)
    except (InvalidTag, ValueError, KeyError, TypeError, struct.error) as exc:
        raise UnreadableEntry("entry does not decrypt") from exc
