"""The benchmark of css-inference-service: the service, the floor and DIRECT, in one run, one table.

    python bench/run.py [--quick] [--rounds 2] [--all] [--only ROWS] [--columns service,floor,...]

One run measures, row by row and in `--rounds` rounds, DIRECT (the load generator straight
at a fast fake OpenAI provider, bench/fake_provider.py, with the request the service would
send) and each column (`--columns`), every one a server started fresh for each group of
rows with the same worker count (`--workers`, 2) and the same server and flags:

- `service`: its own command line (`css-inference-service --bind=127.0.0.1:PORT
  --workers=N`, `OPENAI_BASE_URL` pointed at the fake provider), or `--server`;
- `floor`: the design card's stack with no service code (bench/variants.py `floor_app`:
  raw ASGI, msgspec, an `httpx.Request` through the httpx-aiohttp transport), served by
  bench/serve.py with the command line's server and flags;
- `floor-aiohttp`: the previous floor (`minimal_app`: raw ASGI, msgspec, aiohttp alone);
- `service-pyreqwest`: the service with its provider calls through pyreqwest's httpx
  transport (`service_pyreqwest_app`; needs `pyreqwest` installed).

It prints one markdown table: issue 18's targets first (the service against the floor,
marked met or missed), then every other row measured. Rows (`--only` keys):

- `c32_0`, `c256_50`: wrk at concurrency 32 with a 0 ms provider, 256 with 50 ms: req/s,
  latency, and CPU per request (utime+stime of the server's processes from /proc, master
  and workers, over the row / requests answered). Issue 18: CPU per request ≤ 1.3x the
  floor's at both; req/s at c256 with 50 ms ≥ 0.9x the floor's.
- `llm100`: 100 streams open at once, each of 100 chunks 20 ms apart (`--llm-*`): streams/s,
  time to first byte, gaps between chunks, CPU per relayed chunk (the server's CPU over the
  row / chunks received). Issue 18: ≤ 1.15x the floor's per chunk.
- `record`: bench/micro.py's `record-metrics-log` in-process (one job's record, its metrics
  and its `job finished` line through the text formatter; no budget): CPU µs per job, the
  median of `--record-runs` runs. Issue 18: ≤ 20 µs.
- with `--all` (or by key): `c1_0`, `c256_0`, `c32_50` (wrk), `s1`, `s16` (streams of 64
  chunks 5 ms apart, bench/client.py), `llm400`, `llm1000`, and the memory row (RSS of one
  service worker after 1,000 and after `--mem-requests` requests).

The machine has 2 cores shared by the load generator, the fake provider and the server
under test, and possibly by other people's work: before each row the runner waits (up to
`--quiet-timeout`) until the rest of the machine is idle, measures the CPU the rest of the
machine used during the row ("foreign load") and flags rows where it passed
`--noisy-cores`. Pinning is set with `--pin-load`, `--pin-fake`, `--pin-service`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import (
    BENCH,
    BIN,
    COLUMNS,
    DEFAULT_SERVER,
    TICK,
    Server,
    children_ticks,
    cpu_ticks,
    free_port,
    pinned,
    run_client,
    run_wrk,
    server_command,
    status_kb,
    system_busy_ticks,
)
from table import Table, header, llm_ceiling_lines, pct

# ---------------------------------------------------------------------------------------------
# rows


@dataclass(frozen=True)
class Row:
    key: str
    kind: str  # "wrk", "stream", "llm" or "micro"
    conc: int
    latency_ms: int


ROWS = [
    Row("c1_0", "wrk", 1, 0),
    Row("c32_0", "wrk", 32, 0),
    Row("c256_0", "wrk", 256, 0),
    Row("c32_50", "wrk", 32, 50),
    Row("c256_50", "wrk", 256, 50),
    Row("s1", "stream", 1, 0),
    Row("s16", "stream", 16, 0),
]
RECORD = Row("record", "micro", 1, 0)
TARGET_ROWS = ("c32_0", "c256_50", "llm100", "record")  # issue 18's, the default
LLM_N = "100,400,1000"


def llm_rows(spec: str) -> list[Row]:
    """The `llm<N>` rows of `--llm-n`."""
    return [Row(f"llm{n}", "llm", n, 0) for n in dict.fromkeys(int(x) for x in spec.split(",") if x.strip())]


def ideal_llm_rate(n: int, duration: float, ramp: float, length: float) -> float:
    """Streams/s of the llm rows' client if every stream took exactly `length` seconds: connection g
    starts at ramp * g / n and streams back to back while before `duration`."""
    done, end = 0, 0.0
    length = max(length, 1e-3)
    for g in range(n):
        start = ramp * g / n
        if start >= duration:
            continue
        count = -(-(duration - start) // length)  # ceil
        done += int(count)
        end = max(end, start + count * length)
    return done / end if end else 0.0


@dataclass
class Bench:
    args: argparse.Namespace
    fakes: dict[int | str, Server] = field(default_factory=dict)  # by latency, and "llm"
    results: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)  # (row, column) -> rounds
    hwm: dict[str, list[int]] = field(default_factory=dict)  # column -> peak RSS kB of each worker, every instance
    memory: dict[str, Any] = field(default_factory=dict)
    log: Callable[[str], None] = print
    quiet_left: float = 0.0  # seconds of --quiet-budget left
    llm_clients: int = 1  # client processes of the llm rows (chosen by llm_ceiling)
    ceiling: list[dict[str, Any]] = field(default_factory=list)  # the DIRECT llm probes, in order

    def __post_init__(self) -> None:
        self.quiet_left = self.args.quiet_budget

    # -- the machine's other load ------------------------------------------------------------

    def _ours(self, service: Server | None) -> int:
        t = sum(f.ticks() for f in self.fakes.values()) + children_ticks() + cpu_ticks([os.getpid()])
        return t + (service.ticks() if service else 0)

    def foreign_cores(self, service: Server | None, window: float) -> float:
        b0, o0 = system_busy_ticks(), self._ours(service)
        time.sleep(window)
        return ((system_busy_ticks() - b0) - (self._ours(service) - o0)) / TICK / window

    def wait_quiet(self, service: Server | None) -> None:
        """Wait for the rest of the machine to be idle: at most --quiet-timeout per row and
        --quiet-budget for the whole run (then rows are measured as they come, and flagged)."""
        start = time.monotonic()
        deadline = start + min(self.args.quiet_timeout, self.quiet_left)
        try:
            while time.monotonic() < deadline:
                load = self.foreign_cores(service, 0.5)
                if load < self.args.quiet_cores:
                    return
                self.log(f"    waiting: the rest of the machine uses {load:.2f} cores")
            if self.quiet_left > 0:
                self.log("    going on although the machine is busy")
        finally:
            self.quiet_left -= time.monotonic() - start

    @contextlib.contextmanager
    def accounted(self, service: Server | None, out: dict[str, Any]) -> Iterator[None]:
        t0, b0, o0 = time.monotonic(), system_busy_ticks(), self._ours(service)
        s0 = service.ticks() if service else 0
        f0 = sum(f.ticks() for f in self.fakes.values())
        yield
        elapsed = time.monotonic() - t0
        ours = self._ours(service) - o0
        # can dip below 0 by a few ticks: the processes' stime and /proc/stat split kernel time differently
        out["foreign_cores"] = max(0.0, ((system_busy_ticks() - b0) - ours) / TICK / elapsed)
        done = max(out["completed"], 1)
        out["fake_cpu_ms"] = (sum(f.ticks() for f in self.fakes.values()) - f0) / TICK * 1000 / done
        if service:
            out["cpu_total_ms"] = (service.ticks() - s0) / TICK * 1000
            out["cpu_ms"] = out["cpu_total_ms"] / done
            service.note_hwm()

    # -- one row of one column ----------------------------------------------------------------

    def measure(self, row: Row, column: str, url: str, mode: str, service: Server | None) -> None:
        a = self.args
        self.wait_quiet(service)
        if row.kind == "wrk" and a.warmup > 0:
            run_wrk(a, url, mode, row.conc, a.warmup)
        out: dict[str, Any] = {}
        with self.accounted(service, out):
            if row.kind == "wrk":
                out.update(run_wrk(a, url, mode, row.conc, a.duration))
            else:
                out.update(run_client(a, "stream", url, mode, row.conc,
                                      duration=max(a.duration, a.stream_min_duration * (1 if row.conc > 1 else 2))))
        self.results.setdefault((row.key, column), []).append(out)
        flag = f"  ERRORS {out['error_detail']}" if out["errors"] else ""
        extra = f" ttfb {out['ttfb_p50_ms']:.2f} ms gap p50 {out['gap_p50_ms']:.2f} ms" if row.kind == "stream" else ""
        cpu = f" cpu {out['cpu_ms'] * 1000:.0f} µs/req" if "cpu_ms" in out else ""
        self.log(f"    {row.key:8} {column:8.8} {out['rate']:9.1f}/s p50 {out['p50_ms']:8.3f} ms "
                 f"p99 {out['p99_ms']:8.3f} ms{extra}{cpu} foreign {out['foreign_cores']:.2f}{flag}")

    def start_service(self, column: str, workers: int, latency: int | str,
                      extra_env: dict[str, str] | None = None) -> Server:
        port = free_port()
        fake = self.fakes[latency]
        env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_BASE_URL"))}
        env.update(OPENAI_API_KEY="bench", OPENAI_BASE_URL=f"http://127.0.0.1:{fake.port}/v1",
                   PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
        env.update(extra_env or {})
        template = self.args.server if column == "service" else COLUMNS[column][1]
        if column == "service":
            env.update(self.args.server_env)
        cmd = shlex.split(template.format(port=port, workers=workers))
        server = Server(pinned(self.args.pin_service, cmd), port, env, name=f"{column} ({workers} w)")
        server.wait_ready()
        time.sleep(1.0 if workers > 1 else 0.2)  # the other workers finish starting
        if len(server.workers()) < workers and workers > 1:
            time.sleep(2.0)
        return server

    def round(self, number: int) -> None:
        a = self.args
        self.log(f"round {number}")
        for latency in (0, 50):
            rows = [r for r in ROWS if r.latency_ms == latency and self.selected(r)]
            if not rows:
                continue
            fake = self.fakes[latency]
            direct = f"http://127.0.0.1:{fake.port}/v1/chat/completions"
            for row in rows:
                self.measure(row, "D", direct, "direct", None)
            for column in a.columns:
                service = self.start_service(column, a.workers, latency)
                try:
                    url = f"http://127.0.0.1:{service.port}/service_output"
                    for row in rows:
                        self.measure(row, column, url, "service", service)
                    service.note_hwm()
                    self.hwm.setdefault(column, []).extend(service.hwm_kb.values())
                finally:
                    service.stop()
        for row in self.llm_selected():
            self.llm_row(row)

    def selected(self, row: Row) -> bool:
        return row.key in self.args.only

    def llm_selected(self) -> list[Row]:
        return [r for r in self.args.llm_rows if self.selected(r)]

    # -- llm rows (issue 13) --------------------------------------------------------------------

    def llm_length(self) -> float:
        """Seconds one llm stream lasts at the fake provider."""
        return self.args.llm_chunks * self.args.llm_gap_ms / 1000

    def run_llm(self, url: str, mode: str, n: int, clients: int, service: Server | None) -> dict[str, Any]:
        """N streams from `clients` bench/client.py processes sharing one start and one ramp; the
        samples merged. With a service, its workers' RSS is sampled while all N streams are open."""
        a = self.args
        k = max(1, min(clients, n))
        duration, ramp, length = a.llm_duration, a.llm_ramp, self.llm_length()
        tmp = Path(tempfile.mkdtemp(prefix="css-bench-llm-"))
        start_at = time.time() + 0.5 + 0.15 * k  # the processes' start-up
        sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
        procs: list[tuple[subprocess.Popen[str], Path]] = []
        rss: list[int] = []
        try:
            for i, size in enumerate(sizes):
                dump = tmp / f"client{i}.json"
                cmd = [sys.executable, str(BENCH / "client.py"), "stream", "--url", url, "--mode", mode,
                       "--conc", str(size), "--chunks", str(a.llm_chunks), "--gap-ms", f"{a.llm_gap_ms:g}",
                       "--duration", f"{duration:g}", "--ramp", f"{ramp:g}", "--slot", str(i), "--slots", str(k),
                       "--total", str(n), "--start-at", repr(start_at), "--dump", str(dump),
                       "--timeout", f"{a.llm_timeout:g}"]
                procs.append((subprocess.Popen(pinned(a.llm_pin, cmd), stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE, text=True), dump))
            # all N open: after the ramp (and a quarter of a stream), until the first connections stop
            open_from, open_to = start_at + ramp + min(0.25 * length, 1.0), start_at + duration
            deadline = start_at + duration + a.llm_timeout + 30
            while any(p.poll() is None for p, _ in procs) and time.time() < deadline:
                now = time.time()
                if service and open_from <= now <= open_to:
                    rss.append(sum(status_kb(pid, "VmRSS") for pid in service.workers()))
                time.sleep(0.2)
            for p, _ in procs:
                if p.poll() is None:  # past the deadline: counted as a client error below
                    p.kill()
            outs = [(p.communicate()[0], dump) for p, dump in procs]
        finally:
            for p, _ in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        completed = chunks = 0
        elapsed = 0.0
        errors: dict[str, int] = {"status": 0, "socket": 0, "content": 0, "client": 0}
        ttfb: list[float] = []
        gaps: list[float] = []
        latency: list[float] = []
        for (p, _), (stdout, dump) in zip(procs, outs, strict=True):
            lines = stdout.strip().splitlines()
            if p.returncode != 0 or not lines or not dump.exists():
                errors["client"] += 1
                continue
            r = json.loads(lines[-1])
            completed += r["completed"]
            chunks += r["chunks_total"]
            elapsed = max(elapsed, r["elapsed_s"])
            for key, value in r["errors"].items():
                errors[key] = errors.get(key, 0) + value
            raw = json.loads(dump.read_text())
            ttfb += raw["ttfb"]
            gaps += raw["gaps"]
            latency += raw["latency"]
            dump.unlink()
        with contextlib.suppress(OSError):
            tmp.rmdir()
        errors["no_response"] = int(completed == 0 and not any(errors.values()))
        ms = 1000.0
        rate = completed / elapsed if elapsed else 0.0
        return {
            "completed": completed, "requests": completed + sum(errors.values()), "rate": rate,
            "errors": sum(errors.values()), "error_detail": {k_: v for k_, v in errors.items() if v},
            "p50_ms": pct(latency, 50) * ms, "p99_ms": pct(latency, 99) * ms,
            "ttfb_p50_ms": pct(ttfb, 50) * ms, "ttfb_p99_ms": pct(ttfb, 99) * ms,
            "gap_p50_ms": pct(gaps, 50) * ms, "gap_p99_ms": pct(gaps, 99) * ms,
            "chunks_total": chunks, "chunks_per_s": chunks / elapsed if elapsed else 0.0, "clients": k,
            "elapsed_s": elapsed, "ideal_rate": ideal_llm_rate(n, duration, ramp, length),
            "rss_open_kb": max(rss) if rss else 0, "rss_samples": len(rss),
        }

    def keeps_up(self, out: dict[str, Any]) -> bool:
        """DIRECT is not limited by the load generator or the fake provider: no errors, ≥ 90% of the
        ideal streams/s (the fake's timers run a little late: ~0.5 ms a gap), the gaps between chunks
        at p50 within 10% of the gap and at p99 within half a gap (≥ 5 ms)."""
        gap = self.args.llm_gap_ms
        return (out["errors"] == 0 and out["rate"] >= 0.9 * out["ideal_rate"]
                and out["gap_p50_ms"] <= 1.1 * gap + 0.5 and out["gap_p99_ms"] <= gap + max(5.0, 0.5 * gap))

    def log_llm(self, key: str, target: str, out: dict[str, Any]) -> None:
        flag = f"  ERRORS {out['error_detail']}" if out["errors"] else ""
        cpu = f" cpu {out['cpu_chunk_us']:.0f} µs/chunk" if "cpu_chunk_us" in out else ""
        mem = f" rss {out['rss_stream_kb']:.1f} kB/stream" if "rss_stream_kb" in out else ""
        self.log(f"    {key:8} {target:3} {out['rate']:8.1f} streams/s ({out['rate'] / out['ideal_rate'] * 100:.0f}% "
                 f"of ideal, {out['clients']} client proc) ttfb p50/p99 {out['ttfb_p50_ms']:.2f}/"
                 f"{out['ttfb_p99_ms']:.2f} ms gap p50/p99 {out['gap_p50_ms']:.1f}/{out['gap_p99_ms']:.1f} ms"
                 f"{cpu}{mem} foreign {out['foreign_cores']:.2f}{flag}")

    def llm_ceiling(self) -> None:
        """DIRECT alone at the largest N, with 1, 2, 4... client processes (or --llm-clients), until it
        keeps up: the llm rows then use that many."""
        a = self.args
        n = max(r.conc for r in self.llm_selected())
        url = f"http://127.0.0.1:{self.fakes['llm'].port}/v1/chat/completions"
        tries = [int(a.llm_clients)] if a.llm_clients != "auto" else \
            [k for k in (1, 2, 4, 8, 16) if k <= max(1, a.llm_max_clients)]
        self.log(f"llm: DIRECT ceiling at N={n}, client processes {tries if len(tries) > 1 else tries[0]}")
        best: dict[str, Any] | None = None
        for k in tries:
            self.wait_quiet(None)
            out: dict[str, Any] = {"n": n}
            with self.accounted(None, out):
                out.update(self.run_llm(url, "direct", n, k, None))
            out["keeps_up"] = self.keeps_up(out)
            self.ceiling.append(out)
            self.log_llm(f"llm{n}", "D*", out)
            if best is None or out["rate"] > best["rate"] * 1.02:
                best = out
            if out["keeps_up"]:
                best = out
                break
        assert best is not None
        self.llm_clients = best["clients"]
        if not best["keeps_up"]:
            self.log(f"    DIRECT does not keep up at N={n} with any of {tries} client processes: "
                     f"the llm rows use {self.llm_clients}, and their ratios are against a limited DIRECT")


    def llm_row(self, row: Row) -> None:
        """DIRECT, then a fresh server per column (its idle RSS measured after a warm-up)."""
        a = self.args
        fake = self.fakes["llm"]
        direct: dict[str, Any] = {}
        self.wait_quiet(None)
        with self.accounted(None, direct):
            direct.update(self.run_llm(f"http://127.0.0.1:{fake.port}/v1/chat/completions", "direct", row.conc,
                                       self.llm_clients, None))
        direct["keeps_up"] = self.keeps_up(direct)
        self.results.setdefault((row.key, "D"), []).append(direct)
        self.log_llm(row.key, "D", direct)
        in_flight = a.llm_in_flight or max(512, row.conc)
        for column in a.columns:
            service = self.start_service(column, a.workers, "llm", {"CSS_MAX_IN_FLIGHT": str(in_flight)})
            try:
                url = f"http://127.0.0.1:{service.port}/service_output"
                # a few short streams on enough connections to reach every worker: what they import
                # and build on their first stream is not counted as the streams' memory
                warm = [sys.executable, str(BENCH / "client.py"), "stream", "--url", url, "--mode", "service",
                        "--conc", str(8 * a.workers), "--requests", str(16 * a.workers), "--chunks", "5",
                        "--gap-ms", "1", "--timeout", "20"]
                subprocess.run(warm, capture_output=True, timeout=60, check=False)
                time.sleep(0.3)
                self.wait_quiet(service)
                idle = sum(status_kb(pid, "VmRSS") for pid in service.workers())
                out: dict[str, Any] = {}
                with self.accounted(service, out):
                    out.update(self.run_llm(url, "service", row.conc, self.llm_clients, service))
                out["cpu_chunk_us"] = out["cpu_total_ms"] * 1000 / max(out["chunks_total"], 1)
                out["rss_idle_kb"] = idle
                if out["rss_open_kb"]:
                    out["rss_stream_kb"] = (out["rss_open_kb"] - idle) / row.conc
                self.results.setdefault((row.key, column), []).append(out)
                self.log_llm(row.key, column, out)
            finally:
                service.stop()

    def record_row(self) -> None:
        """bench/micro.py's `record-metrics-log`, in its own process, `--record-runs` times (the
        service's code in-process: one figure, in the service column)."""
        a = self.args
        cmd = [sys.executable, str(BENCH / "micro.py"), "--only", "record-metrics-log", "--conc", "1",
               "--n", str(a.record_n), "--json"]
        for _ in range(a.record_runs):
            self.wait_quiet(None)
            out: dict[str, Any] = {"completed": 1}
            with self.accounted(None, out):
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"bench/micro.py failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            out.update(errors=0, error_detail={}, rate=0.0, us=result["record-metrics-log"]["1"]["cpu_us"])
            self.results.setdefault((RECORD.key, "service"), []).append(out)
            self.log(f"    record   service  {out['us']:.1f} µs per job (in-process) "
                     f"foreign {out['foreign_cores']:.2f}")

    def memory_test(self) -> None:
        a = self.args
        self.log(f"memory: {a.mem_requests} requests, 1 worker, concurrency {a.mem_conc}, provider 0 ms")
        service = self.start_service("service", 1, 0)
        try:
            url = f"http://127.0.0.1:{service.port}/service_output"
            first = run_client(a, "plain", url, "service", a.mem_conc, requests=1000)
            total, errors = first["completed"], first["errors"]
            (worker,) = service.workers()[:1]
            rss_1k = status_kb(worker, "VmRSS")
            while total < a.mem_requests:
                left = a.mem_requests - total
                rate = max(first["rate"], 200.0)
                r = run_wrk(a, url, "service", a.mem_conc, max(1.0, min(30.0, left / rate * 1.05)))
                total += r["completed"]
                errors += r["errors"]
                first["rate"] = r["rate"]
            rss_end = status_kb(worker, "VmRSS")
            service.note_hwm()
            self.memory = {"requests": total, "rss_1k_kb": rss_1k, "rss_end_kb": rss_end, "errors": errors,
                           "hwm_kb": max(service.hwm_kb.values())}
            self.log(f"    RSS after 1,000: {rss_1k / 1024:.1f} MB; after {total:,}: {rss_end / 1024:.1f} MB")
        finally:
            service.stop()

    # -- run ----------------------------------------------------------------------------------

    def run(self) -> None:
        a = self.args
        for latency in (0, 50):
            if not any(r.latency_ms == latency and self.selected(r) for r in ROWS) and not (latency == 0 and a.memory):
                continue
            port = free_port()
            cmd = [sys.executable, str(BENCH / "fake_provider.py"), "--port", str(port), "--latency-ms", str(latency),
                   "--chunks", str(a.chunks), "--chunk-delay-ms", str(a.chunk_delay_ms), "--procs", str(a.fake_procs)]
            fake = Server(pinned(a.pin_fake, cmd), port, name=f"fake provider ({latency} ms)")
            self.fakes[latency] = fake
        if self.llm_selected():
            port = free_port()
            cmd = [sys.executable, str(BENCH / "fake_provider.py"), "--port", str(port), "--chunks",
                   str(a.llm_chunks), "--chunk-delay-ms", f"{a.llm_gap_ms:g}", "--procs", str(a.llm_fake_procs)]
            self.fakes["llm"] = Server(pinned(a.llm_pin, cmd), port, name="fake provider (llm)")
        try:
            for fake in self.fakes.values():
                fake.wait_ready()
            if self.selected(RECORD):
                self.record_row()
            if self.llm_selected():
                self.llm_ceiling()
            for number in range(1, a.rounds + 1):
                self.round(number)
            if a.memory:
                self.memory_test()
        finally:
            for fake in self.fakes.values():
                fake.stop()


