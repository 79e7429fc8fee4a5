"""`GET /health` and `GET /ready`, and the image's HEALTHCHECK, over real sockets.

Neither probe calls a provider, needs the bearer token, or says anything of the keys or
the configuration; `/ready` says why it is not ready (no key set, draining).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from css_core.config import load_settings
from css_core.edge.app import create_app
from css_core.edge.health import NotReady, Readiness
from css_core.providers.registry import build_registry
from css_core.testing import ProviderDouble
from tests.conftest import KEY, InProcessServer, Launched, assert_error, free_port, service_env
from tests.helpers import requires_plugin

needs_openai = requires_plugin("css_openai")
DOCKERFILE = Path(__file__).resolve().parent.parent / "Dockerfile"
# -- health and readiness --------------------------------------------------------------------------------------


@needs_openai
def test_health_and_ready_never_reach_the_provider(
    service: Callable[..., str], http: httpx.Client, double: ProviderDouble
) -> None:
    url = service()
    for _ in range(20):
        health, ready = http.get(f"{url}/health"), http.get(f"{url}/ready")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
        assert KEY not in health.text + ready.text
    assert double.requests == []


def test_ready_is_503_when_no_provider_is_served(
    service: Callable[..., str], http: httpx.Client, double: ProviderDouble
) -> None:
    url = service(OPENAI_API_KEY=None)
    assert http.get(f"{url}/health").status_code == 200
    description = assert_error(http.get(f"{url}/ready"), 503, "no provider")  # none installed, or none served
    assert "OPENAI_BASE_URL" not in description and double.url not in description
    assert double.requests == []


@pytest.fixture
def in_process(double: ProviderDouble) -> Iterator[tuple[str, Any]]:
    """The service in this process, and its app (to reach its state)."""
    settings = load_settings(environ=service_env(double), dotenv=None)
    app = create_app(settings, build_registry(settings))
    server = InProcessServer(app)
    yield server.start(), app
    server.stop()


@needs_openai
def test_ready_is_503_while_draining(in_process: tuple[str, Any], http: httpx.Client) -> None:
    url, app = in_process
    app.state.service.readiness.draining = True
    assert_error(http.get(f"{url}/ready"), 503, "shutting down")
    assert http.get(f"{url}/health").status_code == 200


def test_a_stop_signal_marks_the_worker_draining_and_reaches_the_handler_before_it() -> None:
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda sig, _: seen.append(sig))  # uvicorn's, in a worker
    try:
        readiness = Readiness(build_registry(load_settings(environ={"OPENAI_API_KEY": "k"}, dotenv=None)))
        assert not readiness.draining
        readiness.watch_signals()
        signal.raise_signal(signal.SIGTERM)
        assert readiness.draining and seen == [signal.SIGTERM]
        with pytest.raises(NotReady, match="shutting down"):
            readiness.check()
        readiness.close()
        assert signal.getsignal(signal.SIGTERM) is not readiness._stop
        signal.raise_signal(signal.SIGTERM)
        assert seen == [signal.SIGTERM] * 2
    finally:
        signal.signal(signal.SIGTERM, previous)




# -- the image's HEALTHCHECK ---------------------------------------------------------------------------------------


def healthcheck_command() -> list[str]:
    """The Dockerfile's HEALTHCHECK command, as Docker reads its exec form (JSON: anything else
    would silently become a shell command)."""
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("HEALTHCHECK ")]
    command: list[str] = json.loads(line.split(" CMD ", 1)[1])
    assert command[:2] == ["python", "-c"]
    return command


def run_healthcheck(source: str, env: dict[str, str], as_nobody: bool = False) -> int:
    python = shutil.which("python3", path="/usr/bin:/usr/local/bin") if as_nobody else sys.executable
    assert python is not None
    extra: dict[str, Any] = {"user": 65534, "group": 65534} if as_nobody else {}
    return subprocess.run([python, "-c", source], env=env, capture_output=True, timeout=30, check=False,
                          **extra).returncode


@needs_openai
def test_the_healthcheck_passes_on_a_serving_container_and_fails_on_a_dead_one(
    double: ProviderDouble, launch: Callable[..., Launched], tmp_path: Path
) -> None:
    service = launch(service_env(double), workers=1)
    source = healthcheck_command()[2]
    port = service.url.rsplit(":", 1)[1]
    clean = {"PATH": os.environ.get("PATH", ""), "HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    # the port read from PID 1's command line (here: a file standing in for it)
    cmdline = tmp_path / "cmdline"
    for argv in ([f"--bind=127.0.0.1:{port}", "--workers=2"], ["--workers=2", "--bind", f"[::]:{port}"]):
        cmdline.write_bytes(b"\0".join(arg.encode() for arg in ["css-inference-service", *argv]) + b"\0")
        cmdline.chmod(0o644)
        tmp_path.chmod(0o755)
        assert run_healthcheck(source.replace("/proc/1/cmdline", str(cmdline)), clean) == 0, argv
    # or the URL the operator sets
    assert run_healthcheck(source, {**clean, "CSS_HEALTHCHECK_URL": f"{service.url}/health"}) == 0
    # as the image's non-root user would run it (any user: it needs nothing but urllib)
    if os.geteuid() == 0 and shutil.which("python3", path="/usr/bin:/usr/local/bin"):
        assert run_healthcheck(source, {**clean, "CSS_HEALTHCHECK_URL": f"{service.url}/health"}, as_nobody=True) == 0
    service.stop()
    assert run_healthcheck(source, {**clean, "CSS_HEALTHCHECK_URL": f"{service.url}/health"}) != 0
    assert run_healthcheck(source, {**clean, "CSS_HEALTHCHECK_URL": f"http://127.0.0.1:{free_port()}/health"}) != 0
    assert re.search(r"HEALTHCHECK --interval=\d+s --timeout=\d+s", DOCKERFILE.read_text(encoding="utf-8"))
