"""The core's own provider call: a plugin of `trylast` implementations of the call hooks.

`plugin_manager()` registers this module as it would any plugin that owns no provider, so a
plugin's own `css_call` / `css_call_stream` / `css_read_error` is asked first, and these
answer when none does. They call through the worker's pool, which every call receives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable

import httpx
import msgspec

from css_core.errors import ProviderHTTPError
from css_core.providers.hookspecs import hookimpl
from css_core.providers.http import read, retry_after_seconds, send, sse_events
from css_core.types import PreparedCall

__all__ = ("ErrorAnswer", "css_call", "css_call_stream", "css_read_error", "error_message")

_MAX_MESSAGE = 4096  # a provider's error text is kept to this length (the workflow cuts it shorter)


class ErrorAnswer(Exception):
    """A non-2xx answer of the core's call, for the provider's plugin to read (`css_read_error`)."""

    def __init__(self, response: httpx.Response, body: bytes) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.status = response.status_code
        self.body = body
        self.retry_after = retry_after_seconds(response.headers.get("retry-after"))


class _ErrorDetail(msgspec.Struct):
    message: str | None = None


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorDetail | str | None = None
    message: str | None = None
    detail: str | None = None


def error_message(body: bytes) -> str:
    """The human part of a provider's error body, for a plugin's `css_read_error` too (exported
    as `css_core.error_message`): the message of `{"error": {"message": ...}}` (OpenAI's shape),
    `{"error": "..."}`, `{"message": ...}` or `{"detail": ...}`; else the body as text (bytes
    that are not UTF-8 replaced), or "(empty body)". Cut to a few kilobytes; never raises."""
    try:
        envelope = msgspec.json.decode(body, type=_ErrorEnvelope)
        error = envelope.error
        text = (error.message if isinstance(error, _ErrorDetail) else error) or envelope.message or envelope.detail
    except (msgspec.DecodeError, msgspec.ValidationError):
        text = None
    if text is None:
        text = body.decode("utf-8", "replace").strip() or "(empty body)"
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "…"


@hookimpl(trylast=True)
def css_call(call: PreparedCall, transport: httpx.AsyncBaseTransport) -> Awaitable[bytes]:
    return _post(call, transport)


@hookimpl(trylast=True)
def css_call_stream(call: PreparedCall, transport: httpx.AsyncBaseTransport) -> AsyncIterator[list[bytes]]:
    return _events(call, transport)


@hookimpl(trylast=True)
def css_read_error(status: int, body: bytes, retry_after: float | None) -> ProviderHTTPError:
    return ProviderHTTPError(status, error_message(body), retry_after)


async def _post(call: PreparedCall, transport: httpx.AsyncBaseTransport) -> bytes:
    response = await send(transport, call)
    error = response.status_code >= 300
    body = await read(response, call.max_answer_bytes, cut=error)
    if error:
        raise ErrorAnswer(response, body)
    return body


async def _events(call: PreparedCall, transport: httpx.AsyncBaseTransport) -> AsyncIterator[list[bytes]]:
    response = await send(transport, call)
    try:
        if response.status_code >= 300:
            raise ErrorAnswer(response, await read(response, call.max_answer_bytes, cut=True))
        async for events in sse_events(response, call.max_event_bytes):
            yield events
    finally:
        await response.aclose()  # the connection is dropped, not reused, if the answer was not read to its end
