"""What outside plugin authors had to guess or work around, over real sockets: a plugin's own
settings reachable from every hook (`ProviderSpec.settings`), a provider with no default base
URL, the common error shapes read by `css_core.error_message`, and which exceptions of a
plugin mean an unreadable answer.

The plugins are inline classes on the module's plugin manager, served by the real app in
front of the provider double (`tests/acme.py`); a provider without a base URL is also run by
the command line, from a distribution only its processes see.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import msgspec
import pluggy
import pytest

import css_core
from css_core import ConfigError, ProviderHTTPError, ProviderSpec, Settings
from css_core.config import load_settings
from css_core.providers import openai_format
from css_core.providers.hookspecs import hookimpl
from css_core.providers.registry import build_registry
from css_core.testing import Fault, ProviderDouble, Route
from css_core.types import CSSRequest, ProviderCall, Result
from tests.acme import Acme, acme_job, serve_acme
from tests.conftest import (
    KEY,
    Launched,
    assert_error,
    chat,
    free_port,
    job,
    post_job,
    registered,
    run_command,
    service_env,
)

__all__ = ("serve_acme",)  # the fixture, imported for pytest to find

DEFAULT_VERSION = "2024-10-21"


# -- the plugin's own settings, read once, reachable from every hook ---------------------------------------


class Versioned(Acme):
    """Sends the API version its operator chose (`ACME_API_VERSION`) as a query parameter, as
    Azure OpenAI's `api-version` is sent."""

    @hookimpl
    def css_provider(self, config: Settings) -> ProviderSpec:
        version = config.get("ACME_API_VERSION") or DEFAULT_VERSION
        return msgspec.structs.replace(self.spec, settings={"api_version": version})

    @hookimpl
    def css_encode_params(self, spec: ProviderSpec, request: CSSRequest) -> ProviderCall | None:
        call = openai_format.chat_call(request)
        return ProviderCall(call.path, call.body, query={"api-version": spec.settings["api_version"]})


def test_settings_read_at_start_up_reach_the_per_job_hooks(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client
) -> None:
    with registered(pm, acme=Versioned()):
        configured = serve_acme(ACME_API_VERSION="2025-05-01")
        by_default = serve_acme()  # the same plugin object: each service has its own spec
        for url in (configured, by_default, configured):
            response = post_job(http, url, acme_job())
            assert response.json() == {"output": double.expected_reply("gpt-4", "hi")}, response.text
    assert [r.query for r in double.requests] == [{"api-version": v} for v in ("2025-05-01", DEFAULT_VERSION,
                                                                                 "2025-05-01")]
    assert {r.url_path for r in double.requests} == {"/acme/chat/completions"}


def test_settings_default_to_empty() -> None:
    assert ProviderSpec(name="X", onchain_id=1, api_key_env="X_API_KEY").settings == {}


# -- a provider with no default base URL ------------------------------------------------------------------


class NoDefaultBase(Acme):
    """A provider that has no public endpoint: each operator has their own (as Azure's)."""

    @hookimpl
    def css_provider(self) -> ProviderSpec:
        return ProviderSpec(name="ACME", onchain_id=70, api_key_env="ACME_API_KEY")


def settings(**environ: str) -> Settings:
    return load_settings(environ=environ, dotenv=None)


def test_no_base_url_with_the_key_set_stops_start_up_naming_the_variable(pm: pluggy.PluginManager) -> None:
    with registered(pm, acme=NoDefaultBase()), pytest.raises(ConfigError) as raised:
        build_registry(settings(ACME_API_KEY=KEY), pm, {}, [])
    message = str(raised.value)
    assert message.startswith("ACME_BASE_URL is not set"), message
    assert "ACME_API_KEY" in message and KEY not in message  # how not to serve it, never the key


