"""Azure OpenAI: OpenAI's models as deployments of the operator's own Azure resource.

Authentication: `api-key: <AZURE_API_KEY>` (the bare key, never `Authorization`). The base
URL is the resource's endpoint, `AZURE_BASE_URL` (e.g. `https://my-resource.openai.azure.com`),
which has no default: with the key set and no endpoint, start-up stops naming it. Every
call carries `?api-version=<AZURE_API_VERSION>` (default `2024-10-21`).

- Completions: `POST /openai/deployments/{deployment}/chat/completions`, embeddings:
  `POST /openai/deployments/{deployment}/embeddings`, in OpenAI's wire format
  (`openai_format`). The deployment is the job's `model`: deployments are named by the
  operator, so the catalogue is empty and `CSS_MODELS` lists them.
- An answer without text is an error naming why, as OpenAI's are (`openai_format.no_text`):
  Azure's content filter (`finish_reason: content_filter`) is named and not retried, since
  the same conversation would be filtered again.
- A prompt the content filter refuses is a 400 whose error has `"code": "content_filter"`
  and names the filtered categories in `innererror.content_filter_result`: the job's error
  says "content filter" and which categories, and it is not retried.
- Streams are OpenAI's server-sent events, with Azure's additions: a first chunk with no
  choices (`prompt_filter_results`), and, with the asynchronous content filter, chunks whose
  choice has no `delta` (only `content_filter_results`); neither carries text.
- Usage: the answer's `usage`; a stream asks for it (`stream_options.include_usage`) from
  API version 2024-09-01 on, as older versions refuse the field.
- Typed answers: structured outputs, as OpenAI's (`response_format` of type `json_schema`,
  strict); the answer's JSON is the message's content. API versions before 2024-08-01
  (preview) refuse the field: with one of them, AZURE takes no typed answers.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import msgspec

from css_core import (
    ConfigError,
    CSSRequest,
    ProviderCall,
    ProviderHTTPError,
    ProviderSpec,
    Result,
    Settings,
    Usage,
    hookimpl,
    openai_format,
)

__all__ = ("API_VERSION",)

#: The API version sent unless `AZURE_API_VERSION` says otherwise (Azure's latest GA version).
API_VERSION = "2024-10-21"
# the first version whose chat completions accept `stream_options`
_STREAM_USAGE_SINCE = "2024-09-01"
# the first version whose chat completions accept a `json_schema` response format
_TYPED_SINCE = "2024-08-01"
# the version lands in the query string: a stray space or `&` would fail every job as a bad URL
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class _Inner(msgspec.Struct):
    code: str | None = None
    content_filter_result: dict[str, Any] = {}


class _Error(msgspec.Struct):
    message: str = ""
    code: str | int | None = None
    innererror: _Inner | None = None


class _ErrorBody(msgspec.Struct):
    error: _Error


_error = msgspec.json.Decoder(_ErrorBody)


@hookimpl
def css_provider(config: Settings) -> ProviderSpec:
    version = config.get("AZURE_API_VERSION") or API_VERSION
    if not _VERSION.fullmatch(version):
        raise ConfigError(f"AZURE_API_VERSION must be an Azure OpenAI API version such as {API_VERSION}, "
                          f"got {version!r}")
    return ProviderSpec(
        name="AZURE",
        onchain_id=5,
        api_key_env="AZURE_API_KEY",
        default_base_url=None,
        endpoints=("completions", "embeddings"),
        auth_header="api-key",
        auth_scheme=None,
        settings={"api_version": version, "stream_usage": version >= _STREAM_USAGE_SINCE,
                  "typed_answers": version >= _TYPED_SINCE},
    )


@hookimpl
def css_encode_params(spec: ProviderSpec, request: CSSRequest) -> ProviderCall | None:
    deployment = f"/openai/deployments/{quote(request.model, safe='')}"
    if request.endpoint == "completions":
        call = openai_format.chat_call(request, f"{deployment}/chat/completions",
                                       stream_usage=spec.settings["stream_usage"])
    elif request.endpoint == "embeddings":
        call = openai_format.embeddings_call(request, f"{deployment}/embeddings")
    else:
        return None
    return ProviderCall(call.path, call.body, {"api-version": spec.settings["api_version"]})


@hookimpl
def css_encode_answer_format(spec: ProviderSpec, request: CSSRequest, schema: dict[str, Any]) -> dict[str, Any] | None:
    if request.endpoint != "completions" or not spec.settings["typed_answers"]:
        return None
    return openai_format.json_schema_format(schema)


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


def _filtered(inner: _Inner | None) -> str:
    """The categories the content filter flagged, e.g. "hate: high, jailbreak"."""
    if inner is None:
        return ""
    names = []
    for category, result in inner.content_filter_result.items():
        if isinstance(result, dict) and result.get("filtered") is True:
            severity = result.get("severity")
            names.append(f"{category}: {severity}" if isinstance(severity, str) else category)
    return ", ".join(names)


@hookimpl
def css_read_error(status: int, body: bytes, retry_after: float | None) -> ProviderHTTPError | None:
    try:
        error = _error.decode(body).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None  # not Azure's shape (a proxy's page): the core reads it as text
    if error.code == "content_filter":
        flagged = _filtered(error.innererror)
        said = f"Azure's content filter refused the prompt ({flagged or 'no category named'}): {error.message}"
        return ProviderHTTPError(status, said, retry_after, retryable=False)
    # a named code says what a bare message may not (e.g. DeploymentNotFound: the model is no deployment)
    code = error.code if isinstance(error.code, str) and not error.code.isdigit() else None
    return ProviderHTTPError(status, f"{code}: {error.message}" if code else error.message or "(no message)",
                             retry_after)
