"""A small raw-socket HTTP/1.1 load client for what wrk measures badly: streams.

    python bench/client.py stream --url http://127.0.0.1:P/service_output --mode service --conc 16 --duration 5
    python bench/client.py plain  --url http://127.0.0.1:P/service_output --mode service --conc 32 --requests 1000
    python bench/client.py stream --url ... --conc 500 --chunks 100 --gap-ms 20 --ramp 2 --duration 6 --dump out.json

`--conc` keep-alive connections each send one request after another. Every response is
parsed (status, content-length or chunked body) and timed on the client's event loop
(uvloop when installed): the time to the first body chunk (TTFB), and, for streams, the
arrival time of every chunk of the chunked body, from which the gaps between consecutive
chunks are taken. Chunks that arrive in the same read get the same arrival time, so
a relay that holds chunks back and sends them together shows as gaps near 0 ms next to
big ones, and a relay that forwards each chunk as it arrives shows gaps of the
provider's chunk delay (5 ms).

`--gap-ms G` asks the fake provider, in each request, for `--chunks` events `G` ms apart
(`bench_chunks` / `bench_gap_ms` in the OpenAI body, or in the job's `extra_args` for the
service, which merges them into the body it sends). `--ramp S` starts the connections
evenly over `S` seconds instead of all at once; several processes share one ramp with
`--slot k --slots K --total N` (connection j of process k starts at `S * (j*K + k) / N`)
and one start time with `--start-at` (a `time.time()`); `--dump FILE` writes every raw
sample (seconds) for merging: bench/run.py's `llm` rows run K processes this way.
`--duration` is counted from the start: no stream starts after it, the streams under way
finish (each within `--timeout`).

A stream counts as an error when its status is not 2xx, the connection fails, or its
text is not what the fake provider sent (`tok0 tok1 ... tok63 `, parsed from the SSE
events for `--mode direct`). The result is one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import statistics
import sys
import time
from urllib.parse import urlsplit

__all__ = ("main",)

SERVICE_STREAM = (
    b'{"source":1,"destination":2,"data":{"model":"gpt-4","params":{"endpoint":"completions",'
    b'"messages":[{"role":"user","content":"hi"}]}}}'
)
SERVICE_PLAIN = (
    b'{"source":1,"destination":1,"data":{"model":"gpt-4","params":{"endpoint":"completions",'
    b'"messages":[{"role":"user","content":"hi"}]}}}'
)
DIRECT_STREAM = b'{"model":"gpt-4","messages":[{"role":"user","content":"hi"}],"stream":true}'
DIRECT_PLAIN = b'{"model":"gpt-4","messages":[{"role":"user","content":"hi"}]}'


def with_stream_shape(body: bytes, mode: str, chunks: int, gap_ms: float) -> bytes:
    """`body` asking the fake provider for `chunks` events `gap_ms` apart (see fake_provider.py)."""
    fields = b'"bench_chunks":%d,"bench_gap_ms":%s' % (chunks, repr(float(gap_ms)).encode())
    if mode == "direct":
        return body[:-1] + b"," + fields + b"}"
    return body[:-2] + b',"extra_args":{' + fields + b"}}}"
_CONTENT_RE = re.compile(rb'"content":"((?:[^"\\]|\\.)*)"')


class Response:
    __slots__ = ("chunks", "status", "t_chunks", "t_first", "text")

    def __init__(self) -> None:
        self.status = 0
        self.t_first = 0.0
        self.t_chunks: list[float] = []
        self.chunks: list[bytes] = []


class Conn(asyncio.Protocol):
    """One keep-alive connection; `request()` sends and resolves with the parsed response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.resp: Response | None = None
        self.state = "idle"  # head, body (content-length), chunk-size, chunk-data, chunk-trailer
        self.remaining = 0
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("connection closed")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)

    def request(self, raw: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.resp = Response()
        self.state = "head"
        self.transport.write(raw)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buf += data
        resp = self.resp
        if resp is None:
            return
        buf = self.buf
        while True:
            if self.state == "head":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                del buf[: end + 4]
                resp.status = int(head[9:12])
                if b"\ntransfer-encoding: chunked" in head:
                    self.state = "chunk-size"
                else:
                    at = head.find(b"\ncontent-length:")
                    eol = head.find(b"\r", at + 16)
                    self.remaining = int(head[at + 16 : eol if eol > 0 else None]) if at >= 0 else 0
                    self.state = "body"
            elif self.state == "body":
                if len(buf) < self.remaining:
                    return
                if self.remaining:
                    resp.chunks.append(bytes(buf[: self.remaining]))
                    resp.t_chunks.append(now)
                    resp.t_first = now
                del buf[: self.remaining]
                return self._complete()
            elif self.state == "chunk-size":
                eol = buf.find(b"\r\n")
                if eol < 0:
                    return
                size = int(bytes(buf[:eol]).split(b";")[0], 16)
                del buf[: eol + 2]
                if size == 0:
                    self.state = "chunk-trailer"
                else:
                    self.remaining = size
                    self.state = "chunk-data"
            elif self.state == "chunk-data":
                if len(buf) < self.remaining + 2:
                    return
                if not resp.chunks:
                    resp.t_first = now
                resp.chunks.append(bytes(buf[: self.remaining]))
                resp.t_chunks.append(now)
                del buf[: self.remaining + 2]
                self.state = "chunk-size"
            elif self.state == "chunk-trailer":
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[: end + 2]
                if end == 0:
                    return self._complete()
            else:
                return

    def _complete(self) -> None:
        self.state = "idle"
        resp, self.resp = self.resp, None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(resp)  # type: ignore[arg-type]


def _expected_text(chunks: int) -> str:
    return "".join(f"tok{i} " for i in range(chunks))


def _text(resp: Response, mode: str) -> str:
    body = b"".join(resp.chunks)
    if mode == "service":
        return body.decode("utf-8", "replace")
    return "".join(m.group(1).decode() for m in _CONTENT_RE.finditer(body))


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


async def _run(args: argparse.Namespace) -> tuple[dict[str, object], dict[str, list[float]]]:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    if host not in ("127.0.0.1", "localhost"):
        raise SystemExit("client: loopback only")
    stream = args.kind == "stream"
    body = {
        ("service", True): SERVICE_STREAM, ("service", False): SERVICE_PLAIN,
        ("direct", True): DIRECT_STREAM, ("direct", False): DIRECT_PLAIN,
    }[(args.mode, stream)]
    if stream and args.gap_ms is not None:
        body = with_stream_shape(body, args.mode, args.chunks, args.gap_ms)
    auth = b"authorization: Bearer bench\r\n" if args.mode == "direct" else b""
    raw = (
        b"POST %s HTTP/1.1\r\nhost: %s:%d\r\ncontent-type: application/json\r\n%scontent-length: %d\r\n\r\n%s"
        % (url.path.encode() or b"/", host.encode(), port, auth, len(body), body)
    )
    expected = _expected_text(args.chunks)
    loop = asyncio.get_running_loop()
    ttfb: list[float] = []
    latency: list[float] = []
    gaps: list[float] = []
    spans: list[float] = []
    nchunks: list[int] = []
    errors = {"status": 0, "socket": 0, "content": 0}
    done = chunks_total = 0
    if args.start_at:  # the start shared with the other processes of one run
        wait = args.start_at - time.time()
        if wait > 60:
            raise SystemExit("client: --start-at is more than 60 s away")
        await asyncio.sleep(max(0.0, wait))
    started = time.perf_counter()
    stop_at = started + args.duration if args.duration else float("inf")
    budget = [args.requests or 0]
    slots, total = max(1, args.slots), max(args.total, args.conc)

    async def worker(j: int) -> None:
        nonlocal done, chunks_total
        conn: Conn | None = None
        if args.ramp > 0:
            await asyncio.sleep(args.ramp * (j * slots + args.slot) / total)
        while time.perf_counter() < stop_at:
            if args.requests:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            try:
                if conn is None or conn.lost is not None:
                    _, conn = await loop.create_connection(Conn, host, port)
                t0 = time.perf_counter()
                resp = await asyncio.wait_for(conn.request(raw), args.timeout)
            except (TimeoutError, OSError):
                errors["socket"] += 1
                if conn is not None and conn.transport is not None:
                    conn.transport.close()
                conn = None
                await asyncio.sleep(0.01)
                continue
            t_end = resp.t_chunks[-1] if resp.t_chunks else time.perf_counter()
            chunks_total += len(resp.chunks)
            if not 200 <= resp.status < 300:
                errors["status"] += 1
                continue
            if stream and _text(resp, args.mode) != expected:
                errors["content"] += 1
                continue
            done += 1
            latency.append(t_end - t0)
            ttfb.append(resp.t_first - t0)
            if stream:
                ts = resp.t_chunks
                if args.mode == "direct":
                    ts = ts[: args.chunks]  # the last SSE chunk is "[DONE]": not text
                gaps.extend(b - a for a, b in itertools.pairwise(ts))
                spans.append(ts[-1] - ts[0])
                nchunks.append(len(resp.chunks))
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    await asyncio.gather(*(worker(j) for j in range(args.conc)))
    elapsed = time.perf_counter() - started
    ms = 1000.0
    result: dict[str, object] = {
        "kind": args.kind, "mode": args.mode, "conc": args.conc, "completed": done, "elapsed_s": elapsed,
        "rate": done / elapsed if elapsed else 0.0, "errors": errors, "chunks_total": chunks_total,
        "ttfb_ms": {"p50": _pct(ttfb, 50) * ms, "p90": _pct(ttfb, 90) * ms, "p99": _pct(ttfb, 99) * ms},
        "latency_ms": {"p50": _pct(latency, 50) * ms, "p99": _pct(latency, 99) * ms},
    }
    samples = {"ttfb": ttfb, "latency": latency, "gaps": gaps, "spans": spans}
    if stream:
        result["gap_ms"] = {
            "p10": _pct(gaps, 10) * ms, "p50": _pct(gaps, 50) * ms, "p90": _pct(gaps, 90) * ms,
            "p99": _pct(gaps, 99) * ms, "max": max(gaps, default=float("nan")) * ms,
            "share_under_1ms": (sum(g < 0.001 for g in gaps) / len(gaps)) if gaps else float("nan"),
        }
        result["span_ms_p50"] = (statistics.median(spans) * ms) if spans else float("nan")
        result["chunks_p50"] = statistics.median(nchunks) if nchunks else 0
    return result, samples


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=("stream", "plain"))
    p.add_argument("--url", required=True)
    p.add_argument("--mode", choices=("service", "direct"), default="service",
                   help="service: POST the job to /service_output; direct: POST the OpenAI body")
    p.add_argument("--conc", type=int, default=1)
    p.add_argument("--duration", type=float, default=0.0, help="seconds (0: until --requests are done)")
    p.add_argument("--requests", type=int, default=0, help="stop after this many requests in all")
    p.add_argument("--chunks", type=int, default=64, help="events the fake provider sends per stream")
    p.add_argument("--gap-ms", type=float, default=None,
                   help="ask the fake provider for --chunks events this far apart, in each request")
    p.add_argument("--ramp", type=float, default=0.0, help="start the connections evenly over this many seconds")
    p.add_argument("--slot", type=int, default=0, help="this process's place among --slots sharing one ramp")
    p.add_argument("--slots", type=int, default=1)
    p.add_argument("--total", type=int, default=0, help="connections of all the processes sharing the ramp")
    p.add_argument("--start-at", type=float, default=0.0, help="time.time() to start at (at most 60 s away)")
    p.add_argument("--dump", default="", help="write the raw samples (seconds) to this JSON file")
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args(argv)
    if not args.duration and not args.requests:
        p.error("give --duration or --requests")
    if args.duration > 3600 or args.ramp > 600 or args.timeout > 600:
        p.error("--duration, --ramp and --timeout are bounded (1 h, 10 min, 10 min)")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result, samples = asyncio.run(_run(args))
    if args.dump:
        with open(args.dump, "w") as f:
            json.dump({k: [round(v, 6) for v in values] for k, values in samples.items()}, f)
    print(json.dumps(result), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
