"""The real service, in this process, on a free loopback port: what plugin tests send jobs to.

`ServiceServer` builds the app exactly as a worker does (`load_settings`, `build_registry`,
`create_app`) from an environment given as a dict, so a test chooses its configuration
without touching `os.environ`, and serves it with uvicorn in a daemon thread over a real
socket, so provider calls, streams and disconnects behave as in production. It depends on
nothing of the core but those functions and `plugin_manager`.

One default differs from the service's: attempts are retried at once, with no delay and no
jitter (`CSS_REQUEST_DELAY=0`, `CSS_REQUEST_JITTER=[0, 0]`), so that a test of a retry does
not wait the service's seconds. An environment that sets either variable, or a retry policy
in an older form (`RETRY_PARAMS`, `retry_params` in `CSS_INF_WORKFLOW_KW_ARGS`), keeps its own.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import uvicorn

__all__ = ("ServiceServer", "build_app", "serve_service")

#: What the kit sets unless the test's environment does: no wait between attempts.
_TEST_DEFAULTS: Mapping[str, str] = {"CSS_REQUEST_DELAY": "0", "CSS_REQUEST_JITTER": "[0, 0]"}


def _with_test_defaults(env: Mapping[str, str]) -> dict[str, str]:
    # the kit's variables are the most specific form, so they would win over a policy the test
    # sets in an older one: that policy is left whole
    if "RETRY_PARAMS" in env or "retry_params" in env.get("CSS_INF_WORKFLOW_KW_ARGS", ""):
        return dict(env)
    return {**_TEST_DEFAULTS, **env}


def build_app(env: Mapping[str, str], plugins: Sequence[object] | None = None) -> Any:
    """The service's ASGI app configured by `env` (no `.env` file is read), retrying at once
    unless `env` sets a retry delay or jitter of its own (see above).

    `plugins`: the plugin objects or modules to serve, and only those; `None`: the installed
    plugins (their entry points), as the service itself loads them.
    """
    from css_core.config import load_settings
    from css_core.edge.app import create_app
    from css_core.providers.registry import build_registry, plugin_manager

    settings = load_settings(environ=_with_test_defaults(env), dotenv=None)
    pm, infos, errors = plugin_manager(load_entry_points=plugins is None)
    for plugin in plugins or ():
        pm.register(plugin)
    return create_app(settings, build_registry(settings, pm, infos, errors))


class ServiceServer:
    """uvicorn serving the app of `env` in a daemon thread, on a loopback socket bound first.

    Use as a context manager (or `start()` / `stop()`); `url` is its base URL.
    """

    def __init__(self, env: Mapping[str, str], plugins: Sequence[object] | None = None, *,
                 host: str = "127.0.0.1") -> None:
        self.app = build_app(env, plugins)
        self.socket = socket.socket()
        self.socket.bind((host, 0))
        self.url = f"http://{host}:{self.socket.getsockname()[1]}"
        config = uvicorn.Config(self.app, log_config=None, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="css-service", daemon=True)

    def start(self, timeout: float = 10) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the in-process service did not start (see the log)")
            time.sleep(0.005)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        self.socket.close()

    def __enter__(self) -> ServiceServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextmanager
def serve_service(env: Mapping[str, str], plugins: Sequence[object] | None = None) -> Iterator[str]:
    """`with serve_service(env) as url:` the real service, stopped when the block ends."""
    with ServiceServer(env, plugins) as server:
        yield server.url
