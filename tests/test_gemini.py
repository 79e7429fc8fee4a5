"""The GEMINI plugin (`css_gemini`) through the real service, over real sockets.

The service (the installed plugins, in-process on a loopback port: `css_core.testing`'s
`ServiceServer`) calls `ProviderDouble.gemini()`, a double of Google's Gemini API
(`x-goog-api-key`, `:generateContent`, `:streamGenerateContent?alt=sse` with CRLF event
lines, `:embedContent`, Google's error shape, `API_KEY_INVALID` for a wrong key). The
module skips where the plugin is not installed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import eth_abi
import httpx
import pytest

from css_core.testing import (
    Fault,
    ProviderDouble,
    RecordedRequest,
    Route,
    ServiceServer,
    Stream,
    gemini_error,
    gemini_routes,
)
from tests.conftest import KEY, OFFCHAIN, ONCHAIN, STREAM, assert_error, job, post_job, run_command
from tests.helpers import requires_plugin
from tests.test_metrics import scrape, token_usage

pytestmark = requires_plugin("css_gemini")

MODEL = "gemini-2.5-flash"
MODEL_PATH = f"/v1beta/models/{MODEL}"
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "system", "content": "Answer in French."},
    {"role": "user", "content": "Héllo ✓"},
]
CONTENTS = [
    {"role": "user", "parts": [{"text": "hi"}]},
    {"role": "model", "parts": [{"text": "Hello! How can I help?"}]},
    {"role": "user", "parts": [{"text": "Héllo ✓"}]},
]
SYSTEM_INSTRUCTION = {"parts": [{"text": "Be brief.\n\nAnswer in French."}]}


# -- the double and the service in front of it ------------------------------------------------------


@pytest.fixture(scope="module")
def gemini_server() -> Iterator[ProviderDouble]:
    with ProviderDouble.gemini(KEY) as double:
        yield double


@pytest.fixture
def double(gemini_server: ProviderDouble) -> Iterator[ProviderDouble]:
    gemini_server.reset()
    yield gemini_server
    gemini_server.reset()
    gemini_server.api_key = KEY


def gemini_env(double: ProviderDouble, **overrides: str) -> dict[str, str]:
    return {"GEMINI_API_KEY": KEY, "GEMINI_BASE_URL": double.url, "CSS_REQUEST_DELAY": "0.01",
            "CSS_REQUEST_JITTER": "[0, 0]", "CSS_REQUEST_TIMEOUT": "5", **overrides}


@pytest.fixture(scope="module")
def url(gemini_server: ProviderDouble) -> Iterator[str]:
    with ServiceServer(gemini_env(gemini_server)) as server:
        yield server.url


def request(messages: list[dict[str, str]] | None = None, model: str = MODEL, **fields: Any) -> dict[str, Any]:
    """An off-chain GEMINI completion request."""
    messages = messages or [{"role": "user", "content": "hi"}]
    return {"provider": "GEMINI", "endpoint": "completions", "model": model, "params": {"messages": messages},
            **fields}


def the_request(double: ProviderDouble, path: str = f"{MODEL_PATH}:generateContent") -> RecordedRequest:
    """The one request the double received, checked to be Gemini's, with the key."""
    assert len(double.requests) == 1, double.requests
    sent = double.requests[0]
    assert (sent.method, sent.target) == ("POST", path)  # the path and query as sent
    assert sent.headers["x-goog-api-key"] == KEY  # the bare key
    assert sent.headers["content-type"] == "application/json"
    assert "authorization" not in sent.headers
    return sent


def answer_first(double: ProviderDouble, method: str, *first: Any) -> None:
    """Answer the next requests to `:{method}` with `first`, one each, then as the double does."""
    builtin = next(r for r in gemini_routes(double) if r.path.endswith(f":{method}"))  # (`alt=sse` first)
    pending = list(first)
    double.add_route(Route("POST", builtin.path, lambda rec: pending.pop(0) if pending else builtin.respond(rec),
                           query=builtin.query))


def candidate(*parts: dict[str, Any], finish: str | None = "STOP") -> dict[str, Any]:
    """A response (or a streamed chunk) with one candidate holding `parts`."""
    content: dict[str, Any] = {"role": "model", **({"parts": list(parts)} if parts else {})}
    return {"candidates": [{"content": content, "index": 0, **({"finishReason": finish} if finish else {})}],
            "modelVersion": MODEL}


