"""The typed values a provider plugin receives and returns.

These are the plugin-facing API: a plugin imports them from `css_core`, never from a
submodule. They are validated once, at the edge, and immutable after that.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

__all__ = (
    "JOB_FIELDS",
    "RETRYABLE_STATUSES",
    "CSSRequest",
    "Message",
    "PreparedCall",
    "ProviderCall",
    "ProviderSpec",
    "Result",
    "Usage",
)

#: What a job produces: a completion's text, or an embedding.
Result = str | list[float]

#: The statuses retried unless a provider says otherwise: timeouts, conflicts, rate limits, 5xx.
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})

#: Body fields built from the job itself, which a job's `extra_args` may not replace.
JOB_FIELDS = frozenset({"model", "messages", "input", "prompt", "stream", "stream_options"})


class Message(msgspec.Struct, frozen=True):
    """One turn of a conversation."""

    role: str
    content: str


class CSSRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One job, whatever its source: what to ask which provider.

    `messages` is set for completions, `input` for embeddings. `stream` is true when the
    answer is relayed as a stream: the plugin then asks its provider to stream. `extra_args`
    are the job's options, which the core merges into the body after the plugin has encoded it.
    `answer_schema` is set for a completion whose answer is typed: the JSON Schema of the
    object the answer must be (`css_encode_answer_format` asks the provider for it); `None`
    for a plain job.
    """

    provider: str
    endpoint: str
    model: str
    messages: tuple[Message, ...] = ()
    input: str | None = None
    stream: bool = False
    extra_args: dict[str, Any] = {}
    answer_schema: dict[str, Any] | None = None


class ProviderSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What a plugin tells the core about its provider, once, at start-up.

    - `name` is the provider's name in requests (e.g. "OPENAI"), `onchain_id` its id in the
      on-chain encoding (0-255).
    - The API key is read from `api_key_env` (several keys, comma-separated, form a pool) and
      sent as `auth_header: <auth_scheme> <key>`, or the bare key when `auth_scheme` is
      `None` (e.g. `x-api-key`). `headers` are sent with every call (e.g. an API version).
    - The base URL is read from `base_url_env` (by default `<name>_BASE_URL`), else
      `default_base_url`. `None` (no public default: Azure, a self-hosted server, a regional
      endpoint): while the key is set and the variable is not, start-up stops with a
      `ConfigError` naming the variable; while the key is not set, the provider is not served.
    - `models` is the catalogue `/service-resources` shows (discovery only: a request for
      another model is still forwarded).
    - A status in `retryable_statuses` is retried; 401 and 403 mean the key was refused.
    - `default_options` are body fields the provider needs unless the operator or the job
      sets them (e.g. Anthropic's `max_tokens`); `job_fields` are the body fields the plugin
      builds from the job, which `extra_args` may not replace (a 400 says so).
    - `settings` are the plugin's own settings, read once in `css_provider` (e.g. an API
      version from an environment variable, with its default): every per-job hook receives
      `spec`, so it reads them as `spec.settings[...]` instead of from a module global. The
      core never reads them. They are shared by every job at once: read them, never change them.
    """

    name: str
    onchain_id: int
    api_key_env: str
    default_base_url: str | None = None
    endpoints: tuple[str, ...] = ("completions",)
    models: tuple[str, ...] = ()
    base_url_env: str | None = None
    retryable_statuses: frozenset[int] = RETRYABLE_STATUSES
    auth_header: str = "authorization"
    auth_scheme: str | None = "Bearer"
    headers: dict[str, str] = {}
    default_options: dict[str, Any] = {}
    job_fields: frozenset[str] = JOB_FIELDS
    settings: Mapping[str, Any] = {}

    @property
    def base_url_variable(self) -> str:
        return self.base_url_env or f"{self.name}_BASE_URL"


class ProviderCall(msgspec.Struct, frozen=True):
    """The provider request a plugin encodes: a path below the base URL, a JSON body, and
    the query string the plugin owns (e.g. Gemini's `{"alt": "sse"}`).

    Only these are the plugin's (and the job's options are merged into the body); the core
    owns the base URL, the headers and the key. A job's value put into `path` must be quoted
    (`urllib.parse.quote(value, safe="")`); the path and the query are checked before sending.
    """

    path: str
    body: dict[str, Any]
    query: dict[str, str] = {}


class PreparedCall(msgspec.Struct, frozen=True):
    """One attempt's provider request, ready to send: absolute URL, its own headers, JSON body,
    and the seconds the attempt may wait to connect and for each read (`CSS_REQUEST_TIMEOUT`).

    A call reads no more of the answer than `max_answer_bytes` (`CSS_MAX_ANSWER_BYTES`), and
    no streamed event longer than `max_event_bytes` (`CSS_MAX_EVENT_BYTES`): a plugin that
    makes its own call keeps to them too, raising `ProviderBadResponse(..., retryable=False)`."""

    url: str
    headers: dict[str, str]
    content: bytes
    timeout: float = 60.0
    max_answer_bytes: int = 8 * 1024 * 1024
    max_event_bytes: int = 1024 * 1024


class Usage(msgspec.Struct, frozen=True):
    """The tokens an answer used, as its provider reports them (`css_usage`)."""

    input_tokens: int = 0
    output_tokens: int = 0
