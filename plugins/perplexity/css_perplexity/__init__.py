"""PerplexityAI, as its API reference describes it.

Chat completions: `POST /chat/completions` `{model, messages}`, OpenAI's format; the text
is `choices[0].message.content`, or, streamed, each event's `choices[0].delta.content`;
an answer without text, streamed or not, is an error naming its `finish_reason`, retried
only when another try could differ (see `openai_format.no_text`). Its `usage`
(`prompt_tokens`, `completion_tokens`) comes with the answer, and with each streamed chunk
unasked.

Typed answers: structured outputs, `response_format: {"type": "json_schema", "json_schema":
{"name": "answer", "schema": ...}}` (Perplexity takes no `strict`); the answer's JSON is the
message's content.
"""

from __future__ import annotations

from typing import Any

from css_core import CSSRequest, ProviderCall, ProviderSpec, Usage, hookimpl, openai_format

__all__ = ("SPEC",)

SPEC = ProviderSpec(
    name="PERPLEXITYAI",
    onchain_id=2,
    api_key_env="PERPLEXITYAI_API_KEY",
    default_base_url="https://api.perplexity.ai",
    endpoints=("completions",),
    models=(
        "sonar", "sonar-pro", "sonar-reasoning", "sonar-reasoning-pro", "sonar-deep-research", "r1-1776",
        # the reference container's catalogue, kept for nodes that still advertise it
        "llama-3-sonar-small-32k-chat", "llama-3-sonar-small-32k-online", "llama-3-sonar-large-32k-chat",
        "llama-3-sonar-large-32k-online", "llama-3-8b-instruct", "llama-3-70b-instruct", "mixtral-8x7b-instruct",
    ),
)


@hookimpl
def css_provider() -> ProviderSpec:
    return SPEC


@hookimpl
def css_encode_params(request: CSSRequest) -> ProviderCall | None:
    return openai_format.chat_call(request) if request.endpoint == "completions" else None


@hookimpl
def css_encode_answer_format(request: CSSRequest, schema: dict[str, Any]) -> dict[str, Any] | None:
    if request.endpoint != "completions":
        return None
    return openai_format.json_schema_format(schema, strict=False)


@hookimpl
def css_postprocess(spec: ProviderSpec, body: bytes) -> str:
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
