"""ASGI app factories that try alternatives WITHOUT editing css_core (for measurement only).

Each is `css_core.app.create_app()` with one piece swapped by monkeypatching, served by any
ASGI server with this directory on PYTHONPATH, e.g. (run.py's `--server`):

    PYTHONPATH=bench uvicorn variants:aiohttp_app --factory --host 127.0.0.1 --port 8000 --workers 2 \
        --log-level warning --no-access-log --loop uvloop --http httptools

- `baseline_app`: create_app() untouched (to compare servers/flags with the CLI's).
- `httpx_limits_app`: httpx with `BENCH_HTTPX_MAX_CONN` connections (pool size) instead of
  no limit / 256 keep-alive.
- `aiohttp_app`: the default call (css_core.default_call._post/_events) made with one
  aiohttp.ClientSession per worker instead of httpx (status handling as the core's; aiohttp's
  connection errors are mapped to httpx.TransportError so the retry policy still applies).
- `aiohttp_fastretry_app`: aiohttp_app, and the first attempt of each job made without
  building a tenacity controller (tenacity only after a retryable failure).
- `minimal_app`: not the service: a raw ASGI app that decodes the job with msgspec, posts
  the OpenAI body with aiohttp and answers {"output": ...}: the floor of Python + ASGI.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec

_session: Any = None


def _aiohttp_session() -> Any:
    """One session per worker process, created on first use inside the running loop."""
    global _session
    if _session is None:
        import aiohttp

        from css_core.config import load_settings

        timeout = load_settings().request_timeout
        _session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
            auto_decompress=True, skip_auto_headers=("User-Agent",),
        )
    return _session


async def _close_session() -> None:
    global _session
    if _session is not None:
        await _session.close()
        _session = None


class _Transport(httpx.TransportError):
    pass


def _patch_aiohttp() -> None:
    import aiohttp

    from css_core import default_call
    from css_core.errors import ProviderHTTPError
    from css_core.types import PreparedCall

    def check(status: int, headers: Any, body: bytes) -> None:
        if status >= 300:
            raise ProviderHTTPError(status, default_call.error_message(body),
                                    default_call.retry_after_seconds(headers.get("retry-after")))

    async def _post(call: PreparedCall, client: Any) -> bytes:
        try:
            async with _aiohttp_session().post(call.url, data=call.content, headers=call.headers) as response:
                body = await response.read()
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise _Transport(str(exc)) from exc
        check(response.status, response.headers, body)
        return body

    async def _events(call: PreparedCall, client: Any) -> AsyncIterator[bytes]:
        try:
            response = await _aiohttp_session().post(call.url, data=call.content, headers=call.headers)
        except aiohttp.ClientConnectionError as exc:
            raise _Transport(str(exc)) from exc
        try:
            if response.status >= 300:
                check(response.status, response.headers, await response.read())
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
            response.release()

    default_call._post = _post  # the hookimpls look these up at call time
    default_call._events = _events


def _patch_fast_first_attempt() -> None:
    from css_core import workflow

    original = workflow.Workflow._attempts

    async def _attempts(self: Any, job: Any, attempt: Any, deadline: float) -> Any:
        try:
            async with asyncio.timeout(deadline):
                job.attempts += 1
                return await attempt()
        except Exception:
            job.attempts = 0
            return await original(self, job, attempt, deadline)

    workflow.Workflow._attempts = _attempts  # type: ignore[method-assign]


def baseline_app() -> Any:
    from css_core.app import create_app

    return create_app()


def httpx_limits_app() -> Any:
    import css_core.app as app_module

    n = int(os.environ.get("BENCH_HTTPX_MAX_CONN", "32"))

    class _Httpx:
        AsyncClient = httpx.AsyncClient
        AsyncHTTPTransport = httpx.AsyncHTTPTransport

        @staticmethod
        def Limits(**_: Any) -> httpx.Limits:
            return httpx.Limits(max_connections=n, max_keepalive_connections=n)

    app_module.httpx = _Httpx  # type: ignore[assignment]
    return app_module.create_app()


def aiohttp_app() -> Any:
    _patch_aiohttp()
    from css_core.app import create_app

    return create_app()


def aiohttp_fastretry_app() -> Any:
    _patch_aiohttp()
    _patch_fast_first_attempt()
    from css_core.app import create_app

    return create_app()


class _Params(msgspec.Struct):
    messages: list[dict[str, str]] = []


class _Data(msgspec.Struct):
    model: str
    params: _Params


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


def minimal_app() -> Any:
    base = os.environ["OPENAI_BASE_URL"].rstrip("/") + "/chat/completions"
    headers = {"content-type": "application/json", "authorization": f"Bearer {os.environ['OPENAI_API_KEY']}"}
    job_decoder = msgspec.json.Decoder(_Job)
    completion_decoder = msgspec.json.Decoder(_Completion)
    encode = msgspec.json.encode
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await _close_session()
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
        request = encode({"model": job.data.model, "messages": job.data.params.messages})
        async with _aiohttp_session().post(base, data=request, headers=headers) as response:
            answer = await response.read()
        text = completion_decoder.decode(answer).choices[0].message.content
        await send(start)
        await send({"type": "http.response.body", "body": encode({"output": text})})

    return app
