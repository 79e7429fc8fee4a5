"""The workflow: one job from a `CSSRequest` to its result, or to its stream of text.

It knows no provider by name. It asks the registry for the provider's plugin, has the
plugin encode the call, sends it with retries and the job's deadline, and has the plugin
read the answer (or each streamed event).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from tenacity import RetryCallState

from css_core.config import Settings
from css_core.errors import (
    InvalidJob,
    ProviderBadResponse,
    ProviderFailed,
    ProviderHTTPError,
    ProviderNotAvailable,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnreachable,
    ServiceBusy,
)
from css_core.plugins import Provider, Registry
from css_core.provider_http import ProviderHTTP
from css_core.retry import is_retryable, retrying, wait_seconds
from css_core.types import CSSRequest, PreparedCall, Result

__all__ = ("Workflow",)

T = TypeVar("T")
logger = logging.getLogger("css_core.workflow")
_UNREADABLE = (msgspec.DecodeError, msgspec.ValidationError, KeyError, IndexError, TypeError, ValueError)
_MAX_DETAIL = 500  # a provider's error text passed on to the caller is cut to this length


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ProviderHTTPError):
        return f"HTTP {exc.status}: {exc.message}"
    return str(exc) or type(exc).__name__


# what could take a path out of the provider's base URL: a query, a fragment, a backslash,
# controls and spaces, or a "." / ".." segment
_UNSAFE_PATH = re.compile(r"[?#\\\x00-\x20\x7f]|(?:^|/)\.\.?(?:/|$)")


def _checked_path(path: str) -> str:
    """The plugin's path, refused if a job's value in it could leave the provider's base URL."""
    if _UNSAFE_PATH.search(path):
        raise InvalidJob(f"the request would change the provider's URL ({path!r}); check the model name")
    return path if path.startswith("/") else "/" + path


