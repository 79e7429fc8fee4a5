"""Whether the worker serves (`GET /health`) and whether it should be sent jobs (`GET /ready`).

Neither calls a provider, needs the bearer token, or says anything of the keys or the
configuration. `/health` answers as long as the worker answers at all. `/ready` answers
503 when no provider is served (no plugin installed, no key set) or once the worker has
been told to stop: uvicorn installs its SIGTERM and SIGINT handlers before the app starts,
and `Readiness.watch_signals` chains a handler of its own in front of them, so the worker
knows a stop has begun while it still finishes the jobs in flight.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from css_core.errors import NotReady
from css_core.providers.registry import Registry

__all__ = ("Readiness",)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_Handler = Callable[[int, FrameType | None], Any] | int | None


class Readiness:
    """What `/ready` answers for one worker."""

    def __init__(self, registry: Registry) -> None:
        self.installed = bool(registry.providers)
        self.served = any(provider.served for provider in registry.providers)
        self.draining = False
        self._previous: dict[int, _Handler] = {}

    def check(self) -> None:
        """Raise `NotReady` saying why, when the worker should not be sent jobs."""
        if self.draining:
            raise NotReady("the service is shutting down: it finishes the jobs in flight and takes no new ones")
        if not self.installed:
            raise NotReady("no provider plugin is installed: every job would be refused")
        if not self.served:
            raise NotReady("no provider is served: no provider's API key is set (see the start-up log)")

    def watch_signals(self) -> None:
        """Chain a handler that marks the worker as draining in front of the stop signals' handlers.

        Signal handlers belong to the main thread: a worker run in another thread (an
        in-process test) is not watched.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in _SIGNALS:
            self._previous[sig] = signal.signal(sig, self._stop)

    def _stop(self, sig: int, frame: FrameType | None) -> None:
        self.draining = True
        previous = self._previous.get(sig)
        if callable(previous):
            previous(sig, frame)
        elif previous == signal.SIG_DFL:  # nobody else handles it: it stops the process, as it would have
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)

    def close(self) -> None:
        """Put the previous handlers back (where this one is still in front of them)."""
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._stop:
                signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()
