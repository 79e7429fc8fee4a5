"""Anthropic's Messages API (Claude), as its API reference describes it.

Authentication: `x-api-key: <ANTHROPIC_API_KEY>` (the bare key) and
`anthropic-version: <ANTHROPIC_VERSION>` (default `2023-06-01`) on every request; the base
URL is `ANTHROPIC_BASE_URL` (default `https://api.anthropic.com`).

Completions: `POST /v1/messages` with `{model, max_tokens, system?, messages}`.

- The job's `system` messages, joined in order with a blank line, are the top-level
  `system` prompt; every other message goes to `messages` as `{role, content}`.
- `max_tokens` is required: the job's `extra_args` value, else the operator's default
  (`CSS_INF_WORKFLOW_KW_ARGS`), else `ANTHROPIC_MAX_TOKENS` (default 1024).
- The answer is a message whose `content` is a list of blocks; the text is the
  concatenated `text` of the blocks of type `text`.
- An answer without text, streamed or not, is an error naming its `stop_reason`. One that
  another try would repeat is not retried: `refusal`, `max_tokens` (thinking spent every
  output token), `model_context_window_exceeded`, `tool_use`, `pause_turn`. An empty
  `end_turn` or `stop_sequence`, or none, is retried: a new sample may hold text.
- Streamed (`"stream": true`), the answer is server-sent events named by their `type`:
  `message_start`, `content_block_start`, `ping`, `content_block_delta`,
  `content_block_stop`, `message_delta`, `message_stop`. The text is the `delta.text` of
  each `content_block_delta` whose `delta.type` is `text_delta`; an `error` event
  (`{"type": "error", "error": {"type": "overloaded_error", "message": ...}}`) ends it.
  The stream ends by closing (no `[DONE]`); its `stop_reason` is its `message_delta`'s.
- Usage: the message's `usage` (`input_tokens`, `output_tokens`); streamed, the
  `message.usage` of `message_start` and the running `usage` of each `message_delta`.

Typed answers: one forced tool, `tools: [{"name": "answer", "description", "input_schema":
<the answer's schema>}]` with `tool_choice: {"type": "tool", "name": "answer"}`; the answer is
the `input` of the message's `tool_use` block named `answer`, passed on verbatim as JSON. A
message without that block is an error naming its `stop_reason`, retried as for text.
(Anthropic refuses a forced tool with extended thinking: such a job's `thinking` option
makes it a 400 from Anthropic.)

Errors are `{"type": "error", "error": {"type", "message"}}`; 529 (`overloaded_error`) is
retried like a 503. There is no embeddings endpoint.
"""

from __future__ import annotations

from typing import Any

import msgspec

from css_core import (
    CSSRequest,
    ProviderBadResponse,
    ProviderCall,
    ProviderHTTPError,
    ProviderSpec,
    Settings,
    Usage,
    hookimpl,
)

__all__ = ("MODELS",)

MODELS = (
    "claude-opus-4-1", "claude-opus-4-0", "claude-sonnet-4-5", "claude-sonnet-4-0", "claude-haiku-4-5",
    "claude-3-7-sonnet-latest", "claude-3-5-haiku-latest",
)
# The stop reasons another try would repeat, and what the caller can do about them
_FINAL = {
    "max_tokens": "the output token limit was spent before any text (thinking counts): allow more max_tokens",
    "model_context_window_exceeded": "the model's context window is full: send a shorter conversation",
    "tool_use": "the model asked to call a tool, which this service does not run",
    "pause_turn": "the model paused a long turn, which this service does not resume",
}
# the one tool a typed job's request offers, and forces
_ANSWER_TOOL = "answer"
_ANSWER_DESCRIPTION = "Give your answer to the conversation, as this tool's input."


class _Block(msgspec.Struct):  # a content block, or an event's delta
    type: str = ""
    text: str = ""
    stop_reason: str | None = None  # a `message_delta`'s
    name: str = ""  # a `tool_use` block's
    # kept as sent: a typed answer's JSON goes on to be checked as the provider wrote it
    input: msgspec.Raw = msgspec.Raw()


class _Usage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0


class _Message(msgspec.Struct):
    content: list[_Block] = []
    stop_reason: str | None = None
    usage: _Usage | None = None


class _Error(msgspec.Struct):
    type: str = "error"
    message: str = ""

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


class _Event(msgspec.Struct):
    type: str
    delta: _Block | None = None
    error: _Error | None = None
    message: _Message | None = None
    usage: _Usage | None = None


