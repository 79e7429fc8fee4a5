"""ASGI app factories for measurement only: the floor, and variants of the service.

Each is served like the service by bench/serve.py (uvicorn, a listening socket per worker,
the command line's flags), e.g. `python bench/serve.py variants:floor_app --workers=2`;
run.py does so for its `floor`, `floor-aiohttp` and `service-pyreqwest` columns.

- `floor_app`: **the floor**: the design card's own stack with no service code. A raw ASGI
  app; msgspec decodes the job and encodes the answer; the provider call is an
  `httpx.Request` sent through the httpx-aiohttp transport (`AiohttpTransport`) over an
  aiohttp session configured as the service's pool (`TCPConnector(limit=0)`, no total
  timeout, `trust_env=False`; the same connect and read timeout per call). A stream
  (destination 2) is relayed as the service relays it: one write of the texts of each read
  of the provider's answer. No error handling, routing, record, metrics, log line, retry or
  plugin: a failed call is the server's 500.
- `minimal_app`: the previous floor, a second reference: the same raw ASGI app calling
  aiohttp directly (`session.post`), streams relayed event by event.
- `service_app`: the service's own worker app (`css_core.edge.cli.worker_app`), to check
  that bench/serve.py serves it as the command line does.
- `service_pyreqwest_app`: the service with its provider calls through pyreqwest's httpx
  transport (`pyreqwest.compatibility.httpx.HttpxTransport`) instead of httpx-aiohttp:
  swapped after start-up through `ProviderHTTP`'s public `transport` and `client`
  (`app.state.service.service_output.pipeline.http`), nothing else changed. Needs the
  `pyreqwest` package, which the service does not depend on.

The minimal apps merge the job's `extra_args` into the provider body as the service does,
so bench/client.py's per-request stream shape reaches the fake provider.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import msgspec

__all__ = ("floor_app", "minimal_app", "pyreqwest_transport", "service_app", "service_pyreqwest_app")

Call = Callable[[bytes], Awaitable[bytes]]
Stream = Callable[[bytes], AsyncIterator[bytes]]  # the text of each provider read that carried any
Hook = Callable[[], Awaitable[None]]
TIMEOUT = 60.0  # CSS_REQUEST_TIMEOUT's default: connect, pool and each read


class _Params(msgspec.Struct):
    messages: list[dict[str, str]] = []


class _Data(msgspec.Struct):
    model: str
    params: _Params
    extra_args: dict[str, Any] | None = None


class _Job(msgspec.Struct):
    source: int
    destination: int
    data: _Data


class _Msg(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Msg


class _Completion(msgspec.Struct):
    choices: list[_Choice]


class _Delta(msgspec.Struct):
    delta: _Msg


class _Chunk(msgspec.Struct):
    choices: list[_Delta] = []


class _Output(msgspec.Struct):
    output: str | None


_chunk_decoder = msgspec.json.Decoder(_Chunk)


def _text(data: bytes) -> str:
    choices = _chunk_decoder.decode(data).choices
    return (choices[0].delta.content or "") if choices else ""


def _target() -> tuple[str, dict[str, str]]:
    url = os.environ["OPENAI_BASE_URL"].rstrip("/") + "/chat/completions"
    headers = {"content-type": "application/json", "authorization": f"Bearer {os.environ['OPENAI_API_KEY']}"}
    return url, headers


def _raw_asgi(call: Call, stream: Stream, startup: Hook, shutdown: Hook) -> Any:
    """A raw ASGI app around a provider `call` (the whole answer) and `stream` (its texts)."""
    job_decoder = msgspec.json.Decoder(_Job)
    completion_decoder = msgspec.json.Decoder(_Completion)
    encode = msgspec.json.encode
    text_start = {"type": "http.response.start", "status": 200,
                  "headers": [(b"content-type", b"text/plain; charset=utf-8")]}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await startup()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await shutdown()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] == "GET":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        job = job_decoder.decode(body)
        streamed = job.destination == 2
        request: dict[str, Any] = {"model": job.data.model, "messages": job.data.params.messages}
        if streamed:
            request["stream"] = True
        if job.data.extra_args:
            request.update(job.data.extra_args)
        if not streamed:
            answer = await call(encode(request))
            out = encode(_Output(completion_decoder.decode(answer).choices[0].message.content))
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(out))]})
            await send({"type": "http.response.body", "body": out})
            return
        await send(text_start)
        async for text in stream(encode(request)):
            await send({"type": "http.response.body", "body": text, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def floor_app() -> Any:
    """The floor (see the module's docstring)."""
    import aiohttp
    import httpx
    from httpx_aiohttp import AiohttpTransport

    target, headers = _target()
    url = httpx.URL(target)  # parsed once, as any long-lived client would
    extensions = {"timeout": {"connect": TIMEOUT, "read": TIMEOUT, "pool": TIMEOUT}}
    held: list[AiohttpTransport] = []

    async def respond(content: bytes) -> httpx.Response:
        request = httpx.Request("POST", url, headers=headers, stream=httpx.ByteStream(content), extensions=extensions)
        request.read()
        return await held[0].handle_async_request(request)

    async def call(content: bytes) -> bytes:
        response = await respond(content)
        try:
            return b"".join([part async for part in response.stream])  # type: ignore[union-attr]
        finally:
            await response.aclose()

    async def stream(content: bytes) -> AsyncIterator[bytes]:
        response = await respond(content)
        pending = b""
        try:
            async for read in response.stream:  # type: ignore[union-attr]
                lines = (pending + read if pending else read).split(b"\n")
                pending = lines.pop()
                texts = []
                for line in lines:
                    if line.startswith(b"data: "):
                        if (data := line[6:].rstrip(b"\r")) == b"[DONE]":
                            break
                        texts.append(_text(data))
                if text := "".join(texts):
                    yield text.encode()
        finally:
            await response.aclose()

    async def startup() -> None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ssl=httpx.create_ssl_context()),
                                        timeout=aiohttp.ClientTimeout(total=None), trust_env=False)
        held.append(AiohttpTransport(client=session))

    async def shutdown() -> None:
        await held.pop().aclose()

    return _raw_asgi(call, stream, startup, shutdown)


