"""``alicode-gw serve --workers N``: N gateway processes on one port, one small parent.

The model: **SO_REUSEPORT**. Each worker is an independent process (started with
``multiprocessing``'s *spawn*, so nothing of the parent's memory is shared) running the
same :func:`alicode_gw.app.run_until_signalled` as a single-process ``serve``: its own
:class:`~alicode_gw.state.State`, database and Redis pools, upstream client and
background tasks. Every worker binds the listen address itself with ``reuse_port``;
the kernel spreads incoming connections over them. The parent only supervises:

* It needs the configured PostgreSQL and Redis (exit status 2 without them), and
  checks the port before starting a worker: one another process listens on is refused
  ("address already in use", exit status 2). Its workers are the only processes that
  share the port: once they listen, a plain ``serve`` (no SO_REUSEPORT) or another
  supervisor's check fails there. It clears the metrics share directory once.
* SIGTERM / SIGINT are forwarded to every worker as SIGTERM; each stops accepting and
  drains its in-flight requests (``ALICODE_SHUTDOWN_TIMEOUT``). Workers still alive
  ``KILL_MARGIN`` seconds past that are killed.
* SIGHUP (``systemctl reload``) is a **graceful reload**: the configuration is read
  again, N new workers are started (new code too, since they are fresh interpreters),
  and once every one of them listens the old ones get SIGTERM and drain — a stream that
  started before the reload finishes on its old worker while new connections go to the
  new ones. If a new worker fails to come up, the reload is abandoned and the old
  workers keep serving.
* Nothing is restarted silently: a worker that exits on its own makes the parent log
  it, stop the others gracefully and exit with status 1, so systemd's
  ``Restart=on-failure`` restarts the whole service (and the failure is visible).

Workers ignore SIGHUP themselves: only the parent reloads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

import uvloop

from alicode_gw import app
from alicode_gw.config import Config, ConfigError
from alicode_gw.observe.logs import setup_logging
from alicode_gw.observe.metrics import clear_share_dir, share_dir
from alicode_gw.store.backends import configured_backends

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0  # seconds a new worker gets to listen
KILL_MARGIN = 10.0  # seconds past the shutdown timeout before a draining worker is killed
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def worker_count(text: str) -> int:
    """``--workers`` value: a positive number, or ``auto`` (one per CPU core)."""
    if text == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    try:
        count = int(text)
    except ValueError:
        raise ConfigError("--workers", f"expected a number or 'auto', got {text!r}") from None
    if count < 1:
        raise ConfigError("--workers", "must be at least 1")
    return count


def check_port_free(host: str, port: int) -> None:
    """:class:`ConfigError` naming ``ALICODE_LISTEN`` ("address already in use") when a
    process listens on ``host:port``: each of its addresses is bound once without
    SO_REUSEPORT, which fails next to any listener, one with SO_REUSEPORT included."""
    for family, kind, proto, _, address in socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as probe:
            # As the listener will: SO_REUSEADDR (a previous run's TIME_WAIT
            # connections do not count), IPv6 sockets IPv6-only.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise ConfigError(
                    "ALICODE_LISTEN", f"{host}:{port}: address already in use"
                ) from exc


def _worker_main(config: Config, ready: Connection) -> None:
    """A worker process: the single-process gateway, reporting when it listens."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    setup_logging(config.log_level)

    def announce(gateway: app.Gateway) -> None:
        ready.send(gateway.port)
        ready.close()

    config = dataclasses.replace(config, share_port=True)
    uvloop.run(app.run_until_signalled(config, configured_backends(config), announce))


@dataclass(slots=True)
class _Worker:
    process: BaseProcess
    ready: Connection
    generation: int
    listening: bool = False
    retire_deadline: float | None = None


