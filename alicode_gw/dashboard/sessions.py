"""Dashboard sessions: a random token in an HttpOnly cookie, stored as its SHA-256.

The cookie is ``SameSite=Lax`` and ``Secure`` when the request came over TLS (directly,
or as a trusted proxy says with ``X-Forwarded-Proto``). A login always opens a new
session (the token is rotated); logout ends it; a password change ends them all.
"""

from __future__ import annotations

import hashlib
import secrets

from aiohttp import web

COOKIE = "alicode_session"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def set_cookie(
    response: web.StreamResponse, name: str, value: str, *, secure: bool, max_age: int | None
) -> None:
    response.set_cookie(
        name, value, path="/", httponly=True, samesite="Lax", secure=secure, max_age=max_age
    )


def clear_cookie(response: web.StreamResponse, name: str, *, secure: bool) -> None:
    response.del_cookie(name, path="/", httponly=True, samesite="Lax", secure=secure)
