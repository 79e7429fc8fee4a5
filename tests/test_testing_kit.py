"""The testing kit's service side: `serve_service` / `ServiceServer`, and the pytest fixtures
as a plugin author uses them (imported into a conftest of their own)."""

from __future__ import annotations

import importlib
import logging
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from css_core.testing import Fault, ProviderDouble, ServiceServer, fixtures, serve_service
from tests.conftest import assert_error, chat, job, post_job, service_env
from tests.helpers import requires_plugin

pytestmark = requires_plugin("css_openai")

# the kit's fixtures, for this module's tests (a plugin's conftest imports them by name instead)
css_service = fixtures.css_service
provider_double = fixtures.provider_double


def _refused(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) != 0


def test_serve_service_runs_the_installed_plugins(double: ProviderDouble, http: httpx.Client) -> None:
    with serve_service(service_env(double)) as url:
        response = post_job(http, url, job(chat()))
        assert response.json() == {"output": double.expected_reply("gpt-4", "hi")}
    assert _refused(url)  # stopped with the block


def test_only_the_plugins_given(double: ProviderDouble, http: httpx.Client) -> None:
    css_openai = importlib.import_module("css_openai")
    with ServiceServer(service_env(double), plugins=[css_openai]) as server:
        response = post_job(http, server.url, job(chat(), destination=2))
        assert response.text == double.expected_reply("gpt-4", "hi")
    with serve_service(service_env(double), plugins=[]) as url:
        assert_error(post_job(http, url, job(chat())), 400, "OPENAI")
    assert len(double.requests) == 1


def test_the_fixtures(provider_double: ProviderDouble, css_service: Callable[..., str], http: httpx.Client) -> None:
    env = {"OPENAI_API_KEY": str(provider_double.api_key), "OPENAI_BASE_URL": f"{provider_double.url}/v1"}
    url = css_service(env)
    assert post_job(http, url, job(chat())).json() == {"output": provider_double.expected_reply("gpt-4", "hi")}


@pytest.mark.parametrize(
    ("retry_policy", "wait"),
    [({}, "0.0"), ({"CSS_REQUEST_DELAY": "0.2"}, "0.2"), ({"CSS_REQUEST_JITTER": "[0.2, 0.2]"}, "0.2"),
     ({"RETRY_PARAMS": '{"delay": 0.2, "jitter": [0, 0]}'}, "0.2"),
     ({"CSS_INF_WORKFLOW_KW_ARGS": '{"retry_params": {"delay": 0.2, "jitter": [0, 0]}}'}, "0.2")],
    ids=["kit-default", "delay", "jitter", "RETRY_PARAMS", "retry_params"],
)
def test_the_kit_retries_at_once_unless_the_test_sets_a_policy(
    double: ProviderDouble, http: httpx.Client, caplog: pytest.LogCaptureFixture, retry_policy: dict[str, str],
    wait: str,
) -> None:
    """The service waits 3 s and more before a retry; a plugin's test of a retry should not."""
    env = {"OPENAI_API_KEY": str(double.api_key), "OPENAI_BASE_URL": f"{double.url}/v1", **retry_policy}
    with caplog.at_level(logging.WARNING, logger="css_core.jobs.pipeline"), serve_service(env) as url:
        double.script(Fault.status(503))
        assert post_job(http, url, job(chat())).status_code == 200
    assert len(double.requests) == 2
    (retry,) = [r.getMessage() for r in caplog.records if "attempt 1 failed (HTTP 503" in r.getMessage()]
    assert retry.endswith(f"; retrying in {wait} s"), retry


def test_a_plugin_authors_conftest_gets_the_fixtures(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text("from css_core.testing import css_service, provider_double  # noqa: F401\n")
    (tmp_path / "test_mine.py").write_text(textwrap.dedent("""\
        import css_openai
        import httpx

        from css_core.testing import Fault


        def test_completion_after_a_rate_limit(provider_double, css_service):
            url = css_service({"OPENAI_API_KEY": provider_double.api_key,
                               "OPENAI_BASE_URL": f"{provider_double.url}/v1"}, plugins=[css_openai])
            provider_double.script(Fault.status(429, retry_after="0"))
            job = {"source": 1, "destination": 1, "requires_proof": False,
                   "data": {"provider": "OPENAI", "model": "gpt-4",
                            "params": {"messages": [{"role": "user", "content": "hi"}]}}}
            response = httpx.post(f"{url}/service_output", json=job, trust_env=False, timeout=15)
            assert response.json() == {"output": provider_double.expected_reply("gpt-4", "hi")}
            assert len(provider_double.requests) == 2
        """))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False, env=dict(os.environ),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_pytest_is_needed_only_for_the_fixtures() -> None:
    """The double runs where pytest is absent (scripts/demo's environment); the fixtures need it."""
    without_pytest = "import sys; sys.modules['pytest'] = None; import css_core.testing as kit; "
    double = subprocess.run([sys.executable, "-c", without_pytest + "kit.ProviderDouble().start().stop()"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert double.returncode == 0, double.stderr
    fixture = subprocess.run([sys.executable, "-c", without_pytest + "kit.css_service"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert fixture.returncode != 0 and "pytest" in fixture.stderr.splitlines()[-1], fixture.stderr
