"""Google's Gemini API (Generative Language API), as its API reference describes it.

Authentication: `x-goog-api-key: <GEMINI_API_KEY>` (the bare key); the base URL is
`GEMINI_BASE_URL` (default `https://generativelanguage.googleapis.com`).

Completions: `POST /v1beta/models/{model}:generateContent` with
`{contents, systemInstruction?, generationConfig?}`.

- `contents` holds the conversation, each turn `{"role": "user" | "model", "parts":
  [{"text": ...}]}` (the job's `assistant` is Gemini's `model`); the job's `system`
  messages, joined with a blank line, are `systemInstruction: {"parts": [{"text": ...}]}`.
- Sampling options live in `generationConfig`: the job's OpenAI-style `temperature`,
  `top_p`, `max_tokens` and `stop` become `temperature`, `topP`, `maxOutputTokens` and
  `stopSequences` there (with any `generationConfig` given in `extra_args` over them);
  other options are top-level fields of the body.
- The text is the concatenated `text` of `candidates[0].content.parts`, leaving out the
  model's thoughts (`"thought": true`). An answer with no text, streamed or not, is an
  error naming why: a blocked prompt (`promptFeedback.blockReason`, no candidates), no
  candidates, or a candidate stopped with no text (`finishReason`). A blocked prompt and
  every `finishReason` but `STOP` and `OTHER` (`SAFETY`, `RECITATION`, `MAX_TOKENS` when
  thoughts spent every output token, a tool call, ...) would come back the same and are
  not retried; no candidates, or an empty `STOP` or `OTHER`, is retried.
- Streamed: `POST /v1beta/models/{model}:streamGenerateContent?alt=sse` with the same
  body (Gemini refuses a `stream` field); each server-sent event's `data` is a response
  chunk of the same shape, and the stream ends by closing. A chunk may carry no text (the
  last one, with `finishReason: STOP`); one holding an `error` object, a `blockReason`, or
  a `finishReason` other than `STOP` / `MAX_TOKENS` without text ends the stream as failed.
  A stream that ends without any text is an error naming its last `finishReason` or
  `blockReason`.

Usage: `usageMetadata` of the answer (of each streamed chunk, a running total): input is
`promptTokenCount`, output `candidatesTokenCount` plus the thoughts' `thoughtsTokenCount`.

Typed answers: `generationConfig: {"responseMimeType": "application/json", "responseSchema":
...}`, the answer's JSON Schema in Gemini's own form (a subset of OpenAPI's): types in
capitals, `additionalProperties` left out (Gemini's Schema has no such field; the service
refuses an answer with extra keys all the same), each object's `propertyOrdering` its properties in the answer
type's order (Gemini writes keys in that order). A job's own `generationConfig` keeps its
other fields. The answer's JSON is the text, read as above.

Embeddings: `POST /v1beta/models/{model}:embedContent` with
`{"content": {"parts": [{"text": input}]}}`; the vector is `embedding.values` (empty: an
error, retried).

Errors are `{"error": {"code", "message", "status", "details": [...]}}`. A wrong key is a
400 whose `ErrorInfo` detail has `reason: "API_KEY_INVALID"` (a 403 refuses the key too);
a `RetryInfo` detail's `retryDelay` (e.g. `"7s"`) says when to retry.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import msgspec

from css_core import (
    CSSRequest,
    ProviderBadResponse,
    ProviderCall,
    ProviderHTTPError,
    ProviderSpec,
    Result,
    Usage,
    hookimpl,
)

__all__ = ("SPEC",)

SPEC = ProviderSpec(
    name="GEMINI",
    onchain_id=4,
    api_key_env="GEMINI_API_KEY",
    default_base_url="https://generativelanguage.googleapis.com",
    endpoints=("completions", "embeddings"),
    models=(
        "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.0-flash", "gemini-2.0-flash-lite",
        "gemini-embedding-001", "text-embedding-004",
    ),
    auth_header="x-goog-api-key",
    auth_scheme=None,
    job_fields=frozenset({"contents", "systemInstruction", "content", "model", "stream"}),
)
# OpenAI-style options and their names in `generationConfig`
_IN_CONFIG = {"temperature": "temperature", "top_p": "topP", "max_tokens": "maxOutputTokens", "stop": "stopSequences"}
_DELAY = re.compile(r"(\d+(?:\.\d*)?)s")  # a `google.protobuf.Duration` in JSON, e.g. "7s", "1.5s"
# finish reasons that name no cause another try would repeat
_AGAIN = frozenset({"STOP", "OTHER", "FINISH_REASON_UNSPECIFIED"})
# JSON Schema keywords that Gemini's Schema has too, with the same meaning
_SCHEMA_KEPT = ("description", "enum", "format", "minimum", "maximum", "minItems", "maxItems", "minLength",
                "maxLength", "pattern", "nullable", "title", "required")


class _Part(msgspec.Struct):
    text: str = ""
    thought: bool = False


class _Content(msgspec.Struct):
    parts: list[_Part] = []


class _Candidate(msgspec.Struct, rename="camel"):
    content: _Content = msgspec.field(default_factory=_Content)
    finish_reason: str | None = None


class _Feedback(msgspec.Struct, rename="camel"):
    block_reason: str | None = None


class _Detail(msgspec.Struct, rename="camel"):
    type: str = msgspec.field(default="", name="@type")
    reason: str | None = None
    retry_delay: str | None = None


class _Status(msgspec.Struct):
    message: str = ""
    status: str = ""
    details: list[_Detail] = []

    def __str__(self) -> str:
        return f"{self.status}: {self.message}" if self.status else self.message


class _Response(msgspec.Struct, rename="camel"):
    candidates: list[_Candidate] = []
    prompt_feedback: _Feedback | None = None
    error: _Status | None = None


class _UsageMetadata(msgspec.Struct, rename="camel"):
    prompt_token_count: int = 0
    candidates_token_count: int = 0
    thoughts_token_count: int = 0


class _WithUsage(msgspec.Struct, rename="camel"):
    usage_metadata: _UsageMetadata | None = None


class _Values(msgspec.Struct):
    values: list[float]


class _Embedding(msgspec.Struct):
    embedding: _Values


_response = msgspec.json.Decoder(_Response)
_embedding = msgspec.json.Decoder(_Embedding)
_usage = msgspec.json.Decoder(_WithUsage)


@hookimpl
def css_provider() -> ProviderSpec:
    return SPEC


@hookimpl
def css_encode_params(request: CSSRequest) -> ProviderCall | None:
    model = f"/v1beta/models/{quote(request.model, safe='')}"
    if request.endpoint == "embeddings":
        return ProviderCall(f"{model}:embedContent", {"content": {"parts": [{"text": request.input}]}})
    if request.endpoint != "completions":
        return None
    system = [m.content for m in request.messages if m.role == "system"]
    contents = [{"role": "model" if m.role == "assistant" else m.role, "parts": [{"text": m.content}]}
                for m in request.messages if m.role != "system"]
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    if request.stream:
        return ProviderCall(f"{model}:streamGenerateContent", body, {"alt": "sse"})
    return ProviderCall(f"{model}:generateContent", body)


def _schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema in the form of Gemini's `Schema`: what it lacks (`additionalProperties`) left out."""
    found: dict[str, Any] = {key: schema[key] for key in _SCHEMA_KEPT if key in schema}
    if isinstance(kind := schema.get("type"), str):
        found["type"] = kind.upper()  # Gemini's `Type` enum
    if isinstance(items := schema.get("items"), dict):
        found["items"] = _schema(items)
    if isinstance(properties := schema.get("properties"), dict):
        found["properties"] = {name: _schema(value) for name, value in properties.items()}
        found["propertyOrdering"] = list(properties)
    return found


