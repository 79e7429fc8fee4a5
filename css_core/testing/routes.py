"""What the double records of a request, and the routes that answer it.

A `Route` is all a test needs to play a provider's HTTP/JSON API: a method, a regex on the
end of the path (so any base-URL prefix works), optionally query parameters, and an answer:
a JSON value, a `Stream` of server-sent events, or a function of the `RecordedRequest`
returning either. The built-in OpenAI, Anthropic and Gemini routes are made of nothing
else (`css_core.testing.openai_api`, `anthropic_api`, `gemini_api`).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ("Replies", "RecordedRequest", "Reject", "Route", "split_text")


class Replies(Protocol):
    """What a provider's routes ask the double that serves them (`ProviderDouble` is one)."""

    stream_chunks: int  # how many text events a stream has
    reply: str | None  # the text of every completion (and a typed one's JSON); None: the default answers

    def text_for(self, model: str, last_content: str) -> str:
        """The completion's text for a model and the conversation's last message."""
        ...

    def embedding_for(self, text: str) -> list[float]:
        """The embedding of a text."""
        ...


@dataclass
class RecordedRequest:
    """One request as the double received it (recorded before it is answered).

    `path` is the path alone, as sent (still percent-encoded), never the query: the same
    string a `Route.path` is matched against. The query string is in `query`, decoded, and
    `target` is the request line's target exactly as sent (path, `?` and query).
    """

    method: str
    path: str  # the path, without the query string
    headers: dict[str, str]  # lower-case names
    body: bytes
    json: Any  # the decoded body, or None if empty or not JSON
    query: dict[str, str] = field(default_factory=dict)  # the query parameters, decoded
    params: dict[str, str] = field(default_factory=dict)  # the matched route's named groups
    connection: int = 0  # which accepted connection carried it (1, 2, ...)
    target: str = ""  # the request target as sent: the path and any `?query`

    def __post_init__(self) -> None:
        # a request built by hand (to call an answer function directly) may give its whole
        # target as `path`: it reads as the double's own records do
        self.target = self.target or self.path
        self.path, _, query = self.path.partition("?")
        if query and not self.query:
            self.query = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))

    @property
    def url_path(self) -> str:
        """The path without the query string: the same as `path` (kept for older tests)."""
        return self.path


class Reject(Exception):
    """Raise from an answer function to answer an error instead.

    `body` is sent as is (JSON-encoded unless `bytes`); without it, the double's error
    shape (`ProviderDouble.error_body`) is built from `status` and `message`.
    """

    def __init__(self, status: int, message: str | None = None, *, body: Any = None) -> None:
        super().__init__(message or f"HTTP {status}")
        self.status, self.message, self.body = status, message, body


@dataclass(frozen=True)
class Route:
    """A method and path the double answers, and what it answers.

    - `path`: a regular expression matched against the END of `RecordedRequest.path`, the
      path without the query string (a trailing `/` ignored), e.g. `r"/v1/messages"` or
      `r"/models/(?P<model>[^/:]+):generateContent"`; its named groups end up in
      `RecordedRequest.params`. Start it with `^` to anchor it at the start too.
    - `query`: parameters the query string (`RecordedRequest.query`) must hold, each with
      this value, e.g. `{"alt": "sse"}`.
    - `answer`: a JSON value (sent with `status`), a `Stream`, `bytes` (sent verbatim as
      JSON), or a function of the `RecordedRequest` returning any of these (it may raise
      `Reject`).
    - `unauthorized`: the `(status, body)` to answer a missing or wrong key with; by default
      the double's (401 and its error shape).
    """

    method: str
    path: str
    answer: Any
    query: Mapping[str, str] = field(default_factory=dict)
    status: int = 200
    unauthorized: tuple[int, Any] | None = None
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_pattern", re.compile(f"(?:{self.path})\\Z"))

    def match(self, method: str, path: str, query: Mapping[str, str]) -> dict[str, str] | None:
        """The named groups if this route answers `method` `path?query`, else None."""
        if method.upper() != self.method.upper():
            return None
        found = self._pattern.search(path.rstrip("/") or "/")
        if found is None or any(query.get(name) != value for name, value in self.query.items()):
            return None
        return {name: value for name, value in found.groupdict().items() if value is not None}

    def respond(self, request: RecordedRequest) -> Any:
        """The answer to `request`: a JSON value, `bytes` or a `Stream`."""
        return self.answer(request) if callable(self.answer) else self.answer


def split_text(text: str, n: int) -> list[str]:
    """`n` consecutive pieces of `text` (some may be empty) whose concatenation is `text`:
    the content of a stream's `n` text events."""
    n = max(1, n)
    size, extra = divmod(len(text), n)
    starts = [i * size + min(i, extra) for i in range(n + 1)]
    return [text[starts[i] : starts[i + 1]] for i in range(n)]