RETRY_IN = "type.googleapis.com/google.rpc.RetryInfo"
OVERLOADED = {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}


# -- completions ------------------------------------------------------------------------------------


def test_GEMINI_offchain_completion(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    response = post_job(http, url, job(request(CONVERSATION)))
    assert response.status_code == 200, response.text
    assert response.json() == {"output": double.expected_reply(MODEL, "Héllo ✓")}
    assert the_request(double).json == {"contents": CONTENTS, "systemInstruction": SYSTEM_INSTRUCTION}


def test_GEMINI_without_system_messages_sends_no_instruction(double: ProviderDouble, url: str,
                                                             http: httpx.Client) -> None:
    assert post_job(http, url, job(request())).status_code == 200
    assert the_request(double).json == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def test_GEMINI_model_is_quoted_in_the_path(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    assert post_job(http, url, job(request(model="tunedModels/my model"))).status_code == 200
    the_request(double, "/v1beta/models/tunedModels%2Fmy%20model:generateContent")


@pytest.mark.parametrize("stop", ["END", ["END", "STOP"]], ids=["stop-string", "stop-list"])
def test_GEMINI_options_are_moved_to_generationConfig(double: ProviderDouble, url: str, http: httpx.Client,
                                                      stop: str | list[str]) -> None:
    safety = [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]
    extra = {"temperature": 0.3, "top_p": 0.9, "max_tokens": 64, "stop": stop, "safetySettings": safety,
             "generationConfig": {"topK": 5, "thinkingConfig": {"thinkingBudget": 0}}}
    assert post_job(http, url, job(request(extra_args=extra))).status_code == 200
    assert the_request(double).json == {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "safetySettings": safety,
        "generationConfig": {"temperature": 0.3, "topP": 0.9, "maxOutputTokens": 64,
                             "stopSequences": [stop] if isinstance(stop, str) else stop,
                             "topK": 5, "thinkingConfig": {"thinkingBudget": 0}},
    }


def test_GEMINI_operator_defaults_are_moved_too(double: ProviderDouble, http: httpx.Client) -> None:
    defaults = '{"GEMINI": {"temperature": 0.1, "max_tokens": 256}}'
    with ServiceServer(gemini_env(double, CSS_INF_WORKFLOW_KW_ARGS=defaults)) as server:
        assert post_job(http, server.url, job(request(extra_args={"temperature": 0.7}))).status_code == 200
    assert the_request(double).json["generationConfig"] == {"temperature": 0.7, "maxOutputTokens": 256}


@pytest.mark.parametrize("field", ["contents", "systemInstruction", "content", "model", "stream"])
def test_GEMINI_extra_args_may_not_set_job_fields(double: ProviderDouble, url: str, http: httpx.Client,
                                                  field: str) -> None:
    assert_error(post_job(http, url, job(request(extra_args={field: "x"}))), 400, field)
    assert double.requests == []


def test_GEMINI_onchain_job(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    raw = eth_abi.encode(["uint8", "uint8", "string", "(string,string)[]"],
                         [4, 0, MODEL, [("system", "Be brief."), ("user", "Héllo ✓")]])
    response = post_job(http, url, job("0x" + raw.hex(), source=ONCHAIN, destination=ONCHAIN))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["raw_input"] == raw.hex()
    (output,) = eth_abi.decode(["string"], bytes.fromhex(body["raw_output"]))
    assert output == double.expected_reply(MODEL, "Héllo ✓")
    assert the_request(double).json == {"contents": [{"role": "user", "parts": [{"text": "Héllo ✓"}]}],
                                        "systemInstruction": {"parts": [{"text": "Be brief."}]}}


def test_GEMINI_streamed_job(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    double.reply = "Streamed in pieces — ünïcödé 🎉, one chunk each."
    double.stream_chunks = 6
    response = post_job(http, url, job(request(CONVERSATION), destination=STREAM))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == double.reply
    sent = the_request(double, f"{MODEL_PATH}:streamGenerateContent?alt=sse")
    assert sent.query == {"alt": "sse"}
    assert sent.json == {"contents": CONTENTS, "systemInstruction": SYSTEM_INSTRUCTION}  # no `stream` field
    assert double.wait_for_streams(1) == ["completed"]


@pytest.mark.parametrize("destination", [OFFCHAIN, STREAM], ids=["offchain", "stream"])
def test_GEMINI_thought_parts_are_left_out(double: ProviderDouble, url: str, http: httpx.Client,
                                           destination: int) -> None:
    thought = {"text": "**Thinking** the user greets me…", "thought": True}
    if destination == STREAM:
        chunks = [candidate(thought, finish=None), candidate({"text": "Bon"}, finish=None),
                  candidate({"text": "jour !"}, thought, finish=None), candidate({"text": ""}),
                  {"usageMetadata": {"promptTokenCount": 1, "thoughtsTokenCount": 9}}]
        answer_first(double, "streamGenerateContent", Stream(chunks))
    else:
        answer_first(double, "generateContent", candidate(thought, {"text": "Bon"}, {"text": "jour !"}))
    response = post_job(http, url, job(request(), destination=destination))
    assert response.status_code == 200, response.text
    assert (response.text if destination == STREAM else response.json()["output"]) == "Bonjour !"


# -- an answer without text -------------------------------------------------------------------------


BLOCKED = {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
           "usageMetadata": {"promptTokenCount": 5, "totalTokenCount": 5}, "modelVersion": MODEL}
STOPPED = candidate(finish="SAFETY")
STOPPED["candidates"][0]["safetyRatings"] = [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH"}]
THOUGHTS_ONLY = candidate({"text": "Let me think…", "thought": True}, finish="MAX_TOKENS")  # out of tokens


# A stream whose chunks all end normally (STOP, MAX_TOKENS) without text: each chunk alone is
# fine (the last one of a stream often has no text); `css_stream_without_text` names why.
# Each reason here would come back the same: one call, not retried (see also
# tests/test_answers_without_text.py).
WITHOUT_TEXT = [
    pytest.param(answer, reason, destination, id=f"{name}-{where}")
    for name, answer, reason in [("blocked-prompt", BLOCKED, "blockReason: PROHIBITED_CONTENT"),
                                 ("safety-stop", STOPPED, "finishReason: SAFETY"),
                                 ("thoughts-only", THOUGHTS_ONLY, "finishReason: MAX_TOKENS")]
    for where, destination in [("offchain", OFFCHAIN), ("stream", STREAM)]
]


@pytest.mark.parametrize(("answer", "reason", "destination"), WITHOUT_TEXT)
def test_GEMINI_answer_without_text_is_an_error_naming_why(double: ProviderDouble, url: str, http: httpx.Client,
                                                           answer: dict[str, Any], reason: str,
                                                           destination: int) -> None:
    if destination == STREAM:
        answer_first(double, "streamGenerateContent", *[Stream([answer])] * 3)
    else:
        answer_first(double, "generateContent", *[answer] * 3)
    response = post_job(http, url, job(request(), destination=destination))
    assert_error(response, 502, "GEMINI failed after 1 attempt(s)", reason)
    assert len(double.requests) == 1


# -- failures ---------------------------------------------------------------------------------------


def test_GEMINI_503_with_RetryInfo_is_retried_after_its_delay(double: ProviderDouble, url: str,
                                                              http: httpx.Client) -> None:
    details = [{"@type": RETRY_IN, "retryDelay": "0.4s"}]
    double.script(Fault.status(503, body={"error": {**OVERLOADED, "details": details}}))
    started = time.monotonic()
    response = post_job(http, url, job(request()))
    assert response.json() == {"output": double.expected_reply(MODEL, "hi")}
    assert time.monotonic() - started >= 0.4  # Gemini's hint, not CSS_REQUEST_DELAY's 0.01 s
    assert len(double.requests) == 2


def test_GEMINI_Retry_After_wins_over_RetryInfo(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    details = [{"@type": RETRY_IN, "retryDelay": "600s"}]  # longer than the job's deadline
    quota = gemini_error(429, "You exceeded your current quota.")["error"]
    double.script(Fault.status(429, retry_after="0", body={"error": {**quota, "details": details}}))
    # with the body's hint the job would give up (the wait passes its deadline) after 1 request
    assert post_job(http, url, job(request(), destination=STREAM)).text == double.expected_reply(MODEL, "hi")
    assert len(double.requests) == 2


def test_GEMINI_unavailable_every_time_is_a_502(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    double.script(*[Fault.status(503, body={"error": OVERLOADED})] * 3)
    assert_error(post_job(http, url, job(request())), 502, "GEMINI failed after 3 attempt(s)",
                 "UNAVAILABLE: The model is overloaded")


def test_GEMINI_wrong_key_is_a_502(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    double.api_key = "AIza-another-key"  # Gemini answers 400 API_KEY_INVALID
    assert_error(post_job(http, url, job(request())), 502, "GEMINI refused this service's API key",
                 "API key not valid. Please pass a valid API key.")
    assert len(double.requests) == 1  # not retried


def test_GEMINI_403_refuses_the_key(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    double.script(Fault.status(403, body=gemini_error(403, "Method doesn't allow unregistered callers.")))
    assert_error(post_job(http, url, job(request())), 502, "GEMINI refused this service's API key",
                 "PERMISSION_DENIED: Method doesn't allow unregistered callers.")


def test_GEMINI_400_is_our_400_quoting_gemini(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    message = "* GenerateContentRequest.generation_config.temperature: must be between 0 and 2"
    double.script(Fault.status(400, body=gemini_error(400, message, reason="BAD_REQUEST")))
    response = post_job(http, url, job(request(extra_args={"temperature": 7})))
    assert_error(response, 400, "GEMINI rejected the request", f"INVALID_ARGUMENT: {message}")
    assert len(double.requests) == 1


def test_GEMINI_error_chunk_before_the_first_text_is_retried(double: ProviderDouble, url: str,
                                                             http: httpx.Client) -> None:
    answer_first(double, "streamGenerateContent", Stream([{"error": OVERLOADED}]))
    response = post_job(http, url, job(request(), destination=STREAM))
    assert response.status_code == 200, response.text
    assert response.text == double.expected_reply(MODEL, "hi")
    assert len(double.requests) == 2


def test_GEMINI_error_chunks_every_time_are_a_502(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    answer_first(double, "streamGenerateContent", *[Stream([{"error": OVERLOADED}])] * 3)
    assert_error(post_job(http, url, job(request(), destination=STREAM)), 502,
                 "GEMINI failed after 3 attempt(s)", "The model is overloaded")


# -- embeddings -------------------------------------------------------------------------------------


def test_GEMINI_embeddings(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    data = {"provider": "GEMINI", "endpoint": "embeddings", "model": "text-embedding-004",
            "params": {"input": "Héllo ✓"}}
    response = post_job(http, url, job(data))
    assert response.status_code == 200, response.text
    assert response.json() == {"output": double.embedding_for("Héllo ✓")}
    sent = the_request(double, "/v1beta/models/text-embedding-004:embedContent")
    assert sent.json == {"content": {"parts": [{"text": "Héllo ✓"}]}}


# -- configuration ----------------------------------------------------------------------------------


def test_GEMINI_in_the_plugins_command_and_catalogue(url: str, http: httpx.Client, tmp_path: Path) -> None:
    result = run_command("plugins", env={}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("css-gemini ")]
    assert line.split()[2:6] == ["GEMINI", "4", "completions,embeddings", "GEMINI_API_KEY"]
    assert "GEMINI_API_KEY NOT SET" in line
    resources = http.get(url + "/service-resources").json()
    models = [m["name"] for m in resources["compute_capability"][0]["models"] if m["owner"] == "GEMINI"]
    assert {"gemini-2.5-pro", "gemini-2.5-flash", "text-embedding-004"} <= set(models)


@pytest.mark.parametrize("destination", [OFFCHAIN, STREAM], ids=["offchain", "stream"])
def test_GEMINI_usage_is_counted(double: ProviderDouble, url: str, http: httpx.Client, destination: int) -> None:
    before = scrape(http, url)
    double.reply, double.stream_chunks = "five words in this reply", 3
    conversation = [{"role": "user", "content": "one two three"}]
    response = post_job(http, url, job(request(conversation), destination=destination))
    assert response.status_code == 200, response.text
    assert token_usage(before, scrape(http, url), "gcp.gemini", MODEL) == (3, 5)
