"""The testing kit for provider plugins: a provider double, the service in-process, fixtures.

A plugin's tests run the real service in front of a real HTTP server playing the provider,
without copying anything from this project::

    from css_core.testing import Fault, ProviderDouble, serve_service

    with ProviderDouble(api_key="sk-test") as double, serve_service(
        {"ACMEAI_API_KEY": "sk-test", "ACMEAI_BASE_URL": f"{double.url}/v1"}, plugins=[css_acme]
    ) as url:
        double.script(Fault.status(429, retry_after="0"))
        ...  # POST jobs to f"{url}/service_output"; inspect double.requests

- `ProviderDouble` speaks OpenAI's API by default, Anthropic's and Gemini's with
  `ProviderDouble.anthropic()` / `.gemini()`, and any HTTP/JSON API through `Route`s;
  `Fault`s script failures, `Framing` varies how streams are written, `tls=True` serves
  HTTPS from a throwaway CA (needs `trustme`).
- `ServiceServer` / `serve_service` run the app under uvicorn on a loopback port.
- `provider_double` and `css_service` are pytest fixtures (pytest is imported only when
  they are); `python -m css_core.testing` runs a double on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from css_core.testing.anthropic_api import anthropic_error, anthropic_routes
from css_core.testing.azure_api import azure_content_filter, azure_error, azure_routes
from css_core.testing.double import ProviderDouble
from css_core.testing.faults import Fault
from css_core.testing.gemini_api import gemini_error, gemini_key_invalid, gemini_routes
from css_core.testing.openai_api import openai_error, openai_routes
from css_core.testing.routes import RecordedRequest, Reject, Replies, Route, split_text
from css_core.testing.service import ServiceServer, build_app, serve_service
from css_core.testing.sse import DONE, Event, Framing, Stream
from css_core.testing.typed import example_answer, typed_reply

if TYPE_CHECKING:
    from css_core.testing.fixtures import css_service, provider_double

__all__ = (
    "DONE",
    "Event",
    "Fault",
    "Framing",
    "ProviderDouble",
    "RecordedRequest",
    "Reject",
    "Replies",
    "Route",
    "ServiceServer",
    "Stream",
    "anthropic_error",
    "anthropic_routes",
    "azure_content_filter",
    "azure_error",
    "azure_routes",
    "build_app",
    "css_service",
    "example_answer",
    "gemini_error",
    "gemini_key_invalid",
    "gemini_routes",
    "openai_error",
    "openai_routes",
    "provider_double",
    "serve_service",
    "split_text",
    "typed_reply",
)

_FIXTURES = ("css_service", "provider_double")


def __getattr__(name: str) -> Any:
    # the fixtures need pytest: imported on first use, so the double runs where pytest is absent
    if name in _FIXTURES:
        from css_core.testing import fixtures

        return getattr(fixtures, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
