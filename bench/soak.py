"""Soak: many jobs through the real service, checking that none is lost and that memory stays flat.

    python bench/soak.py [--jobs 50000] [--concurrency 32] [--workers 1] [--seed 1]

Starts two provider doubles (css_core.testing.ProviderDouble), one for OpenAI and one for GooseAI, in a
child process (so that they do not share a GIL with the client), and the service by its command
line (`css-inference-service --bind=127.0.0.1:PORT --workers=N`) in front of them, then sends the
jobs from an `httpx.AsyncClient`, `--concurrency` at a time, in this mix:

- ~80% successes: off-chain (35%), on-chain (25%) and stream (20%) completions, each answer
  checked against the double's reply;
- ~10% retried faults: GooseAI completions whose first call is answered 429 (`Retry-After: 0`)
  or 503, the retry succeeding (`CSS_REQUEST_DELAY=0`, jitter `[0, 0]`). A double's fault goes
  to whichever call reaches it next, so these jobs alone use the GooseAI double, one at a time,
  and the service makes 2 attempts at most: each fault costs exactly one retry;
- ~10% bad input: the battery of tests/test_bad_input.py, each expecting its own 4xx.

It prints the jobs sent and answered, the answers by category (ok, expected 4xx, unexpected 4xx,
5xx, transport errors, wrong answers), the time taken, and the VmRSS of the service's process
(and its workers) at start, after 1,000 jobs, every 10,000 and at the end. It exits 1 if a job was
lost or answered other than expected. It is a script, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
from eth_abi.abi import decode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from css_core.testing import Fault, ProviderDouble  # noqa: E402
from tests.conftest import (  # noqa: E402
    EXECUTABLE,
    KEY,
    ONCHAIN,
    STREAM,
    chat,
    command_env,
    free_port,
    job,
    onchain_hex,
    service_env,
)
from tests.test_bad_input import CASES, MAX_BODY, MAX_MESSAGES, Case  # noqa: E402

T = TypeVar("T")
REPLY = ProviderDouble(api_key=KEY).expected_reply  # what the double answers (a pure function of the job)
MIX = [("offchain", 35), ("onchain", 25), ("stream", 20), ("retry-429", 5), ("retry-503", 5), ("bad", 10)]
FAULTS = {"retry-429": Fault.status(429, retry_after="0"), "retry-503": Fault.status(503)}


def _serve_doubles(conn: Any) -> None:
    """The child process: run the doubles, queue at the faulty one the faults the parent sends, until None."""
    with ProviderDouble(api_key=KEY) as double, ProviderDouble(api_key=KEY) as faulty:
        conn.send((double.url, faulty.url))
        while (kind := conn.recv()) is not None:
            faulty.script(FAULTS[kind])
            conn.send(kind)  # queued: the job may go
            for each in (double, faulty):  # they record every request; nobody reads them here
                if len(each.requests) > 10_000:
                    each.requests.clear()
                    each.streams.clear()


class RemoteDoubles:
    """The doubles in a child process: `url` for OpenAI, `faulty_url` for GooseAI, where `script(kind)`
    queues one of `FAULTS`."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve_doubles, args=(child,), daemon=True)
        self.process.start()
        self.url, self.faulty_url = self.conn.recv()

    def script(self, kind: str) -> None:
        """Queue the fault, and return once it is (else the job's call could reach the double first)."""
        self.conn.send(kind)
        self.conn.recv()

    def stop(self) -> None:
        self.conn.send(None)
        self.process.join(timeout=10)


