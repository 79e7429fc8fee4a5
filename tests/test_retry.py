"""The retry policy: its schedule and what it retries (units), then through the service over
real sockets with short delays: what is retried, what is not, and when it gives up."""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from css_core.config import RetryPolicy
from css_core.errors import ProviderBadResponse, ProviderHTTPError, ProviderUnreachable
from css_core.jobs.retry import is_retryable, wait_seconds
from css_core.providers.http import retry_after_seconds
from css_core.testing import Fault, ProviderDouble
from css_core.types import ProviderSpec
from tests.conftest import assert_error, chat, job, post_job
from tests.helpers import requires_plugin

needs_openai = requires_plugin("css_openai")  # the service tests go through the OpenAI plugin
RETRYABLE = ProviderSpec(name="X", onchain_id=9, api_key_env="X_KEY", default_base_url="http://x").retryable_statuses
NO_JITTER = RetryPolicy(tries=6, delay=1.0, max_delay=5.0, backoff=2.0, jitter=(0.0, 0.0))
HANG = 60.0  # a hang longer than the test client's 15 s timeout: a job that waited it out would fail


# -- the schedule ----------------------------------------------------------------------------------------


def test_waits_grow_by_backoff_up_to_max_delay() -> None:
    assert [wait_seconds(NO_JITTER, n, None) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    flat = RetryPolicy(delay=0.5, max_delay=10.0, backoff=1.0, jitter=(0.0, 0.0))
    assert [wait_seconds(flat, n, None) for n in range(1, 4)] == [0.5, 0.5, 0.5]


@given(
    delay=st.floats(0, 30), max_delay=st.floats(0, 60), backoff=st.floats(1, 4),
    low=st.floats(0, 3), spread=st.floats(0, 3), attempt=st.integers(1, 12),
)
def test_jitter_is_added_within_its_range(
    delay: float, max_delay: float, backoff: float, low: float, spread: float, attempt: int
) -> None:
    policy = RetryPolicy(delay=delay, max_delay=max_delay, backoff=backoff, jitter=(low, low + spread))
    base = min(delay * backoff ** (attempt - 1), max_delay)
    wait = wait_seconds(policy, attempt, ProviderHTTPError(503, "busy"))
    assert base + low - 1e-9 <= wait <= base + low + spread + 1e-9


def test_jitter_varies() -> None:
    policy = RetryPolicy(delay=1.0, jitter=(0.5, 1.5))
    assert len({wait_seconds(policy, 1, None) for _ in range(20)}) > 1


@pytest.mark.parametrize("retry_after", [0.0, 0.25, 7.5, 120.0])
def test_retry_after_replaces_the_computed_wait(retry_after: float) -> None:
    exc = ProviderHTTPError(429, "slow down", retry_after=retry_after)
    for attempt in (1, 3, 10):
        assert wait_seconds(RetryPolicy(), attempt, exc) == retry_after


def test_retry_after_header_values() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("") is None
    assert retry_after_seconds("soon") is None
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8.0 <= (retry_after_seconds(in_ten) or 0) <= 10.0
    assert retry_after_seconds(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0.0
    assert retry_after_seconds("-5") == 0.0


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retryable(status: int) -> None:
    assert is_retryable(ProviderHTTPError(status, "x"), RETRYABLE)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_request_errors_are_not_retryable(status: int) -> None:
    assert not is_retryable(ProviderHTTPError(status, "x"), RETRYABLE)


def test_a_provider_chooses_its_retryable_statuses() -> None:
    assert is_retryable(ProviderHTTPError(418, "x"), frozenset({418}))
    assert not is_retryable(ProviderHTTPError(503, "x"), frozenset({418}))


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (ProviderUnreachable("connection failed (ClientConnectorError)"), True),
        (ProviderUnreachable("timed out (SocketTimeoutError)"), True),
        (ProviderBadResponse("not JSON"), True),
        (ValueError("a bug"), False),
        (KeyError("a bug"), False),
    ],
)
def test_transport_errors_and_bad_bodies_are_retryable(exc: BaseException, retryable: bool) -> None:
    assert is_retryable(exc, RETRYABLE) is retryable


# -- through the service -------------------------------------------------------------------------------------


