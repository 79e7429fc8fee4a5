"""The core with no provider plugin: it starts, and answers every job with a 400 naming
the provider that is missing.

`nox -s bare` runs this with only the core installed. Elsewhere the command-line tests skip
(plugins are installed), and the same answers are checked in-process with a plugin manager
that loads no entry point.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from css_core.providers.registry import plugin_manager
from css_core.testing import ProviderDouble
from tests.conftest import (
    KEY,
    OFFCHAIN,
    ONCHAIN,
    STREAM,
    Launched,
    assert_error,
    chat,
    job,
    onchain_hex,
    post_job,
    run_command,
    service_env,
)
from tests.helpers import requires_no_plugins

SHIPPED = [("OPENAI", 0, "gpt-4"), ("GOOSEAI", 1, "gpt-j-6b"), ("PERPLEXITYAI", 2, "sonar")]
NO_PLUGIN = "no provider plugin is installed"


def every_job() -> list[tuple[str, dict[str, Any]]]:
    """(the provider it names, a job) for each provider, source and destination, and more."""
    jobs = [
        (name, job(data, source=source, destination=destination))
        for name, onchain_id, model in SHIPPED
        for source, data in ((OFFCHAIN, chat(model=model, provider=name)),
                             (ONCHAIN, onchain_hex(model=model, provider_id=onchain_id)))
        for destination in (OFFCHAIN, ONCHAIN, STREAM)
    ]
    defaults = {"model": "gpt-4", "params": {"messages": [{"role": "user", "content": "hi"}]}}
    embeddings = {"provider": "OPENAI", "model": "text-embedding-3-small", "params": {"input": "x"}}
    return [*jobs, ("OPENAI", job(defaults)), ("OPENAI", job(embeddings | {"endpoint": "embeddings"}))]


@pytest.fixture(params=["in-process", pytest.param("command-line", marks=requires_no_plugins())])
def url(
    request: pytest.FixtureRequest, double: ProviderDouble, serve: Callable[..., str],
    launch: Callable[..., Launched],
) -> str:
    """A service with every shipped provider's key set, and no plugin to serve them."""
    keys = {f"{name}_API_KEY": KEY for name, _, _ in SHIPPED}
    bases = {f"{name}_BASE_URL": double.url for name, _, _ in SHIPPED}
    env = service_env(double, **keys, **bases)
    if request.param == "in-process":
        return serve(env, plugins=plugin_manager(load_entry_points=False))
    return launch(env, workers=1).url


def test_index_answers(url: str, http: httpx.Client) -> None:
    response = http.get(url + "/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["providers"] == {}


def test_every_job_is_refused_naming_the_missing_provider(
    url: str, double: ProviderDouble, http: httpx.Client
) -> None:
    for name, body in every_job():
        assert_error(post_job(http, url, body), 400, name, NO_PLUGIN)
    assert double.requests == []


def test_no_model_is_advertised(url: str, http: httpx.Client) -> None:
    document = http.get(url + "/service-resources").json()
    assert document["compute_capability"][0]["models"] == []
    response = http.get(url + "/service-resources", params={"model_id": "OPENAI/gpt-4"})
    assert response.json() == {"supported": False}


@requires_no_plugins()
def test_the_command_line_says_no_plugin_is_installed(
    double: ProviderDouble, launch: Callable[..., Launched], tmp_path: Path
) -> None:
    listing = run_command("plugins", env={}, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split() == ["DISTRIBUTION", "VERSION", "PROVIDER", "ON-CHAIN", "ID", "ENDPOINTS", "KEY"]
    log = launch(service_env(double), workers=1).stop()
    assert f"{NO_PLUGIN}: every job will be refused" in log
