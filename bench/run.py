"""The benchmark of css-inference-service against a fast fake OpenAI provider.

    python bench/run.py [--rounds 2] [--quick] [--duration 5] [--workers 1,2] [--json out.json]

One run measures DIRECT (the load generator straight at the fake provider, OpenAI request
shape) and the service started by its own command line (`css-inference-service
--bind=127.0.0.1:PORT --workers=N`, `OPENAI_BASE_URL` pointed at the fake) with off-chain
completion jobs, for every row below, in `--rounds` rounds, and prints one markdown table
of medians (min-max over the rounds), with the targets of issues 9 and 13 and whether each is met.

- latency at concurrency 1, provider 0 ms (wrk -c1 -t1: wrk's percentiles are exact
  microseconds, so it is tight enough; the client adds no Python overhead);
- throughput and latency at concurrency 32 and 256, provider 0 ms and 50 ms (wrk -t1);
- CPU time per request: utime+stime of the service's processes (the master and every
  worker, from /proc/<pid>/stat) over the row, divided by the requests completed;
- peak RSS (VmHWM) of each worker, at the end of each service instance;
- streams of 64 chunks 5 ms apart at concurrency 1 and 16 (bench/client.py: streams/s,
  time to first byte, gaps between chunks as they arrive);
- RSS of the worker after 100,000 requests against after 1,000 (one worker);
- LLM-like streams (issue 13): N = 100, 400, 1,000 streams open at once, each of 100 chunks
  20 ms apart (`llm100`, `llm400`, `llm1000`; `--llm-n`, `--llm-chunks`, `--llm-gap-ms`),
  from K client processes (bench/client.py, samples merged), against a fake provider of
  `--llm-fake-procs` processes: streams/s, time to first byte, the gaps between chunks,
  service CPU per relayed chunk, and RSS per open stream (the workers' RSS with N streams
  open minus before, / N). DIRECT is measured alone first at the largest N, with 1, 2, ...
  client processes until it keeps up (`--llm-clients auto`), and its ceiling is printed;
- errors (non-2xx, socket errors, wrong stream text) for every row; a row with errors is
  flagged.

The machine has 2 cores shared by the load generator, the fake provider and the service,
and possibly by other people's work: before each row the runner waits (up to
`--quiet-timeout`) until the rest of the machine is idle, measures the CPU the rest of the
machine used during the row ("foreign load") and flags rows where it passed
`--noisy-cores`. Pinning is set with `--pin-load`, `--pin-fake`, `--pin-service`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BIN = Path(sys.executable).parent
TICK = os.sysconf("SC_CLK_TCK")
TIMES, DASH = "\u00d7", "\u2013"  # multiplication sign, en dash (for the table)
DEFAULT_SERVER = "css-inference-service --bind=127.0.0.1:{port} --workers={workers}"
GRANIAN_SERVER = (
    "granian --interface asgi --factory {app} --host 127.0.0.1 --port {port} "
    "--workers {workers} --loop uvloop --http 1 --no-ws --log-level warning"
)
UVICORN_SERVER = (
    "uvicorn {app} --factory --host 127.0.0.1 --port {port} --workers {workers} --log-level warning "
    "--no-access-log --loop uvloop --http httptools"
)


def server_command(spec: str) -> tuple[str, dict[str, str]]:
    """`--server`: a command template, or `granian`, `granian:VARIANT`, `uvicorn:VARIANT`.

    VARIANT is a factory of bench/variants.py (e.g. minimal_app); bench/ is then put on
    PYTHONPATH for the service.
    """
    env: dict[str, str] = {}
    if spec == "granian":
        return GRANIAN_SERVER.replace("{app}", "css_core.edge.app:create_app"), env
    for name, template in (("granian:", GRANIAN_SERVER), ("uvicorn:", UVICORN_SERVER)):
        if spec.startswith(name):
            env["PYTHONPATH"] = str(BENCH)
            return template.replace("{app}", "variants:" + spec[len(name):]), env
    return spec, env


# ---------------------------------------------------------------------------------------------
# /proc accounting


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()  # fields from the 3rd (state) on


def cpu_ticks(pids: list[int]) -> int:
    """utime + stime of these processes, in clock ticks."""
    total = 0
    for pid in pids:
        f = _stat_fields(pid)
        if f:
            total += int(f[11]) + int(f[12])  # fields 14, 15 of stat
    return total


def descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f:
                parents[int(entry)] = int(f[1])
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == pid]
        found.extend(kids)
        frontier.extend(kids)
    return found


def status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def system_busy_ticks() -> int:
    """user + nice + system of all CPUs (irq/softirq left out: loopback traffic lands there)."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    return int(parts[1]) + int(parts[2]) + int(parts[3])


