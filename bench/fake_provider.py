"""A fast fake OpenAI provider for benchmarks (not a test double: no checks, no faults).

    python bench/fake_provider.py --port 8200 [--latency-ms 0] [--chunks 64] [--chunk-delay-ms 5]
                                  [--procs 1] [--ceiling]

Any `POST .../chat/completions` (any path, in fact) is answered with a fixed chat
completion after `--latency-ms`; a body holding `"stream": true` is answered with
server-sent events (chunked transfer encoding): the first event after `--latency-ms`,
then one every `--chunk-delay-ms`, `--chunks` events in all, each with non-empty
`choices[0].delta.content` (`tok0 `, `tok1 `, ...), then `data: [DONE]`. `GET` anything
answers a small JSON.

A stream's length and gap can also be set per request, by the body fields
`"bench_chunks": N` (0-100,000) and `"bench_gap_ms": G` (0-10,000): bench/client.py's
`--gap-ms` sends them (in the job's `extra_args` through the service, which merges them
into the provider body). A gap of 0 sends the whole stream at once.

It is written on raw asyncio Protocols (uvloop when installed) with a minimal HTTP/1.1
keep-alive parser, so that it is never the bottleneck of a benchmark: one process serves
well over 50k req/s on one core (`--ceiling` measures it with wrk). `--procs N` runs N
processes on one SO_REUSEPORT socket address.

Pipelined requests on one connection are answered in order, one at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys

__all__ = ("completion_body", "main", "serve", "stream_event")

_STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
_CHUNKS_RE = re.compile(rb'"bench_chunks"\s*:\s*(\d{1,6})\b')
_GAP_RE = re.compile(rb'"bench_gap_ms"\s*:\s*(\d{1,5}(?:\.\d+)?)\b')
_MAX_CHUNKS = 100_000
_MAX_GAP_MS = 10_000.0
_MAX_HEAD = 64 * 1024


def completion_body(model: str = "gpt-4") -> bytes:
    return (
        b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"' + model.encode()
        + b'","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},'
        b'"logprobs":null,"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18},"system_fingerprint":null}'
    )


def stream_event(i: int) -> bytes:
    return (
        b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4",'
        b'"choices":[{"index":0,"delta":{"content":"tok%d "},"logprobs":null,"finish_reason":null}]}\n\n' % i
    )


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_BODY = completion_body()
_JSON_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(_BODY), _BODY)
)
_GET_BODY = b'{"fake":"openai"}'
_GET_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
    % (len(_GET_BODY), _GET_BODY)
)
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_SSE_END = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
_BAD = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class Config:
    def __init__(self, latency: float, chunks: int, chunk_delay: float) -> None:
        self.latency = latency
        self.chunks = chunks
        self.chunk_delay = chunk_delay
        self.events = [_chunk(stream_event(i)) for i in range(chunks)]
        self._cache: dict[int, list[bytes]] = {chunks: self.events}

    def events_of(self, chunks: int) -> list[bytes]:
        """The events of a stream of `chunks` events (built once per length)."""
        events = self._cache.get(chunks)
        if events is None:
            events = self.events[:chunks] if chunks <= len(self.events) else [
                *self.events, *(_chunk(stream_event(i)) for i in range(len(self.events), chunks))]
            self._cache[chunks] = events
        return events

    def stream_of(self, body: bytes) -> tuple[list[bytes], float]:
        """The events and the gap (s) of a stream: the run's, or the body's `bench_chunks` / `bench_gap_ms`."""
        events, gap = self.events, self.chunk_delay
        if b'"bench_' in body:
            if (m := _CHUNKS_RE.search(body)) is not None:
                events = self.events_of(min(int(m.group(1)), _MAX_CHUNKS))
            if (m := _GAP_RE.search(body)) is not None:
                gap = min(float(m.group(1)), _MAX_GAP_MS) / 1000
        return events, gap


class FakeOpenAI(asyncio.Protocol):
    __slots__ = ("buf", "busy", "close_after", "config", "events", "gap", "handle", "loop", "transport")

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.buf = b""
        self.busy = False  # a delayed answer (latency or stream) is under way
        self.close_after = False
        self.handle: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.events: list[bytes] = config.events  # the stream under way
        self.gap = config.chunk_delay

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        if not self.busy:
            self.process()

    def process(self) -> None:
        while not self.busy and self.transport is not None:
            buf = self.buf
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    self.transport.write(_BAD)
                    self.transport.close()
                return
            head = buf[:end].lower()
            length = 0
            at = head.find(b"\ncontent-length:")
            if at >= 0:
                eol = head.find(b"\r", at + 16)
                try:
                    length = int(head[at + 16 : eol if eol >= 0 else None])
                except ValueError:
                    self.transport.write(_BAD)
                    self.transport.close()
                    return
            total = end + 4 + length
            if len(buf) < total:
                return
            body = buf[end + 4 : total]
            self.buf = buf[total:]
            eol = head.find(b"\r")
            self.close_after = b"\nconnection: close" in head or head[:eol if eol >= 0 else None].endswith(b"http/1.0")
            if head.startswith(b"get"):
                self.transport.write(_GET_RESPONSE)
                self.done()
            elif _STREAM_RE.search(body):
                self.busy = True
                self.events, self.gap = self.config.stream_of(body)
                self.later(self.config.latency, self.stream_start)
            elif self.config.latency > 0:
                self.busy = True
                self.handle = self.loop.call_later(self.config.latency, self.answer)
            else:
                self.transport.write(_JSON_RESPONSE)
                self.done()

    def later(self, delay: float, callback, *args) -> None:  # type: ignore[no-untyped-def]
        if delay > 0:
            self.handle = self.loop.call_later(delay, callback, *args)
        else:
            self.handle = None
            callback(*args)

    def done(self) -> None:
        if self.close_after and self.transport is not None:
            self.transport.close()

    def answer(self) -> None:
        self.handle = None
        if self.transport is None:
            return
        self.transport.write(_JSON_RESPONSE)
        self.finish()

    def finish(self) -> None:
        self.busy = False
        self.done()
        if self.buf:
            self.process()

    def stream_start(self) -> None:
        self.handle = None
        if self.transport is None:
            return
        events = self.events
        if not events or self.gap <= 0:  # all at once
            self.transport.write(b"".join((_SSE_HEAD, *events, _SSE_END)))
            self.finish()
            return
        self.transport.write(_SSE_HEAD + events[0])
        self.stream_next(1)

    def stream_next(self, i: int) -> None:
        if i >= len(self.events):
            self.handle = self.loop.call_later(self.gap, self.stream_end)
        else:
            self.handle = self.loop.call_later(self.gap, self.stream_send, i)

    def stream_send(self, i: int) -> None:
        if self.transport is None:
            return
        self.transport.write(self.events[i])
        self.stream_next(i + 1)

    def stream_end(self) -> None:
        self.handle = None
        if self.transport is None:
            return
        self.transport.write(_SSE_END)
        self.finish()


def _install_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


async def serve(host: str, port: int, config: Config, reuse_port: bool = False, ready: str | None = None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: FakeOpenAI(config), host, port, reuse_port=reuse_port or None, backlog=4096
    )
    if ready:
        print(ready, flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8200)
    p.add_argument("--latency-ms", type=float, default=0.0, help="fixed latency before an answer (default 0)")
    p.add_argument("--chunks", type=int, default=64, help="events per stream (default 64)")
    p.add_argument("--chunk-delay-ms", type=float, default=5.0, help="gap between stream events (default 5)")
    p.add_argument("--procs", type=int, default=1, help="processes sharing the port via SO_REUSEPORT (default 1)")
    p.add_argument("--ceiling", action="store_true",
                   help="start, measure this server's own ceiling with wrk, print it and exit")
    return p


def _run(args: argparse.Namespace) -> None:
    if args.host != "127.0.0.1" and not args.host.startswith("127."):
        raise SystemExit("fake_provider: loopback addresses only")
    config = Config(args.latency_ms / 1000, args.chunks, args.chunk_delay_ms / 1000)
    kind = _install_uvloop()
    ready = f"fake-openai ready on {args.host}:{args.port} ({kind}, pid {os.getpid()})"
    if args.procs <= 1:
        asyncio.run(serve(args.host, args.port, config, ready=ready))
        return
    children = []
    for _ in range(args.procs):
        pid = os.fork()
        if pid == 0:
            asyncio.run(serve(args.host, args.port, config, reuse_port=True))
            os._exit(0)
        children.append(pid)
    print(ready + f" x{args.procs} procs", flush=True)

    def forward(sig: int, _frame: object) -> None:
        for child in children:
            os.kill(child, sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        os.waitpid(child, 0)


def _ceiling(args: argparse.Namespace) -> None:
    """Start the server pinned to CPU 0 and wrk pinned to CPU 1; print req/s."""
    here = os.path.dirname(os.path.abspath(__file__))
    cmd = [sys.executable, __file__, "--port", str(args.port), "--latency-ms", str(args.latency_ms),
           "--procs", str(args.procs)]
    server = subprocess.Popen(["taskset", "-c", "0", *cmd], stdout=subprocess.PIPE, text=True)
    try:
        server.stdout.readline()  # type: ignore[union-attr]
        for conns in (1, 32, 256):
            out = subprocess.run(
                ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", "-d5s", "--latency", "-s",
                 os.path.join(here, "post.lua"), f"http://{args.host}:{args.port}/v1/chat/completions", "--", "direct"],
                capture_output=True, text=True, check=True,
            ).stdout
            line = next(line for line in out.splitlines() if line.startswith("Requests/sec"))
            print(f"fake provider ceiling, conc {conns}: {line.split(':')[1].strip()} req/s "
                  f"(server on CPU 0, wrk -t1 on CPU 1)", flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.ceiling:
        _ceiling(args)
    else:
        _run(args)


if __name__ == "__main__":
    main()
