"""The worker's HTTP client for provider calls.

Every provider call goes through httpx's API: an `httpx.Request` sent through the
worker's transport, which is the `httpx-aiohttp` transport over one aiohttp connection
pool (created at start-up, closed at shutdown; aiohttp is touched here only). The core
sends through the transport rather than `AsyncClient.send`, the cheapest public httpx path
(the client's send adds auth, redirect and event-hook handling the core does not use); plugins that make calls of their own get an `httpx.AsyncClient` over the
same transport.

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
from urllib.parse import urlsplit

import httpx

from css_core.config import Settings
from css_core.errors import ConfigError, ProviderBadResponse, ProviderUnreachable
from css_core.types import PreparedCall

__all__ = (
    "ProviderHTTP",
    "proxy_for",
    "read",
    "retry_after_seconds",
    "send",
    "sse_events",
    "ssl_context",
    "unreachable",
)


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


async def sse_events(response: httpx.Response) -> AsyncIterator[list[bytes]]:
    """The `data` of the server-sent events of `response`, up to `data: [DONE]`: a list for each
    read that completed any, so that what arrived together is relayed together.

    Lines end with LF or CRLF; a multi-line `data` is joined with a newline; `event:`,
    `id:`, `retry:` and comment lines carry nothing a plugin reads. An event may arrive
    split over several reads.
    """
    pending = b""
    data: list[bytes] = []
    try:
        async for chunk in _body(response):
            lines = (pending + chunk if pending else chunk).split(b"\n")
            pending = lines.pop()
            events: list[bytes] = []
            for line in lines:
                if line.endswith(b"\r"):
                    line = line[:-1]
                if not line:
                    if data:
                        payload = data[0] if len(data) == 1 else b"\n".join(data)
                        data.clear()
                        if payload == b"[DONE]":
                            if events:
                                yield events
                            return
                        events.append(payload)
                elif line.startswith(b"data:"):
                    data.append(line[6:] if line[5:6] == b" " else line[5:])
            if events:
                yield events
    except httpx.TransportError as exc:
        raise unreachable(exc) from None
    if pending.startswith(b"data:"):  # a last event without its blank line
        data.append(pending[6:] if pending[5:6] == b" " else pending[5:])
    if data and (payload := b"\n".join(data)) != b"[DONE]":
        yield [payload]


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
    httpx client over them."""

    def __init__(self, settings: Settings, base_urls: Iterable[str] = ()) -> None:
        self.timeout = settings.request_timeout
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


async def read(response: httpx.Response) -> bytes:
    """The whole body of `response`, which is then closed."""
    try:
        return b"".join([part async for part in _body(response)])
    except httpx.TransportError as exc:
        raise unreachable(exc) from None
    except httpx.DecodingError as exc:
        raise ProviderBadResponse(f"unreadable answer: {exc}") from None
    finally:
        await response.aclose()

