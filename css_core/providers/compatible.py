"""OpenAI-compatible providers by configuration (`CSS_OPENAI_COMPATIBLE`), without a plugin package.

`CSS_OPENAI_COMPATIBLE` is a JSON object of providers by name::

    {"LOCAL": {"base_url": "http://vllm:8000/v1", "onchain_id": 9,
               "endpoints": ["completions", "embeddings"], "models": ["llama-3-8b"]},
     "ROUTER": {"base_url": "https://router.example/api/v1", "api_key_env": "ROUTER_KEYS"}}

`base_url` is required; `api_key_env` (the variable holding its key, or several
comma-separated), `onchain_id` (0-255; without it the provider serves off-chain jobs
only), `endpoints` (default `["completions"]`) and `models` (its catalogue, default none)
are optional, as is `stream_usage` (default true: a stream asks for its usage with
`stream_options.include_usage`; false for a server that refuses that field). A provider
without `api_key_env` is called without an `Authorization` header (a local server such as
vLLM or Ollama). As for a plugin's provider, `<NAME>_BASE_URL` replaces `base_url` when set.

`build_registry` registers one `CompatiblePlugin` per entry on the plugin manager, so each
is served exactly like an installed plugin that speaks OpenAI's wire format, an answer
without text included (an error naming why; see `openai_format.no_text`), and a typed answer
asked for with OpenAI's structured outputs (`openai_format.json_schema_format`): a server
without them refuses the field, and the job fails with its error.
"""

from __future__ import annotations

from typing import Any

from css_core.config import CompatibleProvider
from css_core.providers import openai_format
from css_core.providers.hookspecs import hookimpl
from css_core.types import CSSRequest, ProviderCall, ProviderSpec, Result, Usage

__all__ = ("NO_ONCHAIN_ID", "VARIABLE", "CompatiblePlugin")

VARIABLE = "CSS_OPENAI_COMPATIBLE"
#: The on-chain id of a provider configured without one: no on-chain job reaches it.
NO_ONCHAIN_ID = -1


class CompatiblePlugin:
    """The plugin of one configured provider: OpenAI's wire format at its base URL."""

    def __init__(self, name: str, entry: CompatibleProvider) -> None:
        self.spec = ProviderSpec(
            name=name,
            onchain_id=NO_ONCHAIN_ID if entry.onchain_id is None else entry.onchain_id,
            # "" (no variable): the provider is served without a key (see `Provider.needs_key`)
            api_key_env=entry.api_key_env or "",
            default_base_url=entry.base_url.rstrip("/"),
            endpoints=entry.endpoints,
            models=entry.models,
        )
        self.stream_usage = entry.stream_usage

    @hookimpl
    def css_provider(self) -> ProviderSpec:
        return self.spec

    @hookimpl
    def css_encode_params(self, request: CSSRequest) -> ProviderCall | None:
        if request.endpoint == "completions":
            return openai_format.chat_call(request, stream_usage=self.stream_usage)
        if request.endpoint == "embeddings":
            return openai_format.embeddings_call(request)
        return None

    @hookimpl
    def css_encode_answer_format(self, request: CSSRequest, schema: dict[str, Any]) -> dict[str, Any] | None:
        return openai_format.json_schema_format(schema) if request.endpoint == "completions" else None

    @hookimpl
    def css_postprocess(self, request: CSSRequest, body: bytes) -> Result:
        if request.endpoint == "embeddings":
            return openai_format.embeddings_result(body, self.spec.name)
        return openai_format.chat_result(body, self.spec.name)

    @hookimpl
    def css_parse_stream_event(self, data: bytes) -> str | None:
        return openai_format.chat_stream_text(data)

    @hookimpl
    def css_stream_without_text(self, events: list[bytes]) -> None:
        openai_format.chat_stream_without_text(self.spec.name, events)

    @hookimpl
    def css_usage(self, data: bytes) -> Usage | None:
        return openai_format.usage(data)
