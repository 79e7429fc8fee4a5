"""Micro-benchmarks: CPU µs per operation of each piece of the service's path, in-process.

    python bench/micro.py [--n 5000] [--conc 1,32,256] [--only NAME,...] [--gc on|off|freeze] [--json]

Each case (bench/micro_cases.py) runs `--n` operations on one uvloop event loop, at each
concurrency, and reports the CPU time of this process (time.process_time, threads
included, so other load on the machine affects it little) per operation, and the wall
time per operation in brackets. The fake provider (bench/fake_provider.py, 0 ms) runs in
its own process. Cases without I/O run 10 x `--n` operations at concurrency 1 only.
`--json` prints one JSON line instead of the table (case -> concurrency -> cpu_us, wall_us).
Cases:

The provider call (POST the OpenAI body, read the whole answer):

- `raw`: a raw asyncio.Protocol keep-alive client (bench/client.py's): the floor.
- `aiohttp`: aiohttp alone, `session.post(...)` + `read()` on a session configured as the
  worker's pool (css_core.providers.http.ProviderHTTP: no connection limit, no total
  timeout, `trust_env=False`).
- `aiohttp-trust-env`: the same with `trust_env=True`: aiohttp then looks up `~/.netrc` and
  the proxy variables on every request, each in a worker thread (counted here).
- `transport-aiohttp`: the core's call (`css_core.providers.http.send` + `read`: an
  `httpx.Request` through the transport's `handle_async_request`) through the worker's
  httpx-aiohttp transport, as ProviderHTTP builds it.
- `transport-pyreqwest`: the same call through pyreqwest's httpx transport
  (`pyreqwest.compatibility.httpx.HttpxTransport`, built by bench/variants.py
  `pyreqwest_transport`; its tokio threads are counted). Needs `pyreqwest`.
- `pyreqwest`: pyreqwest alone, `client.post(...).build().send()` + `bytes()`.
- `core-call`: the core's default `css_call` (`css_core.providers.default_call`: `send` +
  `read` + the status check) over the worker's transport.
- `core-call-hook`: the same through the provider's `css_call` HookCaller
  (`Provider.hooks.call`, which asks the OpenAI plugin, then the core's `trylast` call), as
  the pipeline makes it.
- `httpx-client`: `ProviderHTTP.client.post(...)` + `.content`: the `httpx.AsyncClient`
  over the same transport that plugins implementing `css_call` get.
- `httpx-httpcore`, `httpx-default`: for comparison only, httpx on its own transport
  (httpcore): retries=0, no connection limit, 256 keep-alive; and httpx's default limits.

Per job, without I/O:

- `noop`: an `async def` returning a constant: this harness's own cost per operation.
- `tenacity`: one successful attempt through the job's own tenacity controller, as
  `Pipeline._attempts` makes it: `Attempts.retrying()` per job (the provider's policy with
  the job's `wait`, `retry`, `stop` and `before_sleep`), the first attempt inside tenacity's
  loop.
- `tenacity-deadline`: the same inside the job's `asyncio.timeout_at(deadline)`, as
  `Pipeline._attempts`.
- `hookcaller`: a completion's per-job hook calls (`css_encode_params`, `css_postprocess`)
  through the provider's pluggy HookCallers (`Provider.hooks.encode_params`, `.postprocess`).
- `direct`: the same two OpenAI-plugin functions called directly (what the HookCaller adds
  is the difference).
- `hookcaller-event`, `direct-event`: `css_parse_stream_event` for one streamed event, through
  the HookCaller and directly: paid once per chunk of a stream.
- `abi-decode`: `css_core.jobs.codec.decode_request` (eth-abi) of a typical on-chain request
  (OPENAI, completions, gpt-4, a system and a user message).
- `abi-encode`: `css_core.jobs.codec.encode_result` (eth-abi) of a ~300-character completion.
- `prepare`: an off-chain job without its call: `Pipeline.decode`, `Pipeline.target` (the
  plugin encodes the call), the plugin's postprocess of an answer, `Pipeline.encode`.
- `record`: one job's record life cycle as ServiceOutput and the pipeline drive it
  (`css_core.operations.record`: `Recorder.start`, `job`, `enter`, `served`, one
  `attempt`, `usage`, `Recorder.finish`) with no metrics, its `css_core.jobs` log line off.
- `record-metrics`: the same with `Metrics()` (prometheus_client's multiprocess files, in a
  temporary `PROMETHEUS_MULTIPROC_DIR`): what the job's metrics cost is the difference.
- `record-budget`: the same with `Metrics()` and one budget (`OPENAI`, requests_per_hour)
  in the SQLite store in a temporary `CSS_STATE_DIR`, and `admit("OPENAI", "gpt-4")`.
- `record-metrics-log`: `record-metrics` with the job's log line at INFO, formatted by
  `css_core.operations.logs.TextFormatter` into an `io.StringIO`: issue 18's per-job record
  (bench/run.py's `record` row).

ASGI, in-process (no server, no sockets on the inbound side):

- `asgi-bare`: a raw ASGI callable that reads the body and answers constant bytes.
- `asgi-route`: the same behind Litestar, as an `@asgi("/service_output", copy_scope=False)`
  route handler (how `POST /service_output` is routed).
- `asgi-hello`: a full Litestar `@post` handler (Request, Response) answering constant
  bytes, for comparison (the service's other routes pay this).
- `asgi-app`: the whole service, `css_core.edge.app.create_app()` called as ASGI in-process
  (lifespan included): POST /service_output of an off-chain job, its provider call real.
  Its lifespan's gc settings (freeze, threshold) are undone after the case.
- `asgi-app-stream`: the whole service relaying a stream of `--stream-chunks` events
  `--stream-gap-ms` apart: CPU µs per relayed chunk, concurrency 1 and 32 only.
- `asgi-floor`, `asgi-floor-aiohttp`: bench/variants.py's floor_app (raw ASGI + msgspec +
  httpx over httpx-aiohttp) and minimal_app (raw ASGI + msgspec + aiohttp).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402
from micro_cases import (  # noqa: E402
    Close,
    Op,
    case_abi,
    case_aiohttp,
    case_asgi_app,
    case_asgi_bare,
    case_asgi_hello,
    case_asgi_route,
    case_asgi_variant,
    case_core_call,
    case_event,
    case_hooks,
    case_httpx,
    case_httpx_client,
    case_noop,
    case_prepare,
    case_pyreqwest,
    case_raw,
    case_record,
    case_tenacity,
    case_transport,
    stream_job,
)


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


CASES = [
    "raw",
    "aiohttp",
    "aiohttp-trust-env",
    "transport-aiohttp",
    "transport-pyreqwest",
    "pyreqwest",
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
    "asgi-floor",
    "asgi-floor-aiohttp",
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
        "transport-aiohttp": lambda: case_transport(url, base_url, False),
        "transport-pyreqwest": lambda: case_transport(url, base_url, True),
        "pyreqwest": lambda: case_pyreqwest(url),
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
        "asgi-floor": lambda: case_asgi_variant(base_url, "floor_app"),
        "asgi-floor-aiohttp": lambda: case_asgi_variant(base_url, "minimal_app"),
    }


async def main_async(args: argparse.Namespace, url: str, base_url: str) -> None:
    if not args.json:
        print(f"| case | {' | '.join(f'c{c} CPU µs/op (wall µs/op)' for c in args.conc)} |")
        print("|---|" + "---|" * len(args.conc))
    results: dict[str, dict[str, dict[str, float]]] = {}
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
            results.setdefault(name, {})[str(conc)] = {"cpu_us": cpu / per, "wall_us": wall / per}
        label = f"{name} (per chunk)" if name == "asgi-app-stream" else name
        if not args.json:
            print(f"| {label} | {' | '.join(cells)} |", flush=True)
    if args.json:
        print(json.dumps(results))


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
    p.add_argument("--json", action="store_true", help="print the results as one JSON line")
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
    port = harness.free_port()
    fake = harness.Server(
        harness.pinned(args.pin_fake, [sys.executable, str(BENCH / "fake_provider.py"), "--port", str(port)]),
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