def children_ticks() -> int:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return round((r.ru_utime + r.ru_stime) * TICK)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get_ok(port: int, path: str = "/") -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n".encode())
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def pinned(cpus: str, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if cpus else cmd


# ---------------------------------------------------------------------------------------------
# processes under test


class Server:
    """A process group started by the runner (the fake provider or the service)."""

    def __init__(self, cmd: list[str], port: int, env: dict[str, str] | None = None, name: str = "") -> None:
        self.cmd, self.port, self.name = cmd, port, name
        self.cwd = tempfile.mkdtemp(prefix="css-bench-")  # no stray .env is read
        self.log = open(Path(self.cwd) / "server.log", "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, env=env, cwd=self.cwd, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.hwm_kb: dict[int, int] = {}

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            if http_get_ok(self.port):
                return
            time.sleep(0.1)
        raise SystemExit(f"{self.name} did not answer GET / within {timeout} s:\n{self.tail()}")

    def tail(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def pids(self) -> list[int]:
        return [self.proc.pid, *descendants(self.proc.pid)]

    def workers(self) -> list[int]:
        kids = [p for p in descendants(self.proc.pid) if "resource_tracker" not in cmdline(p)]
        return kids or [self.proc.pid]

    def ticks(self) -> int:
        return cpu_ticks(self.pids())

    def note_hwm(self) -> None:
        for pid in self.workers():
            self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), status_kb(pid, "VmHWM"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):  # leftovers of this group only
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


# ---------------------------------------------------------------------------------------------
# load generators


def run_wrk(args: argparse.Namespace, url: str, mode: str, conc: int, duration: float) -> dict[str, Any]:
    seconds = f"-d{max(1, round(duration))}s"
    cmd = pinned(args.pin_load, ["wrk", "-t1", f"-c{conc}", seconds, "--timeout", "10s", "--latency",
                                 "-s", str(BENCH / "post.lua"), url, "--", mode])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise SystemExit(f"wrk printed no result:\n{out}")
    r = json.loads(line[len("BENCH_JSON ") :])
    r["no_response"] = int(r["requests"] == 0)  # nothing answered within the row: an error too
    errors = r["connect"] + r["read"] + r["write"] + r["timeout"] + r["no_response"]
    return {
        "completed": r["requests"] - r["status"], "requests": r["requests"],
        "rate": r["requests"] / (r["duration_us"] / 1e6),
        "p50_ms": r["pct"]["50"] / 1000, "p99_ms": r["pct"]["99"] / 1000, "p90_ms": r["pct"]["90"] / 1000,
        "min_ms": r["lat_min"] / 1000, "errors": errors + r["status"],
        "error_detail": {k: r[k] for k in ("connect", "read", "write", "timeout", "status", "no_response") if r[k]},
    }


def run_client(args: argparse.Namespace, kind: str, url: str, mode: str, conc: int, *, duration: float = 0,
               requests: int = 0) -> dict[str, Any]:
    cmd = [sys.executable, str(BENCH / "client.py"), kind, "--url", url, "--mode", mode, "--conc", str(conc),
           "--chunks", str(args.chunks)]
    cmd += ["--duration", str(duration)] if duration else ["--requests", str(requests)]
    out = subprocess.run(pinned(args.pin_load, cmd), capture_output=True, text=True, check=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    r["errors"]["no_response"] = int(r["completed"] == 0 and not any(r["errors"].values()))
    errors = sum(r["errors"].values())
    result = {"completed": r["completed"], "requests": r["completed"] + errors, "rate": r["rate"],
              "errors": errors, "error_detail": {k: v for k, v in r["errors"].items() if v},
              "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"]}
    if kind == "stream":
        result.update(ttfb_p50_ms=r["ttfb_ms"]["p50"], ttfb_p99_ms=r["ttfb_ms"]["p99"],
                      gap_p10_ms=r["gap_ms"]["p10"], gap_p50_ms=r["gap_ms"]["p50"], gap_p90_ms=r["gap_ms"]["p90"],
                      gap_under_1ms=r["gap_ms"]["share_under_1ms"], span_ms=r["span_ms_p50"])
    return result


# ---------------------------------------------------------------------------------------------
# rows


@dataclass(frozen=True)
class Row:
    key: str
    kind: str  # "wrk", "stream" or "llm"
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
    results: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)  # (row, target) -> rounds
    hwm: dict[str, list[int]] = field(default_factory=dict)  # target -> peak RSS kB of each worker, every instance
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

    # -- one target ---------------------------------------------------------------------------

    def measure(self, row: Row, target: str, url: str, mode: str, service: Server | None) -> None:
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
        self.results.setdefault((row.key, target), []).append(out)
        flag = f"  ERRORS {out['error_detail']}" if out["errors"] else ""
        extra = f" ttfb {out['ttfb_p50_ms']:.2f} ms gap p50 {out['gap_p50_ms']:.2f} ms" if row.kind == "stream" else ""
        cpu = f" cpu {out['cpu_ms']:.3f} ms/req" if "cpu_ms" in out else ""
        self.log(f"    {row.key:8} {target:3} {out['rate']:9.1f}/s p50 {out['p50_ms']:8.3f} ms "
                 f"p99 {out['p99_ms']:8.3f} ms{extra}{cpu} foreign {out['foreign_cores']:.2f}{flag}")

    def start_service(self, workers: int, latency: int | str, extra_env: dict[str, str] | None = None) -> Server:
        port = free_port()
        fake = self.fakes[latency]
        env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_BASE_URL"))}
        env.update(OPENAI_API_KEY="bench", OPENAI_BASE_URL=f"http://127.0.0.1:{fake.port}/v1",
                   PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
        env.update(extra_env or {})
        env.update(self.args.server_env)
        cmd = shlex.split(self.args.server.format(port=port, workers=workers))
        server = Server(pinned(self.args.pin_service, cmd), port, env, name=f"service ({cmd[0]}, {workers} w)")
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
            for workers in a.workers:
                target = f"w{workers}"
                service = self.start_service(workers, latency)
                try:
                    url = f"http://127.0.0.1:{service.port}/service_output"
                    for row in rows:
                        self.measure(row, target, url, "service", service)
                    service.note_hwm()
                    self.hwm.setdefault(target, []).extend(service.hwm_kb.values())
                finally:
                    service.stop()
        for row in self.llm_selected():
            self.llm_row(row)

    def selected(self, row: Row) -> bool:
        if self.args.only:
            return row.key in self.args.only
        return row.kind != "llm" or not self.args.no_llm

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
        pct = _pct
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
        """DIRECT, then a fresh service per worker count (its idle RSS measured after a warm-up)."""
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
        for workers in a.workers:
            target = f"w{workers}"
            service = self.start_service(workers, "llm", {"CSS_MAX_IN_FLIGHT": str(in_flight)})
            try:
                url = f"http://127.0.0.1:{service.port}/service_output"
                # a few short streams on enough connections to reach every worker: what they import
                # and build on their first stream is not counted as the streams' memory
                warm = [sys.executable, str(BENCH / "client.py"), "stream", "--url", url, "--mode", "service",
                        "--conc", str(8 * workers), "--requests", str(16 * workers), "--chunks", "5",
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
                self.results.setdefault((row.key, target), []).append(out)
                self.log_llm(row.key, target, out)
            finally:
                service.stop()

    def memory_test(self) -> None:
        a = self.args
        workers = 1
        self.log(f"memory: {a.mem_requests} requests, {workers} worker, concurrency {a.mem_conc}, provider 0 ms")
        service = self.start_service(workers, 0)
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
            if self.llm_selected():
                self.llm_ceiling()
            for number in range(1, a.rounds + 1):
                self.round(number)
            if a.mem_requests:
                self.memory_test()
        finally:
            for fake in self.fakes.values():
                fake.stop()


# ---------------------------------------------------------------------------------------------
# the table


def _pct(values: list[float], q: float) -> float:
    """bench/client.py's percentile (nearest rank)."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _fmt(values: list[float], digits: int = 2, unit: str = "") -> str:
    if not values:
        return "—"
    med = _med(values)
    if len(values) == 1:
        return f"{med:,.{digits}f}{unit}"
    return f"{med:,.{digits}f}{unit} ({min(values):,.{digits}f}{DASH}{max(values):,.{digits}f})"


def _verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("**met**" if ok else "**missed**")


def _verdicts(oks: dict[str, bool]) -> str:
    """One verdict over the service columns; which column missed when they disagree."""
    if not oks:
        return "—"
    if len(set(oks.values())) == 1:
        return _verdict(next(iter(oks.values())))
    detail = ", ".join(f"{t[1:]} w {'met' if ok else 'missed'}" for t, ok in oks.items())
    return f"**missed** ({detail})"


class Table:
    def __init__(self, bench: Bench) -> None:
        self.b = bench
        self.targets = ["D"] + [f"w{w}" for w in bench.args.workers]
        self.lines: list[str] = []

    def vals(self, row: str, target: str, key: str) -> list[float]:
        return [r[key] for r in self.b.results.get((row, target), []) if key in r]

    def errors(self, row: str) -> str:
        parts = []
        for t in self.targets:
            n = sum(r["errors"] for r in self.b.results.get((row, t), []))
            parts.append(str(n) if n == 0 else f"⚠ {n}")
        return "/".join(parts)

    def noisy(self, row: str) -> bool:
        limit = self.b.args.noisy_cores
        return any(r["foreign_cores"] > limit for t in self.targets for r in self.b.results.get((row, t), []))

    def add(self, label: str, row: str | None, cells: list[str], target: str = "", verdict: str = "") -> None:
        if row is not None and not any((row, t) in self.b.results for t in self.targets):
            return
        errs = self.errors(row) if row else ""
        if row and ("⚠" in errs):
            label = "⚠ " + label
        if row and self.noisy(row):
            label += " (noisy)"
        self.lines.append("| " + " | ".join([label, *cells, errs, target, verdict]) + " |")

    def per_target(self, row: str, key: str, digits: int = 2, ratio: bool = False, unit: str = "") -> list[str]:
        cells = []
        direct = _med(self.vals(row, "D", key))
        for t in self.targets:
            v = self.vals(row, t, key)
            text = _fmt(v, digits, unit)
            if ratio and t != "D" and v and direct:
                text += f" = {_med(v) / direct:.2f}{TIMES}"
            cells.append(text)
        return cells

    @staticmethod
    def pair(first: list[str], second: list[str]) -> list[str]:
        return [a if a == b == "—" else f"{a} / {b}" for a, b in zip(first, second, strict=True)]

    def added(self, row: str, key: str, digits: int = 3) -> list[str]:
        """Service minus DIRECT, per round (the same round's DIRECT)."""
        direct = self.vals(row, "D", key)
        cells = ["—"]
        for t in self.targets[1:]:
            v = self.vals(row, t, key)
            diffs = [s - d for s, d in zip(v, direct, strict=False)]
            cells.append(_fmt(diffs, digits))
        return cells

    def at_most(self, row: str, key: str, limit: float) -> str:
        return _verdicts({t: _med(v) <= limit for t in self.targets[1:] if (v := self.vals(row, t, key))})

    def keeps_up_with_direct(self, row: str, share: float) -> str:
        """Each service column's rate at least `share` of DIRECT's, without errors."""
        direct = _med(self.vals(row, "D", "rate"))
        return _verdicts({t: _med(v) >= share * direct and not sum(r["errors"] for r in self.b.results[(row, t)])
                          for t in self.targets[1:] if (v := self.vals(row, t, "rate"))})

    def added_ok(self, row: str, key: str, limit: float) -> str:
        direct = self.vals(row, "D", key)
        oks = {}
        for t in self.targets[1:]:
            diffs = [s - d for s, d in zip(self.vals(row, t, key), direct, strict=False)]
            if diffs:
                oks[t] = _med(diffs) <= limit
        return _verdicts(oks)

    def build(self) -> str:
        a = self.b.args
        services = [f"service {t[1:]} worker{'s' if t != 'w1' else ''}" for t in self.targets[1:]]
        head = ["measurement", "DIRECT", *services,
                "errors " + "/".join(self.targets), "target", "result"]
        self.lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        w2 = "w2" if "w2" in self.targets else self.targets[-1]

        # concurrency 1
        self.add("c1, 0 ms: latency p50 (ms)", "c1_0", self.per_target("c1_0", "p50_ms", 3))
        self.add("c1, 0 ms: latency p99 (ms)", "c1_0", self.per_target("c1_0", "p99_ms", 3))
        self.add("c1, 0 ms: **added** p50 (ms)", "c1_0", self.added("c1_0", "p50_ms"), "≤ 0.6 ms",
                 self.added_ok("c1_0", "p50_ms", 0.6))
        self.add("c1, 0 ms: **added** p99 (ms)", "c1_0", self.added("c1_0", "p99_ms"), "≤ 2 ms",
                 self.added_ok("c1_0", "p99_ms", 2.0))
        # throughput
        for row, label in (("c32_0", "c32, 0 ms"), ("c256_0", "c256, 0 ms"), ("c32_50", "c32, 50 ms"),
                           ("c256_50", "c256, 50 ms")):
            target = verdict = ""
            if row == "c256_50":
                direct = _med(self.vals(row, "D", "rate"))
                v = self.vals(row, w2, "rate")
                errs = sum(r["errors"] for r in self.b.results.get((row, w2), []))
                target = f"≥ 0.8{TIMES} DIRECT ({w2[1:]} workers), no errors"
                verdict = _verdict(None if not v else (_med(v) >= 0.8 * direct and errs == 0))
            self.add(f"{label}: req/s", row, self.per_target(row, "rate", 0, ratio=True), target, verdict)
            self.add(f"{label}: p50 / p99 (ms)", row, [
                f"{p50} / {p99}" for p50, p99 in zip(self.per_target(row, "p50_ms", 2),
                                                      self.per_target(row, "p99_ms", 2), strict=True)])
        # CPU
        for row, label in (("c32_0", "c32, 0 ms"), ("c256_50", "c256, 50 ms")):
            cells = ["—"] + [_fmt([v * 1000 for v in self.vals(row, t, "cpu_ms")], 0) for t in self.targets[1:]]
            cpu = {t: _med(self.vals(row, t, "cpu_ms")) <= 0.4
                   for t in self.targets[1:] if self.vals(row, t, "cpu_ms")}
            self.add(f"CPU per request, {label} (µs)", row, cells, "≤ 400 µs", _verdicts(cpu))
        fake_cpu = self.vals("c32_0", "D", "fake_cpu_ms")
        if fake_cpu:
            self.add("fake provider CPU per request, c32 (µs)", None,
                     [_fmt([v * 1000 for v in fake_cpu], 1)] + ["—"] * (len(self.targets) - 1))
        # RSS (of the instances that served the rows above; the llm rows' have their own row)
        cells = ["—"] + [_fmt([kb / 1024 for kb in self.b.hwm.get(t, [])], 1) for t in self.targets[1:]]
        peaks = {t: max(self.b.hwm[t]) / 1024 <= 90 for t in self.targets[1:] if self.b.hwm.get(t)}
        if peaks:
            self.add(f"peak RSS per worker, VmHWM (MB; median, min{DASH}max over instances)", None, cells,
                     "≤ 90 MB", _verdicts(peaks))
        # streams
        for row, conc in (("s1", 1), ("s16", 16)):
            target = verdict = ""
            if conc == 16:
                direct = _med(self.vals(row, "D", "rate"))
                errs = {t: sum(r["errors"] for r in self.b.results.get((row, t), [])) for t in self.targets[1:]}
                rates = {t: _med(self.vals(row, t, "rate")) >= 0.95 * direct and not errs[t]
                         for t in self.targets[1:] if self.vals(row, t, "rate")}
                target = f"≥ 0.95{TIMES} DIRECT, no errors"
                verdict = _verdicts(rates)
            self.add(f"streams c{conc}: streams/s", row, self.per_target(row, "rate", 2, ratio=True), target, verdict)
            self.add(f"streams c{conc}: TTFB p50 (ms)", row, self.per_target(row, "ttfb_p50_ms", 2))
            if conc == 16:
                self.add("streams c16: **added** TTFB p50 (ms)", row, self.added(row, "ttfb_p50_ms", 2), "≤ 1 ms",
                         self.added_ok(row, "ttfb_p50_ms", 1.0))
            self.add(f"streams c{conc}: chunk gap p10 / p50 / p90 (ms)", row, [
                f"{a_} / {b_} / {c_}" for a_, b_, c_ in zip(
                    self.per_target(row, "gap_p10_ms", 1), self.per_target(row, "gap_p50_ms", 1),
                    self.per_target(row, "gap_p90_ms", 1), strict=True)])
            if conc == 16:
                chunks = self.b.args.chunks
                self.add("streams c16: service CPU per stream / per chunk (µs)", row, ["—"] + [
                    _fmt([v * 1000 for v in self.vals(row, t, "cpu_ms")], 0) + " / "
                    + _fmt([v * 1000 / chunks for v in self.vals(row, t, "cpu_ms")], 0) for t in self.targets[1:]])
        # LLM-like streams (issue 13)
        for row in self.b.llm_selected():
            key, n = row.key, row.conc
            if not any((key, t) in self.b.results for t in self.targets):
                continue
            # issue 13's targets: CPU per chunk at N = 400, the rest at N = 1,000
            at_1000 = n == 1000
            self.add(f"llm{n}: streams/s", key, self.per_target(key, "rate", 2, ratio=True),
                     *((f"≥ 0.95{TIMES} DIRECT, no errors", self.keeps_up_with_direct(key, 0.95)) if at_1000 else ()))
            self.add(f"llm{n}: TTFB p50 / p99 (ms)", key, self.pair(self.per_target(key, "ttfb_p50_ms", 2),
                                                                     self.per_target(key, "ttfb_p99_ms", 2)))
            self.add(f"llm{n}: **added** TTFB p50 / p99 (ms)", key,
                     self.pair(self.added(key, "ttfb_p50_ms", 2), self.added(key, "ttfb_p99_ms", 2)),
                     *(("p50 ≤ 5 ms", self.added_ok(key, "ttfb_p50_ms", 5.0)) if at_1000 else ()))
            self.add(f"llm{n}: chunk gap p50 / p99 (ms)", key, self.pair(self.per_target(key, "gap_p50_ms", 1),
                                                                          self.per_target(key, "gap_p99_ms", 1)))
            self.add(f"llm{n}: **added** inter-chunk delay p50 / p99 (ms)", key,
                     self.pair(self.added(key, "gap_p50_ms", 2), self.added(key, "gap_p99_ms", 2)),
                     *(("p99 ≤ 10 ms", self.added_ok(key, "gap_p99_ms", 10.0)) if at_1000 else ()))
            self.add(f"llm{n}: service CPU per relayed chunk (µs)", key,
                     ["—"] + [_fmt(self.vals(key, t, "cpu_chunk_us"), 0) for t in self.targets[1:]],
                     *(("≤ 20 µs", self.at_most(key, "cpu_chunk_us", 20.0)) if n == 400 else ()))
            cells = ["—"]
            for t in self.targets[1:]:
                per = self.vals(key, t, "rss_stream_kb")
                idle, open_ = self.vals(key, t, "rss_idle_kb"), self.vals(key, t, "rss_open_kb")
                cells.append(_fmt(per, 1) + (f" ({_med(idle) / 1024:.1f} → {_med(open_) / 1024:.1f} MB)"
                                             if per else ""))
            self.add(f"llm{n}: RSS per open stream (kB; workers' RSS, idle → {n} open)", key, cells,
                     *(("≤ 20 kB", self.at_most(key, "rss_stream_kb", 20.0)) if at_1000 else ()))
        # memory
        m = self.b.memory
        if m:
            growth = (m["rss_end_kb"] / m["rss_1k_kb"] - 1) * 100 if m["rss_1k_kb"] else float("nan")
            label = f"RSS after 1k → after {m['requests'] // 1000}k requests (MB), 1 worker, c{self.b.args.mem_conc}"
            if m["errors"]:
                label = f"⚠ {label} ({m['errors']} errors)"
            cell = f"{m['rss_1k_kb'] / 1024:.1f} → {m['rss_end_kb'] / 1024:.1f} ({growth:+.1f}%)"
            self.lines.append("| " + " | ".join(
                [label, "—", cell, *["—"] * (len(self.targets) - 2), str(m["errors"]), "≤ +10%",
                 _verdict(growth <= 10)]) + " |")
        del a
        return "\n".join(self.lines)


def header(args: argparse.Namespace, llm: bool = False) -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    env = (" with " + " ".join(f"{k}={v}" for k, v in args.server_env.items())) if args.server_env else ""
    pins = (f"load generator on CPU {args.pin_load or 'any'}, fake provider on CPU {args.pin_fake or 'any'}, "
            f"service on CPU {args.pin_service or 'any'}")
    return "\n".join([
        f"### css-inference-service benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} {TIMES} {cpu}, "
        f"Python {platform.python_version()})",
        "",
        f"- service: `{args.server}`{env}; DIRECT: the same load straight at the fake provider's "
        "/v1/chat/completions",
        f"- pinning (taskset): {pins}",
        f"- {args.rounds} round(s) of {args.duration:g} s per row (+{args.warmup:g} s warm-up, not measured); "
        f"medians, (min{DASH}max) over rounds; latencies from wrk -t1 (exact µs percentiles), "
        "streams from bench/client.py",
        f"- streams: {args.chunks} chunks {args.chunk_delay_ms:g} ms apart; errors = non-2xx + socket errors "
        "(+ wrong stream text), summed over rounds, per column",
        *([llm_header(args)] if llm else []),
        "",
    ])


def llm_header(args: argparse.Namespace) -> str:
    pin = f"CPU {args.llm_pin}" if args.llm_pin else "no CPU"
    in_flight = f"CSS_MAX_IN_FLIGHT={args.llm_in_flight}" if args.llm_in_flight else "CSS_MAX_IN_FLIGHT=max(N, 512)"
    return (f"- llm rows: N streams open at once, each of {args.llm_chunks} chunks {args.llm_gap_ms:g} ms apart "
            f"(asked per request), N connections streaming back to back for {args.llm_duration:g} s, started "
            f"evenly over {args.llm_ramp:g} s; bench/client.py in several processes (samples merged) and a fake "
            f"provider of {args.llm_fake_procs} processes, pinned to {pin}; a fresh service per row and worker "
            f"count, with {in_flight}; CPU per relayed chunk = the service's CPU over the row / chunks received; "
            "RSS per open stream = (the workers' summed VmRSS, highest while all N were open, minus before the "
            "row, after a warm-up) / N; added = service minus DIRECT of the same round")


def llm_ceiling_lines(bench: Bench) -> list[str]:
    """The DIRECT ceiling of the llm rows: the probes first, then DIRECT of each llm row."""
    if not bench.ceiling:
        return []
    a = bench.args
    lines = []
    for out in bench.ceiling:
        lines.append(
            f"LLM streams, DIRECT ceiling (measured alone first), N = {out['n']:,}, {out['clients']} client "
            f"process(es), fake provider {a.llm_fake_procs} process(es): {out['rate']:,.1f} streams/s = "
            f"{out['rate'] / out['ideal_rate'] * 100:.0f}% of the ideal {out['ideal_rate']:,.1f} "
            f"({out['chunks_per_s']:,.0f} chunks/s), chunk gap p50 / p99 {out['gap_p50_ms']:.1f} / "
            f"{out['gap_p99_ms']:.1f} ms, {out['errors']} errors: "
            + ("keeps up." if out["keeps_up"] else "does NOT keep up (the load generator or the fake provider "
               "is the limit)."))
    for row in bench.llm_selected():
        runs = bench.results.get((row.key, "D"), [])
        if runs:
            shares = [r["rate"] / r["ideal_rate"] * 100 for r in runs]
            kept = sum(r["keeps_up"] for r in runs)
            lines.append(f"DIRECT {row.key} ({bench.llm_clients} client process(es)): "
                         f"{_fmt([r['rate'] for r in runs], 1)} streams/s = {_fmt(shares, 0)}% of the ideal; "
                         f"kept up in {kept} of {len(runs)} round(s).")
    return lines


def _raise_open_files(needed: int) -> None:
    """The llm rows hold thousands of sockets open: raise this process's (and so its children's) limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=int, default=5, help="whole seconds per row (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured seconds before each wrk row (default 1, 0: none)")
    p.add_argument("--quick", action="store_true",
                   help="2 s rows, 1 s warm-up, 20,000 requests for the memory row")
    p.add_argument("--workers", default="1,2", help="worker counts to measure (default 1,2)")
    p.add_argument("--server", default=DEFAULT_SERVER,
                   help="the service's command line, with {port} and {workers} (default: %(default)s); "
                        "'granian' for the same app under: " + GRANIAN_SERVER + "; 'granian:VARIANT' or "
                        "'uvicorn:VARIANT' for a factory of bench/variants.py")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the service (repeatable)")
    p.add_argument("--mem-requests", type=int, default=100_000, help="requests for the memory row (0: skip)")
    p.add_argument("--mem-conc", type=int, default=8, help="concurrency of the memory row (default 8)")
    p.add_argument("--only", default="", help="comma-separated row keys: " + ",".join(r.key for r in ROWS)
                   + ", and llm<N> for each N of --llm-n (default: llm100,llm400,llm1000)")
    p.add_argument("--no-llm", action="store_true", help="leave the llm rows out of the full run")
    p.add_argument("--llm-n", default=LLM_N, help="stream counts of the llm rows (default %(default)s)")
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
    p.add_argument("--pin-service", default="", help="CPUs for the service ('' for none, the default)")
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
        args.duration, args.warmup = min(args.duration, 2.0), min(args.warmup, 1.0)
        args.stream_min_duration = min(args.stream_min_duration, 2.0)
        args.mem_requests = min(args.mem_requests, 20_000)
        args.llm_duration = min(args.llm_duration, 4.0)
    args.server, args.server_env = server_command(args.server)
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--env expects KEY=VALUE, got {item!r}")
        args.server_env[key] = value
    args.workers = [int(w) for w in args.workers.split(",") if w]
    args.only = {k for k in args.only.split(",") if k}
    args.llm_rows = llm_rows(args.llm_n)
    if unknown := args.only - {r.key for r in (*ROWS, *args.llm_rows)}:
        p.error(f"unknown row keys: {', '.join(sorted(unknown))} (llm<N> rows come from --llm-n)")
    if args.llm_ramp is None:
        args.llm_ramp = args.llm_chunks * args.llm_gap_ms / 1000
    if args.llm_chunks < 1 or args.llm_gap_ms < 0:
        p.error("--llm-chunks must be at least 1 and --llm-gap-ms at least 0")
    if args.llm_clients != "auto" and not args.llm_clients.isdigit():
        p.error("--llm-clients takes 'auto' or a number")
    if not 0 < args.llm_duration <= 600 or not 0 <= args.llm_ramp <= 600 or not 0 < args.llm_timeout <= 600:
        p.error("--llm-duration, --llm-ramp and --llm-timeout are bounded (10 min)")
    _raise_open_files(4 * max([r.conc for r in args.llm_rows] or [0]) + 1024)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    for tool in ("wrk", "taskset"):
        if not any((Path(d) / tool).exists() for d in os.environ.get("PATH", "").split(os.pathsep)):
            p.error(f"{tool} is not installed (apt-get install -y {'wrk' if tool == 'wrk' else 'util-linux'})")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    started = time.monotonic()
    bench = Bench(args, log=lambda s: print(s, file=sys.stderr, flush=True))
    bench.run()
    print(header(args, bool(bench.llm_selected())))
    print(Table(bench).build())
    noisy = sorted({k for (k, _), rs in bench.results.items() for r in rs if r["foreign_cores"] > args.noisy_cores})
    print()
    direct = bench.results.get(("c256_0", "D")) or bench.results.get(("c32_0", "D"))
    if direct:
        print(f"Fake provider ceiling in this run (DIRECT, provider 0 ms): "
              f"{_fmt([r['rate'] for r in bench.results.get(('c32_0', 'D'), [])], 0)} req/s at c32, "
              f"{_fmt([r['rate'] for r in bench.results.get(('c256_0', 'D'), [])], 0)} req/s at c256.")
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
