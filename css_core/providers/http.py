"""The worker's HTTP client for provider calls.

Every provider call goes through httpx's API: an `httpx.Request` sent through the
worker's transport, which is the `httpx-aiohttp` transport over one aiohttp connection
pool (created at start-up, closed at shutdown; aiohttp is touched here only). The core
sends through the transport rather than `AsyncClient.send`, the cheapest public httpx path
(the client's send adds auth, redirect and event-hook handling the core does not use);
plugins that make calls of their own get an `httpx.AsyncClient` over the same transport.

An answer is read no further than the call's limits (`PreparedCall.max_answer_bytes`, and
`max_event_bytes` for each streamed event), so that a provider's answer cannot take a
worker's memory.

The pool trusts `SSL_CERT_FILE` when set (else httpx's bundled authorities). Calls to a
provider whose base URL `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` (process environment) send
through a proxy go through a transport of their own over the same pool. That is decided once
per base URL at start-up: aiohttp's own `trust_env` would read those variables and
`~/.netrc` again in a thread for every request.
"""

from __future__ import annotations

import email.utils
import functools
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Iterable
from itertools import repeat
from urllib.parse import urlsplit

import httpx

from css_core.config import MAX_ANSWER_BYTES, MAX_EVENT_BYTES, Settings
from css_core.errors import ConfigError, ProviderBadResponse, ProviderUnreachable
from css_core.types import PreparedCall

__all__ = (
    "MESSAGE",
    "Events",
    "ProviderHTTP",
    "answer_too_large",
    "event_too_large",
    "named_events",
    "proxy_for",
    "read",
    "retry_after_seconds",
    "send",
    "sse_events",
    "ssl_context",
    "unreachable",
)

#: the name of an event that has no `event:` line
MESSAGE = "message"
# a line may hold a field's name besides an event's worth of data
_FIELD_ROOM = 64


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


def unreachable(exc: BaseException) -> ProviderUnreachable:
    """A failed connection, named by its real cause (the pool's own exception, when there is one)."""
    cause = exc.__cause__ or exc
    name = type(cause).__name__
    return ProviderUnreachable(f"timed out ({name})" if "Timeout" in name else f"connection failed ({name})")


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """The authorities provider calls trust: `SSL_CERT_FILE` when set, else httpx's."""
    cafile = settings.get("SSL_CERT_FILE")
    if cafile is None:
        return httpx.create_ssl_context()
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        expected = "a PEM file of certificate authorities"
        raise ConfigError(f"SSL_CERT_FILE must name {expected}, got {cafile!r} ({exc})") from None


class Events(list[bytes]):
    """The `data` of the server-sent events one read completed, in order, and their names.

    `names` holds each event's name (its `event:` line, in the same order). The reader yields
    one only for a read with a named event: most providers name none, and their streams pay
    nothing for names.
    """

    __slots__ = ("names",)
    names: list[str] | None


def _named(events: list[bytes], names: list[str]) -> Events:
    named = Events(events)
    named.names = names
    return named


def named_events(item: list[bytes] | bytes) -> Iterable[tuple[str, bytes]]:
    """`(name, data)` for each event of one item of a provider's stream: the core's reader yields
    `Events`, a plugin's own call may yield plain lists or single payloads. An event without a
    name is a "message", as server-sent events define it."""
    if isinstance(item, bytes):
        return ((MESSAGE, item),)
    names = getattr(item, "names", None)
    return zip(names if names is not None else repeat(MESSAGE), item, strict=False)


def answer_too_large(limit: int) -> ProviderBadResponse:
    """An answer over `CSS_MAX_ANSWER_BYTES`: another try would be as large, so it is not retried."""
    return ProviderBadResponse(f"the answer is larger than this service's limit of {limit} bytes "
                               "(CSS_MAX_ANSWER_BYTES)", retryable=False)


def event_too_large(limit: int) -> ProviderBadResponse:
    """A streamed event over `CSS_MAX_EVENT_BYTES`, not retried either."""
    return ProviderBadResponse(f"a streamed event is larger than this service's limit of {limit} bytes "
                               "(CSS_MAX_EVENT_BYTES)", retryable=False)


