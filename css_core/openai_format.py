"""OpenAI's chat-completions and embeddings wire format, which many providers share.

A plugin for an OpenAI-compatible provider (OpenAI itself, PerplexityAI, and most
hosted or local model servers) builds on these instead of redefining the messages.
"""

from __future__ import annotations

from typing import Any

import msgspec

from css_core.types import CSSRequest, ProviderCall

__all__ = ("chat_call", "chat_result", "chat_stream_text", "embeddings_call", "embeddings_result")


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


class _ChatCompletionChunk(msgspec.Struct):
    choices: list[_StreamChoice] = []


class _Embedding(msgspec.Struct):
    embedding: list[float]


class _Embeddings(msgspec.Struct):
    data: list[_Embedding]


_chat = msgspec.json.Decoder(_ChatCompletion)
_chunk = msgspec.json.Decoder(_ChatCompletionChunk)
_embeddings = msgspec.json.Decoder(_Embeddings)


def chat_call(request: CSSRequest, path: str = "/chat/completions") -> ProviderCall:
    """`POST {base}/chat/completions` with `{model, messages}`, and `"stream": true` for a stream."""
    messages = [{"role": m.role, "content": m.content} for m in request.messages]
    body: dict[str, Any] = {"model": request.model, "messages": messages}
    if request.stream:
        body["stream"] = True
    return ProviderCall(path, body)


def chat_result(body: bytes) -> str | None:
    """`choices[0].message.content` of a chat completion."""
    return _chat.decode(body).choices[0].message.content


def chat_stream_text(data: bytes) -> str | None:
    """`choices[0].delta.content` of a streamed chat-completion chunk."""
    choices = _chunk.decode(data).choices
    return choices[0].delta.content if choices else None


def embeddings_call(request: CSSRequest, path: str = "/embeddings") -> ProviderCall:
    """`POST {base}/embeddings` with `{model, input}`."""
    return ProviderCall(path, {"model": request.model, "input": request.input})


def embeddings_result(body: bytes) -> list[float]:
    """`data[0].embedding` of an embeddings answer."""
    return _embeddings.decode(body).data[0].embedding
