"""Random identifiers (request ids and the like)."""

from __future__ import annotations

import secrets
import string

_ALPHABET = (string.digits + string.ascii_letters).encode()
_KEPT = 4 * len(_ALPHABET)  # 248: the bytes below it map evenly onto the 62 characters
# byte -> character for a kept byte; the bytes from _KEPT up are dropped (rejection).
_TO_CHARACTER = bytes(_ALPHABET[b % len(_ALPHABET)] if b < _KEPT else 0 for b in range(256))
_DROPPED = bytes(range(_KEPT, 256))


def random_token(length: int) -> str:
    """``length`` uniformly random base62 characters from the OS CSPRNG.

    Each random byte below 248 gives one character (``byte % 62``: every character
    from exactly four byte values); the others are dropped and more are drawn. One
    ``token_bytes`` call (one syscall) nearly always suffices: 8 spare bytes for the
    ~3 % dropped.
    """
    drawn = b""
    while len(drawn) < length:
        drawn += secrets.token_bytes(length + 8).translate(_TO_CHARACTER, _DROPPED)
    return drawn[:length].decode("ascii")


def new_request_id() -> str:
    """A request id in Anthropic's style: ``req_`` and 24 base62 characters."""
    return "req_" + random_token(24)