class _ErrorBody(msgspec.Struct):
    error: _Error


_message = msgspec.json.Decoder(_Message)
_event = msgspec.json.Decoder(_Event)
_error = msgspec.json.Decoder(_ErrorBody)


@hookimpl
def css_provider(config: Settings) -> ProviderSpec:
    return ProviderSpec(
        name="ANTHROPIC",
        onchain_id=3,
        api_key_env="ANTHROPIC_API_KEY",
        default_base_url="https://api.anthropic.com",
        endpoints=("completions",),
        models=MODELS,
        retryable_statuses=frozenset({408, 409, 429, 500, 502, 503, 504, 529}),
        auth_header="x-api-key",
        auth_scheme=None,
        headers={"anthropic-version": config.get("ANTHROPIC_VERSION") or "2023-06-01"},
        default_options={"max_tokens": config.integer("ANTHROPIC_MAX_TOKENS", 1024)},
        job_fields=frozenset({"model", "messages", "system", "stream"}),
    )


@hookimpl
def css_encode_params(request: CSSRequest) -> ProviderCall | None:
    if request.endpoint != "completions":
        return None
    system = [m.content for m in request.messages if m.role == "system"]
    body = {
        "model": request.model,
        **({"system": "\n\n".join(system)} if system else {}),
        "messages": [{"role": m.role, "content": m.content} for m in request.messages if m.role != "system"],
        **({"stream": True} if request.stream else {}),
    }
    return ProviderCall("/v1/messages", body)


@hookimpl
def css_encode_answer_format(request: CSSRequest, schema: dict[str, Any]) -> dict[str, Any] | None:
    if request.endpoint != "completions":
        return None
    tool = {"name": _ANSWER_TOOL, "description": _ANSWER_DESCRIPTION, "input_schema": schema}
    return {"tools": [tool], "tool_choice": {"type": "tool", "name": _ANSWER_TOOL}}


def _no_text(stop_reason: str | None, missing: str = "text") -> ProviderBadResponse:
    if stop_reason == "refusal":
        return ProviderBadResponse("ANTHROPIC refused to answer (stop_reason: refusal)", retryable=False)
    said = f"ANTHROPIC answered no {missing} (stop_reason: {stop_reason or 'none'})"
    # a typed job asks for a tool call: `tool_use` without the answer's is no cause that would repeat
    final = _FINAL.get(stop_reason or "") if missing == "text" or stop_reason != "tool_use" else None
    if final:
        return ProviderBadResponse(f"{said}; {final}", retryable=False)
    return ProviderBadResponse(said)


@hookimpl
def css_postprocess(request: CSSRequest, body: bytes) -> str:
    message = _message.decode(body)
    if request.answer_schema is not None:
        for block in message.content:
            if block.type == "tool_use" and block.name == _ANSWER_TOOL and len(block.input):
                return bytes(block.input).decode()
        raise _no_text(message.stop_reason, f"typed answer (no `{_ANSWER_TOOL}` tool call)")
    if text := "".join(block.text for block in message.content if block.type == "text"):
        return text
    raise _no_text(message.stop_reason)


@hookimpl
def css_parse_stream_event(data: bytes) -> str | None:
    event = _event.decode(data)
    if event.type == "error":
        raise ProviderBadResponse(f"ANTHROPIC stream error: {event.error or 'no details'}")
    if event.type == "content_block_delta" and event.delta is not None and event.delta.type == "text_delta":
        return event.delta.text
    return None


@hookimpl
def css_stream_without_text(events: list[bytes]) -> None:
    for data in reversed(events):
        event = _event.decode(data)
        if event.type == "message_delta" and event.delta is not None and event.delta.stop_reason:
            raise _no_text(event.delta.stop_reason)


@hookimpl
def css_usage(request: CSSRequest, data: bytes) -> Usage | None:
    if request.stream:
        event = _event.decode(data)
        usage = event.message.usage if event.message is not None else event.usage
    else:
        usage = _message.decode(data).usage
    return None if usage is None else Usage(usage.input_tokens, usage.output_tokens)


@hookimpl
def css_read_error(status: int, body: bytes, retry_after: float | None) -> ProviderHTTPError | None:
    try:
        error = _error.decode(body).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None  # not Anthropic's shape (a proxy's page): the core reads it as text
    return ProviderHTTPError(status, str(error), retry_after)
