"""The HTTP contract of the container, over real sockets: media types, the bearer token, methods,
and the OpenAPI schema that documents `POST /service_output`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest

from css_core.testing import ProviderDouble
from tests.conftest import assert_error, chat, job
from tests.helpers import requires_plugin

needs_openai = requires_plugin("css_openai")  # a job served with a 200 goes through the OpenAI plugin
JOB = msgspec.json.encode(job(chat()))
TOKEN = "tok"


# -- media types -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", None, "application/jsonp", "json"],
)
def test_a_job_not_sent_as_json_is_a_415(
    double: ProviderDouble, url: str, http: httpx.Client, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    response = http.post(f"{url}/service_output", content=JOB, headers=headers)
    assert ("content-type" in response.request.headers) is (content_type is not None)
    description = assert_error(response, 415, "application/json")
    assert (content_type or "none") in description
    assert double.requests == []


@needs_openai
@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON",
                     "APPLICATION/JSON;charset=UTF-8", "application/json ; charset=utf-8"],
)
def test_a_job_sent_as_json_is_served(
    double: ProviderDouble, url: str, http: httpx.Client, content_type: str
) -> None:
    response = http.post(f"{url}/service_output", content=JOB, headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    assert response.json() == {"output": double.expected_reply("gpt-4", "hi")}
    assert len(double.requests) == 1


# -- the bearer token --------------------------------------------------------------------------------------


def send(http: httpx.Client, url: str, path: str, authorization: str | None) -> httpx.Response:
    headers = {} if authorization is None else {"authorization": authorization}
    if path == "/service_output":
        return http.post(url + path, content=JOB, headers={"content-type": "application/json", **headers})
    return http.get(url + path, headers=headers)


GUARDED = ["/service_output", "/service-resources"]


@needs_openai
@pytest.mark.parametrize("path", GUARDED)
@pytest.mark.parametrize("authorization", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER {TOKEN}"])
def test_the_bearer_scheme_is_matched_in_any_case(
    service: Callable[..., str], http: httpx.Client, path: str, authorization: str
) -> None:
    url = service(CSS_BEARER_TOKEN=TOKEN)
    response = send(http, url, path, authorization)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", GUARDED)
@pytest.mark.parametrize(
    "authorization", ["Bearer wrong", f"Basic {TOKEN}", None, f"Bearer {TOKEN}X", f"Bearer{TOKEN}", TOKEN],
    ids=["wrong-token", "basic", "missing", "token-with-suffix", "no-space", "no-scheme"],
)
def test_a_wrong_or_missing_bearer_token_is_a_401(
    double: ProviderDouble, service: Callable[..., str], http: httpx.Client, path: str, authorization: str | None
) -> None:
    url = service(CSS_BEARER_TOKEN=TOKEN)
    assert_error(send(http, url, path, authorization), 401, "Authorization: Bearer")
    assert double.requests == []


def test_the_index_needs_the_token_as_it_shows_the_keys(service: Callable[..., str], http: httpx.Client) -> None:
    url = service(CSS_BEARER_TOKEN=TOKEN)
    assert_error(http.get(f"{url}/"), 401)
    response = http.get(f"{url}/", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert "providers" in response.json() and "keys" in response.json()


# -- methods ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_service_output_takes_only_post(
    double: ProviderDouble, url: str, http: httpx.Client, method: str
) -> None:
    response = http.request(method, f"{url}/service_output")
    assert_error(response, 405)
    assert "POST" in response.headers.get("allow", "")
    assert double.requests == []


# -- the OpenAPI schema ------------------------------------------------------------------------------------


def test_the_schema_documents_service_output(url: str, http: httpx.Client) -> None:
    response = http.get(f"{url}/schema/openapi.json")
    assert response.status_code == 200
    schema: dict[str, Any] = response.json()
    operation = schema["paths"]["/service_output"]["post"]

    body = operation["requestBody"]
    assert body["required"] is True
    job_schema = body["content"]["application/json"]["schema"]
    assert {"source", "destination", "data", "requires_proof"} <= set(job_schema["properties"])
    assert {"source", "destination", "data"} <= set(job_schema["required"])

    responses = operation["responses"]
    ok = responses["200"]["content"]
    assert "application/json" in ok and "text/plain" in ok  # a result, or a stream's text
    errors = {status for status in responses if status[0] in "45"}
    assert {"400", "401", "413", "415", "500", "502", "503", "504"} <= errors
    for status in errors:
        error = responses[status]["content"]["application/json"]["schema"]
        assert set(error["properties"]) == {"code", "name", "description"}, status
    assert "Retry-After" in responses["503"]["headers"]
