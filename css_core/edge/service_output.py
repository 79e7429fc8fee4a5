"""`POST /service_output`, the route every job takes.

Litestar routes it to `ServiceOutput` as a lean `@asgi` route handler (see `app.py`): its
guard checks the bearer token, its exception handlers answer every error raised here, and
the route is described in the OpenAPI schema by `openapi.py`. What a full handler would
infer is done here once per job, cheaply: the method, the media type, the body limit.

Every successful answer (off-chain, on-chain, stream) says who served it, a fallback or the
job's own provider, in the headers `x-css-provider` and `x-css-model`; the body is unchanged.

Each job has a `JobRecord` (`css_core.operations.record`), which this route tells what it sees, and
finishes once the answer is sent: the job's metrics and its log line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from types import TracebackType
from typing import Any
from urllib.parse import quote

from litestar.exceptions import MethodNotAllowedException

from css_core.config import Settings
from css_core.errors import (
    PayloadTooLarge,
    ProviderBadResponse,
    ProviderUnreachable,
    StreamCut,
    UnsupportedMediaType,
)
from css_core.jobs.messages import JobLocation
from css_core.jobs.pipeline import Pipeline
from css_core.jobs.streams import Streamed
from css_core.operations.record import JobRecord, Recorder
from css_core.providers.registry import Provider

__all__ = ("Receive", "Scope", "Send", "ServiceOutput")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_JSON = (b"content-type", b"application/json")
_TEXT = (b"content-type", b"text/plain; charset=utf-8")
_clock = time.perf_counter


def _header_value(text: str) -> bytes:
    """`text` as a header value; a job's model name may hold anything, so what is not printable
    ASCII is percent-encoded (never a line break in the headers)."""
    if text.isascii() and text.isprintable():
        return text.encode()
    return quote(text, safe="/:@+-._~ ").encode()


def _served_by(provider: Provider, model: str) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
    return (b"x-css-provider", _header_value(provider.spec.name)), (b"x-css-model", _header_value(model))


def _media_type(headers: list[tuple[bytes, bytes]]) -> bytes:
    for name, value in headers:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower()
    return b""


class _CancelOnDisconnect:
    """Cancels the task serving a request as soon as its client leaves, and ends it quietly.

    uvicorn's `send` ignores a client that left; only `receive` says so, once the body has
    been read. The job's provider call is then cancelled and its in-flight slot freed.
    """

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.left = False
        self.serving = True

    def __enter__(self) -> _CancelOnDisconnect:
        task = asyncio.current_task()
        assert task is not None

        def on_message(watcher: asyncio.Future[Any]) -> None:
            said = None if watcher.cancelled() or watcher.exception() else watcher.result()
            if self.serving and said is not None and said["type"] == "http.disconnect":
                self.left = True
                task.cancel()

        self.task = task
        self.watcher: asyncio.Future[Any] = asyncio.ensure_future(self.receive())
        self.watcher.add_done_callback(on_message)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        self.serving = False
        self.watcher.cancel()
        if self.left and kind is asyncio.CancelledError:
            self.task.uncancel()
            return True  # nobody is left to answer
        return False


class ServiceOutput:
    """Reads a job's body, has the pipeline answer it, and sends the answer or its stream;
    errors are raised, for the app's exception handlers to answer."""

    def __init__(self, settings: Settings, pipeline: Pipeline, recorder: Recorder) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        record = self.recorder.start(scope)
        try:
            await self._serve(record, scope, receive, send)
        except BaseException as exc:
            record.failed(exc)
            raise
        finally:
            await self.recorder.finish(record)

    async def _serve(self, record: JobRecord, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            raise MethodNotAllowedException(headers={"Allow": "POST"})
        if (media_type := _media_type(scope["headers"])) != b"application/json":
            shown = media_type.decode("latin-1") or "none"
            raise UnsupportedMediaType(f"the job must be sent as `Content-Type: application/json` (got {shown})")
        pipeline = self.pipeline
        job = pipeline.decode(await self._body(scope, receive), record)
        with _CancelOnDisconnect(receive) as watch:
            record.enter()
            began = _clock()
            try:
                if job.destination is JobLocation.STREAM:
                    streamed = await pipeline.stream(job)
                else:
                    served = await pipeline.run(job)
            finally:
                record.workflow_seconds = _clock() - began
            if job.destination is JobLocation.STREAM:
                await _relay(streamed, send, _served_by(streamed.provider, streamed.model), record)
                return
        if watch.left:  # the client left (the job was cancelled): nobody is left to answer
            record.left()
            return
        body = pipeline.encode(job, served)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [_JSON, (b"content-length", b"%d" % len(body)), *_served_by(served.provider,
                                                                                          served.model)]})
        await send({"type": "http.response.body", "body": body})

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.settings.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise self._too_large()  # refused before a byte of it is read
        parts: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            part: bytes = message.get("body", b"")
            size += len(part)
            if size > limit:  # refused before the rest is read: the server reads a body only as it is received
                raise self._too_large()
            parts.append(part)
            more = message.get("more_body", False)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _too_large(self) -> PayloadTooLarge:
        limit = self.settings.max_body_bytes
        return PayloadTooLarge(
            f"the request body is larger than this service's limit of {limit} bytes (CSS_MAX_BODY_BYTES)"
        )


async def _relay(streamed: Streamed, send: Send, served_by: tuple[tuple[bytes, bytes], ...],
                 record: JobRecord) -> None:
    """Send the text as it arrives, up to the stream's deadline. A failure after the first byte
    aborts the response: the server closes the connection, and the node sees a failed stream,
    not a short success. The time spent waiting for each next text is the provider's, in the
    job's record. A client that reads slowly holds the relay in `send` (the server's write
    buffer is bounded), and with it the reads of the provider's answer."""
    try:
        record.streaming()
        async with asyncio.timeout_at(streamed.deadline_at):
            await send({"type": "http.response.start", "status": 200, "headers": [_TEXT, *served_by]})
            record.responded = True
            await send({"type": "http.response.body", "body": streamed.first.encode(), "more_body": True})
            while True:
                began = _clock()
                try:
                    text = await anext(streamed)
                except StopAsyncIteration:
                    break
                record.relay_seconds += _clock() - began
                await send({"type": "http.response.body", "body": text.encode(), "more_body": True})
    except (TimeoutError, ProviderBadResponse, ProviderUnreachable) as exc:
        streamed.cut(exc)
        raise StreamCut(f"{streamed.provider.spec.name} stream cut after {streamed.sent} chunk(s)") from exc
    finally:
        await streamed.aclose()
    await send({"type": "http.response.body", "body": b""})
