"""OpenAI, as its API reference describes it.

- Chat completions: `POST /chat/completions` `{model, messages}`; the text is
  `choices[0].message.content`, or, streamed, each event's `choices[0].delta.content`.
- Embeddings: `POST /embeddings` `{model, input}`; the vector is `data[0].embedding`.
"""

from __future__ import annotations

import msgspec

from css_core import CSSRequest, ProviderCall, ProviderSpec, Result, hookimpl

__all__ = ("SPEC",)

SPEC = ProviderSpec(
    name="OPENAI",
    onchain_id=0,
    api_key_env="OPENAI_API_KEY",
    default_base_url="https://api.openai.com/v1",
    endpoints=("completions", "embeddings"),
    models=(
        "gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano",
        "gpt-4o", "gpt-4o-mini", "chatgpt-4o-latest", "o3", "o3-mini", "o4-mini",
        "gpt-4-turbo", "gpt-4-turbo-preview", "gpt-4", "gpt-3.5-turbo",
        "text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002",
    ),
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


class _ChatCompletionChunk(msgspec.Struct):
    choices: list[_StreamChoice] = []


class _Embedding(msgspec.Struct):
    embedding: list[float]


class _Embeddings(msgspec.Struct):
    data: list[_Embedding]


_chat = msgspec.json.Decoder(_ChatCompletion)
_chunk = msgspec.json.Decoder(_ChatCompletionChunk)
_embeddings = msgspec.json.Decoder(_Embeddings)


@hookimpl
def css_provider() -> ProviderSpec:
    return SPEC


@hookimpl
def css_encode_params(request: CSSRequest) -> ProviderCall | None:
    if request.endpoint == "completions":
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        return ProviderCall("/chat/completions", {"model": request.model, "messages": messages})
    if request.endpoint == "embeddings":
        return ProviderCall("/embeddings", {"model": request.model, "input": request.input})
    return None


@hookimpl
def css_postprocess(request: CSSRequest, body: bytes) -> Result | None:
    if request.endpoint == "embeddings":
        return _embeddings.decode(body).data[0].embedding
    return _chat.decode(body).choices[0].message.content


@hookimpl
def css_parse_stream_event(data: bytes) -> str | None:
    choices = _chunk.decode(data).choices
    return choices[0].delta.content if choices else None
