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
from urllib.parse import urlencode

import httpx
import msgspec
from tenacity import AsyncRetrying, RetryCallState

from css_core.config import Settings
from css_core.default_call import ErrorAnswer
from css_core.errors import (
    CSSError,
    InvalidJob,
    PluginFailed,
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
from css_core.provider_http import ProviderHTTP, unreachable
from css_core.retry import is_retryable, retrying
from css_core.types import CSSRequest, PreparedCall, ProviderCall, Result

__all__ = ("Workflow",)

T = TypeVar("T")
logger = logging.getLogger("css_core.workflow")
# what reading an answer of an unexpected shape raises: the answer is unreadable (retried)
_UNREADABLE = (msgspec.DecodeError, msgspec.ValidationError, KeyError, IndexError, ValueError)
# what a plugin may raise on purpose; anything else is a bug in the plugin
_EXPECTED = (CSSError, ProviderHTTPError, ProviderBadResponse, ProviderUnreachable)
_MAX_DETAIL = 500  # a provider's error text passed on to the caller is cut to this length

# what could take a path out of the provider's base URL: a query, a fragment, a backslash,
# controls and spaces, or a "." / ".." segment
_UNSAFE_PATH = re.compile(r"[?#\\\x00-\x20\x7f]|(?:^|/)\.\.?(?:/|$)")


def _url(provider: Provider, call: ProviderCall) -> str:
    """The plugin's path and query below the provider's base URL, refused if a job's value in
    them could leave it."""
    path, query = call.path, call.query
    if _UNSAFE_PATH.search(path) or any(_UNSAFE_PATH.search(f"{k}={v}") for k, v in query.items()):
        raise InvalidJob(f"the request would change the provider's URL ({path!r}); check the model name")
    path = path if path.startswith("/") else "/" + path
    return provider.base_url + path + ("?" + urlencode(query) if query else "")


class _Job:
    """One job's provider, its attempts, and what its failures are called."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.attempts = 0

    def scrub(self, text: str) -> str:
        """`text` without the API keys, then cut short (in this order: no piece of a cut key is left)."""
        for key in self.provider.keys:
            text = text.replace(key, "***")
        return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "…"

    def describe(self, exc: BaseException) -> str:
        if isinstance(exc, ProviderHTTPError):
            return self.scrub(f"HTTP {exc.status}: {exc.message}")
        return self.scrub(str(exc) or type(exc).__name__)

    def failure(self, exc: BaseException) -> Exception:
        name, attempts, what = self.provider.spec.name, self.attempts, self.describe(exc)
        if isinstance(exc, TimeoutError):
            return ProviderTimeout(f"{name} did not answer within the job deadline ({attempts} attempt(s) made)")
        if isinstance(exc, ProviderHTTPError):
            if exc.key_refused or (exc.key_refused is None and exc.status in (401, 403)):
                return ProviderFailed(f"{name} refused this service's API key ({what})")
            if 400 <= exc.status < 500 and not is_retryable(exc, self.provider.spec.retryable_statuses):
                return ProviderRejected(f"{name} rejected the request ({what})")
        return ProviderFailed(f"{name} failed after {attempts} attempt(s); last error: {what}")

    def plugin_step(self, hook: Callable[..., Any], what: str, **kwargs: Any) -> Any:
        """Call one of the plugin's hooks: an unreadable answer is retried, a bug in the plugin is not."""
        try:
            return hook(spec=self.provider.spec, **kwargs)
        except _EXPECTED:
            raise
        except _UNREADABLE as exc:
            raise ProviderBadResponse(f"unreadable {what}: {self.scrub(repr(exc))}") from None
        except Exception as exc:
            raise self.plugin_failed(exc, what) from None

    def plugin_failed(self, exc: Exception, what: str) -> PluginFailed:
        provider = self.provider
        logger.error("the plugin of %s (%s) failed on the %s", provider.spec.name, provider.plugin, what,
                     exc_info=exc)
        return PluginFailed(
            f"the {provider.spec.name} plugin ({provider.plugin}) failed on the {what}: {self.scrub(repr(exc))}; "
            "the service's log has its traceback"
        )

    async def events(self, source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """A stream's event payloads, its failures as the workflow knows them."""
        try:
            async for data in source:
                yield data
        except BaseException as exc:
            raise self.attempt_failure(exc) from None
        finally:
            await _close(source)

    def attempt_failure(self, exc: BaseException) -> BaseException:
        """What a failed call means: a non-2xx answer read by the plugin, a dropped connection."""
        if isinstance(exc, ErrorAnswer):
            error: ProviderHTTPError = self.plugin_step(self.provider.hooks.read_error, "error answer",
                                                        status=exc.status, body=exc.body, retry_after=exc.retry_after)
            return error
        if isinstance(exc, httpx.TransportError):  # a plugin's own call
            return unreachable(exc)
        return exc

    def before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        what = self.describe(exc) if exc else "?"
        logger.warning("%s attempt %d failed (%s); retrying in %.1f s", self.provider.spec.name, self.attempts,
                       what, wait)


class Workflow:
    """Runs jobs for one worker, with its pooled HTTP client."""

    def __init__(self, registry: Registry, settings: Settings, http: ProviderHTTP) -> None:
        self.registry = registry
        self.settings = settings
        self.http = http
        self._retrying: dict[tuple[str, bool], AsyncRetrying] = {}
        for provider in registry.providers:
            for stream, deadline in ((False, settings.job_deadline), (True, settings.stream_deadline)):
                statuses = provider.spec.retryable_statuses
                self._retrying[provider.spec.name, stream] = retrying(settings.retry, statuses, deadline)

    def prepare(self, request: CSSRequest) -> tuple[_Job, str, bytes]:
        """Check the job against its provider; the provider request's URL and body."""
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
        if reserved := sorted(request.extra_args.keys() & spec.job_fields):
            raise InvalidJob(
                f"`extra_args` may not set {', '.join(reserved)}: {spec.name}'s request builds "
                f"{', '.join(sorted(spec.job_fields))} from the job itself"
            )
        job = _Job(provider)
        call = job.plugin_step(provider.hooks.encode_params, "encoding of the request", request=request)
        if call is None:
            raise InvalidJob(f"{spec.name} cannot encode a {request.endpoint!r} request")
        body = call.body
        if options := {**provider.options, **request.extra_args}:
            placed = job.plugin_step(provider.hooks.encode_options, "encoding of the options", request=request,
                                     options=options)
            body = {**body, **(options if placed is None else placed)}
        return job, _url(provider, call), msgspec.json.encode(body)

    def _occupy(self, provider: Provider) -> None:
        """Take one of the provider's in-flight slots; when none is left, answer 503 at once."""
        if provider.in_flight >= self.settings.max_in_flight:
            raise ServiceBusy(
                f"{provider.spec.name} already has {provider.in_flight} calls in flight on this worker "
                "(CSS_MAX_IN_FLIGHT); retry shortly"
            )
        provider.in_flight += 1

    def _call(self, job: _Job, url: str, content: bytes) -> PreparedCall:
        """One attempt's request, with the next key's headers."""
        job.attempts += 1
        provider = job.provider
        headers = provider.headers_for(provider.next_key())
        return PreparedCall(url, headers, content, self.settings.request_timeout)

    async def _attempts(self, job: _Job, attempt: Callable[[], Awaitable[T]], stream: bool, deadline: float) -> T:
        controller = self._retrying[job.provider.spec.name, stream].copy(before_sleep=job.before_sleep)
        try:
            async with asyncio.timeout(deadline):
                async for try_ in controller:
                    with try_:
                        return await attempt()
        except (TimeoutError, ProviderHTTPError, ProviderBadResponse, ProviderUnreachable) as exc:
            raise job.failure(exc) from None
        raise AssertionError("tenacity ended without a result or an exception")  # pragma: no cover

    async def run(self, request: CSSRequest) -> Result:
        """The job's result: a completion or an embedding."""
        job, url, content = self.prepare(request)
        provider = job.provider
        hooks, spec, client, transport = provider.hooks, provider.spec, self.http.client, self.http.transport

        async def attempt() -> Result:
            try:
                body = await hooks.call(spec=spec, call=self._call(job, url, content), client=client,
                                        transport=transport)
            except (ErrorAnswer, httpx.TransportError) as exc:
                raise job.attempt_failure(exc) from None
            result: Result | None = job.plugin_step(hooks.postprocess, "answer", request=request, body=body)
            if result is None:
                raise ProviderBadResponse("the answer holds no result")
            return result

        self._occupy(provider)
        try:
            return await self._attempts(job, attempt, False, self.settings.job_deadline)
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
        job, url, content = self.prepare(request)
        provider = job.provider
        hooks, spec, client, transport = provider.hooks, provider.spec, self.http.client, self.http.transport
        deadline = self.settings.stream_deadline
        deadline_at = asyncio.get_running_loop().time() + deadline

        def text_of(data: bytes) -> str:
            text: str | None = job.plugin_step(hooks.parse_stream_event, "stream event", request=request, data=data)
            return text or ""

        async def attempt() -> tuple[AsyncIterator[bytes], str]:
            call = self._call(job, url, content)
            source = job.events(hooks.call_stream(spec=spec, call=call, client=client, transport=transport))
            try:
                async for data in source:
                    if text := text_of(data):
                        return source, text
            except BaseException:
                await _close(source)
                raise
            return source, ""

        self._occupy(provider)
        events: AsyncIterator[bytes] | None = None
        sent = 0
        try:
            upstream, first = await self._attempts(job, attempt, True, deadline)
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
            logger.warning("%s stream ended after %d chunk(s): %s", spec.name, sent, job.describe(exc))
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