@dataclass(slots=True)
class Supervisor:
    """The parent of ``serve --workers N``; :meth:`run` returns the exit status."""

    load_config: Callable[[], Config]
    workers: int
    _config: Config | None = None
    _live: list[_Worker] = field(default_factory=list)
    _retiring: list[_Worker] = field(default_factory=list)
    _signals: list[int] = field(default_factory=list)
    _generation: int = 0
    _wakeup: socket.socket | None = None

    # --- signals -----------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _install_signals(self) -> socket.socket:
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        for sig in _FORWARDED:
            signal.signal(sig, self._on_signal)
        self._wakeup = reader
        return writer

    def _drain_wakeup(self) -> None:
        assert self._wakeup is not None
        with contextlib.suppress(BlockingIOError):
            while self._wakeup.recv(256):
                pass

    # --- workers -----------------------------------------------------------------------

    def _spawn(self, config: Config) -> list[_Worker]:
        ctx = multiprocessing.get_context("spawn")
        self._generation += 1
        started: list[_Worker] = []
        for index in range(self.workers):
            parent_end, child_end = ctx.Pipe(duplex=False)
            process = ctx.Process(
                target=_worker_main,
                args=(config, child_end),
                name=f"alicode-gw-worker-{self._generation}.{index}",
            )
            process.start()
            child_end.close()
            started.append(_Worker(process, parent_end, self._generation))
        log.info(
            "started %d worker(s), generation %d: pids %s",
            len(started),
            self._generation,
            ", ".join(str(w.process.pid) for w in started),
        )
        return started

    def _await_listening(self, workers: list[_Worker]) -> bool:
        """Wait until every worker listens. False if one died, the start timeout passed
        or SIGTERM/SIGINT arrived (then left in ``_signals``)."""
        deadline = time.monotonic() + START_TIMEOUT
        while not all(w.listening for w in workers):
            if any(sig in (signal.SIGTERM, signal.SIGINT) for sig in self._signals):
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.error("a worker did not start listening within %.0f s", START_TIMEOUT)
                return False
            assert self._wakeup is not None
            waiting: list[object] = [self._wakeup]
            for worker in workers:
                if not worker.listening:
                    waiting += [worker.ready, worker.process.sentinel]
            wait(waiting, remaining)  # type: ignore[arg-type]
            self._drain_wakeup()
            for worker in workers:
                if worker.listening:
                    continue
                with contextlib.suppress(EOFError, OSError):
                    if worker.ready.poll():
                        worker.ready.recv()
                        worker.listening = True
                        continue
                if not worker.process.is_alive():
                    log.error(
                        "worker %s exited with %s before listening",
                        worker.process.pid,
                        worker.process.exitcode,
                    )
                    return False
        return True

    def _terminate(self, workers: list[_Worker], grace: float) -> None:
        deadline = time.monotonic() + grace
        for worker in workers:
            worker.retire_deadline = deadline
            if worker.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid or 0, signal.SIGTERM)

    def _grace(self) -> float:
        assert self._config is not None
        return self._config.shutdown_timeout + KILL_MARGIN

    def _reap(self) -> list[_Worker]:
        """Collect exited workers; returns the live ones that exited on their own."""
        for worker in [w for w in self._retiring if not w.process.is_alive()]:
            worker.process.join()
            self._retiring.remove(worker)
            worker.ready.close()
            log.info(
                "worker %s drained and exited (%s)", worker.process.pid, worker.process.exitcode
            )
        now = time.monotonic()
        for worker in self._retiring:
            if worker.retire_deadline is not None and now > worker.retire_deadline:
                log.warning(
                    "worker %s still draining past its deadline; killed", worker.process.pid
                )
                worker.process.kill()
                worker.retire_deadline = None
        return [w for w in self._live if not w.process.is_alive()]

    def _reload(self) -> None:
        try:
            config = self.load_config()
            configured_backends(config)
        except ConfigError as exc:
            log.error("reload refused, the configuration is invalid (%s); still serving", exc)
            return
        log.info("reload: starting a new generation of %d worker(s)", self.workers)
        fresh = self._spawn(config)
        if not self._await_listening(fresh):
            log.error("reload failed: the new workers did not all start; the old ones keep serving")
            self._terminate(fresh, self._grace())
            self._retiring += fresh
            return
        old, self._live, self._config = self._live, fresh, config
        log.info("reload: new workers listen; draining %d old worker(s)", len(old))
        self._terminate(old, self._grace())
        self._retiring += old

    def _shutdown(self) -> None:
        everyone = self._live + self._retiring
        log.info("shutting down: draining %d worker(s)", len(everyone))
        self._terminate(self._live, self._grace())
        self._retiring += self._live
        self._live = []
        while self._retiring:
            self._reap()
            wait([w.process.sentinel for w in self._retiring], 0.2)

    # --- the loop ----------------------------------------------------------------------

    def run(self) -> int:
        writer = self._install_signals()
        try:
            return self._serve()
        finally:
            signal.set_wakeup_fd(-1)
            for sig in _FORWARDED:
                signal.signal(sig, signal.SIG_DFL)
            writer.close()
            if self._wakeup is not None:
                self._wakeup.close()

    def _serve(self) -> int:
        self._config = self.load_config()
        self._live = self._spawn(self._config)
        if not self._await_listening(self._live):
            self._shutdown()
            return 0 if self._stop_requested() else 1
        config = self._config
        log.info(
            "alicode_gw listening on http://%s:%d with %d workers (parent pid %d)",
            config.listen_host,
            config.listen_port,
            self.workers,
            os.getpid(),
        )
        while True:
            assert self._wakeup is not None
            waiting: list[object] = [self._wakeup]
            waiting += [w.process.sentinel for w in self._live + self._retiring]
            wait(waiting, 1.0)  # type: ignore[arg-type]
            self._drain_wakeup()
            if self._stop_requested():
                self._shutdown()
                return 0
            if signal.SIGHUP in self._signals:
                self._signals.clear()
                self._reload()
                continue
            died = self._reap()
            if died:
                for worker in died:
                    log.error(
                        "worker %s exited unexpectedly with %s; stopping the service "
                        "(the service manager restarts it)",
                        worker.process.pid,
                        worker.process.exitcode,
                    )
                    self._live.remove(worker)
                self._shutdown()
                return 1

    def _stop_requested(self) -> bool:
        return any(sig in (signal.SIGTERM, signal.SIGINT) for sig in self._signals)


def serve_workers(load_config: Callable[[], Config], workers: int) -> int:
    """Blocking entry point of ``alicode-gw serve --workers N`` (N > 1)."""
    config = load_config()
    configured_backends(config)
    check_port_free(config.listen_host, config.listen_port)
    clear_share_dir(share_dir(config))
    return Supervisor(load_config, workers).run()
