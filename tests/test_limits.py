"""Limits: the per-provider in-flight cap, the body size limit, and a graceful shutdown.

The cap is checked against the real service on a loopback port; its in-flight counter is
read from the registry the app was built with, and must always come back to 0: after jobs
that succeed, fail, are refused, after streams the provider cut and streams whose client left.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import pytest

from css_core.config import load_settings
from css_core.edge.app import create_app
from css_core.providers.registry import Provider, build_registry
from css_core.testing import Fault, ProviderDouble
from tests.conftest import (
    OFFCHAIN,
    ONCHAIN,
    STREAM,
    InProcessServer,
    Launched,
    assert_error,
    chat,
    job,
    post_job,
    service_env,
)
from tests.helpers import requires_plugin

pytestmark = requires_plugin("css_openai")
CAP = 2
SLOW = 1.0


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.01)


class Capped:
    """The service with CSS_MAX_IN_FLIGHT=2, and the OPENAI provider whose counter it keeps."""

    def __init__(self, double: ProviderDouble, url: str, provider: Provider) -> None:
        self.double, self.url, self.provider = double, url, provider
        self.pool = ThreadPoolExecutor(max_workers=8)
        self.http = httpx.Client(timeout=15, trust_env=False)

    def submit(self, body: object) -> Future[httpx.Response]:
        return self.pool.submit(post_job, self.http, self.url, body)

    def fill(self, destination: int = OFFCHAIN) -> list[Future[httpx.Response]]:
        """Start `CAP` slow jobs and return once the provider holds all of them."""
        self.double.response_delay = SLOW
        seen = len(self.double.requests)
        jobs = [self.submit(job(chat(f"job {i}"), destination=destination)) for i in range(CAP)]
        wait_until(lambda: len(self.double.requests) == seen + CAP)
        assert self.provider.in_flight == CAP
        return jobs

    def assert_idle(self) -> None:
        """Nothing leaked: the counter comes back to 0, and `CAP` concurrent jobs are served again."""
        wait_until(lambda: self.provider.in_flight == 0)
        self.double.response_delay = 0.2  # long enough for the jobs to overlap
        results = [self.submit(job(chat(f"again {i}"))) for i in range(CAP)]
        assert [r.result().status_code for r in results] == [200] * CAP
        assert self.provider.in_flight == 0


@pytest.fixture
def capped(double: ProviderDouble) -> Iterator[Capped]:
    env = service_env(double, CSS_MAX_IN_FLIGHT=str(CAP), CSS_REQUEST_TRIES="2")
    settings = load_settings(environ=env, dotenv=None)
    registry = build_registry(settings)
    server = InProcessServer(create_app(settings, registry))
    state = Capped(double, server.start(), registry.by_name("OPENAI"))
    yield state
    state.http.close()
    state.pool.shutdown(wait=True)
    server.stop()


def test_a_job_over_the_cap_is_a_503_with_retry_after(capped: Capped) -> None:
    jobs = capped.fill()
    for destination in (OFFCHAIN, ONCHAIN, STREAM):
        refused = post_job(capped.http, capped.url, job(chat("one too many"), destination=destination))
        assert_error(refused, 503, "OPENAI already has 2 calls in flight", "CSS_MAX_IN_FLIGHT")
        assert int(refused.headers["retry-after"]) >= 1
    assert [j.result().json() for j in jobs] == [{"output": f"Hello from gpt-4: job {i}"} for i in range(CAP)]
    assert len(capped.double.requests) == CAP  # the refused job never reached the provider
    capped.assert_idle()


def test_streams_hold_slots_too(capped: Capped) -> None:
    jobs = capped.fill(destination=STREAM)
    assert_error(post_job(capped.http, capped.url, job(chat())), 503, "CSS_MAX_IN_FLIGHT")
    assert [j.result().text for j in jobs] == [f"Hello from gpt-4: job {i}" for i in range(CAP)]
    capped.assert_idle()


def test_slots_come_back_after_failures(capped: Capped) -> None:
    capped.double.script(Fault.status(500), Fault.status(500), Fault.status(400), Fault.malformed_json(),
                         Fault.malformed_json(), Fault.status(503), Fault.status(503))
    assert post_job(capped.http, capped.url, job(chat())).status_code == 502  # retries exhausted
    assert post_job(capped.http, capped.url, job(chat())).status_code == 400  # provider rejected
    assert post_job(capped.http, capped.url, job(chat())).status_code == 502  # unreadable answers
    assert post_job(capped.http, capped.url, job(chat(), destination=STREAM)).status_code == 502  # before 1st chunk
    capped.assert_idle()


def test_slots_come_back_after_a_stream_the_provider_cut(capped: Capped) -> None:
    capped.double.script(Fault.cut_stream(1), Fault.cut_stream(2))
    for _ in range(2):
        with pytest.raises(httpx.RemoteProtocolError):
            post_job(capped.http, capped.url, job(chat(), destination=STREAM))
    assert capped.double.wait_for_streams(2) == ["cut", "cut"]
    capped.assert_idle()


def test_slots_come_back_after_the_client_left_a_stream(capped: Capped) -> None:
    capped.double.chunk_delay, capped.double.stream_chunks = 0.2, 20
    for _ in range(CAP + 1):
        with capped.http.stream("POST", f"{capped.url}/service_output", json=job(chat(), destination=STREAM)) as r:
            assert r.status_code == 200
            next(r.iter_raw())  # the first chunk, then the client goes away
    # the service notices at once, closes the provider's stream and frees the slot
    assert capped.double.wait_for_streams(CAP + 1) == ["client_closed"] * (CAP + 1)
    capped.double.chunk_delay = 0.0
    capped.assert_idle()


@pytest.mark.parametrize("destination", [OFFCHAIN, STREAM], ids=["offchain", "stream"])
def test_slots_come_back_after_the_client_left_before_the_answer(capped: Capped, destination: int) -> None:
    capped.double.response_delay = 0.3  # the job keeps its slot until the provider answers
    for _ in range(CAP):
        with pytest.raises(httpx.ReadTimeout):
            capped.http.post(f"{capped.url}/service_output", json=job(chat(), destination=destination), timeout=0.1)
    capped.assert_idle()


# -- the body limit --------------------------------------------------------------------------------------


LIMIT = 2000
JSON_TYPE = {"content-type": "application/json"}


@pytest.fixture
def small_bodies(service: Callable[..., str]) -> str:
    return service(CSS_MAX_BODY_BYTES=str(LIMIT))


def padded(size: int) -> bytes:
    """A valid job of exactly `size` bytes (JSON allows the trailing spaces)."""
    body = b'{"source": 1, "destination": 1, "data": {"model": "gpt-4", "params": {"messages": [' \
           b'{"role": "user", "content": "hi"}]}}}'
    return body + b" " * (size - len(body))


def test_a_body_at_the_limit_is_served(small_bodies: str, http: httpx.Client) -> None:
    assert http.post(f"{small_bodies}/service_output", content=padded(LIMIT), headers=JSON_TYPE).status_code == 200


def test_a_body_over_the_limit_is_a_413(small_bodies: str, http: httpx.Client) -> None:
    response = http.post(f"{small_bodies}/service_output", content=padded(LIMIT + 1), headers=JSON_TYPE)
    assert_error(response, 413, f"limit of {LIMIT} bytes", "CSS_MAX_BODY_BYTES")


def test_a_chunked_body_over_the_limit_is_a_413(small_bodies: str, http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:  # no content-length: the limit is checked on the bytes received
        body = padded(LIMIT * 3)
        yield from (body[i : i + 500] for i in range(0, len(body), 500))

    response = http.post(f"{small_bodies}/service_output", content=chunks(), headers=JSON_TYPE)
    assert_error(response, 413, "CSS_MAX_BODY_BYTES")


def test_a_huge_announced_body_is_refused_before_it_is_sent(small_bodies: str) -> None:
    port = int(small_bodies.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /service_output HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: 10000000000\r\n\r\n")  # and not one byte of it
        answer = sock.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer
    assert b"CSS_MAX_BODY_BYTES" in body


# -- a graceful shutdown ---------------------------------------------------------------------------------


GRACE = 10


def refused_or_unanswered(url: str) -> bool:
    try:
        httpx.get(f"{url}/", timeout=0.3, trust_env=False)
    except httpx.TransportError:
        return True
    return False


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_finishes_the_jobs_in_flight_then_exits_0(
    double: ProviderDouble, launch: Callable[..., Launched], http: httpx.Client, workers: int
) -> None:
    service = launch(service_env(double, CSS_SHUTDOWN_GRACE=str(GRACE)), workers=workers)
    double.response_delay = 2.0
    with ThreadPoolExecutor(max_workers=1) as pool:
        in_flight = pool.submit(post_job, http, service.url, job(chat("finish me")))
        wait_until(lambda: len(double.requests) == 1)
        time.sleep(0.2)
        service.process.send_signal(signal.SIGTERM)
        wait_until(lambda: refused_or_unanswered(service.url), timeout=1.5)
        assert not in_flight.done()  # new connections are refused while the job is still running
        response = in_flight.result(timeout=GRACE)
    assert response.status_code == 200, response.text
    assert response.json() == {"output": "Hello from gpt-4: finish me"}
    assert service.process.wait(timeout=GRACE) == 0
    # it stopped once the job was answered, not when the grace ran out (uvicorn then cancels what is left)
    assert "graceful shutdown exceeded" not in service.stop()
    assert len(double.requests) == 1
