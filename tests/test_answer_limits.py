"""How much of a provider's answer the service reads: a whole answer up to `CSS_MAX_ANSWER_BYTES`,
a streamed event up to `CSS_MAX_EVENT_BYTES`, an error answer up to the first and cut there.

Through the service against the double at the default limits, then the reader's functions on
their own (`read`, `sse_events`), fed in pieces: the SSE reader's work must grow with the
answer's length, never with the square of its reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable

import httpx
import pytest

from css_core.config import MAX_ANSWER_BYTES, MAX_EVENT_BYTES, Settings, load_settings
from css_core.errors import ConfigError, ProviderBadResponse
from css_core.providers.http import named_events, read, sse_events
from css_core.testing import Fault, Framing, ProviderDouble, RecordedRequest, Route, Stream
from css_core.types import PreparedCall
from tests.conftest import STREAM, assert_error, chat, job, post_job
from tests.helpers import requires_plugin

needs_openai = requires_plugin("css_openai")  # the service tests go through the OpenAI plugin


def chat_answer(content: bytes) -> bytes:
    return b'{"choices": [{"message": {"role": "assistant", "content": "' + content + b'"}}]}'


def delta(text: str) -> dict[str, object]:
    return {"choices": [{"delta": {"content": text}}]}


# -- the settings ---------------------------------------------------------------------------------------------


def test_the_limits_default_to_8_and_1_mib_everywhere() -> None:
    settings = load_settings(environ={}, dotenv=None)
    assert (settings.max_answer_bytes, settings.max_event_bytes) == (8 * 1024 * 1024, 1024 * 1024)
    call = PreparedCall("http://x", {}, b"")  # a plugin's own call keeps to the same limits
    assert (call.max_answer_bytes, call.max_event_bytes) == (MAX_ANSWER_BYTES, MAX_EVENT_BYTES)
    assert Settings(environ={}).max_answer_bytes == MAX_ANSWER_BYTES


def test_the_limits_are_read_from_their_variables() -> None:
    settings = load_settings(environ={"CSS_MAX_ANSWER_BYTES": "1000", "CSS_MAX_EVENT_BYTES": "10"}, dotenv=None)
    assert (settings.max_answer_bytes, settings.max_event_bytes) == (1000, 10)


@pytest.mark.parametrize("name", ["CSS_MAX_ANSWER_BYTES", "CSS_MAX_EVENT_BYTES"])
@pytest.mark.parametrize("value", ["0", "-1", "1.5", "lots"])
def test_a_limit_that_does_not_parse_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings(environ={name: value}, dotenv=None)


# -- through the service --------------------------------------------------------------------------------------


@needs_openai
def test_an_answer_over_the_limit_is_a_502_naming_it(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    double.add_route(Route("POST", r"/chat/completions", chat_answer(b"a" * MAX_ANSWER_BYTES)))
    assert_error(post_job(http, url, job(chat())), 502, "OPENAI", f"limit of {MAX_ANSWER_BYTES} bytes",
                 "CSS_MAX_ANSWER_BYTES")
    assert len(double.requests) == 1  # another try would be as large: not retried


@needs_openai
def test_an_answer_at_the_limit_is_served(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    content = b"a" * (MAX_ANSWER_BYTES - len(chat_answer(b"")))
    double.add_route(Route("POST", r"/chat/completions", chat_answer(content)))
    response = post_job(http, url, job(chat()))
    assert response.status_code == 200, response.text[:200]
    assert response.json() == {"output": content.decode()}


@needs_openai
@pytest.mark.parametrize("destination", [1, STREAM], ids=["answer", "stream"])
def test_an_error_answer_over_the_limit_is_cut_not_failed_otherwise(
    double: ProviderDouble, url: str, http: httpx.Client, destination: int
) -> None:
    message = b"your request is wrong " + b"x" * MAX_ANSWER_BYTES
    double.script(Fault.status(400, body=message))
    assert_error(post_job(http, url, job(chat(), destination=destination)), 400, "OPENAI", "HTTP 400",
                 "your request is wrong xxxx")


@needs_openai
@pytest.mark.parametrize("split", [False, True], ids=["as-written", "in-two-writes"])
def test_an_event_over_the_limit_is_a_502_naming_it(
    double: ProviderDouble, url: str, http: httpx.Client, split: bool
) -> None:
    events = [delta("a" * MAX_EVENT_BYTES), delta("never sent")]
    double.add_route(Route("POST", r"/chat/completions", Stream(events, done=True, framing=Framing(split=split))))
    assert_error(post_job(http, url, job(chat(), destination=STREAM)), 502, "OPENAI",
                 f"limit of {MAX_EVENT_BYTES} bytes", "CSS_MAX_EVENT_BYTES")
    assert len(double.requests) == 1


@needs_openai
def test_a_long_stream_of_events_below_the_limit_is_served_whole(
    double: ProviderDouble, url: str, http: httpx.Client
) -> None:
    """Events nearly as long as the limit arrive over many reads of the socket, and many short ones follow."""
    texts = ["é" * (MAX_EVENT_BYTES // 2 - 100), "b" * (MAX_EVENT_BYTES - 100), *(f"{i}," for i in range(3000))]
    double.add_route(Route("POST", r"/chat/completions", Stream([delta(t) for t in texts], done=True)))
    response = post_job(http, url, job(chat(), destination=STREAM))
    assert response.status_code == 200, response.text[:200]
    assert response.text == "".join(texts)


@needs_openai
def test_the_configured_limits_are_kept(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    url = service(CSS_MAX_ANSWER_BYTES="1000", CSS_MAX_EVENT_BYTES="100")

    def respond(rec: RecordedRequest) -> Stream | bytes:
        return Stream([delta("b" * 101)]) if rec.json.get("stream") else chat_answer(b"a" * 1000)

    double.add_route(Route("POST", r"/chat/completions", respond))
    assert_error(post_job(http, url, job(chat())), 502, "limit of 1000 bytes", "CSS_MAX_ANSWER_BYTES")
    assert_error(post_job(http, url, job(chat(), destination=STREAM)), 502, "limit of 100 bytes", "CSS_MAX_EVENT_BYTES")


# -- read(): a whole answer -----------------------------------------------------------------------------------


class Parts(httpx.AsyncByteStream):
    """An answer's body in the given reads, counting how many were taken."""

    def __init__(self, parts: Iterable[bytes]) -> None:
        self.parts = list(parts)
        self.taken = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            self.taken += 1
            yield part


