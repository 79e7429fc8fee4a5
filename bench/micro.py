"""Micro-benchmarks: CPU µs per request of each piece of the service's path, in-process.

    python bench/micro.py [--n 5000] [--conc 1,32,256] [--only NAME,...] [--gc on|off|freeze]

Each case runs `--n` operations on one uvloop event loop, at each concurrency, and reports
the CPU time of this process (time.process_time, so other load on the machine affects it
little) per operation, and the wall time per operation in brackets. The fake provider
(bench/fake_provider.py, 0 ms) runs in its own process. Cases without I/O run 10 x `--n`
operations at concurrency 1 only. Cases:

The provider call (POST the OpenAI body, read the whole answer):

- `raw`: a raw asyncio.Protocol keep-alive client (bench/client.py's): the floor.
- `aiohttp`: raw aiohttp, `session.post(...)` + `read()` on a session configured as the
  worker's pool (css_core.providers.http.ProviderHTTP: no connection limit, no total
  timeout) but with `trust_env=False`: the floor of the core's call.
- `aiohttp-trust-env`: the same with `trust_env=True`, as ProviderHTTP has it: aiohttp then
  looks up `~/.netrc` and the proxy variables on every request, each in a worker thread
  (this process's CPU time counts the threads).
- `core-call`: the provider call as the core makes it: `css_core.providers.default_call.css_call`,
  i.e. `provider_http.send` (an `httpx.Request` through the `httpx-aiohttp` transport's
  `handle_async_request`) + `provider_http.read` + the status check, on a real
  ProviderHTTP.
- `core-call-hook`: the same through the provider's `css_call` HookCaller
  (`Provider.hooks.call`, which asks the OpenAI plugin, then the core's `trylast` call),
  as `Workflow.run` makes it.
- `httpx-client`: `ProviderHTTP.client.post(...)` + `.content`: the `httpx.AsyncClient`
  over the same transport that plugins implementing `css_call` get.
- `httpx-httpcore`, `httpx-default`: for comparison only, httpx on its own transport
  (httpcore): retries=0, no connection limit, 256 keep-alive (as css_core.edge.app once had it),
  and httpx's default limits (100 connections).

Per job, without I/O:

- `noop`: an `async def` returning a constant: this harness's own cost per operation.
- `tenacity`: what wraps every job's attempts: `css_core.jobs.retry.retrying(...)` built once,
  `.copy(before_sleep=...)` per job, and one successful attempt through its
  `async for` / `with` (Workflow._attempts without the deadline).
- `tenacity-deadline`: the same inside `asyncio.timeout(job_deadline)`, as Workflow._attempts.
- `hookcaller`: a completion's per-job hook calls (`css_encode_params`, `css_postprocess`)
  through the provider's pluggy HookCallers (`Provider.hooks.encode_params`, `.postprocess`),
  as the workflow makes them.
- `direct`: the same two OpenAI-plugin functions called directly (what the HookCaller adds
  is the difference).
- `hookcaller-event`, `direct-event`: `css_parse_stream_event` for one streamed event, through
  the HookCaller and directly: paid once per chunk of a stream.
- `abi-decode`: `css_core.jobs.codec.decode_request` (eth-abi, after the offsets check) of a
  typical on-chain request (OPENAI, completions, gpt-4, a system and a user message).
- `abi-encode`: `css_core.jobs.codec.encode_result` (eth-abi) of a typical ~300-character completion.
- `prepare`: decode_job + Workflow.prepare + the plugin's postprocess + the result's
  encoding (everything of an off-chain job except the HTTP call and the server), with the
  OpenAI plugin.
- `record`: one job's record life cycle as ServiceOutput makes it (`css_core.operations.record`:
  `Recorder.start`, `job`, `enter`, `served`, one `attempt`, `usage`, `Recorder.finish`)
  with no metrics, its `css_core.jobs` log line off (WARNING).
- `record-metrics`: the same with `Metrics()` (prometheus_client's multiprocess files, in a
  temporary `PROMETHEUS_MULTIPROC_DIR`): what the job's metrics cost is the difference.
- `record-budget`: the same with `Metrics()` and one budget (`OPENAI`, requests_per_hour)
  in the SQLite store in a temporary `CSS_STATE_DIR`, and `admit("OPENAI", "gpt-4")`
  (its transaction runs on the store's thread, counted in this process's CPU time).
- `record-metrics-log`: `record-metrics` with the job's log line at INFO, formatted by
  `css_core.operations.logs.TextFormatter` into an `io.StringIO`.

ASGI, in-process (no server, no sockets on the inbound side):

- `asgi-bare`: a raw ASGI callable that reads the body and answers constant bytes: the
  floor of this harness's ASGI calls.
- `asgi-route`: the same behind Litestar, as an `@asgi("/service_output", copy_scope=False)`
  route handler (how `POST /service_output` is routed now): Litestar's `@asgi` dispatch.
- `asgi-hello`: a full Litestar `@post` handler (Request, Response) answering constant
  bytes, for comparison (the service's other routes pay this).
- `asgi-app`: the whole service, `css_core.edge.app.create_app()` called as ASGI in-process
  (lifespan included): POST /service_output of an off-chain job, its provider call real
  (the worker's pool, to the fake provider). Its lifespan's gc settings (freeze,
  threshold) are undone after the case.
- `asgi-app-stream`: the whole service relaying a stream of `--stream-chunks` events
  `--stream-gap-ms` apart (asked per request, see fake_provider.py): CPU µs per relayed
  chunk (the stream's CPU / its chunks), concurrency 1 and 32 only.
- `asgi-minimal-aiohttp`, `asgi-minimal-httpx`: bench/variants.py's minimal_app (raw ASGI +
  msgspec + aiohttp) and minimal_httpx_app (the same, calling as the core does).
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
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run  # noqa: E402

JOB = (
    b'{"source":1,"destination":1,"data":{"model":"gpt-4","params":{"endpoint":"completions",'
    b'"messages":[{"role":"user","content":"hi"}]}}}'
)
BODY = b'{"model":"gpt-4","messages":[{"role":"user","content":"hi"}]}'
HEADERS = {"content-type": "application/json", "authorization": "Bearer bench"}
RESULT = (
    "The capital of France is Paris. It lies on the Seine in the north of the country and has been its political, "
    "economic and cultural centre for centuries; about two million people live in the city itself and more than "
    "twelve million in its metropolitan area."
)

Op = Callable[[], Awaitable[object]]
Close = Callable[[], Awaitable[None]] | None


async def drive(op: Op, n: int, conc: int) -> tuple[float, float]:
    """CPU µs and wall µs per operation, `conc` at a time."""
    for _ in range(min(n // 10, 200)):  # warm up
        await op()
    await asyncio.gather(*(op() for _ in range(conc)))  # (and open the connections)
    left = [n]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            await op()

    c0, w0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return (time.process_time() - c0) / n * 1e6, (time.perf_counter() - w0) / n * 1e6


# -- settings, registry, the worker's pool ------------------------------------------------------


def _settings(base_url: str):  # type: ignore[no-untyped-def]
    from css_core.config import load_settings

    return load_settings({"OPENAI_API_KEY": "bench", "OPENAI_BASE_URL": base_url}, dotenv=None)


def _registry(base_url: str):  # type: ignore[no-untyped-def]
    from css_core.providers.registry import build_registry

    settings = _settings(base_url)
    return settings, build_registry(settings)


async def _provider_http(base_url: str):  # type: ignore[no-untyped-def]
    from css_core.providers.http import ProviderHTTP

    http = ProviderHTTP(_settings(base_url))
    await http.__aenter__()

    async def close() -> None:
        await http.__aexit__(None, None, None)

    return http, close


# -- the provider call ----------------------------------------------------------------------------


async def case_raw(url: str) -> tuple[Op, Close]:
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


async def case_aiohttp(url: str, trust_env: bool) -> tuple[Op, Close]:
    import aiohttp
    import httpx

    session = aiohttp.ClientSession(  # as ProviderHTTP's
        connector=aiohttp.TCPConnector(limit=0, ssl=httpx.create_ssl_context()),
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=trust_env,
    )

    async def op() -> object:
        async with session.post(url, data=BODY, headers=HEADERS) as response:
            body = await response.read()
            if response.status >= 300:
                raise RuntimeError(f"status {response.status}")
            return body

    return op, session.close


async def case_core_call(url: str, base_url: str, hook: bool) -> tuple[Op, Close]:
    from css_core import default_call
    from css_core.types import PreparedCall

    http, close = await _provider_http(base_url)
    transport, client = http.transport, http.client
    assert transport is not None
    call = PreparedCall(url, HEADERS, BODY)
    if not hook:

        async def op() -> object:
            return await default_call.css_call(call, transport)

        return op, close

    _, registry = _registry(base_url)
    provider = registry.by_name("OPENAI")
    spec, hooks = provider.spec, provider.hooks

    async def op_hook() -> object:
        return await hooks.call(spec=spec, call=call, client=client, transport=transport)

    return op_hook, close


async def case_httpx_client(url: str, base_url: str) -> tuple[Op, Close]:
    http, close = await _provider_http(base_url)
    client = http.client
    assert client is not None

    async def op() -> object:
        r = await client.post(url, content=BODY, headers=HEADERS)
        return r.content

    return op, close


async def case_httpx(url: str, default: bool) -> tuple[Op, Close]:
    import httpx

    if default:
        client = httpx.AsyncClient(timeout=60, trust_env=False)
    else:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(retries=0, limits=limits), timeout=60,
                                   trust_env=False)

    async def op() -> object:
        r = await client.post(url, content=BODY, headers=HEADERS)
        return r.content

    return op, client.aclose


# -- per job, without I/O -------------------------------------------------------------------------


async def case_noop() -> tuple[Op, Close]:
    async def op() -> object:
        return 1

    return op, None


async def case_tenacity(base_url: str, deadline: bool) -> tuple[Op, Close]:
    from css_core.jobs.retry import retrying

    settings, registry = _registry(base_url)
    provider = registry.by_name("OPENAI")
    job_deadline = settings.job_deadline
    controller = retrying(settings.retry, provider.spec.retryable_statuses, job_deadline)

    def before_sleep(state: Any) -> None:  # a bound method per job in the workflow
        pass

    async def attempt() -> int:
        return 1

    async def op() -> object:
        async for try_ in controller.copy(before_sleep=before_sleep):
            with try_:
                return await attempt()
        raise AssertionError("tenacity ended without a result")

    async def op_deadline() -> object:
        async with asyncio.timeout(job_deadline):
            async for try_ in controller.copy(before_sleep=before_sleep):
                with try_:
                    return await attempt()
        raise AssertionError("tenacity ended without a result")

    return (op_deadline if deadline else op), None


def _openai(base_url: str):  # type: ignore[no-untyped-def]
    from css_core.types import CSSRequest, Message

    _, registry = _registry(base_url)
    provider = registry.by_name("OPENAI")
    request = CSSRequest(provider="OPENAI", endpoint="completions", model="gpt-4", messages=(Message("user", "hi"),))
    return provider, request


def _direct(caller: Any, **arguments: Any) -> Callable[[], Any]:
    """The function pluggy would call first for `caller`, with the arguments it takes, bound once."""
    from css_core import default_call

    impl = [i for i in caller.get_hookimpls() if i.plugin is not default_call][-1]  # the last is called first
    function, kwargs = impl.function, {name: arguments[name] for name in impl.argnames}
    return lambda: function(**kwargs)


async def case_hooks(base_url: str, hookcaller: bool) -> tuple[Op, Close]:
    import fake_provider

    provider, request = _openai(base_url)
    spec, hooks = provider.spec, provider.hooks
    body = fake_provider.completion_body()
    if hookcaller:
        encode_params, postprocess = hooks.encode_params, hooks.postprocess

        async def op() -> object:
            encode_params(spec=spec, request=request)
            return postprocess(spec=spec, request=request, body=body)
    else:
        encode = _direct(hooks.encode_params, spec=spec, request=request)
        post = _direct(hooks.postprocess, spec=spec, request=request, body=body)

        async def op() -> object:
            encode()
            return post()

    if await op() != "Hello! How can I help you today?":
        raise RuntimeError("the OpenAI plugin's hooks did not read the completion")
    return op, None


async def case_event(base_url: str, hookcaller: bool) -> tuple[Op, Close]:
    import fake_provider

    provider, request = _openai(base_url)
    spec, hooks = provider.spec, provider.hooks
    event = fake_provider.stream_event(7)
    data = event[len(b"data: ") : -2]
    if hookcaller:
        parse = hooks.parse_stream_event

        async def op() -> object:
            return parse(spec=spec, request=request, data=data)
    else:
        parse_direct = _direct(hooks.parse_stream_event, spec=spec, request=request, data=data)

        async def op() -> object:
            return parse_direct()

    if await op() != "tok7 ":
        raise RuntimeError("the OpenAI plugin did not read the event")
    return op, None


async def case_abi(decode: bool) -> tuple[Op, Close]:
    from css_core import codec
    from css_core.types import Message

    messages = (Message("system", "You are a helpful assistant."), Message("user", "What is the capital of France?"))
    raw = codec.encode_request(0, 0, "gpt-4", messages)
    if codec.decode_request(raw).messages != messages or codec.decode_result(codec.encode_result(RESULT)) != RESULT:
        raise RuntimeError("the codec does not round-trip")
    if decode:

        async def op() -> object:
            return codec.decode_request(raw)
    else:

        async def op() -> object:
            return codec.encode_result(RESULT)

    return op, None


async def case_prepare(base_url: str) -> tuple[Op, Close]:
    import fake_provider
    import msgspec

    from css_core.jobs.decode import decode_job
    from css_core.jobs.messages import OffchainOutput
    from css_core.jobs.pipeline import Workflow

    settings, registry = _registry(base_url)
    workflow = Workflow(registry, settings, None)  # type: ignore[arg-type]
    body = fake_provider.completion_body()
    encode = msgspec.json.Encoder().encode

    async def op() -> object:
        job = decode_job(JOB, registry, settings)
        prepared, _url, _content = workflow.prepare(job.request)
        provider = prepared.provider
        result = provider.hooks.postprocess(spec=provider.spec, request=job.request, body=body)
        return encode(OffchainOutput(result))

    return op, None


async def case_record(base_url: str, metrics: bool, budget: bool = False, log: bool = False) -> tuple[Op, Close]:
    """One job's record life cycle, as ServiceOutput drives it, with or without metrics, a budget, its log line."""
    import io
    import logging
    import shutil
    import tempfile

    from css_core.config import load_settings
    from css_core.jobs.messages import JobLocation
    from css_core.operations.budgets import Budgets
    from css_core.operations.logs import TEXT_FORMAT, TextFormatter
    from css_core.operations.metrics import VARIABLE, Metrics
    from css_core.operations.record import JobRecord, Recorder
    from css_core.types import CSSRequest, Message

    _, registry = _registry(base_url)
    name = registry.by_name("OPENAI").spec.name
    request = CSSRequest(provider="OPENAI", endpoint="completions", model="gpt-4", messages=(Message("user", "hi"),))
    temporary = tempfile.mkdtemp(prefix="css-bench-record-")
    metrics_dir, state_dir = os.path.join(temporary, "metrics"), os.path.join(temporary, "state")
    os.mkdir(metrics_dir)
    before = os.environ.get(VARIABLE)
    os.environ[VARIABLE] = metrics_dir
    job_metrics = Metrics() if metrics else None
    budgets = None
    if budget:
        budget_settings = load_settings({
            "OPENAI_API_KEY": "bench", "OPENAI_BASE_URL": base_url, "CSS_STATE_DIR": state_dir,
            "CSS_BUDGETS": '{"OPENAI": {"requests_per_hour": 1000000000}}',
        }, dotenv=None)
        budgets = Budgets.from_settings(budget_settings)
        if not budgets.active:
            raise RuntimeError("the budget is not active")
    recorder = Recorder(registry, job_metrics, budgets)
    jobs = logging.getLogger("css_core.jobs")
    level, handlers, propagate = jobs.level, jobs.handlers[:], jobs.propagate
    stream = io.StringIO()
    if log:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(TextFormatter(TEXT_FORMAT))
        jobs.handlers, jobs.propagate = [handler], False
        jobs.setLevel(logging.INFO)
    else:
        jobs.setLevel(logging.WARNING)

    async def op() -> JobRecord:
        scope = {"type": "http", "path": "/service_output", "headers": [], "state": {}}
        record = recorder.start(scope)
        record.job(request, JobLocation.OFFCHAIN)
        record.enter()
        if budget:
            await record.admit("OPENAI", "gpt-4")
        record.served(name, "gpt-4")
        record.attempt("ok", 0.001)
        await record.usage(10, 20)
        await recorder.finish(record)
        return record

    record = await op()
    if budget and not record.slots:
        raise RuntimeError("the budget counted nothing")
    if log and "job finished" not in stream.getvalue():
        raise RuntimeError("no log line was written")

    async def close() -> None:
        jobs.handlers, jobs.propagate = handlers, propagate
        jobs.setLevel(level)
        if budgets is not None:
            await budgets.close()
        if job_metrics is not None:
            job_metrics.close()
        if before is None:
            os.environ.pop(VARIABLE, None)
        else:
            os.environ[VARIABLE] = before
        shutil.rmtree(temporary, ignore_errors=True)

    return op, close


