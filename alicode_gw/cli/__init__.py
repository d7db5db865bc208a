"""``alicode-gw``: the operator's command line.

Each command group lives in its own module with a ``register(subparsers)`` function;
a command's handler takes ``(args, config)`` and returns the exit status. A bad
setting prints one line naming the variable and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from alicode_gw import __version__
from alicode_gw.cli import accounts, billing, keys, server, upstream
from alicode_gw.cli.common import BACKENDS_HELP
from alicode_gw.config import ConfigError, load
from alicode_gw.observe.logs import setup_logging

EXIT_USAGE = 2
_GROUPS = (server, accounts, billing, keys, upstream)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alicode-gw",
        description="Self-hosted Claude API gateway.",
        epilog=f"{server.SERVERS_HELP}\n\n{BACKENDS_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"alicode-gw {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in _GROUPS:
        group.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load(**server.overrides(args))
    except ConfigError as exc:
        print(f"alicode-gw: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config.log_level)
    try:
        return int(args.handler(args, config))
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:
        print(f"alicode-gw: {exc}", file=sys.stderr)
        return EXIT_USAGE
