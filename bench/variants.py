"""ASGI apps for run.py's `--server uvicorn:NAME` / `granian:NAME` (for measurement only).

Served by any ASGI server with this directory on PYTHONPATH, e.g.:

    PYTHONPATH=bench uvicorn variants:minimal_app --factory --host 127.0.0.1 --port 8000 --workers 2 \
        --log-level warning --no-access-log --loop uvloop --http httptools

- `baseline_app`: `css_core.edge.app.create_app()` untouched (to compare servers/flags with the CLI's).
- `minimal_app`: not the service: a raw ASGI app that decodes the job with msgspec, posts
  the OpenAI body with its own aiohttp session (`session.post`) and answers
  `{"output": ...}`, or relays a stream's text chunk by chunk (destination 2): the floor of
  Python + ASGI + aiohttp.
- `minimal_httpx_app`: the same raw ASGI app, its provider call made as the core makes it:
  an `httpx.Request` sent through the worker's `httpx-aiohttp` transport
  (`css_core.providers.http.ProviderHTTP`, `send` + `read`, streams through `sse_events`).
  Against `minimal_app`, it shows what the httpx layer costs; against
  `baseline_app`, what Litestar's routing, pluggy, tenacity and the workflow cost.

Both minimal apps merge the job's `extra_args` into the provider body (as the service
does), so bench/client.py's per-request stream shape (`--gap-ms`) reaches the fake
provider. They have no error handling: a failed call is a 500 from the server.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec

Call = Callable[[str, bytes], Awaitable[bytes]]
Stream = Callable[[str, bytes], AsyncIterator[bytes]]

_session: Any = None


def _aiohttp_session() -> Any:
    """minimal_app's session: one per worker process, created on first use inside the running loop."""
    global _session
    if _session is None:
        import aiohttp

        _session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None),
            skip_auto_headers=("User-Agent",),
        )
    return _session


async def _close_session() -> None:
    global _session
    if _session is not None:
        await _session.close()
        _session = None


def baseline_app() -> Any:
    from css_core.edge.app import create_app

    return create_app()


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


def _target() -> tuple[str, dict[str, str]]:
    url = os.environ["OPENAI_BASE_URL"].rstrip("/") + "/chat/completions"
    headers = {"content-type": "application/json", "authorization": f"Bearer {os.environ['OPENAI_API_KEY']}"}
    return url, headers


def _raw_asgi(call: Call, stream: Stream, startup: Callable[[], Awaitable[None]],
              shutdown: Callable[[], Awaitable[None]]) -> Any:
    """A raw ASGI app around a provider `call` (the whole body) and `stream` (each event's data)."""
    url, _ = _target()
    job_decoder = msgspec.json.Decoder(_Job)
    completion_decoder = msgspec.json.Decoder(_Completion)
    chunk_decoder = msgspec.json.Decoder(_Chunk)
    encode = msgspec.json.encode
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
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
            await send(start)
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
            answer = await call(url, encode(request))
            text = completion_decoder.decode(answer).choices[0].message.content
            await send(start)
            await send({"type": "http.response.body", "body": encode({"output": text})})
            return
        await send(text_start)
        async for data in stream(url, encode(request)):
            choices = chunk_decoder.decode(data).choices
            if choices and (piece := choices[0].delta.content):
                await send({"type": "http.response.body", "body": piece.encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def minimal_app() -> Any:
    _, headers = _target()

    async def call(url: str, content: bytes) -> bytes:
        async with _aiohttp_session().post(url, data=content, headers=headers) as response:
            return await response.read()

    async def stream(url: str, content: bytes) -> AsyncIterator[bytes]:
        async with _aiohttp_session().post(url, data=content, headers=headers) as response:
            async for line in response.content:  # one line at a time
                if line.startswith(b"data: ") and (data := line[6:].rstrip(b"\r\n")) != b"[DONE]":
                    yield data

    async def nothing() -> None:
        return None

    return _raw_asgi(call, stream, nothing, _close_session)


def minimal_httpx_app() -> Any:
    from css_core.config import load_settings
    from css_core.providers.http import ProviderHTTP, read, send, sse_events
    from css_core.types import PreparedCall

    _, headers = _target()
    settings = load_settings()
    http = ProviderHTTP(settings)
    timeout = settings.request_timeout

    async def call(url: str, content: bytes) -> bytes:
        assert http.transport is not None
        return await read(await send(http.transport, PreparedCall(url, headers, content, timeout)))

    async def stream(url: str, content: bytes) -> AsyncIterator[bytes]:
        assert http.transport is not None
        response = await send(http.transport, PreparedCall(url, headers, content, timeout))
        try:
            async for events in sse_events(response):
                for data in events:
                    yield data
        finally:
            await response.aclose()

    async def startup() -> None:
        await http.__aenter__()

    async def shutdown() -> None:
        await http.__aexit__(None, None, None)

    return _raw_asgi(call, stream, startup, shutdown)
