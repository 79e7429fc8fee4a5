"""The SSE reader: ours (`css_core.providers.http.sse_events`) against httpx-sse's `aiter_sse`.

    python bench/sse_reader.py [--events 20000] [--rounds 5]

Both read the same bytes, an OpenAI-shaped chat stream (`data: {chunk JSON}` events, about
200 bytes each, ending with `data: [DONE]`), from an in-memory `httpx.Response` (no
sockets), in two shapes: many events per read (16, as a busy worker finds them) and one event
per read (as a quiet one does). It prints the CPU µs (time.process_time) per event, best of
`--rounds`, of:

- `ours`: `sse_events`, which yields the `data` of the events of each read together, as
  bytes (and their names, for a read that holds a named event): what the relay writes once
  per read;
- `httpx-sse`: `EventSource(response).aiter_sse()`, one `ServerSentEvent` (str `data`, `event`
  name) per event, over `response.aiter_text()`;
- `previous`: the reader before it kept a line's pieces apart (it joined the pending bytes
  to each read), for comparison.

Needs httpx-sse (`uv pip install httpx-sse` in a dev environment; the service does not use it).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import httpx
import msgspec

from css_core.providers.http import sse_events

try:
    from httpx_sse import EventSource
except ImportError:  # pragma: no cover - a dev-only comparison
    EventSource = None


class Reads(httpx.AsyncByteStream):
    def __init__(self, reads: list[bytes]) -> None:
        self.reads = reads

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for read in self.reads:
            yield read


def stream_reads(events: int, per_read: int) -> list[bytes]:
    """An OpenAI chat stream's bytes, `per_read` events to a read."""
    blocks = []
    for i in range(events):
        chunk = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
                 "model": "gpt-4", "choices": [{"index": 0, "delta": {"content": f"word{i} "}, "finish_reason": None}]}
        blocks.append(b"data: " + msgspec.json.encode(chunk) + b"\n\n")
    blocks.append(b"data: [DONE]\n\n")
    return [b"".join(blocks[i : i + per_read]) for i in range(0, len(blocks), per_read)]


def response(reads: list[bytes]) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Reads(reads))


async def ours(reads: list[bytes]) -> int:
    n = 0
    async for events in sse_events(response(reads)):
        n += len(events)
    return n


async def httpx_sse(reads: list[bytes]) -> int:
    n = 0
    async for event in EventSource(response(reads)).aiter_sse():
        if event.data == "[DONE]":
            break
        n += 1
    return n


async def previous(reads: list[bytes]) -> int:
    """The reader as it was: the pending bytes joined to each read, no names, no limits."""
    n = 0
    pending = b""
    data: list[bytes] = []
    async for chunk in Reads(reads):
        lines = (pending + chunk if pending else chunk).split(b"\n")
        pending = lines.pop()
        events: list[bytes] = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    payload = data[0] if len(data) == 1 else b"\n".join(data)
                    data.clear()
                    if payload == b"[DONE]":
                        return n + len(events)
                    events.append(payload)
            elif line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
        n += len(events)
    return n


def measure(reader: Callable[[list[bytes]], Coroutine[Any, Any, int]], reads: list[bytes], events: int,
            rounds: int) -> float:
    """CPU µs per event of `reader` over `reads`, best of `rounds` (all in one event loop)."""

    async def best() -> float:
        spent = float("inf")
        for _ in range(rounds):
            started = time.process_time()
            got = await reader(reads)
            spent = min(spent, time.process_time() - started)
            assert got == events, (reader.__name__, got, events)
        return spent

    return asyncio.run(best()) / events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    readers = [ours, previous] + ([httpx_sse] if EventSource is not None else [])
    print("| events per read | " + " | ".join(r.__name__.replace("_", "-") for r in readers) + " |")
    print("|---|" + "---|" * len(readers))
    for per_read in (16, 1):
        reads = stream_reads(args.events, per_read)
        cells = [f"{measure(reader, reads, args.events, args.rounds):.2f} µs" for reader in readers]
        print(f"| {per_read} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
