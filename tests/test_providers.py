"""PerplexityAI and GooseAI through the real service, over real sockets, and model catalogues.

Each row of the container contract runs once per provider plugin (test ids carry
the provider's name, so `-k GOOSEAI` selects one plugin's tests); a row skips when its
plugin is not installed. The service runs under uvicorn on a loopback port (see
`conftest.serve`) in front of the provider double. The last section tests the operator's
catalogue variables, `CSS_MODELS` and `CSS_EXTRA_MODELS`, with a plugin registered in code.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from css_core import ProviderSpec, hookimpl
from css_core.config import load_settings
from css_core.errors import ConfigError
from css_core.jobs.codec import encode_request
from css_core.providers.registry import build_registry, plugin_manager
from css_core.testing import Fault, ProviderDouble
from css_core.types import Message
from tests.conftest import (
    KEY,
    OFFCHAIN,
    ONCHAIN,
    STREAM,
    PluginSetup,
    assert_error,
    chat,
    job,
    onchain_hex,
    post_job,
    run_command,
)
from tests.helpers import requires_plugin
from tests.test_contract import completion_of, sent_body, supported


@dataclass(frozen=True)
class Case:
    """One provider plugin and how the double sees its completions."""

    name: str
    onchain_id: int
    module: str  # the plugin's module, as its entry point names it
    base: str  # its base URL below the double's
    model: str  # one model of its catalogue
    path: Callable[[str], str]  # the request path the double records, for a model
    body: Callable[[str, str], dict[str, Any]]  # the request body, for a model and the one message

    def env(self, double: ProviderDouble) -> dict[str, str]:
        return {f"{self.name}_API_KEY": KEY, f"{self.name}_BASE_URL": double.url + self.base}

    def request(self, content: str = "hi", model: str | None = None, **fields: Any) -> dict[str, Any]:
        """An off-chain completion request for this provider."""
        return chat(content, model=model or self.model, provider=self.name, **fields)

    def catalogue(self) -> tuple[str, ...]:
        models: tuple[str, ...] = importlib.import_module(self.module).SPEC.models
        return models


PERPLEXITY = Case(
    "PERPLEXITYAI", 2, "css_perplexity", "", "mixtral-8x7b-instruct",
    path=lambda model: "/chat/completions",
    body=lambda model, content: {"model": model, "messages": [{"role": "user", "content": content}]},
)
GOOSE = Case(
    "GOOSEAI", 1, "css_goose", "/v1", "fairseqNone-3b",
    path=lambda model: f"/v1/engines/{model}/completions",
    body=lambda model, content: {"prompt": content},
)


def each(*cases: Case) -> pytest.MarkDecorator:
    """Run a test once per provider, skipping a provider whose plugin is not installed."""
    params = [pytest.param(case, id=case.name, marks=requires_plugin(case.module)) for case in cases]
    return pytest.mark.parametrize("case", params)


@pytest.fixture
def url(case: Case, double: ProviderDouble, service: Callable[..., str]) -> str:
    """The service against the double, with `case`'s key and base URL set."""
    return service(**case.env(double))


def catalogue_of(http: httpx.Client, url: str, owner: str) -> list[str]:
    """The models `/service-resources` lists for `owner`, in order."""
    response = http.get(url + "/service-resources")
    assert response.status_code == 200, response.text
    models = response.json()["compute_capability"][0]["models"]
    return [model["name"] for model in models if model["owner"] == owner]


# -- the contract's rows, once per provider -------------------------------------------------------------


@each(PERPLEXITY, GOOSE)
@pytest.mark.parametrize("source", [OFFCHAIN, ONCHAIN], ids=["offchain", "onchain"])
@pytest.mark.parametrize("destination", [OFFCHAIN, ONCHAIN, STREAM], ids=["to-offchain", "to-onchain", "to-stream"])
def test_every_source_to_every_destination(
    case: Case, double: ProviderDouble, url: str, http: httpx.Client, source: int, destination: int
) -> None:
    if source == ONCHAIN:  # what a contract sends: the provider's on-chain id, ABI-encoded
        raw_input = onchain_hex("Héllo ✓", model=case.model, provider_id=case.onchain_id)
        data: Any = "0x" + raw_input
    else:
        raw_input, data = "", case.request("Héllo ✓")
    response = post_job(http, url, job(data, source=source, destination=destination))
    assert completion_of(response, destination, raw_input) == double.expected_reply(case.model, "Héllo ✓")
    stream = {"stream": True} if destination == STREAM else {}
    assert sent_body(double, case.path(case.model)) == case.body(case.model, "Héllo ✓") | stream


