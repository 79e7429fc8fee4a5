"""The service's command line in a subprocess, for the tests `conftest.launch` does not fit: one
whose `GET /` needs the bearer token (it is ready once `GET /health` answers), and one whose
budgets' windows are on a fixed clock (`tests.clock_service`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.clock_service import CLOCK_VARIABLE
from tests.conftest import EXECUTABLE, Launched, command_env, free_port

__all__ = ("launcher", "mid_window")

ROOT = Path(__file__).resolve().parent.parent


def mid_window() -> float:
    """A time half an hour into an hour, tomorrow: far from any window's end, and after every
    count a store holds now (a store expires counts on the real clock)."""
    return (time.time() // 86400 + 1) * 86400 + 1800


@contextmanager
def launcher(cwd: Path) -> Iterator[Callable[..., Launched]]:
    """`start(env, workers=2, clock=None) -> Launched`: the command line, once `GET /health` answers;
    with `clock`, its budgets' windows on that fixed time. Every one is stopped at the end."""
    started: list[Launched] = []

    def start(env: Mapping[str, str], workers: int = 2, clock: float | None = None) -> Launched:
        port = free_port()
        command = [EXECUTABLE]
        full_env = command_env(env)
        if clock is not None:
            command = [sys.executable, "-m", "tests.clock_service"]
            full_env = {**full_env, CLOCK_VARIABLE: repr(clock),
                        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))}
        process = subprocess.Popen([*command, f"--bind=127.0.0.1:{port}", f"--workers={workers}"], env=full_env,
                                   cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started.append(service := Launched(f"http://127.0.0.1:{port}", process))
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the service exited with {process.returncode}:\n{service.stop()}")
            try:
                if httpx.get(service.url + "/health", timeout=1, trust_env=False).status_code == 200:
                    return service
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service did not answer GET /health:\n{service.stop()}")
            time.sleep(0.05)

    try:
        yield start
    finally:
        for service in started:
            service.stop()