def test_no_base_url_and_no_key_is_not_served_without_an_error(
    double: ProviderDouble, pm: pluggy.PluginManager, serve: Callable[..., str], http: httpx.Client
) -> None:
    with registered(pm, acme=NoDefaultBase()):
        registry = build_registry(settings(), pm, {}, [])
        assert not registry.by_name("ACME").served
        url = serve(service_env(double), plugins=(pm, {}, []))  # neither ACME_API_KEY nor ACME_BASE_URL
        assert_error(post_job(http, url, acme_job()), 400, "ACME", "ACME_API_KEY is not set")
        assert http.get(f"{url}/service-resources", params={"model_id": "ACME/gpt-4"}).json() == {"supported": False}
    assert double.requests == []


def test_no_default_base_url_serves_at_the_configured_one(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client
) -> None:
    with registered(pm, acme=NoDefaultBase()):
        url = serve_acme()  # ACME_BASE_URL at the double
        response = post_job(http, url, acme_job())
    assert response.json() == {"output": double.expected_reply("gpt-4", "hi")}, response.text
    assert [r.url_path for r in double.requests] == ["/acme/chat/completions"]


# the command line, as the node starts it, with a plugin distribution only its processes see: a module and
# the metadata an installer writes beside it (entry point included) in a directory on PYTHONPATH
_REGIONAL_MODULE = """\
from css_core import ConfigError, ProviderSpec, hookimpl, openai_format


@hookimpl
def css_provider(config):
    version = config.get("REGIONAL_VERSION") or "2025-01-01"
    if version == "latest":
        raise ConfigError("REGIONAL_VERSION must be a date such as 2025-01-01, not 'latest'")
    return ProviderSpec(name="REGIONAL", onchain_id=44, api_key_env="REGIONAL_API_KEY")


@hookimpl
def css_encode_params(request):
    return openai_format.chat_call(request)


@hookimpl
def css_postprocess(body):
    return openai_format.chat_result(body)
"""