@each(PERPLEXITY, GOOSE)
def test_stream_reassembles_to_the_reply(case: Case, double: ProviderDouble, url: str, http: httpx.Client) -> None:
    double.reply = "Streamed in many pieces — ünïcödé 🎉, one event each."
    double.stream_chunks = 9
    response = post_job(http, url, job(case.request(), destination=STREAM))
    assert completion_of(response, STREAM) == double.reply
    assert double.wait_for_streams(1) == ["completed"]


@each(PERPLEXITY, GOOSE)
def test_extra_args_are_merged_into_the_body(case: Case, double: ProviderDouble, url: str, http: httpx.Client) -> None:
    extra = {"max_tokens": 10, "temperature": 0.5, "stop": ["\n"]}
    response = post_job(http, url, job(case.request(extra_args=extra)))
    assert response.status_code == 200, response.text
    assert sent_body(double, case.path(case.model)) == case.body(case.model, "hi") | extra


@each(PERPLEXITY, GOOSE)
def test_model_outside_the_catalogue_is_forwarded(
    case: Case, double: ProviderDouble, url: str, http: httpx.Client
) -> None:
    assert "brand-new-model" not in case.catalogue()
    response = post_job(http, url, job(case.request(model="brand-new-model")))
    assert completion_of(response, OFFCHAIN) == double.expected_reply("brand-new-model", "hi")
    assert sent_body(double, case.path("brand-new-model")) == case.body("brand-new-model", "hi")


@each(PERPLEXITY, GOOSE)
def test_embeddings_are_refused(case: Case, double: ProviderDouble, url: str, http: httpx.Client) -> None:
    data = {"provider": case.name, "endpoint": "embeddings", "model": case.model, "params": {"input": "text"}}
    assert_error(post_job(http, url, job(data)), 400, case.name, "no 'embeddings' endpoint")
    assert double.requests == []


@each(PERPLEXITY, GOOSE)
@pytest.mark.parametrize("destination", [OFFCHAIN, STREAM], ids=["to-offchain", "to-stream"])
def test_provider_failure_names_the_provider(
    case: Case, double: ProviderDouble, service: Callable[..., str], http: httpx.Client, destination: int
) -> None:
    url = service(**case.env(double), CSS_REQUEST_TRIES="2")
    double.script(Fault.status(503), Fault.status(503))
    response = post_job(http, url, job(case.request(), destination=destination))
    assert_error(response, 502, case.name, "2 attempt(s)", "HTTP 503")
    assert len(double.requests) == 2


@each(PERPLEXITY, GOOSE)
def test_service_resources_list_the_catalogue(case: Case, url: str, http: httpx.Client) -> None:
    assert case.model in case.catalogue()
    assert catalogue_of(http, url, case.name) == list(case.catalogue())


@each(PERPLEXITY, GOOSE)
def test_model_is_supported_only_with_the_key_set(
    case: Case, double: ProviderDouble, service: Callable[..., str], http: httpx.Client, url: str
) -> None:
    assert supported(http, url, f"{case.name}/{case.model}") is True
    assert supported(http, url, f"{case.name}/brand-new-model") is False
    keyless = service(**case.env(double) | {f"{case.name}_API_KEY": None})
    assert supported(http, keyless, f"{case.name}/{case.model}") is False
    assert catalogue_of(http, keyless, case.name) == []
    response = post_job(http, keyless, job(case.request()))
    assert_error(response, 400, case.name, f"{case.name}_API_KEY")


# -- GooseAI completes one prompt, in the engine the model names -------------------------------------


@each(GOOSE)
@pytest.mark.parametrize("source", [OFFCHAIN, ONCHAIN], ids=["offchain", "onchain"])
def test_gooseai_takes_exactly_one_message(
    case: Case, double: ProviderDouble, url: str, http: httpx.Client, source: int
) -> None:
    two = (Message("system", "be brief"), Message("user", "hi"))
    if source == OFFCHAIN:
        data: Any = case.request() | {"params": {"messages": [{"role": m.role, "content": m.content} for m in two]}}
    else:
        data = encode_request(case.onchain_id, 0, case.model, two).hex()
    assert_error(post_job(http, url, job(data, source=source)), 400, "GOOSEAI", "exactly one message", "got 2")
    assert double.requests == []


