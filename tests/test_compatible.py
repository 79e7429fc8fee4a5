"""OpenAI-compatible providers by configuration (`CSS_OPENAI_COMPATIBLE`): served like a plugin's,
with or without a key, off-chain, on-chain and streamed; refused at start-up when they clash.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_abi import decode

from css_core.config import load_settings
from css_core.edge.cli import _report
from css_core.errors import ConfigError
from css_core.providers.compatible import CompatiblePlugin
from css_core.providers.registry import build_registry, plugin_manager
from css_core.testing import Fault, ProviderDouble
from tests.conftest import (
    KEY,
    ONCHAIN,
    STREAM,
    assert_error,
    job,
    onchain_hex,
    post_job,
    run_command,
)
from tests.helpers import requires_plugin

needs_openai = requires_plugin("css_openai")  # clashes with a plugin's provider need that plugin
KEY_VARIABLE = "CSS_TEST_ROUTER_KEYS"


def configured(double: ProviderDouble, **providers: dict[str, Any]) -> str:
    """`CSS_OPENAI_COMPATIBLE` with each provider at the double (`base_url` added)."""
    return json.dumps({name: {"base_url": f"{double.url}/v1", **entry} for name, entry in providers.items()})


def request(provider: str, model: str = "llama3", content: str = "hi", **fields: Any) -> dict[str, Any]:
    return {"provider": provider, "endpoint": "completions", "model": model,
            "params": {"endpoint": "completions", "messages": [{"role": "user", "content": content}]}, **fields}


LOCAL = {"onchain_id": 9, "endpoints": ["completions", "embeddings"], "models": ["llama3", "nomic-embed"]}


@pytest.fixture
def local(double: ProviderDouble, service: Callable[..., str]) -> str:
    """A service with LOCAL, a keyless provider (a vLLM or Ollama server) played by the double."""
    double.api_key = None
    return service(CSS_OPENAI_COMPATIBLE=configured(double, LOCAL=LOCAL))


def test_a_keyless_provider_serves_off_chain_on_chain_and_streamed_jobs(
    double: ProviderDouble, local: str, http: httpx.Client
) -> None:
    expected = double.expected_reply("llama3", "hi")
    response = post_job(http, local, job(request("LOCAL")))
    assert response.status_code == 200, response.text
    assert response.json() == {"output": expected}
    assert (response.headers["x-css-provider"], response.headers["x-css-model"]) == ("LOCAL", "llama3")
    data = onchain_hex(model="llama3", provider_id=9)
    response = post_job(http, local, job(data, source=ONCHAIN, destination=ONCHAIN))
    assert response.status_code == 200, response.text
    assert decode(["string"], bytes.fromhex(response.json()["raw_output"])) == (expected,)
    response = post_job(http, local, job(request("local"), destination=STREAM))
    assert response.status_code == 200 and response.text == expected
    assert response.headers["x-css-provider"] == "LOCAL"
    assert [r.path for r in double.requests] == ["/v1/chat/completions"] * 3
    assert all("authorization" not in r.headers for r in double.requests)  # no key, no header


@pytest.mark.parametrize("stream_usage", [True, False], ids=["asked", "not-asked"])
def test_a_stream_asks_for_its_usage_unless_configured_not_to(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client, stream_usage: bool
) -> None:
    double.api_key = None
    url = service(CSS_OPENAI_COMPATIBLE=configured(double, LOCAL={"stream_usage": stream_usage}))
    response = post_job(http, url, job(request("LOCAL"), destination=STREAM))
    assert (response.status_code, response.text) == (200, double.expected_reply("llama3", "hi"))
    (sent,) = double.requests
    assert ("stream_options" in sent.json) is stream_usage


def test_a_keyless_provider_serves_embeddings(double: ProviderDouble, local: str, http: httpx.Client) -> None:
    body = {"provider": "LOCAL", "endpoint": "embeddings", "model": "nomic-embed",
            "params": {"endpoint": "embeddings", "input": "embed me"}}
    response = post_job(http, local, job(body))
    assert response.status_code == 200, response.text
    assert response.json() == {"output": double.embedding_for("embed me")}


def test_a_configured_provider_is_listed_like_a_plugins(local: str, http: httpx.Client, tmp_path: Path,
                                                         double: ProviderDouble) -> None:
    index = http.get(f"{local}/").json()
    assert index["providers"]["LOCAL"] is True and index["keys"]["LOCAL"] == {"total": 0, "usable": 0}
    resources = http.get(f"{local}/service-resources").json()
    models = resources["compute_capability"][0]["models"]
    assert {"owner": "LOCAL", "name": "llama3"} in models
    assert http.get(f"{local}/service-resources", params={"model_id": "LOCAL/llama3"}).json() == {"supported": True}
    listing = run_command("plugins", env={"CSS_OPENAI_COMPATIBLE": configured(double, LOCAL=LOCAL, OFFCHAIN={})},
                          cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    # DISTRIBUTION is the variable, VERSION is empty
    rows = {row[1]: row[2:] for row in map(str.split, listing.stdout.splitlines()) if row[0] == "CSS_OPENAI_COMPATIBLE"}
    assert rows["LOCAL"] == ["9", "completions,embeddings", "none", "needed"]
    assert rows["OFFCHAIN"][:2] == ["-", "completions"]


def test_a_provider_with_a_key_sends_it_and_pools_several(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    router = {"api_key_env": KEY_VARIABLE, "onchain_id": 10}
    url = service(CSS_OPENAI_COMPATIBLE=configured(double, ROUTER=router), **{KEY_VARIABLE: f"sk-router-one, {KEY}"})
    double.script(Fault.status(429, retry_after="30"))  # the first key cools down: the second answers at once
    response = post_job(http, url, job(request("ROUTER", "meta/llama-3-8b")))
    assert response.status_code == 200, response.text
    assert [r.headers["authorization"] for r in double.requests] == ["Bearer sk-router-one", f"Bearer {KEY}"]
    assert double.requests[-1].json["model"] == "meta/llama-3-8b"
    data = onchain_hex(model="m", provider_id=10)
    assert post_job(http, url, job(data, source=ONCHAIN, destination=ONCHAIN)).status_code == 200
    streamed = post_job(http, url, job(request("ROUTER"), destination=STREAM))
    assert streamed.status_code == 200 and streamed.text == double.expected_reply("llama3", "hi")
    assert http.get(f"{url}/").json()["keys"]["ROUTER"] == {"total": 2, "usable": 1}


def test_a_provider_whose_key_is_not_set_is_not_served(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    url = service(CSS_OPENAI_COMPATIBLE=configured(double, ROUTER={"api_key_env": KEY_VARIABLE}))
    assert_error(post_job(http, url, job(request("ROUTER"))), 400, "ROUTER", KEY_VARIABLE)
    assert_error(post_job(http, url, job(onchain_hex(provider_id=10), source=ONCHAIN)), 400, "on-chain id 10")
    assert double.requests == []


@needs_openai
def test_a_job_falls_back_to_a_configured_provider(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    double.api_key = None
    url = service(CSS_OPENAI_COMPATIBLE=configured(double, LOCAL=LOCAL), CSS_REQUEST_TRIES="1",
                  CSS_FALLBACKS=json.dumps({"OPENAI": ["LOCAL/llama3"]}))
    double.script(Fault.status(503))
    response = post_job(http, url, job(request("OPENAI", "gpt-4")))
    assert response.status_code == 200, response.text
    assert (response.headers["x-css-provider"], response.headers["x-css-model"]) == ("LOCAL", "llama3")


def test_a_compatible_plugin_is_a_pluggy_plugin(double: ProviderDouble) -> None:
    settings = load_settings({"CSS_OPENAI_COMPATIBLE": configured(double, LOCAL=LOCAL)}, dotenv=None)
    registry = build_registry(settings, *plugin_manager(load_entry_points=False))
    assert isinstance(registry.pm.get_plugin("CSS_OPENAI_COMPATIBLE:LOCAL"), CompatiblePlugin)
    provider = registry.by_onchain_id(9)
    assert (provider.spec.name, provider.base_url, provider.served) == ("LOCAL", f"{double.url}/v1", True)


# -- refused at start-up ----------------------------------------------------------------------------------------


@needs_openai
@pytest.mark.parametrize(
    ("entry", "fragments"),
    [({"OPENAI": {"base_url": "http://x/v1", "onchain_id": 50}}, ["'openai'", "OPENAI"]),
     ({"openai": {"base_url": "http://x/v1"}}, ["'openai'", "OPENAI"]),
     ({"LOCAL": {"base_url": "http://x/v1", "onchain_id": 0}},
      ["'openai'", "'OPENAI' / 'LOCAL'", "on-chain ids 0 and 0"])],
    ids=["name", "name-in-any-case", "onchain-id"],
)
def test_a_clash_with_a_plugin_stops_start_up_naming_both(entry: dict[str, Any], fragments: list[str]) -> None:
    settings = load_settings({"CSS_OPENAI_COMPATIBLE": json.dumps(entry)}, dotenv=None)
    with pytest.raises(ConfigError, match="CSS_OPENAI_COMPATIBLE") as error:
        build_registry(settings)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_a_clash_between_two_entries_stops_start_up() -> None:
    entries = {"ONE": {"base_url": "http://x", "onchain_id": 70}, "TWO": {"base_url": "http://y", "onchain_id": 70}}
    settings = load_settings({"CSS_OPENAI_COMPATIBLE": json.dumps(entries)}, dotenv=None)
    with pytest.raises(ConfigError, match=r"CSS_OPENAI_COMPATIBLE:(ONE|TWO).* and .*CSS_OPENAI_COMPATIBLE:(ONE|TWO)"):
        build_registry(settings, *plugin_manager(load_entry_points=False))


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("{not json", "must be a JSON object"), ('{"L": {"api_key_env": "K"}}', "base_url"),
     ('{"L": {"base_url": "ftp://x"}}', "http:// or https://"), ('{"L": {"base_url": "http://x", "onchain_id": 256}}',
                                                                "255"),
     ('{"L": {"base_url": "http://x", "endpoints": ["chat"]}}', "chat"),
     ('{"L": {"base_url": "http://x", "api_key": "sk-x"}}', "unknown field"),
     ('{"my provider": {"base_url": "http://x"}}', "letters, digits"),
     ('{"L": {"base_url": "http://x"}, "l": {"base_url": "http://y"}}', "twice")],
)
def test_a_malformed_entry_stops_start_up_naming_the_variable(value: str, fragment: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CSS_OPENAI_COMPATIBLE") as error:
        load_settings({"CSS_OPENAI_COMPATIBLE": value}, dotenv=None)
    assert fragment in str(error.value)


@needs_openai
def test_the_command_line_refuses_a_clash(tmp_path: Path) -> None:
    entry = json.dumps({"LOCAL": {"base_url": "http://x", "onchain_id": 0}})
    result = run_command(env={"CSS_OPENAI_COMPATIBLE": entry}, cwd=tmp_path)
    assert result.returncode == 2 and "CSS_OPENAI_COMPATIBLE" in result.stderr and "OPENAI" in result.stderr


def test_the_start_up_log_says_a_provider_without_an_on_chain_id_serves_off_chain_jobs_only(
    double: ProviderDouble, caplog: pytest.LogCaptureFixture
) -> None:
    environ = {"CSS_OPENAI_COMPATIBLE": configured(double, LOCAL=LOCAL, OFFCHAIN={})}
    registry = build_registry(load_settings(environ=environ, dotenv=None), *plugin_manager())
    with caplog.at_level(logging.INFO, logger="css_core"):
        _report(registry)
    assert "serving LOCAL (on-chain id 9: completions, embeddings)" in caplog.text
    assert "serving OFFCHAIN (off-chain jobs only: completions)" in caplog.text