# -- ASGI -----------------------------------------------------------------------------------------


def _asgi_caller(app: Any, body: bytes = JOB) -> Op:
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
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }

    async def op() -> object:
        sent = False
        status = []
        ended = [False]

        async def receive():  # type: ignore[no-untyped-def]
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)

        async def send(message):  # type: ignore[no-untyped-def]
            if message["type"] == "http.response.start":
                status.append(message["status"])
            elif not message.get("more_body", False):
                ended[0] = True

        await app(dict(scope), receive, send)
        if status != [200] or not ended[0]:
            raise RuntimeError(f"status {status}, body ended: {ended[0]}")
        return status

    return op


async def _lifespan(app: Any) -> Callable[[], Awaitable[None]]:
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


_START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
_HELLO = {"type": "http.response.body", "body": b'{"output":"hello"}'}


async def _bare(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send(_START)
    await send(_HELLO)


async def case_asgi_bare() -> tuple[Op, Close]:
    return _asgi_caller(_bare), None


async def case_asgi_route() -> tuple[Op, Close]:
    from litestar import Litestar, asgi

    @asgi("/service_output", copy_scope=False)
    async def handler(scope: Any, receive: Any, send: Any) -> None:
        await _bare(scope, receive, send)

    app = Litestar(route_handlers=[handler], logging_config=None, openapi_config=None)
    close = await _lifespan(app)
    return _asgi_caller(app), close


async def case_asgi_hello() -> tuple[Op, Close]:
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


async def case_asgi_app(base_url: str, body: bytes = JOB) -> tuple[Op, Close]:
    from css_core.edge.app import create_app

    settings, registry = _registry(base_url)
    threshold = gc.get_threshold()
    app = create_app(settings, registry)
    close_app = await _lifespan(app)  # its start-up freezes the heap and raises the gc threshold

    async def close() -> None:
        await close_app()
        gc.unfreeze()  # not for the cases after this one
        gc.set_threshold(*threshold)

    return _asgi_caller(app, body), close


def stream_job(chunks: int, gap_ms: float) -> bytes:
    import client

    return client.with_stream_shape(client.SERVICE_STREAM, "service", chunks, gap_ms)


async def case_asgi_minimal(base_url: str, httpx: bool) -> tuple[Op, Close]:
    import variants

    os.environ.setdefault("OPENAI_BASE_URL", base_url)
    os.environ.setdefault("OPENAI_API_KEY", "bench")
    app = variants.minimal_httpx_app() if httpx else variants.minimal_app()
    close = await _lifespan(app)
    return _asgi_caller(app), close


CASES = [
    "raw",
    "aiohttp",
    "aiohttp-trust-env",
    "core-call",
    "core-call-hook",
    "httpx-client",
    "httpx-httpcore",
    "httpx-default",
    "noop",
    "tenacity",
    "tenacity-deadline",
    "hookcaller",
    "direct",
    "hookcaller-event",
    "direct-event",
    "abi-decode",
    "abi-encode",
    "prepare",
    "record",
    "record-metrics",
    "record-budget",
    "record-metrics-log",
    "asgi-bare",
    "asgi-route",
    "asgi-hello",
    "asgi-app",
    "asgi-app-stream",
    "asgi-minimal-aiohttp",
    "asgi-minimal-httpx",
]
CPU_ONLY = {"noop", "tenacity", "tenacity-deadline", "hookcaller", "direct", "hookcaller-event", "direct-event",
            "abi-decode", "abi-encode", "prepare", "record", "record-metrics", "record-budget",
            "record-metrics-log"}  # no I/O (but record-budget's SQLite file): 10x --n, conc 1
C1_ONLY = {"asgi-bare", "asgi-route", "asgi-hello"}  # no I/O either, but ASGI: --n, conc 1
STREAM_CONC = {1, 32}


Factory = Callable[[], Awaitable[tuple[Op, Close]]]


def factories(args: argparse.Namespace, url: str, base_url: str) -> dict[str, Factory]:
    return {
        "raw": lambda: case_raw(url),
        "aiohttp": lambda: case_aiohttp(url, False),
        "aiohttp-trust-env": lambda: case_aiohttp(url, True),
        "core-call": lambda: case_core_call(url, base_url, False),
        "core-call-hook": lambda: case_core_call(url, base_url, True),
        "httpx-client": lambda: case_httpx_client(url, base_url),
        "httpx-httpcore": lambda: case_httpx(url, False),
        "httpx-default": lambda: case_httpx(url, True),
        "noop": case_noop,
        "tenacity": lambda: case_tenacity(base_url, False),
        "tenacity-deadline": lambda: case_tenacity(base_url, True),
        "hookcaller": lambda: case_hooks(base_url, True),
        "direct": lambda: case_hooks(base_url, False),
        "hookcaller-event": lambda: case_event(base_url, True),
        "direct-event": lambda: case_event(base_url, False),
        "abi-decode": lambda: case_abi(True),
        "abi-encode": lambda: case_abi(False),
        "prepare": lambda: case_prepare(base_url),
        "record": lambda: case_record(base_url, False),
        "record-metrics": lambda: case_record(base_url, True),
        "record-budget": lambda: case_record(base_url, True, budget=True),
        "record-metrics-log": lambda: case_record(base_url, True, log=True),
        "asgi-bare": case_asgi_bare,
        "asgi-route": case_asgi_route,
        "asgi-hello": case_asgi_hello,
        "asgi-app": lambda: case_asgi_app(base_url),
        "asgi-app-stream": lambda: case_asgi_app(base_url, stream_job(args.stream_chunks, args.stream_gap_ms)),
        "asgi-minimal-aiohttp": lambda: case_asgi_minimal(base_url, False),
        "asgi-minimal-httpx": lambda: case_asgi_minimal(base_url, True),
    }


async def main_async(args: argparse.Namespace, url: str, base_url: str) -> None:
    print(f"| case | {' | '.join(f'c{c} CPU µs/op (wall µs/op)' for c in args.conc)} |")
    print("|---|" + "---|" * len(args.conc))
    make = factories(args, url, base_url)
    for name in CASES:
        if args.only and name not in args.only:
            continue
        cells = []
        for conc in args.conc:
            if ((name in CPU_ONLY or name in C1_ONLY) and conc != 1) or (
                    name == "asgi-app-stream" and conc not in STREAM_CONC):
                cells.append("—")
                continue
            op, close = await make[name]()
            if args.gc == "freeze":
                gc.collect()
                gc.freeze()
            n = args.n * 10 if name in CPU_ONLY else args.n
            per = 1
            if name == "asgi-app-stream":  # per relayed chunk
                n, per = max(20, args.n // (5 * args.stream_chunks)), args.stream_chunks
            cpu, wall = await drive(op, n, conc)
            if close:
                await close()
            cells.append(f"{cpu / per:,.1f} ({wall / per:,.1f})")
        label = f"{name} (per chunk)" if name == "asgi-app-stream" else name
        print(f"| {label} | {' | '.join(cells)} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--conc", default="1,32,256")
    p.add_argument("--only", default="", help="comma-separated cases: " + ",".join(CASES))
    p.add_argument("--pin-fake", default="1")
    p.add_argument("--pin-self", default="0")
    p.add_argument("--stream-chunks", type=int, default=20, help="events per stream of asgi-app-stream (default 20)")
    p.add_argument("--stream-gap-ms", type=float, default=1.0,
                   help="gap between them (default 1 ms: each event arrives on its own read)")
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
    if unknown := args.only - set(CASES):
        p.error(f"unknown cases: {', '.join(sorted(unknown))}")
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
