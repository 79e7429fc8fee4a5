"""The plugin docs/plugins.md shows under "The plugin's own settings", run as written: a setting
in its query string, no default base URL, and a stream whose events are named only on their
`event:` lines, with no module global and no `css_call_stream` of its own."""

from __future__ import annotations

import re
import types
from collections.abc import Callable
from pathlib import Path

import httpx
import pluggy

from css_core.testing import Event, ProviderDouble, Route, Stream
from tests.conftest import KEY, STREAM, chat, job, post_job, registered, service_env

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def _example() -> types.ModuleType:
    section = DOCS.read_text().split("## The plugin's own settings", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    module = types.ModuleType("css_acmecloud")
    exec(compile(code, str(DOCS), "exec"), module.__dict__)
    return module


def test_the_docs_example_streams_named_events_with_its_query_setting(
    double: ProviderDouble, serve: Callable[..., str], pm: pluggy.PluginManager, http: httpx.Client
) -> None:
    named = Stream([Event({"text": "Hello"}, event="delta"), Event({"ping": 1}, event="ping"),
                    Event({"text": " there"}, event="delta"), Event({}, event="done")])
    route = Route("POST", r"/openai/deployments/(?P<deployment>[^/]+)/chat/completions", named)
    with ProviderDouble(KEY, auth_header="api-key", auth_scheme=None, routes=[route]) as cloud:
        env = {**service_env(double), "ACMECLOUD_API_KEY": KEY, "ACMECLOUD_BASE_URL": f"{cloud.url}/tenant",
               "ACMECLOUD_API_VERSION": "2025-01-01"}
        with registered(pm, acmecloud=_example()):
            url = serve(env, plugins=(pm, {}, []))
            job_body = job(chat(provider="ACMECLOUD", model="my deployment"), destination=STREAM)
            response = post_job(http, url, job_body)
    assert response.status_code == 200, response.text
    assert response.text == "Hello there"
    (sent,) = cloud.requests
    assert sent.path == "/tenant/openai/deployments/my%20deployment/chat/completions"
    assert sent.query == {"api-version": "2025-01-01"}
    assert sent.headers["api-key"] == KEY and "authorization" not in sent.headers