async def sse_events(response: httpx.Response, max_event_bytes: int = MAX_EVENT_BYTES) -> AsyncIterator[list[bytes]]:
    """The server-sent events of `response`, up to `data: [DONE]`: for each read that completed
    any, the list of their `data`, so that what arrived together is relayed together; an
    `Events`, which adds their names, when any of them has one (`named_events` reads both).

    Lines end with LF or CRLF; a multi-line `data` is joined with a newline; `id:`, `retry:`
    and comment lines carry nothing a plugin reads. An event may arrive split over several
    reads. An event whose `data`, or any line, is longer than `max_event_bytes` fails the
    attempt (`event_too_large`).
    """
    # A line split over reads is kept as its pieces, joined once it ends: joining the pending
    # bytes to every read would copy them again per read, quadratic in a long line's reads.
    pending: list[bytes] = []
    pending_size = 0
    line_limit = max_event_bytes + _FIELD_ROOM
    data: list[bytes] = []
    # an event still open at the end of a read: the size of its data lines counted so far
    size = counted = 0
    name = b""
    try:
        async for chunk in _body(response):
            lines = chunk.split(b"\n")
            if pending:
                pending.append(lines[0])
                if len(lines) == 1:
                    pending_size += len(chunk)
                    if pending_size > line_limit:
                        raise event_too_large(max_event_bytes)
                    continue
                lines[0] = b"".join(pending)
                pending.clear()
            tail = lines.pop()
            if tail:
                pending.append(tail)
                pending_size = len(tail)
                if pending_size > line_limit:
                    raise event_too_large(max_event_bytes)
            events: list[bytes] = []
            names: list[str] | None = None
            for line in lines:
                if line.endswith(b"\r"):
                    line = line[:-1]
                if not line:
                    if data:
                        payload = data[0] if len(data) == 1 else b"\n".join(data)
                        data.clear()
                        if len(payload) > max_event_bytes:
                            raise event_too_large(max_event_bytes)
                        if counted:
                            size = counted = 0
                        if payload == b"[DONE]":
                            break
                        if name:
                            if names is None:
                                names = [MESSAGE] * len(events)
                            names.append(name.decode("utf-8", "replace"))
                            name = b""
                        elif names is not None:
                            names.append(MESSAGE)
                        events.append(payload)
                    else:
                        name = b""
                elif line.startswith(b"data:"):
                    data.append(line[6:] if line[5:6] == b" " else line[5:])
                elif line.startswith(b"event:"):
                    name = line[7:] if line[6:7] == b" " else line[6:]
            else:
                if data:  # an event continued in the next read: what it holds so far is counted once
                    size += sum(len(value) + 1 for value in data[counted:])
                    counted = len(data)
                    if size > max_event_bytes:
                        raise event_too_large(max_event_bytes)
                if events:
                    yield events if names is None else _named(events, names)
                continue
            if events:  # the read's events before `data: [DONE]`
                yield events if names is None else _named(events, names)
            return
    except httpx.TransportError as exc:
        raise unreachable(exc) from None
    last = b"".join(pending)
    if last.endswith(b"\r"):
        last = last[:-1]
    if last.startswith(b"data:"):  # a last event without its blank line
        data.append(last[6:] if last[5:6] == b" " else last[5:])
    if data and (payload := b"\n".join(data)) != b"[DONE]":
        if len(payload) > max_event_bytes:
            raise event_too_large(max_event_bytes)
        yield [payload] if not name else _named([payload], [name.decode("utf-8", "replace")])