class _Job:
    """The attempts of one job: counts them and turns the last failure into a `CSSError`."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.attempts = 0

    def scrub(self, text: str) -> str:
        """`text` without the API key, then cut short (in this order: no piece of a cut key is left)."""
        key = self.provider.api_key
        text = text.replace(key, "***") if key else text
        return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "…"

    def failure(self, exc: BaseException) -> Exception:
        name, attempts = self.provider.spec.name, self.attempts
        what = self.scrub(_describe(exc))
        if isinstance(exc, TimeoutError):
            return ProviderTimeout(f"{name} did not answer within the job deadline ({attempts} attempt(s) made)")
        if isinstance(exc, ProviderHTTPError) and not is_retryable(exc, self.provider.spec.retryable_statuses):
            if exc.status in (401, 403):
                return ProviderFailed(f"{name} refused this service's API key ({what})")
            if 400 <= exc.status < 500:
                return ProviderRejected(f"{name} rejected the request ({what})")
        return ProviderFailed(f"{name} failed after {attempts} attempt(s); last error: {what}")

    def log_retry(self, exc: BaseException | None, wait: float) -> None:
        what = self.scrub(_describe(exc)) if exc else "?"
        name = self.provider.spec.name
        logger.warning("%s attempt %d failed (%s); retrying in %.1f s", name, self.attempts, what, wait)

    def before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.log_retry(exc, state.next_action.sleep if state.next_action else 0.0)


class Workflow:
    """Runs jobs for one worker, with its pooled HTTP client."""

    def __init__(self, registry: Registry, settings: Settings, http: ProviderHTTP) -> None:
        self.registry = registry
        self.settings = settings
        self.http = http

    def prepare(self, request: CSSRequest) -> tuple[Provider, PreparedCall]:
        """Check the job against its provider and build the provider request."""
        provider = self.registry.by_name(request.provider)
        spec = provider.spec
        if not provider.served:
            reason = provider.unavailable_reason()
            raise ProviderNotAvailable(f"provider {spec.name} is not served by this node: {reason}")
        if request.endpoint not in spec.endpoints:
            raise InvalidJob(
                f"{spec.name} has no {request.endpoint!r} endpoint (it serves: {', '.join(spec.endpoints)})"
            )
        if request.stream and not provider.streams:
            raise InvalidJob(f"{spec.name} cannot stream: its plugin does not implement css_parse_stream_event")
        encode = provider.hooks.get("css_encode_params")
        call = encode(spec=spec, request=request) if encode else None
        if call is None:
            raise InvalidJob(f"{spec.name} cannot encode a {request.endpoint!r} request")
        body = {**self.settings.request_defaults, **call.body, **request.extra_args}
        if request.stream:
            body["stream"] = True
        else:
            body.pop("stream", None)
        path = _checked_path(call.path)
        content = msgspec.json.encode(body)
        return provider, PreparedCall(provider.base_url + path, provider.headers, content, request.stream)

    def _occupy(self, provider: Provider) -> None:
        """Take one of the provider's in-flight slots; when none is left, answer 503 at once."""
        if provider.in_flight >= self.settings.max_in_flight:
            raise ServiceBusy(
                f"{provider.spec.name} already has {provider.in_flight} calls in flight on this worker "
                "(CSS_MAX_IN_FLIGHT); retry shortly"
            )
        provider.in_flight += 1

    async def _attempts(self, job: _Job, attempt: Callable[[], Awaitable[T]], deadline: float) -> T:
        async def counted() -> T:
            job.attempts += 1
            return await attempt()

        policy, statuses = self.settings.retry, job.provider.spec.retryable_statuses
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(deadline):
                # The first attempt runs without tenacity: most jobs succeed at once, and
                # building a controller per job cost ~80 µs of CPU (bench/RESULTS.md).
                try:
                    return await counted()
                except Exception as exc:
                    wait = wait_seconds(policy, 1, exc)
                    left = deadline - (loop.time() - started)
                    if policy.tries == 1 or not is_retryable(exc, statuses) or wait >= left:
                        raise
                    job.log_retry(exc, wait)
                await asyncio.sleep(wait)
                left = deadline - (loop.time() - started)
                controller = retrying(policy, statuses, left, job.before_sleep, attempts_made=1)
                return await controller(counted)
        except (TimeoutError, ProviderHTTPError, ProviderBadResponse, ProviderUnreachable) as exc:
            raise job.failure(exc) from None

    async def run(self, request: CSSRequest) -> Result:
        """The job's result: a completion or an embedding."""
        provider, call = self.prepare(request)
        hooks, spec = provider.hooks, provider.spec
        plugin_call, postprocess = hooks.get("css_call"), hooks.get("css_postprocess")

        async def attempt() -> Result:
            pending = plugin_call(spec=spec, call=call, client=self.http.client) if plugin_call else None
            body = await (self.http.post(call) if pending is None else self.http.plugin_body(pending))
            try:
                result: Result | None = postprocess(spec=spec, request=request, body=body) if postprocess else None
            except _UNREADABLE as exc:
                raise ProviderBadResponse(f"unreadable answer: {exc}") from None
            if result is None:
                raise ProviderBadResponse("the answer holds no result")
            return result

        self._occupy(provider)
        try:
            return await self._attempts(_Job(provider), attempt, self.settings.job_deadline)
        finally:
            provider.in_flight -= 1

    async def stream(self, request: CSSRequest) -> AsyncGenerator[str, None]:
        """The job's text, chunk by chunk, once the first chunk has arrived.

        Failures before the first chunk are retried and raised from this coroutine, so the
        caller can still answer with an error status. After it, a failure ends the iterator
        with an exception, which the server turns into an aborted response.
        """
        texts = self._texts(request)
        # priming the generator here means its `finally` (closing the provider's stream,
        # freeing the slot) runs however the response ends, even if it is never iterated
        first = await anext(texts, None)
        return _prepend(first, texts)

    async def _texts(self, request: CSSRequest) -> AsyncIterator[str]:
        provider, call = self.prepare(request)
        hooks, spec = provider.hooks, provider.spec
        plugin_call = hooks.get("css_call_stream")
        deadline = self.settings.stream_deadline
        deadline_at = asyncio.get_running_loop().time() + deadline

        def text_of(data: bytes) -> str:
            try:
                return hooks["css_parse_stream_event"](spec=spec, request=request, data=data) or ""
            except _UNREADABLE as exc:
                raise ProviderBadResponse(f"unreadable stream event: {exc}") from None

        async def attempt() -> tuple[AsyncIterator[bytes], str]:
            source = plugin_call(spec=spec, call=call, client=self.http.client) if plugin_call else None
            source = self.http.events(call) if source is None else self.http.plugin_events(source)
            try:
                async for data in source:
                    if text := text_of(data):
                        return source, text
            except BaseException:
                await _close(source)
                raise
            return source, ""

        job = _Job(provider)
        self._occupy(provider)
        events: AsyncIterator[bytes] | None = None
        sent = 0
        try:
            upstream, first = await self._attempts(job, attempt, deadline)
            events = upstream
            if first:
                yield first
                sent += 1
            while True:
                async with asyncio.timeout_at(deadline_at):
                    try:
                        data = await anext(upstream)
                    except StopAsyncIteration:
                        return
                if text := text_of(data):
                    yield text
                    sent += 1
        except (TimeoutError, ProviderBadResponse, ProviderUnreachable) as exc:
            name, what = spec.name, job.scrub(_describe(exc))
            logger.warning("%s stream ended after %d chunk(s): %s", name, sent, what)
            raise
        finally:
            provider.in_flight -= 1
            if events is not None:
                await _close(events)


async def _prepend(first: str | None, rest: AsyncIterator[str]) -> AsyncGenerator[str, None]:
    try:
        if first is not None:
            yield first
        async for text in rest:
            yield text
    finally:
        await _close(rest)


async def _close(events: Any) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()
