"""What bench/run.py, micro.py and profile.py share: the processes under test, their CPU and
memory from /proc, and the load generators (wrk with bench/post.lua, bench/client.py).

The columns a run measures besides DIRECT (`COLUMNS`) are servers started with the same
server and worker count: the service by its own command line, the floor and the service's
variants by bench/serve.py (the command line's server and flags around an app factory of
bench/variants.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = (
    "BENCH", "BIN", "COLUMNS", "DEFAULT_SERVER", "TICK", "Server", "children_ticks", "cpu_ticks", "descendants",
    "free_port", "pinned", "run_client", "run_wrk", "server_command", "status_kb", "system_busy_ticks",
)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BIN = Path(sys.executable).parent
TICK = os.sysconf("SC_CLK_TCK")
DEFAULT_SERVER = "css-inference-service --bind=127.0.0.1:{port} --workers={workers}"
SERVE = f"{shlex.quote(sys.executable)} {shlex.quote(str(BENCH / 'serve.py'))} {{app}} --bind=127.0.0.1:{{port}} " \
    "--workers={workers}"
GRANIAN_SERVER = (
    "granian --interface asgi --factory {app} --host 127.0.0.1 --port {port} "
    "--workers {workers} --loop uvloop --http 1 --no-ws --log-level warning"
)
UVICORN_SERVER = (
    "uvicorn {app} --factory --host 127.0.0.1 --port {port} --workers {workers} --log-level warning "
    "--no-access-log --loop uvloop --http httptools"
)
#: the columns besides DIRECT: (label, server command template); `service` is `--server`'s
COLUMNS = {
    "service": ("service", DEFAULT_SERVER),
    "floor": ("floor", SERVE.replace("{app}", "variants:floor_app")),
    "floor-aiohttp": ("floor, aiohttp alone", SERVE.replace("{app}", "variants:minimal_app")),
    "service-pyreqwest": ("service over pyreqwest", SERVE.replace("{app}", "variants:service_pyreqwest_app")),
}


def server_command(spec: str) -> tuple[str, dict[str, str]]:
    """`--server`: a command template, or `granian`, `granian:VARIANT`, `uvicorn:VARIANT`,
    `serve:VARIANT` (bench/serve.py: the command line's server and flags).

    VARIANT is a factory of bench/variants.py (e.g. floor_app); bench/ is then put on
    PYTHONPATH for the service.
    """
    env: dict[str, str] = {}
    if spec.startswith("serve:"):
        return SERVE.replace("{app}", "variants:" + spec[len("serve:"):]), env
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


