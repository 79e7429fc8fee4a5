"""Scripted misbehaviour: what real providers and networks do that tests must survive."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ("Fault",)


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, consumed by the next request (see `ProviderDouble.script`).

    Faults apply to every route, built-in or added by a test.
    """

    kind: str
    seconds: float = 0.0
    code: int = 0
    retry_after: str | None = None
    body: Any = None
    after_chunks: int = 0

    @staticmethod
    def status(code: int, *, retry_after: str | None = None, body: Any = None) -> Fault:
        """Answer `code` with the double's error body, or with `body` (`bytes` sent verbatim,
        anything else JSON-encoded, e.g. Gemini's `API_KEY_INVALID` error); `retry_after` is
        sent verbatim as `Retry-After`."""
        if not 200 <= code <= 599 or code in (204, 304):
            raise ValueError(f"status {code} cannot carry a body")
        return Fault("status", code=code, retry_after=retry_after, body=body)

    @staticmethod
    def hang(seconds: float) -> Fault:
        """Read the request, send nothing for `seconds`, then close the connection."""
        return Fault("hang", seconds=seconds)

    @staticmethod
    def delay(seconds: float) -> Fault:
        """Answer normally, but only after `seconds`."""
        return Fault("delay", seconds=seconds)

    @staticmethod
    def malformed_json() -> Fault:
        """Answer 200 with a JSON content type and a body that is not JSON."""
        return Fault("malformed_json")

    @staticmethod
    def reset() -> Fault:
        """Read the request, then abort the TCP connection (RST) without a response."""
        return Fault("reset")

    @staticmethod
    def cut_stream(after_chunks: int) -> Fault:
        """Stream the first event (OpenAI's role event, Anthropic's `message_start`, ...) and
        `after_chunks` more, then close the connection (no end of the chunked body, no
        `[DONE]`). A non-streaming answer gets half its body."""
        return Fault("cut_stream", after_chunks=after_chunks)
