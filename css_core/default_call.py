"""The core's own provider call: JSON over HTTP, and server-sent events for streams.

Registered as a plugin with `trylast`, so any provider plugin may override it.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator

import httpx
import msgspec

from css_core.errors import ProviderHTTPError
from css_core.hookspecs import hookimpl
from css_core.types import PreparedCall

__all__ = ("css_call", "css_call_stream", "error_message", "retry_after_seconds")

_MAX_MESSAGE = 4096  # a provider's error text is kept to this length (the workflow cuts it shorter)


class _ErrorDetail(msgspec.Struct):
    message: str | None = None


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorDetail | str | None = None
    message: str | None = None
    detail: str | None = None


def error_message(body: bytes) -> str:
    """The human part of a provider's error body (OpenAI's shape, or plain text), cut short."""
    try:
        envelope = msgspec.json.decode(body, type=_ErrorEnvelope)
        error = envelope.error
        text = (error.message if isinstance(error, _ErrorDetail) else error) or envelope.message or envelope.detail
    except (msgspec.DecodeError, msgspec.ValidationError):
        text = None
    if text is None:
        text = body.decode("utf-8", "replace").strip() or "(empty body)"
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "…"


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds from now: a number of seconds or an HTTP-date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _raise_for_status(response: httpx.Response, body: bytes) -> None:
    if response.status_code >= 300:
        raise ProviderHTTPError(
            response.status_code, error_message(body), retry_after_seconds(response.headers.get("retry-after"))
        )


async def _post(call: PreparedCall, client: httpx.AsyncClient) -> bytes:
    response = await client.post(call.url, content=call.content, headers=call.headers)
    body = response.content
    _raise_for_status(response, body)
    return body


async def _events(call: PreparedCall, client: httpx.AsyncClient) -> AsyncIterator[bytes]:
    request = client.build_request("POST", call.url, content=call.content, headers=call.headers)
    response = await client.send(request, stream=True)
    try:
        if response.status_code >= 300:
            _raise_for_status(response, await response.aread())
        data: list[str] = []
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                data.append(line[6:] if line.startswith("data: ") else line[5:])
            elif not line and data:
                payload = "\n".join(data)
                data.clear()
                if payload == "[DONE]":
                    return
                yield payload.encode()
        if data and (payload := "\n".join(data)) != "[DONE]":
            yield payload.encode()
    finally:
        await response.aclose()


@hookimpl(trylast=True)
def css_call(call: PreparedCall, client: httpx.AsyncClient) -> object:
    return _post(call, client)


@hookimpl(trylast=True)
def css_call_stream(call: PreparedCall, client: httpx.AsyncClient) -> AsyncIterator[bytes]:
    return _events(call, client)
