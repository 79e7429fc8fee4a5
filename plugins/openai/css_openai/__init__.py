"""OpenAI, as its API reference describes it.

- Chat completions: `POST /chat/completions` `{model, messages}`; the text is
  `choices[0].message.content`, or, streamed, each event's `choices[0].delta.content`. An
  answer without text, streamed or not, is an error naming its `message.refusal` or its
  `finish_reason` (`length`: a reasoning model out of tokens; `content_filter`;
  `tool_calls`), none of which another try would change: only an empty `stop`, or no
  choices, is retried (see `openai_format.no_text`).
- Embeddings: `POST /embeddings` `{model, input}`; the vector is `data[0].embedding` (an
  empty `data` is an error).
- Usage: `usage.prompt_tokens` / `usage.completion_tokens` of the answer; a stream asks for
  it with `stream_options.include_usage` and gets it in a last chunk with no choices.
- Typed answers: structured outputs, `response_format: {"type": "json_schema", "json_schema":
  {"name": "answer", "strict": true, "schema": ...}}`; the answer's JSON is the message's content.
"""

from __future__ import annotations

from typing import Any

from css_core import CSSRequest, ProviderCall, ProviderSpec, Result, Usage, hookimpl, openai_format

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


@hookimpl
def css_provider() -> ProviderSpec:
    return SPEC


@hookimpl
def css_encode_params(request: CSSRequest) -> ProviderCall | None:
    if request.endpoint == "completions":
        return openai_format.chat_call(request, stream_usage=True)
    if request.endpoint == "embeddings":
        return openai_format.embeddings_call(request)
    return None


@hookimpl
def css_encode_answer_format(request: CSSRequest, schema: dict[str, Any]) -> dict[str, Any] | None:
    return openai_format.json_schema_format(schema) if request.endpoint == "completions" else None


@hookimpl
def css_postprocess(spec: ProviderSpec, request: CSSRequest, body: bytes) -> Result:
    if request.endpoint == "embeddings":
        return openai_format.embeddings_result(body, spec.name)
    return openai_format.chat_result(body, spec.name)


@hookimpl
def css_parse_stream_event(data: bytes) -> str | None:
    return openai_format.chat_stream_text(data)


@hookimpl
def css_stream_without_text(spec: ProviderSpec, events: list[bytes]) -> None:
    openai_format.chat_stream_without_text(spec.name, events)


@hookimpl
def css_usage(data: bytes) -> Usage | None:
    return openai_format.usage(data)
