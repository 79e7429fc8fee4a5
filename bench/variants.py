"""ASGI apps for run.py's `--server uvicorn:NAME` / `granian:NAME` (for measurement only).

Served by any ASGI server with this directory on PYTHONPATH, e.g.:

    PYTHONPATH=bench uvicorn variants:minimal_app --factory --host 127.0.0.1 --port 8000 --workers 2 \
        --log-level warning --no-access-log --loop uvloop --http httptools

- `baseline_app`: `css_core.app.create_app()` untouched (to compare servers/flags with the CLI's).
- `minimal_app`: not the service: a raw ASGI app that decodes the job with msgspec, posts
  the OpenAI body with its own aiohttp session and answers {"output": ...}: the floor of
  Python + ASGI.

The variants that monkeypatched css_core are gone: their aiohttp transport and first attempt
without tenacity are now the real code (css_core/provider_http.py, css_core/workflow.py),
and httpx pool limits no longer apply (the core does not call providers through httpx).
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

_session: Any = None


def _aiohttp_session() -> Any:
    """minimal_app's session: one per worker process, created on first use inside the running loop."""
    global _session
    if _session is None:
        import aiohttp

        from css_core.config import load_settings

        timeout = load_settings().request_timeout
        _session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )
    return _session


async def _close_session() -> None:
    global _session
    if _session is not None:
        await _session.close()
        _session = None


def baseline_app() -> Any:
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
