"""Typed answers at every bundled provider: each plugin asks for JSON of the answer's schema in
its provider's own form, and reads the answer back.

OpenAI, Azure and a configured OpenAI-compatible provider send structured outputs
(`response_format` of type `json_schema`, strict), Perplexity the same without `strict`,
Anthropic one forced tool whose input is the answer, Gemini `generationConfig.responseSchema`
in its own Schema form; GooseAI cannot, and a typed job there is a 400 before any call.

Each provider's double (the kit's built-in routes, which answer a typed request with a value
of its schema, or a scripted `Route` in the provider's shape) runs on a loopback port, and
the service in front of it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from css_core.jobs.answer_type import AnswerType
from css_core.testing import ProviderDouble, Route, azure_error, azure_routes
from tests.conftest import KEY, OFFCHAIN, assert_error, job, post_job
from tests.helpers import requires_plugin

VERDICT = "(bool approved, uint8 confidence)"
SCHEMA = AnswerType.parse(VERDICT).json_schema()
SCRIPTED = {"approved": False, "confidence": 87}
# Gemini's form of SCHEMA: types in capitals, no additionalProperties, the keys' order
GEMINI_SCHEMA = {
    "type": "OBJECT", "required": ["approved", "confidence"], "propertyOrdering": ["approved", "confidence"],
    "properties": {"approved": {"type": "BOOLEAN"}, "confidence": {"type": "INTEGER", "minimum": 0, "maximum": 255}},
}
STRICT = {"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "strict": True,
                                                                     "schema": SCHEMA}}}


def completion(content: str) -> dict[str, Any]:
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m", "choices": [choice],
            "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}}


def message(*content: dict[str, Any], stop_reason: str = "tool_use") -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": list(content), "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 9}}


def tool_use(answer: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": "toolu_1", "name": "answer", "input": answer}


def candidate(text: str) -> dict[str, Any]:
    return {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 9}}


def anthropic_asked(body: dict[str, Any]) -> dict[str, Any]:
    """The fields of Anthropic's that ask for the answer; the tool's description only needs to be there."""
    tools = [dict(tool) for tool in body.get("tools", [])]
    for tool in tools:
        assert isinstance(tool.pop("description", None), str) and tool
    return {"tools": tools, "tool_choice": body.get("tool_choice")}


@dataclass(frozen=True)
class Provider:
    """A bundled plugin (or a configured OpenAI-compatible provider), its double, and what a typed
    request to it carries and how its provider answers one."""

    name: str
    module: str | None  # the plugin it needs; None: served by configuration
    double: str  # the fixture of its double
    model: str
    env: Callable[[str], dict[str, str]]  # its variables, for the double's URL
    path: str  # the route answering its completions
    asked: Callable[[dict[str, Any]], dict[str, Any]]  # the fields of a request body that ask for the answer
    fields: dict[str, Any]  # what they must be for SCHEMA
    answer: Callable[[dict[str, Any]], dict[str, Any]]  # the provider's answer holding a typed answer

    def request(self, answer_type: str = VERDICT, **extra_args: Any) -> dict[str, Any]:
        params = {"messages": [{"role": "user", "content": "Approve the loan?"}], "answer_type": answer_type}
        return {"provider": self.name, "endpoint": "completions", "model": self.model, "params": params,
                **({"extra_args": extra_args} if extra_args else {})}


def keyed(name: str, base: str) -> Callable[[str], dict[str, str]]:
    return lambda url: {f"{name}_API_KEY": KEY, f"{name}_BASE_URL": url + base}


def compatible(url: str) -> dict[str, str]:
    entry = {"base_url": f"{url}/v1", "api_key_env": "CSS_TEST_LOCAL_KEY"}
    return {"CSS_OPENAI_COMPATIBLE": json.dumps({"LOCAL": entry}), "CSS_TEST_LOCAL_KEY": KEY}


def response_format(body: dict[str, Any]) -> dict[str, Any]:
    return {"response_format": body.get("response_format")}


def generation_config(body: dict[str, Any]) -> dict[str, Any]:
    return {"generationConfig": body.get("generationConfig")}


def chat_answer(answer: dict[str, Any]) -> dict[str, Any]:
    return completion(json.dumps(answer))


OPENAI = Provider("OPENAI", "css_openai", "provider_server", "gpt-4o", keyed("OPENAI", "/v1"), r"/chat/completions",
                  response_format, STRICT, chat_answer)
PERPLEXITY = Provider(
    "PERPLEXITYAI", "css_perplexity", "provider_server", "sonar", keyed("PERPLEXITYAI", ""), r"/chat/completions",
    response_format, {"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}},
    chat_answer,
)
AZURE = Provider("AZURE", "css_azure", "azure_server", "my-gpt-4o", keyed("AZURE", ""), r"/chat/completions",
                 response_format, STRICT, chat_answer)
LOCAL = Provider("LOCAL", None, "provider_server", "llama3", compatible, r"/chat/completions", response_format, STRICT,
                 chat_answer)
ANTHROPIC = Provider(
    "ANTHROPIC", "css_anthropic", "anthropic_server", "claude-sonnet-4-5", keyed("ANTHROPIC", ""), r"/v1/messages",
    anthropic_asked,
    {"tools": [{"name": "answer", "input_schema": SCHEMA}], "tool_choice": {"type": "tool", "name": "answer"}},
    lambda answer: message({"type": "text", "text": "Here it is."}, tool_use(answer)),
)
GEMINI = Provider(
    "GEMINI", "css_gemini", "gemini_server", "gemini-2.5-flash", keyed("GEMINI", ""), r":generateContent",
    generation_config, {"generationConfig": {"responseMimeType": "application/json", "responseSchema": GEMINI_SCHEMA}},
    lambda answer: candidate(json.dumps(answer)),
)
TYPED = [pytest.param(provider, id=provider.name, marks=[requires_plugin(provider.module)] if provider.module else [])
         for provider in (OPENAI, PERPLEXITY, AZURE, LOCAL, ANTHROPIC, GEMINI)]


# -- the doubles, and the service in front of each ---------------------------------------------------


@pytest.fixture(scope="module")
def anthropic_server() -> Iterator[ProviderDouble]:
    with ProviderDouble.anthropic(KEY) as double:
        yield double


@pytest.fixture(scope="module")
def gemini_server() -> Iterator[ProviderDouble]:
    with ProviderDouble.gemini(KEY) as double:
        yield double


@pytest.fixture(scope="module")
def azure_server() -> Iterator[ProviderDouble]:
    with ProviderDouble(KEY, routes=azure_routes, auth_header="api-key", auth_scheme=None,
                        error_body=azure_error) as double:
        yield double


@pytest.fixture
def its_double(provider: Provider, request: pytest.FixtureRequest) -> Iterator[ProviderDouble]:
    """The provider's double, with no requests, routes or faults left from other tests."""
    double: ProviderDouble = request.getfixturevalue(provider.double)
    double.reset()
    yield double
    double.reset()
    double.api_key = KEY