def _answer_config(schema: dict[str, Any]) -> dict[str, Any]:
    return {"responseMimeType": "application/json", "responseSchema": _schema(schema)}


@hookimpl
def css_encode_answer_format(request: CSSRequest, schema: dict[str, Any]) -> dict[str, Any] | None:
    return {"generationConfig": _answer_config(schema)} if request.endpoint == "completions" else None


@hookimpl
def css_encode_options(request: CSSRequest, options: dict[str, Any]) -> dict[str, Any]:
    body = dict(options)
    moved = {new: body.pop(old) for old, new in _IN_CONFIG.items() if old in body}
    if isinstance(moved.get("stopSequences"), str):
        moved["stopSequences"] = [moved["stopSequences"]]
    given = body.get("generationConfig", {})
    # the body's `generationConfig` is replaced by the one returned here: a typed job's is kept in it
    answer = _answer_config(request.answer_schema) if request.answer_schema is not None else {}
    if (moved or (answer and "generationConfig" in body)) and isinstance(given, dict):
        body["generationConfig"] = {**moved, **given, **answer}  # (one not an object is Gemini's to refuse)
    return body


def _blocked(answer: _Response) -> str | None:
    return answer.prompt_feedback.block_reason if answer.prompt_feedback is not None else None


def _no_text(answer: _Response) -> ProviderBadResponse:
    if blocked := _blocked(answer):
        return ProviderBadResponse(f"GEMINI blocked the prompt (blockReason: {blocked})", retryable=False)
    if not answer.candidates:
        return ProviderBadResponse("GEMINI answered no text (no candidates)")
    reason = answer.candidates[0].finish_reason
    said = f"GEMINI answered no text (finishReason: {reason or 'none'})"
    if reason is None or reason in _AGAIN:
        return ProviderBadResponse(said)
    if reason == "MAX_TOKENS":
        said += "; the output token limit was spent before any text (thoughts count): allow more maxOutputTokens"
    return ProviderBadResponse(said, retryable=False)


