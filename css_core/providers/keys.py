"""A provider's API keys on one worker: whose turn it is, which cool down, which are set aside.

Keys are used in turn (round robin over the keys usable now). A key answered with 429
cools down for a while; a key the provider refused (401, 403, or a plugin's
`key_refused`) is set aside for `CSS_KEY_DISABLE_SECONDS`. Both are pauses: a paused key
is skipped until its pause ends. The pool never sets aside its last key that is not set
aside, so a job always has a key to try (and a provider whose every key is refused keeps
answering 502 as it did, without a restart once a key is fixed).

The state is the worker's own: with several workers, each learns of a cooling or refused
key by itself. Keys are named by their position (`key 2 of 3`), never by any part of them;
`scrubber` removes a key from a provider's text, even masked.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection

__all__ = ("KeyPool", "scrubber")

# a key masked by a provider: the key's characters either side of a run of asterisks,
# bullets or an ellipsis (`sk-****abcd`, `sk-proj-ab…yz12`)
_MASKED = re.compile(r"([\w-]*)(?:\*+|•+|\.{3,}|…)([\w-]*)")
_SHOWN = 4  # this many of a key's first or last characters next to a mask identify it


class KeyPool:
    """The keys of one provider on one worker, by position (0-based here, 1-based in messages).

    A provider that needs no key has a pool of one anonymous slot (`total` 0), so that a
    429 still cools it down.
    """

    def __init__(self, total: int, disable_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.size = max(total, 1)
        self.disable_seconds = disable_seconds
        self.clock = clock
        self.paused = 0  # keys with a pause set (some may have ended): none lets `pick` skip every check
        self._until = [0.0] * self.size  # when each key's pause ends; zero: not paused
        self._aside = [False] * self.size  # whether the pause is a set-aside (else a cool-down)
        self._turn = 0

    def name(self, key: int) -> str:
        """How messages name a key: `key 2 of 3`."""
        return f"key {key + 1} of {self.size}"

    def pick(self, refused: Collection[int] | None = None) -> int:
        """The key for the next attempt, in turn; `refused`: keys this job saw refused.

        When no key is usable now (another job paused the one this job was waiting for),
        the key whose cool-down ends first: its call may be answered 429 again, which is
        better than a job that never tries.
        """
        if not self.paused and not refused:
            key = self._turn
            self._turn = key + 1 if key + 1 < self.size else 0
            return key
        now = self._expire()
        for step in range(self.size):
            key = (self._turn + step) % self.size
            if not self._until[key] and (not refused or key not in refused):
                self._turn = key + 1 if key + 1 < self.size else 0
                return key
        waiting = self._waiting(refused) or [self._turn]
        return min(waiting, key=lambda key: self._until[key] - now)

    def wait(self, refused: Collection[int] | None = None) -> float | None:
        """Seconds until a key this job may use is free: 0 when one is now; `None` when every
        key is refused by this job or set aside."""
        if not self.paused and not refused:
            return 0.0
        now = self._expire()
        waiting = self._waiting(refused)
        if not waiting:
            return None
        return max(0.0, min(self._until[key] for key in waiting) - now)

    def other(self, key: int, refused: Collection[int] | None) -> bool:
        """Whether a key other than `key` is left to this job (usable now or cooling down)."""
        self._expire()
        return any(other != key for other in self._waiting(refused))

    def cool(self, key: int, seconds: float) -> None:
        """Pause `key` for `seconds` after a 429 (a longer pause already set stays)."""
        until = self.clock() + seconds
        if until > self._until[key] and not self._aside[key]:
            self._pause(key, until)

    def set_aside(self, key: int) -> bool:
        """Pause a refused key for `disable_seconds`, unless it is the last key not set aside
        (or setting aside is off); whether it was set aside."""
        if self.disable_seconds <= 0 or self._aside[key]:
            return False
        self._expire()
        if not any(other != key and not self._aside[other] for other in range(self.size)):
            return False
        self._pause(key, self.clock() + self.disable_seconds)
        self._aside[key] = True
        return True

    def usable(self) -> int:
        """How many keys are usable now (neither cooling down nor set aside)."""
        if not self.total:
            return 0
        self._expire()
        return self.total - self.paused

    def _pause(self, key: int, until: float) -> None:
        if not self._until[key]:
            self.paused += 1
        self._until[key] = until

    def _expire(self) -> float:
        """End the pauses whose time has come; the time now."""
        now = self.clock()
        if self.paused:
            for key, until in enumerate(self._until):
                if until and until <= now:
                    self._until[key], self._aside[key] = 0.0, False
                    self.paused -= 1
        return now

    def _waiting(self, refused: Collection[int] | None) -> list[int]:
        """The keys this job may still use, now or after their cool-down."""
        return [key for key in range(self.size) if not self._aside[key] and (not refused or key not in refused)]


def scrubber(keys: tuple[str, ...]) -> Callable[[str], str]:
    """A function removing `keys` from a text: whole, or masked with their first or last
    characters shown."""

    def masked(match: re.Match[str]) -> str:
        before, after = match.group(1), match.group(2)
        for key in keys:
            if (len(before) >= _SHOWN and key.startswith(before)) or (len(after) >= _SHOWN and key.endswith(after)):
                return "***"
        return match.group(0)

    def scrub(text: str) -> str:
        for key in keys:
            text = text.replace(key, "***")
        return _MASKED.sub(masked, text) if keys else text

    return scrub
