"""Every row of the container contract (README: Requests), for OpenAI, over real sockets.

The service runs under uvicorn on a loopback port (see `conftest.serve`) in front of the
provider double; nothing here mocks the network.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from eth_abi.abi import decode

from css_core.testing import Fault, ProviderDouble
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
    service_env,
)
from tests.helpers import requires_plugin

pytestmark = requires_plugin("css_openai")

ONCHAIN_KEYS = {"raw_input", "processed_input", "raw_output", "processed_output", "proof"}
CHAT_PATH = "/v1/chat/completions"
EMBEDDINGS_PATH = "/v1/embeddings"


def completion_of(response: httpx.Response, destination: int, raw_input: str = "") -> str:
    """The completion a 200 answer carries, in the shape of `destination`."""
    assert response.status_code == 200, response.text
    if destination == STREAM:
        assert response.headers["content-type"].startswith("text/plain")
        return response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    if destination == OFFCHAIN:
        assert set(body) == {"output"}
        output: str = body["output"]
        return output
    assert set(body) == ONCHAIN_KEYS
    for value in body.values():  # the node runs bytes.fromhex on each
        assert not value.startswith("0x")
        bytes.fromhex(value)
    assert body["raw_input"] == raw_input
    assert body["processed_input"] == body["processed_output"] == body["proof"] == ""
    (text,) = decode(["string"], bytes.fromhex(body["raw_output"]))
    return str(text)


def sent_body(double: ProviderDouble, path: str = CHAT_PATH) -> dict[str, Any]:
    """The JSON body of the one request the double received, checking its path and key."""
    assert len(double.requests) == 1, double.requests
    request = double.requests[0]
    assert (request.method, request.path) == ("POST", path)
    assert request.headers["authorization"] == f"Bearer {KEY}"
    body: dict[str, Any] = request.json
    return body


def embeddings_request(text: str, **fields: Any) -> dict[str, Any]:
    return {"provider": "OPENAI", "endpoint": "embeddings", "model": "text-embedding-3-small",
            "params": {"input": text}, **fields}


# -- completions, from every source to every destination ---------------------------------------------


@pytest.mark.parametrize("destination", [OFFCHAIN, ONCHAIN, STREAM], ids=["offchain", "onchain", "stream"])
def test_offchain_source_to_every_destination(
    double: ProviderDouble, url: str, http: httpx.Client, destination: int
) -> None:
    response = post_job(http, url, job(chat("Say hi"), destination=destination))
    assert completion_of(response, destination) == double.expected_reply("gpt-4", "Say hi")
    expected = {"model": "gpt-4", "messages": [{"role": "user", "content": "Say hi"}]}
    streamed = {"stream": True, "stream_options": {"include_usage": True}}  # OpenAI sends usage when asked
    assert sent_body(double) == (expected | streamed if destination == STREAM else expected)


@pytest.mark.parametrize("prefix", ["", "0x"], ids=["bare-hex", "0x-hex"])
@pytest.mark.parametrize("destination", [ONCHAIN, OFFCHAIN, STREAM], ids=["onchain", "offchain", "stream"])
def test_onchain_source_to_every_destination(
    double: ProviderDouble, url: str, http: httpx.Client, destination: int, prefix: str
) -> None:
    data = onchain_hex("Héllo ✓", model="gpt-4o")
    response = post_job(http, url, job(prefix + data, source=ONCHAIN, destination=destination))
    assert completion_of(response, destination, raw_input=data) == double.expected_reply("gpt-4o", "Héllo ✓")
    assert sent_body(double)["messages"] == [{"role": "user", "content": "Héllo ✓"}]


def test_onchain_answer_decodes_to_the_completion(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    double.reply = "The answer is 42 — ünïcödé 🎉"
    data = onchain_hex()
    body = post_job(http, url, job(data, source=ONCHAIN, destination=ONCHAIN)).json()
    assert set(body) == ONCHAIN_KEYS
    assert body["raw_input"] == data
    assert decode(["string"], bytes.fromhex(body["raw_output"])) == (double.reply,)


# -- embeddings ----------------------------------------------------------------------------------------


def test_embeddings_offchain(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    response = post_job(http, url, job(embeddings_request("some text to embed")))
    assert response.status_code == 200, response.text
    assert response.json() == {"output": double.embedding_for("some text to embed")}
    assert sent_body(double, EMBEDDINGS_PATH) == {"model": "text-embedding-3-small", "input": "some text to embed"}


@pytest.mark.parametrize(
    "body",
    [
        job(onchain_hex(endpoint_id=1), source=ONCHAIN, destination=OFFCHAIN),
        job(onchain_hex(endpoint_id=1), source=ONCHAIN, destination=ONCHAIN),
        job(embeddings_request("x"), destination=ONCHAIN),
        job(embeddings_request("x"), destination=STREAM),
    ],
    ids=["onchain-source", "onchain-both", "onchain-destination", "stream-destination"],
)
def test_embeddings_onchain_are_refused(double: ProviderDouble, url: str, http: httpx.Client, body: Any) -> None:
    assert_error(post_job(http, url, body), 400, "embeddings")
    assert double.requests == []


# -- proofs, defaults and request arguments ----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        job(chat(), requires_proof=True),
        job("this is not a request object", requires_proof=True),
        job("0xnot-hex", source=ONCHAIN, destination=ONCHAIN, requires_proof=True),
        job(chat(), source=7, destination=9, requires_proof=True),
    ],
    ids=["valid-data", "invalid-offchain-data", "invalid-onchain-data", "invalid-locations"],
)
def test_proofs_are_refused_before_the_data_is_read(
    double: ProviderDouble, url: str, http: httpx.Client, body: Any
) -> None:
    assert_error(post_job(http, url, body), 400, "Proofs are not supported for CSS Inference")
    assert double.requests == []


def test_provider_and_endpoint_default_to_openai_completions(
    double: ProviderDouble, url: str, http: httpx.Client
) -> None:
    data = {"model": "gpt-4", "params": {"messages": [{"role": "user", "content": "hi"}]}}
    assert post_job(http, url, job(data)).json() == {"output": double.expected_reply("gpt-4", "hi")}
    assert sent_body(double)["model"] == "gpt-4"


def test_endpoint_falls_back_to_params_endpoint(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    data = {"model": "text-embedding-3-small", "params": {"endpoint": "embeddings", "input": "abc"}}
    assert post_job(http, url, job(data)).json() == {"output": double.embedding_for("abc")}
    sent_body(double, EMBEDDINGS_PATH)


def test_positional_args_change_the_defaults(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    url = service(CSS_INF_WORKFLOW_POSITIONAL_ARGS='["OPENAI", "embeddings"]')
    data = {"model": "text-embedding-3-small", "params": {"input": "abc"}}
    assert post_job(http, url, job(data)).json() == {"output": double.embedding_for("abc")}
    sent_body(double, EMBEDDINGS_PATH)

    url = service(CSS_INF_WORKFLOW_POSITIONAL_ARGS='["NOPE", "completions"]')
    no_provider = {"model": "sonar", "params": {"messages": [{"role": "user", "content": "hi"}]}}
    assert_error(post_job(http, url, job(no_provider)), 400, "'NOPE'")
    assert len(double.requests) == 1


def test_kw_args_are_request_defaults_and_extra_args_win(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    url = service(CSS_INF_WORKFLOW_KW_ARGS='{"temperature": 0.2, "max_tokens": 7, "retry_params": {"tries": 2}}')
    assert post_job(http, url, job(chat())).status_code == 200
    assert post_job(http, url, job(chat(extra_args={"temperature": 0.9}))).status_code == 200
    defaults, overridden = (request.json for request in double.requests)
    assert defaults == {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}],
                        "temperature": 0.2, "max_tokens": 7}
    assert overridden == defaults | {"temperature": 0.9}


def test_extra_args_are_merged_into_the_body(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    extra = {"max_tokens": 10, "temperature": 0.5, "user": "u-1", "response_format": {"type": "text"}}
    assert post_job(http, url, job(chat(extra_args=extra))).status_code == 200
    assert sent_body(double) == {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], **extra}


def test_extra_args_cannot_change_url_headers_or_key(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    hostile = {
        "url": "http://127.0.0.1:9/steal",
        "base_url": "http://127.0.0.1:9",
        "path": "/steal",
        "headers": {"Authorization": "Bearer sk-attacker"},
        "Authorization": "Bearer sk-attacker",
        "authorization": "Bearer sk-attacker",
        "api_key": "sk-attacker",
        "OPENAI_API_KEY": "sk-attacker",
    }
    response = post_job(http, url, job(chat(extra_args=hostile)))
    assert response.status_code == 200, response.text
    body = sent_body(double)  # one request, to the configured path, with the configured key
    assert {name: body[name] for name in hostile} == hostile  # only ever body fields


# -- discovery ---------------------------------------------------------------------------------------------


def test_index_answers_json(url: str, http: httpx.Client) -> None:
    response = http.get(url + "/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["providers"]["OPENAI"] is True


def test_service_resources_document(url: str, http: httpx.Client) -> None:
    response = http.get(url + "/service-resources")
    assert response.status_code == 200
    document = response.json()
    assert document["service_id"] == "css-inference-service"
    compute = document["compute_capability"][0]
    assert (compute["id"], compute["type"], compute["task"]) == ("ml", "css", [])
    assert {"owner": "OPENAI", "name": "gpt-4"} in compute["models"]
    assert all(model["owner"] == "OPENAI" for model in compute["models"])
    hardware = document["hardware_capabilities"][0]
    assert hardware["capability_id"] == "base"
    assert {"os_info", "cpu_info", "disk_info"} <= set(hardware)


def supported(http: httpx.Client, url: str, model_id: str) -> bool:
    response = http.get(url + "/service-resources", params={"model_id": model_id})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"supported"}
    value: bool = body["supported"]
    return value


def test_model_support(service: Callable[..., str], http: httpx.Client) -> None:
    url = service()
    assert supported(http, url, "OPENAI/gpt-4") is True
    assert supported(http, url, "OPENAI/not-a-model") is False
    assert supported(http, url, "NOPE/gpt-4") is False
    assert supported(http, url, "gpt-4") is False

    keyless = service(OPENAI_API_KEY=None)
    assert supported(http, keyless, "OPENAI/gpt-4") is False
    assert http.get(keyless + "/service-resources").json()["compute_capability"][0]["models"] == []


# -- errors ---------------------------------------------------------------------------------------------------


def test_unknown_path_and_wrong_method_are_json(url: str, http: httpx.Client) -> None:
    assert_error(http.get(url + "/no/such/path"), 404)
    assert_error(http.get(url + "/service_output"), 405)
    assert_error(http.delete(url + "/"), 405)


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (b'{"source": 1, "destination": 1, "data": nope}', ("invalid job body", "malformed")),
        (b"[]", ("invalid job body",)),
        (b'{"source": 1, "destination": 1}', ("invalid job body", "data")),
        (b'{"destination": 1, "data": {}}', ("invalid job body", "source")),
    ],
    ids=["malformed-json", "not-an-object", "missing-data", "missing-source"],
)
def test_malformed_envelopes(url: str, http: httpx.Client, content: bytes, fragments: tuple[str, ...]) -> None:
    response = http.post(url + "/service_output", content=content, headers={"content-type": "application/json"})
    assert_error(response, 400, *fragments)


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        (job(chat(), source=STREAM), ("`source`", "got 2")),
        (job(chat(), destination=7), ("`destination`", "got 7")),
        (job({"params": {"messages": []}}), ("off-chain request", "model")),
        (job(chat(model="")), ("model",)),
        (job(chat() | {"params": {"messages": []}}), ("at least one message",)),
        (job(embeddings_request("x") | {"params": {}}), ("params.input",)),
        (job(chat(provider="NOPE")), ("'NOPE'", "OPENAI")),
        (job(chat(endpoint="images")), ("'images'",)),
        (job(chat(extra_args=["not", "an", "object"])), ("extra_args",)),
        (job("zz", source=ONCHAIN), ("hex",)),
        (job("abc", source=ONCHAIN), ("hex",)),
        (job({"not": "hex"}, source=ONCHAIN), ("hex string",)),
        (job("00" * 40, source=ONCHAIN), ("abi.encode",)),
        (job(onchain_hex(provider_id=9), source=ONCHAIN), ("on-chain id 9",)),
        (job(onchain_hex(endpoint_id=5), source=ONCHAIN), ("endpoint id 5",)),
    ],
    ids=["source-2", "destination-7", "missing-model", "empty-model", "empty-messages", "embeddings-no-input",
         "unknown-provider", "unknown-endpoint", "bad-extra-args", "onchain-not-hex", "onchain-odd-hex",
         "onchain-not-a-string", "onchain-garbage-abi", "onchain-unknown-provider", "onchain-unknown-endpoint"],
)
def test_invalid_jobs_are_400_saying_why(
    double: ProviderDouble, url: str, http: httpx.Client, body: Any, fragments: tuple[str, ...]
) -> None:
    assert_error(post_job(http, url, body), 400, *fragments)
    assert double.requests == []


def test_provider_without_key_is_refused_naming_the_variable(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    url = service(OPENAI_API_KEY=None)
    for destination in (OFFCHAIN, ONCHAIN, STREAM):
        assert_error(post_job(http, url, job(chat(), destination=destination)), 400, "OPENAI", "OPENAI_API_KEY")
    assert_error(post_job(http, url, job(onchain_hex(), source=ONCHAIN)), 400, "OPENAI_API_KEY")
    assert double.requests == []


def test_provider_400_is_passed_on(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    message = b'{"error": {"message": "max_tokens is too large: 99999999", "type": "invalid_request_error"}}'
    double.script(Fault.status(400, body=message))
    assert_error(post_job(http, url, job(chat())), 400, "OPENAI", "max_tokens is too large: 99999999")
    assert len(double.requests) == 1


def test_wrong_key_is_a_server_error_without_the_key(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    wrong = "sk-WRONG-secret-987"
    url = service(OPENAI_API_KEY=wrong)
    response = post_job(http, url, job(chat()))
    assert_error(response, 502, "OPENAI", "401", "API key")
    # a provider that echoes the key in its error message
    double.script(Fault.status(401, body=b'{"error": {"message": "Incorrect API key provided: %s"}}' % wrong.encode()))
    response = post_job(http, url, job(chat()))
    assert_error(response, 502, "Incorrect API key provided")
    assert wrong not in response.text
    assert len(double.requests) == 2  # a refused key is not retried


# -- the command line the node runs ---------------------------------------------------------------------------


def test_real_command_line_with_two_workers(
    double: ProviderDouble, launch: Callable[..., Launched], http: httpx.Client
) -> None:
    service = launch(service_env(double), workers=2)
    expected = double.expected_reply("gpt-4", "hi")
    for _ in range(3):  # more jobs than workers
        assert completion_of(post_job(http, service.url, job(chat())), OFFCHAIN) == expected
        data = onchain_hex()
        response = post_job(http, service.url, job(data, source=ONCHAIN, destination=ONCHAIN))
        assert completion_of(response, ONCHAIN, raw_input=data) == expected
        assert completion_of(post_job(http, service.url, job(chat(), destination=STREAM)), STREAM) == expected
    assert supported(http, service.url, "OPENAI/gpt-4") is True
    assert_error(post_job(http, service.url, job(chat(provider="NOPE"))), 400, "'NOPE'")
    assert len(double.requests) == 9
    assert double.wait_for_streams(3) == ["completed"] * 3
