"""What a plugin reads from an answer besides its text, over real sockets against the double:
its token usage (`css_usage`), and why a stream carried no text (`css_stream_without_text`).
Inline plugin classes build on `Acme` (`tests/acme.py`); tests named `test_hook_<hook>...`
count for the meta-test of `test_plugins.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pluggy
import pytest

from css_core.errors import ProviderBadResponse
from css_core.operations.logs import JOB_FIELDS as LOG_FIELDS
from css_core.providers.hookspecs import hookimpl
from css_core.testing import ProviderDouble, Route, Stream
from css_core.types import Usage
from tests.acme import Acme, acme_job, serve_acme
from tests.conftest import STREAM, assert_error, post_job, registered

__all__ = ("serve_acme",)  # the fixture, imported for pytest to find


# -- css_usage ----------------------------------------------------------------------------------------------


class Counts(Acme):
    """A provider whose answers and events report `{"n": [input, output]}` (a running total in a stream)."""

    @hookimpl
    def css_parse_stream_event(self, data: bytes) -> str | None:
        text: str | None = msgspec.json.decode(data).get("text")
        return text

    @hookimpl
    def css_usage(self, data: bytes) -> Usage | None:
        counts = msgspec.json.decode(data).get("n")
        return None if counts is None else Usage(*counts)


def post_counted(http: httpx.Client, url: str, body: Any) -> httpx.Response:
    return http.post(f"{url}/service_output", json=body, headers={"x-request-id": "counted-job"})


def finished_job(double: ProviderDouble, caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """The log fields of the job `post_counted` sent, once logged: its line follows its answer, from
    the service's thread (which may log other jobs' too)."""

    def lines() -> list[dict[str, Any]]:
        return [fields for r in caplog.records
                if (fields := getattr(r, LOG_FIELDS, None)) and fields["request_id"] == "counted-job"]

    double.wait_for(lambda: bool(lines()), what="the job's log line")
    (fields,) = lines()
    return fields


def test_hook_css_usage_of_an_answer_is_the_jobs(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    answer = {"choices": [{"message": {"content": "counted"}}], "n": [7, 11]}
    double.add_route(Route("POST", r"/acme/chat/completions", answer))
    with registered(pm, acme=Counts()), caplog.at_level(logging.INFO, logger="css_core.jobs"):
        url = serve_acme()
        assert post_counted(http, url, acme_job()).json() == {"output": "counted"}
        fields = finished_job(double, caplog)
    assert (fields["input_tokens"], fields["output_tokens"]) == (7, 11)


def test_hook_css_usage_of_a_stream_is_the_largest_its_events_report(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Read from the events without text and from the last one, which here carries text."""
    events = [{"n": [5, 1]}, {"text": "a", "n": [0, 99]}, {"text": "b"}, {"n": [0, 2]}, {"text": "c", "n": [5, 3]}]
    double.add_route(Route("POST", r"/acme/chat/completions", Stream(events)))
    with registered(pm, acme=Counts()), caplog.at_level(logging.INFO, logger="css_core.jobs"):
        url = serve_acme()
        response = post_counted(http, url, acme_job() | {"destination": STREAM})
        assert (response.status_code, response.text) == (200, "abc")
        fields = finished_job(double, caplog)
    # the 99 is in an event with text that is not the last: never read
    assert (fields["input_tokens"], fields["output_tokens"]) == (5, 3)


def test_hook_css_usage_unreadable_is_logged_and_the_job_keeps_its_answer(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    answer = {"choices": [{"message": {"content": "kept"}}], "n": "many"}
    double.add_route(Route("POST", r"/acme/chat/completions", answer))
    with registered(pm, acme=Counts()), caplog.at_level(logging.INFO):
        url = serve_acme()
        assert post_counted(http, url, acme_job()).json() == {"output": "kept"}
        fields = finished_job(double, caplog)
    assert len(double.requests) == 1  # not retried
    assert "could not read the answer's usage" in caplog.text
    assert "input_tokens" not in fields


# -- css_stream_without_text --------------------------------------------------------------------------------


class SaysWhy(Counts):
    """Its events say why they stopped (`{"stop": reason}`); a stream of none with text names it."""

    seen: list[list[bytes]]

    @hookimpl
    def css_stream_without_text(self, events: list[bytes]) -> None:
        self.seen.append(events)
        for data in events:
            if stop := msgspec.json.decode(data).get("stop"):
                raise ProviderBadResponse(f"ACME stopped ({stop})")


@pytest.mark.parametrize(("stop", "said"), [("refused", "ACME stopped (refused)"),
                                            (None, "the stream ended without any text")])
def test_hook_css_stream_without_text_names_why_from_the_last_event(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client,
    stop: str | None, said: str,
) -> None:
    events = [{"n": [5, 0]}, {"stop": stop}, {"n": [5, 9]}, *[{}] * 6]
    double.add_route(Route("POST", r"/acme/chat/completions", Stream(events)))
    plugin = SaysWhy()
    plugin.seen = []
    with registered(pm, acme=plugin):
        url = serve_acme(CSS_REQUEST_TRIES="2")
        response = post_job(http, url, acme_job() | {"destination": STREAM})
    assert_error(response, 502, "ACME failed after 2 attempt(s)", said)
    assert len(double.requests) == 2  # retried like an unreadable answer
    # once an attempt, with its last 8 events
    assert [[msgspec.json.decode(data) for data in seen] for seen in plugin.seen] == [events[1:]] * 2


def test_hook_css_stream_without_text_is_not_called_for_a_stream_with_text(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client,
) -> None:
    events = [{"text": "a"}, {"n": [1, 1], "stop": "length"}]
    double.add_route(Route("POST", r"/acme/chat/completions", Stream(events)))
    plugin = SaysWhy()
    plugin.seen = []
    with registered(pm, acme=plugin):
        url = serve_acme()
        response = post_job(http, url, acme_job() | {"destination": STREAM})
    assert (response.status_code, response.text) == (200, "a")
    assert plugin.seen == []
