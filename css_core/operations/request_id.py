"""Request ids: every answer carries one in `x-request-id`, and the job's log lines name it.

A request's own `x-request-id` (1-128 characters of `A-Za-z0-9._-`) is kept; any other
value, or none, is replaced by a new id (32 random hex digits). The id is kept in the
request's `scope["state"]`, which every copy of the scope shares, so the job route and the
hook that adds the header to the answer see the same id. `current` holds it for the log
lines of the task serving it.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any

__all__ = ("HEADER", "add_header", "current", "request_id")

HEADER = b"x-request-id"
_VALID = re.compile(rb"[A-Za-z0-9._-]{1,128}")
_STATE_KEY = "css.request_id"

#: The id of the request the running task serves, for log lines (`css_core.operations.logs`).
current: ContextVar[str | None] = ContextVar("css_request_id", default=None)


def request_id(scope: MutableMapping[str, Any]) -> str:
    """The request's id: its own valid `x-request-id`, else a new one; the same on every call."""
    state = scope.setdefault("state", {})
    known: str | None = state.get(_STATE_KEY)
    if known is None:
        given = next((value for name, value in scope["headers"] if name == HEADER), None)
        known = given.decode("ascii") if given is not None and _VALID.fullmatch(given) else os.urandom(16).hex()
        state[_STATE_KEY] = known
    return known


def add_header(message: Any, scope: Any) -> None:  # an ASGI `http.response.start` message and its scope
    """Put the request's id on the start of an HTTP answer (`app.py` does, for every answer, errors included)."""
    # a new list: a route may send a list it shares between answers
    message["headers"] = [*message.get("headers", ()), (HEADER, request_id(scope).encode())]
