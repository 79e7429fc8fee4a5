"""Several workers, each accepting on a listening socket of its own (`SO_REUSEPORT`).

uvicorn's workers share one listening socket, and whichever worker wakes first accepts:
under a burst of long streams one worker takes more than its share of them. Here the
supervisor binds one socket per worker to the same address with `SO_REUSEPORT`, so the
kernel spreads new connections evenly over the workers, and keeps every socket open, so a
worker that dies leaves its queued connections to its replacement. The supervisor is
uvicorn's own (restarts, signals, health checks); only which socket a worker serves differs,
and a worker that died is logged (WARNING) with how it ended and which worker replaced it.
Where the platform has no `SO_REUSEPORT`, `serve` falls back to uvicorn's shared socket.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

__all__ = ("Workers", "bind_listeners", "serve")

# A new worker imports the whole service before it can answer the supervisor's health check:
# on a busy machine that takes longer than uvicorn's default, which then kills the worker it
# has just started, and the next one, in a chain.
_HEALTHCHECK_SECONDS = 30
logger = logging.getLogger("css_core")


def bind_listeners(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` sockets bound to `host:port` with `SO_REUSEPORT`, for the workers to listen on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listeners: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            listeners.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.set_inheritable(True)
    except OSError:
        for sock in listeners:
            sock.close()
        raise
    return listeners


class Workers(Multiprocess):
    """uvicorn's supervisor, giving the worker in each slot the listening socket of that slot."""

    def __init__(self, config: uvicorn.Config, listeners: list[socket.socket]) -> None:
        super().__init__(config, sockets=listeners)
        self.listeners = listeners
        self._restarting = 0

    @property
    def sockets(self) -> list[socket.socket]:
        """The socket of the slot whose worker uvicorn is starting: a new slot while it starts them
        all, a slot whose worker has exited when it replaces one, each slot in turn on a restart."""
        processes = self.processes
        if len(processes) < len(self.listeners):
            slot = len(processes)
        else:
            exited = [i for i, p in enumerate(processes) if p.exitcode is not None]
            if exited:
                slot = exited[0]
            else:
                slot, self._restarting = self._restarting, (self._restarting + 1) % len(self.listeners)
        return [self.listeners[slot]]

    @sockets.setter
    def sockets(self, value: Any) -> None:
        pass  # uvicorn's constructor sets it; each worker's socket is chosen above

    def restart_all(self) -> None:
        self._restarting = 0  # uvicorn replaces the workers in slot order
        super().restart_all()

    def keep_subprocess_alive(self) -> None:
        """uvicorn's check of every worker, which replaces one that exited, or kills and replaces one
        that does not answer its health check, without a word at the service's log level: each
        replacement is logged here, saying how the worker ended."""
        before = [(process, process.exitcode is None) for process in self.processes]
        super().keep_subprocess_alive()
        for (old, running), new in zip(before, self.processes, strict=False):
            if new is not old:
                ended = _ended(old.exitcode)
                if running and old.exitcode == -signal.SIGKILL:  # it was running when uvicorn checked it
                    ended += (f": it did not answer the supervisor's health check within "
                              f"{self.config.timeout_worker_healthcheck:g} s")
                logger.warning("worker %s died (%s); replaced by worker %s", old.pid, ended, new.pid)


def _ended(exitcode: int | None) -> str:
    """How a process ended, from its exit code (negative: the signal that ended it)."""
    if exitcode is None:
        return "exit code unknown"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def serve(app: str, host: str, port: int, workers: int, **options: Any) -> None:
    """Run `workers` (2 or more) worker processes of the app factory `app` on `host:port`."""
    if not hasattr(socket, "SO_REUSEPORT"):
        uvicorn.run(app, factory=True, host=host, port=port, workers=workers,
                    timeout_worker_healthcheck=_HEALTHCHECK_SECONDS, **options)
        return
    config = uvicorn.Config(app, factory=True, host=host, port=port, workers=workers,
                            timeout_worker_healthcheck=_HEALTHCHECK_SECONDS, **options)
    try:
        listeners = bind_listeners(host, port, workers)
    except OSError as exc:
        logger.error("cannot listen on %s:%d: %s", host, port, exc)
        sys.exit(3)  # uvicorn's start-up failure
    logger.info("listening on %s:%d, one socket per worker (%d)", host, port, workers)
    try:
        Workers(config, listeners).run()
    finally:
        for sock in listeners:
            sock.close()
