"""Fallbacks (`CSS_FALLBACKS`): a job its provider could not answer is answered by the next
target, within the same deadline, and the answer says who served it.

OPENAI and PERPLEXITYAI are both played by the double (the same OpenAI-shaped routes), so
each request's model says which target it was.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from css_core.config import load_settings
from css_core.errors import ConfigError
from css_core.providers.registry import build_registry
from css_core.testing import Fault, ProviderDouble
from tests.conftest import (
    KEY,
    ONCHAIN,
    STREAM,
    Launched,
    assert_error,
    chat,
    job,
    onchain_hex,
    post_job,
    run_command,
    service_env,
)
from tests.helpers import requires_plugin

pytestmark = [requires_plugin("css_openai"), requires_plugin("css_perplexity")]

CHAIN = {"OPENAI/gpt-4o": ["OPENAI/gpt-4o-mini", "PERPLEXITYAI/sonar"]}


def fallback_service(service: Callable[..., str], double: ProviderDouble, fallbacks: dict[str, Any] = CHAIN,
                     **overrides: str | None) -> str:
    env: dict[str, str | None] = {
        "PERPLEXITYAI_API_KEY": KEY, "PERPLEXITYAI_BASE_URL": double.url, "CSS_REQUEST_TRIES": "2",
        "CSS_FALLBACKS": json.dumps(fallbacks), **overrides,
    }
    return service(**env)


def models_asked(double: ProviderDouble) -> list[str]:
    return [request.json["model"] for request in double.requests]


def served_by(response: httpx.Response) -> tuple[str, str]:
    return response.headers["x-css-provider"], response.headers["x-css-model"]


def test_the_second_target_answers_once_the_first_has_spent_its_retries(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    url = fallback_service(service, double)
    double.script(*[Fault.status(503)] * 4)
    response = post_job(http, url, job(chat(model="gpt-4o")))
    assert response.status_code == 200, response.text
    assert response.json() == {"output": double.expected_reply("sonar", "hi")}
    assert served_by(response) == ("PERPLEXITYAI", "sonar")
    assert models_asked(double) == ["gpt-4o", "gpt-4o", "gpt-4o-mini", "gpt-4o-mini", "sonar"]


def test_every_answer_names_who_served_it(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    url = fallback_service(service, double)
    response = post_job(http, url, job(chat(model="gpt-4o")))
    assert response.status_code == 200 and served_by(response) == ("OPENAI", "gpt-4o")
    data = onchain_hex(model="gpt-4o")
    response = post_job(http, url, job(data, source=ONCHAIN, destination=ONCHAIN))
    assert response.status_code == 200 and served_by(response) == ("OPENAI", "gpt-4o")
    double.script(*[Fault.status(500)] * 2)
    response = post_job(http, url, job(data, source=ONCHAIN, destination=ONCHAIN))
    assert response.status_code == 200 and served_by(response) == ("OPENAI", "gpt-4o-mini")
    assert set(response.json()) >= {"raw_input", "raw_output"}


def test_a_request_the_provider_rejects_does_not_fall_back(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    url = fallback_service(service, double)
    double.script(Fault.status(400))
    assert_error(post_job(http, url, job(chat(model="gpt-4o"))), 400, "OPENAI rejected the request")
    assert models_asked(double) == ["gpt-4o"]


def test_when_every_target_fails_the_502_names_each(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    url = fallback_service(service, double)
    double.script(*[Fault.status(503)] * 6)
    description = assert_error(post_job(http, url, job(chat(model="gpt-4o"))), 502, "no provider could answer",
                               "OPENAI/gpt-4o: ", "OPENAI/gpt-4o-mini: ", "PERPLEXITYAI/sonar: ", "HTTP 503")
    assert description.count("2 attempt(s)") == 3
    assert len(double.requests) == 6


def test_the_exact_model_wins_over_the_provider(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    url = fallback_service(service, double, {"openai": ["PERPLEXITYAI/sonar"], "OPENAI/gpt-4": []})
    double.script(*[Fault.status(503)] * 2)
    assert_error(post_job(http, url, job(chat(model="gpt-4"))), 502, "OPENAI failed after 2 attempt(s)")
    double.script(*[Fault.status(503)] * 2)
    response = post_job(http, url, job(chat(model="gpt-3.5-turbo")))
    assert response.status_code == 200 and served_by(response) == ("PERPLEXITYAI", "sonar")


def test_the_chain_is_followed_once(double: ProviderDouble, service: Callable[..., str], http: httpx.Client) -> None:
    url = fallback_service(service, double, {"OPENAI/gpt-4o": ["OPENAI/gpt-4o-mini"],
                                             "OPENAI/gpt-4o-mini": ["PERPLEXITYAI/sonar"]})
    double.script(*[Fault.status(503)] * 4)
    assert_error(post_job(http, url, job(chat(model="gpt-4o"))), 502, "OPENAI/gpt-4o-mini")
    assert models_asked(double) == ["gpt-4o", "gpt-4o", "gpt-4o-mini", "gpt-4o-mini"]


def test_a_target_not_served_or_without_the_endpoint_is_skipped(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    fallbacks = {"OPENAI": ["PERPLEXITYAI/sonar", "OPENAI/gpt-4o-mini"]}
    url = fallback_service(service, double, fallbacks, PERPLEXITYAI_API_KEY=None)
    double.script(*[Fault.status(503)] * 2)
    response = post_job(http, url, job(chat(model="gpt-4o")))
    assert response.status_code == 200 and served_by(response) == ("OPENAI", "gpt-4o-mini")
    double.reset()
    url = fallback_service(service, double, {"OPENAI/text-embedding-3-small": ["PERPLEXITYAI/sonar"]})
    double.script(*[Fault.status(503)] * 2)
    embeddings = {"provider": "OPENAI", "endpoint": "embeddings", "model": "text-embedding-3-small",
                  "params": {"endpoint": "embeddings", "input": "hi"}}
    assert_error(post_job(http, url, job(embeddings)), 502, "OPENAI failed after 2 attempt(s)")
    assert len(double.requests) == 2  # PERPLEXITYAI has no embeddings: not tried


def test_a_provider_not_served_falls_back(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    url = fallback_service(service, double, {"PERPLEXITYAI": ["OPENAI/gpt-4o-mini"]}, PERPLEXITYAI_API_KEY=None)
    response = post_job(http, url, job(chat(model="sonar", provider="PERPLEXITYAI")))
    assert response.status_code == 200 and served_by(response) == ("OPENAI", "gpt-4o-mini")


def test_a_cooling_provider_falls_back_at_once(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    url = fallback_service(service, double, {"OPENAI": ["PERPLEXITYAI/sonar"]}, CSS_REQUEST_TRIES="3")
    double.script(Fault.status(429, retry_after="30"))
    with caplog.at_level(logging.INFO):
        response = post_job(http, url, job(chat(model="gpt-4o")))
        assert response.status_code == 200 and served_by(response) == ("PERPLEXITYAI", "sonar")
        response = post_job(http, url, job(chat(model="gpt-4o")))  # OPENAI's only key still cools: not asked
        assert response.status_code == 200 and served_by(response) == ("PERPLEXITYAI", "sonar")
    # no wait for the key, neither a retry's nor a cooling key's
    assert "retrying in" not in caplog.text and "the job waits" not in caplog.text, caplog.text
    assert models_asked(double) == ["gpt-4o", "sonar", "sonar"]


def test_the_deadline_is_shared_and_never_followed_by_a_fallback(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    url = fallback_service(service, double, CSS_JOB_DEADLINE="1", CSS_REQUEST_TIMEOUT="30")
    double.script(*[Fault.hang(3)] * 2)
    assert_error(post_job(http, url, job(chat(model="gpt-4o"))), 504, "deadline", "1 attempt(s) made")
    assert models_asked(double) == ["gpt-4o"]  # neither a retry nor a fallback after the deadline


def test_a_stream_falls_back_before_its_first_byte(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    url = fallback_service(service, double)
    double.script(*[Fault.status(503)] * 2)
    response = post_job(http, url, job(chat(model="gpt-4o"), destination=STREAM))
    assert response.status_code == 200, response.text
    assert response.text == double.expected_reply("gpt-4o-mini", "hi")
    assert served_by(response) == ("OPENAI", "gpt-4o-mini")


def test_a_stream_does_not_fall_back_after_its_first_byte(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client
) -> None:
    url = fallback_service(service, double)
    double.script(Fault.cut_stream(after_chunks=1))
    with pytest.raises(httpx.TransportError), http.stream(
        "POST", f"{url}/service_output", json=job(chat(model="gpt-4o"), destination=STREAM)
    ) as response:
        assert response.status_code == 200 and served_by(response) == ("OPENAI", "gpt-4o")
        for _ in response.iter_raw():
            pass
    assert double.wait_for_streams(1) == ["cut"]
    assert models_asked(double) == ["gpt-4o"]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("{not json", "must be a JSON object"), ('["OPENAI/gpt-4o"]', "must be a JSON object"),
     ('{"OPENAI": "PERPLEXITYAI/sonar"}', "must be a JSON object"), ('{"OPENAI": ["PERPLEXITYAI"]}', "PROVIDER/model"),
     ('{"OPENAI/": ["PERPLEXITYAI/sonar"]}', "PROVIDER/model")],
)
def test_a_malformed_fallback_stops_start_up_naming_the_variable(value: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match="CSS_FALLBACKS") as error:
        load_settings({"CSS_FALLBACKS": value}, dotenv=None)
    assert fragment in str(error.value)


def test_an_unknown_provider_in_the_fallbacks_stops_start_up(tmp_path: Path) -> None:
    for fallbacks in ({"NOSUCHAI/model": ["OPENAI/gpt-4o"]}, {"OPENAI": ["NOSUCHAI/model"]}):
        settings = load_settings({"CSS_FALLBACKS": json.dumps(fallbacks)}, dotenv=None)
        with pytest.raises(ConfigError, match="CSS_FALLBACKS names provider 'NOSUCHAI'"):
            build_registry(settings)
    result = run_command(env={"CSS_FALLBACKS": '{"OPENAI": ["NOSUCHAI/model"]}'}, cwd=tmp_path)
    assert result.returncode == 2 and "CSS_FALLBACKS" in result.stderr and "NOSUCHAI" in result.stderr


def test_two_workers_fall_back_each(
    double: ProviderDouble, launch: Callable[..., Launched], http: httpx.Client
) -> None:
    env = service_env(double, PERPLEXITYAI_API_KEY=KEY, PERPLEXITYAI_BASE_URL=double.url, CSS_REQUEST_TRIES="1",
                      CSS_FALLBACKS=json.dumps({"OPENAI": ["PERPLEXITYAI/sonar"]}))
    service = launch(env, workers=2)
    for _ in range(4):
        double.script(Fault.status(503))
        response = post_job(http, service.url, job(chat(model="gpt-4o")))
        assert response.status_code == 200 and served_by(response) == ("PERPLEXITYAI", "sonar")
    assert models_asked(double) == ["gpt-4o", "sonar"] * 4
