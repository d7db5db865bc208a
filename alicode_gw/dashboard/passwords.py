"""Dashboard passwords: the rules a new one must meet, and bcrypt in an executor.

bcrypt reads at most 72 bytes; a longer password is refused (never truncated). A login
for an unknown email still runs one bcrypt check (against a dummy hash made at start),
so an unknown email and a wrong password take the same time.
"""

from __future__ import annotations

import asyncio

import bcrypt

from alicode_gw.identity.keys import DEFAULT_BCRYPT_COST

MIN_LENGTH = 10  # characters
MAX_BYTES = 72  # bcrypt's input limit


class PasswordError(ValueError):
    """A new password breaks a rule (the message says which)."""


def check_new(password: str) -> bytes:
    """The password's bytes, if it may be set; else :class:`PasswordError`."""
    data = password.encode()
    if len(password) < MIN_LENGTH:
        raise PasswordError(f"The password must have at least {MIN_LENGTH} characters.")
    if len(data) > MAX_BYTES:
        raise PasswordError(f"The password must be at most {MAX_BYTES} bytes (UTF-8).")
    return data


class Passwords:
    """Hashing and checking, off the event loop."""

    def __init__(self, cost: int = DEFAULT_BCRYPT_COST) -> None:
        self.cost = cost
        self._dummy = bcrypt.hashpw(b"not a password of anyone", bcrypt.gensalt(cost))

    async def hash(self, password: str) -> str:
        data = check_new(password)
        salt = bcrypt.gensalt(self.cost)
        loop = asyncio.get_running_loop()
        hashed = await loop.run_in_executor(None, bcrypt.hashpw, data, salt)
        return hashed.decode("ascii")

    async def verify(self, password: str, stored: str | None) -> bool:
        """Whether ``password`` matches ``stored``; with no hash (unknown email, no
        password set) or an over-long password the dummy is checked, and it is no."""
        data = password.encode()
        usable = stored is not None and len(data) <= MAX_BYTES
        target = stored.encode("ascii") if usable and stored else self._dummy
        loop = asyncio.get_running_loop()
        try:
            ok = await loop.run_in_executor(None, bcrypt.checkpw, data[:MAX_BYTES], target)
        except ValueError:  # a corrupt stored hash
            return False
        return ok and usable
