"""The hooks a provider plugin implements.

A plugin is any module or object registered under the `css_inference_service` entry-point
group whose functions carry `@hookimpl`. A plugin that implements `css_provider` owns one
provider; the per-job hooks below are then called on that plugin only (and on plugins
that own no provider), never on another provider's plugin. Every per-job hook is
`firstresult`: the first non-`None` answer wins, and plugins registered later, or marked
`tryfirst`, are asked first.

Each hook may omit arguments it does not need, as with any pluggy hook.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import httpx

    from css_core.types import CSSRequest, PreparedCall, ProviderCall, ProviderSpec, Result

__all__ = (
    "PROJECT",
    "css_call",
    "css_call_stream",
    "css_encode_params",
    "css_parse_stream_event",
    "css_postprocess",
    "css_provider",
    "hookimpl",
    "hookspec",
)

PROJECT = "css_inference_service"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def css_provider() -> ProviderSpec | None:
    """Describe the provider this plugin serves.

    Called once per plugin at start-up, before any job. Return the `ProviderSpec`
    (name, on-chain id, endpoints, key variable, default base URL, model catalogue,
    retryable statuses). `None`: this plugin serves no provider of its own; its other
    hooks then apply to every provider.

    Two plugins returning the same name or on-chain id stop start-up; a plugin whose
    hook raises is reported by name and left out, and the others still serve.
    """


@hookspec(firstresult=True)
def css_encode_params(spec: ProviderSpec, request: CSSRequest) -> ProviderCall | None:
    """Encode a job as the provider's HTTP request: a path below the base URL and a body.

    Called once per job, before the first attempt. The core then merges the operator's
    request defaults under the body and the job's `extra_args` over it, sets `"stream"`
    from the job's destination, and adds the URL, headers and key itself. Raise
    `css_core.InvalidJob` for a job the provider cannot take (its message reaches the
    caller as a 400). `None`: the plugin does not serve `request.endpoint` (a 400).
    """


@hookspec(firstresult=True)
def css_call(
    spec: ProviderSpec, call: PreparedCall, client: httpx.AsyncClient
) -> Awaitable[bytes] | None:
    """Send one attempt of a non-streaming call and return an awaitable of the body.

    Called once per attempt; the workflow retries around it. Implement it only for a
    provider that is not plain JSON over HTTP, and make the call with `client`, the
    worker's pooled `httpx.AsyncClient`. Raise `css_core.ProviderHTTPError` for a non-2xx
    answer; `httpx.TransportError`s (and `css_core.ProviderUnreachable`) are retried too.
    `None` (or no implementation): the core POSTs `call.content` to `call.url` itself, over
    the same pool.
    """


@hookspec(firstresult=True)
def css_call_stream(
    spec: ProviderSpec, call: PreparedCall, client: httpx.AsyncClient
) -> AsyncIterator[bytes] | None:
    """Send one attempt of a streaming call; return an async iterator of event payloads.

    Called once per attempt, until one yields its first text. The iterator must raise
    `ProviderHTTPError` before yielding anything when the status is not 2xx, so the
    failure can be retried and answered as an error status. `None` (or no
    implementation): the core POSTs the call itself, reads server-sent events and yields
    each event's `data` as bytes, ending at `data: [DONE]`.
    """


@hookspec(firstresult=True)
def css_postprocess(spec: ProviderSpec, request: CSSRequest, body: bytes) -> Result | None:
    """Extract the job's result from the provider's 2xx body.

    Called once per successful attempt, inside the retry loop. Return the completion's
    text or the embedding. Raise `ProviderBadResponse` (or let `msgspec` raise) for a
    body that cannot be read: the attempt is then retried. `None`: the body holds no
    result, answered as a provider failure.
    """


@hookspec(firstresult=True)
def css_parse_stream_event(spec: ProviderSpec, request: CSSRequest, data: bytes) -> str | None:
    """Return the text one streamed event carries.

    Called for each event payload of a stream, in order. `None` (or "") means the event
    carries no text (a role-only delta, a keep-alive) and is skipped. Raise
    `ProviderBadResponse` for an event that cannot be read.
    """