@each(GOOSE)
@pytest.mark.parametrize("model", ["../x", "..", ".", "a?b", "a#b", "a/b", "../../chat/completions", "%2e%2e/x", "a b"])
def test_gooseai_model_cannot_leave_the_engines_path(
    case: Case, double: ProviderDouble, url: str, http: httpx.Client, model: str
) -> None:
    response = post_job(http, url, job(case.request(model=model)))
    for request in double.requests:
        assert request.path.startswith("/v1/engines/"), request.path
        assert request.path.endswith("/completions"), request.path
        assert request.path.count("/") == 4, request.path  # the model stayed one segment
        assert "?" not in request.target and "#" not in request.target  # no query was made up
    if double.requests:
        assert response.status_code == 200, response.text
        assert len(double.requests) == 1
    else:
        assert_error(response, 400, "URL", "model")


# -- the operator's catalogues: CSS_MODELS replaces, CSS_EXTRA_MODELS extends -----------------------------


class InlinePlugin:
    """A provider plugin registered in code, with a catalogue of two models."""

    @hookimpl
    def css_provider(self) -> ProviderSpec:
        return ProviderSpec(name="INLINE", onchain_id=77, api_key_env="INLINE_API_KEY",
                            default_base_url="http://127.0.0.1:9", models=("a", "b"))


def inline_plugins() -> PluginSetup:
    """A plugin manager with the inline plugin only, whatever is installed."""
    pm, infos, errors = plugin_manager(load_entry_points=False)
    pm.register(InlinePlugin(), name="inline")
    return pm, infos, errors


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({}, ["a", "b"]),
        ({"CSS_MODELS": '{"INLINE": ["x", "y"]}'}, ["x", "y"]),
        ({"CSS_MODELS": '{"INLINE": []}'}, []),
        ({"CSS_EXTRA_MODELS": '{"INLINE": ["c", "a"]}'}, ["a", "b", "c"]),
        ({"CSS_MODELS": '{"inline": ["x"]}', "CSS_EXTRA_MODELS": '{"Inline": ["y", "x"]}'}, ["x", "y"]),
        ({"CSS_MODELS": '{"OTHER": ["x"]}', "CSS_EXTRA_MODELS": '{"OTHER": ["y"]}'}, ["a", "b"]),
    ],
    ids=["plugin-catalogue", "replaced", "replaced-by-none", "extended", "replaced-and-extended-any-case",
         "other-provider"],
)
def test_catalogue_configuration(
    serve: Callable[..., str], http: httpx.Client, variables: dict[str, str], expected: list[str]
) -> None:
    url = serve({"INLINE_API_KEY": "k", **variables}, plugins=inline_plugins())
    assert catalogue_of(http, url, "INLINE") == expected
    for model in ("a", "b", "c", "x", "y"):
        assert supported(http, url, f"INLINE/{model}") is (model in expected), model


def test_catalogue_for_a_provider_not_installed_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings(environ={"CSS_EXTRA_MODELS": '{"INLINE": ["c"], "NOPE": ["x"]}'}, dotenv=None)
    with caplog.at_level(logging.WARNING, logger="css_core"):
        registry = build_registry(settings, *inline_plugins())
    assert registry.by_name("INLINE").models == ("a", "b", "c")
    assert "CSS_EXTRA_MODELS names providers that are not installed: NOPE" in caplog.messages


@pytest.mark.parametrize("variable", ["CSS_MODELS", "CSS_EXTRA_MODELS"])
@pytest.mark.parametrize(
    "value",
    ["{not json", '["gpt-4"]', '{"OPENAI": "gpt-4"}', '{"OPENAI": [4]}', '{"OPENAI": [""]}', '{"OPENAI": null}'],
    ids=["not-json", "a-list", "a-string-not-a-list", "a-number", "an-empty-name", "null"],
)
def test_malformed_catalogue_is_a_config_error_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings(environ={variable: value}, dotenv=None)


def test_malformed_catalogue_stops_start_up(tmp_path: Path) -> None:
    result = run_command("plugins", env={"CSS_EXTRA_MODELS": "[1]"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "CSS_EXTRA_MODELS" in result.stderr and '{"PROVIDER": ["model", ...]}' in result.stderr
