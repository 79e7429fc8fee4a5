"""Server-sent events as the double writes them, with the framing variants real providers use.

Providers frame their streams differently (OpenAI: bare `data:` lines ending in `[DONE]`;
Anthropic: named events, no `[DONE]`; Gemini: CRLF line ends), and proxies and TCP split
them anywhere. `Framing` lets a test serve any stream in each of these ways, so a client's
SSE reader is tested against the format, not against one provider's habits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = ("DONE", "Event", "Framing", "Stream", "encode_event", "split_json")

_json = msgspec.json.encode


@dataclass(frozen=True)
class Event:
    """One server-sent event.

    `data` is a JSON value (sent encoded), or `bytes`/`str` sent verbatim (e.g. `[DONE]`);
    `event` adds an `event:` line (Anthropic's `message_start`, ...), `id` an `id:` line.
    """

    data: Any
    event: str | None = None
    id: str | None = None


DONE = Event(b"[DONE]")  # OpenAI's end of stream


@dataclass(frozen=True)
class Framing:
    """How a stream's events are written; the default is OpenAI's plain `data: ...\\n\\n`.

    Every option keeps the events' meaning: a conforming SSE reader sees the same data.
    """

    event: str | None = None  # an `event:` line in every event that names none itself
    ids: bool = False  # an `id: <n>` line in every event that has no id itself (1, 2, ...)
    comments: bool = False  # a `: keep-alive` comment block before each event and a comment line in it
    multiline: bool = False  # each JSON payload split over two `data:` lines (the reader joins them with "\n")
    crlf: bool = False  # lines end with "\r\n"
    compact: bool = False  # no space after the colon: `data:{...}`
    split: bool = False  # each event written in two socket writes, `split_pause` seconds apart, cut
    split_after: bytes | None = None  # right after the first of these bytes in it (e.g. b"\r"), else in its middle
    split_pause: float = 0.05


@dataclass(frozen=True)
class Stream:
    """A streamed answer: `events` (each an `Event` or a JSON value) as `text/event-stream`.

    `done` appends OpenAI's `data: [DONE]`; without it the stream just ends (Anthropic,
    Gemini). `framing` overrides the double's `framing` for this stream.
    """

    events: Sequence[Any]
    done: bool = False
    framing: Framing | None = None

    def all_events(self, *, cut: int | None = None) -> list[Event]:
        """The events to send, `[DONE]` included; `cut`: only the first `1 + cut`, no `[DONE]`."""
        events = [e if isinstance(e, Event) else Event(e) for e in self.events]
        if cut is not None:
            return events[: 1 + cut]
        return [*events, DONE] if self.done else events


def _payload(data: Any) -> tuple[bytes, bool]:
    """The bytes of `data`, and whether they are encoded JSON (so safe to split)."""
    if isinstance(data, bytes):
        return data, False
    if isinstance(data, str):
        return data.encode(), False
    return _json(data), True


def split_json(payload: bytes) -> list[bytes]:
    """`payload` cut in two after its first `,` or `:` outside a string (else after its first
    byte, for `{`/`[`), so that joining the two with "\\n" is still the same JSON value."""
    in_string = escaped = False
    for i, byte in enumerate(payload):
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in b",:" and i + 1 < len(payload):
            return [payload[: i + 1], payload[i + 1 :]]
    if len(payload) > 1 and payload[:1] in (b"{", b"["):
        return [payload[:1], payload[1:]]
    return [payload]


def encode_event(event: Event, number: int, framing: Framing) -> list[bytes]:
    """The bytes of event `number` (from 1), as one write or, with `framing.split`, two."""
    eol = b"\r\n" if framing.crlf else b"\n"
    sep = b":" if framing.compact else b": "
    lines: list[bytes] = []
    if framing.comments:
        lines.append(b": keep-alive")
    if name := event.event or framing.event:
        lines.append(b"event" + sep + name.encode())
    if event.id is not None or framing.ids:
        lines.append(b"id" + sep + (event.id if event.id is not None else str(number)).encode())
    payload, is_json = _payload(event.data)
    pieces = split_json(payload) if framing.multiline and is_json else [payload]
    lines.extend(b"data" + sep + piece for piece in pieces)
    block = eol.join(lines) + eol + eol
    if framing.comments:
        block = b": ping" + eol + eol + block  # a block with no data: a reader dispatches nothing
    if framing.split and len(block) > 1:
        found = block.find(framing.split_after) if framing.split_after else -1
        cut = found + len(framing.split_after or b"") if found >= 0 else len(block) // 2
        return [block[:cut], block[cut:]]
    return [block]
