"""Micro-benchmarks: CPU µs per request of each piece of the service's path, in-process.

    python bench/micro.py [--n 5000] [--conc 1,32,256] [--only NAME,...]

Each case runs `--n` operations on one uvloop event loop, at each concurrency, and reports
the CPU time of this process (time.process_time, so other load on the machine affects it
little) per operation. The fake provider (bench/fake_provider.py, 0 ms) runs in its own
process. Cases:

- `httpx-service`: httpx.AsyncClient configured as css_core.app does (retries=0, no
  connection limit, 256 keep-alive), `client.post(url, content=..., headers=...)` +
  `.content`: the service's provider call.
- `httpx-default`: the same with httpx's default limits (100 connections).
- `aiohttp`: aiohttp.ClientSession (TCPConnector(limit=0)), `post` + `read()`.
- `raw`: a raw asyncio.Protocol keep-alive client (bench/client.py's): the floor.
- `tenacity`: css_core.retry.retrying() around an already-done coroutine, as per job.
- `pluggy`: the per-job hook calls of a completion (css_encode_params, css_postprocess).
- `prepare`: Workflow.prepare + decode_job + the result's encoding (everything of a job
  except the HTTP call and the server), with the OpenAI plugin.
- `asgi-app`: the whole Litestar app called as ASGI in-process (no server, no sockets on
  the inbound side), its provider call real (httpx to the fake provider).
- `asgi-minimal-aiohttp`: bench/variants.py's minimal_app (raw ASGI + msgspec + aiohttp).
- `asgi-app-aiohttp`, `asgi-app-aiohttp-fastretry`: asgi-app with variants.py's aiohttp
  default call (and no tenacity controller on a first attempt that succeeds).
- `asgi-hello`: a minimal Litestar app (one POST handler returning constant bytes), ASGI
  in-process: Litestar's own per-request cost.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run  # noqa: E402

JOB = (b'{"source":1,"destination":1,"data":{"model":"gpt-4","params":{"endpoint":"completions",'
       b'"messages":[{"role":"user","content":"hi"}]}}}')
BODY = b'{"model":"gpt-4","messages":[{"role":"user","content":"hi"}]}'
HEADERS = {"content-type": "application/json", "authorization": "Bearer bench"}


async def drive(op: Callable[[], Awaitable[object]], n: int, conc: int) -> tuple[float, float]:
    """CPU µs and wall µs per operation, `conc` at a time."""
    for _ in range(min(n // 10, 200) + conc):  # warm up (and open the connections)
        await asyncio.gather(*(op() for _ in range(1)))
    await asyncio.gather(*(op() for _ in range(conc)))
    left = [n]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            await op()

    c0, w0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return (time.process_time() - c0) / n * 1e6, (time.perf_counter() - w0) / n * 1e6


async def case_httpx(url: str, default: bool) -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]:
    import httpx

    if default:
        client = httpx.AsyncClient(timeout=60)
    else:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(retries=0, limits=limits), timeout=60)

    async def op() -> object:
        r = await client.post(url, content=BODY, headers=HEADERS)
        return r.content

    return op, client.aclose


async def case_aiohttp(url: str) -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60))

    async def op() -> object:
        async with session.post(url, data=BODY, headers=HEADERS) as r:
            return await r.read()

    return op, session.close


async def case_raw(url: str) -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]:
    from urllib.parse import urlsplit

    import client

    u = urlsplit(url)
    raw = (b"POST %s HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
           b"authorization: Bearer bench\r\ncontent-length: %d\r\n\r\n%s" % (u.path.encode(), len(BODY), BODY))
    loop = asyncio.get_running_loop()
    idle: list[client.Conn] = []

    async def op() -> object:
        conn = idle.pop() if idle else (await loop.create_connection(client.Conn, u.hostname, u.port))[1]
        resp = await conn.request(raw)
        idle.append(conn)
        return resp

    async def close() -> None:
        for c in idle:
            if c.transport:
                c.transport.close()

    return op, close


def _registry(base_url: str):  # type: ignore[no-untyped-def]
    from css_core.config import load_settings
    from css_core.plugins import build_registry

    settings = load_settings({"OPENAI_API_KEY": "bench", "OPENAI_BASE_URL": base_url}, dotenv=None)
    return settings, build_registry(settings)


async def case_tenacity() -> tuple[Callable[[], Awaitable[object]], None]:
    from css_core.config import RetryPolicy
    from css_core.retry import retrying

    policy = RetryPolicy()

    async def attempt() -> int:
        return 1

    async def op() -> object:
        return await retrying(policy, frozenset({429}), 150.0, None)(attempt)

    return op, None


async def case_pluggy(base_url: str) -> tuple[Callable[[], Awaitable[object]], None]:
    from css_core.types import CSSRequest, Message

    _, registry = _registry(base_url)
    provider = registry.by_name("OPENAI")
    hooks, spec = provider.hooks, provider.spec
    request = CSSRequest(provider="OPENAI", endpoint="completions", model="gpt-4",
                         messages=(Message("user", "hi"),))
    import fake_provider

    body = fake_provider.completion_body()

    async def op() -> object:
        hooks["css_encode_params"](spec=spec, request=request)
        return hooks["css_postprocess"](spec=spec, request=request, body=body)

    return op, None


async def case_prepare(base_url: str) -> tuple[Callable[[], Awaitable[object]], None]:
    import msgspec

    from css_core.job import decode_job
    from css_core.messages import OffchainOutput
    from css_core.workflow import Workflow

    settings, registry = _registry(base_url)
    workflow = Workflow(registry, settings, None)  # type: ignore[arg-type]
    import fake_provider

    body = fake_provider.completion_body()
    encode = msgspec.json.Encoder().encode

    async def op() -> object:
        job = decode_job(JOB, registry, settings)
        provider, _call = workflow.prepare(job.request)
        result = provider.hooks["css_postprocess"](spec=provider.spec, request=job.request, body=body)
        return encode(OffchainOutput(result))

    return op, None


def _asgi_caller(app):  # type: ignore[no-untyped-def]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/service_output", "raw_path": b"/service_output", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(JOB)).encode())],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {},
    }

    async def op() -> object:
        sent = False
        status = []

        async def receive():  # type: ignore[no-untyped-def]
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": JOB, "more_body": False}
            await asyncio.sleep(3600)

        async def send(message):  # type: ignore[no-untyped-def]
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(dict(scope), receive, send)
        if status != [200]:
            raise RuntimeError(f"status {status}")
        return status

    return op


async def _lifespan(app):  # type: ignore[no-untyped-def]
    queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    out: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    await queue.put({"type": "lifespan.startup"})
    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, queue.get, out.put))
    msg = await out.get()
    if msg["type"] != "lifespan.startup.complete":
        raise RuntimeError(msg)

    async def close() -> None:
        await queue.put({"type": "lifespan.shutdown"})
        await out.get()
        await task

    return close


async def case_asgi_app(base_url: str) -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]:
    from css_core.app import create_app

    settings, registry = _registry(base_url)
    app = create_app(settings, registry)
    close = await _lifespan(app)
    return _asgi_caller(app), close


async def case_asgi_hello() -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]:
    from litestar import Litestar, Request, Response, post

    @post("/service_output", status_code=200, media_type="application/json")
    async def handler(request: Request) -> Response[bytes]:  # type: ignore[type-arg]
        await request.body()
        return Response(b'{"output":"hello"}', media_type="application/json")

    app = Litestar(route_handlers=[handler], logging_config=None,
                   signature_namespace={"Request": Request, "Response": Response})
    close = await _lifespan(app)
    return _asgi_caller(app), close


async def case_asgi_minimal(base_url: str) -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]:
    import variants

    os.environ.setdefault("OPENAI_BASE_URL", base_url)
    os.environ.setdefault("OPENAI_API_KEY", "bench")
    app = variants.minimal_app()
    close = await _lifespan(app)
    return _asgi_caller(app), close


async def case_asgi_app_aiohttp(
    base_url: str, fast: bool
) -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]:
    import variants

    variants._patch_aiohttp()  # for the rest of this process: these cases run last
    if fast:
        variants._patch_fast_first_attempt()
    op, close_app = await case_asgi_app(base_url)

    async def close() -> None:
        await close_app()
        await variants._close_session()

    return op, close


# the aiohttp-patched cases change css_core for the rest of the process: keep them last
CASES = ["raw", "httpx-service", "httpx-default", "aiohttp", "tenacity", "pluggy", "prepare", "asgi-hello", "asgi-app",
         "asgi-minimal-aiohttp", "asgi-app-aiohttp", "asgi-app-aiohttp-fastretry"]


async def main_async(args: argparse.Namespace, url: str, base_url: str) -> None:
    print(f"| case | {' | '.join(f'c{c} CPU µs/op (wall µs/op)' for c in args.conc)} |")
    print("|---|" + "---|" * len(args.conc))
    for name in CASES:
        if args.only and name not in args.only:
            continue
        cells = []
        for conc in args.conc:
            if name in ("tenacity", "pluggy", "prepare", "asgi-hello") and conc != 1:
                cells.append("—")
                continue
            factory = {
                "httpx-service": lambda: case_httpx(url, False), "httpx-default": lambda: case_httpx(url, True),
                "aiohttp": lambda: case_aiohttp(url), "raw": lambda: case_raw(url), "tenacity": case_tenacity,
                "pluggy": lambda: case_pluggy(base_url), "prepare": lambda: case_prepare(base_url),
                "asgi-app": lambda: case_asgi_app(base_url), "asgi-hello": case_asgi_hello,
                "asgi-minimal-aiohttp": lambda: case_asgi_minimal(base_url),
                "asgi-app-aiohttp": lambda: case_asgi_app_aiohttp(base_url, False),
                "asgi-app-aiohttp-fastretry": lambda: case_asgi_app_aiohttp(base_url, True),
            }[name]
            op, close = await factory()
            if args.gc == "freeze":
                gc.collect()
                gc.freeze()
            n = args.n * (10 if name in ("tenacity", "pluggy", "prepare") else 1)
            cpu, wall = await drive(op, n, conc)
            if close:
                await close()
            cells.append(f"{cpu:,.1f} ({wall:,.1f})")
        print(f"| {name} | {' | '.join(cells)} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--conc", default="1,32,256")
    p.add_argument("--only", default="")
    p.add_argument("--pin-fake", default="1")
    p.add_argument("--pin-self", default="0")
    p.add_argument("--gc", choices=("on", "off", "freeze"), default="on",
                   help="off: gc.disable(); freeze: gc.freeze() before each case (what cyclic GC costs)")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    args.conc = [int(c) for c in args.conc.split(",")]
    args.only = {c for c in args.only.split(",") if c}
    if args.pin_self:
        os.sched_setaffinity(0, {int(c) for c in args.pin_self.split(",")})
    import uvloop

    if args.gc == "off":
        gc.disable()
    port = run.free_port()
    fake = run.Server(run.pinned(args.pin_fake, [sys.executable, str(BENCH / "fake_provider.py"), "--port", str(port)]),
                      port, name="fake")
    try:
        fake.wait_ready()
        base = f"http://127.0.0.1:{port}/v1"
        uvloop.run(main_async(args, base + "/chat/completions", base))
    finally:
        fake.stop()



if __name__ == "__main__":
    main()
