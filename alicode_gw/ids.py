"""Random identifiers (request ids and the like)."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def random_token(length: int) -> str:
    """``length`` characters of base62 from the OS CSPRNG."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_request_id() -> str:
    """A request id in Anthropic's style: ``req_`` and 24 base62 characters."""
    return "req_" + random_token(24)
