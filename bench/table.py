"""bench/run.py's one markdown table: issue 18's targets first, then every other row measured.

Each cell is the median over the rounds, (min-max) when there are several; a column other
than DIRECT, the service and the floor shows its ratio to the one it stands for (a
`service-*` variant to the service, a `floor-*` reference to the floor).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from harness import BENCH, COLUMNS

__all__ = ("DASH", "TIMES", "Table", "fmt", "header", "llm_ceiling_lines", "med", "pct")

TIMES, DASH = "\u00d7", "\u2013"  # multiplication sign, en dash

# issue 18's targets: (row, value key, label, ratio limit, "at most" or "at least")
CPU_TARGETS = (
    ("c32_0", "cpu_us", "CPU per request, c32, provider 0 ms (µs)", 1.3),
    ("c256_50", "cpu_us", "CPU per request, c256, provider 50 ms (µs)", 1.3),
    ("llm100", "cpu_chunk_us", "CPU per relayed chunk, 100 streams of {chunks} chunks {gap:g} ms apart (µs)", 1.15),
)
RATE_TARGET = ("c256_50", "rate", "throughput, c256, provider 50 ms (req/s)", 0.9)
RECORD_LIMIT_US = 20.0


def pct(values: list[float], q: float) -> float:
    """bench/client.py's percentile (nearest rank)."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(values: list[float], digits: int = 2, unit: str = "") -> str:
    if not values:
        return "—"
    middle = med(values)
    if len(values) == 1:
        return f"{middle:,.{digits}f}{unit}"
    return f"{middle:,.{digits}f}{unit} ({min(values):,.{digits}f}{DASH}{max(values):,.{digits}f})"


def _verdict(ok: bool | None, detail: str = "") -> str:
    if ok is None:
        return "—"
    return ("**met**" if ok else "**missed**") + (f" ({detail})" if detail else "")


