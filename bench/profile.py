"""Profile one service worker under wrk load with py-spy and say where its CPU goes.

    python bench/profile.py [--conc 32] [--latency-ms 0] [--seconds 10] [--server CMD] [--rate 250]
    python bench/profile.py --mode stream --conc 400 --chunks 100 --gap-ms 20   # issue 13's streams

Starts the fake provider and the service (1 worker, or `--server` as in run.py), puts wrk
load on it (pinned like run.py), records the worker with `py-spy record --format raw`
(`--native` off, idle frames left out), and prints:

- the share of samples by component (the package of the innermost frame that is not the
  standard library's asyncio/selectors plumbing, see COMPONENTS);
- the share, inclusive, of the frames that matter (Litestar, httpx, the httpx-aiohttp
  transport, aiohttp, tenacity, pluggy, eth-abi, msgspec, uvicorn...), and the top
  self-time frames.

`--mode stream` loads it with bench/client.py streams instead of wrk; `--chunks` and
`--gap-ms` then set each stream's shape (asked per request, see fake_provider.py), and
`--ramp` starts the connections evenly over that many seconds.

`--raw FILE` keeps py-spy's raw output (one "stack count" line per distinct stack).
"""

from __future__ import annotations

import argparse
import collections
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as run

# a frame "belongs" to the first of these whose marker is in its file path
COMPONENTS = [
    ("httpx-aiohttp (transport)", "httpx_aiohttp/"),  # before "aiohttp/", which its path contains
    ("httpcore", "httpcore/"),
    ("httpx", "httpx/"),
    ("anyio (httpcore's I/O)", "anyio/"),
    ("sniffio", "sniffio/"),
    ("h11 (httpcore's HTTP/1.1)", "h11/"),
    ("aiohttp", "aiohttp/"),
    ("tenacity", "tenacity/"),
    ("pluggy", "pluggy/"),
    ("eth-abi (+ eth-utils, eth-typing)", "eth_"),
    ("litestar", "litestar/"),
    ("msgspec", "msgspec/"),
    ("uvicorn + httptools", "uvicorn/"),
    ("granian", "granian/"),
    ("logging", "logging/"),
    ("css_core", "css_core/"),
    ("plugin (css_openai)", "css_openai/"),
    ("asyncio", "asyncio/"),
    ("stdlib other", ".py"),
]


def component(frame: str) -> str:
    # frame looks like "func (path/file.py:123)"
    path = frame[frame.rfind("(") + 1 :]
    for name, marker in COMPONENTS:
        if marker in path:
            return name
    return "other"


def summarize(raw: Path, top: int = 25) -> str:
    total = 0
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    comp_self: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        comp_self[component(frames[-1])] += count
        for f in set(frames):
            incl[f] += count
    if not total:
        return "no samples"
    out = [f"samples: {total}", "", "self time by component (innermost frame's package):"]
    out += [f"  {v / total * 100:5.1f}%  {k}" for k, v in comp_self.most_common()]
    out += ["", "inclusive time of selected frames:"]
    wanted = ("litestar/", "httpx/_client", "httpx/_models", "httpx_aiohttp/", "aiohttp/client",
              "httpcore/_async/connection_pool", "httpcore/_async/http11", "tenacity/", "pluggy/", "eth_abi/",
              "css_core/", "css_openai/", "uvicorn/", "msgspec", "logging/", "anyio/")
    rows = [(v, k) for k, v in incl.items() if any(w in k for w in wanted)]
    out += [f"  {v / total * 100:5.1f}%  {k}" for v, k in sorted(rows, reverse=True)[:45]]
    out += ["", f"top {top} frames by self time:"]
    out += [f"  {v / total * 100:5.1f}%  {k}" for k, v in own.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conc", type=int, default=32)
    p.add_argument("--latency-ms", type=int, default=0)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second (default 250)")
    p.add_argument("--server", default=run.DEFAULT_SERVER)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--mode", choices=("plain", "stream"), default="plain")
    p.add_argument("--chunks", type=int, default=64, help="--mode stream: chunks per stream (default 64)")
    p.add_argument("--gap-ms", type=float, default=5.0, help="--mode stream: gap between chunks (default 5 ms)")
    p.add_argument("--ramp", type=float, default=0.0, help="--mode stream: start the connections over this long")
    p.add_argument("--pin-load", default="1")
    p.add_argument("--pin-fake", default="1")
    p.add_argument("--pin-service", default="")
    p.add_argument("--raw", type=Path)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    args.server, server_env = run.server_command(args.server)
    py_spy = run.BIN / "py-spy"
    if not py_spy.exists():
        raise SystemExit(f"py-spy is not installed in {run.BIN} (pip install py-spy)")

    fport = run.free_port()
    fake = run.Server(run.pinned(args.pin_fake, [sys.executable, str(run.BENCH / "fake_provider.py"), "--port",
                                                 str(fport), "--latency-ms", str(args.latency_ms)]),
                      fport, name="fake provider")
    service = None
    try:
        fake.wait_ready()
        port = run.free_port()
        env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_BASE_URL"))}
        env.update(OPENAI_API_KEY="bench", OPENAI_BASE_URL=f"http://127.0.0.1:{fport}/v1",
                   PATH=f"{run.BIN}{os.pathsep}{env.get('PATH', '')}", **server_env)
        if args.conc > 512:  # as run.py's llm rows: the default in-flight cap would refuse the rest
            env.setdefault("CSS_MAX_IN_FLIGHT", str(args.conc))
        cmd = shlex.split(args.server.format(port=port, workers=args.workers))
        service = run.Server(run.pinned(args.pin_service, cmd), port, env, name="service")
        service.wait_ready()
        time.sleep(1.0)
        worker = service.workers()[0]
        url = f"http://127.0.0.1:{port}/service_output"
        if args.mode == "plain":
            load_cmd = ["wrk", "-t1", f"-c{args.conc}", f"-d{args.seconds + 3}s", "--timeout", "10s",
                        "-s", str(run.BENCH / "post.lua"), url, "--", "service"]
        else:
            load_cmd = [sys.executable, str(run.BENCH / "client.py"), "stream", "--url", url,
                        "--conc", str(args.conc), "--duration", str(args.seconds + 3), "--chunks", str(args.chunks),
                        "--gap-ms", f"{args.gap_ms:g}", "--ramp", f"{args.ramp:g}"]
        load = subprocess.Popen(run.pinned(args.pin_load, load_cmd), stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        raw = args.raw or Path(tempfile.mkstemp(suffix=".txt", prefix="pyspy-")[1])
        t0 = service.ticks()
        subprocess.run([str(py_spy), "record", "-p", str(worker), "-d", str(args.seconds), "-r", str(args.rate),
                        "-f", "raw", "-o", str(raw)], check=True, capture_output=True)
        busy = (service.ticks() - t0) / run.TICK / args.seconds
        out, _ = load.communicate()
        print(f"service `{args.server}` ({args.workers} worker(s)), conc {args.conc}, provider {args.latency_ms} ms, "
              f"{args.mode}; the worker was busy {busy * 100:.0f}% of a core while sampled")
        print("load:", next((ln for ln in out.splitlines() if "Requests/sec" in ln or ln.startswith("{")), out[-300:]))
        print(summarize(raw))
    finally:
        if service:
            service.stop()
        fake.stop()


if __name__ == "__main__":
    main()
