"""`POST /service_output`, the route every job takes, as a plain ASGI app.

Litestar serves and documents the rest of the API, and this route too; `app.py` hands this
exact route to the app below before Litestar routes it, because Litestar's per-request
machinery (routing, signature model, response objects, exception middleware) cost more
CPU per job than the whole workflow (bench/RESULTS.md). What Litestar would have done
for the route is done here: the bearer token, the body limit, and every `CSSError`
answered as `ErrorBody` JSON through `error_response`, as Litestar's handlers do.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, MutableMapping
from http import HTTPStatus
from typing import Any

import msgspec

from css_core.codec import encode_result
from css_core.config import Settings
from css_core.errors import CSSError, PayloadTooLarge, Unauthorized
from css_core.job import decode_job
from css_core.messages import ErrorBody, JobLocation, OffchainOutput, OnchainOutput
from css_core.plugins import Registry
from css_core.workflow import Workflow

__all__ = (
    "INTERNAL_ERROR",
    "Receive",
    "Scope",
    "Send",
    "ServiceOutput",
    "check_bearer",
    "error_response",
    "log_failure",
)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

logger = logging.getLogger("css_core.app")
_encode = msgspec.json.Encoder().encode
_JSON = [(b"content-type", b"application/json")]
_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
INTERNAL_ERROR = "internal error in the service; its log has the details"


def error_response(
    status: int, description: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    """An error as the service answers it: status, `ErrorBody` JSON, extra headers."""
    body = ErrorBody(code=str(status), name=HTTPStatus(status).phrase, description=description)
    return status, _encode(body), headers or {}


def check_bearer(headers: Iterable[tuple[bytes, bytes]], expected: bytes | None) -> None:
    """Refuse a request whose `Authorization` is not `expected` (compared in constant time); `None`: no token."""
    if expected is None:
        return
    given = next((value for name, value in headers if name == b"authorization"), b"")
    if not hmac.compare_digest(given, expected):
        raise Unauthorized("missing or wrong `Authorization: Bearer` token (set by the node's container config)")


def log_failure(exc: CSSError) -> None:
    logger.log(logging.WARNING if exc.status >= 500 else logging.INFO, "job failed (%d): %s", exc.status, exc.message)


class ServiceOutput:
    """Decodes a job, runs it, and answers with its result, its stream or its error."""

    def __init__(self, settings: Settings, registry: Registry, workflow: Workflow) -> None:
        self.settings = settings
        self.registry = registry
        self.workflow = workflow
        token = settings.bearer_token
        self._authorization = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks: AsyncGenerator[str, None] | None = None
        try:
            check_bearer(scope["headers"], self._authorization)
            job = decode_job(await self._body(scope, receive), self.registry, self.settings)
            if job.destination is JobLocation.STREAM:
                chunks = await self.workflow.stream(job.request)
            else:
                result = await self.workflow.run(job.request)
                if job.destination is JobLocation.ONCHAIN:
                    assert isinstance(result, str)  # decode_job refuses embeddings on-chain
                    output: Any = OnchainOutput(raw_input=job.raw_input, raw_output=encode_result(result).hex())
                else:
                    output = OffchainOutput(result)
        except CSSError as exc:
            log_failure(exc)
            await _answer(send, *error_response(exc.status, exc.message, exc.headers))
        except Exception as exc:
            logger.error("unexpected error on POST /service_output: %r", exc, exc_info=exc)
            await _answer(send, *error_response(500, INTERNAL_ERROR))
        else:
            if chunks is None:
                await _answer(send, 200, _encode(output))
            else:
                # a failure from here on aborts the response: the server closes the connection
                await _relay(chunks, receive, send)

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


async def _relay(chunks: AsyncGenerator[str, None], receive: Receive, send: Send) -> None:
    """Send the text as it arrives; stop (closing the provider's stream) as soon as the client leaves."""
    relay = asyncio.current_task()
    assert relay is not None
    streaming, left = True, False

    def on_disconnect(watcher: asyncio.Future[Any]) -> None:
        nonlocal left
        said = None if watcher.cancelled() or watcher.exception() else watcher.result()
        if streaming and said is not None and said["type"] == "http.disconnect":
            left = True
            relay.cancel()

    # uvicorn's `send` ignores a client that left; only `receive` says so
    watcher: asyncio.Future[Any] = asyncio.ensure_future(receive())
    watcher.add_done_callback(on_disconnect)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": _TEXT})
        async for text in chunks:
            await send({"type": "http.response.body", "body": text.encode(), "more_body": True})
    except asyncio.CancelledError:
        if not left:
            raise
        relay.uncancel()
        return
    finally:
        streaming = False
        watcher.cancel()
        await chunks.aclose()
    await send({"type": "http.response.body", "body": b""})


async def _answer(send: Send, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    raw_headers = [*_JSON, (b"content-length", b"%d" % len(body))]
    if headers:
        raw_headers += [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
