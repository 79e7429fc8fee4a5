"""The service's server-sent-events reader, against every way a provider may frame a stream.

The double writes the same OpenAI stream with `event:` and `id:` lines, `:` comment lines
(keep-alives), JSON payloads split over two `data:` lines, CRLF line ends, no space after
the colon, and events split across two socket writes; a streamed job (`destination: 2`)
must answer exactly the concatenated text every time, and an off-chain job is unaffected.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest

from css_core.providers.http import read, sse_events
from css_core.testing import Framing, ProviderDouble
from tests.conftest import OFFCHAIN, STREAM, chat, job, post_job
from tests.helpers import requires_plugin

pytestmark = requires_plugin("css_openai")

REPLY = 'Ünïcödé ✓ 🎉 "quoted", {braced}: across\nseveral lines\r\nand a [DONE] inside'
FRAMINGS = {
    "event-lines": Framing(event="completion"),
    "id-lines": Framing(ids=True),
    "comment-lines": Framing(comments=True),
    "multi-line-data": Framing(multiline=True),
    "crlf": Framing(crlf=True),
    "no-space-after-colon": Framing(compact=True),
    "split-across-reads": Framing(split=True),
    "split-between-cr-and-lf": Framing(crlf=True, multiline=True, split=True, split_after=b"\r"),
    "split-after-data-colon": Framing(split=True, split_after=b"data:"),
    "everything": Framing(event="completion", ids=True, comments=True, multiline=True, crlf=True, split=True),
}


@pytest.mark.parametrize("framing", FRAMINGS.values(), ids=FRAMINGS.keys())
def test_stream_answers_exactly_the_text(
    double: ProviderDouble, url: str, http: httpx.Client, framing: Framing
) -> None:
    double.reply, double.stream_chunks, double.framing = REPLY, 7, framing
    response = post_job(http, url, job(chat("tell me"), destination=STREAM))
    assert response.status_code == 200, response.text
    assert response.text == REPLY
    assert double.wait_for_streams(1) == ["completed"]


@pytest.mark.parametrize("framing", FRAMINGS.values(), ids=FRAMINGS.keys())
def test_the_default_reply_streams_too(double: ProviderDouble, url: str, http: httpx.Client, framing: Framing) -> None:
    double.framing = framing
    response = post_job(http, url, job(chat("tell me"), destination=STREAM))
    assert response.status_code == 200, response.text
    assert response.text == double.expected_reply("gpt-4", "tell me")


def test_one_character_per_event_and_slow_keep_alives(double: ProviderDouble, url: str, http: httpx.Client) -> None:
    double.reply = "a🎉\nb"
    double.stream_chunks = len(double.reply)  # one character per event, the emoji's 4 bytes in one of them
    double.chunk_delay = 0.02
    double.framing = Framing(comments=True, crlf=True, split=True, split_pause=0.02)
    response = post_job(http, url, job(chat(), destination=STREAM))
    assert response.status_code == 200, response.text
    assert response.text == double.reply


@pytest.mark.parametrize("framing", [Framing(), FRAMINGS["everything"]], ids=["plain", "everything"])
def test_an_offchain_job_is_unchanged(double: ProviderDouble, url: str, http: httpx.Client, framing: Framing) -> None:
    double.reply, double.framing = REPLY, framing
    response = post_job(http, url, job(chat("tell me"), destination=OFFCHAIN))
    assert response.status_code == 200, response.text
    assert response.json() == {"output": REPLY}
    assert double.requests[0].json.get("stream") is not True  # an ordinary JSON answer was asked for


# -- an answer's body, content-encoded or not (a unit test of css_core.providers.http) -------------------------


class _Parts(httpx.AsyncByteStream):
    def __init__(self, *parts: bytes) -> None:
        self.parts = parts

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            yield part


@pytest.mark.parametrize("encoding", [None, "gzip"])
async def test_an_answer_is_read_whole_and_decoded(encoding: str | None) -> None:
    body = b'{"choices": [{"message": {"content": "' + "ü".encode() * 1000 + b'"}}]}'
    sent = gzip.compress(body) if encoding else body
    headers = {"content-encoding": encoding} if encoding else {}
    response = httpx.Response(200, headers=headers, stream=_Parts(sent[:100], sent[100:]))
    assert await read(response) == body


@pytest.mark.parametrize("encoding", [None, "gzip"])
async def test_events_are_read_by_read_and_decoded(encoding: str | None) -> None:
    stream = b"data: one\n\ndata: two\n\ndata: thr"  # the third event ends in the next read
    rest = b"ee\n\ndata: [DONE]\n\n"
    if encoding:
        compressor = zlib.compressobj(wbits=31)  # gzip, flushed after each read
        stream = compressor.compress(stream) + compressor.flush(zlib.Z_SYNC_FLUSH)
        rest = compressor.compress(rest) + compressor.flush()
    headers = {"content-encoding": encoding} if encoding else {}
    response = httpx.Response(200, headers=headers, stream=_Parts(stream, rest))
    assert [events async for events in sse_events(response)] == [[b"one", b"two"], [b"three"]]
