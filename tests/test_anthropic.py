"""The ANTHROPIC plugin (`css_anthropic`) through the real service, over real sockets.

The service (the installed plugins, in-process on a loopback port: `css_core.testing`'s
`ServiceServer`) calls `ProviderDouble.anthropic()`, a double of Anthropic's Messages API
(`x-api-key`, a required `anthropic-version`, named stream events, its error shape). The
module skips where the plugin is not installed.
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
from css_core.providers.registry import build_registry
from css_core.testing import (
    Event,
    Fault,
    Framing,
    ProviderDouble,
    RecordedRequest,
    Route,
    ServiceServer,
    Stream,
    anthropic_routes,
)
from tests.conftest import KEY, OFFCHAIN, ONCHAIN, STREAM, assert_error, job, post_job, run_command
from tests.helpers import requires_plugin
from tests.test_metrics import scrape, token_usage

pytestmark = requires_plugin("css_anthropic")

MODEL = "claude-sonnet-4-5"
PATH = "/v1/messages"
SYSTEM_TO_USER = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "system", "content": "Answer in French."},
    {"role": "user", "content": "Héllo ✓"},
]


# -- the double and the service in front of it ------------------------------------------------------


@pytest.fixture(scope="module")
def anthropic_server() -> Iterator[ProviderDouble]:
    with ProviderDouble.anthropic(KEY) as double:
        yield double


@pytest.fixture
def double(anthropic_server: ProviderDouble) -> Iterator[ProviderDouble]:
    anthropic_server.reset()
    yield anthropic_server
    anthropic_server.reset()
    anthropic_server.api_key = KEY


def anthropic_env(double: ProviderDouble, **overrides: str) -> dict[str, str]:
    return {"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": double.url, "CSS_REQUEST_DELAY": "0.01",
            "CSS_REQUEST_JITTER": "[0, 0]", "CSS_REQUEST_TIMEOUT": "5", **overrides}


@pytest.fixture(scope="module")
def url(anthropic_server: ProviderDouble) -> Iterator[str]:
    with ServiceServer(anthropic_env(anthropic_server)) as server:
        yield server.url


def request(messages: list[dict[str, str]] | None = None, **fields: Any) -> dict[str, Any]:
    """An off-chain ANTHROPIC completion request."""
    messages = messages or [{"role": "user", "content": "hi"}]
    return {"provider": "ANTHROPIC", "endpoint": "completions", "model": MODEL, "params": {"messages": messages},
            **fields}


def the_request(double: ProviderDouble) -> RecordedRequest:
    """The one request the double received, checked to be Anthropic's, with the key and version."""
    assert len(double.requests) == 1, double.requests
    sent = double.requests[0]
    assert (sent.method, sent.path) == ("POST", PATH)
    assert sent.headers["x-api-key"] == KEY  # the bare key
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["content-type"] == "application/json"
    assert "authorization" not in sent.headers
    return sent


def replay_after(double: ProviderDouble, *first: Any) -> None:
    """Answer the next requests with `first`, one each, then as the double does."""
    messages = anthropic_routes(double)[0]
    pending = list(first)
    double.add_route(Route("POST", PATH, lambda rec: pending.pop(0) if pending else messages.respond(rec)))


def text_delta(text: str) -> Event:
    return Event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
                 "content_block_delta")


MESSAGE_START = Event({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                            "model": MODEL, "content": [], "stop_reason": None}},
                      "message_start")
