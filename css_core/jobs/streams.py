"""A started stream: its first text, the texts that follow, and who serves it.

`Pipeline.stream` returns one once the provider's first text has arrived. Iterating it
yields the text of each later read of the provider's answer: the events that arrived
together are relayed together, so a busy worker spends less per event the further it
falls behind. The stream holds its provider's in-flight slot and the provider's answer
until `aclose()`, which whoever relays it must call, however the relay ends.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from css_core.jobs._attempts import Attempts
from css_core.providers.registry import Provider

__all__ = ("Streamed", "close_events")

logger = logging.getLogger("css_core.jobs.pipeline")


async def close_events(events: Any) -> None:
    """Close a provider's stream of events, if it can be closed (a plugin's may not)."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


class Streamed:
    """The texts of a stream after its first, one per provider read that carried any."""

    __slots__ = ("_attempts", "_open", "_upstream", "deadline_at", "first", "model", "provider", "sent")

    def __init__(self, attempts: Attempts, upstream: AsyncIterator[Any], first: str) -> None:
        self._attempts, self._upstream, self._open = attempts, upstream, True
        self.first = first
        self.provider: Provider = attempts.provider
        self.model = attempts.request.model
        self.deadline_at = attempts.job.deadline_at  # the loop's time when the stream is cut
        self.sent = 1  # the texts handed out so far, the first included

    def __aiter__(self) -> Streamed:
        return self

    async def __anext__(self) -> str:
        attempts = self._attempts
        if (failure := attempts.failed_event) is not None:
            raise failure
        while True:
            try:
                events = await anext(self._upstream)
            except StopAsyncIteration:
                if attempts.last_event is not None:  # the last event's usage (Gemini's running total)
                    attempts.read_usage(attempts.last_event)
                raise
            except BaseException as exc:
                raise attempts.attempt_failure(exc) from None
            if text := attempts.texts_of(events):
                self.sent += 1
                return text

    def cut(self, exc: BaseException) -> None:
        """Log why the stream ended before its end (a cut connection, an unreadable event, the deadline)."""
        logger.warning("%s stream ended after %d chunk(s): %s", self.provider.spec.name, self.sent,
                       self._attempts.describe(exc))

    async def aclose(self) -> None:
        """Close the provider's answer, free the in-flight slot, report the usage; once."""
        if not self._open:
            return
        self._open = False
        self.provider.in_flight -= 1
        try:
            await close_events(self._upstream)
        finally:
            await self._attempts.report_usage()
