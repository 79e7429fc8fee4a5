"""An answer without text, from every bundled plugin, streamed or not: one rule.

A 200 whose answer holds nothing to deliver (no choices, a null or empty text, a refusal, a
blocked prompt, an empty embedding) ends the job as a 502 naming the provider's reason. It
is retried only when another try could differ: a refusal, a content filter, a length stop
or a tool call costs one billable call, not three.

Each provider's double answers a scripted 200 (a `Route`), valid by the provider's API, to
a plain job and to a streamed one; the service runs under uvicorn on a loopback port.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from css_core.testing import Event, ProviderDouble, RecordedRequest, Route, Stream
from tests.conftest import KEY, OFFCHAIN, STREAM, assert_error, job, post_job
from tests.helpers import requires_plugin

TRIES = 3  # CSS_REQUEST_TRIES's default
REFUSAL = "I'm sorry, I can't help with that."


@dataclass(frozen=True)
class Answer:
    """A 200 without text: its plain body, its stream's events, what the 502 says, and whether
    another try could differ."""

    name: str
    plain: Any
    events: list[Any]
    reason: tuple[str, ...]
    retried: bool


@dataclass(frozen=True)
class Provider:
    """A bundled plugin (or a configured OpenAI-compatible provider) and how its double answers."""

    name: str
    module: str | None  # the plugin it needs; None: served by configuration
    double: str  # the fixture of its double
    model: str
    env: Callable[[str], dict[str, str]]  # its variables, for the double's URL
    routes: Callable[[Answer], list[Route]]  # the double's routes answering `answer`

    def request(self, endpoint: str = "completions") -> dict[str, Any]:
        params = {"input": "hi"} if endpoint == "embeddings" else {"messages": [{"role": "user", "content": "hi"}]}
        return {"provider": self.name, "endpoint": endpoint, "model": self.model, "params": params}


def plain_or_streamed(path: str, done: bool) -> Callable[[Answer], list[Route]]:
    """One route at `path` answering the plain body, or the stream when the body asks for one."""

    def routes(answer: Answer) -> list[Route]:
        def respond(request: RecordedRequest) -> Any:
            streamed = isinstance(request.json, dict) and request.json.get("stream") is True
            return Stream(answer.events, done=done) if streamed else answer.plain

        return [Route("POST", path, respond)]

    return routes


def gemini_routes(answer: Answer) -> list[Route]:
    return [Route("POST", r":generateContent", answer.plain),
            Route("POST", r":streamGenerateContent", Stream(answer.events), query={"alt": "sse"}),
            Route("POST", r":embedContent", answer.plain)]


def keyed(name: str, base: str) -> Callable[[str], dict[str, str]]:
    return lambda url: {f"{name}_API_KEY": KEY, f"{name}_BASE_URL": url + base}


def compatible(url: str) -> dict[str, str]:
    entry = {"base_url": f"{url}/v1", "api_key_env": "CSS_TEST_LOCAL_KEY", "endpoints": ["completions", "embeddings"]}
    return {"CSS_OPENAI_COMPATIBLE": json.dumps({"LOCAL": entry}), "CSS_TEST_LOCAL_KEY": KEY}


CHAT = plain_or_streamed(r"/chat/completions", done=True)
OPENAI = Provider("OPENAI", "css_openai", "provider_server", "gpt-4o", keyed("OPENAI", "/v1"), CHAT)
PERPLEXITY = Provider("PERPLEXITYAI", "css_perplexity", "provider_server", "sonar", keyed("PERPLEXITYAI", ""), CHAT)
LOCAL = Provider("LOCAL", None, "provider_server", "llama3", compatible, CHAT)
GOOSE = Provider("GOOSEAI", "css_goose", "provider_server", "gpt-neo-20b", keyed("GOOSEAI", "/v1"),
                 plain_or_streamed(r"/engines/[^/]*/completions", done=True))
ANTHROPIC = Provider("ANTHROPIC", "css_anthropic", "anthropic_server", "claude-sonnet-4-5", keyed("ANTHROPIC", ""),
                     plain_or_streamed(r"/v1/messages", done=False))
GEMINI = Provider("GEMINI", "css_gemini", "gemini_server", "gemini-2.5-flash", keyed("GEMINI", ""), gemini_routes)


# -- OpenAI's chat completions (OPENAI, PERPLEXITYAI, LOCAL) -----------------------------------------


def completion(finish: str | None, **message: Any) -> dict[str, Any]:
    choice = {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o", "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": 9, "total_tokens": 10}}


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


ROLE = chunk({"role": "assistant", "content": "", "refusal": None})
USAGE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],  # asked by stream_options
         "usage": {"prompt_tokens": 1, "completion_tokens": 9, "total_tokens": 10}}
TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
CHAT_ANSWERS = [
    Answer("no-choices", {**completion(None), "choices": []}, [USAGE], ("answered no text (no choices)",), True),
    Answer("refusal", completion("stop", content=None, refusal=REFUSAL),
           [ROLE, chunk({"refusal": REFUSAL[:13]}), chunk({"refusal": REFUSAL[13:]}), chunk({}, "stop"), USAGE],
           ("refused to answer", REFUSAL), False),
    Answer("length", completion("length", content=""), [ROLE, chunk({}, "length"), USAGE],
           ("answered no text (finish_reason: length)", "token"), False),
    Answer("content-filter", completion("content_filter", content=None), [ROLE, chunk({}, "content_filter"), USAGE],
           ("answered no text (finish_reason: content_filter)",), False),
    Answer("tool-calls", completion("tool_calls", content=None, tool_calls=[TOOL_CALL]),
           [ROLE, chunk({"tool_calls": [{"index": 0, **TOOL_CALL}]}), chunk({}, "tool_calls"), USAGE],
           ("answered no text (finish_reason: tool_calls)", "tool"), False),
    Answer("empty-stop", completion("stop", content=""), [ROLE, chunk({"content": ""}), chunk({}, "stop"), USAGE],
           ("answered no text (finish_reason: stop)",), True),
]


# -- GooseAI's completions ---------------------------------------------------------------------------


def goose(finish: str | None, *choices: str) -> dict[str, Any]:
    return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "gpt-neo-20b",
            "choices": [{"text": text, "index": 0, "finish_reason": finish} for text in choices]}


GOOSE_ANSWERS = [
    Answer("no-choices", goose(None), [goose(None)], ("answered no text (no choices)",), True),
    Answer("length", goose("length", ""), [goose(None, ""), goose("length", "")],
           ("answered no text (finish_reason: length)",), False),
    Answer("empty-stop", goose("stop", ""), [goose(None, ""), goose("stop", "")],
           ("answered no text (finish_reason: stop)",), True),
]


# -- Anthropic's messages ----------------------------------------------------------------------------


def message(stop_reason: str | None, *content: dict[str, Any]) -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            **({"content": list(content)} if content else {}), "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 9}}


def events(stop_reason: str, *blocks: tuple[dict[str, Any], dict[str, Any]]) -> list[Event]:
    """A streamed message: each (block, delta) is a content block and its one delta, then the stop."""
    started = {"type": "message_start", "message": {**message(None), "content": [], "stop_reason": None}}
    found: list[dict[str, Any]] = [started]
    for index, (block, delta) in enumerate(blocks):
        found += [{"type": "content_block_start", "index": index, "content_block": block},
                  {"type": "content_block_delta", "index": index, "delta": delta},
                  {"type": "content_block_stop", "index": index}]
    found += [{"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
               "usage": {"output_tokens": 9}}, {"type": "message_stop"}]
    return [Event(data, data["type"]) for data in found]


THINKING = {"type": "thinking", "thinking": "Let me think", "signature": "sig"}
TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
ANTHROPIC_ANSWERS = [
    Answer("refusal", message("refusal", {"type": "text", "text": ""}), events("refusal"),
           ("ANTHROPIC refused to answer (stop_reason: refusal)",), False),
    Answer("max-tokens", message("max_tokens", THINKING),
           events("max_tokens", ({**THINKING, "thinking": ""}, {"type": "thinking_delta", "thinking": "Let me"})),
           ("answered no text (stop_reason: max_tokens)", "token"), False),
    Answer("tool-use", message("tool_use", TOOL_USE),
           events("tool_use", ({**TOOL_USE, "input": {}}, {"type": "input_json_delta", "partial_json": "{}"})),
           ("answered no text (stop_reason: tool_use)", "tool"), False),
    Answer("no-content", message("end_turn"), events("end_turn"), ("answered no text (stop_reason: end_turn)",), True),
]


# -- Gemini's generateContent ------------------------------------------------------------------------


def candidate(*parts: dict[str, Any], finish: str | None = "STOP") -> dict[str, Any]:
    content: dict[str, Any] = {"role": "model", **({"parts": list(parts)} if parts else {})}
    return {"candidates": [{"content": content, "index": 0, **({"finishReason": finish} if finish else {})}],
            "modelVersion": "gemini-2.5-flash"}


GEMINI_USAGE = {"usageMetadata": {"promptTokenCount": 5, "thoughtsTokenCount": 9}, "modelVersion": "gemini-2.5-flash"}
BLOCKED = {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, **GEMINI_USAGE}
SAFETY = candidate(finish="SAFETY")
SAFETY["candidates"][0]["safetyRatings"] = [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH"}]
THOUGHT = {"text": "Let me think…", "thought": True}
GEMINI_ANSWERS = [
    Answer("blocked-prompt", BLOCKED, [BLOCKED], ("GEMINI blocked the prompt (blockReason: PROHIBITED_CONTENT)",),
           False),
    Answer("safety", SAFETY, [SAFETY], ("answered no text (finishReason: SAFETY)",), False),
    Answer("thoughts-only", candidate(THOUGHT, finish="MAX_TOKENS"),
           [candidate(THOUGHT, finish=None), candidate(finish="MAX_TOKENS"), GEMINI_USAGE],
           ("answered no text (finishReason: MAX_TOKENS)", "token"), False),
    Answer("no-candidates", GEMINI_USAGE, [GEMINI_USAGE], ("answered no text (no candidates)",), True),
    Answer("empty-stop", candidate({"text": ""}), [candidate({"text": ""}, finish=None), candidate(), GEMINI_USAGE],
           ("answered no text (finishReason: STOP)",), True),
]


def cases(*table: tuple[Provider, list[Answer]]) -> list[Any]:
    return [pytest.param(provider, answer, id=f"{provider.name}-{answer.name}",
                         marks=[requires_plugin(provider.module)] if provider.module else [])
            for provider, answers in table for answer in answers]


# -- the service in front of each double -------------------------------------------------------------


@pytest.fixture(scope="module")
def anthropic_server() -> Iterator[ProviderDouble]:
    with ProviderDouble.anthropic(KEY) as double:
        yield double


@pytest.fixture(scope="module")
def gemini_server() -> Iterator[ProviderDouble]:
    with ProviderDouble.gemini(KEY) as double:
        yield double


@pytest.fixture
def its_double(provider: Provider, request: pytest.FixtureRequest) -> Iterator[ProviderDouble]:
    """The provider's double, with no requests, routes or faults left from other tests."""
    double: ProviderDouble = request.getfixturevalue(provider.double)
    double.reset()
    yield double
    double.reset()
    double.api_key = KEY