OVERLOADED = Event({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error")


# -- completions ------------------------------------------------------------------------------------


def test_ANTHROPIC_offchain_completion(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    response = post_job(http, url, job(request(SYSTEM_TO_USER)))
    assert response.status_code == 200, response.text
    assert response.json() == {"output": double.expected_reply(MODEL, "Héllo ✓")}
    assert the_request(double).json == {
        "model": MODEL,
        "max_tokens": 1024,
        "system": "Be brief.\n\nAnswer in French.",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Héllo ✓"},
        ],
    }


def test_ANTHROPIC_without_system_messages_sends_no_system(double: ProviderDouble, url: str,
                                                           http: httpx.Client) -> None:
    assert post_job(http, url, job(request())).status_code == 200
    assert the_request(double).json == {"model": MODEL, "max_tokens": 1024,
                                        "messages": [{"role": "user", "content": "hi"}]}


def test_ANTHROPIC_extra_args_set_max_tokens_and_options(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    extra = {"max_tokens": 50, "temperature": 0.2, "stop_sequences": ["\n\nHuman:"]}
    assert post_job(http, url, job(request(extra_args=extra))).status_code == 200
    assert the_request(double).json == {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}


def test_ANTHROPIC_MAX_TOKENS_sets_the_default(double: ProviderDouble, http: httpx.Client) -> None:
    with ServiceServer(anthropic_env(double, ANTHROPIC_MAX_TOKENS="300")) as server:
        assert post_job(http, server.url, job(request())).status_code == 200
        assert the_request(double).json["max_tokens"] == 300
        double.reset()
        assert post_job(http, server.url, job(request(extra_args={"max_tokens": 7}))).status_code == 200
        assert the_request(double).json["max_tokens"] == 7


def test_ANTHROPIC_VERSION_sets_the_header(http: httpx.Client) -> None:
    with ProviderDouble.anthropic(KEY, required_headers={"anthropic-version": "2099-01-01"}) as double, \
            ServiceServer(anthropic_env(double, ANTHROPIC_VERSION="2099-01-01")) as server:
        assert post_job(http, server.url, job(request())).status_code == 200
        assert double.requests[0].headers["anthropic-version"] == "2099-01-01"


@pytest.mark.parametrize("field", ["system", "messages", "model", "stream"])
def test_ANTHROPIC_extra_args_may_not_set_job_fields(double: ProviderDouble, url: str, http: httpx.Client,
                                                     field: str) -> None:
    assert_error(post_job(http, url, job(request(extra_args={field: "x"}))), 400, field)
    assert double.requests == []


def test_ANTHROPIC_onchain_job(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    raw = eth_abi.encode(["uint8", "uint8", "string", "(string,string)[]"],
                         [3, 0, MODEL, [("system", "Be brief."), ("user", "Héllo ✓")]])
    response = post_job(http, url, job("0x" + raw.hex(), source=ONCHAIN, destination=ONCHAIN))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["raw_input"] == raw.hex()
    (output,) = eth_abi.decode(["string"], bytes.fromhex(body["raw_output"]))
    assert output == double.expected_reply(MODEL, "Héllo ✓")
    assert the_request(double).json == {"model": MODEL, "max_tokens": 1024, "system": "Be brief.",
                                        "messages": [{"role": "user", "content": "Héllo ✓"}]}


@pytest.mark.parametrize("framing", [None, Framing(crlf=True, split=True, split_pause=0.01),
                                     Framing(comments=True, multiline=True, compact=True)],
                         ids=["anthropic", "crlf-split", "comments-multiline"])
def test_ANTHROPIC_streamed_job(double: ProviderDouble, url: str, http: httpx.Client,
                                framing: Framing | None) -> None:
    double.reply = "Streamed in pieces — ünïcödé 🎉, one event each."
    double.stream_chunks = 6
    if framing is not None:
        double.framing = framing
    response = post_job(http, url, job(request(SYSTEM_TO_USER), destination=STREAM))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == double.reply
    assert the_request(double).json["stream"] is True
    assert double.wait_for_streams(1) == ["completed"]


def test_ANTHROPIC_non_text_deltas_are_skipped(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    thinking = Event({"type": "content_block_delta", "index": 0,
                      "delta": {"type": "thinking_delta", "thinking": "Let me think"}}, "content_block_delta")
    replay_after(double, Stream([MESSAGE_START, thinking, Event({"type": "ping"}, "ping"), text_delta("Bonjour"),
                                 text_delta(" !"), Event({"type": "message_stop"}, "message_stop")]))
    response = post_job(http, url, job(request(), destination=STREAM))
    assert response.text == "Bonjour !"


# -- failures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("destination", [OFFCHAIN, STREAM], ids=["offchain", "stream"])
def test_ANTHROPIC_overloaded_529_is_retried(double: ProviderDouble, url: str, http: httpx.Client,
                                            destination: int) -> None:
    double.script(Fault.status(529), Fault.status(529, retry_after="0"))
    response = post_job(http, url, job(request(), destination=destination))
    assert response.status_code == 200, response.text
    expected = double.expected_reply(MODEL, "hi")
    assert (response.text if destination == STREAM else response.json()["output"]) == expected
    assert len(double.requests) == 3


def test_ANTHROPIC_overloaded_every_time_is_a_502(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    double.script(*[Fault.status(529)] * 3)
    assert_error(post_job(http, url, job(request())), 502, "ANTHROPIC failed after 3 attempt(s)",
                 "overloaded_error: Overloaded")


def test_ANTHROPIC_wrong_key_is_a_502_quoting_anthropic(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    double.api_key = "sk-ant-another-key"
    response = post_job(http, url, job(request()))
    assert_error(response, 502, "ANTHROPIC refused this service's API key",
                 "authentication_error: invalid x-api-key")
    assert len(double.requests) == 1  # not retried


def test_ANTHROPIC_400_is_our_400_quoting_anthropic(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    response = post_job(http, url, job(request(extra_args={"max_tokens": 0})))  # the API refuses it
    assert_error(response, 400, "ANTHROPIC rejected the request", "invalid_request_error: max_tokens: Field required")
    assert len(double.requests) == 1


def test_ANTHROPIC_error_answer_not_in_its_shape(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    double.script(Fault.status(400, body=b"<html>Bad Request</html>"))
    assert_error(post_job(http, url, job(request())), 400, "<html>Bad Request</html>")


def test_ANTHROPIC_error_event_before_the_first_text_is_retried(double: ProviderDouble, url: str,
                                                                http: httpx.Client) -> None:
    replay_after(double, Stream([MESSAGE_START, Event({"type": "ping"}, "ping"), OVERLOADED]))
    response = post_job(http, url, job(request(), destination=STREAM))
    assert response.status_code == 200, response.text
    assert response.text == double.expected_reply(MODEL, "hi")
    assert len(double.requests) == 2


def test_ANTHROPIC_error_events_every_time_are_a_502(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    replay_after(double, *[Stream([MESSAGE_START, OVERLOADED])] * 3)
    assert_error(post_job(http, url, job(request(), destination=STREAM)), 502,
                 "ANTHROPIC failed after 3 attempt(s)", "overloaded_error: Overloaded")


def test_ANTHROPIC_error_event_after_text_cuts_the_stream(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    replay_after(double, Stream([MESSAGE_START, text_delta("Bonjour, "), OVERLOADED, text_delta("never sent")]))
    with pytest.raises(httpx.RemoteProtocolError), \
            http.stream("POST", f"{url}/service_output", json=job(request(), destination=STREAM)) as response:
        assert response.status_code == 200
        received = b""
        for chunk in response.iter_bytes():
            received += chunk
    assert received == b"Bonjour, "
    assert len(double.requests) == 1


def test_ANTHROPIC_refusal_is_not_an_empty_output(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    refusal = {"id": "msg_1", "type": "message", "role": "assistant", "model": MODEL, "content": [],
               "stop_reason": "refusal", "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 0}}
    replay_after(double, *[refusal] * 3)
    assert_error(post_job(http, url, job(request())), 502, "ANTHROPIC failed after 1 attempt(s)",
                 "stop_reason: refusal")
    assert len(double.requests) == 1  # another try would refuse too


def test_ANTHROPIC_streamed_refusal_is_a_502_naming_it(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    delta = Event({"type": "message_delta", "delta": {"stop_reason": "refusal", "stop_sequence": None},
                   "usage": {"output_tokens": 0}}, "message_delta")
    replay_after(double, *[Stream([MESSAGE_START, delta, Event({"type": "message_stop"}, "message_stop")])] * 3)
    assert_error(post_job(http, url, job(request(), destination=STREAM)), 502,
                 "ANTHROPIC failed after 1 attempt(s)", "ANTHROPIC refused to answer (stop_reason: refusal)")
    assert len(double.requests) == 1  # another try would refuse too


def test_ANTHROPIC_has_no_embeddings(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    data = {"provider": "ANTHROPIC", "endpoint": "embeddings", "model": MODEL, "params": {"input": "x"}}
    assert_error(post_job(http, url, job(data)), 400, "ANTHROPIC has no 'embeddings' endpoint")


# -- configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5"])
def test_ANTHROPIC_MAX_TOKENS_not_a_positive_integer_refuses_start_up(value: str, tmp_path: Path) -> None:
    env = {"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_MAX_TOKENS": value}
    with pytest.raises(ConfigError, match="ANTHROPIC_MAX_TOKENS"):
        build_registry(load_settings(environ=env, dotenv=None))
    result = run_command("plugins", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "ANTHROPIC_MAX_TOKENS" in result.stderr


def test_ANTHROPIC_in_the_plugins_command_and_catalogue(url: str, http: httpx.Client, tmp_path: Path) -> None:
    result = run_command("plugins", env={"ANTHROPIC_API_KEY": KEY}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("css-anthropic ")]
    assert line.split()[2:6] == ["ANTHROPIC", "3", "completions", "ANTHROPIC_API_KEY"]
    assert "ANTHROPIC_API_KEY set" in line
    resources = http.get(url + "/service-resources").json()
    models = [m["name"] for m in resources["compute_capability"][0]["models"] if m["owner"] == "ANTHROPIC"]
    assert {"claude-sonnet-4-5", "claude-opus-4-1", "claude-3-5-haiku-latest"} <= set(models)


@pytest.mark.parametrize("destination", [OFFCHAIN, STREAM], ids=["offchain", "stream"])
def test_ANTHROPIC_usage_is_counted(double: ProviderDouble, url: str, http: httpx.Client, destination: int) -> None:
    before = scrape(http, url)
    double.reply, double.stream_chunks = "five words in this reply", 3
    conversation = [{"role": "user", "content": "one two three"}]
    response = post_job(http, url, job(request(conversation), destination=destination))
    assert response.status_code == 200, response.text
    assert token_usage(before, scrape(http, url), "anthropic", MODEL) == (3, 5)
