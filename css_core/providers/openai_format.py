"""OpenAI's chat-completions and embeddings wire format, which many providers share.

A plugin for an OpenAI-compatible provider (OpenAI itself, PerplexityAI, and most
hosted or local model servers) builds on these instead of redefining the messages.

An answer without text is an error naming why (`no_text`), streamed or not. It is retried
only when another try could differ: a refusal, a content filter, a length stop or a tool
call would come back the same, so it is not retried (a second call would be billed for
nothing). No choices, or an empty text that ended normally (`stop`) or without a reason, is
retried: the provider gave no cause that would repeat, and a new sample may hold text.

A typed answer (a job with an answer type) is asked for with `json_schema_format`, OpenAI's
structured outputs; the answer's JSON is then the message's content, read by `chat_result`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from css_core.errors import ProviderBadResponse
from css_core.types import CSSRequest, ProviderCall, Usage

__all__ = (
    "chat_call", "chat_result", "chat_stream_text", "chat_stream_without_text", "embeddings_call",
    "embeddings_result", "json_schema_format", "no_text", "usage",
)

# The finish reasons another try would repeat, and what the caller can do about them
_FINAL = {
    "length": "the output token limit was spent before any text (a reasoning model thinks first): allow more tokens",
    "content_filter": "the provider's content filter withheld the text",
    "tool_calls": "the model asked to call a tool, which this service does not run",
    "function_call": "the model asked to call a function, which this service does not run",
}


class _Message(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None


class _Choice(msgspec.Struct):
    message: _Message
    finish_reason: str | None = None


class _ChatCompletion(msgspec.Struct):
    choices: list[_Choice]


class _Delta(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None


class _StreamChoice(msgspec.Struct):
    # a choice may come without a `delta`, or with a null one (Azure's asynchronous content
    # filter annotates a stream so): it carries no text
    delta: _Delta | None = None
    finish_reason: str | None = None


class _ChatCompletionChunk(msgspec.Struct):
    choices: list[_StreamChoice] = []


class _Embedding(msgspec.Struct):
    embedding: list[float]


class _Embeddings(msgspec.Struct):
    data: list[_Embedding]


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _WithUsage(msgspec.Struct):
    usage: _Usage | None = None


_chat = msgspec.json.Decoder(_ChatCompletion)
_chunk = msgspec.json.Decoder(_ChatCompletionChunk)
_embeddings = msgspec.json.Decoder(_Embeddings)
_usage = msgspec.json.Decoder(_WithUsage)


def chat_call(request: CSSRequest, path: str = "/chat/completions", *, stream_usage: bool = False) -> ProviderCall:
    """`POST {base}/chat/completions` with `{model, messages}`, and `"stream": true` for a stream.

    `stream_usage`: a stream also asks for its usage (`"stream_options": {"include_usage":
    true}`), which OpenAI sends in a last chunk without choices; a provider that reports
    usage in its chunks unasked, or refuses the field, leaves it out.
    """
    messages = [{"role": m.role, "content": m.content} for m in request.messages]
    body: dict[str, Any] = {"model": request.model, "messages": messages}
    if request.stream:
        body["stream"] = True
        if stream_usage:
            body["stream_options"] = {"include_usage": True}
    return ProviderCall(path, body)


def json_schema_format(schema: dict[str, Any], name: str = "answer", *, strict: bool = True) -> dict[str, Any]:
    """The body fields asking for an answer of JSON following `schema` (OpenAI's structured outputs),
    for `css_encode_answer_format`: `{"response_format": {"type": "json_schema", "json_schema":
    {"name": name, "strict": true, "schema": schema}}}`.

    `strict=False` leaves `strict` out, for a provider that does not take it (Perplexity). The
    answer's JSON arrives as the message's content: `chat_result` reads it like any text.
    """
    format_: dict[str, Any] = {"name": name, "schema": schema}
    if strict:
        # strict: the provider's decoder keeps to the schema, instead of only being shown it
        format_ = {"name": name, "strict": True, "schema": schema}
    return {"response_format": {"type": "json_schema", "json_schema": format_}}


def no_text(name: str, finish_reason: str | None = None, *, refusal: str | None = None,
            no_choices: bool = False) -> ProviderBadResponse:
    """The error for an answer of provider `name` without text, naming why: its `refusal`, its
    `finish_reason`, or that it held `no_choices`.

    A refusal and the finish reasons `length`, `content_filter`, `tool_calls` and
    `function_call` are not retried (`retryable=False`): another try would answer the same.
    Any other reason (`stop`, a server's own), none, or no choices at all is retried.
    """
    if refusal:
        return ProviderBadResponse(f'{name} refused to answer ("{refusal}")', retryable=False)
    if no_choices:
        return ProviderBadResponse(f"{name} answered no text (no choices)")
    said = f"{name} answered no text (finish_reason: {finish_reason or 'none'})"
    if finish_reason in _FINAL:
        return ProviderBadResponse(f"{said}; {_FINAL[finish_reason]}", retryable=False)
    return ProviderBadResponse(said)


def chat_result(body: bytes, name: str = "the provider") -> str:
    """`choices[0].message.content` of a chat completion; without text, raises `no_text`
    naming the provider `name` and why."""
    choices = _chat.decode(body).choices
    if not choices:
        raise no_text(name, no_choices=True)
    choice = choices[0]
    if choice.message.content:
        return choice.message.content
    raise no_text(name, choice.finish_reason, refusal=choice.message.refusal)


def chat_stream_text(data: bytes) -> str | None:
    """`choices[0].delta.content` of a streamed chat-completion chunk."""
    choices = _chunk.decode(data).choices
    delta = choices[0].delta if choices else None
    return delta.content if delta is not None else None


def chat_stream_without_text(name: str, events: list[bytes]) -> None:
    """Raise `no_text` for a chat-completion stream that carried no text, given its last
    events: naming its refusal (the `delta.refusal` pieces, so a long one by its end), its
    last `finish_reason`, or that none of them held a choice. Return `None` when they name
    no reason (a stream cut before its end)."""
    choices = [choice for data in events for choice in _chunk.decode(data).choices[:1]]
    refusal = "".join(choice.delta.refusal or "" for choice in choices if choice.delta is not None)
    reason = next((choice.finish_reason for choice in reversed(choices) if choice.finish_reason), None)
    if refusal or reason or not choices:
        raise no_text(name, reason, refusal=refusal, no_choices=not choices)


def embeddings_call(request: CSSRequest, path: str = "/embeddings") -> ProviderCall:
    """`POST {base}/embeddings` with `{model, input}`."""
    return ProviderCall(path, {"model": request.model, "input": request.input})


def embeddings_result(body: bytes, name: str = "the provider") -> list[float]:
    """`data[0].embedding` of an embeddings answer. An empty `data` raises
    `ProviderBadResponse` naming the provider `name`; it is retried, as no reason is given."""
    data = _embeddings.decode(body).data
    if not data:
        raise ProviderBadResponse(f"{name} answered no embedding (empty data)")
    return data[0].embedding


def usage(data: bytes) -> Usage | None:
    """`usage.prompt_tokens` and `usage.completion_tokens` of an answer or a streamed chunk."""
    found = _usage.decode(data).usage
    return None if found is None else Usage(found.prompt_tokens, found.completion_tokens)
