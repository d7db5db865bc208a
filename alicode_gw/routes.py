"""The route table and its matcher (no routing library).

A route is a path pattern (``{name}`` segments are parameters), the handler for each
method, the error flavor its errors use, and whether it needs a customer key (``auth``:
the root handler in :mod:`alicode_gw.app` authenticates before the handler runs, so no
handler does it itself). Paths are tried as given, then with a
doubled ``/v1/v1/`` collapsed (clients configured with a base URL ending in ``/v1``)
and then with ``/v1`` prepended (OpenAI clients configured without it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from aiohttp import web

from alicode_gw.dashboard import (
    account_page,
    admin_pages,
    auth_pages,
    keys_page,
    site,
    usage_pages,
)
from alicode_gw.endpoints import (
    batches,
    count_tokens,
    files,
    health,
    key_status,
    messages,
    metrics,
    models,
    openai_chat,
)
from alicode_gw.errors import Flavor, MethodNotAllowedError, NotFoundError
from alicode_gw.state import RequestContext

Handler = Callable[[RequestContext], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    pattern: str
    methods: Mapping[str, Handler]
    flavor: Flavor = Flavor.ANTHROPIC
    auth: bool = False
    # A route whose clients speak either API: its flavor read from each request.
    flavor_of: Callable[[web.BaseRequest], Flavor] | None = None


@dataclass(frozen=True, slots=True)
class Match:
    route: Route
    handler: Handler
    params: dict[str, str]


class Router:
    """Resolves (method, path) to a handler; raises 404/405 as :mod:`errors` types."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._exact: dict[str, Route] = {}
        self._patterns: list[tuple[tuple[str, ...], Route]] = []
        for route in routes:
            if "{" in route.pattern:
                self._patterns.append((tuple(route.pattern.strip("/").split("/")), route))
            else:
                self._exact[route.pattern] = route

    def _find(self, path: str) -> tuple[Route, dict[str, str]] | None:
        route = self._exact.get(path)
        if route is not None:
            return route, {}
        segments = path.strip("/").split("/")
        for pattern, candidate in self._patterns:
            if len(pattern) != len(segments):
                continue
            params: dict[str, str] = {}
            for want, got in zip(pattern, segments, strict=True):
                if want.startswith("{"):
                    if not got:
                        break
                    params[want[1:-1]] = got
                elif want != got:
                    break
            else:
                return candidate, params
        return None

    def resolve(self, method: str, path: str) -> Match:
        found = self._find(path)
        if found is None and path.startswith("/v1/v1/"):
            found = self._find(path[3:])
        elif found is None and not path.startswith("/v1/"):
            found = self._find("/v1" + path)
        if found is None:
            err = NotFoundError(f"No such endpoint: {path}")
            if path.startswith(HTML_PREFIXES):
                err.flavor = Flavor.HTML
            raise err
        route, params = found
        handler = route.methods.get(method)
        if handler is None and method == "HEAD":
            handler = route.methods.get("GET")
        if handler is None:
            raise MethodNotAllowedError(method, path, sorted(route.methods), route.flavor)
        return Match(route, handler, params)


HTML_PREFIXES = ("/dashboard", "/admin")  # unknown paths below these get a page


