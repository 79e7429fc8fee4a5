"""Stream destination: chunks relayed as they arrive, errors before the first chunk as JSON,
failures after it as a broken response, and a departing client closing the upstream."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from css_core.testing import Fault, ProviderDouble, Route, Stream
from tests.conftest import STREAM, assert_error, chat, job, post_job
from tests.helpers import requires_plugin

pytestmark = requires_plugin("css_openai")

STREAM_JOB = job(chat("tell me"), destination=STREAM)


def read_stream(http: httpx.Client, url: str, body: object = STREAM_JOB) -> tuple[list[bytes], list[float]]:
    """POST a stream job; return its raw body chunks and when each arrived (seconds after the request)."""
    chunks: list[bytes] = []
    arrivals: list[float] = []
    started = time.monotonic()
    with http.stream("POST", f"{url}/service_output", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        for chunk in response.iter_raw():
            chunks.append(chunk)
            arrivals.append(time.monotonic() - started)
    return chunks, arrivals


def test_chunks_are_forwarded_as_they_arrive(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    double.chunk_delay, double.stream_chunks = 0.2, 4  # content events at about 0.2, 0.4, 0.6 and 0.8 s
    chunks, arrivals = read_stream(http, url)
    assert b"".join(chunks).decode() == double.expected_reply("gpt-4", "tell me")
    # a service that buffered the stream would deliver everything at once, after the last event
    assert len(chunks) >= 3, chunks
    assert arrivals[-1] - arrivals[0] >= 0.4, arrivals


def test_body_is_the_raw_completion_text(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    double.reply, double.stream_chunks = "Ünïcödé ✓ 🎉 across\nseveral lines, split anywhere", 9
    response = post_job(http, url, STREAM_JOB)
    assert response.status_code == 200
    assert response.content == double.reply.encode()  # UTF-8, no SSE framing, no JSON
    assert double.requests[0].json["stream"] is True


def test_default_reply_is_not_framed(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    chunks, _ = read_stream(http, url)
    text = b"".join(chunks).decode()
    assert text == double.expected_reply("gpt-4", "tell me")
    assert "data:" not in text and "[DONE]" not in text
    assert double.wait_for_streams(1) == ["completed"]


def test_provider_failure_before_the_first_chunk_is_a_json_error(
    double: ProviderDouble, url: str, http: httpx.Client
) -> None:
    double.script(*[Fault.status(500)] * 3)
    assert_error(post_job(http, url, STREAM_JOB), 502, "OPENAI", "500", "3 attempt")
    assert len(double.requests) == 3


def test_wrong_key_before_the_first_chunk_is_a_json_error(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    url = service(OPENAI_API_KEY="sk-not-the-double-key")
    assert_error(post_job(http, url, STREAM_JOB), 502, "OPENAI", "401")
    assert len(double.requests) == 1


def test_rate_limit_before_the_first_chunk_is_retried(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    double.script(Fault.status(429, retry_after="0"))
    response = post_job(http, url, STREAM_JOB)
    assert response.status_code == 200
    assert response.text == double.expected_reply("gpt-4", "tell me")
    assert len(double.requests) == 2


def test_stream_cut_by_the_provider_breaks_the_response(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    double.script(Fault.cut_stream(after_chunks=2))
    received: list[bytes] = []
    with pytest.raises(httpx.TransportError), http.stream("POST", f"{url}/service_output", json=STREAM_JOB) as response:
        assert response.status_code == 200
        received.extend(response.iter_raw())
    text = b"".join(received).decode()
    assert text and double.expected_reply("gpt-4", "tell me").startswith(text)
    assert double.wait_for_streams(1) == ["cut"]


def test_stream_past_the_deadline_breaks_the_response(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    url = service(CSS_JOB_DEADLINE="0.5")
    double.chunk_delay, double.stream_chunks = 0.2, 8  # about 2 s in all
    with pytest.raises(httpx.TransportError), http.stream("POST", f"{url}/service_output", json=STREAM_JOB) as response:
        assert response.status_code == 200
        for _ in response.iter_raw():
            pass
    assert double.wait_for_streams(1) == ["client_closed"]  # the service hung up on the provider


def test_client_disconnect_closes_the_provider_stream(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    double.chunk_delay, double.stream_chunks = 0.5, 40  # about 20 s if read to the end
    with http.stream("POST", f"{url}/service_output", json=STREAM_JOB) as response:
        assert response.status_code == 200
        next(response.iter_raw())
    # leaving the block closes the connection mid-stream; the service must hang up upstream
    assert double.wait_for_streams(1, timeout=15) == ["client_closed"]


def test_client_disconnect_is_noticed_before_the_providers_next_event(
    double: ProviderDouble, url: str, http: httpx.Client
) -> None:
    double.chunk_delay, double.stream_chunks = 4.5, 3  # a slow provider (within the 5 s read timeout)
    with http.stream("POST", f"{url}/service_output", json=STREAM_JOB) as response:
        assert response.status_code == 200
        next(response.iter_raw())
    # not at the service's next write (4.5 s away): the provider's stream is closed at once
    assert double.wait_for_streams(1, timeout=4) == ["client_closed"]


def chunk(delta: dict[str, str], finish_reason: str | None = None) -> dict[str, object]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return {"object": "chat.completion.chunk", "choices": [choice]}


@pytest.mark.parametrize("reason", ["length", "content_filter"])
def test_stream_without_text_is_a_502_naming_the_finish_reason(
    double: ProviderDouble, url: str, http: httpx.Client, reason: str
) -> None:
    """A reasoning model that spent every output token thinking streams no text at all."""
    usage = {"object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9}}
    double.add_route(Route("POST", r"/chat/completions",
                           Stream([chunk({"role": "assistant"}), chunk({}, reason), usage], done=True)))
    response = post_job(http, url, STREAM_JOB)
    assert_error(response, 502, "OPENAI failed after", f"OPENAI answered no text (finish_reason: {reason})")