def proxy_for(url: str) -> str | None:
    """The proxy the process environment names for `url`, `None` when it is reached directly."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy is None or urllib.request.proxy_bypass(parts.netloc):
        return None
    return proxy


class ProviderHTTP:
    """One worker's connection pool, as httpx transports (direct, and one per proxy) and an
    httpx client over them; and what each call may take (its `PreparedCall`'s timeout and limits)."""

    def __init__(self, settings: Settings, base_urls: Iterable[str] = ()) -> None:
        self.timeout = settings.request_timeout
        self.max_answer_bytes = settings.max_answer_bytes
        self.max_event_bytes = settings.max_event_bytes
        self._ssl = ssl_context(settings)
        self._proxies = {url: proxy for url in base_urls if (proxy := proxy_for(url)) is not None}
        self.transport: httpx.AsyncBaseTransport | None = None
        self.client: httpx.AsyncClient | None = None
        self._transports: dict[str, httpx.AsyncBaseTransport] = {}

    async def __aenter__(self) -> ProviderHTTP:
        import aiohttp
        from httpx_aiohttp import AiohttpTransport

        # No connection limit here: the in-flight cap bounds calls per provider. No total
        # timeout: the job deadline bounds a call, and each read has `timeout`. aiohttp never
        # retries a request, so tenacity stays the only retry loop.
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=self._ssl),
            timeout=aiohttp.ClientTimeout(total=None),
            trust_env=False,
        )
        self.transport = AiohttpTransport(client=session)
        by_proxy = {proxy: AiohttpTransport(client=session, proxy=httpx.Proxy(proxy))
                    for proxy in set(self._proxies.values())}
        self._transports = {url: by_proxy[proxy] for url, proxy in self._proxies.items()}
        mounts = {_origin(url): transport for url, transport in self._transports.items()}
        self.client = httpx.AsyncClient(transport=self.transport, mounts=mounts, timeout=self.timeout,
                                        trust_env=False)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.client is not None:
            await self.client.aclose()  # closes the transports, and with them the pool

    def transport_for(self, base_url: str) -> httpx.AsyncBaseTransport:
        """The transport for calls below `base_url`: through its proxy, if it has one."""
        transport = self._transports.get(base_url, self.transport)
        assert transport is not None, "ProviderHTTP is used outside `async with`"
        return transport


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


# A provider's URLs are few (a job's model may be in the path): each is parsed once.
_parsed_url = functools.lru_cache(maxsize=1024)(httpx.URL)


async def send(transport: httpx.AsyncBaseTransport, call: PreparedCall) -> httpx.Response:
    """POST the call through `transport`; the response, its body not yet read.

    The body is given as a read stream rather than as `content`: `content` has httpx derive
    `Host` and `Content-Length` and rebuild the headers for every call, which the transport's
    pool does anyway."""
    timeout = {"connect": call.timeout, "read": call.timeout, "pool": call.timeout}
    request = httpx.Request("POST", _parsed_url(call.url), headers=call.headers,
                            stream=httpx.ByteStream(call.content), extensions={"timeout": timeout})
    request.read()
    try:
        return await transport.handle_async_request(request)
    except httpx.TransportError as exc:
        raise unreachable(exc) from None


def _body(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body of `response` as it arrives: straight from the transport's stream unless it is
    content-encoded (then through httpx's decoders)."""
    stream = response.stream
    if "content-encoding" in response.headers or not isinstance(stream, httpx.AsyncByteStream):
        return response.aiter_bytes()
    return stream.__aiter__()


async def read(response: httpx.Response, limit: int = MAX_ANSWER_BYTES, *, cut: bool = False) -> bytes:
    """The body of `response`, which is then closed. A body longer than `limit` bytes fails the
    attempt (`answer_too_large`), or with `cut` (an error answer, whose text is all it is read
    for) is read no further than its first `limit` bytes."""
    try:
        length = response.headers.get("content-length")
        if (not cut and length is not None and length.isdigit() and int(length) > limit
                and "content-encoding" not in response.headers):
            raise answer_too_large(limit)  # before reading any of it
        parts: list[bytes] = []
        size = 0
        async for part in _body(response):
            size += len(part)
            if size > limit:
                if not cut:
                    raise answer_too_large(limit)
                parts.append(part[: len(part) - (size - limit)])
                break
            parts.append(part)
        return b"".join(parts)
    except httpx.TransportError as exc:
        raise unreachable(exc) from None
    except httpx.DecodingError as exc:
        raise ProviderBadResponse(f"unreadable answer: {exc}") from None
    finally:
        await response.aclose()