def _raise_open_files(needed: int) -> None:
    """The llm rows hold thousands of sockets open: raise this process's (and so its children's) limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=int, default=5, help="whole seconds per row (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured seconds before each wrk row (default 1, 0: none)")
    p.add_argument("--quick", action="store_true",
                   help="2 s rows (llm rows 4 s), 1 s warm-up, 20,000 requests for the memory row")
    p.add_argument("--workers", type=int, default=2, help="worker processes of every column (default 2)")
    p.add_argument("--columns", default="service,floor,floor-aiohttp",
                   help="columns besides DIRECT, from: " + ", ".join(COLUMNS) + " (default %(default)s)")
    p.add_argument("--server", default=DEFAULT_SERVER,
                   help="the service column's command line, with {port} and {workers} (default: %(default)s); "
                        "'granian' for the same app under granian; 'granian:VARIANT', 'uvicorn:VARIANT' or "
                        "'serve:VARIANT' for a factory of bench/variants.py")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the service column (repeatable)")
    p.add_argument("--only", default="", help="comma-separated rows: " + ",".join(r.key for r in ROWS)
                   + ", record, llm<N> for each N of --llm-n, memory (default: issue 18's, "
                   + ",".join(TARGET_ROWS) + ")")
    p.add_argument("--all", action="store_true", help="every row (the llm rows of --llm-n, the memory row)")
    p.add_argument("--mem-requests", type=int, default=100_000, help="requests for the memory row")
    p.add_argument("--mem-conc", type=int, default=8, help="concurrency of the memory row (default 8)")
    p.add_argument("--record-n", type=int, default=2000,
                   help="the record row: micro.py --n (it runs 10x that many jobs; default 2000)")
    p.add_argument("--record-runs", type=int, default=3, help="the record row: runs of micro.py (default 3)")
    p.add_argument("--llm-n", default=LLM_N,
                   help="stream counts of the llm rows with --all (default %(default)s; else: the llm<N> of --only)")
    p.add_argument("--llm-chunks", type=int, default=100, help="chunks per llm stream (default 100)")
    p.add_argument("--llm-gap-ms", type=float, default=20.0, help="gap between them (default 20 ms)")
    p.add_argument("--llm-duration", type=float, default=6.0,
                   help="seconds each llm connection starts streams for (default 6; --quick: 4)")
    p.add_argument("--llm-ramp", type=float, default=None,
                   help="seconds over which the N connections start (default: one stream's length)")
    p.add_argument("--llm-clients", default="auto",
                   help="client processes for the llm rows ('auto': the fewest with which DIRECT keeps up)")
    p.add_argument("--llm-max-clients", type=int, default=max(2, os.cpu_count() or 2),
                   help="most client processes 'auto' tries (default: the CPU count, at least 2)")
    p.add_argument("--llm-fake-procs", type=int, default=2, help="fake provider processes for the llm rows")
    p.add_argument("--llm-pin", default="", help="CPUs for the llm rows' clients and fake provider ('' for none, "
                   "the default: at N = 1,000 one core cannot make and read 50,000 chunks/s)")
    p.add_argument("--llm-in-flight", type=int, default=0,
                   help="CSS_MAX_IN_FLIGHT for the llm rows' service (default 0: max(N, 512))")
    p.add_argument("--llm-timeout", type=float, default=60.0, help="seconds one llm stream may take (default 60)")
    p.add_argument("--chunks", type=int, default=64)
    p.add_argument("--chunk-delay-ms", type=float, default=5.0)
    p.add_argument("--stream-min-duration", type=float, default=4.0)
    p.add_argument("--fake-procs", type=int, default=1)
    p.add_argument("--pin-load", default="1", help="CPUs for wrk and the stream client ('' for none; default 1)")
    p.add_argument("--pin-fake", default="1", help="CPUs for the fake provider ('' for none; default 1)")
    p.add_argument("--pin-service", default="", help="CPUs for the servers under test ('' for none, the default)")
    p.add_argument("--quiet-cores", type=float, default=0.15,
                   help="before a row, wait until the rest of the machine uses less than this (default 0.15)")
    p.add_argument("--quiet-timeout", type=float, default=10.0, help="most seconds to wait before a row (default 10)")
    p.add_argument("--quiet-budget", type=float, default=60.0,
                   help="most seconds to wait for quiet in the whole run (default 60)")
    p.add_argument("--noisy-cores", type=float, default=0.25,
                   help="flag a row when the rest of the machine used more than this during it")
    p.add_argument("--json", type=Path, help="also write the raw results here")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = min(args.duration, 2), min(args.warmup, 1)
        args.stream_min_duration = min(args.stream_min_duration, 2.0)
        args.mem_requests = min(args.mem_requests, 20_000)
        args.llm_duration = min(args.llm_duration, 4.0)
    args.server, args.server_env = server_command(args.server)
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--env expects KEY=VALUE, got {item!r}")
        args.server_env[key] = value
    args.columns = [c for c in args.columns.split(",") if c]
    if unknown := set(args.columns) - set(COLUMNS):
        p.error(f"unknown columns: {', '.join(sorted(unknown))} (known: {', '.join(COLUMNS)})")
    only = {k for k in args.only.split(",") if k}
    # the llm rows: --llm-n's with --all, else those --only names (llm100 by default)
    named = [k[3:] for k in sorted(only or TARGET_ROWS) if k.startswith("llm") and k[3:].isdigit()]
    args.llm_rows = llm_rows(args.llm_n if args.all else ",".join(named))
    everything = {r.key for r in (*ROWS, *args.llm_rows, RECORD)} | {"memory"}
    args.only = everything if args.all else (only or set(TARGET_ROWS))
    if unknown := args.only - everything:
        p.error(f"unknown row keys: {', '.join(sorted(unknown))} (llm<N> rows come from --llm-n)")
    args.memory = "memory" in args.only and args.mem_requests > 0
    if args.llm_ramp is None:
        args.llm_ramp = args.llm_chunks * args.llm_gap_ms / 1000
    if args.llm_chunks < 1 or args.llm_gap_ms < 0:
        p.error("--llm-chunks must be at least 1 and --llm-gap-ms at least 0")
    if args.llm_clients != "auto" and not args.llm_clients.isdigit():
        p.error("--llm-clients takes 'auto' or a number")
    if not 0 < args.llm_duration <= 600 or not 0 <= args.llm_ramp <= 600 or not 0 < args.llm_timeout <= 600:
        p.error("--llm-duration, --llm-ramp and --llm-timeout are bounded (10 min)")
    if args.rounds < 1 or args.workers < 1:
        p.error("--rounds and --workers must be at least 1")
    for tool in ("wrk", "taskset"):
        if not any((Path(d) / tool).exists() for d in os.environ.get("PATH", "").split(os.pathsep)):
            p.error(f"{tool} is not installed (apt-get install -y {'wrk' if tool == 'wrk' else 'util-linux'})")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    _raise_open_files(4 * max([r.conc for r in args.llm_rows] or [0]) + 1024)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    started = time.monotonic()
    bench = Bench(args, log=lambda s: print(s, file=sys.stderr, flush=True))
    bench.run()
    print(header(args, bool(bench.llm_selected())))
    print(Table(bench).build())
    noisy = sorted({k for (k, _), rs in bench.results.items() for r in rs if r["foreign_cores"] > args.noisy_cores})
    print()
    for line in llm_ceiling_lines(bench):
        print(line)
    if noisy:
        print(f"(noisy) rows: other processes used more than {args.noisy_cores} cores during {', '.join(noisy)}.")
    print(f"Run time: {time.monotonic() - started:.0f} s.")
    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path)
                         else [r.key for r in v] if k == "llm_rows" else v)
                     for k, v in vars(args).items()},
            "results": {f"{k}|{t}": v for (k, t), v in bench.results.items()},
            "hwm_kb": bench.hwm, "memory": bench.memory, "llm_ceiling": bench.ceiling,
        }, indent=1))


if __name__ == "__main__":
    main()