@pytest.fixture
def url(provider: Provider, its_double: ProviderDouble, serve: Callable[..., str]) -> str:
    fast = {"CSS_REQUEST_DELAY": "0.01", "CSS_REQUEST_JITTER": "[0, 0]", "CSS_REQUEST_TIMEOUT": "5"}
    return serve({**provider.env(its_double.url), **fast})


def assert_fails_naming(http: httpx.Client, url: str, double: ProviderDouble, data: dict[str, Any], destination: int,
                        provider: Provider, answer: Answer) -> None:
    """The job is a 502 naming the provider and the reason, after one call or every try."""
    tries = TRIES if answer.retried else 1
    sent = len(double.requests)
    response = post_job(http, url, job(data, destination=destination))
    assert_error(response, 502, f"{provider.name} failed after {tries} attempt(s); last error: {provider.name} ",
                 *answer.reason)
    assert len(double.requests) - sent == tries


# -- the tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "answer"), cases(
    (OPENAI, CHAT_ANSWERS), (PERPLEXITY, CHAT_ANSWERS), (LOCAL, CHAT_ANSWERS), (GOOSE, GOOSE_ANSWERS),
    (ANTHROPIC, ANTHROPIC_ANSWERS), (GEMINI, GEMINI_ANSWERS),
))
def test_an_answer_without_text_is_a_502_naming_why_streamed_or_not(
    provider: Provider, answer: Answer, its_double: ProviderDouble, url: str, http: httpx.Client
) -> None:
    its_double.add_route(*provider.routes(answer))
    for destination in (OFFCHAIN, STREAM):
        assert_fails_naming(http, url, its_double, provider.request(), destination, provider, answer)


EMPTY_DATA = {"object": "list", "data": [], "model": "text-embedding-3-small", "usage": {"prompt_tokens": 1}}
NO_EMBEDDING = [Answer("empty-data", EMPTY_DATA, [], ("answered no embedding (empty data)",), True)]
NO_VALUES = [Answer("empty-values", {"embedding": {"values": []}}, [], ("answered no embedding (no values)",), True)]


@pytest.mark.parametrize(("provider", "answer"), cases((OPENAI, NO_EMBEDDING), (LOCAL, NO_EMBEDDING),
                                                       (GEMINI, NO_VALUES)))
def test_an_embeddings_answer_without_an_embedding_is_a_502_naming_it(
    provider: Provider, answer: Answer, its_double: ProviderDouble, url: str, http: httpx.Client
) -> None:
    its_double.add_route(Route("POST", r"/embeddings", answer.plain), *provider.routes(answer))
    assert_fails_naming(http, url, its_double, provider.request("embeddings"), OFFCHAIN, provider, answer)