FAST = {"CSS_REQUEST_DELAY": "0.01", "CSS_REQUEST_JITTER": "[0, 0]", "CSS_REQUEST_TIMEOUT": "5"}


@pytest.fixture
def url(provider: Provider, its_double: ProviderDouble, serve: Callable[..., str]) -> str:
    return serve({**provider.env(its_double.url), **FAST})


def typed_output(http: httpx.Client, url: str, data: dict[str, Any]) -> Any:
    response = post_job(http, url, job(data, destination=OFFCHAIN))
    assert response.status_code == 200, response.text
    return response.json()


# -- each provider -----------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", TYPED)
def test_a_typed_job_asks_the_provider_for_its_schema_in_the_providers_form(
    provider: Provider, its_double: ProviderDouble, url: str, http: httpx.Client
) -> None:
    """The request carries the provider's structured-output fields with the answer's schema; the
    double's answer of that schema comes back as the typed object."""
    assert typed_output(http, url, provider.request()) == {"output": {"approved": True, "confidence": 1}}
    sent = its_double.requests[-1].json
    assert provider.asked(sent) == provider.fields
    assert sent["messages" if "messages" in sent else "contents"]  # the conversation is still there


@pytest.mark.parametrize("provider", TYPED)
def test_the_providers_answer_in_its_own_shape_is_the_typed_output(
    provider: Provider, its_double: ProviderDouble, url: str, http: httpx.Client
) -> None:
    its_double.add_route(Route("POST", provider.path, provider.answer(SCRIPTED)))
    assert typed_output(http, url, provider.request()) == {"output": SCRIPTED}
    assert len(its_double.requests) == 1


@pytest.mark.parametrize("provider", TYPED)
def test_the_doubles_reply_is_its_typed_answer(
    provider: Provider, its_double: ProviderDouble, url: str, http: httpx.Client
) -> None:
    """The kit's routes answer a typed request with `double.reply` when set (`typed_reply`)."""
    its_double.reply = json.dumps(SCRIPTED)
    assert typed_output(http, url, provider.request()) == {"output": SCRIPTED}


NESTED = "(bool ok, (uint8 score, string note)[2] pairs, uint256 big, int16[] deltas, address who, bytes32 digest)"