@pytest.fixture(scope="module")
def regional(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment that shows the `css-regional` distribution (provider REGIONAL, with no
    default base URL) to the command line."""
    site = tmp_path_factory.mktemp("regional-site")
    (site / "css_regional.py").write_text(_REGIONAL_MODULE, encoding="utf-8")
    metadata = site / "css_regional-0.1.0.dist-info"
    metadata.mkdir()
    (metadata / "METADATA").write_text("Metadata-Version: 2.1\nName: css-regional\nVersion: 0.1.0\n", encoding="utf-8")
    (metadata / "entry_points.txt").write_text("[css_inference_service]\nregional = css_regional\n", encoding="utf-8")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


@pytest.mark.processes
def test_command_line_without_the_base_url_exits_naming_the_variable(
    regional: dict[str, str], tmp_path: Path
) -> None:
    result = run_command(f"--bind=127.0.0.1:{free_port()}", env=regional | {"REGIONAL_API_KEY": KEY}, cwd=tmp_path,
                         timeout=15)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("css-inference-service: configuration error: REGIONAL_BASE_URL is not set: "
                                    "REGIONAL (plugin css-regional 0.1.0) has no default base URL"), result.stderr
    assert KEY not in result.stderr


@pytest.mark.processes
def test_command_line_without_the_base_url_or_the_key_lists_it_not_served(
    regional: dict[str, str], tmp_path: Path
) -> None:
    result = run_command("plugins", env=regional, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (row,) = [line.split() for line in result.stdout.splitlines() if line.startswith("css-regional ")]
    assert row[2:] == ["REGIONAL", "44", "completions", "REGIONAL_API_KEY", "NOT", "SET"]


def test_command_line_serves_it_at_the_configured_base_url(
    regional: dict[str, str], double: ProviderDouble, launch: Callable[..., Launched], http: httpx.Client
) -> None:
    service = launch(regional | {"REGIONAL_API_KEY": KEY, "REGIONAL_BASE_URL": f"{double.url}/regional"}, workers=1)
    response = post_job(http, service.url, job(chat(provider="REGIONAL")))
    assert response.json() == {"output": double.expected_reply("gpt-4", "hi")}, response.text
    assert [r.path for r in double.requests] == ["/regional/chat/completions"]


@pytest.mark.processes
def test_a_plugins_config_error_stops_start_up_with_its_message(regional: dict[str, str], tmp_path: Path) -> None:
    env = regional | {"REGIONAL_API_KEY": KEY, "REGIONAL_BASE_URL": "https://regional.example",
                      "REGIONAL_VERSION": "latest"}
    result = run_command(f"--bind=127.0.0.1:{free_port()}", env=env, cwd=tmp_path, timeout=15)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == ("css-inference-service: configuration error: REGIONAL_VERSION must be a date "
                                     "such as 2025-01-01, not 'latest'")


def test_no_default_base_url_with_an_invalid_one_names_the_variable(pm: pluggy.PluginManager) -> None:
    with registered(pm, acme=NoDefaultBase()), pytest.raises(ConfigError, match="ACME_BASE_URL must be an http"):
        build_registry(settings(ACME_API_KEY=KEY, ACME_BASE_URL="acme.example"), pm, {}, [])


# -- css_core.error_message in a plugin's css_read_error ----------------------------------------------


class ReadsCohereErrors(Acme):
    """Cohere's way: a bad key is a 400 whose `{"message": ...}` says so; the text is the helper's."""

    @hookimpl
    def css_read_error(self, status: int, body: bytes, retry_after: float | None) -> ProviderHTTPError | None:
        refused = status == 400 and b"invalid api token" in body.lower()
        return ProviderHTTPError(status, css_core.error_message(body), retry_after, key_refused=refused or None)


@pytest.mark.parametrize(
    ("body", "message"),
    [(b'{"message": "invalid api token"}', "invalid api token"),
     (b'{"error": {"message": "Invalid API token", "code": "401"}}', "Invalid API token"),
     (b'{"error": "invalid api token"}', "invalid api token"),
     (b"Invalid API token\n", "Invalid API token")],
    ids=["message", "error.message", "error-string", "plain-text"],
)
def test_error_message_reads_the_common_shapes_for_a_plugin(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client,
    body: bytes, message: str,
) -> None:
    with registered(pm, acme=ReadsCohereErrors()):
        url = serve_acme()
        double.script(Fault.status(400, body=body))
        description = assert_error(post_job(http, url, acme_job()), 502, "ACME refused this service's API key")
    assert description.endswith(f"(HTTP 400: {message})"), description  # its words, not its raw JSON
    assert len(double.requests) == 1


def test_error_message_of_an_empty_or_undecodable_body() -> None:
    assert css_core.error_message(b"") == "(empty body)"
    assert css_core.error_message(b'{"error": {"code": 7}}') == '{"error": {"code": 7}}'  # no message: the text
    assert css_core.error_message(b"bad \xff gateway") == "bad \ufffd gateway"


# -- what a plugin may let escape when it cannot read an answer -------------------------------------------


class ReadsWithJson(Acme):
    """Reads the answer with the standard library: a body that is not JSON raises json.JSONDecodeError."""

    @hookimpl
    def css_postprocess(self, body: bytes) -> Result | None:
        text: str = json.loads(body)["choices"][0]["message"]["content"]
        return text


def test_json_decode_error_of_a_plugin_is_an_unreadable_answer_retried(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    double.add_route(Route("POST", r"/acme/chat/completions", b"<html>busy</html>"))  # not JSON
    with registered(pm, acme=ReadsWithJson()), caplog.at_level(logging.WARNING, logger="css_core.jobs.pipeline"):
        url = serve_acme(CSS_REQUEST_TRIES="2")
        response = post_job(http, url, acme_job())
    assert_error(response, 502, "ACME failed after 2 attempt(s)", "unreadable answer")
    assert len(double.requests) == 2
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []  # not reported as a plugin bug
