"""``serve``, ``migrate``, ``mock-upstream``: running the gateway and its schema."""

from __future__ import annotations

import argparse
from typing import Any

import uvloop

from alicode_gw import app
from alicode_gw.cli.common import admin_backends, emit, fail
from alicode_gw.config import Config, ConfigError, load, parse_listen
from alicode_gw.store import migrate
from alicode_gw.store.backends import configured_backends

SERVERS_HELP = """\
serve and worker need ALICODE_DATABASE_URL and ALICODE_REDIS_URL and exit with status 2
when either is unset; `alicode-gw dev` is the local run with embedded PostgreSQL and
Redis. serve exits with status 2 when its address is in use (only the workers of one
`serve --workers N` share a port)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the gateway",
        description=SERVERS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--listen", help="HOST:PORT (overrides ALICODE_LISTEN)")
    serve.add_argument(
        "--workers",
        default="1",
        help="gateway processes sharing the port (SO_REUSEPORT), or 'auto' (one per "
        "CPU core); SIGHUP reloads them gracefully. Default 1: a single process",
    )
    serve.set_defaults(handler=run_serve)

    worker = subparsers.add_parser(
        "worker", help="background work only (hold sweeper, billing journal replay)"
    )
    worker.set_defaults(handler=run_worker)

    dev = subparsers.add_parser(
        "dev", help="zero-setup local gateway: embedded servers, mock upstream, demo key"
    )
    dev.add_argument("--listen", help="HOST:PORT (overrides ALICODE_LISTEN)")
    dev.set_defaults(handler=run_dev)

    mig = subparsers.add_parser("migrate", help="apply the pending SQL migrations")
    mig.add_argument("--json", action="store_true", help="machine-readable output")
    mig.set_defaults(handler=run_migrate)

    mock = subparsers.add_parser(
        "mock-upstream", help="run the mock Anthropic upstream (tests, demos, benchmarks)"
    )
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=8788)
    mock.add_argument(
        "--key", action="append", dest="keys", help="accepted credential (repeatable)"
    )
    mock.set_defaults(handler=run_mock_upstream)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config fields set by command-line flags."""
    listen = getattr(args, "listen", None)
    if not listen:
        return {}
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise ConfigError("--listen", str(exc)) from None
    return {"listen_host": host, "listen_port": port}


def run_serve(args: argparse.Namespace, config: Config) -> int:
    from alicode_gw import workers

    config.require_cache_secret()
    count = workers.worker_count(args.workers)
    if count == 1:
        # Refused before anything is opened or cleared (the metrics share directory may
        # be the running gateway's); Gateway.start refuses the port again if it is taken
        # in between.
        configured_backends(config)
        workers.check_port_free(config.listen_host, config.listen_port)
        app.serve(config)
        return 0
    return workers.serve_workers(lambda: load(**overrides(args)), count)


def run_worker(args: argparse.Namespace, config: Config) -> int:
    from alicode_gw import background

    config.require_cache_secret()
    return background.run(config)


def run_dev(args: argparse.Namespace, config: Config) -> int:
    from alicode_gw.dev import server as devserver
    from alicode_gw.dev.embedded import EmbeddedError

    try:
        return devserver.run(config)
    except EmbeddedError as exc:
        return fail(str(exc))


def run_migrate(args: argparse.Namespace, config: Config) -> int:
    backends = admin_backends(config)
    applied = uvloop.run(migrate.run(backends.database_url))
    emit(
        {"applied": applied},
        args.json,
        "\n".join(f"applied {name}" for name in applied) or "schema is up to date",
    )
    return 0


def run_mock_upstream(args: argparse.Namespace, config: Config) -> int:
    from alicode_gw.dev import mock_upstream

    keys = args.keys or [mock_upstream.DEFAULT_MOCK_KEY]
    print(f"mock upstream on http://{args.host}:{args.port}", flush=True)
    uvloop.run(mock_upstream.serve(args.host, args.port, keys))
    return 0
