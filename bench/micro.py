"""Micro-benchmarks: CPU µs per request of each piece of the service's path, in-process.

    python bench/micro.py [--n 5000] [--conc 1,32,256] [--only NAME,...]

Each case runs `--n` operations on one uvloop event loop, at each concurrency, and reports
the CPU time of this process (time.process_time, so other load on the machine affects it
little) per operation. The fake provider (bench/fake_provider.py, 0 ms) runs in its own
process. Cases:

- `raw`: a raw asyncio.Protocol keep-alive client (bench/client.py's): the floor.
- `aiohttp`: the service's own provider call: a real css_core.provider_http.ProviderHTTP,
  `post(PreparedCall)` (aiohttp session, status checked, errors mapped).
- `httpx-plugin`: `ProviderHTTP(plugin_calls=True).client.post(...)` + `.content`: the
  httpx.AsyncClient over the same aiohttp pool that plugins implementing `css_call` get.
- `httpx-service`, `httpx-default`: for comparison only, httpx with its own transport
  (httpcore): configured as css_core.app did before provider_http.py (retries=0, no
  connection limit, 256 keep-alive), and with httpx's default limits (100 connections).
- `first-attempt`: Workflow._attempts around an already-done attempt: what wraps every
  job's first attempt (deadline, counting; no tenacity).
- `tenacity`: css_core.retry.retrying() around an already-done coroutine: what a job pays
  from its second attempt on (after a retryable failure).
- `pluggy`: the per-job hook calls of a completion (css_encode_params, css_postprocess) as
  the workflow makes them: the plain functions bound at start-up (Provider.hooks).
- `pluggy-hookcaller`: the same calls through pluggy's own HookCaller (the subset hook
  caller build_registry binds from), for comparison.
- `prepare`: Workflow.prepare + decode_job + the result's encoding (everything of a job
  except the HTTP call and the server), with the OpenAI plugin.
- `asgi-hello`: a minimal Litestar app (one POST handler returning constant bytes), ASGI
  in-process: Litestar's own per-request cost (the service's other routes still pay it).
- `asgi-app`: the whole service, `css_core.app.create_app()` called as ASGI in-process
  (lifespan included; no server, no sockets on the inbound side): POST /service_output
  goes to ServiceOutput, its provider call real (ProviderHTTP to the fake provider). Its
  lifespan's gc settings (freeze, threshold) are undone after the case.
- `asgi-minimal-aiohttp`: bench/variants.py's minimal_app (raw ASGI + msgspec + aiohttp).
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

JOB = (
    b'{"source":1,"destination":1,"data":{"model":"gpt-4","params":{"endpoint":"completions",'
    b'"messages":[{"role":"user","content":"hi"}]}}}'
)
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


def _timeout() -> float:
    from css_core.config import load_settings

    return load_settings({}, dotenv=None).request_timeout


async def _provider_http(plugin_calls: bool):  # type: ignore[no-untyped-def]
    from css_core.provider_http import ProviderHTTP

    http = ProviderHTTP(_timeout(), plugin_calls=plugin_calls)
    await http.__aenter__()

    async def close() -> None:
        await http.__aexit__(None, None, None)

    return http, close


async def case_aiohttp(url: str) -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]:
    from css_core.types import PreparedCall

    http, close = await _provider_http(plugin_calls=False)  # as create_app's when no plugin makes its own calls
    call = PreparedCall(url, HEADERS, BODY)

    async def op() -> object:
        return await http.post(call)

    return op, close


async def case_httpx_plugin(url: str) -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]:
    http, close = await _provider_http(plugin_calls=True)
    client = http.client
    assert client is not None

    async def op() -> object:
        r = await client.post(url, content=BODY, headers=HEADERS)
        return r.content

    return op, close


async def case_raw(url: str) -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]:
    from urllib.parse import urlsplit

    import client

    u = urlsplit(url)
    raw = (
        b"POST %s HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer bench\r\ncontent-length: %d\r\n\r\n%s" % (u.path.encode(), len(BODY), BODY)
    )
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


def _settings(base_url: str):  # type: ignore[no-untyped-def]
    from css_core.config import load_settings

    return load_settings({"OPENAI_API_KEY": "bench", "OPENAI_BASE_URL": base_url}, dotenv=None)


def _registry(base_url: str):  # type: ignore[no-untyped-def]
    from css_core.plugins import build_registry

    settings = _settings(base_url)
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


async def case_first_attempt(base_url: str) -> tuple[Callable[[], Awaitable[object]], None]:
    from css_core.workflow import Workflow, _Job

    settings, registry = _registry(base_url)
    workflow = Workflow(registry, settings, None)  # type: ignore[arg-type]
    provider = registry.by_name("OPENAI")

    async def attempt() -> int:
        return 1

    async def op() -> object:
        return await workflow._attempts(_Job(provider), attempt, settings.job_deadline)

    return op, None


async def case_pluggy(base_url: str, hookcaller: bool) -> tuple[Callable[[], Awaitable[object]], None]:
    from css_core.plugins import build_registry, plugin_manager
    from css_core.types import CSSRequest, Message

    settings = _settings(base_url)
    pm, infos, errors = plugin_manager()
    registry = build_registry(settings, pm, infos, errors)
    provider = registry.by_name("OPENAI")
    spec = provider.spec
    if hookcaller:  # as build_registry makes them, before binding: without the other providers' plugins
        others = [impl.plugin for impl in pm.hook.css_provider.get_hookimpls() if impl.function() != spec]
        encode_params = pm.subset_hook_caller("css_encode_params", remove_plugins=others)
        postprocess = pm.subset_hook_caller("css_postprocess", remove_plugins=others)
    else:
        encode_params, postprocess = provider.hooks["css_encode_params"], provider.hooks["css_postprocess"]
    request = CSSRequest(provider="OPENAI", endpoint="completions", model="gpt-4", messages=(Message("user", "hi"),))
    import fake_provider

    body = fake_provider.completion_body()
    if encode_params(spec=spec, request=request) is None or postprocess(spec=spec, request=request, body=body) is None:
        raise RuntimeError("the OpenAI plugin's hooks answered None")

    async def op() -> object:
        encode_params(spec=spec, request=request)
        return postprocess(spec=spec, request=request, body=body)

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
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/service_output",
        "raw_path": b"/service_output",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(JOB)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
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
    threshold = gc.get_threshold()
    app = create_app(settings, registry)
    close_app = await _lifespan(app)  # its start-up freezes the heap and raises the gc threshold

    async def close() -> None:
        await close_app()
        gc.unfreeze()  # not for the cases after this one
        gc.set_threshold(*threshold)

    return _asgi_caller(app), close


async def case_asgi_hello() -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]:
    from litestar import Litestar, Request, Response, post

    @post("/service_output", status_code=200, media_type="application/json")
    async def handler(request: Request) -> Response[bytes]:  # type: ignore[type-arg]
        await request.body()
        return Response(b'{"output":"hello"}', media_type="application/json")

    app = Litestar(
        route_handlers=[handler], logging_config=None, signature_namespace={"Request": Request, "Response": Response}
    )
    close = await _lifespan(app)
    return _asgi_caller(app), close


async def case_asgi_minimal(base_url: str) -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]:
    import variants

    os.environ.setdefault("OPENAI_BASE_URL", base_url)
    os.environ.setdefault("OPENAI_API_KEY", "bench")
    app = variants.minimal_app()
    close = await _lifespan(app)
    return _asgi_caller(app), close


CASES = [
    "raw",
    "aiohttp",
    "httpx-plugin",
    "httpx-service",
    "httpx-default",
    "first-attempt",
    "tenacity",
    "pluggy",
    "pluggy-hookcaller",
    "prepare",
    "asgi-hello",
    "asgi-app",
    "asgi-minimal-aiohttp",
]
CPU_ONLY = {"first-attempt", "tenacity", "pluggy", "pluggy-hookcaller", "prepare"}  # no I/O: 10x --n, conc 1


async def main_async(args: argparse.Namespace, url: str, base_url: str) -> None:
    print(f"| case | {' | '.join(f'c{c} CPU µs/op (wall µs/op)' for c in args.conc)} |")
    print("|---|" + "---|" * len(args.conc))
    for name in CASES:
        if args.only and name not in args.only:
            continue
        cells = []
        for conc in args.conc:
            if (name in CPU_ONLY or name == "asgi-hello") and conc != 1:
                cells.append("—")
                continue
            factory = {
                "raw": lambda: case_raw(url),
                "aiohttp": lambda: case_aiohttp(url),
                "httpx-plugin": lambda: case_httpx_plugin(url),
                "httpx-service": lambda: case_httpx(url, False),
                "httpx-default": lambda: case_httpx(url, True),
                "first-attempt": lambda: case_first_attempt(base_url),
                "tenacity": case_tenacity,
                "pluggy": lambda: case_pluggy(base_url, False),
                "pluggy-hookcaller": lambda: case_pluggy(base_url, True),
                "prepare": lambda: case_prepare(base_url),
                "asgi-hello": case_asgi_hello,
                "asgi-app": lambda: case_asgi_app(base_url),
                "asgi-minimal-aiohttp": lambda: case_asgi_minimal(base_url),
            }[name]
            op, close = await factory()
            if args.gc == "freeze":
                gc.collect()
                gc.freeze()
            n = args.n * (10 if name in CPU_ONLY else 1)
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
    p.add_argument(
        "--gc",
        choices=("on", "off", "freeze"),
        default="on",
        help="off: gc.disable(); freeze: gc.freeze() before each case (what cyclic GC costs)",
    )
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
    fake = run.Server(
        run.pinned(args.pin_fake, [sys.executable, str(BENCH / "fake_provider.py"), "--port", str(port)]),
        port,
        name="fake",
    )
    try:
        fake.wait_ready()
        base = f"http://127.0.0.1:{port}/v1"
        uvloop.run(main_async(args, base + "/chat/completions", base))
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
