"""The cases of bench/micro.py: each builds one operation (and its clean-up) to be timed.

bench/micro.py's docstring says what each case measures.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Awaitable, Callable
from typing import Any

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
    from css_core.providers import default_call
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


async def case_transport(url: str, base_url: str, pyreqwest: bool) -> tuple[Op, Close]:
    """The core's call (`send` + `read` of css_core.providers.http) through a transport."""
    from css_core.providers.http import read, send
    from css_core.types import PreparedCall

    http, close_http = await _provider_http(base_url)
    transport = http.transport
    call = PreparedCall(url, HEADERS, BODY)
    if pyreqwest:
        import variants

        transport = variants.pyreqwest_transport(call.timeout)

    async def op() -> object:
        assert transport is not None
        response = await send(transport, call)
        body = await read(response)
        if response.status_code >= 300:
            raise RuntimeError(f"status {response.status_code}")
        return body

    async def close() -> None:
        if pyreqwest and transport is not None:
            await transport.aclose()
        await close_http()

    return op, close


async def case_pyreqwest(url: str) -> tuple[Op, Close]:
    """pyreqwest alone: its client's `post(...).build()`, `send()`, `bytes()`."""
    from datetime import timedelta

    from pyreqwest.client import ClientBuilder

    client = ClientBuilder().connect_timeout(timedelta(seconds=60)).read_timeout(timedelta(seconds=60)).build()

    async def op() -> object:
        response = await client.post(url).headers(HEADERS).body_bytes(BODY).build().send()
        body = await response.bytes()
        if response.status >= 300:
            raise RuntimeError(f"status {response.status}")
        return body

    return op, client.close


# -- per job, without I/O -------------------------------------------------------------------------


async def case_noop() -> tuple[Op, Close]:
    async def op() -> object:
        return 1

    return op, None


def _pipeline(base_url: str):  # type: ignore[no-untyped-def]
    """A pipeline (its pool unused), and a decoded off-chain job with a record that keeps nothing."""
    from css_core.jobs.pipeline import Pipeline
    from css_core.operations.record import JobRecord

    settings, registry = _registry(base_url)
    pipeline = Pipeline(registry, settings, None)  # type: ignore[arg-type]
    return pipeline, pipeline.decode(JOB, JobRecord(None, "bench"))


async def case_tenacity(base_url: str, deadline: bool) -> tuple[Op, Close]:
    """One successful attempt through the job's own tenacity controller, as Pipeline._attempts
    makes it: `Attempts.retrying()` per job (the provider's policy with the job's strategies),
    the first attempt inside tenacity's loop; with `deadline`, inside the job's `timeout_at`."""
    from tenacity import AsyncRetrying

    pipeline, job = _pipeline(base_url)
    attempts = pipeline.target(job, job.request)
    loop = asyncio.get_running_loop()

    async def attempt() -> int:
        return 1

    if isinstance(attempts.retrying(), AsyncRetrying):

        async def attempts_loop() -> object:
            async for try_ in attempts.retrying():
                with try_:
                    return await attempt()
            raise AssertionError("tenacity ended without a result")
    else:  # a plain controller, its waits awaited by the pipeline's coroutine

        async def attempts_loop() -> object:
            for try_ in attempts.retrying():
                if getattr(attempts, "pending_wait", 0):
                    await attempts.wait_to_retry()
                with try_:
                    return await attempt()
            raise AssertionError("tenacity ended without a result")

    async def op_deadline() -> object:
        job.deadline_at = loop.time() + pipeline.settings.job_deadline
        async with asyncio.timeout_at(job.deadline_at):
            return await attempts_loop()

    job.deadline_at = loop.time() + 3600
    return (op_deadline if deadline else attempts_loop), None


def _openai(base_url: str):  # type: ignore[no-untyped-def]
    from css_core.types import CSSRequest, Message

    _, registry = _registry(base_url)
    provider = registry.by_name("OPENAI")
    request = CSSRequest(provider="OPENAI", endpoint="completions", model="gpt-4", messages=(Message("user", "hi"),))
    return provider, request


def _direct(caller: Any, **arguments: Any) -> Callable[[], Any]:
    """The function pluggy would call first for `caller`, with the arguments it takes, bound once."""
    from css_core.providers import default_call

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
            return parse(spec=spec, request=request, data=data, event="")  # an unnamed event, as OpenAI's
    else:
        parse_direct = _direct(hooks.parse_stream_event, spec=spec, request=request, data=data, event="")

        async def op() -> object:
            return parse_direct()

    if await op() != "tok7 ":
        raise RuntimeError("the OpenAI plugin did not read the event")
    return op, None


async def case_abi(decode: bool) -> tuple[Op, Close]:
    from css_core.jobs import codec
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
    """An off-chain job without its call: Pipeline.decode, Pipeline.target (the plugin encodes
    the call), the plugin's postprocess of an answer, Pipeline.encode."""
    import fake_provider

    from css_core.jobs.pipeline import Pipeline, Served
    from css_core.operations.record import JobRecord

    settings, registry = _registry(base_url)
    pipeline = Pipeline(registry, settings, None)  # type: ignore[arg-type]
    body = fake_provider.completion_body()

    async def op() -> object:
        job = pipeline.decode(JOB, JobRecord(None, "bench"))
        attempts = pipeline.target(job, job.request)
        provider = attempts.provider
        result = provider.hooks.postprocess(spec=provider.spec, request=attempts.request, body=body)
        return pipeline.encode(job, Served(result, provider, attempts.request.model))

    if b"How can I help" not in await op():  # type: ignore[operator]
        raise RuntimeError("the pipeline did not answer the job")
    return op, None


async def case_record(base_url: str, metrics: bool, budget: bool = False, log: bool = False) -> tuple[Op, Close]:
    """One job's record life cycle, as ServiceOutput drives it, with or without metrics, a budget, its log line."""
    import io
    import logging
    import shutil
    import tempfile

    from css_core.config import load_settings
    from css_core.operations.budget_store import open_budgets
    from css_core.operations.logs import TEXT_FORMAT, TextFormatter, lean_records
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
        budgets = open_budgets(budget_settings)
        if not budgets.active:
            raise RuntimeError("the budget is not active")
    recorder = Recorder(registry.providers, job_metrics, budgets)
    jobs = logging.getLogger("css_core.jobs")
    level, handlers, propagate = jobs.level, jobs.handlers[:], jobs.propagate
    stream = io.StringIO()
    if log:
        lean_records()  # as each worker's app factory does: no walk up the stack per record
        handler = logging.StreamHandler(stream)
        handler.setFormatter(TextFormatter(TEXT_FORMAT))
        jobs.handlers, jobs.propagate = [handler], False
        jobs.setLevel(logging.INFO)
    else:
        jobs.setLevel(logging.WARNING)

    async def op() -> JobRecord:
        scope = {"type": "http", "path": "/service_output", "headers": [], "state": {}}
        record = recorder.start(scope)
        record.job(request, "offchain")
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


async def case_asgi_variant(base_url: str, factory: str) -> tuple[Op, Close]:
    """An app of bench/variants.py, in-process."""
    import variants

    os.environ.setdefault("OPENAI_BASE_URL", base_url)
    os.environ.setdefault("OPENAI_API_KEY", "bench")
    app = getattr(variants, factory)()
    close = await _lifespan(app)
    return _asgi_caller(app), close
