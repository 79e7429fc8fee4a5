"""Provider calls through an egress proxy named by `HTTP_PROXY` / `HTTPS_PROXY`, and around it
for the hosts in `NO_PROXY`, with the service started as the node starts it (the command line,
which reads these variables from its process environment).

The proxy (`tests/http_proxy.py`) is a real one on loopback: `CONNECT` tunnels for https
(TLS runs end to end through it, so the service still needs the double's CA), absolute-URI
forwarding for plain http. The double stays at 127.0.0.1: HTTP clients that trust the
environment do not exempt loopback on their own (aiohttp's `trust_env` does not; only
`NO_PROXY` does), so the proxy sees the calls unless `NO_PROXY` names the host.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from css_core.testing import ProviderDouble
from tests.conftest import KEY, OFFCHAIN, STREAM, Launched, chat, job, post_job, service_env
from tests.helpers import requires_plugin
from tests.http_proxy import HTTPProxy

pytestmark = requires_plugin("css_openai")


@pytest.fixture(params=[False, True], ids=["http", "https"])
def provider(request: pytest.FixtureRequest) -> Iterator[ProviderDouble]:
    with ProviderDouble(api_key=KEY, tls=request.param) as double:
        yield double


@pytest.fixture
def proxy() -> Iterator[HTTPProxy]:
    with HTTPProxy() as running:
        yield running


def proxied_env(double: ProviderDouble, proxy: HTTPProxy, no_proxy: str = "") -> dict[str, str]:
    """The service's environment: both spellings of each variable (lower case wins where both are set)."""
    variables = {"HTTP_PROXY": proxy.url, "HTTPS_PROXY": proxy.url, "NO_PROXY": no_proxy}
    spelled = variables | {name.lower(): value for name, value in variables.items()}
    return service_env(double, SSL_CERT_FILE=double.ca_file, **spelled)  # None (plain http): left out


def run_jobs(double: ProviderDouble, http: httpx.Client, url: str) -> None:
    offchain = post_job(http, url, job(chat("via"), destination=OFFCHAIN))
    assert offchain.status_code == 200, offchain.text
    assert offchain.json() == {"output": double.expected_reply("gpt-4", "via")}
    streamed = post_job(http, url, job(chat("via"), destination=STREAM))
    assert streamed.status_code == 200, streamed.text
    assert streamed.text == double.expected_reply("gpt-4", "via")
    assert len(double.requests) == 2


def test_provider_calls_go_through_the_proxy(
    provider: ProviderDouble, proxy: HTTPProxy, launch: Callable[..., Launched], http: httpx.Client
) -> None:
    service = launch(proxied_env(provider, proxy), workers=1)
    run_jobs(provider, http, service.url)
    authority = f"127.0.0.1:{provider.port}"
    if provider.tls:  # one tunnel (or more), to the double, carrying both calls
        assert proxy.requests and set(proxy.requests) == {("CONNECT", authority)}, proxy.requests
    else:  # each call forwarded by absolute URI
        assert proxy.requests == [("POST", f"http://{authority}/v1/chat/completions")] * 2, proxy.requests


def test_no_proxy_bypasses_it(
    provider: ProviderDouble, proxy: HTTPProxy, launch: Callable[..., Launched], http: httpx.Client
) -> None:
    service = launch(proxied_env(provider, proxy, no_proxy="127.0.0.1"), workers=1)
    run_jobs(provider, http, service.url)
    assert proxy.requests == []


def test_the_proxy_itself_is_real(provider: ProviderDouble, proxy: HTTPProxy) -> None:
    """The helper forwards and tunnels as a client expects (so the tests above test the service)."""
    verify = provider.client_context() if provider.tls else True
    with httpx.Client(proxy=proxy.url, verify=verify, trust_env=False) as client:
        body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
        auth = {"authorization": f"Bearer {KEY}"}
        answer = client.post(f"{provider.url}/v1/chat/completions", json=body, headers=auth)
    assert answer.status_code == 200, answer.text
    assert len(proxy.requests) == 1 and proxy.requests[0][0] == ("CONNECT" if provider.tls else "POST")
    with httpx.Client(proxy=proxy.url, trust_env=False) as client:
        assert client.get("http://example.invalid/").status_code == 403  # refused, never resolved: loopback only
