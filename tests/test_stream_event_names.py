"""A provider that says what a streamed event is only on its `event:` line, served by the core's
own reader: `css_parse_stream_event` receives each event's name, so its plugin needs no
`css_call_stream` of its own. Over real sockets against the double, as `tests/acme.py`'s plugins;
then the names the reader gives the events of each read (`Events.names`), on its own.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import msgspec
import pluggy
import pytest

from css_core.errors import ProviderBadResponse
from css_core.providers.hookspecs import hookimpl
from css_core.providers.http import Events, named_events
from css_core.testing import Event, Framing, ProviderDouble, Route, Stream
from tests.acme import Acme, acme_job, serve_acme
from tests.conftest import STREAM, assert_error, post_job, registered
from tests.test_answer_limits import events_of

__all__ = ("serve_acme",)  # the fixture, imported for pytest to find



class Named(Acme):
    """Its events are `{"t": ...}` whatever they are: a `delta` carries the answer's text, a
    `thought` the model's reasoning (not the answer), an `error` the provider's failure."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    @hookimpl
    def css_parse_stream_event(self, data: bytes, event: str) -> str | None:
        self.names.append(event)
        text: str = msgspec.json.decode(data)["t"]
        if event == "error":
            raise ProviderBadResponse(f"the provider reported: {text}")
        return text if event == "delta" else None


def named_stream(*events: tuple[str | None, str], framing: Framing | None = None) -> Stream:
    return Stream([Event({"t": text}, event=name) for name, text in events], framing=framing)


@pytest.mark.parametrize("framing", [Framing(), Framing(crlf=True, compact=True, split=True, split_pause=0)],
                         ids=["plain", "crlf-compact-split"])
def test_hook_css_parse_stream_event_reads_the_events_names(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client,
    framing: Framing,
) -> None:
    plugin = Named()
    stream = named_stream(("thought", "hmm, "), ("delta", "Hel"), ("thought", "and "), ("delta", "lo"), (None, "x"),
                          ("done", ""), framing=framing)
    double.add_route(Route("POST", r"/acme/chat/completions", stream))
    with registered(pm, acme=plugin):
        url = serve_acme()
        response = post_job(http, url, acme_job() | {"destination": STREAM})
    assert (response.status_code, response.text) == (200, "Hello")
    assert plugin.names == ["thought", "delta", "thought", "delta", "message", "done"]


def test_an_event_named_as_an_error_fails_the_stream(
    double: ProviderDouble, pm: pluggy.PluginManager, serve_acme: Callable[..., str], http: httpx.Client
) -> None:
    stream = named_stream(("thought", "hmm"), ("error", "overloaded"))
    double.add_route(Route("POST", r"/acme/chat/completions", stream))
    with registered(pm, acme=Named()):
        url = serve_acme(CSS_REQUEST_TRIES="1")
        response = post_job(http, url, acme_job() | {"destination": STREAM})
    assert_error(response, 502, "ACME", "the provider reported: overloaded")


# -- the core's reader names the events it reads ----------------------------------------------------------------


async def test_events_carry_the_names_of_their_event_lines() -> None:
    body = b"event: delta\ndata: one\n\ndata: two\n\nevent:done\ndata: {}\n\nevent: ping\n\ndata: three\n\n"
    (first,) = await events_of([body])
    assert first == [b"one", b"two", b"{}", b"three"]
    # a name is the event's own: `ping` had no data (no event), and names nothing after it
    assert first.names == ["delta", "message", "done", "message"]


async def test_a_read_of_unnamed_events_is_a_plain_list() -> None:
    """Most providers name no event: their reads cost no names."""
    received = await events_of([b"data: one\n\n", b"event: x\ndata: two\n\n", b"data: three", b"\n\nevent: y\ndata: 4"])
    assert [(type(events), list(events), getattr(events, "names", None)) for events in received] == [
        (list, [b"one"], None), (Events, [b"two"], ["x"]), (list, [b"three"], None), (Events, [b"4"], ["y"])]
    assert [list(named_events(events)) for events in received] == [
        [("message", b"one")], [("x", b"two")], [("message", b"three")], [("y", b"4")]]


@pytest.mark.parametrize(("item", "named"), [
    (b"one", [("message", b"one")]),  # a plugin's own call may yield one payload at a time
    ([b"one", b"two"], [("message", b"one"), ("message", b"two")]),
])
def test_named_events_of_a_plugins_own_stream(item: list[bytes] | bytes, named: list[tuple[str, bytes]]) -> None:
    assert list(named_events(item)) == named

