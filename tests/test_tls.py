"""Provider calls over HTTPS: a private CA named by `SSL_CERT_FILE`, connections kept alive,
and an untrusted certificate answered as a provider failure.

The double serves HTTPS with a certificate from a throwaway CA (`ProviderDouble(tls=True)`).
In-process, `SSL_CERT_FILE` is part of the service's configuration (the `env` given to
`serve`); the command line gets it in its process environment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from css_core.testing import ProviderDouble
from tests.conftest import (
    KEY,
    OFFCHAIN,
    STREAM,
    Launched,
    assert_error,
    chat,
    job,
    post_job,
    service_env,
)
from tests.helpers import requires_plugin

pytestmark = requires_plugin("css_openai")

JOBS = 10


@pytest.fixture
def tls() -> Iterator[ProviderDouble]:
    """A double of its own per test (so its connection counts are this test's alone) over HTTPS."""
    with ProviderDouble(api_key=KEY, tls=True) as double:
        yield double


def tls_env(double: ProviderDouble, **overrides: str | None) -> dict[str, str]:
    assert double.ca_file is not None and double.url.startswith("https://")
    return service_env(double, SSL_CERT_FILE=double.ca_file, **overrides)


def assert_completes(double: ProviderDouble, http: httpx.Client, url: str, content: str = "hi") -> None:
    offchain = post_job(http, url, job(chat(content), destination=OFFCHAIN))
    assert offchain.status_code == 200, offchain.text
    assert offchain.json() == {"output": double.expected_reply("gpt-4", content)}
    streamed = post_job(http, url, job(chat(content), destination=STREAM))
    assert streamed.status_code == 200, streamed.text
    assert streamed.text == double.expected_reply("gpt-4", content)


def assert_one_connection_for_many_jobs(double: ProviderDouble, http: httpx.Client, url: str) -> None:
    """`JOBS` consecutive jobs of a service that has not called `double` yet: one handshake."""
    assert double.connections == 0
    for i in range(JOBS):
        response = post_job(http, url, job(chat(f"job {i}")))
        assert response.status_code == 200, response.text
    assert len(double.requests) == JOBS
    assert (double.connections, double.handshakes, double.failed_handshakes) == (1, 1, 0)
    assert {r.connection for r in double.requests} == {1}  # all on the one kept-alive connection


# -- in-process ------------------------------------------------------------------------------


def test_jobs_succeed_over_https_with_the_ca_from_the_configuration(
    tls: ProviderDouble, serve: Callable[..., str], http: httpx.Client
) -> None:
    url = serve(tls_env(tls))
    assert_completes(tls, http, url)
    assert tls.handshakes >= 1 and tls.failed_handshakes == 0


def test_consecutive_jobs_share_one_tls_connection(
    tls: ProviderDouble, serve: Callable[..., str], http: httpx.Client
) -> None:
    assert_one_connection_for_many_jobs(tls, http, serve(tls_env(tls)))


def test_an_untrusted_certificate_is_a_502_naming_the_provider(
    tls: ProviderDouble, serve: Callable[..., str], http: httpx.Client
) -> None:
    url = serve(service_env(tls))  # no SSL_CERT_FILE: the double's CA is not trusted
    for destination in (OFFCHAIN, STREAM):
        assert_error(post_job(http, url, job(chat(), destination=destination)), 502, "OPENAI")
    assert tls.requests == []  # no request was sent over an untrusted connection
    tls.wait_for(lambda: tls.failed_handshakes >= 2, timeout=15, what="the service's refused handshakes")
    assert tls.handshakes == 0
    # the service is still up and answers the next job the same way
    assert http.get(f"{url}/").status_code == 200
    assert_error(post_job(http, url, job(chat())), 502, "OPENAI")


# -- the command line ---------------------------------------------------------------------------


def test_the_command_line_trusts_the_ca_and_keeps_the_connection(
    tls: ProviderDouble, launch: Callable[..., Launched], http: httpx.Client
) -> None:
    service = launch(tls_env(tls), workers=1)  # one worker: one connection pool
    assert_one_connection_for_many_jobs(tls, http, service.url)
    assert_completes(tls, http, service.url)
    assert tls.connections == 1


def test_the_command_line_without_the_ca_answers_502_and_keeps_serving(
    tls: ProviderDouble, launch: Callable[..., Launched], http: httpx.Client
) -> None:
    # the process environment's own SSL_CERT_FILE (if any) names the system's CAs, not the double's
    service = launch(service_env(tls), workers=1)
    assert_error(post_job(http, service.url, job(chat())), 502, "OPENAI")
    assert_error(post_job(http, service.url, job(chat(), destination=STREAM)), 502, "OPENAI")
    assert service.process.poll() is None
    assert http.get(f"{service.url}/").status_code == 200
    assert tls.requests == [] and tls.handshakes == 0