def timed_job(http: httpx.Client, url: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = post_job(http, url, job(chat()))
    return response, time.monotonic() - started


def assert_recovered(double: ProviderDouble, response: httpx.Response, attempts: int = 2) -> None:
    assert response.status_code == 200, response.text
    assert response.json() == {"output": double.expected_reply("gpt-4", "hi")}
    assert len(double.requests) == attempts


@needs_openai
@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_rate_limit_waits_for_retry_after(double: ProviderDouble, url: str, http: httpx.Client, form: str) -> None:
    # an HTTP-date has a resolution of one second: 2 s ahead means a wait of 1 to 2 s
    retry_after = "1" if form == "seconds" else email.utils.formatdate(time.time() + 2, usegmt=True)
    double.script(Fault.status(429, retry_after=retry_after))
    response, elapsed = timed_job(http, url)
    assert_recovered(double, response)
    assert elapsed >= 0.9  # without Retry-After the service would wait CSS_REQUEST_DELAY=0.01 s


@needs_openai
@pytest.mark.parametrize("status", [500, 502, 503, 504, 429, 408])
def test_transient_status_then_success(double: ProviderDouble, url: str, http: httpx.Client, status: int) -> None:
    double.script(Fault.status(status))
    assert_recovered(double, post_job(http, url, job(chat())))


@needs_openai
@pytest.mark.parametrize(
    "fault", [Fault.reset(), Fault.malformed_json(), Fault.cut_stream(0)], ids=["reset", "malformed-json", "cut-body"]
)
def test_broken_answer_then_success(double: ProviderDouble, url: str, http: httpx.Client, fault: Fault) -> None:
    double.script(fault)
    assert_recovered(double, post_job(http, url, job(chat())))


@needs_openai
def test_hung_attempt_times_out_then_success(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    url = service(CSS_REQUEST_TIMEOUT="0.3")
    double.script(Fault.hang(HANG))  # hangs past the client's patience: only the timeout can end the attempt
    with caplog.at_level(logging.WARNING, logger="css_core.jobs.pipeline"):
        response = post_job(http, url, job(chat()))
    assert_recovered(double, response)
    assert "OPENAI attempt 1 failed (timed out" in caplog.text  # abandoned for its timeout, not ended by the double


@needs_openai
def test_several_failures_then_success(double: ProviderDouble, service: Callable[..., str], http: httpx.Client) -> None:
    url = service(CSS_REQUEST_TRIES="4")
    double.script(Fault.status(503), Fault.reset(), Fault.malformed_json())
    assert_recovered(double, post_job(http, url, job(chat())), attempts=4)


@needs_openai
@pytest.mark.parametrize(("status", "answered"), [(400, 400), (401, 502), (403, 502), (404, 400), (422, 400)])
def test_request_errors_are_not_retried(
    double: ProviderDouble, url: str, http: httpx.Client, status: int, answered: int
) -> None:
    double.script(Fault.status(status))
    assert_error(post_job(http, url, job(chat())), answered, "OPENAI", str(status))
    assert len(double.requests) == 1


@needs_openai
@pytest.mark.parametrize("tries", ["1", "4"])
def test_giving_up_names_provider_status_and_attempts(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client, tries: str
) -> None:
    url = service(CSS_REQUEST_TRIES=tries)
    double.script(*[Fault.status(500)] * (int(tries) - 1), Fault.status(503))
    assert_error(post_job(http, url, job(chat())), 502, "OPENAI", "HTTP 503", f"{tries} attempt(s)")
    assert len(double.requests) == int(tries)


@needs_openai
def test_retry_params_of_kw_args_set_the_attempts(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    url = service(CSS_INF_WORKFLOW_KW_ARGS='{"retry_params": {"tries": 2, "delay": 0.01, "jitter": [0, 0]}}',
                  CSS_REQUEST_DELAY=None, CSS_REQUEST_JITTER=None)
    double.script(*[Fault.status(502)] * 5)
    assert_error(post_job(http, url, job(chat())), 502, "2 attempt(s)")
    assert len(double.requests) == 2


@needs_openai
def test_job_deadline_stops_hung_attempts(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    url = service(CSS_JOB_DEADLINE="1", CSS_REQUEST_TIMEOUT=str(2 * HANG), CSS_REQUEST_TRIES="5")
    double.script(*[Fault.hang(HANG)] * 5)  # neither the hang nor the timeout ends before the client gives up
    response, elapsed = timed_job(http, url)
    assert_error(response, 504, "OPENAI", "deadline", "1 attempt(s)")
    assert elapsed >= 0.9  # it waited for the deadline
    assert len(double.requests) == 1  # the one hung attempt, stopped by the deadline


@needs_openai
def test_retry_after_beyond_the_deadline_fails_fast(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    url = service(CSS_JOB_DEADLINE="2")
    double.script(Fault.status(429, retry_after="30"))
    # it gave up at once with the provider's answer (a 502), instead of sleeping into the deadline (a 504)
    assert_error(post_job(http, url, job(chat())), 502, "OPENAI", "429", "1 attempt(s)")
    assert len(double.requests) == 1


# -- a 429's cool-down of its key ----------------------------------------------------------------------------

_KEYS = iter(range(1, 1_000_000))


def fresh_keys(n: int) -> list[str]:
    """Keys no other test uses: a fresh service, with no key cooling down from another test."""
    run = next(_KEYS)
    return [f"sk-retry{run}-key{i}-abcd{run:04d}wxyz" for i in range(1, n + 1)]


@needs_openai
def test_a_429_without_retry_after_cools_its_key_for_the_configured_wait(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    """Not the default policy's wait (3 s and its jitter), which would pass the 2 s deadline."""
    (key,) = fresh_keys(1)
    url = service(OPENAI_API_KEY=key, CSS_REQUEST_DELAY="0", CSS_REQUEST_JITTER="[0, 0]", CSS_JOB_DEADLINE="2")
    double.api_key = key
    double.script(Fault.status(429))
    assert_recovered(double, post_job(http, url, job(chat())))


def usable_keys(http: httpx.Client, url: str) -> int:
    usable: int = http.get(f"{url}/").json()["keys"]["OPENAI"]["usable"]
    return usable


@needs_openai
@pytest.mark.parametrize("retry_after", ["1e12", "inf"])
def test_a_retry_after_sets_a_key_aside_no_longer_than_the_cap(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client, retry_after: str
) -> None:
    """`CSS_KEY_DISABLE_SECONDS` caps a `Retry-After`: the key serves again after it, not after the restart."""
    keys = fresh_keys(2)
    url = service(OPENAI_API_KEY=",".join(keys), CSS_KEY_DISABLE_SECONDS="1")
    double.api_key = None  # the double takes either key
    double.script(Fault.status(429, retry_after=retry_after))
    assert_recovered(double, post_job(http, url, job(chat())))  # by the other key, at once
    assert usable_keys(http, url) == 1
    give_up = time.monotonic() + 30  # a generous wait for what takes a second
    while usable_keys(http, url) < 2:
        assert time.monotonic() < give_up, "the key is still set aside, long past CSS_KEY_DISABLE_SECONDS"
        time.sleep(0.05)
