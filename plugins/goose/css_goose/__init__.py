"""GooseAI, as its API reference describes it.

Completions: `POST /engines/{engine}/completions` `{"prompt": text}`; the text is
`choices[0].text`, streamed or not. GooseAI completes one prompt, so a job must carry
exactly one message. An answer without text, streamed or not, is an error naming its
`finish_reason` (the last one of a stream); OpenAI's rule decides whether another try
could differ (`length` would not; see `openai_format.no_text`). The answer's `usage`
(`prompt_tokens`, `completion_tokens`), where GooseAI sends one, is its token count.
"""

from __future__ import annotations

from urllib.parse import quote

import msgspec

from css_core import CSSRequest, InvalidJob, ProviderCall, ProviderSpec, Usage, hookimpl, openai_format

__all__ = ("SPEC",)

SPEC = ProviderSpec(
    name="GOOSEAI",
    onchain_id=1,
    api_key_env="GOOSEAI_API_KEY",
    default_base_url="https://api.goose.ai/v1",
    endpoints=("completions",),
    models=(
        "gpt-neo-20b", "fairseqNone25m", "fairseqNone-3b", "fairseq-2-7b", "fairseq-6b-7b", "fairseqNone3b",
        "gpt-j-6b", "gpt-neoNone25m", "gpt-neoNone-3b", "gpt-neo-2-7b",
        # the engines' names in GooseAI's own documentation
        "fairseq-125m", "fairseq-1-3b", "fairseq-13b", "gpt-neo-125m", "gpt-neo-1-3b",
    ),
)


class _Choice(msgspec.Struct):
    text: str | None = None
    finish_reason: str | None = None


class _Completion(msgspec.Struct):
    choices: list[_Choice] = []


_completion = msgspec.json.Decoder(_Completion)


@hookimpl
def css_provider() -> ProviderSpec:
    return SPEC


@hookimpl
def css_encode_params(request: CSSRequest) -> ProviderCall | None:
    if request.endpoint != "completions":
        return None
    if len(request.messages) != 1:
        raise InvalidJob(f"GOOSEAI takes exactly one message (its prompt), got {len(request.messages)}")
    engine = quote(request.model, safe="")
    body = {"prompt": request.messages[0].content, **({"stream": True} if request.stream else {})}
    return ProviderCall(f"/engines/{engine}/completions", body)


@hookimpl
def css_postprocess(body: bytes) -> str:
    choices = _completion.decode(body).choices
    if choices and choices[0].text:
        return choices[0].text
    raise openai_format.no_text(SPEC.name, choices[0].finish_reason if choices else None, no_choices=not choices)


@hookimpl
def css_parse_stream_event(data: bytes) -> str | None:
    choices = _completion.decode(data).choices
    return choices[0].text if choices else None


@hookimpl
def css_stream_without_text(events: list[bytes]) -> None:
    choices = [choice for data in events for choice in _completion.decode(data).choices[:1]]
    reason = next((choice.finish_reason for choice in reversed(choices) if choice.finish_reason), None)
    if reason or not choices:
        raise openai_format.no_text(SPEC.name, reason, no_choices=not choices)


@hookimpl
def css_usage(data: bytes) -> Usage | None:
    return openai_format.usage(data)