def answer(parts: Parts, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, stream=parts)


async def test_read_fails_past_the_limit_and_is_not_retried() -> None:
    parts = Parts([b"x" * 100] * 50)
    with pytest.raises(ProviderBadResponse, match=r"limit of 1000 bytes \(CSS_MAX_ANSWER_BYTES\)") as raised:
        await read(answer(parts), 1000)
    assert raised.value.retryable is False
    assert parts.taken == 11  # no further than the read that passed the limit


async def test_read_fails_on_a_declared_length_past_the_limit_before_reading() -> None:
    parts = Parts([b"x" * 2000])
    with pytest.raises(ProviderBadResponse, match="CSS_MAX_ANSWER_BYTES"):
        await read(answer(parts, **{"content-length": "2000"}), 1000)
    assert parts.taken == 0


async def test_read_takes_an_answer_of_exactly_the_limit() -> None:
    assert await read(answer(Parts([b"x" * 600, b"y" * 400])), 1000) == b"x" * 600 + b"y" * 400


async def test_an_error_answer_is_read_up_to_the_limit_and_cut_there() -> None:
    parts = Parts([b"x" * 600, b"y" * 600, b"z" * 600])
    assert await read(answer(parts, 500, **{"content-length": "1800"}), 1000, cut=True) == b"x" * 600 + b"y" * 400
    assert parts.taken == 2  # the rest is never read


# -- sse_events(): a stream -------------------------------------------------------------------------------------


async def events_of(body: Iterable[bytes], limit: int = MAX_EVENT_BYTES) -> list[list[bytes]]:
    return [events async for events in sse_events(answer(Parts(body)), limit)]


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


class Counted(bytes):
    """A read of the answer that counts the bytes copied when it is joined to other bytes with `+`
    (the way a pending buffer grows when it is copied again for every read)."""

    copied = 0

    def __add__(self, other: bytes) -> bytes:  # type: ignore[override]
        Counted.copied += len(self) + len(other)
        return bytes(self) + other

    def __radd__(self, other: bytes) -> bytes:
        Counted.copied += len(self) + len(other)
        return other + bytes(self)


@pytest.mark.parametrize("event_bytes", [20_000, 200_000])
async def test_a_long_event_in_many_small_reads_is_never_copied_whole_per_read(event_bytes: int) -> None:
    text = b"0123456789" * (event_bytes // 10)
    body = b"data: " + text + b"\n\n" + b"data: [DONE]\n\n"
    Counted.copied = 0
    assert await events_of([Counted(piece) for piece in pieces(body, 16)]) == [[text]]
    # the pieces of a line are joined once, when it ends: the work grows with the answer, not its square
    assert Counted.copied <= 2 * len(body)


async def test_many_events_in_one_byte_reads_are_read_whole() -> None:
    body = b"".join(b"event: e%d\r\ndata: {\"n\": %d}\r\n\r\n" % (i, i) for i in range(300))
    received = await events_of(pieces(body, 1))
    assert [data for events in received for data in events] == [b'{"n": %d}' % i for i in range(300)]
    assert [name for events in received for name, _ in named_events(events)] == [f"e{i}" for i in range(300)]


async def test_an_event_past_the_limit_fails_and_is_not_retried() -> None:
    body = pieces(b"data: " + b"x" * 1001 + b"\n\n", 7)
    with pytest.raises(ProviderBadResponse, match=r"limit of 1000 bytes \(CSS_MAX_EVENT_BYTES\)") as raised:
        await events_of(body, 1000)
    assert raised.value.retryable is False


@pytest.mark.parametrize("body", [
    [b"data: " + b"x" * 600, b"\ndata: " + b"y" * 600 + b"\n\n"],  # its data lines together
    [b": " + b"x" * 2000],  # one line without its end, whatever it holds
    [b"data: a\n", b"b" * 2000],  # the rest of the stream, without a line end
    [b"data:\n" * 2000],  # empty data lines, each a newline of the event's data
], ids=["data-lines", "comment-line", "last-line", "empty-data-lines"])
async def test_a_stream_that_keeps_more_than_an_event_fails(body: list[bytes]) -> None:
    with pytest.raises(ProviderBadResponse, match="CSS_MAX_EVENT_BYTES"):
        await events_of(pieces(b"".join(body), 100), 1000)


async def test_an_event_of_exactly_the_limit_is_read() -> None:
    assert await events_of([b"data: " + b"x" * 500, b"\ndata: " + b"y" * 499 + b"\n\n"], 1000) == [
        [b"x" * 500 + b"\n" + b"y" * 499]]