class Table:
    def __init__(self, bench: Any) -> None:
        self.b = bench
        self.columns = ["D", *bench.args.columns]
        self.lines: list[str] = []

    # -- values -------------------------------------------------------------------------------

    def vals(self, row: str, column: str, key: str) -> list[float]:
        runs = self.b.results.get((row, column), [])
        if key == "cpu_us":
            return [r["cpu_ms"] * 1000 for r in runs if "cpu_ms" in r]
        return [r[key] for r in runs if key in r]

    def ratio(self, row: str, key: str, column: str, reference: str) -> float | None:
        mine, theirs = med(self.vals(row, column, key)), med(self.vals(row, reference, key))
        if mine != mine or theirs != theirs or not theirs:  # NaN: not measured
            return None
        return mine / theirs

    @staticmethod
    def reference(column: str) -> str | None:
        """The column a variant is compared with: a service variant with the service, a floor with the floor."""
        if column.startswith("service-"):
            return "service"
        if column.startswith("floor-"):
            return "floor"
        return None

    def cells(self, row: str, key: str, digits: int, direct_ratio: bool = False) -> list[str]:
        """One cell per column; a variant's with its ratio to its reference, and to DIRECT if asked."""
        out = []
        for column in self.columns:
            text = fmt(self.vals(row, column, key), digits)
            if text != "—" and column != "D":
                if direct_ratio and (r := self.ratio(row, key, column, "D")) is not None:
                    text += f" = {r:.2f}{TIMES} DIRECT"
                ref = self.reference(column)
                if ref and (r := self.ratio(row, key, column, ref)) is not None:
                    text += f" = {r:.2f}{TIMES} {ref}"
            out.append(text)
        return out

    def errors(self, row: str) -> str:
        parts = []
        for column in self.columns:
            n = sum(r["errors"] for r in self.b.results.get((row, column), []))
            parts.append(str(n) if n == 0 else f"⚠ {n}")
        return "/".join(parts)

    def noisy(self, row: str) -> bool:
        limit = self.b.args.noisy_cores
        return any(r["foreign_cores"] > limit for c in self.columns for r in self.b.results.get((row, c), []))

    def measured(self, row: str) -> bool:
        return any((row, c) in self.b.results for c in self.columns)

    def add(self, label: str, row: str | None, cells: list[str], ratio: str = "", target: str = "",
            verdict: str = "") -> None:
        if row is not None and not self.measured(row):
            return
        errs = self.errors(row) if row else ""
        if "⚠" in errs:
            label = "⚠ " + label
        if row and self.noisy(row):
            label += " (noisy)"
        self.lines.append("| " + " | ".join([label, *cells, ratio, errs, target, verdict]) + " |")

    # -- the table ----------------------------------------------------------------------------

    def targets(self) -> None:
        """Issue 18: the service against the floor, measured in the same run."""
        for row, key, label, limit in CPU_TARGETS:
            ratio = self.ratio(row, key, "service", "floor")
            over = f"{(ratio - 1) * 100:+.0f}% on the floor" if ratio is not None else ""
            label = label.format(chunks=self.b.args.llm_chunks, gap=self.b.args.llm_gap_ms)
            self.add(label, row, ["—", *self.cells(row, key, 0)[1:]],
                     f"{ratio:.2f}{TIMES}" if ratio is not None else "—", f"≤ {limit}{TIMES} the floor's",
                     _verdict(None if ratio is None else ratio <= limit, over))
        row, key, label, limit = RATE_TARGET
        ratio = self.ratio(row, key, "service", "floor")
        errors = sum(r["errors"] for r in self.b.results.get((row, "service"), []))
        detail = f"{ratio:.2f}{TIMES} the floor" + (f", {errors} errors" if errors else "") if ratio else ""
        self.add(label, row, self.cells(row, key, 0, direct_ratio=True),
                 f"{ratio:.2f}{TIMES}" if ratio is not None else "—", f"≥ {limit}{TIMES} the floor's, no errors",
                 _verdict(None if ratio is None else ratio >= limit and not errors, detail))
        record = self.vals("record", "service", "us")
        cells = ["—"] * len(self.columns)
        if "service" in self.columns:
            cells[self.columns.index("service")] = fmt(record, 1)
        self.add("the job's record, metrics and `job finished` line (text), no budget: CPU per job, "
                 "in-process (µs)", "record", cells, "", f"≤ {RECORD_LIMIT_US:g} µs",
                 _verdict(None if not record else med(record) <= RECORD_LIMIT_US))

    def others(self) -> None:
        """Every other row measured, without targets."""
        self.add("c1, 0 ms: latency p50 / p99 (ms)", "c1_0",
                 self.pair(self.cells("c1_0", "p50_ms", 3), self.cells("c1_0", "p99_ms", 3)))
        self.add("c1, 0 ms: added p50 (ms)", "c1_0", self.added("c1_0", "p50_ms"))
        for row, label in (("c32_0", "c32, 0 ms"), ("c256_0", "c256, 0 ms"), ("c32_50", "c32, 50 ms"),
                           ("c256_50", "c256, 50 ms")):
            if row != RATE_TARGET[0]:
                self.add(f"{label}: req/s", row, self.cells(row, "rate", 0, direct_ratio=True))
            self.add(f"{label}: p50 / p99 (ms)", row,
                     self.pair(self.cells(row, "p50_ms", 2), self.cells(row, "p99_ms", 2)))
            if row not in {r for r, *_ in CPU_TARGETS}:
                ratio = self.ratio(row, "cpu_us", "service", "floor")
                self.add(f"{label}: CPU per request (µs)", row, ["—", *self.cells(row, "cpu_us", 0)[1:]],
                         f"{ratio:.2f}{TIMES}" if ratio else "")
        fake = self.vals("c32_0", "D", "fake_cpu_ms")
        if fake:
            self.add("fake provider CPU per request, c32 (µs)", None,
                     [fmt([v * 1000 for v in fake], 1)] + ["—"] * (len(self.columns) - 1))
        peaks = ["—"] + [fmt([kb / 1024 for kb in self.b.hwm.get(c, [])], 1) for c in self.columns[1:]]
        if any(cell != "—" for cell in peaks):
            self.add(f"peak RSS per worker, VmHWM (MB; median, min{DASH}max over instances)", None, peaks)
        for row, conc in (("s1", 1), ("s16", 16)):
            self.add(f"streams c{conc}: streams/s", row, self.cells(row, "rate", 2, direct_ratio=True))
            self.add(f"streams c{conc}: TTFB p50 (ms)", row, self.cells(row, "ttfb_p50_ms", 2))
            self.add(f"streams c{conc}: added TTFB p50 (ms)", row, self.added(row, "ttfb_p50_ms", 2))
            self.add(f"streams c{conc}: chunk gap p10 / p50 / p90 (ms)", row, [
                f"{a} / {b} / {c}" for a, b, c in zip(
                    self.cells(row, "gap_p10_ms", 1), self.cells(row, "gap_p50_ms", 1),
                    self.cells(row, "gap_p90_ms", 1), strict=True)])
            chunks = self.b.args.chunks
            self.add(f"streams c{conc}: CPU per chunk (µs)", row, ["—"] + [
                fmt([v * 1000 / chunks for v in self.vals(row, c, "cpu_ms")], 0) for c in self.columns[1:]])
        for row in self.b.llm_selected():
            key, n = row.key, row.conc
            self.add(f"llm{n}: streams/s", key, self.cells(key, "rate", 2, direct_ratio=True))
            self.add(f"llm{n}: TTFB p50 / p99 (ms)", key,
                     self.pair(self.cells(key, "ttfb_p50_ms", 2), self.cells(key, "ttfb_p99_ms", 2)))
            self.add(f"llm{n}: added TTFB p50 / p99 (ms)", key,
                     self.pair(self.added(key, "ttfb_p50_ms", 2), self.added(key, "ttfb_p99_ms", 2)))
            self.add(f"llm{n}: chunk gap p50 / p99 (ms)", key,
                     self.pair(self.cells(key, "gap_p50_ms", 1), self.cells(key, "gap_p99_ms", 1)))
            if key != CPU_TARGETS[2][0]:
                ratio = self.ratio(key, "cpu_chunk_us", "service", "floor")
                self.add(f"llm{n}: CPU per relayed chunk (µs)", key, ["—", *self.cells(key, "cpu_chunk_us", 0)[1:]],
                         f"{ratio:.2f}{TIMES}" if ratio else "")
            cells = ["—"]
            for c in self.columns[1:]:
                per = self.vals(key, c, "rss_stream_kb")
                idle, open_ = self.vals(key, c, "rss_idle_kb"), self.vals(key, c, "rss_open_kb")
                cells.append(fmt(per, 1) + (f" ({med(idle) / 1024:.1f} → {med(open_) / 1024:.1f} MB)" if per else ""))
            self.add(f"llm{n}: RSS per open stream (kB; workers' RSS, idle → {n} open)", key, cells)
        m = self.b.memory
        if m:
            growth = (m["rss_end_kb"] / m["rss_1k_kb"] - 1) * 100 if m["rss_1k_kb"] else float("nan")
            label = f"service RSS after 1k → after {m['requests'] // 1000}k requests (MB), 1 worker"
            cell = f"{m['rss_1k_kb'] / 1024:.1f} → {m['rss_end_kb'] / 1024:.1f} ({growth:+.1f}%)"
            cells = ["—"] * len(self.columns)
            if "service" in self.columns:
                cells[self.columns.index("service")] = cell
            self.add(("⚠ " if m["errors"] else "") + label, None, cells)

    @staticmethod
    def pair(first: list[str], second: list[str]) -> list[str]:
        return [a if a == b == "—" else f"{a} / {b}" for a, b in zip(first, second, strict=True)]

    def added(self, row: str, key: str, digits: int = 3) -> list[str]:
        """Each column minus DIRECT, per round (the same round's DIRECT)."""
        direct = self.vals(row, "D", key)
        return ["—"] + [fmt([s - d for s, d in zip(self.vals(row, c, key), direct, strict=False)], digits)
                        for c in self.columns[1:]]

    def build(self) -> str:
        names = [COLUMNS[c][0] if c in COLUMNS else c for c in self.columns[1:]]
        head = ["measurement", "DIRECT", *names, f"service {chr(0xF7)} floor",
                "errors " + "/".join("D" if c == "D" else c for c in self.columns), "target", "result"]
        self.lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        self.targets()
        self.lines.append("| " + " | ".join(["*other rows*", *[""] * (len(head) - 1)]) + " |")
        before = len(self.lines)
        self.others()
        if len(self.lines) == before:
            self.lines.pop()
        return "\n".join(self.lines)


