"""Fixtures: the provider double, and the real service on a loopback port in front of it.

Two ways to run the service, both over real sockets:

- `serve(env)`: the Litestar app from `create_app(load_settings(environ=env), ...)` under
  uvicorn in a background thread of this process; fast, so each test picks its own
  configuration (see `service_env` for the defaults: fast retries, the double's key).
- `launch(env)`: the `css-inference-service` command line in a subprocess, exactly as the
  node starts it (`--bind=127.0.0.1:PORT --workers=2`).

The helpers below the fixtures build job bodies and read answers; test modules import them
from here.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pluggy
import pytest
import uvicorn
from hypothesis import settings as hypothesis_settings

from css_core.config import load_settings
from css_core.edge.app import create_app
from css_core.jobs.codec import encode_request
from css_core.jobs.messages import JobLocation
from css_core.providers.registry import build_registry, plugin_manager
from css_core.testing import ProviderDouble
from css_core.types import Message
from tests.clock_service import CLOCK_VARIABLE

KEY = "sk-test-double-key"
OFFCHAIN, ONCHAIN, STREAM = JobLocation.OFFCHAIN.value, JobLocation.ONCHAIN.value, JobLocation.STREAM.value
EXECUTABLE = str(Path(sys.executable).with_name("css-inference-service"))
ROOT = Path(__file__).resolve().parent.parent
SERVICE_VARIABLE_PREFIXES = ("OPENAI_", "PERPLEXITYAI_", "GOOSEAI_", "CSS_", "RETRY_PARAMS")

# a loaded CI machine must not turn a slow example into a failure: no per-example deadline
hypothesis_settings.register_profile("css", deadline=None)
hypothesis_settings.load_profile("css")


# -- the provider double -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def provider_server() -> Iterator[ProviderDouble]:
    with ProviderDouble(api_key=KEY) as provider:
        yield provider


@pytest.fixture
def double(provider_server: ProviderDouble) -> Iterator[ProviderDouble]:
    """The session's double, with no requests, streams, faults or settings left from other tests."""
    provider_server.reset()
    provider_server.api_key = KEY  # a test may change it; `reset()` does not restore it
    yield provider_server
    provider_server.reset()
    provider_server.api_key = KEY


def service_env(double: ProviderDouble, **overrides: str | None) -> dict[str, str]:
    """The service's environment against `double`: its key, short retry waits, no jitter.

    An override of `None` removes the variable (e.g. `OPENAI_API_KEY=None`).
    """
    env: dict[str, str | None] = {
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": f"{double.url}/v1",
        "CSS_REQUEST_DELAY": "0.01",
        "CSS_REQUEST_JITTER": "[0, 0]",
        "CSS_REQUEST_TIMEOUT": "5",
        **overrides,
    }
    return {name: value for name, value in env.items() if value is not None}


# -- the service in this process -----------------------------------------------------------------


# pytest workers (pytest-xdist) each take ports from a range of their own: a port found free
# is closed again before the service binds it, and the kernel may hand the same one to the
# other worker meanwhile; below the ephemeral range, so no client socket takes it either
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_PORTS = range(12000 + 4000 * (_WORKER % 4), 16000 + 4000 * (_WORKER % 4))


