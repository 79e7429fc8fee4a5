"""The core's own provider call: JSON over HTTP, and server-sent events for streams.

One aiohttp connection pool per worker carries every provider call. The core calls it
directly; plugins that make their own calls (`css_call`, `css_call_stream`) get an
`httpx.AsyncClient` over the same pool (the `httpx-aiohttp` transport). Going through
httpx's client cost ~150 µs of CPU per call, and importing httpx ~5 MB per worker
(bench/RESULTS.md), so the core does neither unless such a plugin is installed.

A failed connection, from aiohttp or from a plugin's httpx call, is a `ProviderUnreachable`.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec

from css_core.errors import ProviderHTTPError, ProviderUnreachable
from css_core.types import PreparedCall

if TYPE_CHECKING:
    import httpx

__all__ = ("ProviderHTTP", "error_message", "retry_after_seconds")

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


def _check_status(response: aiohttp.ClientResponse, body: bytes) -> None:
    if response.status >= 300:
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        raise ProviderHTTPError(response.status, error_message(body), retry_after)


def _unreachable(exc: BaseException) -> ProviderUnreachable:
    name = type(exc).__name__
    return ProviderUnreachable(f"timed out ({name})" if "Timeout" in name else f"connection failed ({name})")


@contextmanager
def _aiohttp_failures() -> Iterator[None]:
    # aiohttp's read timeouts are `TimeoutError`s too, which the workflow would take for the
    # job's own deadline
    try:
        yield
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
        raise _unreachable(exc) from exc


class ProviderHTTP:
    """One worker's HTTP to providers: `post` and `events` for the core, `client` for plugins.

    Use as an async context manager, inside the worker's event loop. `client` exists only
    with `plugin_calls` (an installed plugin makes its own calls); otherwise it is `None`.
    """

    client: httpx.AsyncClient | None = None

    def __init__(self, timeout: float, plugin_calls: bool) -> None:
        self.timeout = timeout
        self.plugin_calls = plugin_calls

    async def __aenter__(self) -> ProviderHTTP:
        # no pool limit: the service's own in-flight limit (CSS_MAX_IN_FLIGHT) bounds it
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=self.timeout),
        )
        if self.plugin_calls:
            import httpx  # here: a worker whose plugins make no calls of their own does without it
            from httpx_aiohttp import AiohttpTransport

            # aiohttp never retries a request, so tenacity stays the only retry loop
            transport = AiohttpTransport(client=self._session)
            self.client = httpx.AsyncClient(transport=transport, timeout=self.timeout)
            self._httpx_failure = httpx.TransportError
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.client is not None:
            await self.client.aclose()
        await self._session.close()

    async def plugin_body(self, pending: Awaitable[bytes]) -> bytes:
        """What a plugin's `css_call` answered; its failed connection as `ProviderUnreachable`."""
        try:
            return await pending
        except self._httpx_failure as exc:
            raise _unreachable(exc.__cause__ or exc) from exc

    async def plugin_events(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """A plugin's `css_call_stream` events; its failed connection as `ProviderUnreachable`."""
        try:
            async for data in events:
                yield data
        except self._httpx_failure as exc:
            raise _unreachable(exc.__cause__ or exc) from exc
        finally:
            if (aclose := getattr(events, "aclose", None)) is not None:
                await aclose()

    async def post(self, call: PreparedCall) -> bytes:
        """POST `call.content` to `call.url`; the 2xx body, or `ProviderHTTPError`."""
        with _aiohttp_failures():
            async with self._session.post(call.url, data=call.content, headers=call.headers) as response:
                body = await response.read()
        _check_status(response, body)
        return body

    async def events(self, call: PreparedCall) -> AsyncIterator[bytes]:
        """POST the call and yield each server-sent event's `data`, up to `data: [DONE]`.

        A non-2xx status raises `ProviderHTTPError` before anything is yielded.
        """
        response: Any = None
        try:
            with _aiohttp_failures():
                response = await self._session.post(call.url, data=call.content, headers=call.headers)
                if response.status >= 300:
                    _check_status(response, await response.read())
                data: list[bytes] = []
                async for raw in response.content:
                    line = raw.rstrip(b"\r\n")
                    if line.startswith(b"data:"):
                        data.append(line[6:] if line.startswith(b"data: ") else line[5:])
                    elif not line and data:
                        payload = b"\n".join(data)
                        data.clear()
                        if payload == b"[DONE]":
                            return
                        yield payload
                if data and (payload := b"\n".join(data)) != b"[DONE]":
                    yield payload
        finally:
            if response is not None:
                response.release()  # aiohttp closes the connection instead if the answer was not read to its end
