"""The typed values a provider plugin receives and returns.

These are the plugin-facing API: a plugin imports them from `css_core`, never from a
submodule. They are validated once, at the edge, and immutable after that.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = (
    "CSSRequest",
    "Message",
    "PreparedCall",
    "ProviderCall",
    "ProviderSpec",
    "Result",
)

#: What a job produces: a completion's text, or an embedding.
Result = str | list[float]


class Message(msgspec.Struct, frozen=True):
    """One turn of a conversation."""

    role: str
    content: str


class CSSRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One job, whatever its source: what to ask which provider.

    `messages` is set for completions, `input` for embeddings. `extra_args` is merged
    into the provider request body by the core after the plugin has encoded it.
    """

    provider: str
    endpoint: str
    model: str
    messages: tuple[Message, ...] = ()
    input: str | None = None
    stream: bool = False
    extra_args: dict[str, Any] = {}


class ProviderSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What a plugin tells the core about its provider, once, at start-up.

    `name` is the provider's name in requests (e.g. "OPENAI") and `onchain_id` its id in
    the on-chain encoding (0-255). The API key is read from `api_key_env`; the base URL
    from `base_url_env` (by default `<name>_BASE_URL`), else `default_base_url`.
    `models` is the catalogue shown by `/service-resources` (discovery only: a request
    for another model is still forwarded). A status in `retryable_statuses` is retried.
    """

    name: str
    onchain_id: int
    api_key_env: str
    default_base_url: str
    endpoints: tuple[str, ...] = ("completions",)
    models: tuple[str, ...] = ()
    base_url_env: str | None = None
    retryable_statuses: frozenset[int] = frozenset({408, 409, 429, 500, 502, 503, 504})

    @property
    def base_url_variable(self) -> str:
        return self.base_url_env or f"{self.name}_BASE_URL"


class ProviderCall(msgspec.Struct, frozen=True):
    """The provider request a plugin encodes: a path below the base URL and a JSON body.

    Only the body is the plugin's (and the job's `extra_args`'); the core owns the base
    URL, the headers and the key.
    """

    path: str
    body: dict[str, Any]


class PreparedCall(msgspec.Struct, frozen=True):
    """One provider request ready to send: absolute URL, headers, encoded JSON body."""

    url: str
    headers: dict[str, str]
    content: bytes
    stream: bool = False
