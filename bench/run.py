"""The benchmark of css-inference-service against a fast fake OpenAI provider.

    python bench/run.py [--rounds 2] [--quick] [--duration 5] [--workers 1,2] [--json out.json]

One run measures DIRECT (the load generator straight at the fake provider, OpenAI request
shape) and the service started by its own command line (`css-inference-service
--bind=127.0.0.1:PORT --workers=N`, `OPENAI_BASE_URL` pointed at the fake) with off-chain
completion jobs, for every row below, in `--rounds` rounds, and prints one markdown table
of medians (min-max over the rounds), with the targets of issue 5 and whether each is met.

- latency at concurrency 1, provider 0 ms (wrk -c1 -t1: wrk's percentiles are exact
  microseconds, so it is tight enough; the client adds no Python overhead);
- throughput and latency at concurrency 32 and 256, provider 0 ms and 50 ms (wrk -t1);
- CPU time per request: utime+stime of the service's processes (the master and every
  worker, from /proc/<pid>/stat) over the row, divided by the requests completed;
- peak RSS (VmHWM) of each worker, at the end of each service instance;
- streams of 64 chunks 5 ms apart at concurrency 1 and 16 (bench/client.py: streams/s,
  time to first byte, gaps between chunks as they arrive);
- RSS of the worker after 100,000 requests against after 1,000 (one worker);
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
        return GRANIAN_SERVER.replace("{app}", "css_core.app:create_app"), env
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
    kind: str  # "wrk" or "stream"
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


@dataclass
class Bench:
    args: argparse.Namespace
    fakes: dict[int, Server] = field(default_factory=dict)  # by latency
    results: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)  # (row, target) -> rounds
    hwm: dict[str, list[int]] = field(default_factory=dict)  # target -> peak RSS kB of each worker, every instance
    memory: dict[str, Any] = field(default_factory=dict)
    log: Callable[[str], None] = print
    quiet_left: float = 0.0  # seconds of --quiet-budget left

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
            out["cpu_ms"] = (service.ticks() - s0) / TICK * 1000 / done
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

    def start_service(self, workers: int, latency: int) -> Server:
        port = free_port()
        fake = self.fakes[latency]
        env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_BASE_URL"))}
        env.update(OPENAI_API_KEY="bench", OPENAI_BASE_URL=f"http://127.0.0.1:{fake.port}/v1",
                   PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
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

    def selected(self, row: Row) -> bool:
        return not self.args.only or row.key in self.args.only

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
        try:
            for fake in self.fakes.values():
                fake.wait_ready()
            for number in range(1, a.rounds + 1):
                self.round(number)
            if a.mem_requests:
                self.memory_test()
        finally:
            for fake in self.fakes.values():
                fake.stop()


# ---------------------------------------------------------------------------------------------
# the table


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

    def added(self, row: str, key: str, digits: int = 3) -> list[str]:
        """Service minus DIRECT, per round (the same round's DIRECT)."""
        direct = self.vals(row, "D", key)
        cells = ["—"]
        for t in self.targets[1:]:
            v = self.vals(row, t, key)
            diffs = [s - d for s, d in zip(v, direct, strict=False)]
            cells.append(_fmt(diffs, digits))
        return cells

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
        self.add("c1, 0 ms: **added** p50 (ms)", "c1_0", self.added("c1_0", "p50_ms"), "≤ 0.5 ms",
                 self.added_ok("c1_0", "p50_ms", 0.5))
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
            cpu = {t: _med(self.vals(row, t, "cpu_ms")) <= 0.25
                   for t in self.targets[1:] if self.vals(row, t, "cpu_ms")}
            self.add(f"CPU per request, {label} (µs)", row, cells, "≤ 250 µs", _verdicts(cpu))
        fake_cpu = self.vals("c32_0", "D", "fake_cpu_ms")
        if fake_cpu:
            self.add("fake provider CPU per request, c32 (µs)", None,
                     [_fmt([v * 1000 for v in fake_cpu], 1)] + ["—"] * (len(self.targets) - 1))
        # RSS
        cells = ["—"] + [_fmt([kb / 1024 for kb in self.b.hwm.get(t, [])], 1) for t in self.targets[1:]]
        peaks = {t: max(self.b.hwm[t]) / 1024 <= 60 for t in self.targets[1:] if self.b.hwm.get(t)}
        self.add(f"peak RSS per worker, VmHWM (MB; median, min{DASH}max over instances)", None, cells, "≤ 60 MB",
                 _verdicts(peaks))
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


def header(args: argparse.Namespace) -> str:
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
        "",
    ])


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
    p.add_argument("--only", default="", help="comma-separated row keys: " + ",".join(r.key for r in ROWS))
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
    args.server, args.server_env = server_command(args.server)
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--env expects KEY=VALUE, got {item!r}")
        args.server_env[key] = value
    args.workers = [int(w) for w in args.workers.split(",") if w]
    args.only = {k for k in args.only.split(",") if k}
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    for tool in ("wrk", "taskset"):
        if not any((Path(d) / tool).exists() for d in os.environ.get("PATH", "").split(os.pathsep)):
            p.error(f"{tool} is not installed (apt-get install -y {'wrk' if tool == 'wrk' else 'util-linux'})")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    started = time.monotonic()
    bench = Bench(args, log=lambda s: print(s, file=sys.stderr, flush=True))
    bench.run()
    print(header(args))
    print(Table(bench).build())
    noisy = sorted({k for (k, _), rs in bench.results.items() for r in rs if r["foreign_cores"] > args.noisy_cores})
    print()
    direct = bench.results.get(("c256_0", "D")) or bench.results.get(("c32_0", "D"))
    if direct:
        print(f"Fake provider ceiling in this run (DIRECT, provider 0 ms): "
              f"{_fmt([r['rate'] for r in bench.results.get(('c32_0', 'D'), [])], 0)} req/s at c32, "
              f"{_fmt([r['rate'] for r in bench.results.get(('c256_0', 'D'), [])], 0)} req/s at c256.")
    if noisy:
        print(f"(noisy) rows: other processes used more than {args.noisy_cores} cores during {', '.join(noisy)}.")
    print(f"Run time: {time.monotonic() - started:.0f} s.")
    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
                     for k, v in vars(args).items()},
            "results": {f"{k}|{t}": v for (k, t), v in bench.results.items()},
            "hwm_kb": bench.hwm, "memory": bench.memory,
        }, indent=1))


if __name__ == "__main__":
    main()