@pytest.mark.parametrize("provider", TYPED)
def test_a_nested_type_goes_to_the_provider_whole_and_its_answer_is_read(
    provider: Provider, its_double: ProviderDouble, url: str, http: httpx.Client
) -> None:
    """Arrays, nested tuples, wide integers, addresses and bytes32 through each provider's form
    (the double answers `example_answer` of the schema it was sent)."""
    output = typed_output(http, url, provider.request(NESTED))
    assert output == {"output": {
        "ok": True, "pairs": [{"score": 1, "note": "an answer"}] * 2, "big": 1, "deltas": [1],
        "who": "0x" + "1" * 40, "digest": "0x" + "11" * 32,
    }}


@requires_plugin("css_goose")
def test_gooseai_takes_no_typed_answer_a_400_naming_it_before_any_call(
    double: ProviderDouble, serve: Callable[..., str], http: httpx.Client
) -> None:
    url = serve({**keyed("GOOSEAI", "/v1")(double.url), **FAST})
    data = {"provider": "GOOSEAI", "endpoint": "completions", "model": "gpt-neo-20b",
            "params": {"messages": [{"role": "user", "content": "hi"}], "answer_type": VERDICT}}
    assert_error(post_job(http, url, job(data)), 400, "GOOSEAI")
    assert double.requests == []


# -- Anthropic: the forced tool ----------------------------------------------------------------------


@requires_plugin("css_anthropic")
@pytest.mark.parametrize("provider", [ANTHROPIC], ids=["ANTHROPIC"])
def test_anthropic_a_wide_integer_in_the_tools_input_is_read_exactly(
    provider: Provider, its_double: ProviderDouble, url: str, http: httpx.Client
) -> None:
    """A wide integer in the tool's input, a JSON number past 64 bits, is read exactly."""
    wide = 2**70 + 1
    raw = message(tool_use({"n": 0}))
    body = json.dumps(raw).replace('{"n": 0}', f'{{"n": {wide}}}').encode()
    its_double.add_route(Route("POST", provider.path, body))
    assert typed_output(http, url, provider.request("(uint256 n)")) == {"output": {"n": str(wide)}}


@requires_plugin("css_anthropic")
@pytest.mark.parametrize("provider", [ANTHROPIC], ids=["ANTHROPIC"])
def test_anthropic_without_the_answer_tool_is_a_502_naming_the_stop_reason(
    provider: Provider, its_double: ProviderDouble, url: str, http: httpx.Client
) -> None:
    """Out of tokens before the tool call: named, and not retried (another try would stop the same)."""
    its_double.add_route(Route("POST", provider.path, message({"type": "text", "text": "Let me"},
                                                              stop_reason="max_tokens")))
    response = post_job(http, url, job(provider.request()))
    assert_error(response, 502, "ANTHROPIC answered no typed answer", "stop_reason: max_tokens", "max_tokens")
    assert len(its_double.requests) == 1


# -- Gemini: generationConfig ------------------------------------------------------------------------


@requires_plugin("css_gemini")
@pytest.mark.parametrize("provider", [GEMINI], ids=["GEMINI"])
def test_gemini_the_answers_config_and_the_jobs_options_share_generation_config(
    provider: Provider, its_double: ProviderDouble, url: str, http: httpx.Client
) -> None:
    """The job's sampling options and its own `generationConfig` join the answer's; a job's
    `responseMimeType` cannot turn the typed answer into text."""
    data = provider.request(temperature=0.2, generationConfig={"topK": 3, "responseMimeType": "text/plain"})
    assert typed_output(http, url, data) == {"output": {"approved": True, "confidence": 1}}
    assert its_double.requests[-1].json["generationConfig"] == {
        "temperature": 0.2, "topK": 3, "responseMimeType": "application/json", "responseSchema": GEMINI_SCHEMA,
    }


# -- Azure: API versions before structured outputs ---------------------------------------------------


@requires_plugin("css_azure")
@pytest.mark.parametrize("provider", [AZURE], ids=["AZURE"])
def test_azure_before_structured_outputs_takes_no_typed_answer(
    provider: Provider, its_double: ProviderDouble, serve: Callable[..., str], http: httpx.Client
) -> None:
    url = serve({**provider.env(its_double.url), **FAST, "AZURE_API_VERSION": "2024-06-01"})
    assert_error(post_job(http, url, job(provider.request())), 400, "AZURE")
    assert its_double.requests == []
    assert typed_output(http, url, {**provider.request(), "params": {"messages": [{"role": "user", "content": "hi"}]}})
