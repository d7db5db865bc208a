"""CSRF tokens of the dashboard's forms.

A signed-in form carries a token derived from the session token (HMAC-SHA256), so it
needs no storage and dies with the session. A form before login (login, register,
password setup) uses a double-submit cookie: a random value in a cookie of its own,
repeated in the form; another site can neither read nor set it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PRE_SESSION_COOKIE = "alicode_csrf"
FIELD = "csrf_token"


def for_session(session_token: str) -> str:
    return hmac.new(session_token.encode(), b"dashboard csrf", hashlib.sha256).hexdigest()


def new_pre_session() -> str:
    return secrets.token_urlsafe(24)


def matches(expected: str | None, given: str | None) -> bool:
    """Constant-time; a missing value never matches."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
