"""Bad input, through the real service over a socket: each is a 4xx JSON error that says what is wrong.

The battery below reads as a table: (id, body, expected status, a fragment of the description, any case).
A body is sent as given when it is `bytes`, else JSON-encoded. One service (in front of the
provider double, serving OpenAI and GooseAI) answers the whole module; after each case, and
after the whole battery sent at once, `GET /` must still answer 200. Then: what a job may
not change (the provider's URL, host, headers, key), asserted at the double.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple
from urllib.parse import unquote

import httpx
import pytest
from eth_abi.abi import encode

from css_core.config import load_settings
from css_core.edge.app import create_app
from css_core.testing import ProviderDouble
from tests.conftest import (
    KEY,
    OFFCHAIN,
    ONCHAIN,
    STREAM,
    InProcessServer,
    assert_error,
    chat,
    job,
    post_job,
    service_env,
)
from tests.helpers import installed_plugin_modules, requires_plugin

MAX_MESSAGES = 8
MAX_BODY = 1_000_000  # 100k nested brackets fit, a 1 MB string does not
JOB_FIELDS = "expected {source, destination, data, requires_proof}"
NOT_ABI = "is not abi.encode("
GOOSE = {"provider": "GOOSEAI", "model": "gpt-neo-20b"}
openai = requires_plugin("css_openai")


class Case(NamedTuple):
    id: str
    body: Any  # bytes as they are, anything else as JSON
    status: int
    fragment: str
    content_type: str = "application/json"
    plugin: str = "css_openai"  # the provider plugin the case needs installed

    @property
    def content(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


def word(n: int) -> bytes:
    return n.to_bytes(32, "big")


def aliased_abi(copies: int, length: int) -> str:
    """A request whose `copies` messages all point at one `length`-byte string (a decoding bomb)."""
    model = word(1) + b"m".ljust(32, b"\0")
    head = word(0) + word(0) + word(128) + word(128 + len(model))
    offsets = word(copies) + word(32 * copies) * copies  # every element: the same (role, content)
    pair = word(64) + word(64) + word(length) + b"a" * length
    return (head + model + offsets + pair).hex()


def onchain(provider_id: int = 0, endpoint_id: int = 0, messages: int = 1, model: str = "gpt-4") -> str:
    pairs = [("user", f"message {i}") for i in range(messages)]
    return encode(["uint8", "uint8", "string", "(string,string)[]"], [provider_id, endpoint_id, model, pairs]).hex()


def with_params(**params: Any) -> dict[str, Any]:
    return {"model": "gpt-4", "params": params}


def messages(*items: Any) -> dict[str, Any]:
    return with_params(messages=list(items))


EMBED = {"model": "text-embedding-3-small", "endpoint": "embeddings", "params": {"input": "x"}}
NOT_UTF8 = encode(["uint8", "uint8", "bytes", "(bytes,bytes)[]"], [0, 0, b"\xff\xfe", [(b"user", b"\xc3")]]).hex()
NESTED = 100_000

CASES = [
    # -- the envelope ------------------------------------------------------------------------------
    Case("not-json", b"this is not JSON", 400, "JSON is malformed"),
    Case("form-encoded", b"source=1&destination=1&data=hi", 415, "application/json",
         "application/x-www-form-urlencoded"),
    Case("empty-body", b"", 400, JOB_FIELDS),
    Case("json-array", [job(chat())], 400, "Expected `object`, got `array`"),
    Case("json-string", "source=1", 400, "Expected `object`, got `str`"),
    Case("json-number", 1, 400, "Expected `object`, got `int`"),
    Case("json-null", None, 400, "Expected `object`, got `null`"),
    Case("missing-source", {"destination": 1, "data": chat()}, 400, "missing required field `source`"),
    Case("missing-destination", {"source": 1, "data": chat()}, 400, "missing required field `destination`"),
    Case("missing-data", {"source": 1, "destination": 1}, 400, "missing required field `data`"),
    Case("source-as-string", job(chat(), source="1"), 400, "Expected `int`, got `str` - at `$.source`"),
    Case("source-as-bool", job(chat(), source=True), 400, "Expected `int`, got `bool` - at `$.source`"),
    Case("source-as-float", job(chat(), source=1.0), 400, "Expected `int`, got `float` - at `$.source`"),
    Case("source-2", job(chat(), source=2), 400, "`source` must be one of 0 (onchain), 1 (offchain), got 2"),
    Case("source-negative", job(chat(), source=-1), 400, "`source` must be one of"),
    Case("source-huge", b'{"source": 1e400, "destination": 1, "data": {}}', 400, "Number out of range"),
    Case("destination-7", job(chat(), destination=7), 400, "`destination` must be one of 0 (onchain)"),
    Case("requires-proof", job(chat(), requires_proof=True), 400, "Proofs are not supported for CSS Inference"),
    Case("requires-proof-garbage-data", job("garbage", requires_proof=True), 400, "Proofs are not supported"),
    Case("requires-proof-not-bool", job(chat(), requires_proof="yes"), 400, "at `$.requires_proof`"),
    # -- the off-chain request ---------------------------------------------------------------------
    Case("data-not-object", job("gpt-4"), 400, "invalid off-chain request in `data`: Expected `object`, got `str`"),
    Case("unknown-provider", job(chat(provider="NOPE")), 400, "provider 'NOPE' is not installed"),
    Case("provider-without-key", job(chat(provider="PERPLEXITYAI")), 400, "PERPLEXITYAI_API_KEY is not set",
         plugin="css_perplexity"),
    Case("provider-not-string", job(chat(provider=0)), 400, "at `$.provider`"),
    Case("unknown-endpoint", job(chat(endpoint="images")), 400, "OPENAI has no 'images' endpoint"),
    Case("goose-two-messages", job(messages(*[{"role": "user", "content": "a"}] * 2) | GOOSE), 400,
         "GOOSEAI takes exactly one message", plugin="css_goose"),
    Case("goose-embeddings", job(EMBED | {"provider": "GOOSEAI"}), 400, "GOOSEAI has no 'embeddings' endpoint",
         plugin="css_goose"),
    Case("goose-dot-dot-model", job(chat(provider="GOOSEAI", model="..")), 400, "would change the provider's URL",
         plugin="css_goose"),
    Case("missing-params", job({"model": "gpt-4"}), 400, "missing required field `params`"),
    Case("empty-messages", job(messages()), 400, "completions need at least one message"),
    Case("messages-not-list", job(with_params(messages="hi")), 400, "got `str` - at `$.params.messages`"),
    Case("message-without-content", job(messages({"role": "user"})), 400,
         "missing required field `content` - at `$.params.messages[0]`"),
    Case("content-not-string", job(messages({"role": "user", "content": 5})), 400, "at `$.params.messages[0].content`"),
    Case("model-empty", job(chat(model="")), 400, "at `$.model`"),
    Case("model-blank", job(chat(model="   ")), 400, "`model` must not be empty"),
    Case("model-missing", job({"params": chat()["params"]}), 400, "missing required field `model`"),
    Case("extra-args-not-object", job(chat(extra_args=["x"])), 400, "at `$.extra_args`"),
    Case("too-many-messages", job(messages(*[{"role": "user", "content": "x"}] * (MAX_MESSAGES + 1))), 400,
         f"too many messages: {MAX_MESSAGES + 1}"),
    # -- embeddings --------------------------------------------------------------------------------
    Case("embeddings-onchain-source", job(onchain(endpoint_id=1), source=ONCHAIN), 400,
         "embeddings can only be requested off-chain"),
    Case("embeddings-to-onchain", job(EMBED, destination=ONCHAIN), 400, "embeddings can only be requested off-chain"),
    Case("embeddings-to-stream", job(EMBED, destination=STREAM), 400, "embeddings can only be requested off-chain"),
    Case("embeddings-without-input", job(EMBED | {"params": {}}), 400, "embeddings need `params.input`"),
    # -- the on-chain request ----------------------------------------------------------------------
    Case("onchain-data-not-string", job(123, source=ONCHAIN), 400, "on-chain `data` must be a hex string"),
    Case("onchain-not-hex", job("0xzz", source=ONCHAIN), 400, "must be a hex string"),
    Case("onchain-odd-length", job("abc", source=ONCHAIN), 400, "of even length"),
    Case("onchain-empty", job("0x", source=ONCHAIN), 400, NOT_ABI),
    Case("onchain-not-abi", job("00" * 10, source=ONCHAIN), 400, NOT_ABI),
    Case("onchain-truncated", job(onchain()[:200], source=ONCHAIN), 400, NOT_ABI),
    Case("onchain-not-utf8", job(NOT_UTF8, source=ONCHAIN), 400, NOT_ABI),
    Case("onchain-aliased-offsets", job(aliased_abi(copies=200, length=4000), source=ONCHAIN), 400,
         "offsets and lengths claim 1600001 bytes of strings"),
    Case("onchain-unknown-provider", job(onchain(provider_id=99), source=ONCHAIN), 400,
         "no provider with on-chain id 99"),
    Case("onchain-unknown-endpoint", job(onchain(endpoint_id=5), source=ONCHAIN), 400,
         "unknown on-chain endpoint id 5"),
    Case("onchain-too-many-messages", job(onchain(messages=MAX_MESSAGES + 1), source=ONCHAIN), 400,
         "too many messages"),
    Case("onchain-empty-model", job(onchain(model=""), source=ONCHAIN), 400, "`model` must not be empty"),
    # -- hostile bytes -----------------------------------------------------------------------------
    Case("over-body-limit", job("a" * MAX_BODY, source=ONCHAIN), 413,
         f"limit of {MAX_BODY} bytes (CSS_MAX_BODY_BYTES)"),
    Case("nested-brackets", b"[" * NESTED + b"]" * NESTED, 400, "Expected `object`, got `array`"),
    Case("nested-in-data", b'{"source": 1, "destination": 1, "data": ' + b"[" * NESTED + b"]" * NESTED + b"}", 400,
         "maximum recursion depth"),
    Case("nested-in-extra-args", json.dumps(job(chat(extra_args={"a": "@"}))).encode().replace(
         b'"@"', b'{"a":' * NESTED + b"1" + b"}" * NESTED), 400, "maximum recursion depth"),
    Case("raw-nul-byte", json.dumps(job(chat("a@b"))).encode().replace(b"@", b"\x00"), 400, "JSON is malformed"),
    Case("nul-in-content", job(chat("a\u0000b")), 400, "NUL characters are not allowed"),
    Case("nul-in-model", job(chat(model="gpt-4\u0000")), 400, "NUL characters are not allowed"),
    Case("invalid-utf8", json.dumps(job(chat("a@b"))).encode().replace(b"@", b"\xff\xfe"), 400, "utf-8"),
    Case("lone-surrogate", json.dumps(job(chat("\ud800")), ensure_ascii=True).encode(), 400, "JSON is malformed"),
]


@pytest.fixture(scope="module")
def url(provider_server: ProviderDouble) -> Iterator[str]:
    """One service for the module (limits lowered so that breaking them is cheap), GooseAI served too."""
    env = service_env(provider_server, GOOSEAI_API_KEY=KEY, GOOSEAI_BASE_URL=f"{provider_server.url}/v1",
                      CSS_MAX_MESSAGES=str(MAX_MESSAGES), CSS_MAX_BODY_BYTES=str(MAX_BODY))
    server = InProcessServer(create_app(load_settings(environ=env, dotenv=None)))
    yield server.start()
    server.stop()


def send(http: httpx.Client, url: str, case: Case) -> httpx.Response:
    return http.post(f"{url}/service_output", content=case.content, headers={"content-type": case.content_type})


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id, marks=requires_plugin(case.plugin)) for case in CASES])
def test_bad_input_is_a_4xx_that_says_what_is_wrong(url: str, http: httpx.Client, case: Case) -> None:
    description = assert_error(send(http, url, case), case.status)
    # case-insensitive: some descriptions carry the JSON decoder's words, whose case is not ours
    # (msgspec 0.23 says "Invalid UTF-8 encoded string")
    assert case.fragment.lower() in description.lower(), description
    assert http.get(f"{url}/").status_code == 200


@openai
def test_the_whole_battery_at_once_leaves_the_service_healthy(url: str, http: httpx.Client) -> None:
    cases = [case for case in CASES if case.plugin in installed_plugin_modules()] * 2
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda case: send(http, url, case), cases))
    assert [r.status_code for r in responses] == [case.status for case in cases]
    assert http.get(f"{url}/").status_code == 200
    assert http.post(f"{url}/service_output", json=job(chat("still here"), destination=OFFCHAIN)).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/service_output", 405), ("PUT", "/service_output", 405), ("POST", "/no-such-route", 404)],
)
def test_wrong_route_or_method_is_a_json_error(
    url: str, http: httpx.Client, method: str, path: str, status: int
) -> None:
    assert_error(http.request(method, url + path, json=job(chat())), status)


# -- what a job may not change: the provider's URL, host, headers and key -------------------------------------


@requires_plugin("css_goose")
@pytest.mark.parametrize(
    ("model", "forwarded"),
    [("..", False), (".", False), ("../../v2/admin", True), ("a?b=1", True), ("x#fragment", True), ("a/b", True),
     ("%2e%2e%2fadmin", True), ("a b\r\nHost: evil", True), ("\\..", True), ("..;", True)],
)
def test_goose_model_cannot_leave_the_engines_path(
    double: ProviderDouble, url: str, http: httpx.Client, model: str, forwarded: bool
) -> None:
    response = post_job(http, url, job(chat(model=model, provider="GOOSEAI")))
    if not forwarded:
        assert_error(response, 400, "would change the provider's URL")
        assert double.requests == []
        return
    assert response.status_code == 200, response.text
    (request,) = double.requests
    assert request.headers["host"] == f"127.0.0.1:{double.port}"
    root, v1, engines, engine, completions = request.path.split("/")  # exactly one segment for the model
    assert (root, v1, engines, completions) == ("", "v1", "engines", "completions")
    assert unquote(engine) == model
    assert response.json() == {"output": double.expected_reply(engine, "hi")}


@openai
@pytest.mark.parametrize(
    ("provider", "path"),
    [("OPENAI", "/v1/chat/completions"),
     pytest.param("GOOSEAI", "/v1/engines/gpt-neo-20b/completions", marks=requires_plugin("css_goose"))],
)
def test_extra_args_are_body_fields_only(
    double: ProviderDouble, url: str, http: httpx.Client, provider: str, path: str
) -> None:
    hostile = {"headers": {"Authorization": "Bearer evil", "Host": "evil.example"}, "api_key": "x",
               "Authorization": "Bearer evil", "url": "http://evil.example/", "base_url": "http://evil.example/",
               "path": "/evil", "model_path": "../../evil"}
    response = post_job(http, url, job(chat(model="gpt-neo-20b", provider=provider, extra_args=hostile)))
    assert response.status_code == 200, response.text
    (request,) = double.requests
    assert (request.method, request.path) == ("POST", path)
    assert request.headers["host"] == f"127.0.0.1:{double.port}"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert {k: v for k, v in request.json.items() if k in hostile} == hostile  # sent on, as body fields
