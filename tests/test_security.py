"""Security: the bearer token is enforced, keys never leak, provider error text is bounded."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from css_core.config import Settings
from css_core.errors import ProviderHTTPError
from css_core.operations.logs import JOB_FIELDS
from css_core.providers import openai_format
from css_core.providers.hookspecs import hookimpl
from css_core.providers.registry import plugin_manager
from css_core.testing import Fault, ProviderDouble
from css_core.types import CSSRequest, PreparedCall, ProviderCall, ProviderSpec, Result
from tests.conftest import (
    ONCHAIN,
    STREAM,
    Launched,
    assert_error,
    chat,
    job,
    launcher,
    onchain_hex,
    post_job,
    run_command,
    service_env,
)
from tests.helpers import requires_plugin
from tests.test_bad_input import CASES, MAX_BODY, MAX_MESSAGES, send

pytestmark = requires_plugin("css_openai")
TOKEN = "tok-BEARERCHECK-d41e"
LEAK_KEY = "sk-LEAKCHECK-7f3a9"
TRIES = 2
MAX_DESCRIPTION = 1024


def provider_error(message: str) -> bytes:
    return msgspec.json.encode({"error": {"message": message, "type": "invalid_request_error", "code": None}})


# -- the bearer token ----------------------------------------------------------------------------------


def call(http: httpx.Client, url: str, path: str, authorization: str | None) -> httpx.Response:
    headers = {} if authorization is None else {"authorization": authorization}
    if path == "/service_output":
        return http.post(url + path, json=job(chat()), headers=headers)
    return http.get(url + path, headers=headers)


GUARDED = ["/service_output", "/service-resources", "/service-resources?model_id=OPENAI/gpt-4"]
REFUSED = {
    "missing": None,
    "empty": "",
    "wrong-token": "Bearer not-the-token",
    "token-without-scheme": TOKEN,
    "basic-scheme": f"Basic {TOKEN}",
    "token-prefix": f"Bearer {TOKEN[:-1]}",
    "token-with-suffix": f"Bearer {TOKEN}x",
    "scheme-only": "Bearer",
}


@pytest.mark.parametrize("path", GUARDED)
@pytest.mark.parametrize("authorization", list(REFUSED.values()), ids=list(REFUSED))
def test_a_missing_or_wrong_token_is_a_401(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client, path: str, authorization: str | None
) -> None:
    url = service(CSS_BEARER_TOKEN=TOKEN)
    description = assert_error(call(http, url, path, authorization), 401, "Authorization: Bearer")
    assert TOKEN not in description
    assert double.requests == []  # refused before any provider call


@pytest.mark.parametrize("path", GUARDED)
def test_the_right_token_is_served(service: Callable[..., str], http: httpx.Client, path: str) -> None:
    url = service(CSS_BEARER_TOKEN=TOKEN)
    assert call(http, url, path, f"Bearer {TOKEN}").status_code == 200


def test_the_token_is_checked_before_the_body_is_read(service: Callable[..., str], http: httpx.Client) -> None:
    url = service(CSS_BEARER_TOKEN=TOKEN, CSS_MAX_BODY_BYTES="1000")
    assert_error(http.post(f"{url}/service_output", content=b"x" * 10_000), 401)


@pytest.mark.parametrize("path", ["/", "/schema/openapi.json", "/schema", "/metrics"])
def test_with_a_token_set_only_the_probes_are_open(service: Callable[..., str], http: httpx.Client, path: str) -> None:
    url = service(CSS_BEARER_TOKEN=TOKEN)
    assert_error(http.get(url + path), 401, "Authorization: Bearer")  # `/` shows the keys' counts
    assert http.get(url + path, headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    for probe in ("/health", "/ready"):
        assert http.get(url + probe).status_code == 200


def test_the_schema_still_describes_every_route_with_the_token(service: Callable[..., str], http: httpx.Client) -> None:
    url = service(CSS_BEARER_TOKEN=TOKEN)
    schema = http.get(f"{url}/schema/openapi.json", headers={"authorization": f"Bearer {TOKEN}"}).json()
    assert {"/", "/health", "/ready", "/metrics", "/service-resources", "/service_output"} <= set(schema["paths"])


@pytest.mark.parametrize("path", GUARDED)
def test_no_token_set_means_no_check(url: str, http: httpx.Client, path: str) -> None:
    assert call(http, url, path, None).status_code == 200
    assert call(http, url, path, "Bearer anything").status_code == 200


# -- provider error text passed on is bounded ---------------------------------------------------------------


@pytest.mark.parametrize(("status", "expected"), [(400, 400), (500, 502)])
def test_a_huge_provider_error_is_cut_short(
    double: ProviderDouble, url: str, http: httpx.Client, caplog: pytest.LogCaptureFixture, status: int, expected: int
) -> None:
    huge = "The provider explains at length. " + "blah " * 20_000  # 100 kB
    double.script(*[Fault.status(status, body=provider_error(huge))] * 3)
    with caplog.at_level(logging.INFO):
        description = assert_error(post_job(http, url, job(chat())), expected, "The provider explains at length.")
    assert len(description) <= MAX_DESCRIPTION
    assert caplog.records and all(len(record.getMessage()) <= 2 * MAX_DESCRIPTION for record in caplog.records)


# -- keys never leak: a failing service, as the node runs it, with all its output read ------------------------


class Scenario:
    """Jobs against one launched service; keeps every answer (status, headers, body) it got."""

    def __init__(self, url: str, double: ProviderDouble, http: httpx.Client) -> None:
        self.url, self.double, self.http = url, double, http
        self.answers: list[str] = []

    def post(self, body: Any, *faults: Fault, status: int) -> None:
        self.double.script(*faults)
        response = self.http.post(f"{self.url}/service_output", json=body)
        self.keep(response)
        assert response.status_code == status, response.text

    def stream_cut(self, *faults: Fault) -> None:
        self.double.script(*faults)
        received = bytearray()
        with self.http.stream("POST", f"{self.url}/service_output", json=job(chat(), destination=STREAM)) as response:
            self.keep(response, body=False)
            with pytest.raises(httpx.RemoteProtocolError):
                for chunk in response.iter_bytes():
                    received += chunk
        self.answers.append(received.decode("utf-8", "replace"))

    def keep(self, response: httpx.Response, body: bool = True) -> None:
        self.answers.append(f"{response.status_code} {response.headers!r}")
        if body:
            self.answers.append(response.text)


def leaks(text: str, secret: str, window: int = 8) -> list[str]:
    """Every piece of `secret` of `window` characters that `text` holds (a cut key still leaks)."""
    return [secret[i : i + window] for i in range(len(secret) - window + 1) if secret[i : i + window] in text]


@pytest.fixture
def launch_open_probes(tmp_path: Path) -> Iterator[Callable[..., Launched]]:
    """The command line, ready once `GET /health` answers (`GET /` needs the token)."""
    with launcher(tmp_path) as start:
        yield start


def test_keys_never_leak_into_answers_or_logs(
    double: ProviderDouble, launch_open_probes: Callable[..., Launched], http: httpx.Client, tmp_path: Path
) -> None:
    double.api_key = LEAK_KEY
    env = service_env(double, OPENAI_API_KEY=LEAK_KEY, CSS_BEARER_TOKEN=TOKEN, CSS_REQUEST_TRIES=str(TRIES),
                      CSS_REQUEST_TIMEOUT="0.3", CSS_REQUEST_DELAY="0", CSS_MAX_MESSAGES=str(MAX_MESSAGES),
                      CSS_MAX_BODY_BYTES=str(MAX_BODY))
    service = launch_open_probes(env, workers=1)
    with httpx.Client(timeout=15, trust_env=False, headers={"authorization": f"Bearer {TOKEN}"}) as authorized:
        run = Scenario(service.url, double, authorized)
        fail_in_every_way(run)
    run.keep(http.get(f"{service.url}/service-resources"))  # no token
    listing = run_command("plugins", env=env, cwd=tmp_path)
    logs = service.stop()
    assert "reason=" in logs and "retrying" in logs and "stream ended" in logs  # the failures were logged
    for secret in (LEAK_KEY, TOKEN):
        assert leaks(logs, secret) == [], logs
        assert leaks(listing.stdout + listing.stderr, secret) == []
        for answer in run.answers:
            assert leaks(answer, secret) == [], answer


def fail_in_every_way(run: Scenario) -> None:
    """Provider errors that echo the key, exhausted retries, timeouts, resets, bad answers, cut streams, bad input."""
    double = run.double
    echo = provider_error(f"Incorrect API key provided: {LEAK_KEY}. You can find your API key at ...")
    echo_at_the_cut = provider_error("x" * (500 - len(LEAK_KEY) // 2) + LEAK_KEY)
    run.post(job(chat()), Fault.status(401, body=echo), status=502)
    run.post(job(chat()), Fault.status(400, body=echo), status=400)
    run.post(job(chat()), Fault.status(400, body=echo_at_the_cut), status=400)
    run.post(job(chat()), Fault.status(422, body=LEAK_KEY.encode()), status=400)  # a plain-text body
    run.post(job(chat()), Fault.status(429, retry_after="0", body=echo), status=200)
    run.post(job(chat()), *[Fault.status(500, body=echo)] * TRIES, status=502)
    run.post(job(chat(), destination=STREAM), *[Fault.status(503, body=echo)] * TRIES, status=502)
    run.post(job(onchain_hex(), source=ONCHAIN, destination=ONCHAIN), *[Fault.hang(2)] * TRIES, status=502)
    run.post(job(chat()), *[Fault.reset()] * TRIES, status=502)
    run.post(job(chat()), *[Fault.malformed_json()] * TRIES, status=502)
    run.post(job(chat()), Fault.cut_stream(0), Fault.cut_stream(0), status=502)
    run.stream_cut(Fault.cut_stream(1))
    double.api_key = "another-key"  # the provider now refuses the service's key, with its own message
    run.post(job(chat()), status=502)
    double.api_key = LEAK_KEY
    for case in CASES:
        response = send(run.http, run.url, case)
        run.keep(response)
        assert 400 <= response.status_code < 500, response.text
    for path in ("/", "/service-resources", "/service-resources?model_id=OPENAI/gpt-4"):
        run.keep(run.http.get(run.url + path))


# -- keys never leak through a plugin: its reading of the provider's errors, its own failures ----------------


class Acme:
    """An OpenAI-compatible provider at the double whose errors are `{"problem": ..., "kind": ...}`;
    it knows its key (read in `css_provider`), as a plugin making calls of its own would."""

    def __init__(self, fails_in: str | None = None) -> None:
        self.fails_in = fails_in
        self.key = ""

    @hookimpl
    def css_provider(self, config: Settings) -> ProviderSpec:
        self.key = config.get("ACME_API_KEY") or ""
        return ProviderSpec(name="ACME", onchain_id=70, api_key_env="ACME_API_KEY",
                            default_base_url="http://acme.invalid")

    @hookimpl
    def css_encode_params(self, request: CSSRequest) -> ProviderCall | None:
        return openai_format.chat_call(request)

    @hookimpl
    def css_read_error(self, status: int, body: bytes) -> ProviderHTTPError | None:
        error = msgspec.json.decode(body)
        if not isinstance(error, dict) or "problem" not in error:
            return None
        kind = error.get("kind")
        return ProviderHTTPError(status, error["problem"], retryable=True if kind == "busy" else None,
                                 key_refused=True if kind == "bad_key" else None)

    @hookimpl(tryfirst=True)
    def css_call(self, call: PreparedCall) -> None:
        if self.fails_in == "css_call":
            raise RuntimeError(f"could not sign the call with {call.headers['authorization']}")

    @hookimpl
    def css_postprocess(self, body: bytes) -> Result | None:
        if self.fails_in == "css_postprocess":
            raise TypeError(f"the answer does not fit the key {self.key}")
        return openai_format.chat_result(body)


@pytest.fixture
def serve_acme(double: ProviderDouble, serve: Callable[..., str]) -> Callable[[Acme], str]:
    """Serve one `Acme` at the double, with LEAK_KEY as its key (which the double expects)."""
    double.api_key = LEAK_KEY

    def start(plugin: Acme) -> str:
        pm, _, _ = plugin_manager(load_entry_points=False)
        pm.register(plugin, name="acme")
        env = {"ACME_API_KEY": LEAK_KEY, "ACME_BASE_URL": f"{double.url}/acme",
               **service_env(double, OPENAI_API_KEY=LEAK_KEY, CSS_REQUEST_TRIES=str(TRIES))}
        return serve(env, plugins=(pm, {}, []))

    return start


def acme_job() -> dict[str, Any]:
    return job(chat(provider="ACME"))


def test_a_provider_error_echoing_the_key_read_by_a_plugin_leaks_nowhere(
    double: ProviderDouble, serve_acme: Callable[[Acme], str], http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    def echo(kind: str) -> bytes:
        return msgspec.json.encode({"problem": f"the key {LEAK_KEY} is no good", "kind": kind})

    url = serve_acme(Acme())
    answers: list[httpx.Response] = []
    with caplog.at_level(logging.INFO):
        for faults, status in [
            ([Fault.status(400, body=echo("bad_key"))], 502),  # the key refused
            ([Fault.status(418, body=echo("busy"))] * TRIES, 502),  # retried, then given up
            ([Fault.status(418, body=echo("busy"))], 200),  # retried, then served
            ([Fault.status(422, body=echo("invalid"))], 400),  # rejected
        ]:
            double.script(*faults)
            answers.append(response := post_job(http, url, acme_job()))
            assert response.status_code == status, response.text
    reasons = [getattr(r, JOB_FIELDS).get("reason", "") for r in caplog.records if r.getMessage() == "job finished"]
    assert "retrying" in caplog.text and any("is no good" in reason for reason in reasons)  # the provider's words
    assert all("is no good" in r.text for r in answers if r.status_code != 200)  # and passed on
    for text in [caplog.text, *reasons, *(f"{r.headers!r} {r.text}" for r in answers)]:
        assert leaks(text, LEAK_KEY) == [], text


@pytest.mark.parametrize("hook", ["css_postprocess", "css_call"])
def test_a_plugin_failure_whose_message_holds_the_key_leaks_nowhere(
    double: ProviderDouble, serve_acme: Callable[[Acme], str], http: httpx.Client, caplog: pytest.LogCaptureFixture,
    hook: str,
) -> None:
    url = serve_acme(Acme(fails_in=hook))
    with caplog.at_level(logging.INFO):
        response = post_job(http, url, acme_job())
    assert response.status_code == 500, response.text
    assert "Traceback" in caplog.text  # the failure was logged, with its traceback
    assert leaks(f"{response.headers!r} {response.text}", LEAK_KEY) == [], response.text
    assert leaks(caplog.text, LEAK_KEY) == [], caplog.text
