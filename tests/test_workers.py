"""Several workers: each accepts on a listening socket of its own (`SO_REUSEPORT`), so the
kernel spreads connections over them, and a worker that dies leaves its socket to its
replacement. The service is started by its command line with 2 workers."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from uvicorn.supervisors import multiprocess

from css_core.edge.workers import Workers
from css_core.testing import ProviderDouble
from tests.conftest import Launched, chat, job, service_env
from tests.test_metrics import (
    jobs_by_worker,
    listening_sockets,
    one_connection_each,
    wait_for_workers,
    worker_files,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"),
                                reason="SO_REUSEPORT listeners, read from /proc/net/tcp: Linux only")


@pytest.fixture
def two_workers(double: ProviderDouble, launch: Callable[..., Launched], tmp_path: Path) -> tuple[Launched, Path]:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    service = launch(service_env(double, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)))
    wait_for_workers(metrics_dir, url=service.url)
    return service, metrics_dir


def test_each_worker_listens_on_a_socket_of_its_own_and_connections_spread_over_them(
    double: ProviderDouble, two_workers: tuple[Launched, Path]
) -> None:
    service, metrics_dir = two_workers
    assert listening_sockets(int(service.url.rsplit(":", 1)[1])) == 2  # (and no more)
    double.response_delay = 0.01
    answers = one_connection_each(service.url, [job(chat(f"job {i}")) for i in range(80)], threads=8)
    assert {r.status_code for r in answers} == {200}
    counts = sorted(jobs_by_worker(metrics_dir, 80).values())
    # the kernel hashes each connection to a socket: far from 80/0, near 40/40
    assert len(counts) == 2 and counts[0] >= 20, counts


def test_a_worker_that_dies_is_replaced_and_no_connection_waits_for_it(
    double: ProviderDouble, two_workers: tuple[Launched, Path], http: httpx.Client
) -> None:
    service, metrics_dir = two_workers
    pids = set(worker_files(metrics_dir, "gauge_livesum"))
    os.kill(int(min(pids)), signal.SIGKILL)
    deadline = time.monotonic() + 60
    while not set(worker_files(metrics_dir, "gauge_livesum")) - pids:  # its replacement has started
        assert time.monotonic() < deadline, "the dead worker was not replaced"
        time.sleep(0.1)
    # connections hashed to the dead worker's socket are served by its replacement
    answers = one_connection_each(service.url, [job(chat(f"job {i}")) for i in range(40)], threads=8)
    assert {r.status_code for r in answers} == {200}


class Slot:
    """A worker process as `Workers` sees it: its exit code, `None` while it runs."""

    def __init__(self, exitcode: int | None = None) -> None:
        self.exitcode = exitcode


@pytest.fixture
def supervisor() -> Iterator[Workers]:
    """uvicorn's supervisor of 3 workers, not started: its constructor's signal handlers are undone after."""
    saved = {sig: signal.getsignal(sig) for sig in multiprocess.SIGNALS}
    sockets = [socket.socket() for _ in range(3)]
    try:
        yield Workers(uvicorn.Config("css_core.edge.cli:worker_app", factory=True, workers=3), sockets)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        for sock in sockets:
            sock.close()


def test_each_worker_slot_keeps_its_socket_at_start_on_a_death_and_on_a_restart(
    supervisor: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    listeners = supervisor.listeners
    for slot in range(3):  # start-up: one slot after another
        assert supervisor.sockets == [listeners[slot]]
        supervisor.processes.append(Slot())
    supervisor.processes[1] = Slot(exitcode=-9)
    assert supervisor.sockets == [listeners[1]]  # a dead worker's replacement takes its socket
    supervisor.processes[1] = Slot()
    # a restart (SIGHUP) starts each slot's new worker while the old one still runs, in slot order
    handed: list[socket.socket] = []
    monkeypatch.setattr(multiprocess.Multiprocess, "restart_all",
                        lambda self: handed.extend(self.sockets[0] for _ in self.processes))
    assert supervisor.sockets == [listeners[0]]  # outside a restart, each call moves the turn on ...
    supervisor.restart_all()
    assert handed == listeners  # ... and a restart starts again from the first slot


class Worker:
    """A worker process as uvicorn's supervisor checks it: alive, exited, or running without
    answering its health check (which the supervisor then kills)."""

    pids = iter(range(1001, 2000))

    def __init__(self, config: object = None, sockets: list[socket.socket] | None = None, *,
                 exitcode: int | None = None, answers: bool = True) -> None:
        self.pid, self.sockets, self.exitcode, self.answers = next(Worker.pids), sockets, exitcode, answers
        self.started = False

    def is_alive(self, timeout: float = 5) -> bool:
        return self.exitcode is None and self.answers

    def kill(self) -> None:
        if self.exitcode is None:
            self.exitcode = -signal.SIGKILL

    def join(self) -> None:
        pass

    def start(self) -> None:
        self.started = True


def test_a_dead_worker_is_logged_with_how_it_ended_and_its_replacement(
    supervisor: Workers, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(multiprocess, "Process", Worker)
    exited, crashed, hung = Worker(exitcode=1), Worker(exitcode=-signal.SIGSEGV), Worker(answers=False)
    alive = Worker()
    supervisor.processes[:] = [exited, crashed, hung]
    supervisor.processes.append(alive)  # a fourth slot's worker, which serves: left as it is
    supervisor.listeners.append(supervisor.listeners[0])
    with caplog.at_level(logging.INFO, logger="css_core"):
        supervisor.keep_subprocess_alive()
    new = supervisor.processes
    assert new[3] is alive and all(isinstance(w, Worker) and w.started for w in new[:3])
    assert [w.sockets for w in new[:3]] == [[supervisor.listeners[slot]] for slot in range(3)]  # each its slot's
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"worker {exited.pid} died (exit code 1); replaced by worker {new[0].pid}",
        f"worker {crashed.pid} died (signal SIGSEGV); replaced by worker {new[1].pid}",
        f"worker {hung.pid} died (signal SIGKILL: it did not answer the supervisor's health check within 5 s); "
        f"replaced by worker {new[2].pid}",
    ]