def free_port() -> int:
    """A loopback port no other service of this test run binds."""
    for port in random.sample(_PORTS, 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in {_PORTS}")


class InProcessServer:
    """uvicorn serving one app in a daemon thread, on a socket bound before it starts."""

    def __init__(self, app: Any) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        config = uvicorn.Config(app, log_config=None, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process service did not start")
            time.sleep(0.005)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()


PluginSetup = tuple[pluggy.PluginManager, dict[str, Any], list[str]]


@pytest.fixture(scope="module")
def shared() -> PluginSetup:
    """One plugin manager for the module, as a service's is; each test registers its plugins."""
    return plugin_manager(load_entry_points=False)


@pytest.fixture
def pm(shared: PluginSetup) -> Iterator[pluggy.PluginManager]:
    yield shared[0]
    core = "css_core.providers.default_call"
    leaked = [name for name, _ in shared[0].list_name_plugin() if not name.startswith(core)]
    assert leaked == [], "a plugin leaked"


@contextmanager
def registered(pm: pluggy.PluginManager, **named: object) -> Iterator[None]:
    """Register plugins under the given names for the block, then unregister them."""
    for name, plugin in named.items():
        pm.register(plugin, name=name)
    try:
        yield
    finally:
        for name in named:
            if pm.get_plugin(name) is not None:  # build_registry drops a plugin that fails
                pm.unregister(name=name)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "processes: starts the command line's processes, or installs packages")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that start the service by its command line (`launch`): the slowest, and
    the same on every Python; CI runs them on the oldest one only (noxfile.py)."""
    for item in items:
        if "launch" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.processes)


@pytest.fixture(scope="session")
def _servers() -> Iterator[dict[object, InProcessServer]]:
    """Every in-process service of the session, by configuration; all stopped at its end."""
    servers: dict[object, InProcessServer] = {}
    yield servers
    for server in servers.values():
        server.server.should_exit = True
    for server in servers.values():
        server.stop()


@pytest.fixture
def serve(_servers: dict[object, InProcessServer]) -> Callable[..., str]:
    """`serve(env, plugins=None) -> base_url`: the real app on a loopback port.

    `plugins` is what `plugin_manager()` returns; by default the installed plugins. A
    service holds no state between jobs, so one started with the same environment (and the
    installed plugins) by an earlier test is reused.
    """

    def start(env: Mapping[str, str], plugins: PluginSetup | None = None) -> str:
        key: object = tuple(sorted(env.items())) if plugins is None else object()
        if key not in _servers:
            settings = load_settings(environ=env, dotenv=None)
            registry = build_registry(settings, *(plugins or plugin_manager()))
            _servers[key] = InProcessServer(create_app(settings, registry))
            _servers[key].start()
        return _servers[key].url

    return start


@pytest.fixture
def service(double: ProviderDouble, serve: Callable[..., str]) -> Callable[..., str]:
    """`service(**overrides) -> base_url`: the app against the double (see `service_env`)."""

    def start(**overrides: str | None) -> str:
        return serve(service_env(double, **overrides))

    return start


@pytest.fixture
def url(service: Callable[..., str]) -> str:
    """The base URL of a service with the default test configuration."""
    return service()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=15, trust_env=False) as client:
        yield client


# -- the service as the node starts it ---------------------------------------------------------------


@dataclass
class Launched:
    url: str
    process: subprocess.Popen[str]

    def stop(self) -> str:
        """Stop the service (SIGTERM) and return everything it logged."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            output, _ = self.process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate()
        return output


def command_env(env: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any of the service's variables, plus `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(SERVICE_VARIABLE_PREFIXES)}
    return {**clean, **env}


def run_command(*args: str, env: Mapping[str, str], cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run `css-inference-service ARGS` to completion (for commands that exit)."""
    return subprocess.run([EXECUTABLE, *args], env=command_env(env), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False)


def mid_window() -> float:
    """A time half an hour into an hour, tomorrow: far from any budget window's end, and after
    every count a store holds now (a store expires counts on the real clock)."""
    return (time.time() // 86400 + 1) * 86400 + 1800


@contextmanager
def launcher(cwd: Path) -> Iterator[Callable[..., Launched]]:
    """`start(env, workers=2, clock=None) -> Launched`: the command line in `cwd`, once `GET /health`
    answers; with `clock`, its budgets' windows on that fixed time (`tests.clock_service`).
    Every one is stopped at the end."""
    started: list[Launched] = []

    def start(env: Mapping[str, str], workers: int = 2, clock: float | None = None) -> Launched:
        port = free_port()
        command, full_env = [EXECUTABLE], command_env(env)
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
                raise RuntimeError(f"css-inference-service exited with {process.returncode}:\n{service.stop()}")
            try:
                if httpx.get(service.url + "/health", timeout=1, trust_env=False).status_code == 200:
                    return service
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"css-inference-service did not answer GET /health:\n{service.stop()}")
            time.sleep(0.05)

    try:
        yield start
    finally:
        for service in started:
            service.stop()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Launched]]:
    """`launch(env, workers=2) -> Launched`: run the command line until `GET /health` answers.

    It runs in an empty directory, so no `.env` is read; it is stopped at teardown.
    """
    with launcher(tmp_path) as start:
        yield start


# -- jobs ------------------------------------------------------------------------------------------


def chat(content: str = "hi", model: str = "gpt-4", **fields: Any) -> dict[str, Any]:
    """An off-chain completion request object (`fields` adds or overrides top-level keys)."""
    return {"provider": "OPENAI", "endpoint": "completions", "model": model,
            "params": {"endpoint": "completions", "messages": [{"role": "user", "content": content}]}, **fields}


def onchain_hex(content: str = "hi", model: str = "gpt-4", provider_id: int = 0, endpoint_id: int = 0) -> str:
    """What a contract sends: the ABI-encoded request, as bare hex."""
    return encode_request(provider_id, endpoint_id, model, (Message("user", content),)).hex()


def job(data: Any, *, source: int = OFFCHAIN, destination: int = OFFCHAIN, **fields: Any) -> dict[str, Any]:
    return {"source": source, "destination": destination, "data": data, "requires_proof": False, **fields}


def post_job(http: httpx.Client, url: str, body: Any) -> httpx.Response:
    return http.post(f"{url}/service_output", json=body)


def assert_error(response: httpx.Response, status: int, *fragments: str) -> str:
    """The answer is the JSON error shape with `status`; its description holds `fragments`."""
    assert response.status_code == status, response.text
    assert KEY not in response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"code", "name", "description"}, body
    assert body["code"] == str(status)
    assert isinstance(body["name"], str) and body["name"]
    description: str = body["description"]
    for fragment in fragments:
        assert fragment in description, description
    return description