def _text(body: bytes, streamed: bool) -> str | None:
    answer = _response.decode(body)
    if answer.error is not None:
        raise ProviderBadResponse(f"GEMINI reported an error: {answer.error}")
    candidate = answer.candidates[0] if answer.candidates else _Candidate()
    if text := "".join(part.text for part in candidate.content.parts if not part.thought):
        return text
    if streamed and not _blocked(answer) and candidate.finish_reason in (None, "STOP", "MAX_TOKENS"):
        return None  # a chunk without text (usage, thoughts, the end)
    raise _no_text(answer)


@hookimpl
def css_postprocess(request: CSSRequest, body: bytes) -> Result | None:
    if request.endpoint == "embeddings":
        if values := _embedding.decode(body).embedding.values:
            return values
        raise ProviderBadResponse("GEMINI answered no embedding (no values)")
    return _text(body, streamed=False)


@hookimpl
def css_parse_stream_event(data: bytes) -> str | None:
    return _text(data, streamed=True)


@hookimpl
def css_stream_without_text(events: list[bytes]) -> None:
    answers = [_response.decode(data) for data in events]
    for answer in reversed(answers):  # the last chunk may hold only the usage
        if _blocked(answer) or (answer.candidates and answer.candidates[0].finish_reason):
            raise _no_text(answer)
    if not any(answer.candidates for answer in answers):
        raise _no_text(answers[-1])


@hookimpl
def css_usage(data: bytes) -> Usage | None:
    usage = _usage.decode(data).usage_metadata
    if usage is None:
        return None
    return Usage(usage.prompt_token_count, usage.candidates_token_count + usage.thoughts_token_count)


@hookimpl
def css_read_error(status: int, body: bytes, retry_after: float | None) -> ProviderHTTPError | None:
    try:
        error = _response.decode(body).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        error = None
    if error is None:
        return None  # not Google's shape (a proxy's page): the core reads it as text
    reasons = {d.reason for d in error.details if d.type.endswith("ErrorInfo")}
    delays = [float(m[1]) for d in error.details if (m := _DELAY.fullmatch(d.retry_delay or ""))]
    hint = retry_after if retry_after is not None else next(iter(delays), None)
    key_refused = status == 403 or (status == 400 and "API_KEY_INVALID" in reasons) or None
    return ProviderHTTPError(status, str(error), hint, key_refused=key_refused)
