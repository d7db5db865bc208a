"""Random identifiers (request ids and the like)."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.digits + string.ascii_letters


def random_token(length: int) -> str:
    """``length`` uniformly random base62 characters from the OS CSPRNG.

    One ``token_bytes`` call (one syscall) instead of one per character: the number is
    drawn below 62**length by rejection, so every character is uniform.
    """
    limit = 62**length
    size = (limit.bit_length() + 7) // 8
    while True:
        number = int.from_bytes(secrets.token_bytes(size), "big")
        if number < limit:
            break
    chars = []
    for _ in range(length):
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return "".join(chars)


def new_request_id() -> str:
    """A request id in Anthropic's style: ``req_`` and 24 base62 characters."""
    return "req_" + random_token(24)
