"""pytest fixtures for plugin tests: a provider double and the real service in front of it.

Import them into a `conftest.py` (``from css_core.testing import css_service,
provider_double``) or name this module in `pytest_plugins`
(``pytest_plugins = ["css_core.testing.fixtures"]``)::

    def test_completion(provider_double, css_service):
        url = css_service({"ACMEAI_API_KEY": provider_double.api_key,
                           "ACMEAI_BASE_URL": f"{provider_double.url}/v1"}, plugins=[css_acme])
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import pytest

from css_core.testing.double import ProviderDouble
from css_core.testing.service import ServiceServer

__all__ = ("css_service", "provider_double")


@pytest.fixture
def provider_double() -> Iterator[ProviderDouble]:
    """A started OpenAI-compatible `ProviderDouble` (key `"test-key"`) for one test."""
    with ProviderDouble() as double:
        yield double


@pytest.fixture
def css_service() -> Iterator[Callable[..., str]]:
    """`css_service(env, plugins=None) -> base_url`: the real service on a loopback port.

    `env` is its whole configuration (the process environment is not read), except that a
    failed attempt is retried at once (`CSS_REQUEST_DELAY=0`, `CSS_REQUEST_JITTER=[0, 0]`)
    unless `env` sets a retry policy of its own; `plugins` the plugin objects or modules to
    serve instead of the installed ones. Every service the test started is stopped at its end.
    """
    started: list[ServiceServer] = []

    def start(env: Mapping[str, str], plugins: Sequence[object] | None = None) -> str:
        server = ServiceServer(env, plugins)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.server.should_exit = True  # all of them at once, then wait for each
    for server in started:
        server.stop()
