"""The AZURE plugin (`css_azure`) through the real service, over real sockets.

The service (the installed plugins, in-process on a loopback port: `css_core.testing`'s
`ServiceServer`) calls a double of Azure OpenAI's API built from the kit's `azure_routes`
(`api-key`, `/openai/deployments/{deployment}/...?api-version=V`, Azure's error shape and
its content filter). The module skips where the plugin is not installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import eth_abi
import httpx
import pytest

from css_core.config import load_settings
from css_core.errors import ConfigError
from css_core.jobs.codec import encode_request
from css_core.providers.registry import build_registry
from css_core.testing import (
    Fault,
    ProviderDouble,
    RecordedRequest,
    Route,
    ServiceServer,
    Stream,
    azure_content_filter,
    azure_error,
    azure_routes,
)
from css_core.types import Message
from tests.conftest import KEY, OFFCHAIN, ONCHAIN, STREAM, assert_error, free_port, job, post_job, run_command
from tests.helpers import requires_plugin
from tests.test_metrics import scrape, token_usage

pytestmark = requires_plugin("css_azure")

DEPLOYMENT = "my-gpt-4o"
CHAT = f"/openai/deployments/{DEPLOYMENT}/chat/completions"
VERSION = "2024-10-21"  # the plugin's default
FIRST_CHUNK = {"id": "", "object": "", "created": 0, "model": "", "choices": [],  # Azure's: the prompt's filter
               "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]}
HATE = {"hate": {"filtered": True, "severity": "high"}, "violence": {"filtered": False, "severity": "safe"}}


# -- the double and the service in front of it ------------------------------------------------------


@pytest.fixture(scope="module")
def azure_server() -> Iterator[ProviderDouble]:
    with ProviderDouble(KEY, routes=azure_routes, auth_header="api-key", auth_scheme=None,
                        error_body=azure_error) as double:
        yield double


@pytest.fixture
def double(azure_server: ProviderDouble) -> Iterator[ProviderDouble]:
    azure_server.reset()
    yield azure_server
    azure_server.reset()
    azure_server.api_key = KEY


def azure_env(double: ProviderDouble, **overrides: str) -> dict[str, str]:
    return {"AZURE_API_KEY": KEY, "AZURE_BASE_URL": double.url, "CSS_REQUEST_TIMEOUT": "5", **overrides}


@pytest.fixture(scope="module")
def url(azure_server: ProviderDouble) -> Iterator[str]:
    with ServiceServer(azure_env(azure_server)) as server:
        yield server.url


def request(content: str = "hi", model: str = DEPLOYMENT, **fields: Any) -> dict[str, Any]:
    """An off-chain AZURE completion request."""
    return {"provider": "AZURE", "endpoint": "completions", "model": model,
            "params": {"messages": [{"role": "user", "content": content}]}, **fields}


def the_request(double: ProviderDouble, path: str = CHAT, version: str = VERSION) -> RecordedRequest:
    """The one request the double received, checked to be Azure's: the path, the API version
    and the bare key in `api-key`."""
    assert len(double.requests) == 1, double.requests
    sent = double.requests[0]
    assert (sent.method, sent.path, sent.query) == ("POST", path, {"api-version": version})
    assert sent.target == f"{path}?api-version={version}"
    assert sent.headers["api-key"] == KEY
    assert "authorization" not in sent.headers
    return sent


def answer_first(double: ProviderDouble, *first: Any) -> None:
    """Answer the next chat completions with `first`, one each, then as the double does."""
    builtin = azure_routes(double)[0]
    pending = list(first)
    double.add_route(Route("POST", builtin.path, lambda rec: pending.pop(0) if pending else builtin.respond(rec)))


def chunk(content: str | None = None, finish: str | None = None, **choice: Any) -> dict[str, Any]:
    """A streamed chunk with one choice; `content` None: an empty delta."""
    delta = {} if content is None else {"content": content}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **choice}]}


# -- completions ------------------------------------------------------------------------------------


def test_AZURE_offchain_completion(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    response = post_job(http, url, job(request("Héllo ✓")))
    assert response.status_code == 200, response.text
    assert response.json() == {"output": double.expected_reply(DEPLOYMENT, "Héllo ✓")}
    assert the_request(double).json == {"model": DEPLOYMENT, "messages": [{"role": "user", "content": "Héllo ✓"}]}


def test_AZURE_deployment_is_one_quoted_path_segment(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    assert post_job(http, url, job(request(model="team a/gpt-4o"))).status_code == 200
    the_request(double, "/openai/deployments/team%20a%2Fgpt-4o/chat/completions")


def test_AZURE_onchain_job(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    raw = encode_request(5, 0, DEPLOYMENT, (Message("user", "hi"),))
    response = post_job(http, url, job("0x" + raw.hex(), source=ONCHAIN, destination=ONCHAIN))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["raw_input"] == raw.hex()
    (output,) = eth_abi.decode(["string"], bytes.fromhex(body["raw_output"]))
    assert output == double.expected_reply(DEPLOYMENT, "hi")
    the_request(double)


def test_AZURE_onchain_job_where_the_plugin_is_missing_names_it(http: httpx.Client) -> None:
    raw = encode_request(5, 0, DEPLOYMENT, (Message("user", "hi"),))
    with ServiceServer({}, plugins=[]) as server:
        response = post_job(http, server.url, job(raw.hex(), source=ONCHAIN, destination=ONCHAIN))
    assert_error(response, 400, "no provider with on-chain id 5 (AZURE) is installed")


def test_AZURE_streamed_job(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    double.reply = "Streamed in pieces — ünïcödé 🎉, one chunk each."
    double.stream_chunks = 6
    response = post_job(http, url, job(request(), destination=STREAM))
    assert response.status_code == 200, response.text
    assert response.text == double.reply
    sent = the_request(double)
    assert sent.json["stream"] is True
    assert sent.json["stream_options"] == {"include_usage": True}  # the default version accepts it
    assert double.wait_for_streams(1) == ["completed"]


def test_AZURE_stream_whose_first_chunk_has_no_choices(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    answer_first(double, Stream([FIRST_CHUNK, chunk(""), chunk("Bon"), chunk("jour"), chunk(finish="stop")],
                                done=True))
    response = post_job(http, url, job(request(), destination=STREAM))
    assert response.status_code == 200, response.text
    assert response.text == "Bonjour"
    assert len(double.requests) == 1


def test_AZURE_stream_with_the_asynchronous_filters_chunks_without_delta(double: ProviderDouble, url: str,
                                                                         http: httpx.Client) -> None:
    # the asynchronous content filter annotates text already sent in choices without a `delta`
    annotation = {"id": "", "object": "", "created": 0, "model": "", "choices": [
        {"index": 0, "finish_reason": None, "content_filter_results": {},
         "content_filter_offsets": {"check_offset": 0, "start_offset": 0, "end_offset": 7}}]}
    answer_first(double, Stream([FIRST_CHUNK, chunk("Bon"), annotation, chunk("jour"), chunk(finish="stop"),
                                 annotation], done=True))
    response = post_job(http, url, job(request(), destination=STREAM))
    assert response.status_code == 200, response.text
    assert response.text == "Bonjour"
    assert double.wait_for_streams(1) == ["completed"]
    assert len(double.requests) == 1


def test_AZURE_configured_api_version(double: ProviderDouble, http: httpx.Client) -> None:
    with ServiceServer(azure_env(double, AZURE_API_VERSION="2024-06-01")) as server:
        assert post_job(http, server.url, job(request())).status_code == 200
        the_request(double, version="2024-06-01")
        double.reset()
        response = post_job(http, server.url, job(request(), destination=STREAM))
    assert response.text == double.expected_reply(DEPLOYMENT, "hi")
    sent = the_request(double, version="2024-06-01")
    assert sent.json["stream"] is True
    assert "stream_options" not in sent.json  # a version before 2024-09-01 refuses the field


@pytest.mark.parametrize("version", ["2024 10 21", "2024-10-21&x=1", "-preview"])
def test_AZURE_api_version_that_is_no_version_stops_start_up(version: str) -> None:
    settings = load_settings(environ={"AZURE_API_KEY": KEY, "AZURE_BASE_URL": "https://example.invalid",
                                      "AZURE_API_VERSION": version}, dotenv=None)
    with pytest.raises(ConfigError, match=r"^AZURE_API_VERSION must be an Azure OpenAI API version"):
        build_registry(settings)


# -- the content filter -----------------------------------------------------------------------------


FILTERED = {"id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
            "choices": [{"index": 0, "finish_reason": "content_filter", "message": {"role": "assistant"},
                         "content_filter_results": HATE}]}
FILTERED_STREAM = Stream([FIRST_CHUNK, chunk("", role="assistant"), chunk(finish="content_filter",
                                                                             content_filter_results=HATE)], done=True)


@pytest.mark.parametrize(("answer", "destination"), [(FILTERED, OFFCHAIN), (FILTERED_STREAM, STREAM)],
                         ids=["offchain", "stream"])
def test_AZURE_filtered_answer_is_a_502_naming_the_filter_not_retried(double: ProviderDouble, url: str,
                                                                      http: httpx.Client, answer: Any,
                                                                      destination: int) -> None:
    answer_first(double, *[answer] * 3)
    response = post_job(http, url, job(request(), destination=destination))
    assert_error(response, 502, "AZURE failed after 1 attempt(s)", "finish_reason: content_filter", "content filter")
    assert len(double.requests) == 1


def test_AZURE_prompt_refused_by_the_filter_is_a_400_naming_it(double: ProviderDouble, url: str,
                                                              http: httpx.Client) -> None:
    double.script(Fault.status(400, body=azure_content_filter("hate", "violence")))
    response = post_job(http, url, job(request()))
    assert_error(response, 400, "AZURE rejected the request",
                 "Azure's content filter refused the prompt (hate: high, violence: high)",
                 "triggering Azure OpenAI's content management policy")
    assert len(double.requests) == 1


# -- other failures ---------------------------------------------------------------------------------


def test_AZURE_refused_key_is_a_502_naming_the_provider(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    double.api_key = "another-key"
    assert_error(post_job(http, url, job(request())), 502, "AZURE refused this service's API key",
                 "Access denied due to invalid subscription key")
    assert len(double.requests) == 1  # not retried


def test_AZURE_unknown_deployment_is_named(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    message = "The API deployment for this resource does not exist."
    double.script(Fault.status(404, body=azure_error(404, message, code="DeploymentNotFound")))
    response = post_job(http, url, job(request()))
    assert response.status_code >= 400
    assert f"DeploymentNotFound: {message}" in response.json()["description"]


def test_AZURE_rate_limit_is_retried(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    double.script(Fault.status(429, retry_after="0"))
    assert post_job(http, url, job(request())).json() == {"output": double.expected_reply(DEPLOYMENT, "hi")}
    assert len(double.requests) == 2


@pytest.mark.processes
def test_AZURE_key_without_endpoint_stops_start_up_naming_it(tmp_path: Path) -> None:
    result = run_command(f"--bind=127.0.0.1:{free_port()}", env={"AZURE_API_KEY": KEY}, cwd=tmp_path, timeout=15)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("css-inference-service: configuration error: AZURE_BASE_URL is not set: "
                                    "AZURE (plugin css-azure 0.1.0) has no default base URL"), result.stderr
    assert KEY not in result.stderr


# -- embeddings -------------------------------------------------------------------------------------


def test_AZURE_embeddings(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    data = {"provider": "AZURE", "endpoint": "embeddings", "model": "my-embeddings", "params": {"input": "Héllo ✓"}}
    response = post_job(http, url, job(data))
    assert response.status_code == 200, response.text
    assert response.json() == {"output": double.embedding_for("Héllo ✓")}
    sent = the_request(double, "/openai/deployments/my-embeddings/embeddings")
    assert sent.json == {"model": "my-embeddings", "input": "Héllo ✓"}


# -- configuration ----------------------------------------------------------------------------------


def test_AZURE_in_the_plugins_command_with_no_catalogue(url: str, http: httpx.Client, tmp_path: Path) -> None:
    result = run_command("plugins", env={}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("css-azure ")]
    assert line.split()[1:] == ["0.1.0", "AZURE", "5", "completions,embeddings", "AZURE_API_KEY", "NOT", "SET"]
    resources = http.get(url + "/service-resources").json()
    assert [m for m in resources["compute_capability"][0]["models"] if m["owner"] == "AZURE"] == []


@pytest.fixture(scope="module")
def listed(azure_server: ProviderDouble) -> Iterator[str]:
    """A service whose `CSS_MODELS` lists the deployments (its metrics then name them)."""
    with ServiceServer(azure_env(azure_server, CSS_MODELS=f'{{"AZURE": ["{DEPLOYMENT}", "my-embeddings"]}}')) as server:
        yield server.url


def test_AZURE_deployments_are_listed_by_CSS_MODELS(listed: str, http: httpx.Client) -> None:
    def supported(model_id: str) -> Any:
        return http.get(listed + "/service-resources", params={"model_id": model_id}).json()

    assert supported(f"AZURE/{DEPLOYMENT}") == {"supported": True}
    assert supported("AZURE/gpt-4o") == {"supported": False}


@pytest.mark.parametrize("destination", [OFFCHAIN, STREAM], ids=["offchain", "stream"])
def test_AZURE_usage_is_counted(double: ProviderDouble, listed: str, http: httpx.Client, destination: int) -> None:
    before = scrape(http, listed)
    double.reply, double.stream_chunks = "five words in this reply", 3
    response = post_job(http, listed, job(request("one two three"), destination=destination))
    assert response.status_code == 200, response.text
    assert token_usage(before, scrape(http, listed), "azure", DEPLOYMENT) == (3, 5)
