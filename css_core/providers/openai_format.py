"""OpenAI's chat-completions and embeddings wire format, which many providers share.

A plugin for an OpenAI-compatible provider (OpenAI itself, PerplexityAI, and most
hosted or local model servers) builds on these instead of redefining the messages.
"""

from __future__ import annotations

from typing import Any

import msgspec

from css_core.errors import ProviderBadResponse
from css_core.types import CSSRequest, ProviderCall, Usage

__all__ = (
    "chat_call", "chat_result", "chat_stream_text", "chat_stream_without_text", "embeddings_call",
    "embeddings_result", "usage",
)


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message


class _ChatCompletion(msgspec.Struct):
    choices: list[_Choice]


class _Delta(msgspec.Struct):
    content: str | None = None


class _StreamChoice(msgspec.Struct):
    delta: _Delta
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


def chat_result(body: bytes) -> str | None:
    """`choices[0].message.content` of a chat completion."""
    return _chat.decode(body).choices[0].message.content


def chat_stream_text(data: bytes) -> str | None:
    """`choices[0].delta.content` of a streamed chat-completion chunk."""
    choices = _chunk.decode(data).choices
    return choices[0].delta.content if choices else None


def chat_stream_without_text(name: str, events: list[bytes]) -> None:
    """Raise, naming the last `finish_reason`, for a chat-completion stream that carried no
    text (`length`: reasoning spent every output token; `content_filter`; `tool_calls`)."""
    for data in reversed(events):
        choices = _chunk.decode(data).choices
        if choices and (reason := choices[0].finish_reason):
            raise ProviderBadResponse(f"{name} answered no text (finish_reason: {reason})")


def embeddings_call(request: CSSRequest, path: str = "/embeddings") -> ProviderCall:
    """`POST {base}/embeddings` with `{model, input}`."""
    return ProviderCall(path, {"model": request.model, "input": request.input})


def embeddings_result(body: bytes) -> list[float]:
    """`data[0].embedding` of an embeddings answer."""
    return _embeddings.decode(body).data[0].embedding


def usage(data: bytes) -> Usage | None:
    """`usage.prompt_tokens` and `usage.completion_tokens` of an answer or a streamed chunk."""
    found = _usage.decode(data).usage
    return None if found is None else Usage(found.prompt_tokens, found.completion_tokens)