def minimal_app() -> Any:
    """The previous floor: raw ASGI + msgspec + aiohttp's own `session.post`, event by event."""
    import aiohttp

    url, headers = _target()
    held: list[aiohttp.ClientSession] = []

    async def call(content: bytes) -> bytes:
        async with held[0].post(url, data=content, headers=headers) as response:
            return await response.read()

    async def stream(content: bytes) -> AsyncIterator[bytes]:
        async with held[0].post(url, data=content, headers=headers) as response:
            async for line in response.content:  # one line at a time
                if line.startswith(b"data: ") and (data := line[6:].rstrip(b"\r\n")) != b"[DONE]" \
                        and (text := _text(data)):
                    yield text.encode()

    async def startup() -> None:
        held.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                          timeout=aiohttp.ClientTimeout(total=None),
                                          skip_auto_headers=("User-Agent",)))

    async def shutdown() -> None:
        await held.pop().close()

    return _raw_asgi(call, stream, startup, shutdown)


def service_app() -> Any:
    from css_core.edge.cli import worker_app

    return worker_app()


def pyreqwest_transport(timeout: float = TIMEOUT, cafile: str | None = None, shipped: bool = False) -> Any:
    """pyreqwest's httpx transport, configured as close to the service's pool as its builder
    allows: no connection limit, the connect and read timeouts, no redirects, `SSL_CERT_FILE`'s
    authorities added (reqwest adds them to its own roots rather than replacing them).

    One change to the transport as shipped: an answer's body is handed over as it arrives. As
    shipped, a request buffers up to 64 KiB of the body before the answer's head is returned
    (`streamed_read_buffer_limit`), and the body is read in pieces of pyreqwest's default size
    (`read()`, which waits to fill one): a whole SSE stream came out in one piece at its end.
    The transport has no parameter for either, so a subclass sets the first on each request and
    reads each chunk as it comes (`read_chunk()`), through the transport's own mapping.
    `shipped`: the transport as shipped, for comparison."""
    from contextlib import AsyncExitStack

    from pyreqwest.client import ClientBuilder
    from pyreqwest.compatibility.httpx import HttpxTransport
    from pyreqwest.compatibility.httpx._internal import build_httpx_response, map_exception, map_extensions
    from pyreqwest.compatibility.httpx.transport import ResponseStream
    from pyreqwest.exceptions import PyreqwestError

    class Stream(ResponseStream):  # type: ignore[misc]
        async def __aiter__(self) -> AsyncIterator[bytes]:
            while (chunk := await self._body_reader.read_chunk()) is not None:
                yield bytes(chunk)

    class Transport(HttpxTransport):  # type: ignore[misc]
        async def handle_async_request(self, request: Any) -> Any:
            builder = self._client.request(request.method, str(request.url)).headers(request.headers.multi_items())
            builder = map_extensions(self._map_body(builder, request), request).streamed_read_buffer_limit(1)
            stack = AsyncExitStack()
            try:
                response = await stack.enter_async_context(builder.build_streamed())
                return build_httpx_response(response, response_stream=Stream(response, stack))
            except Exception as exc:
                await stack.aclose()
                if isinstance(exc, PyreqwestError) and (mapped := map_exception(exc, request)):
                    raise mapped from exc
                raise

    builder = ClientBuilder().connect_timeout(timedelta(seconds=timeout)).read_timeout(
        timedelta(seconds=timeout)).follow_redirects(False)
    if cafile:
        with open(cafile, "rb") as f:
            builder = builder.add_root_certificate_pem(f.read())
    return (HttpxTransport if shipped else Transport)(builder.build())


def service_pyreqwest_app() -> Any:
    """The service, its provider calls through pyreqwest's httpx transport (see the module's docstring)."""
    import httpx
    from litestar import Litestar

    app: Litestar = service_app()

    async def swap(app: Litestar) -> None:
        http = app.state.service.service_output.pipeline.http
        old = http.client
        settings_cafile = os.environ.get("SSL_CERT_FILE")
        http.transport = pyreqwest_transport(http.timeout, settings_cafile)
        http.client = httpx.AsyncClient(transport=http.transport, timeout=http.timeout, trust_env=False)
        await old.aclose()  # the aiohttp pool: nothing calls through it any more

    app.on_startup.append(swap)  # after the lifespan's start-up: the service exists by then
    return app