def _shown(command: str) -> str:
    """A server's command line as the table shows it: bench/'s scripts by their short name."""
    shorter = command.replace(shlex.quote(sys.executable) + " ", "python ")
    return shorter.replace(shlex.quote(str(BENCH)) + "/", "bench/")


def header(args: argparse.Namespace, llm: bool = False) -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    env = (" with " + " ".join(f"{k}={v}" for k, v in args.server_env.items())) if args.server_env else ""
    pins = (f"load generator on CPU {args.pin_load or 'any'}, fake provider on CPU {args.pin_fake or 'any'}, "
            f"servers under test on CPU {args.pin_service or 'any'}")
    columns = "; ".join(f"{COLUMNS[c][0]}: `{_shown(args.server)}`{env}" if c == "service" else
                        f"{COLUMNS[c][0]}: `{_shown(COLUMNS[c][1])}`" for c in args.columns)
    return "\n".join([
        f"### css-inference-service benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} {TIMES} {cpu}, "
        f"Python {platform.python_version()})",
        "",
        f"- {args.workers} worker(s) in every column; {columns}",
        "- DIRECT: the same load straight at the fake provider's /v1/chat/completions",
        f"- pinning (taskset): {pins}",
        f"- {args.rounds} round(s) of {args.duration:g} s per row (+{args.warmup:g} s warm-up, not measured); "
        f"medians, (min{DASH}max) over rounds; ratios are of medians; latencies from wrk -t1, streams from "
        "bench/client.py; CPU = utime+stime of the server's processes (master and workers) / requests answered",
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
            f"provider of {args.llm_fake_procs} processes, pinned to {pin}; a fresh server per row and column, "
            f"with {in_flight}; CPU per relayed chunk = the server's CPU over the row / chunks received; "
            "RSS per open stream = (the workers' summed VmRSS, highest while all N were open, minus before the "
            "row, after a warm-up) / N; added = column minus DIRECT of the same round")


def llm_ceiling_lines(bench: Any) -> list[str]:
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
                         f"{fmt([r['rate'] for r in runs], 1)} streams/s = {fmt(shares, 0)}% of the ideal; "
                         f"kept up in {kept} of {len(runs)} round(s).")
    return lines
