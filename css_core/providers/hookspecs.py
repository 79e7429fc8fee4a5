"""The hooks a provider plugin implements.

A plugin is any module or object registered under the `css_inference_service` entry-point
group whose functions carry `@hookimpl`. A plugin that implements `css_provider` owns one
provider; the per-job hooks below are then called on that plugin only (and on plugins
that own no provider, such as the core's own HTTP call), never on another provider's
plugin. Every per-job hook is `firstresult`: the first non-`None` answer wins, and
plugins registered later, or marked `tryfirst`, are asked first.

Each hook may omit arguments it does not need, as with any pluggy hook. A plugin for a
JSON-over-HTTP provider implements `css_provider`, `css_encode_params` and
`css_postprocess` (and `css_parse_stream_event` to stream, `css_usage` to count tokens,
`css_encode_answer_format` to give typed answers); the others have defaults.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import httpx

    from css_core.config import Settings
    from css_core.errors import ProviderHTTPError
    from css_core.types import CSSRequest, PreparedCall, ProviderCall, ProviderSpec, Result, Usage

__all__ = (
    "PROJECT",
    "css_call",
    "css_call_stream",
    "css_encode_answer_format",
    "css_encode_options",
    "css_encode_params",
    "css_parse_stream_event",
    "css_postprocess",
    "css_provider",
    "css_read_error",
    "css_stream_without_text",
    "css_usage",
    "hookimpl",
    "hookspec",
)

#: The pluggy project name, which is also the entry-point group plugins register under.
PROJECT = "css_inference_service"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def css_provider(config: Settings) -> ProviderSpec | None:
    """Describe the provider this plugin serves.

    Called once per plugin at start-up, before any job. Return the `ProviderSpec` (name,
    on-chain id, endpoints, key variable and how the key is sent, fixed headers, default
    base URL or `None`, model catalogue, retryable statuses, default body options). `config`
    reads the plugin's own settings from the environment and `.env` (`config.get(name)`,
    `config.integer(name, default)`, ...); a value that does not parse raises `ConfigError`
    naming the variable, which stops start-up. Put what the per-job hooks need of them in
    `ProviderSpec.settings`: each of those hooks receives `spec`. `None`: this plugin serves
    no provider of its own; its other hooks then apply to every provider.

    Raise `ConfigError("...")` yourself for a setting the provider cannot run without (a
    missing or invalid value): start-up stops (the command line exits with status 2) with
    your message, so name the variable and what it expects. Two plugins returning the same
    name or on-chain id also stop start-up; a plugin whose hook raises anything else is
    reported by name and left out, and the others still serve.
    """


@hookspec(firstresult=True)
def css_encode_params(spec: ProviderSpec, request: CSSRequest) -> ProviderCall | None:
    """Encode a job as the provider's HTTP request: a path below the base URL, a JSON body,
    and the query string the plugin owns.

    Called once per job, before the first attempt. When `request.stream` is true, ask the
    provider to stream (a body flag such as `"stream": true`, or a path and query of its
    own): the core adds nothing for it. The core then merges the job's options (see
    `css_encode_options`) into the body and adds the URL, headers and key. Raise
    `css_core.InvalidJob` for a job the provider cannot take (its message reaches the caller
    as a 400). `None`: the plugin does not serve `request.endpoint` (a 400).
    """


@hookspec(firstresult=True)
def css_encode_options(spec: ProviderSpec, request: CSSRequest, options: dict[str, Any]) -> dict[str, Any] | None:
    """Place the job's options in the provider's body.

    Called once per job, after `css_encode_params`. `options` are the provider's
    `default_options`, under the operator's defaults for this provider and the job's
    endpoint (`CSS_INF_WORKFLOW_KW_ARGS`), under the job's `extra_args`. Return the fields to merge
    over the body (e.g. Gemini moves `temperature` into `generationConfig`). `None` (or no
    implementation): the options are merged into the body as given.
    """


@hookspec(firstresult=True)
def css_encode_answer_format(spec: ProviderSpec, request: CSSRequest, schema: dict[str, Any]) -> dict[str, Any] | None:
    """Ask the provider for an answer that is a JSON object following `schema`.

    Called once per typed job (one with an `answer_type`), after `css_encode_params` and
    before `css_encode_options`. `schema` (also `request.answer_schema`) is a JSON Schema
    object: every property required, no other property allowed. Return the body fields that
    ask for it (e.g. OpenAI's `response_format` with a `json_schema`, a forced tool): they
    are merged over the encoded body, and the job's options over them (an object both set,
    such as Gemini's `generationConfig`, is merged one level down). `None` (or no
    implementation): the provider cannot give typed answers; the job is a 400 naming it.

    For a typed job, `css_postprocess` returns the answer's JSON text (for a forced tool: the
    JSON of the tool call's arguments); the core checks it against the type inside the
    attempt, and retries an answer that does not fit.
    """


@hookspec(firstresult=True)
def css_call(
    spec: ProviderSpec, call: PreparedCall, client: httpx.AsyncClient, transport: httpx.AsyncBaseTransport
) -> Awaitable[bytes] | None:
    """Send one attempt of a non-streaming call and return an awaitable of the 2xx body.

    Called once per attempt; the workflow retries around it. The core implements it
    (`trylast`): it POSTs `call.content` to `call.url` with `call.headers` through
    `transport`, and has `css_read_error` read a non-2xx answer. Implement it only for a
    provider that is not JSON over HTTP, with `client` (the worker's pooled
    `httpx.AsyncClient`) or `transport` (the pool under it), within `call.timeout`; raise
    `ProviderHTTPError` for a non-2xx answer and `ProviderUnreachable` for a failed
    connection (an `httpx.TransportError` counts as one). `None`: the next implementation
    makes the call.
    """


@hookspec(firstresult=True)
def css_call_stream(
    spec: ProviderSpec, call: PreparedCall, client: httpx.AsyncClient, transport: httpx.AsyncBaseTransport
) -> AsyncIterator[bytes] | AsyncIterator[list[bytes]] | None:
    """Send one attempt of a streaming call; return an async iterator of event payloads, or of
    lists of them (the events that arrived together, relayed together).

    Called once per attempt, until one yields its first text. The core implements it
    (`trylast`): it POSTs the call and yields, for each read of the answer, the `data` of
    the server-sent events it completed (the lines of a multi-line `data` joined with a
    newline; `id:` and comment lines ignored) until `data: [DONE]` or the end of the answer,
    as a list; when any of them has an `event:` line, as an `Events` list whose `names` are the
    events' names (`css_core.providers.http.Events`), which `css_parse_stream_event` receives.
    It reads no event longer than `call.max_event_bytes` and no error answer past
    `call.max_answer_bytes`. An implementation must raise
    `ProviderHTTPError` before yielding anything when the status is not 2xx, so the failure
    can be retried and answered as an error status. `None`: the next implementation does.
    """


@hookspec(firstresult=True)
def css_read_error(spec: ProviderSpec, status: int, body: bytes, retry_after: float | None) -> ProviderHTTPError | None:
    """Read a non-2xx answer of the provider as a `ProviderHTTPError`.

    Called once per failed attempt, with the answer's status, body and `Retry-After` (in
    seconds, `None` when absent). Return the error with the provider's own message, and,
    where the status alone does not say it, whether it is `retryable`, whether it means the
    service's key was refused (`key_refused`: answered 502 like a 401), and the retry hint
    the body carries. The core implements it (`trylast`) for OpenAI's error shape
    (`{"error": {"message": ...}}`) and plain text. `None`: the next implementation reads it.
    """


@hookspec(firstresult=True)
def css_postprocess(spec: ProviderSpec, request: CSSRequest, body: bytes) -> Result | None:
    """Extract the job's result from the provider's 2xx body.

    Called once per successful attempt, inside the retry loop. Return the completion's
    text or the embedding. For a body that cannot be read, raise `ProviderBadResponse`, or
    let one of these escape: `msgspec.DecodeError` / `msgspec.ValidationError`, `KeyError`,
    `IndexError`, `ValueError` (which includes the standard library's `json.JSONDecodeError`):
    the attempt is then retried as an unreadable answer. Any other exception (a `TypeError`,
    an `AttributeError`, ...) is a bug in the plugin: a 500 naming it, not retried.

    For a typed job (`request.answer_schema` set), return the answer's JSON text: the core
    reads it against the type, and an answer that does not fit is retried like an unreadable one.

    A readable answer without deliverable text (no choices, an empty or null text, a
    refusal, a blocked prompt) or an empty embedding: raise `ProviderBadResponse` naming the
    provider's reason (its finish or stop reason, the refusal's words, "no choices"), as
    `css_stream_without_text` does for a stream, so that both say the same. Pass
    `retryable=False` when another try would answer the same (a refusal, a content filter, a
    length stop, a tool call): the job then fails after one billable call. `None` (or "")
    is not such an error: the core's 502 cannot say why ("the answer of X holds no result").
    """


@hookspec(firstresult=True)
def css_parse_stream_event(spec: ProviderSpec, request: CSSRequest, data: bytes, event: str) -> str | None:
    """Return the text one streamed event carries.

    Called for each event payload of a stream, in order. `event` is the event's name, from its
    `event:` line ("message" when it has none, as server-sent events define it): a provider
    that says what an event is only there (`event: delta`, `event: error`) reads it from this
    argument, with no call of its own; a plugin that does not need it omits it. `None` (or "")
    means the event carries no text (a role-only delta, a keep-alive) and is skipped. Raise
    `ProviderBadResponse` for an event that cannot be read or that reports an error: before
    the first text it is retried like a 5xx; after it, the stream ends as a cut stream.
    """


@hookspec(firstresult=True)
def css_stream_without_text(spec: ProviderSpec, request: CSSRequest, events: list[bytes]) -> None:
    """Say why a stream ended before any of its events carried text.

    Called once per such attempt, with the payloads of the stream's last events (up to 8,
    in order), before the attempt fails. Raise `ProviderBadResponse` naming the provider's
    reason (a finish reason, a refusal, thinking that spent every output token), as
    `css_postprocess` does for the same answer unstreamed: the job's error quotes it. The
    attempt is retried unless you pass `retryable=False`, which a reason another try would
    repeat (a refusal, a content filter, a length stop, a tool call) should. `None` (no
    reason found, e.g. a stream cut before its end): the core's own message, "the stream
    ended without any text", retried.
    """


@hookspec(firstresult=True)
def css_usage(spec: ProviderSpec, request: CSSRequest, data: bytes) -> Usage | None:
    """Read the tokens an answer used, as the provider reports them.

    Called with the body of each successful non-stream answer, after `css_postprocess`. For
    a stream, called with each event payload that carries no text, and with the stream's
    last event: the stream's usage is the largest count of each kind its events report,
    since providers report running totals (OpenAI's last chunk when asked with
    `stream_options.include_usage`, Anthropic's `message_start` and `message_delta`, Gemini's
    `usageMetadata`). The tokens feed `gen_ai_client_token_usage` and the token budgets
    (`CSS_BUDGETS`). `None`: the data reports no usage. A failure to read it is logged and
    the job keeps its answer.
    """
