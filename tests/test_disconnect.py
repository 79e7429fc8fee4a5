"""A client that leaves a non-stream job while the provider hangs: the job's provider call is
cancelled and its in-flight slot freed at once, not when the provider finally answers.

With `CSS_MAX_IN_FLIGHT=1`, the one slot is held by a job whose provider call hangs far longer
than the test waits; the client leaves; a new job must then be served (not a 503) while the
hang goes on. Everything waits on conditions with generous timeouts, never on the clock.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import msgspec
import pytest

from css_core.testing import Fault, ProviderDouble, RecordedRequest, Route, Stream, openai_routes
from tests.conftest import assert_error, chat, job, post_job
from tests.helpers import requires_plugin

pytestmark = requires_plugin("css_openai")
HANG = 600.0  # seconds the provider hangs: far beyond any wait below
PATIENCE = 60.0  # how long a condition may take to come true on a loaded machine


def send_and_keep_open(url: str, body: Any) -> socket.socket:
    """POST a job over a raw socket and return it without reading the answer."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    payload = msgspec.json.encode(body)
    sock = socket.create_connection((host, int(port)), timeout=PATIENCE)
    sock.sendall(b"POST /service_output HTTP/1.1\r\nhost: css\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\n\r\n%s" % (len(payload), payload))
    return sock


def served_once_a_slot_is_free(http: httpx.Client, url: str, body: Any) -> httpx.Response:
    """Post `body` until it is not refused for want of a slot (503), for up to PATIENCE seconds."""
    deadline = time.monotonic() + PATIENCE
    while True:
        response = post_job(http, url, body)
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        time.sleep(0.02)


@pytest.fixture(params=["before-answering", "mid-answer"])
def hanging_provider(request: pytest.FixtureRequest, double: ProviderDouble) -> Iterator[str]:
    """The double's first chat completion hangs: it sends nothing (`Fault.hang`), or its status,
    headers and a first piece of the body, then nothing more (a body the double writes as a slow
    stream, which is how the double watches for its client leaving and records "client_closed")."""
    if request.param == "before-answering":
        double.script(Fault.hang(HANG))
    else:
        builtin = next(route for route in openai_routes(double) if route.path == r"/chat/completions")

        def answer(rec: RecordedRequest) -> Any:
            if rec.json["messages"][-1]["content"] == "left":
                return Stream([{"id": "chatcmpl-1", "choices": []}, {"never": "sent"}])
            return builtin.respond(rec)

        double.add_route(Route("POST", r"/chat/completions", answer))
        double.chunk_delay = HANG
    yield request.param


def test_a_client_leaving_a_job_frees_its_slot_and_cancels_the_provider_call(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client, hanging_provider: str
) -> None:
    url = service(CSS_MAX_IN_FLIGHT="1", CSS_REQUEST_TIMEOUT=str(2 * HANG), CSS_JOB_DEADLINE=str(4 * HANG))
    sock = send_and_keep_open(url, job(chat("left")))
    try:
        double.wait_for_requests(1, timeout=PATIENCE)
        # the hanging job holds the only slot
        assert_error(post_job(http, url, job(chat("refused"))), 503, "CSS_MAX_IN_FLIGHT")
    finally:
        sock.close()  # the client leaves

    response = served_once_a_slot_is_free(http, url, job(chat("next")))
    assert response.status_code == 200, response.text
    assert response.json() == {"output": double.expected_reply("gpt-4", "next")}
    # the left job was not retried, and the refused one never reached the provider
    assert [r.json["messages"][-1]["content"] for r in double.requests] == ["left", "next"]
    if hanging_provider == "mid-answer":
        # the double saw the service close the hanging call's connection (it would otherwise wait HANG s)
        assert double.wait_for_streams(1, timeout=PATIENCE) == ["client_closed"]