def rss_kib(pid: int) -> int:
    """VmRSS of `pid` and of its children (the workers, when there are several), in KiB."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(child) for child in (task / "children").read_text().split()]
    total = 0
    for each in pids:
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


class Soak:
    def __init__(self, url: str, double: RemoteDoubles, process: subprocess.Popen[bytes], concurrency: int) -> None:
        self.url, self.double, self.process = url, double, process
        self.client = httpx.AsyncClient(
            base_url=url, timeout=60, trust_env=False,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, str] = {}
        self.sent = self.answered = 0
        self.one_fault = asyncio.Lock()

    def note(self, category: str, detail: str) -> None:
        self.counts[category] += 1
        self.examples.setdefault(category, detail[:300])

    async def one(self, i: int, kind: str) -> None:
        if kind == "bad":
            await self.bad(CASES[i % len(CASES)])
        elif kind in FAULTS:
            async with self.one_fault:
                self.double.script(kind)
                await self.completion(i, kind, "GOOSEAI", "gpt-neo-20b")
        else:
            await self.completion(i, kind)

    async def completion(self, i: int, kind: str, provider: str = "OPENAI", model: str = "gpt-4") -> None:
        content = f"soak job {i}"
        expected = REPLY(model, content)
        self.sent += 1
        try:
            if kind == "stream":
                async with self.client.stream("POST", "/service_output",
                                              json=job(chat(content), destination=STREAM)) as response:
                    await response.aread()
                text = response.text if response.status_code == 200 else None
            elif kind == "onchain":
                response = await self.client.post("/service_output", json=job(
                    onchain_hex(content), source=ONCHAIN, destination=ONCHAIN))
                text = decode(["string"], bytes.fromhex(response.json()["raw_output"]))[0] \
                    if response.status_code == 200 else None
            else:
                response = await self.client.post("/service_output", json=job(chat(content, model, provider=provider)))
                text = response.json()["output"] if response.status_code == 200 else None
        except httpx.HTTPError as exc:
            self.note("transport error", f"{kind} #{i}: {exc!r}")
            return
        self.answered += 1
        if response.status_code >= 500:
            self.note("5xx", f"{kind} #{i}: {response.status_code} {response.text}")
        elif response.status_code >= 400:
            self.note("unexpected 4xx", f"{kind} #{i}: {response.status_code} {response.text}")
        elif text != expected:
            self.note("wrong answer", f"{kind} #{i}: {text!r} != {expected!r}")
        else:
            self.note("ok", kind)

    async def bad(self, case: Case) -> None:
        self.sent += 1
        try:
            response = await self.client.post("/service_output", content=case.content,
                                              headers={"content-type": case.content_type})
        except httpx.HTTPError as exc:
            self.note("transport error", f"bad {case.id}: {exc!r}")
            return
        self.answered += 1
        if response.status_code == case.status:
            self.note("expected 4xx", case.id)
        elif response.status_code >= 500:
            self.note("5xx", f"bad {case.id}: {response.status_code} {response.text}")
        else:
            self.note("unexpected 4xx" if response.status_code >= 400 else "bad input accepted",
                      f"bad {case.id}: {response.status_code} {response.text}")

    async def run(self, kinds: list[str], concurrency: int) -> dict[int, int]:
        rss = {0: rss_kib(self.process.pid)}
        marks = {1000, len(kinds), *range(10_000, len(kinds), 10_000)}
        queue = iter(enumerate(kinds))
        done = 0
        started = time.monotonic()

        async def worker() -> None:
            nonlocal done
            for i, kind in queue:
                await self.one(i, kind)
                done += 1
                if done in marks:
                    rss[done] = rss_kib(self.process.pid)
                    rate = done / (time.monotonic() - started)
                    print(f"  {done:>6} jobs  {rate:7.0f} jobs/s  service RSS {rss[done] / 1024:7.1f} MiB", flush=True)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await self.client.aclose()
        return rss


def _run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run`, on uvloop where it is installed: the client is what limits the rate here."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    names, weights = zip(*MIX, strict=True)
    kinds = rng.choices(names, weights, k=args.jobs)

    double = RemoteDoubles()
    with tempfile.TemporaryDirectory() as tmp:
        env = service_env(double, GOOSEAI_API_KEY=KEY, GOOSEAI_BASE_URL=f"{double.faulty_url}/v1",
                          CSS_MAX_MESSAGES=str(MAX_MESSAGES), CSS_MAX_BODY_BYTES=str(MAX_BODY),
                          CSS_REQUEST_DELAY="0", CSS_REQUEST_JITTER="[0, 0]", CSS_REQUEST_TRIES="2")
        port = free_port()
        log_path = Path(tmp) / "service.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen([EXECUTABLE, f"--bind=127.0.0.1:{port}", f"--workers={args.workers}"],
                                       env=command_env(env), cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(url + "/", timeout=1, trust_env=False).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            else:
                raise SystemExit(f"the service did not start:\n{log_path.read_text()}")
            soak = Soak(url, double, process, args.concurrency)
            print(f"soak: {args.jobs} jobs, concurrency {args.concurrency}, --workers={args.workers}, "
                  f"service pid {process.pid}")
            started = time.monotonic()
            rss = _run(soak.run(kinds, args.concurrency))
            elapsed = time.monotonic() - started
        finally:
            process.terminate()
            process.wait(timeout=30)
            double.stop()
        log = log_path.read_text(errors="replace")

    faults, retries = sum(kinds.count(kind) for kind in FAULTS), log.count("retrying in")
    print(f"\nsent {soak.sent}, answered {soak.answered} in {elapsed:.1f} s ({soak.sent / elapsed:.0f} jobs/s); "
          f"service log: {log.count(chr(10))} lines, {retries} retries for {faults} faults")
    print("mix: " + ", ".join(f"{name} {kinds.count(name)}" for name in names))
    for category in ("ok", "expected 4xx", "unexpected 4xx", "bad input accepted", "5xx", "transport error",
                     "wrong answer"):
        example = f"   e.g. {soak.examples[category]}" if category in soak.examples and category != "ok" else ""
        print(f"  {category:<20} {soak.counts[category]:>6}{example}")
    print("service RSS (MiB): " + ", ".join(f"{'start' if n == 0 else n}: {kib / 1024:.1f}" for n, kib in rss.items()))
    failed = soak.sent - soak.answered + sum(soak.counts[c] for c in soak.counts if c not in ("ok", "expected 4xx"))
    failed += abs(retries - faults)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
