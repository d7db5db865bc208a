"""HTML out: the jinja2 environment (autoescape on: every value a user typed is shown
as text) and the response every page gets, with the security headers of
:data:`~alicode_gw.errors.HTML_HEADERS`. The environment is built once, at the first
page, by :class:`~alicode_gw.dashboard.state.Dashboard` (on ``State``)."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from alicode_gw.errors import HTML_HEADERS
from alicode_gw.money.usd import format_usd

if TYPE_CHECKING:
    import jinja2

STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


def usd(nanos: int | None) -> str:
    return "" if nanos is None else format_usd(nanos)


def thousands(number: int | None) -> str:
    return "" if number is None else f"{number:,}"


def environment() -> jinja2.Environment:
    """The templates' environment. jinja2 is imported here, not with the module: the
    dashboard builds this at its first page (a gateway process that serves only the API
    does not carry jinja2's ~2 MB)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("alicode_gw.dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["usd"] = usd
    env.filters["thousands"] = thousands
    return env


def static_files() -> dict[str, tuple[bytes, str]]:
    """The files under ``static/`` (the stylesheet, the copy button's script), read once."""
    folder = resources.files("alicode_gw.dashboard") / "static"
    files = {}
    for item in folder.iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1]
        if item.is_file() and suffix in STATIC_TYPES:
            files[item.name] = (item.read_bytes(), STATIC_TYPES[suffix])
    return files


def html(
    env: jinja2.Environment, template: str, context: dict[str, Any], status: int = 200
) -> web.Response:
    body = env.get_template(template).render(**context)
    return web.Response(
        status=status,
        text=body,
        content_type="text/html",
        charset="utf-8",
        headers=HTML_HEADERS,
    )
