"""The dashboard's per-process state (``State.dashboard``): templates, static files,
password hashing and the login throttle, built once in ``app.open_state``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from redis.asyncio import Redis

from alicode_gw.config import Config
from alicode_gw.dashboard import render
from alicode_gw.dashboard.passwords import Passwords
from alicode_gw.dashboard.throttle import Throttle
from alicode_gw.identity.keys import DEFAULT_BCRYPT_COST

if TYPE_CHECKING:
    import jinja2


class Dashboard:
    """Per-process dashboard state, built once in ``app.open_state``."""

    def __init__(
        self, config: Config, redis: Redis, bcrypt_cost: int = DEFAULT_BCRYPT_COST
    ) -> None:
        self.config = config
        self._templates: jinja2.Environment | None = None
        self.static = render.static_files()
        self.passwords = Passwords(bcrypt_cost)
        self.throttle = Throttle(
            redis,
            config.redis_prefix,
            config.dashboard_login_attempts,
            config.dashboard_login_window,
        )

    @property
    def templates(self) -> jinja2.Environment:
        """The page templates, built at the first page (see :func:`render.environment`)."""
        if self._templates is None:
            self._templates = render.environment()
        return self._templates