def dashboard_routes() -> list[Route]:
    """The dashboard's pages (alicode_gw/dashboard): session cookie, not a key, so not
    ``auth=True``; errors rendered as HTML."""
    page, html = site.page, Flavor.HTML
    anonymous = {"login": False}
    admin = {"operator": True}
    table: list[tuple[str, str, dict[str, Handler]]] = [
        ("dash_static", "/dashboard/static/{name}", {"GET": site.serve_static}),
        (
            "dash_login",
            "/dashboard/login",
            {
                "GET": page(auth_pages.login_form, **anonymous),
                "POST": page(auth_pages.login, **anonymous),
            },
        ),
        (
            "dash_register",
            "/dashboard/register",
            {
                "GET": page(auth_pages.register_form, **anonymous),
                "POST": page(auth_pages.register, **anonymous),
            },
        ),
        (
            "dash_setup",
            "/dashboard/setup",
            {
                "GET": page(auth_pages.setup_form, **anonymous),
                "POST": page(auth_pages.setup, **anonymous),
            },
        ),
        ("dash_logout", "/dashboard/logout", {"POST": page(auth_pages.logout)}),
        ("dash_overview", "/dashboard", {"GET": page(usage_pages.overview)}),
        (
            "dash_keys",
            "/dashboard/keys",
            {"GET": page(keys_page.keys_page), "POST": page(keys_page.create)},
        ),
        ("dash_key_revoke", "/dashboard/keys/{key_id}/revoke", {"POST": page(keys_page.revoke)}),
        ("dash_key_cap", "/dashboard/keys/{key_id}/cap", {"POST": page(keys_page.set_cap)}),
        (
            "dash_key_response_cache",
            "/dashboard/keys/{key_id}/response-cache",
            {"POST": page(keys_page.set_response_cache)},
        ),
        ("dash_usage", "/dashboard/usage", {"GET": page(usage_pages.usage)}),
        ("dash_usage_csv", "/dashboard/usage.csv", {"GET": page(usage_pages.usage_csv)}),
        ("dash_billing", "/dashboard/billing", {"GET": page(usage_pages.billing)}),
        ("dash_account", "/dashboard/account", {"GET": page(account_page.account_page)}),
        (
            "dash_password",
            "/dashboard/account/password",
            {"POST": page(account_page.change_password)},
        ),
        ("dash_stop", "/dashboard/account/stop", {"POST": page(account_page.emergency_stop)}),
        ("dash_delete", "/dashboard/account/delete", {"POST": page(account_page.delete_account)}),
        ("admin_accounts", "/admin", {"GET": page(admin_pages.accounts_page, **admin)}),
        (
            "admin_account",
            "/admin/accounts/{account_id}",
            {"GET": page(admin_pages.account_page, **admin)},
        ),
        (
            "admin_topup",
            "/admin/accounts/{account_id}/topup",
            {"POST": page(admin_pages.topup, **admin)},
        ),
        (
            "admin_suspend",
            "/admin/accounts/{account_id}/suspend",
            {"POST": page(admin_pages.suspend, **admin)},
        ),
        (
            "admin_unsuspend",
            "/admin/accounts/{account_id}/unsuspend",
            {"POST": page(admin_pages.unsuspend, **admin)},
        ),
        ("admin_upstream", "/admin/upstream", {"GET": page(admin_pages.upstream_page, **admin)}),
        (
            "admin_upstream_change",
            "/admin/upstream/{cred_id}/{action}",
            {"POST": page(admin_pages.upstream_change, **admin)},
        ),
    ]
    return [Route(name, pattern, methods, html) for name, pattern, methods in table]


def build_router() -> Router:
    """The gateway's endpoints."""
    return Router(
        [
            Route("root", "/", {"GET": health.handle_root}),
            Route("health", "/v1/health", {"GET": health.handle_health}),
            Route("metrics", "/metrics", {"GET": metrics.handle_metrics}),
            Route("key_status", "/v1/key-status", {"GET": key_status.handle_key_status}, auth=True),
            Route("messages", "/v1/messages", {"POST": messages.handle_messages}, auth=True),
            Route(
                "count_tokens",
                "/v1/messages/count_tokens",
                {"POST": count_tokens.handle_count_tokens},
                auth=True,
            ),
            Route(
                "batches",
                "/v1/messages/batches",
                {"POST": batches.handle_create, "GET": batches.handle_list},
                auth=True,
            ),
            Route(
                "batch",
                "/v1/messages/batches/{batch_id}",
                {"GET": batches.handle_get, "DELETE": batches.handle_delete},
                auth=True,
            ),
            Route(
                "batch_cancel",
                "/v1/messages/batches/{batch_id}/cancel",
                {"POST": batches.handle_cancel},
                auth=True,
            ),
            Route(
                "batch_results",
                "/v1/messages/batches/{batch_id}/results",
                {"GET": batches.handle_results},
                auth=True,
            ),
            Route(
                "models",
                "/v1/models",
                {"GET": models.handle_list},
                auth=True,
                flavor_of=models.flavor_of,
            ),
            Route(
                "model",
                "/v1/models/{model_id}",
                {"GET": models.handle_get},
                auth=True,
                flavor_of=models.flavor_of,
            ),
            Route(
                "files",
                "/v1/files",
                {"GET": files.handle_list, "POST": files.handle_upload},
                auth=True,
            ),
            Route(
                "file",
                "/v1/files/{file_id}",
                {"GET": files.handle_get, "DELETE": files.handle_delete},
                auth=True,
            ),
            Route(
                "file_content",
                "/v1/files/{file_id}/content",
                {"GET": files.handle_content},
                auth=True,
            ),
            Route(
                "chat_completions",
                "/v1/chat/completions",
                {"POST": openai_chat.handle_chat_completions},
                Flavor.OPENAI,
                auth=True,
            ),
            *dashboard_routes(),
        ]
    )
