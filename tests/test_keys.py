"""Key pools: several keys in a provider's variable, used in turn, cooled down after a 429, set
aside when refused, and never named by any part of them.

The pool itself is tested with a clock of its own; through the service, against the
provider double, with the keys each request carried (`Authorization`).
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from css_core.providers.keys import KeyPool, scrubber
from css_core.testing import Fault, ProviderDouble
from tests.conftest import Launched, assert_error, chat, job, post_job, run_command, service_env
from tests.helpers import requires_plugin

_POOLS = itertools.count(1)


def pool_keys(n: int = 2) -> list[str]:
    """`n` keys no other test uses: a pool of a fresh service, with no cool-down left from another test."""
    pool = next(_POOLS)
    return [f"sk-pool{pool}-key{i}-{'abcdefgh'[i]}{pool:04d}wxyz" for i in range(1, n + 1)]


def keys_used(double: ProviderDouble, keys: list[str]) -> list[int]:
    """The position (1-based) of the key of each request the double received."""
    by_header = {f"Bearer {key}": i for i, key in enumerate(keys, 1)}
    return [by_header[request.headers["authorization"]] for request in double.requests]


def key_counts(http: httpx.Client, url: str) -> dict[str, int]:
    counts: dict[str, int] = http.get(f"{url}/").json()["keys"]["OPENAI"]
    return counts


# -- the pool, on its own clock -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_keys_are_used_in_turn() -> None:
    pool = KeyPool(3, 600)
    assert [pool.pick() for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert [KeyPool(1, 600).pick() for _ in range(3)] == [0, 0, 0]


def test_a_cooling_key_is_skipped_until_its_cool_down_ends() -> None:
    clock = Clock()
    pool = KeyPool(2, 600, clock)
    pool.cool(0, 30)
    assert (pool.usable(), pool.wait()) == (1, 0.0)
    assert [pool.pick() for _ in range(3)] == [1, 1, 1]
    pool.cool(1, 10)
    assert (pool.usable(), pool.wait()) == (0, 10.0)  # every key cools: wait for the first free
    assert pool.pick() == 1  # a job that must call anyway takes the first free
    clock.now += 10
    assert (pool.usable(), pool.wait(), pool.pick()) == (1, 0.0, 1)
    clock.now += 20
    assert pool.usable() == 2 and pool.paused == 0


def test_a_refused_key_is_set_aside_but_never_the_last() -> None:
    clock = Clock()
    pool = KeyPool(2, 600, clock)
    assert pool.set_aside(0)
    assert not pool.set_aside(1)  # the last key not set aside stays: jobs still try it
    assert pool.usable() == 1 and [pool.pick() for _ in range(2)] == [1, 1]
    assert pool.wait({1}) is None  # a job that saw key 2 refused has no key left
    assert not pool.other(1, {1}) and pool.other(1, None) is False
    clock.now += 600
    assert pool.usable() == 2


def test_no_key_is_set_aside_with_a_disable_time_of_0() -> None:
    pool = KeyPool(2, 0)
    assert not pool.set_aside(0) and pool.usable() == 2
    assert pool.pick({0}) == 1 and pool.wait({0, 1}) is None


def test_a_provider_without_key_has_one_anonymous_slot() -> None:
    pool = KeyPool(0, 600)
    assert (pool.total, pool.size, pool.usable(), pool.pick()) == (0, 1, 0, 0)


def test_scrubber_removes_keys_whole_and_masked() -> None:
    key = "sk-proj-SECRET0123456789abcdWXYZ"
    scrub = scrubber((key, "sk-other-key-9999"))
    for text in (f"key {key}.", "key sk-****WXYZ.", "key sk-proj-SE****", "key sk-proj-S••••XYZ.", "key ...bcdWXYZ."):
        scrubbed = scrub(text)
        assert "WXYZ" not in scrubbed and "sk-proj-S" not in scrubbed, (text, scrubbed)
        assert scrubbed.startswith("key ***"), scrubbed
    assert scrub("sk-****-ab rate limit *** retry... later") == "sk-****-ab rate limit *** retry... later"
    assert scrubber(())("sk-****WXYZ") == "sk-****WXYZ"


# -- through the service ----------------------------------------------------------------------------------------


needs_openai = requires_plugin("css_openai")  # the service tests go through the OpenAI plugin


def waits(log: str) -> list[float]:
    """The waits before each retry, as the job logged them."""
    return [float(seconds) for seconds in re.findall(r"retrying in ([0-9.]+) s", log)]


@needs_openai
def test_429_moves_to_the_next_key_at_once_and_cools_the_key(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    keys = pool_keys()
    url = service(OPENAI_API_KEY=" , ".join(keys), CSS_REQUEST_DELAY="5")  # spaces around the commas are ignored
    double.api_key = None
    double.script(Fault.status(429, retry_after="30"))
    with caplog.at_level(logging.INFO):
        response = post_job(http, url, job(chat()))
    assert response.status_code == 200, response.text
    assert waits(caplog.text) == [0.0]  # neither the Retry-After nor the policy's wait
    assert keys_used(double, keys) == [1, 2]
    assert key_counts(http, url) == {"total": 2, "usable": 1}
    for _ in range(4):
        assert post_job(http, url, job(chat())).status_code == 200
    assert keys_used(double, keys) == [1, 2, 2, 2, 2, 2]  # key 1 is not used again within its 30 s


@needs_openai
def test_every_key_cooling_waits_for_the_first_free(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    keys = pool_keys()
    url = service(OPENAI_API_KEY=",".join(keys))
    double.api_key = None
    double.script(Fault.status(429, retry_after="1"), Fault.status(429, retry_after="3"))
    with caplog.at_level(logging.INFO):
        assert post_job(http, url, job(chat())).status_code == 200
    first, second = waits(caplog.text)
    assert first == 0.0 and 0 < second <= 1.0  # what is left of key 1's second, not key 2's three
    assert keys_used(double, keys) == [1, 2, 1]


@needs_openai
def test_a_new_job_does_not_call_while_its_only_key_cools_past_the_deadline(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    url = service(OPENAI_API_KEY=pool_keys(1)[0], CSS_JOB_DEADLINE="2")
    double.api_key = None
    double.script(Fault.status(429, retry_after="30"))
    assert_error(post_job(http, url, job(chat())), 502, "OPENAI", "429")
    with caplog.at_level(logging.INFO):
        assert_error(post_job(http, url, job(chat())), 502, "OPENAI", "cooling down")
    assert "the job waits" not in caplog.text and waits(caplog.text) == []  # refused at once, without a wait
    assert len(double.requests) == 1  # the provider is not asked again while it said to wait
    assert key_counts(http, url) == {"total": 1, "usable": 0}


@needs_openai
def test_a_refused_key_is_set_aside(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    keys = pool_keys()
    url = service(OPENAI_API_KEY=",".join(keys))
    double.api_key = keys[1]  # key 1 is answered 401
    with caplog.at_level(logging.INFO):
        for _ in range(4):
            assert post_job(http, url, job(chat())).status_code == 200
    assert keys_used(double, keys) == [1, 2, 2, 2, 2]
    assert key_counts(http, url) == {"total": 2, "usable": 1}
    assert "refused key 1 of 2" in caplog.text and "set aside for 600 s" in caplog.text
    assert all(key not in caplog.text and key[-8:] not in caplog.text for key in keys)


@needs_openai
def test_a_disable_time_of_0_tries_the_keys_afresh_for_each_job(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    keys = pool_keys()
    url = service(OPENAI_API_KEY=",".join(keys), CSS_KEY_DISABLE_SECONDS="0")
    double.api_key = keys[1]
    for _ in range(2):
        assert post_job(http, url, job(chat())).status_code == 200
    assert keys_used(double, keys) == [1, 2, 1, 2]
    assert key_counts(http, url) == {"total": 2, "usable": 2}


@needs_openai
def test_every_key_refused_is_a_502_naming_them_by_position(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    keys = pool_keys()
    url = service(OPENAI_API_KEY=",".join(keys), CSS_REQUEST_TRIES="1")  # a refused key's next is not a retry
    double.api_key = "sk-neither-of-them"
    message = b'{"error": {"message": "Incorrect API key provided: %s"}}'
    double.script(Fault.status(401, body=message % keys[0].encode()),
                  Fault.status(401, body=message % f"sk-pool****{keys[1][-4:]}".encode()))
    description = assert_error(post_job(http, url, job(chat())), 502, "OPENAI refused this service's API keys",
                                "key 1 of 2", "key 2 of 2", "Incorrect API key provided: ***")
    assert all(key not in description and key[-4:] not in description for key in keys)
    assert keys_used(double, keys) == [1, 2]
    assert_error(post_job(http, url, job(chat())), 502, "refused this service's API key")
    assert keys_used(double, keys) == [1, 2, 2]  # key 1 is set aside, key 2 still tried (the last one)


@needs_openai
def test_keys_are_used_in_turn_through_the_service(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    keys = pool_keys()
    url = service(OPENAI_API_KEY=",".join(keys))
    double.api_key = None
    for _ in range(10):
        assert post_job(http, url, job(chat())).status_code == 200
    used = keys_used(double, keys)
    assert (used.count(1), used.count(2)) == (5, 5)


@needs_openai
def test_plugins_listing_counts_the_keys(tmp_path: Path) -> None:
    listing = run_command("plugins", env={"OPENAI_API_KEY": "sk-one-aaaa1111, sk-two-bbbb2222"}, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    line = next(line for line in listing.stdout.splitlines() if " OPENAI " in line)
    assert "OPENAI_API_KEY set (2 keys, 2 usable)" in line
    assert "aaaa1111" not in listing.stdout + listing.stderr


@needs_openai
def test_two_workers_each_set_a_refused_key_aside(
    double: ProviderDouble, launch: Callable[..., Launched], http: httpx.Client
) -> None:
    keys = pool_keys()
    service = launch(service_env(double, OPENAI_API_KEY=",".join(keys)), workers=2)
    double.api_key = keys[1]
    for _ in range(8):
        assert post_job(http, service.url, job(chat())).status_code == 200
    used = keys_used(double, keys)
    assert used.count(2) == 8 and used.count(1) <= 2  # at most once per worker
    log = service.stop()
    assert "refused key 1 of 2" in log
    assert all(key not in log for key in keys)
