"""Log lines (text and `CSS_LOG_FORMAT=json`) and request ids, over real sockets.

The format is checked on what the command line prints, with 2 workers: every line the
service and uvicorn write is read back. Request ids are checked on every kind of answer,
errors produced by Litestar's own handlers included.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from css_core.config import load_settings
from css_core.errors import ConfigError
from css_core.operations.logs import JOB_FIELDS, JsonFormatter, TextFormatter
from css_core.testing import Fault, ProviderDouble
from tests.conftest import KEY, OFFCHAIN, STREAM, Launched, chat, job, service_env
from tests.helpers import requires_plugin

needs_openai = requires_plugin("css_openai")
SECRET_PROMPT = "my-secret-prompt-words"
SECRET_OPTION = "my-secret-option-value"
JOB_LINE_FIELDS = {"request_id", "provider", "model", "endpoint", "destination", "status", "attempts",
                   "duration_ms", "provider_ms"}


def secret_job(destination: int = OFFCHAIN, **fields: Any) -> dict[str, Any]:
    """A job whose prompt and options must never be logged."""
    return job(chat(SECRET_PROMPT, extra_args={"user": SECRET_OPTION}, **fields), destination=destination)


def json_lines(output: str) -> list[dict[str, Any]]:
    """Every line of `output` as JSON: a line that does not parse fails the test."""
    lines = []
    for line in output.splitlines():
        if line.strip():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"not a JSON line: {line!r}")
    return lines


def assert_nothing_secret(output: str) -> None:
    for secret in (KEY, SECRET_PROMPT, SECRET_OPTION):
        assert secret not in output, secret


# -- the formats, as the command line prints them ----------------------------------------------------------------


@needs_openai
def test_json_lines_all_parse_and_name_the_request(
    double: ProviderDouble, launch: Callable[..., Launched]
) -> None:
    service = launch(service_env(double, CSS_LOG_FORMAT="json", CSS_REQUEST_TRIES="2"), workers=2)
    with httpx.Client(timeout=15, trust_env=False) as http:
        ids = [f"node-job.{i}" for i in range(4)]
        for rid in ids[:2]:
            assert http.post(f"{service.url}/service_output", json=secret_job(),
                             headers={"x-request-id": rid}).status_code == 200
        double.script(Fault.status(500), Fault.status(500))
        assert http.post(f"{service.url}/service_output", json=secret_job(),
                         headers={"x-request-id": ids[2]}).status_code == 502
        assert http.post(f"{service.url}/service_output", json=secret_job(destination=STREAM),
                         headers={"x-request-id": ids[3]}).status_code == 200
        bad = http.post(f"{service.url}/service_output", content=b"{", headers={"content-type": "application/json"})
        assert bad.status_code == 400
    output = service.stop()
    assert_nothing_secret(output)
    lines = json_lines(output)
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines), lines
    assert any(line["logger"] == "css_core" and "serving OPENAI" in line["message"] for line in lines)
    finished = {line["request_id"]: line for line in lines if line["message"] == "job finished"}
    assert set(ids) <= set(finished), finished
    for rid in ids:
        assert set(finished[rid]) >= JOB_LINE_FIELDS, finished[rid]
        assert (finished[rid]["provider"], finished[rid]["model"]) == ("OPENAI", "gpt-4")
    assert [finished[rid]["status"] for rid in ids] == [200, 200, 502, 200]
    assert [finished[rid]["level"] for rid in ids] == ["INFO", "INFO", "WARNING", "INFO"]  # a 5xx is a warning
    assert [finished[rid]["destination"] for rid in ids] == ["offchain", "offchain", "offchain", "stream"]
    assert finished[ids[2]]["error"] == "ProviderFailed"
    assert finished[ids[2]]["reason"].startswith("OPENAI failed after 2 attempt(s)")
    refused = finished[bad.headers["x-request-id"]]
    assert (refused["provider"], refused["status"], refused["error"]) == ("none", 400, "InvalidJob")
    assert refused["reason"] == bad.json()["description"]  # what the answer said, logged on the job's line
    # one line per job, and the warnings logged while serving a job name it too
    assert sum(line["message"] == "job finished" for line in lines) == 5
    assert not [line for line in lines if line["message"].startswith("job failed")]
    assert any(line.get("request_id") == ids[2] and line["level"] == "WARNING" for line in lines)


@needs_openai
def test_text_lines_stay_as_they_were_with_one_line_per_job(
    double: ProviderDouble, launch: Callable[..., Launched]
) -> None:
    service = launch(service_env(double), workers=2)
    with httpx.Client(timeout=15, trust_env=False) as http:
        assert http.post(f"{service.url}/service_output", json=secret_job(model="a model\nwith lines"),
                         headers={"x-request-id": "text-1"}).status_code == 200
    output = service.stop()
    assert_nothing_secret(output)
    assert re.search(r"^\S+ \S+ INFO css_core: serving OPENAI", output, re.MULTILINE), output
    (line,) = [line for line in output.splitlines() if "job finished" in line]
    assert re.match(r"^\S+ \S+ INFO css_core\.jobs: job finished request_id=text-1 provider=OPENAI "
                    r'model="a model\\nwith lines" endpoint=completions destination=offchain status=200 ', line), line


FORGED = "1999-01-01 00:00:00,000 INFO css_core: forged"
LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


@needs_openai
def test_a_job_value_cannot_forge_a_text_line_and_a_refused_job_is_one_line(
    double: ProviderDouble, launch: Callable[..., Launched]
) -> None:
    service = launch(service_env(double, CSS_REQUEST_TRIES="1", CSS_FALLBACKS='{"OPENAI": ["OPENAI/gpt-4o"]}'),
                     workers=1)
    model = f"gpt-x\n{FORGED}\r\n{FORGED}\u2028{FORGED}\x85{FORGED}\x1b[2J"
    with httpx.Client(timeout=15, trust_env=False) as http:
        double.script(Fault.status(500))  # the job falls back: "OPENAI/<its model> failed; falling back to ..."
        served = http.post(f"{service.url}/service_output", json=job(chat(model=model)),
                           headers={"x-request-id": "forging"})
        assert served.status_code == 200, served.text
        refused = http.post(f"{service.url}/service_output", json=job(chat(provider="PERPLEXITYAI", model=model)),
                            headers={"x-request-id": "refused"})
        assert refused.status_code == 400, refused.text
    output = service.stop()
    lines = output.splitlines()  # Python's line breaks: \n, \r, \x85, \u2028 and more
    forging = [line for line in lines if "forged" in line]
    assert forging and all(LINE.match(line) for line in forging), output
    assert not [line for line in lines if line.startswith("1999")], output
    assert "\x1b" not in output
    fell_back = [line for line in lines if "falling back to OPENAI/gpt-4o" in line]
    assert len(fell_back) == 1 and fell_back[0].count("forged") == 4, fell_back
    assert "\\n1999" in fell_back[0] and "\\u20281999" in fell_back[0] and "\\x851999" in fell_back[0]
    # the refused job: one line, the `job finished` one, with its error's public name and reason
    (line,) = [line for line in lines if "refused" in line]
    assert re.match(r"\S+ \S+ INFO css_core\.jobs: job finished request_id=refused provider=PERPLEXITYAI ", line)
    assert " status=400 " in line and " error=ProviderNotServed reason=" in line, line
    assert "PERPLEXITYAI_API_KEY" in line and "=_" not in output and "job failed" not in output


@needs_openai
def test_a_stream_cut_midway_is_logged_once_without_a_traceback(
    double: ProviderDouble, launch: Callable[..., Launched]
) -> None:
    service = launch(service_env(double), workers=1)
    double.script(Fault.cut_stream(after_chunks=2))
    # the response is aborted: no short success
    with httpx.Client(timeout=15, trust_env=False) as http, pytest.raises(httpx.RemoteProtocolError), \
            http.stream("POST", f"{service.url}/service_output", json=job(chat(), destination=STREAM),
                        headers={"x-request-id": "cut"}) as response:
        assert response.status_code == 200
        for _ in response.iter_bytes():
            pass
    output = service.stop()
    lines = output.splitlines()
    cut = [line for line in lines if "stream ended after" in line]
    assert len(cut) == 1 and "WARNING" in cut[0], output
    assert "Exception in ASGI application" not in output and "Traceback" not in output, output
    (finished,) = [line for line in lines if "job finished request_id=cut" in line]
    assert " error=StreamCut reason=" in finished, finished


def test_text_lines_escape_control_characters_but_keep_tracebacks() -> None:
    formatter = TextFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "falling back to %s",
                               ("a\nb\tc\x1bd\u2028e\x85f\x7f",), None)
    assert formatter.format(record) == "WARNING falling back to a\\nb\\tc\\x1bd\\u2028e\\x85f\\x7f"
    plain = logging.LogRecord("x", logging.INFO, __file__, 1, "ünïcode stays as it is", None, None)
    assert formatter.format(plain) == "INFO ünïcode stays as it is"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed\r\n%s", ("here",), sys.exc_info())
    first, *rest = formatter.format(failed).splitlines()
    assert first == "ERROR failed\\r\\nhere"
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "ValueError: boom"


def test_json_lines_escape_the_unicode_line_breaks_json_allows() -> None:
    message = "model a\u2028forged\x85line\u2029 é"
    record = logging.LogRecord("css_core.jobs", logging.INFO, __file__, 1, message, None, None)
    line = JsonFormatter().format(record)
    assert len(line.splitlines()) == 1
    assert json.loads(line)["message"] == message


def test_the_log_format_is_checked_at_start_up() -> None:
    with pytest.raises(ConfigError, match="CSS_LOG_FORMAT must be text or json"):
        load_settings(environ={"CSS_LOG_FORMAT": "xml"}, dotenv=None)
    assert load_settings(environ={"CSS_LOG_FORMAT": "JSON"}, dotenv=None).log_format == "json"
    assert load_settings(environ={}, dotenv=None).log_format == "text"


def test_the_formatters() -> None:
    record = logging.LogRecord("css_core.jobs", logging.INFO, __file__, 1, "job finished", None, None)
    setattr(record, JOB_FIELDS, {"request_id": "r1", "model": "x y", "status": 200})
    assert TextFormatter("%(message)s").format(record) == 'job finished request_id=r1 model="x y" status=200'
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "job finished" and entry["request_id"] == "r1" and entry["status"] == 200
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info())
    entry = json.loads(JsonFormatter().format(failed))
    assert entry["message"] == "failed here" and "ValueError: boom" in entry["exception"]


# -- request ids -----------------------------------------------------------------------------------------------


@needs_openai
@pytest.mark.parametrize("given", ["abc", "A.b-c_9", "x" * 128])
def test_a_valid_request_id_is_kept(given: str, service: Callable[..., str], http: httpx.Client) -> None:
    response = http.post(f"{service()}/service_output", json=job(chat()), headers={"x-request-id": given})
    assert response.status_code == 200 and response.headers["x-request-id"] == given


@needs_openai
@pytest.mark.parametrize("given", [None, "", "has space", "x" * 129, "semi;colon", "ünï"])
def test_any_other_request_id_is_replaced(given: str | None, service: Callable[..., str], http: httpx.Client) -> None:
    headers = {} if given is None else {b"x-request-id": given.encode()}
    response = http.post(f"{service()}/service_output", json=job(chat()), headers=headers)
    assert response.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


@needs_openai
def test_every_answer_carries_its_request_id(service: Callable[..., str], http: httpx.Client) -> None:
    url = service(CSS_BEARER_TOKEN="tok", CSS_MAX_BODY_BYTES="1000")
    auth = {"authorization": "Bearer tok"}
    answers = {
        "401 from the guard": http.post(f"{url}/service_output", json=job(chat())),
        "404 from the router": http.get(f"{url}/no-such-route"),
        "405": http.get(f"{url}/service_output", headers=auth),
        "413": http.post(f"{url}/service_output", content=b"{" * 2000,
                         headers={**auth, "content-type": "application/json"}),
        "415": http.post(f"{url}/service_output", content=b"{}", headers=auth),
        "400": http.post(f"{url}/service_output", json={"source": 9}, headers=auth),
        "200 job": http.post(f"{url}/service_output", json=job(chat()), headers=auth),
        "200 stream": http.post(f"{url}/service_output", json=job(chat(), destination=STREAM), headers=auth),
        "200 index": http.get(f"{url}/", headers=auth),
        "200 health": http.get(f"{url}/health"),
        "200 metrics": http.get(f"{url}/metrics", headers=auth),
        "200 resources": http.get(f"{url}/service-resources", headers=auth),
    }
    for what, response in answers.items():
        assert what.split()[0] == str(response.status_code), (what, response.text)
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers.get("x-request-id", "")), what
    again = http.get(f"{url}/no-such-route", headers={"x-request-id": "mine"})
    assert again.headers["x-request-id"] == "mine"
