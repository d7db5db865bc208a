"""The dashboard as the router sees it: :func:`page`, which wraps each page handler with
what every page needs: the session (login required unless said otherwise; ``operator``
pages answer 404 to anyone else, signed in or not), the form of a POST read and its
CSRF token checked, and HTML out. Errors raised by a page are rendered as HTML by
``errors.render`` (the routes' flavor is ``Flavor.HTML``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
from aiohttp import web

from alicode_gw.clientip import came_over_tls
from alicode_gw.dashboard import csrf, render, sessions, store
from alicode_gw.dashboard.state import Dashboard
from alicode_gw.errors import (
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    UnsupportedMediaTypeError,
)
from alicode_gw.requestbody import read_body
from alicode_gw.state import RequestContext

MAX_FORM_BYTES = 64 * 1024
CSRF_REFUSED = "This form has expired or did not come from this site; reload the page."


@dataclass(slots=True)
class Page:
    """One page request: the context, the signed-in account (if any), the form."""

    ctx: RequestContext
    viewer: store.Viewer | None
    csrf_token: str
    secure: bool
    form: dict[str, str] = field(default_factory=dict)
    new_pre_session: str | None = None  # a CSRF cookie to set with the answer

    @property
    def dashboard(self) -> Dashboard:
        return self.ctx.state.dashboard

    @property
    def db(self) -> asyncpg.Pool:
        return self.ctx.state.db

    @property
    def me(self) -> store.Viewer:
        assert self.viewer is not None, "a page that needs a login is declared login=True"
        return self.viewer

    @property
    def query(self) -> dict[str, str]:
        return dict(self.ctx.request.query)

    def field(self, name: str) -> str:
        return self.form.get(name, "")

    def render(self, template: str, status: int = 200, **values: Any) -> web.Response:
        context = {
            "viewer": self.viewer,
            "csrf_token": self.csrf_token,
            "registration": self.dashboard.config.dashboard_registration,
            "today": dt.datetime.now(dt.UTC).date(),
            **values,
        }
        response = render.html(self.dashboard.templates, template, context, status)
        self._finish(response)
        return response

    def redirect(self, location: str) -> web.Response:
        response = web.Response(status=303, headers={"Location": location})
        self._finish(response)
        return response

    def _finish(self, response: web.StreamResponse) -> None:
        if self.new_pre_session is not None:
            sessions.set_cookie(
                response,
                csrf.PRE_SESSION_COOKIE,
                self.new_pre_session,
                secure=self.secure,
                max_age=None,
            )


PageHandler = Callable[[Page], Awaitable[web.StreamResponse]]


def row_id(text: str) -> int | None:
    """A row id from a path or a query (digits that fit a bigint), else ``None``."""
    return int(text) if text.isdigit() and len(text) <= 18 else None


async def read_form(request: web.BaseRequest) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the only kind the pages post)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise UnsupportedMediaTypeError("Forms are posted as application/x-www-form-urlencoded.")
    body = await read_body(request, MAX_FORM_BYTES)
    try:
        text = body.decode("utf-8")
        return dict(parse_qsl(text, keep_blank_values=True, errors="strict"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequestError("The form could not be read.") from exc


def page(
    handler: PageHandler, *, login: bool = True, operator: bool = False
) -> Callable[[RequestContext], Awaitable[web.StreamResponse]]:
    """The route handler of a page (see the module docstring)."""

    async def run(ctx: RequestContext) -> web.StreamResponse:
        request = ctx.request
        token = request.cookies.get(sessions.COOKIE)
        viewer = None
        if token:
            viewer = await store.viewer(ctx.state.db, token, sessions.token_hash(token))
        if operator and (viewer is None or not viewer.is_operator):
            raise NotFoundError(f"No such page: {request.path}")  # signed in or not
        if viewer is None and login:
            if request.method in ("GET", "HEAD"):
                return web.Response(status=303, headers={"Location": "/dashboard/login"})
            raise PermissionDeniedError("Sign in first.")
        secure = came_over_tls(request, ctx.state.config.trusted_proxies)
        pre = request.cookies.get(csrf.PRE_SESSION_COOKIE)
        new_pre = None
        if viewer is not None:
            expected = csrf.for_session(viewer.session_token)
        else:
            if not pre:
                pre = new_pre = csrf.new_pre_session()
            expected = pre
        current = Page(ctx, viewer, expected, secure, new_pre_session=new_pre)
        if request.method == "POST":
            current.form = await read_form(request)
            if new_pre is not None or not csrf.matches(expected, current.form.get(csrf.FIELD)):
                raise PermissionDeniedError(CSRF_REFUSED)
        return await handler(current)

    return run


async def serve_static(ctx: RequestContext) -> web.StreamResponse:
    found = ctx.state.dashboard.static.get(ctx.params["name"])
    if found is None:
        raise NotFoundError(f"No such file: {ctx.request.path}")
    body, content_type = found
    return web.Response(
        body=body,
        content_type=content_type,
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )
