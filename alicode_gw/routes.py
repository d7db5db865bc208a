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

from alicode_gw.endpoints import (
    batches,
    count_tokens,
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
            raise NotFoundError(f"No such endpoint: {path}")
        route, params = found
        handler = route.methods.get(method)
        if handler is None and method == "HEAD":
            handler = route.methods.get("GET")
        if handler is None:
            raise MethodNotAllowedError(method, path, sorted(route.methods), route.flavor)
        return Match(route, handler, params)


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
                "chat_completions",
                "/v1/chat/completions",
                {"POST": openai_chat.handle_chat_completions},
                Flavor.OPENAI,
                auth=True,
            ),
        ]
    )
